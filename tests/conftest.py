"""Shared fixtures. Every test runs against SQLite, and against PostgreSQL when it is reachable
(it always is in CI: 127.0.0.1:5432, database `test`). Each test starts from empty tables."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from strongroom.app import create_app
from strongroom.config import Settings
from strongroom.db import Base, transaction
from strongroom.deps import SESSION_COOKIE
from strongroom.hub import Hub
from strongroom.identity import service as identity
from strongroom.identity.models import User
from strongroom.migrate import upgrade
from strongroom.models import load_all
from support import drs_schema
from support.visa_issuer import Issuer, issuer_serving

# argon2id at its production cost (t=3, 64 MiB, 4 lanes: ~0.15 s of CPU per hash, far more on a loaded
# machine) would be paid for every user the fixtures create and every login; the suite hashes with the
# cheapest parameters instead, through the settings (env, so CLI subprocesses get them too). The defaults
# are asserted in test_login.py.
for _name, _value in (("TIME_COST", "1"), ("MEMORY_KIB", "64"), ("PARALLELISM", "1")):
    os.environ.setdefault(f"STRONGROOM_SECURITY__PASSWORD_HASH__{_name}", _value)

PG_URL = os.environ.get("STRONGROOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
KEEP_TABLES = {"roles", "alembic_version"}
PASSWORD = "correct horse battery staple"


# The longest tests, with their approximate duration (s) on the 2-core CI box. They run first, longest
# first: `make test` distributes with `--dist worksteal`, so a worker that runs out of work takes half of the other
# worker's queue, and no minutes-long test is left to start last on one worker while the other sits idle. Only the
# order changes; a test missing from this list just keeps its place. Prefixes of node ids.
LONG_RUNNING = {
    "tests/test_openapi_conformance.py::test_schemathesis_": 320,
    "tests/test_cluster.py::": 130,
    "tests/test_imaging_destination.py::test_pydicom_test_files_through_storescu": 40,
    "tests/test_imaging_destination.py::test_killing_the_destination": 30,
    "tests/test_imaging_destination.py::test_malformed_objects": 25,
}


def _expected_seconds(nodeid: str) -> float:
    return max((s for prefix, s in LONG_RUNNING.items() if nodeid.startswith(prefix)), default=0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -_expected_seconds(item.nodeid))  # stable: everything else keeps its order


@pytest.fixture(autouse=True)
def drs_responses_follow_the_specification(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every GA4GH DRS response any test receives (httpx clients, TestClient included) is validated
    against the official DRS 1.5 OpenAPI schemas (support/drs_schema.py); a test fails on one that
    breaks them. The responses are the server's own: this only reads them."""
    send = httpx.Client.send

    def checked_send(self: httpx.Client, request: httpx.Request, **kw: object) -> httpx.Response:
        response = send(self, request, **kw)  # type: ignore[arg-type]
        if request.url.path.startswith(drs_schema.BASE_PATH + "/"):
            response.read()
            drs_schema.check(response)
        return response

    monkeypatch.setattr(httpx.Client, "send", checked_send)


def _pg_available() -> bool:
    try:
        engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"),
                               connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


PG_OK = _pg_available()
if os.environ.get("CI") and not PG_OK:
    raise RuntimeError(f"CI must reach PostgreSQL at {PG_URL}")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("template") / "strongroom.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    from strongroom.db import engine_for

    engine_for(url).dispose()  # closing the last connection folds the WAL into the file we copy
    assert not Path(f"{path}-wal").exists()
    return str(path)


@pytest.fixture(scope="session")
def pg_schema_ready() -> Iterator[str]:
    """A schema of this test process's own, so parallel runs never see each other's rows."""
    schema = f"sr_test_{os.getpid()}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    # synchronous_commit=off: a commit does not wait for its WAL flush (~13 ms each on a busy CI disk, a few
    # dozen per test). Only a crash of the PostgreSQL server itself could lose such a commit, and no test
    # crashes it; to every session, the app's and its killed subprocesses' included, commits are the same.
    url = f"{PG_URL}?options=-csearch_path%3D{schema}%20-csynchronous_commit%3Doff"
    upgrade(url)
    yield url
    from strongroom.db import engine_for

    engine_for(url).dispose()
    if url in _PG_ENGINES:
        _PG_ENGINES.pop(url).dispose()
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    admin.dispose()


_PG_ENGINES: dict[str, Engine] = {}
# Sequences owned by the emptied tables, back to their start (what TRUNCATE ... RESTART IDENTITY did).
_RESTART_SEQUENCES = """
SELECT setval(s.oid, q.seqstart, false)
  FROM pg_class s
  JOIN pg_sequence q ON q.seqrelid = s.oid
  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.deptype IN ('a', 'i')
  JOIN pg_class t ON t.oid = d.refobjid
 WHERE s.relkind = 'S' AND s.relnamespace = current_schema()::regnamespace AND t.relname = ANY(%(tables)s)
"""


