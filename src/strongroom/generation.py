"""Generations: how every process learns, without asking the database, that something it keeps in memory may have
changed. One mechanism, several *topics* (``Topic``): the public landing pages' catalogue (``catalog.generation``)
and the API's authorisation decisions (``decision_cache``).

A *generation token* names what this process knows of one topic's tables in one database. It changes after every
committed change to one of the topic's tables (``Topic.tables``; of an ORM update, only one changing a column that
matters: ``Topic.relevant`` lists the only columns that count, ``Topic.ignored`` the columns that do not), whichever
process made the change: the web workers, the job runner or the CLI. The signal is emitted from the model layer
(SQLAlchemy session and mapper events, so every write through the ORM — flushed objects and
``session.execute(update(...))`` alike — is seen), never from web routes:

- **In this process**, at once: ``after_commit`` of a session that wrote a watched table bumps the local counter
  before ``commit()`` returns.
- **SQLite** (one host by design): the same ``after_commit`` increments a shared 8-byte counter in a file beside the
  database (``<database>-<topic>``, under an exclusive ``flock``); every process maps it and reads it on each
  request (a ``statx`` for its inode, called with the GIL held, and one 8-byte read: a few microseconds). The
  counter moves only after the commit, so a process that sees the old value and then reads the database reads it
  no later than the new one.
- **PostgreSQL**: ``NOTIFY strongroom_<topic>`` is sent on the writing transaction's own connection when the
  watched row is flushed (or the bulk statement runs), so PostgreSQL delivers it only if and when that transaction
  commits. A listener thread per topic and process (its own connection, ``LISTEN``) bumps the local counter for
  each notification. While the listener is not connected the token is ``None`` and callers fall back to reading
  the database on every request; after it (re)connects the counter is bumped once, so nothing said while it was
  away is missed. A change committed in another process is therefore seen once its notification has arrived
  (PostgreSQL sends it as the transaction commits; on one machine, well under a millisecond).

Anything else (an in-memory SQLite database, another backend) has only the in-process counter, which is exact for
one process.

A bulk ``UPDATE`` counts unless the topic ignores every column it sets (``Topic.ignored``; a statement whose
columns cannot be read counts). Writes that bypass the ORM session (raw ``Connection.execute`` or textual SQL on
these tables) are not seen; the code base has none.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import itertools
import mmap
import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import UnboundExecutionError
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, SessionTransaction, object_session

from .db import Base

log = structlog.get_logger("strongroom.generation")

RECONNECT_SECONDS = 1.0  # the listener's wait before it connects again
HEALTH_SECONDS = 30.0  # how often an idle listener checks its connection is alive

_serials = itertools.count(1)


@dataclass(frozen=True)
class Topic:
    """What one generation watches. ``relevant``: of an ORM update of these tables, only a change to one of these
    columns counts (inserts, deletes and bulk statements always do). ``ignored``: an update (ORM or bulk) that
    changes only these columns does not count."""

    name: str
    tables: frozenset[str]
    relevant: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ignored: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def channel(self) -> str:
        return f"strongroom_{self.name}"

    @property
    def touched_key(self) -> str:  # Session.info: this transaction wrote one of the topic's tables
        return f"strongroom_{self.name}_touched"

    @property
    def notified_key(self) -> str:  # Session.info: ... and its NOTIFY is already queued (PostgreSQL)
        return f"strongroom_{self.name}_notified"

    def update_counts(self, table: str, changed: set[str] | None) -> bool:
        """Whether an update of ``table`` changing ``changed`` (None: not known) counts as a change."""
        if changed is None:
            return True
        relevant = self.relevant.get(table)
        if relevant is not None and not changed & set(relevant):
            return False
        ignored = self.ignored.get(table)
        return not (ignored is not None and changed <= set(ignored))


_TOPICS: dict[str, Topic] = {}
_BY_TABLE: dict[str, list[Topic]] = {}


class Generation:
    """One topic's generation in one database, as this process knows it."""

    def __init__(self, engine: Engine, topic: Topic) -> None:
        self.topic = topic
        self.serial = next(_serials)  # distinguishes databases (and fresh starts) within one process
        self.local = 0  # bumped by this process's commits and by every notification
        self.backend = engine.dialect.name
        self._lock = threading.Lock()
        self._url = engine.url
        self._listening = False
        self.listener_pid: int | None = None  # the listener's PostgreSQL backend (for operators and tests)
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set: the listener connects again now, not after RECONNECT_SECONDS
        self._counter: _Counter | None = None
        database = engine.url.database
        if self.backend == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
            self._counter = _Counter(Path(f"{database}-{topic.name}"), Path(database))

    def token(self) -> tuple[int, ...] | None:
        """What this process knows of the topic now; None: unknown (read the database)."""
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
            except OSError:  # the change is committed; other processes may miss it
                log.exception("generation.not_signalled", topic=self.topic.name, path=str(self._counter.path))

    # -- PostgreSQL ---------------------------------------------------------------------------
    def _start_listener(self) -> None:
        with self._lock:
            if self._listener is not None and self._listener.is_alive():
                return
            self._listening = False
            self._listener = threading.Thread(target=self._listen, name=f"{self.topic.name}-listener", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        import psycopg

        conninfo = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True,
                                     application_name=f"strongroom-{self.topic.name}-listener",
                                     keepalives=1, keepalives_idle=10, keepalives_interval=5,
                                     keepalives_count=3) as conn:
                    conn.execute(f"LISTEN {self.topic.channel}")
                    self.listener_pid = conn.info.backend_pid
                    self.bump()  # whatever was said while nobody listened
                    self._listening = True
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=HEALTH_SECONDS):
                            self.bump()
                        conn.execute("SELECT 1")  # a silently dead connection fails here
            except Exception as error:  # any failure: fall back to reading, then reconnect
                log.warning("generation.listener_lost", topic=self.topic.name, error=str(error))
            finally:
                self._listening = False
            self._wake.wait(RECONNECT_SECONDS)
            self._wake.clear()

    def reconnect(self) -> None:
        """A listener that lost its connection connects again now, not after ``RECONNECT_SECONDS``."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

def _statx_without_releasing_the_gil() -> Callable[[bytes], int] | None:
    """The inode of a path by ``statx(2)`` called with the GIL held (``ctypes.PyDLL``), or None where there is none.

    ``os.stat`` releases the GIL around the system call; under many threads in flight, getting it back can cost
    one or more switch intervals (5 ms each) — on every request, for a microsecond's work. ``statx`` has one layout
    on every Linux architecture (``stx_mask`` at 0, ``stx_ino`` at 32)."""
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        call = libc.statx
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    call.restype = ctypes.c_int
    at_fdcwd, statx_ino = -100, 0x100
    local = threading.local()

    def inode(path: bytes) -> int:
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = ctypes.create_string_buffer(256)
        if call(at_fdcwd, path, 0, statx_ino, buffer) != 0:
            errno = ctypes.get_errno()
            raise FileNotFoundError(errno, os.strerror(errno)) if errno == 2 else OSError(errno, os.strerror(errno))
        if not int.from_bytes(buffer.raw[0:4], "little") & statx_ino:
            return os.stat(path).st_ino
        return int.from_bytes(buffer.raw[32:40], "little")

    return inode


_STATX = _statx_without_releasing_the_gil() if sys.platform == "linux" else None


def _inode(path: bytes) -> int:
    return _STATX(path) if _STATX is not None else os.stat(path).st_ino


class _Counter:
    """A shared 8-byte counter in a file, mapped into every process."""

    def __init__(self, path: Path, database: Path) -> None:
        self.path = path
        self._path_bytes = os.fsencode(path)
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
            inode = _inode(self._path_bytes)
        except FileNotFoundError:
            inode = -2
        if inode != self._inode or self._map is None:
            with self._lock:
                try:
                    if inode != self._inode or self._map is None:
                        self._open()
                except OSError:
                    log.exception("generation.unreadable", path=str(self.path))
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


_GENERATIONS: weakref.WeakKeyDictionary[Engine, dict[str, Generation]] = weakref.WeakKeyDictionary()
_BY_URL: dict[tuple[str, str], Generation] = {}
_REGISTRY_LOCK = threading.Lock()


def of(engine: Engine, topic: Topic) -> Generation:
    """The generation of ``topic`` in the database ``engine`` connects to (one per database per process)."""
    found = _GENERATIONS.get(engine)
    if found is not None:
        generation = found.get(topic.name)
        if generation is not None:
            return generation
    with _REGISTRY_LOCK:
        key = (engine.url.render_as_string(hide_password=False), topic.name)
        generation = _BY_URL.get(key)
        if generation is None:
            generation = _BY_URL[key] = Generation(engine, topic)
        _GENERATIONS.setdefault(engine, {})[topic.name] = generation
        return generation


def token(engine: Engine, topic: Topic) -> tuple[int, ...] | None:
    return of(engine, topic).token()


def _reset_after_fork() -> None:  # a child has none of its parent's threads: start afresh
    _GENERATIONS.clear()
    _BY_URL.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


# -- the model layer's signal ------------------------------------------------------------------------
def register(topic: Topic) -> Topic:
    """Watch ``topic``'s tables from now on (the models already mapped and those mapped later)."""
    with _REGISTRY_LOCK:
        if topic.name in _TOPICS:
            assert _TOPICS[topic.name] == topic, f"two topics named {topic.name!r}"
            return _TOPICS[topic.name]
        _TOPICS[topic.name] = topic
        for table in topic.tables:
            _BY_TABLE.setdefault(table, []).append(topic)
    for mapper in Base.registry.mappers:
        _watch(mapper)
    return topic


