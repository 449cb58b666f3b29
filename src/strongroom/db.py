"""Database engine, sessions and the declarative base shared by every capability.

SQLite (WAL) is the embedded default; PostgreSQL is the production database.

SQLite has one write lock for the whole database. A transaction takes it in one of two ways:

- *immediate* (the default, and every web request with an unsafe method): ``BEGIN IMMEDIATE``, so
  the transaction's reads and writes are serialised with every other writer, exactly as before;
- *deferred* (read-only requests, job polling, read-mostly jobs, routes that do slow work before
  writing): plain ``BEGIN``, which takes no write lock. The first write, ``SAVEPOINT`` or
  ``SELECT … FOR UPDATE`` ends the read snapshot and starts ``BEGIN IMMEDIATE`` in its place. SQLite
  cannot upgrade a read snapshot that another writer has overtaken (``SQLITE_BUSY_SNAPSHOT``, which
  no busy timeout cures), so we never ask it to. Reads before the first write therefore behave as
  under PostgreSQL's READ COMMITTED: code that must read-then-write atomically reads ``FOR UPDATE``.

Web requests wait at most :data:`WEB_BUSY_TIMEOUT_MS` for a lock (SQLite busy timeout, PostgreSQL
``lock_timeout``) and then fail with :func:`is_busy` errors, which the app answers with 503 and
``Retry-After``. Workers, jobs and the CLI keep the long :data:`WORKER_BUSY_TIMEOUT_MS`.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import structlog
from sqlalchemy import JSON, CursorResult, DateTime, Engine, MetaData, Result, String, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

log = structlog.get_logger("strongroom.db")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rowcount(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched (``Session.execute`` types its result as a plain Result)."""
    assert isinstance(result, CursorResult)
    return result.rowcount


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        dt.datetime: UtcDateTime(),
        dict[str, Any]: JSON(),
        str: String(255),
    }


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class CreatedMixin:
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


WEB_BUSY_TIMEOUT_MS = 3000  # a request waits this long for a lock, then answers 503
WORKER_BUSY_TIMEOUT_MS = 30000  # jobs, workers and the CLI may wait longer
_LOCKED = "sr_write_locked"  # Connection.info: does the current SQLite transaction hold the write lock?
_BUSY = "sr_busy_ms"  # Connection.info: the busy timeout last set on this DBAPI connection
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


def _writes(statement: str, context: Any) -> bool:
    if context is not None and (context.isinsert or context.isupdate or context.isdelete):
        return True
    compiled = getattr(context, "compiled", None)
    if compiled is not None and getattr(compiled.statement, "_for_update_arg", None) is not None:
        return True  # SQLite drops FOR UPDATE from the SQL; the write lock is its row lock
    return statement.lstrip()[:7].upper().startswith(_WRITES)


def _take_write_lock(conn: Any) -> None:
    """Turn the current deferred transaction into an immediate one (see the module docstring)."""
    dbapi_conn = conn.connection.dbapi_connection
    conn.info[_LOCKED] = True
    try:
        if dbapi_conn.in_transaction:
            dbapi_conn.execute("COMMIT")  # nothing written yet: this only ends the read snapshot
        dbapi_conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        raise exc.OperationalError("BEGIN IMMEDIATE", (), error) from error


SQLITE_SYNCHRONOUS = ("full", "extra", "normal")


def _configure_sqlite(engine: Engine, synchronous: str = "full") -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={WORKER_BUSY_TIMEOUT_MS}")
        # FULL: a commit is on disk when it returns. With NORMAL (WAL's usual choice) a power cut may roll
        # back commits that something irreversible already followed: spool files deleted after their
        # instances' rows, a DICOM sender or an HTTP client told "stored", an inbox object removed.
        cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        busy = options.get("busy_timeout_ms") or WORKER_BUSY_TIMEOUT_MS
        if conn.info.get(_BUSY, WORKER_BUSY_TIMEOUT_MS) != busy:
            conn.connection.dbapi_connection.execute(f"PRAGMA busy_timeout={int(busy)}")
            conn.info[_BUSY] = busy
        conn.info[_LOCKED] = True  # BEGIN itself must not trigger the upgrade below
        if options.get("deferred"):
            conn.exec_driver_sql("BEGIN")
            conn.info[_LOCKED] = False
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine, "before_cursor_execute")
    def _before_execute(conn: Any, _cursor: Any, statement: str, _params: Any, context: Any,
                        _many: bool) -> None:
        if not conn.info.get(_LOCKED, True) and _writes(statement, context):
            _take_write_lock(conn)

    @event.listens_for(engine, "savepoint")
    def _before_savepoint(conn: Any, _name: str) -> None:
        if not conn.info.get(_LOCKED, True):  # a savepoint cannot survive the upgrade's COMMIT
            _take_write_lock(conn)

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _on_end(conn: Any) -> None:
        conn.info[_LOCKED] = True  # no transaction left to upgrade


