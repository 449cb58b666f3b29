"""Shared plumbing for the HTTP benchmarks: a throw-away hub (embedded SQLite under a fresh /tmp directory,
generated secret), a user with a data token in a project, and the app served by uvicorn in a *separate
process* (as `strongroom serve` runs it), so the benchmark client and the server do not share one GIL.

Not a test and not part of the package. ``python benchmarks/_support.py serve VAR_DIR PORT SECRET`` is the
server process's entry point (started by :func:`serving`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from strongroom.config import Settings

MIB = 1 << 20
PASSWORD = "correct horse battery staple"
with contextlib.suppress(ImportError):  # authlib sets its own "always" filter on import; ours goes in front
    import authlib.deprecate  # noqa: F401
warnings.filterwarnings("ignore", message=".*httpx2.*")  # authlib's notice at import; not ours to fix here


@contextlib.contextmanager
def fresh_dir(prefix: str) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def logs_to(path: Path, settings: Settings) -> None:
    """Configure logging as the CLI does (JSON lines on stderr), but into ``path``: the per-job and
    per-request log lines are still produced (their cost is real) without flooding the terminal."""
    from strongroom.logs import configure

    stream = path.open("a", buffering=1)  # lives as long as the process
    with contextlib.redirect_stderr(stream):
        configure(settings.log_level, settings.log_json)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(var_dir: Path, port: int, secret: str, database_url: str = "") -> Settings:
    """Embedded defaults (SQLite + local objects under ``var_dir``, or ``database_url``), the given secret,
    no embedded jobs."""
    return Settings(var_dir=var_dir, database_url=database_url, secret_key=secret,
                    base_url=f"http://127.0.0.1:{port}",
                    host="127.0.0.1", port=port, log_json=True, jobs={"embedded": False})


@dataclass
class BenchHub:
    settings: Settings
    app: object
    hub: object  # strongroom.hub.Hub
    port: int
    secret: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def build_hub(directory: Path, database_url: str = "") -> BenchHub:
    """Migrate a new SQLite database (or the empty one at ``database_url``: see `postgres_schema`), build the
    app (no job thread) and give the hub its archive key."""
    from strongroom.app import create_app
    from strongroom.archive.keys import ensure_key
    from strongroom.migrate import upgrade

    port, secret = free_port(), secrets.token_hex(32)
    settings = make_settings(directory / "var", port, secret, database_url)
    upgrade(settings.effective_database_url)
    app = create_app(settings, run_jobs=False)
    hub = app.state.hub
    ensure_key(hub)  # before the server process starts: exactly one key
    return BenchHub(settings, app, hub, port, secret)


PG_URL = os.environ.get("STRONGROOM_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """A fresh schema of its own in the PostgreSQL database at ``STRONGROOM_BENCH_PG_URL`` (default: the tests'
    ``test`` database on 127.0.0.1:5432), as a database URL whose connections use it; dropped afterwards."""
    from sqlalchemy import create_engine, text

    schema = f"{prefix}_{os.getpid()}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        from strongroom.db import engine_for

        engine_for(url).dispose()  # its pooled connections go before the schema does
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


def person_with_project(hub, username: str, slug: str) -> str:
    """A local user who is PI of a new project, and an API token of theirs (minted as under fresh MFA,
    exactly as the tests' ``token_for`` does)."""
    from strongroom.audit.service import Actor
    from strongroom.db import transaction
    from strongroom.identity import service as identity
    from strongroom.identity.models import User
    from strongroom.identity.principal import SCOPES
    from strongroom.projects import service as projects

    with transaction(hub.sessions) as session:
        user = identity.create_local_user(session, Actor.system("bench"), username=username,
                                          password=PASSWORD, display_name=username.title(),
                                          email=f"{username}@example.org")
        user_id = user.id
    with transaction(hub.sessions) as session:
        projects.create_project(session, Actor.system("bench"), slug=slug, name=slug.title(), pi=username,
                                ethics_ref="BENCH-1", end_date=dt.date.today() + dt.timedelta(days=365))
    with transaction(hub.sessions) as session:
        user = session.get(User, user_id)
        fake_session = type("S", (), {"mfa_at": dt.datetime.now(dt.UTC), "id_hash": "bench000"})()
        principal = identity.session_principal(fake_session, user, "127.0.0.1")
        _, token = identity.create_token(session, principal, name="bench", days=30, max_days=90,
                                         scopes=[s for s in SCOPES if s != "admin"])
    return token


def principal_for(hub, token: str):
    """The Principal a request with this token would get (for calling services directly)."""
    from strongroom.db import transaction
    from strongroom.identity import service as identity

    with transaction(hub.sessions) as session:
        principal = identity.authenticate_token(session, token, "127.0.0.1")
        session.expunge_all()
    return principal


def wait_until_answering(url: str, proc: subprocess.Popen[bytes], log_path: Path, *, timeout: float) -> None:
    """Poll ``url`` until it answers 200; a server that exits or stays silent past ``timeout`` is an error
    quoting the end of its log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{url} did not start; see {log_path}:\n{tail}")
        time.sleep(0.05)


@contextlib.contextmanager
def serving(bench: BenchHub, log_path: Path, timeout: float = 900) -> Iterator[str]:
    """Run the app under uvicorn (uvloop + httptools when installed, as `strongroom serve`) in a child
    process (``timeout``: seconds it may take to answer)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve",
                                 str(bench.settings.var_dir), str(bench.port), bench.secret,
                                 *([bench.settings.database_url] if bench.settings.database_url else [])],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        # a loaded shared machine can take a minute to import the app
        wait_until_answering(f"{bench.url}/healthz", proc, log_path, timeout=timeout)
        yield bench.url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve(var_dir: str, port: str, secret: str, database_url: str = "") -> None:
    import uvicorn

    from strongroom.app import create_app
    from strongroom.logs import configure

    settings = make_settings(Path(var_dir), int(port), secret, database_url)
    configure(settings.log_level, settings.log_json)
    application = create_app(settings, run_jobs=False)
    uvicorn.run(application, host="127.0.0.1", port=int(port), access_log=False, log_config=None,
                proxy_headers=False)


def _sendfile_server(path: str, port: str) -> None:
    """The transport ceiling: the least an HTTP server can do to send a file (no framework, no Python copy:
    ``socket.sendfile``). Every GET gets the whole file, then the connection is closed."""
    size = os.path.getsize(path)
    with socket.create_server(("127.0.0.1", int(port))) as server:
        while True:
            conn, _ = server.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        break
                    request += data
                if not request:
                    continue
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size)
                with open(path, "rb") as f, contextlib.suppress(OSError):
                    conn.sendfile(f)


@contextlib.contextmanager
def sendfile_serving(path: Path, port: int) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "sendfile", str(path), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the sendfile server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)


if __name__ == "__main__":
    if len(sys.argv) in (5, 6) and sys.argv[1] == "serve":
        _serve(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "sendfile":
        _sendfile_server(*sys.argv[2:])
    else:
        raise SystemExit("usage: _support.py serve VAR_DIR PORT SECRET [DATABASE_URL] | sendfile PATH PORT "
                         "(started by the benchmarks)")
