"""The landing page's catalogue generation (``catalog.generation``): a cached public page is served with no database
read, and a change to anything the page is rendered from — made by another process through the model layer, as
the CLI or a job worker would — is seen on the first request after its signal arrives (SQLite: the shared counter
file, bumped before the other process's commit returns; PostgreSQL: the NOTIFY the listener thread receives).

Every cross-process case checks the cache against the database itself: after the signal, the page kept for the
request is the one rendered from the revision the database holds now (and an address a person has taken is
withheld)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

from helpers import sql_statements
from strongroom.catalog import generation, page_cache
from test_catalog import anon, publish_entry, world  # noqa: F401  (world is a fixture)

ROBOT = "curl/8.5.0"  # a machine: no view is counted, so no write either
DEADLINE_SECONDS = 30.0  # cross-process propagation on a loaded machine; a poll, never a fixed sleep

CHANGE = """
import sys
from sqlalchemy import select
from strongroom.access.models import AccessPolicy
from strongroom.archive.models import DatasetVersion
from strongroom.catalog.models import CatalogEntry, Doi
from strongroom.db import transaction, utcnow
from strongroom.hub import Hub
from strongroom.identity.models import User

hub = Hub.from_settings()
with transaction(hub.sessions) as s:
    entry = s.scalar(select(CatalogEntry).where(CatalogEntry.slug == "chest-ct"))
    ds = entry.dataset_id
    exec(sys.argv[1])
"""


def _poll(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {DEADLINE_SECONDS} s: {what}"
        time.sleep(0.01)


def _engine(hub):  # type: ignore[no-untyped-def]
    return hub.sessions.kw["bind"]


def _elsewhere(hub, tmp_path, code: str) -> None:  # type: ignore[no-untyped-def]
    """``code`` run in a separate Python process through the model layer (its own engine and session)."""
    env = dict(os.environ, STRONGROOM_VAR_DIR=str(hub.settings.var_dir),
               STRONGROOM_DATABASE_URL=hub.settings.database_url,
               STRONGROOM_SECRET_KEY=hub.settings.secret_key.get_secret_value(), STRONGROOM_JOBS__EMBEDDED="false")
    done = subprocess.run([sys.executable, "-c", CHANGE, code], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _statements(hub):  # type: ignore[no-untyped-def]
    return sql_statements(_engine(hub))


def _listening(hub) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    """The current token, once this process knows the generation (on PostgreSQL: its listener is connected)."""
    return _poll(lambda: generation.token(_engine(hub)), "the catalogue listener connected")


def _key(hub) -> page_cache.Key:  # type: ignore[no-untyped-def]
    return (id(hub.sessions), "chest-ct", None, "*/*")


def _current(hub) -> tuple[Any, ...] | None:  # type: ignore[no-untyped-def]
    with hub.sessions() as s:
        return page_cache.revision(s, "chest-ct")


@pytest.fixture
def cached(world, hub):  # type: ignore[no-untyped-def]  # noqa: F811
    """The published page, cached and checked under the current generation."""
    publish_entry(world, world["ds"], "chest-ct", contact_email="data-access@hospital.example.net")
    page_cache.clear()
    _listening(hub)
    c = anon(world)
    c.headers["User-Agent"] = ROBOT
    first = c.get("/catalog/chest-ct")
    assert first.status_code == 200
    _listening(hub)
    assert c.get("/catalog/chest-ct").content == first.content
    return c


def test_a_cached_page_is_served_without_any_database_statement(world, hub, cached):  # noqa: F811
    etag = cached.get("/catalog/chest-ct").headers["etag"]
    with _statements(hub) as seen:
        page = cached.get("/catalog/chest-ct")
        not_modified = cached.get("/catalog/chest-ct", headers={"If-None-Match": etag})
    assert page.status_code == 200 and page.headers["etag"] == etag
    assert page.headers["cache-control"] == page_cache.CACHE_CONTROL
    assert not_modified.status_code == 304 and not_modified.headers["etag"] == etag
    assert seen == []
    # the page is still served with the hub's headers (observe runs around the fast path)
    assert page.headers["x-content-type-options"] == "nosniff" and "content-security-policy" in page.headers


CASES = {
    "entry edit": ("entry.title = 'Edited by another process'; entry.updated_at = utcnow()",
                   lambda r: "Edited by another process" in r.text),
    "withdraw": ("entry.published = False; entry.withdrawn_at = utcnow(); entry.updated_at = utcnow()",
                 lambda r: r.status_code in (404, 410)),
    "version release": ("s.add(DatasetVersion(dataset_id=ds, number=2, state='released', released_at=utcnow()))",
                        lambda r: r.status_code == 200),
    "version deprecate": ("v = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds, "
                          "DatasetVersion.number == 1)); v.state = 'deprecated'", None),
    "DOI findable": ("s.add(Doi(doi='10.5555/sr-landing-1', dataset_id=ds, version=None, kind='concept', "
                     "state='findable', findable_at=utcnow()))", None),  # the entry shows its own DOI
    "access policy": ("p = s.get(AccessPolicy, ds)\n"
                      "if p is None:\n"
                      "    s.add(AccessPolicy(dataset_id=ds, form_name='default', terms_name='default', "
                      "applicant_download=True))\n"
                      "else:\n"
                      "    p.applicant_download = not p.applicant_download", lambda r: r.status_code == 200),
    "a person takes the shown address": (
        "s.add(User(issuer='local', subject='newcomer', display_name='Newcomer', "
        "email='Data-Access@Hospital.example.net'))",
        lambda r: r.status_code == 200 and "data-access@hospital.example.net" not in r.text.lower()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_change_made_by_another_process_is_seen_after_its_signal(world, hub, cached, tmp_path,  # noqa: F811
                                                                  case):
    code, shows = CASES[case]
    before_page = cached.get("/catalog/chest-ct")
    before_revision, token = _current(hub), _listening(hub)
    _elsewhere(hub, tmp_path, code)
    _poll(lambda: generation.token(_engine(hub)) not in (None, token), "the other process's signal")
    after = cached.get("/catalog/chest-ct")
    if shows is not None:
        assert shows(after), after.text[:2000]
    if after.status_code == 200:
        kept = page_cache.lookup(_key(hub))
        assert kept is not None and kept.body == after.content
        if case != "a person takes the shown address":  # users are not part of the revision
            assert _current(hub) != before_revision
            assert kept.revision == _current(hub)  # rendered from (or checked against) what the database holds
        if shows is not None:
            assert after.content != before_page.content
        page_cache.clear()  # a cold render now gives the same page
        assert cached.get("/catalog/chest-ct").content == after.content


def test_publish_again_elsewhere_serves_the_page_again(world, hub, cached, tmp_path):  # noqa: F811
    token = _listening(hub)
    _elsewhere(hub, tmp_path, CASES["withdraw"][0])
    _poll(lambda: generation.token(_engine(hub)) not in (None, token), "the withdrawal's signal")
    assert cached.get("/catalog/chest-ct").status_code in (404, 410)
    token = _listening(hub)
    _elsewhere(hub, tmp_path, "entry.published = True; entry.withdrawn_at = None; entry.updated_at = utcnow()")
    _poll(lambda: generation.token(_engine(hub)) not in (None, token), "the publication's signal")
    assert cached.get("/catalog/chest-ct").status_code == 200


@contextmanager
def _signal(hub) -> Iterator[list[bool]]:  # type: ignore[no-untyped-def]
    """Whether the transactions inside signalled a change: the token moved before commit() returned and (on
    PostgreSQL) a NOTIFY went out. "No signal" is read from the statements on PostgreSQL, where our own earlier
    NOTIFYs may still be on their way back to this process's listener."""
    postgres = _engine(hub).dialect.name == "postgresql"
    said: list[bool] = []
    with _statements(hub) as seen:
        before = generation.token(_engine(hub))
        yield said
        moved = generation.token(_engine(hub)) != before
    said.append(any(st.startswith("NOTIFY") for st in seen) if postgres else moved)


