"""The web process's decision cache (``strongroom.decision_cache``): an API request whose token, user and
memberships have not changed reads none of them from the database, and a change made by *another process* through
the model layer — as the CLI, a job worker or another web worker would make it — is refused on the server's next
request: a revoked token, a deactivated or disabled account, a removed membership, a role that lost a right, a
deleted project. Expiry is checked against the clock on every request, cached or not.

SQLite: the other process bumps the shared counter file before its commit returns, so the very next request sees
it. PostgreSQL: its NOTIFY reaches this process's listener as the transaction commits; the test waits (a poll, never
a fixed sleep) for this process's generation to move, then asks. With the listener lost there is no cache: every
request reads the database, and a change made meanwhile is seen at once.

Each case first shows the cache is in use — a warm request issues no statement on ``api_tokens`` or
``memberships`` — so a refusal afterwards is the invalidation's doing, not a cache that was never consulted."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from conftest import bearer, token_for
from helpers import sql_statements
from strongroom import decision_cache, generation
from strongroom.archive import service as archive
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import hub_keys
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.identity import service as identity
from strongroom.projects import service as projects
from strongroom.projects.models import Membership, Project, Role

DEADLINE_SECONDS = 30.0  # cross-process propagation on a loaded machine; a poll, never a fixed sleep

ELSEWHERE = """
import sys
from sqlalchemy import delete, select, update
from strongroom.audit.service import Actor
from strongroom.db import transaction, utcnow
from strongroom.hub import Hub
from strongroom.identity import service as identity
from strongroom.identity.models import ApiToken, User
from strongroom.projects.models import Membership, Project, Role

hub = Hub.from_settings()
with transaction(hub.sessions) as s:
    exec(sys.argv[1])
