"""The catalogue generation: how every process learns, without asking the database, that something a public landing
page is rendered from may have changed.

A *generation token* names what this process knows of the database's catalogue. It changes after every committed
change to a table the landing page's revision or its e-mail check reads (``WATCHED_TABLES``: the entry and its
images and facets, dataset versions, DOIs, access policies, and users — a person's address must be withheld as soon
as it is theirs; of an ORM update of a user, only a changed ``email`` counts, so logins do not), whichever process
made the change: the web workers, the job runner or the CLI. The signal is emitted from the model layer (SQLAlchemy
session and mapper events, so every write through the ORM — flushed objects and ``session.execute(update(...))``
alike — is seen), never from web routes:

- **In this process**, at once: ``after_commit`` of a session that wrote a watched table bumps the local counter
  before ``commit()`` returns.
- **SQLite** (one host by design): the same ``after_commit`` increments a shared 8-byte counter in a file beside the
  database (``<database>-catalog``, under an exclusive ``flock``); every process maps it and reads it on each
  request (an ``os.stat`` for its inode and one 8-byte read: about a microsecond). The counter moves only after the
  commit, so a process that sees the old value and then reads the database reads it no later than the new one.
- **PostgreSQL**: ``NOTIFY strongroom_catalog`` is sent on the writing transaction's own connection when the
  watched row is flushed (or the bulk statement runs), so PostgreSQL delivers it only if and when that transaction
  commits. A listener thread per process (its own connection, ``LISTEN``) bumps the local counter for each
  notification. While the listener is not connected the token is ``None`` and callers fall back to reading the
  revision on every request; after it (re)connects the counter is bumped once, so nothing said while it was away
  is missed. A change committed in another process is therefore seen once its notification has arrived
  (PostgreSQL sends it as the transaction commits; on one machine, well under a millisecond).

Anything else (an in-memory SQLite database, another backend) has only the in-process counter, which is exact for
one process.

Writes that bypass the ORM session (raw ``Connection.execute`` or textual SQL on these tables) are not seen; the
code base has none, and ``page_cache.MAX_AGE_SECONDS`` bounds any page's reuse regardless.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import mmap
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import UnboundExecutionError
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, SessionTransaction, object_session

from ..db import Base

log = structlog.get_logger("strongroom.catalog")

WATCHED_TABLES = frozenset({"catalog_entries", "catalog_images", "catalog_facets", "dataset_versions", "dois",
                            "access_policies", "users"})
# Of these tables' rows, an ORM update matters only if it changes these columns (a login's ``last_login_at`` does
# not: the page asks ``users`` only about e-mail addresses). Inserts, deletes and bulk statements always do.
RELEVANT_COLUMNS = {"users": ("email",)}
CHANNEL = "strongroom_catalog"
RECONNECT_SECONDS = 1.0  # the listener's wait before it connects again
HEALTH_SECONDS = 30.0  # how often an idle listener checks its connection is alive

_TOUCHED = "strongroom_catalog_touched"  # Session.info: this transaction wrote a watched table
_NOTIFIED = "strongroom_catalog_notified"  # Session.info: ... and its NOTIFY is already queued (PostgreSQL)
_serials = itertools.count(1)


class Generation:
    """One database's catalogue generation, as this process knows it."""

    def __init__(self, engine: Engine) -> None:
        self.serial = next(_serials)  # distinguishes databases (and fresh starts) within one process
        self.local = 0  # bumped by this process's commits and by every notification
        self.backend = engine.dialect.name
        self._lock = threading.Lock()
        self._url = engine.url
        self._listening = False
        self.listener_pid: int | None = None  # the listener's PostgreSQL backend (for operators and tests)
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self._counter: _Counter | None = None
        database = engine.url.database
        if self.backend == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
            self._counter = _Counter(Path(database + "-catalog"), Path(database))

    def token(self) -> tuple[int, ...] | None:
        """What this process knows of the catalogue now; None: unknown (read the database)."""
        if self._counter is not None:
            return self.serial, self.local, *self._counter.read()
        if self.backend == "postgresql":
            if self._listener is None or not self._listener.is_alive():
                self._start_listener()
            if not self._listening:
                return None
        return self.serial, self.local

    def bump(self) -> None:
        with self._lock:
            self.local += 1

    def committed(self) -> None:
        """After a commit that wrote a watched table (in this process)."""
        self.bump()
        if self._counter is not None:
            try:
                self._counter.increment()
            except OSError:  # the change is committed; other processes may miss it until MAX_AGE
                log.exception("catalog.generation_not_signalled", path=str(self._counter.path))

    # -- PostgreSQL ---------------------------------------------------------------------------
    def _start_listener(self) -> None:
        with self._lock:
            if self._listener is not None and self._listener.is_alive():
                return
            self._listening = False
            self._listener = threading.Thread(target=self._listen, name="catalog-listener", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        import psycopg

        conninfo = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, application_name="strongroom-catalog-listener",
                                     keepalives=1, keepalives_idle=10, keepalives_interval=5,
                                     keepalives_count=3) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listener_pid = conn.info.backend_pid
                    self.bump()  # whatever was said while nobody listened
                    self._listening = True
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=HEALTH_SECONDS):
                            self.bump()
                        conn.execute("SELECT 1")  # a silently dead connection fails here
            except Exception as error:  # any failure: fall back to reading, then reconnect
                log.warning("catalog.listener_lost", error=str(error))
            finally:
                self._listening = False
            self._stop.wait(RECONNECT_SECONDS)

    def stop(self) -> None:
        self._stop.set()