def test_what_moves_the_generation_in_this_process_at_once(world, hub, cached):  # noqa: F811
    from sqlalchemy import update

    from strongroom.db import transaction, utcnow
    from strongroom.identity.models import User
    from strongroom.stats.models import LandingViews

    with _signal(hub) as said, transaction(hub.sessions) as s:  # not a table the page reads
        s.execute(update(LandingViews).values(views=LandingViews.views))
    assert said == [False]
    with _signal(hub) as said, transaction(hub.sessions) as s:  # a bulk statement on users: always
        s.execute(update(User).where(User.id == world["bob"].user.id).values(display_name="Bob B."))
    assert said == [True]
    with _signal(hub) as said, transaction(hub.sessions) as s:  # a login's kind of change: nothing the page reads
        s.get(User, world["carol"].user.id).last_login_at = utcnow()
    assert said == [False]
    with _signal(hub) as said, transaction(hub.sessions) as s:  # an address: the page may show it
        s.get(User, world["carol"].user.id).email = "carol.elsewhere@example.org"
    assert said == [True]
    token = generation.token(_engine(hub))
    with transaction(hub.sessions) as s:  # rolled back: nothing changed (PostgreSQL drops its NOTIFY with it)
        s.execute(update(User).where(User.id == world["bob"].user.id).values(display_name="Bob C."))
        s.rollback()
    if _engine(hub).dialect.name == "sqlite":
        assert generation.token(_engine(hub)) == token


def test_a_lost_listener_falls_back_to_the_database_and_reconnects(world, hub, cached, tmp_path):  # noqa: F811
    if not hub.settings.database_url.startswith("postgresql"):
        pytest.skip("the listener is PostgreSQL's")
    gen = generation.of(_engine(hub))
    pid = gen.listener_pid
    assert pid is not None
    with hub.sessions() as s:
        assert s.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    # changed while nobody listens: its NOTIFY reaches no one in this process
    _elsewhere(hub, tmp_path, CASES["entry edit"][0])
    _poll(lambda: "Edited by another process" in cached.get("/catalog/chest-ct").text, "the edit on the page")
    _poll(lambda: gen.listener_pid not in (None, pid) and generation.token(_engine(hub)) is not None,
          "the listener reconnected")
    assert "Edited by another process" in cached.get("/catalog/chest-ct").text