"""


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    """This file tests the cache itself, on both databases (unset, it is on with SQLite only: config.py)."""
    settings.security.decision_cache = True
    return settings


def _engine(hub):  # type: ignore[no-untyped-def]
    return hub.sessions.kw["bind"]


def _poll(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {DEADLINE_SECONDS} s: {what}"
        time.sleep(0.01)


def _generation(hub) -> tuple[int, ...] | None:  # type: ignore[no-untyped-def]
    return generation.token(_engine(hub), decision_cache.AUTHZ)


def _elsewhere(hub, tmp_path, code: str) -> None:  # type: ignore[no-untyped-def]
    """``code`` run in a separate Python process through the model layer (its own engine and session), then —
    on PostgreSQL — until this process's listener has heard of it."""
    before = _generation(hub)
    env = dict(os.environ, STRONGROOM_VAR_DIR=str(hub.settings.var_dir),
               STRONGROOM_DATABASE_URL=hub.settings.database_url,
               STRONGROOM_SECRET_KEY=hub.settings.secret_key.get_secret_value(), STRONGROOM_JOBS__EMBEDDED="false")
    done = subprocess.run([sys.executable, "-c", ELSEWHERE, code], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if before is None:  # PostgreSQL without its listener: no cache to invalidate
        return
    if _engine(hub).dialect.name == "postgresql":
        _poll(lambda: _generation(hub) not in (None, before), "the other process's NOTIFY")
    else:  # SQLite: moved before the other process's commit returned
        assert _generation(hub) != before


def _statements(hub):  # type: ignore[no-untyped-def]
    return sql_statements(_engine(hub))


def _decision_reads(statements: list[str]) -> list[str]:
    return [s for s in statements if "FROM api_tokens" in s or "FROM memberships" in s]


@pytest.fixture
def world(app, hub, people, client):  # type: ignore[no-untyped-def]
    """Alice is PI of ``lung``; Bob a member with a role of his own (read-data); a file in ``lung``."""
    assert _poll(lambda: _generation(hub), "the authz listener connected")
    alice, bob = people("alice"), people("bob")
    role = f"viewer-{uuid.uuid4().hex[:8]}"
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="alice", ethics_ref="E",
                                end_date=dt.date.today() + dt.timedelta(days=30))
    with tempfile.TemporaryDirectory() as tmp, transaction(hub.sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        s.add(Role(name=role, description="test", rights=["read-data"]))
        s.flush()  # before the membership naming it (no relationship orders the two)
        s.add(Membership(project_id=project.id, user_id=bob.user.id, role=role))
        src = Path(tmp) / "f"
        src.write_bytes(os.urandom(512))
        sealed = archive.seal_into_storage(hub_keys(hub, s), storage_for(hub), project.id,
                                           archive.new_accession("SRF"), str(src))
        file_id = archive.add_sealed_file(s, project.id, alice.user.id, "f.bin", sealed).id
    return {"alice": alice, "bob": bob, "role": role, "file": file_id, "token": token_for(hub, bob)}


def _warm(hub, client, world) -> None:  # type: ignore[no-untyped-def]
    """Reads of the file until one is decided from the cache alone (on PostgreSQL the notifications of the
    setup's own writes may still be arriving, each dropping the cache once)."""
    url, headers = f"/api/v1/files/{world['file']}", bearer(world["token"])

    def cached() -> bool:
        with _statements(hub) as seen:
            assert client.get(url, headers=headers).status_code == 200
        return not _decision_reads(seen)

    _poll(cached, "a read decided from the cache")


def _read(client, world):  # type: ignore[no-untyped-def]
    return client.get(f"/api/v1/files/{world['file']}", headers=bearer(world["token"]))


CASES = {
    # what another process changes -> (status, detail) on the server's next request
    "token revoked (CLI, service)": ("identity.revoke_token_by_prefix(s, Actor.system('cli'), PREFIX)",
                                     401, "token revoked"),
    "token expired by an edit": ("s.execute(update(ApiToken).where(ApiToken.prefix == PREFIX)"
                                 ".values(expires_at=utcnow()))", 401, "token expired"),
    "account deactivated (service)": ("identity.deactivate_user(s, Actor.system('cli'), s.get(User, BOB))",
                                      401, "token revoked"),
    "account disabled (ORM flag)": ("s.get(User, BOB).is_active = False", 401, "token account disabled"),
    "membership removed": ("s.delete(s.scalar(select(Membership).where(Membership.user_id == BOB)))",
                           404, "no such file"),
    "membership's role changed": ("s.add(Role(name=ROLE + '-x', description='', rights=['read-metadata'])); "
                                  "s.flush(); s.scalar(select(Membership).where(Membership.user_id == BOB))"
                                  ".role = ROLE + '-x'", 404, "no such file"),
    "role lost its right": ("s.get(Role, ROLE).rights = ['read-metadata']", 404, "no such file"),
    "role's right taken by a bulk statement": ("s.execute(update(Role).where(Role.name == ROLE)"
                                               ".values(rights=[]))", 404, "no such file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_change_in_another_process_is_refused_on_the_next_request(world, hub, client, tmp_path, case):
    code, status, detail = CASES[case]
    _warm(hub, client, world)
    prefix = world["token"].split("_")[1]
    _elsewhere(hub, tmp_path, f"import uuid\nPREFIX = {prefix!r}; BOB = uuid.UUID('{world['bob'].user.id}'); "
                              f"ROLE = {world['role']!r}\n{code}")
    r = _read(client, world)
    assert (r.status_code, r.json()["detail"]) == (status, detail)
    if status == 401:  # refused uses are still audited every time
        assert client.get("/api/v1/projects", headers=bearer(world["token"])).status_code == 401


def test_a_project_deleted_elsewhere_is_gone_on_the_next_request(world, hub, client, tmp_path):
    _warm(hub, client, world)
    # the project with its memberships (the ORM's cascade) — its file with it is a made-up id now
    _elsewhere(hub, tmp_path, "from strongroom.archive.models import ArchiveFile\n"
                              "p = s.scalar(select(Project).where(Project.slug == 'lung'))\n"
                              "s.execute(delete(ArchiveFile).where(ArchiveFile.project_id == p.id))\n"
                              "s.delete(p)")
    assert _read(client, world).status_code == 404
    assert client.get("/api/v1/projects/lung", headers=bearer(world["token"])).status_code == 404


def test_a_membership_granted_elsewhere_is_seen_on_the_next_request(world, hub, client, people, tmp_path):
    carol = people("carol")
    carol_token = token_for(hub, carol)
    url = f"/api/v1/files/{world['file']}"
    for _ in range(2):  # cached: not a member
        assert client.get(url, headers=bearer(carol_token)).status_code == 404
    _elsewhere(hub, tmp_path, f"import uuid\np = s.scalar(select(Project).where(Project.slug == 'lung'))\n"
                              f"s.add(Membership(project_id=p.id, user_id=uuid.UUID('{carol.user.id}'), "
                              f"role={world['role']!r}))")
    assert client.get(url, headers=bearer(carol_token)).status_code == 200


def test_expiry_is_checked_against_the_clock_on_a_cached_token(world, hub, client, monkeypatch):
    _warm(hub, client, world)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)  # past the token's 30 days; nothing was written
    monkeypatch.setattr(identity, "utcnow", lambda: later)
    r = _read(client, world)
    assert (r.status_code, r.json()["detail"]) == (401, "token expired")


def test_a_wrong_secret_for_a_cached_prefix_is_refused(world, hub, client):
    _warm(hub, client, world)
    prefix = world["token"].split("_")[1]
    r = client.get(f"/api/v1/files/{world['file']}", headers=bearer(f"sr_{prefix}_{'x' * 32}"))
    assert (r.status_code, r.json()["detail"]) == (401, "invalid token")


def test_own_uncommitted_changes_bypass_the_cache(world, hub, client):
    """A session that removed the membership itself (not yet committed) decides from the database."""
    from strongroom.archive import authz
    from strongroom.identity.models import User

    _warm(hub, client, world)
    with transaction(hub.sessions) as s:
        principal = identity.authenticate_token(s, world["token"], "127.0.0.1", use_audit="window")
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        assert project.id in authz.readable_projects(s, principal)
        s.delete(s.scalar(select(Membership).where(Membership.user_id == world["bob"].user.id)))
        assert authz.readable_projects(s, principal) == set()
        assert s.get(User, world["bob"].user.id) is principal.user
        s.rollback()
    _warm(hub, client, world)  # rolled back: still a member, and cached again


def test_a_lost_listener_means_no_cache_until_it_is_back(world, hub, client, tmp_path, monkeypatch):
    if not hub.settings.database_url.startswith("postgresql"):
        pytest.skip("the listener is PostgreSQL's")
    _warm(hub, client, world)
    gen = generation.of(_engine(hub), decision_cache.AUTHZ)
    pid = gen.listener_pid
    assert pid is not None
    monkeypatch.setattr(generation, "RECONNECT_SECONDS", 3600.0)  # stays away until told to reconnect
    with hub.sessions() as s:
        assert s.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    _poll(lambda: _generation(hub) is None, "the listener noticed its loss")
    # While nobody listens every request reads the database ...
    with _statements(hub) as seen:
        assert _read(client, world).status_code == 200
    assert _decision_reads(seen), "no cache without the listener"
    # ... so a revocation whose NOTIFY reaches no one here is refused on the next request all the same.
    prefix = world["token"].split("_")[1]
    _elsewhere(hub, tmp_path, f"identity.revoke_token_by_prefix(s, Actor.system('cli'), {prefix!r})")
    r = _read(client, world)
    assert (r.status_code, r.json()["detail"]) == (401, "token revoked")
    gen.reconnect()
    _poll(lambda: gen.listener_pid not in (None, pid) and _generation(hub) is not None, "the listener reconnected")
    assert _read(client, world).status_code == 401
    world["token"] = token_for(hub, world["bob"])
    _warm(hub, client, world)  # and the cache is used again


@pytest.mark.parametrize("path", ["decided from the cache", "decided from the database"])
def test_a_tokens_first_use_in_a_window_is_recorded_even_after_a_rollback(world, hub, client, monkeypatch, path):
    """The next window's first use is rolled back with its transaction: the following use records it (the cache
    remembers a window only once its record is committed) — whether the rolled-back use was decided from the
    cache or, the cache just dropped (another process's change), from the database."""
    from strongroom.audit.models import AuditEvent

    def used() -> int:
        with hub.sessions() as s:
            return len(list(s.scalars(select(AuditEvent).where(AuditEvent.action == "token.used",
                                                               AuditEvent.target == f"token:{prefix}"))))

    prefix = world["token"].split("_")[1]
    _warm(hub, client, world)
    before = used()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=hub.settings.security.token_use_window_seconds)
    monkeypatch.setattr(identity, "utcnow", lambda: later)
    if path == "decided from the database":
        decision_cache.enable(_engine(hub)).clear()
    with hub.sessions() as s, _statements(hub) as seen:
        identity.authenticate_token(s, world["token"], "127.0.0.1", use_audit="window")
        s.rollback()
    if path == "decided from the database":  # (from the cache unless a notification just dropped it)
        assert _decision_reads(seen)
    assert used() == before
    with transaction(hub.sessions) as s:
        identity.authenticate_token(s, world["token"], "127.0.0.1", use_audit="window")
    assert used() == before + 1
    with transaction(hub.sessions) as s:  # recorded: the rest of the window writes nothing
        identity.authenticate_token(s, world["token"], "127.0.0.1", use_audit="window")
    assert used() == before + 1


SHARE_CASES = {
    # what another process changes -> the reader's next request for the shared file is 404
    "share withdrawn": "s.execute(delete(DatasetShare).where(DatasetShare.project_id == READER))",
    "version no longer released": "s.execute(update(DatasetVersion).where(DatasetVersion.dataset_id == DS)"
                                  ".values(state='draft'))",
    "file taken out of the version": "s.execute(delete(DatasetFile).where(DatasetFile.file_id == FILE))",
}


@pytest.mark.parametrize("case", list(SHARE_CASES))
def test_a_shared_file_is_decided_from_the_cache_until_the_share_changes_anywhere(world, hub, client, people,
                                                                                 tmp_path, case):
    """Carol reads a file of ``lung`` through a dataset shared into her project ``reader``: once warm, the decision
    reads neither her token, her memberships nor the share; a change to the share, the version or its files in
    another process is refused on her next request."""
    from strongroom.archive.models import DatasetShare
    from strongroom.identity.principal import SCOPES, Principal

    carol = people("carol")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="reader", name="Reader", pi="carol", ethics_ref="E",
                                end_date=dt.date.today() + dt.timedelta(days=30))
    with transaction(hub.sessions) as s:
        alice = Principal(user=s.get(type(world["alice"].user), world["alice"].user.id), via="session",
                          mfa_at=dt.datetime.now(dt.UTC), scopes=frozenset(SCOPES), credential_id="test")
        access = projects.open_project(s, alice, "lung")
        ds = archive.create_dataset(s, alice, access, title="Shared", files=[world["file"]])
        s.flush()
        archive.release_version(s, alice, ds.id, 1)
        projects.change_setting(s, alice, access, "external_sharing", True, fresh_minutes=60)
        dataset_id = ds.id
    with transaction(hub.sessions) as s:
        archive.share_dataset(s, alice, dataset_id, "reader", fresh_minutes=60)
        reader = s.scalar(select(Project.id).where(Project.slug == "reader"))
        assert s.scalar(select(DatasetShare.project_id).where(DatasetShare.dataset_id == dataset_id)) == reader
    url, headers = f"/api/v1/files/{world['file']}", bearer(token_for(hub, carol))

    def cached() -> bool:
        with _statements(hub) as seen:
            assert client.get(url, headers=headers).status_code == 200
        return not _decision_reads(seen) and not [q for q in seen if "FROM dataset_shares" in q]

    _poll(cached, "a shared read decided from the cache")
    _elsewhere(hub, tmp_path, "import uuid\nfrom strongroom.archive.models import DatasetFile, DatasetShare, "
                              f"DatasetVersion\nREADER = uuid.UUID('{reader}'); DS = {dataset_id!r}; "
                              f"FILE = {world['file']!r}\n{SHARE_CASES[case]}")
    r = client.get(url, headers=headers)
    assert (r.status_code, r.json()["detail"]) == (404, "no such file")