def _truncate_pg(url: str) -> None:
    """Empty every table but the kept ones, restart their sequences, re-seed the audit head.

    DELETE in reverse dependency order, not TRUNCATE: on these near-empty tables TRUNCATE (new files for
    ~40 tables and their indexes, under an exclusive lock) took ~1.2 s per test on the shared CI box,
    DELETE takes ~0.01-0.04 s. The end state is the same: no rows, identities from the start."""
    load_all()
    engine = _PG_ENGINES.get(url)
    if engine is None:
        engine = _PG_ENGINES[url] = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    names = [t.name for t in Base.metadata.sorted_tables if t.name not in KEEP_TABLES]
    with engine.begin() as conn:
        conn.exec_driver_sql("; ".join(f"DELETE FROM {name}" for name in reversed(names)))
        conn.exec_driver_sql(_RESTART_SEQUENCES, {"tables": names})
        conn.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :h)"), {"h": "0" * 64})


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        import shutil

        target = tmp_path / "strongroom.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}?synchronous=normal"
    if not PG_OK:
        pytest.skip("PostgreSQL not reachable")
    url = request.getfixturevalue("pg_schema_ready")
    _truncate_pg(url)
    return url


@pytest.fixture
def settings(database_url: str, tmp_path) -> Settings:
    return Settings(var_dir=tmp_path / "var", database_url=database_url, secret_key="test-secret-" + "x" * 32,
                    log_json=True, jobs={"embedded": False},
                    security={"cookie_secure": False, "login_attempts_per_window": 5})


@pytest.fixture
def app(settings: Settings):
    return create_app(settings, run_jobs=False)


@pytest.fixture
def hub(app) -> Hub:
    return app.state.hub


@dataclass
class Person:
    """A test user with everything needed to act as them."""

    user: User
    username: str
    seed: str | None
    used_steps: set[int] = field(default_factory=set)

    def code(self, *, offsets: tuple[int, ...] = (0, 1)) -> str:
        """A TOTP code for a step not used yet (the hub refuses replays)."""
        totp = pyotp.TOTP(self.seed)
        while True:
            now = time.time()
            for offset in offsets:
                step = int(now // 30) + offset
                if step not in self.used_steps and all(step > s for s in self.used_steps):
                    self.used_steps.add(step)
                    return totp.at(step * 30)
            time.sleep(1)


@pytest.fixture
def people(hub: Hub):
    """Factory: ``people("alice", admin=False, mfa=True)`` creates a local user (MFA enrolled)."""

    def make(username: str, *, admin: bool = False, mfa: bool = True, email: str | None = None) -> Person:
        from strongroom.audit.service import Actor

        with transaction(hub.sessions) as session:
            user = identity.create_local_user(session, Actor.system("test"), username=username, password=PASSWORD,
                                              display_name=username.title(),
                                              email=email or f"{username}@example.org", is_admin=admin)
            seed = None
            if mfa:
                enrolment = identity.begin_totp_enrolment(session, user, hub.secret)
                seed = enrolment.secret
        person = Person(user=user, username=username, seed=seed)
        if mfa:
            # The hub accepts the previous step too: enrolling with it (while it stays valid for >= 10 s more)
            # leaves the current and the next step for the test, so a test that logs in twice gets its codes
            # at once instead of sleeping until the next 30 s step.
            early = time.time() % 30 < 20
            with transaction(hub.sessions) as session:
                identity.confirm_totp_enrolment(session, session.get(User, user.id),
                                                person.code(offsets=(-1, 0, 1) if early else (0, 1)), hub.secret,
                                                None)
        return person

    return make


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        yield c


def browser_session(hub: Hub, person: Person, *, mfa: bool = True) -> str:
    """A logged-in session cookie without driving the login pages (those have their own tests)."""
    with transaction(hub.sessions) as session:
        user = session.get(User, person.user.id)
        return identity.start_session(session, user, stage="active", method="local", mfa=mfa, ip="127.0.0.1",
                                      max_hours=12)


def web_client(app, hub: Hub, person: Person) -> TestClient:
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    c.cookies.set(SESSION_COOKIE, browser_session(hub, person))
    return c


def token_for(hub: Hub, person: Person, scopes: list[str] | None = None, days: int = 30) -> str:
    from strongroom.identity.principal import SCOPES

    with transaction(hub.sessions) as session:
        user = session.get(User, person.user.id)
        principal = identity.session_principal(
            type("S", (), {"mfa_at": dt.datetime.now(dt.UTC), "id_hash": "test0000"})(), user, "127.0.0.1")
        _, plaintext = identity.create_token(session, principal, name="test", days=days, max_days=90,
                                             scopes=scopes or [s for s in SCOPES if s != "admin" or user.is_admin])
    return plaintext


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    """A foreign GA4GH visa issuer with its own key, served on a loopback port (support/visa_issuer.py)."""
    yield from issuer_serving()