def _engine_of(session: Session) -> Engine | None:
    try:
        bind = session.get_bind()
    except UnboundExecutionError:  # a session bound per mapper only: nothing of ours
        return None
    return bind.engine if isinstance(bind, Engine | Connection) else None


def _touched(topic: Topic, session: Session, connection: Connection | None) -> None:
    session.info[topic.touched_key] = True
    engine = _engine_of(session)
    if session.info.get(topic.notified_key) or engine is None or engine.dialect.name != "postgresql":
        return
    conn = connection if connection is not None else session.connection()
    conn.exec_driver_sql(f"NOTIFY {topic.channel}")  # delivered when (and only if) this transaction commits
    session.info[topic.notified_key] = True


def _table(mapper: Mapper[Any]) -> str:
    return getattr(mapper.local_table, "name", "") or ""


def _after_row(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    session = object_session(target)
    if session is not None:
        for topic in _BY_TABLE.get(_table(mapper), ()):
            _touched(topic, session, connection)


def _after_update(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    session = object_session(target)
    if session is None:
        return
    table = _table(mapper)
    changed: set[str] | None = None
    for topic in _BY_TABLE.get(table, ()):
        if topic.relevant.get(table) is not None or topic.ignored.get(table) is not None:
            if changed is None:
                attrs = inspect(target).attrs
                changed = {c.key for c in mapper.column_attrs if attrs[c.key].history.has_changes()}
            if not topic.update_counts(table, changed):
                continue
        _touched(topic, session, connection)


def _watch(mapper: Mapper[Any], _class: type | None = None) -> None:
    """Signal on every insert, update and delete of a watched table's rows (only those mappers carry the
    listeners: the others' flushes are untouched)."""
    if _table(mapper) not in _BY_TABLE:
        return
    for name, listener in (("after_insert", _after_row), ("after_update", _after_update),
                           ("after_delete", _after_row)):
        if not event.contains(mapper, name, listener):
            event.listen(mapper, name, listener)


event.listen(Mapper, "after_mapper_constructed", _watch)


def _bulk_columns(statement: Any) -> set[str] | None:
    """The columns a bulk UPDATE sets, when its statement says (None: not known)."""
    values = getattr(statement, "_values", None)
    if not values or getattr(statement, "_multi_values", None):
        return None
    names = {getattr(column, "key", column) for column in values}
    return names if all(isinstance(n, str) for n in names) else None


@event.listens_for(Session, "do_orm_execute")
def _bulk(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        table = getattr(getattr(state.statement, "table", None), "name", None)
        topics = _BY_TABLE.get(table or "", ())
        for topic in topics:
            if state.is_update and topic.ignored.get(table or "") is not None \
                    and not topic.update_counts(table or "", _bulk_columns(state.statement)):
                continue
            _touched(topic, state.session, None)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    engine: Engine | None = None
    for topic in _TOPICS.values():
        session.info.pop(topic.notified_key, None)
        if session.info.pop(topic.touched_key, None):
            engine = engine or _engine_of(session)
            if engine is not None:
                of(engine, topic).committed()


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # a rolled-back savepoint drops the NOTIFY it queued: queue it again at the next watched write
    top = transaction.parent is None and not transaction.nested
    for topic in _TOPICS.values():
        session.info.pop(topic.notified_key, None)
        if top:  # after_commit has run if it committed; a rollback changed nothing
            session.info.pop(topic.touched_key, None)


def touched(session: Session, topic: Topic) -> bool:
    """Whether this session's current transaction wrote one of ``topic``'s tables (not yet committed)."""
    return bool(session.info.get(topic.touched_key))