def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        busy = conn.get_execution_options().get("busy_timeout_ms")
        if busy:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(busy)}")


def is_busy(error: BaseException) -> bool:
    """Did the database give up waiting for a lock held by someone else?"""
    if not isinstance(error, exc.OperationalError | exc.DBAPIError):
        return False
    orig = error.orig
    if isinstance(orig, sqlite3.OperationalError):
        message = str(orig).lower()
        return "database is locked" in message or "database table is locked" in message or "busy" in message
    # PostgreSQL: lock_not_available (lock_timeout), deadlock_detected, serialization_failure
    return getattr(orig, "sqlstate", None) in {"55P03", "40P01", "40001"}


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            from .paths import private_dir, private_file, tighten

            # the hub's alone, whatever the umask: a 0700 folder, the database made 0600 before SQLite opens it
            # (its -wal and -shm take the database's mode); an older hub's 0644 ones are tightened
            database = Path(parsed.database)
            private_dir(database.parent)
            private_file(database)
            tighten(Path(f"{database}-wal"))
            tighten(Path(f"{database}-shm"))
        # ``?synchronous=normal`` trades the durability of the last commits after a power cut for speed
        # (the test suite's choice, as ``synchronous_commit=off`` is on PostgreSQL); never the default
        synchronous = str(parsed.query.get("synchronous", "full")).lower()
        if synchronous not in SQLITE_SYNCHRONOUS:
            raise ValueError(f"database url: synchronous must be one of {', '.join(SQLITE_SYNCHRONOUS)}")
        parsed = parsed.difference_update_query(["synchronous"])
        engine = create_engine(parsed, connect_args={"check_same_thread": False,
                                                     "timeout": WORKER_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine, synchronous)
        return engine
    if parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    _configure_postgresql(engine)
    return engine


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    return make_engine(url)


@lru_cache(maxsize=32)
def _bind(engine: Engine, deferred: bool, busy_timeout_ms: int | None) -> Engine:
    return engine.execution_options(deferred=deferred, busy_timeout_ms=busy_timeout_ms)


def open_session(factory: sessionmaker[Session], *, deferred: bool = False,
                 busy_timeout_ms: int | None = None) -> Session:
    """A session from ``factory`` whose transactions begin deferred (take the write lock only when
    they write) or immediate, and wait at most ``busy_timeout_ms`` for a lock."""
    if not deferred and busy_timeout_ms is None:
        return factory()
    engine = factory.kw["bind"]
    return factory(bind=_bind(engine, deferred, busy_timeout_ms))


# -- effects outside the database, once a transaction has committed ------------------------------------
AFTER_COMMIT = "after_commit"  # the session.info entry holding what to run once the transaction commits


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run ``action`` once the session's transaction commits, never if it rolls back: for an effect outside the
    database that must not happen unless the change does (deleting a stored body the rows stop referring to).
    A failing action is logged: the commit stands (at worst an object stays behind, referred to by nothing).
    Not for work inside a savepoint that may roll back on its own."""
    session.info.setdefault(AFTER_COMMIT, []).append(action)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for action in session.info.pop(AFTER_COMMIT, ()):
        try:
            action()
        except Exception:
            log.exception("db.after_commit.failed")


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    session.info.pop(AFTER_COMMIT, None)


@contextmanager
def transaction(factory: sessionmaker[Session], *, deferred: bool = False) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception. ``deferred``: read
    without the write lock until the first write (see the module docstring)."""
    with open_session(factory, deferred=deferred) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