class _Counter:
    """A shared 8-byte counter in a file, mapped into every process."""

    def __init__(self, path: Path, database: Path) -> None:
        self.path = path
        self._database = database
        self._inode = -1
        self._map: mmap.mmap | None = None
        self._lock = threading.Lock()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):  # whoever may write the database may signal its changes
                mode = self._database.stat().st_mode & 0o666
                if os.fstat(fd).st_mode & 0o777 != mode:
                    os.fchmod(fd, mode)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < 8:
                    os.ftruncate(fd, 8)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            # a replaced map is left to the garbage collector: another thread may be reading it
            self._map = mmap.mmap(fd, 8)
            self._inode = os.fstat(fd).st_ino
        finally:
            os.close(fd)

    def read(self) -> tuple[int, int]:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = -2
        if inode != self._inode or self._map is None:
            with self._lock:
                try:
                    if inode != self._inode or self._map is None:
                        self._open()
                except OSError:
                    log.exception("catalog.generation_unreadable", path=str(self.path))
                    return next(_serials), 0  # never equal to any earlier token: read the database
        assert self._map is not None
        return self._inode, int.from_bytes(self._map[:8], "little")

    def increment(self) -> None:
        self.read()  # (re)opens a replaced file
        assert self._map is not None
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            value = int.from_bytes(self._map[:8], "little") + 1
            self._map[:8] = value.to_bytes(8, "little")  # one aligned 8-byte store: read whole by readers
        finally:
            os.close(fd)  # releases the lock


_GENERATIONS: weakref.WeakKeyDictionary[Engine, Generation] = weakref.WeakKeyDictionary()
_BY_URL: dict[str, Generation] = {}
_REGISTRY_LOCK = threading.Lock()


def of(engine: Engine) -> Generation:
    """The generation of the database ``engine`` connects to (one per database per process)."""
    found = _GENERATIONS.get(engine)
    if found is not None:
        return found
    with _REGISTRY_LOCK:
        key = engine.url.render_as_string(hide_password=False)
        generation = _BY_URL.get(key)
        if generation is None:
            generation = _BY_URL[key] = Generation(engine)
        _GENERATIONS[engine] = generation
        return generation


def token(engine: Engine) -> tuple[int, ...] | None:
    return of(engine).token()


def _reset_after_fork() -> None:  # a child has none of its parent's threads: start afresh
    _GENERATIONS.clear()
    _BY_URL.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


# -- the model layer's signal ------------------------------------------------------------------------
def _engine_of(session: Session) -> Engine | None:
    try:
        bind = session.get_bind()
    except UnboundExecutionError:  # a session bound per mapper only: nothing of ours
        return None
    return bind.engine if isinstance(bind, Engine | Connection) else None


def _touched(session: Session, connection: Connection | None) -> None:
    session.info[_TOUCHED] = True
    engine = _engine_of(session)
    if session.info.get(_NOTIFIED) or engine is None or engine.dialect.name != "postgresql":
        return
    conn = connection if connection is not None else session.connection()
    conn.exec_driver_sql(f"NOTIFY {CHANNEL}")  # delivered when (and only if) this transaction commits
    session.info[_NOTIFIED] = True


def _after_row(_mapper: Any, connection: Connection, target: Any) -> None:
    session = object_session(target)
    if session is not None:
        _touched(session, connection)


def _after_update(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    columns = RELEVANT_COLUMNS.get(getattr(mapper.local_table, "name", ""))
    if columns is not None:
        attrs = inspect(target).attrs
        if not any(attrs[c].history.has_changes() for c in columns):
            return
    _after_row(mapper, connection, target)


def _watch(mapper: Mapper[Any], _class: type | None = None) -> None:
    """Signal the catalogue generation on every insert, update and delete of a watched table's rows (only those
    mappers carry the listeners: the others' flushes are untouched)."""
    if getattr(mapper.local_table, "name", None) not in WATCHED_TABLES:
        return
    for name, listener in (("after_insert", _after_row), ("after_update", _after_update),
                           ("after_delete", _after_row)):
        if not event.contains(mapper, name, listener):
            event.listen(mapper, name, listener)


event.listen(Mapper, "after_mapper_constructed", _watch)
for _mapper in Base.registry.mappers:  # the models defined before this module was imported
    _watch(_mapper)


@event.listens_for(Session, "do_orm_execute")
def _bulk(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) in WATCHED_TABLES:
            _touched(state.session, None)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    session.info.pop(_NOTIFIED, None)
    if session.info.pop(_TOUCHED, None):
        engine = _engine_of(session)
        if engine is not None:
            of(engine).committed()


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # a rolled-back savepoint drops the NOTIFY it queued: queue it again at the next watched write
    session.info.pop(_NOTIFIED, None)
    if transaction.parent is None and not transaction.nested:
        session.info.pop(_TOUCHED, None)  # after_commit has run if it committed; a rollback changed nothing
