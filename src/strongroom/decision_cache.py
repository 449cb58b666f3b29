"""The API's decision cache: what a web process remembers, across requests, of the authorisation decision's inputs —
an API token with its user (``identity.service.authenticate_token``), a user's readable projects, i.e. their
memberships with their roles' rights (``archive.authz.readable_projects``), and whether a file is readable through a
dataset shared into one of those projects (``archive.authz.authorize_read``) — so a request whose inputs have not
changed reads none of them from the database.

It is valid for one *authz generation* (``strongroom.generation``, topic ``authz``): every committed change to
``api_tokens``, ``users``, ``memberships``, ``roles``, ``projects``, ``dataset_shares``, ``dataset_versions`` or
``dataset_files`` made through the model layer in any process
(web workers, job runner, CLI) moves the generation, and a process whose generation moved drops the whole cache
before its next decision. Not counted: a token's ``last_used_at`` (the use audit), a user's ``last_login_at``, a
project's ``used_bytes``/``reserved_bytes`` (quota accounting) — nothing the decision reads. SQLite: the shared
counter file ``<database>-authz``, moved before the writer's ``commit()`` returns; PostgreSQL: ``NOTIFY
strongroom_authz`` and a listener thread per process, and while the listener is not connected there is no cache (every
decision reads the database).

The rules that keep it exact:

- An entry is stored under the generation token read when its transaction *began* (``after_begin``, before the
  transaction's first read), and only if that token is still the current one: what it read is then at least as new
  as that generation, so a change committed after the token was read moves the generation and drops the entry.
- A session with uncommitted changes of its own (a pending or flushed write to one of the watched tables) neither
  uses nor fills the cache: it reads the database, and sees its own changes.
- Only tokens that were accepted are kept; expiry is checked against the clock on every request, the secret's hash
  is compared on every request, and anything refused (revoked, expired, disabled, unknown, a wrong secret) is
  decided and audited by the database path every time.
- Only what the database says is kept: the token's row, its user's row, the set of projects the user may read
  data of, and the share (if any) that makes a file readable from them. Grants (applications, visas), holds, a
  file's own row and project settings are still read per request.

Only processes that ``enable`` it use it (``strongroom serve``: ``[security] decision_cache``, on by default); every
process signals its changes regardless.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Pool, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from . import generation
from .identity.models import ApiToken, User

AUTHZ = generation.register(generation.Topic(
    "authz", frozenset({"api_tokens", "users", "memberships", "roles", "projects",
                        "dataset_shares", "dataset_versions", "dataset_files"}),
    ignored={"api_tokens": ("last_used_at",), "users": ("last_login_at",),
             "projects": ("used_bytes", "reserved_bytes")}))

MAX_ENTRIES = 10_000  # per kind; a full cache is dropped and refilled (one generation's worth of callers)

_BEGUN = "strongroom.decision_cache.begun"  # Session.info: the authz generation when the transaction began
_OWN_WINDOWS = "strongroom.decision_cache.own_windows"  # Session.info: use windows this transaction records
_USER_COLUMNS = tuple(c.key for c in User.__mapper__.column_attrs)
ReadableKey = tuple[uuid.UUID, uuid.UUID | None, dt.date]  # ``archive.authz.readable_projects``'s


@dataclass(frozen=True)
class TokenEntry:
    """An accepted token's row and its user's, as the database held them in the entry's generation."""

    token_id: uuid.UUID
    user_id: uuid.UUID
    prefix: str
    secret_hash: str
    scopes: tuple[str, ...]
    expires_at: dt.datetime
    created_at: dt.datetime
    user: tuple[Any, ...]  # the user's column values, in _USER_COLUMNS order


@dataclass
class _State:
    token: tuple[int, ...]
    tokens: dict[str, TokenEntry] = field(default_factory=dict)
    # (user, the token's project, the day: an end date passes without a write) -> the projects they read data of
    readable: dict[ReadableKey, frozenset[uuid.UUID]] = field(default_factory=dict)
    # (file id, readable projects) -> the share that lets them read it, (project, dataset), or None: no share
    shares: dict[tuple[str, frozenset[uuid.UUID]], tuple[uuid.UUID, str] | None] = field(default_factory=dict)
    windows: dict[str, dt.datetime] = field(default_factory=dict)  # token prefix -> use window already recorded


class DecisionCache:
    """One database's cache in this process. All its entries belong to one generation (``_State``); a new
    generation replaces the state whole, so a reader holding the old one only ever sees entries of its own."""

    def __init__(self, engine: Engine) -> None:
        self.generation = generation.of(engine, AUTHZ)
        self._state: _State | None = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def current(self) -> _State | None:
        """The state for the generation now; None while the generation is unknown (no cache)."""
        now = self.generation.token()
        if now is None:
            self._state = None
            return None
        state = self._state
        if state is None or state.token != now:
            with self._lock:
                state = self._state
                if state is None or state.token != now:
                    state = self._state = _State(now)
        return state

    def for_storing(self, tag: tuple[int, ...] | None) -> _State | None:
        """The state to store into what was read under generation ``tag``: only if ``tag`` is current."""
        if tag is None:
            return None
        state = self.current()
        return state if state is not None and state.token == tag else None

    def clear(self) -> None:
        self._state = None


# By the engine's connection pool: an engine with other execution options (``db.open_session``'s deferred and
# busy-timeout binds) shares its pool, and so its database and cache.
_CACHES: weakref.WeakKeyDictionary[Pool, DecisionCache] = weakref.WeakKeyDictionary()


def enable(engine: Engine) -> DecisionCache:
    """Use the cache in this process for decisions on ``engine``'s database (the web server does)."""
    cache = _CACHES.get(engine.pool)
    if cache is None:
        cache = _CACHES[engine.pool] = DecisionCache(engine)
        cache.current()  # PostgreSQL: start the listener now, not at the first request
    return cache


def of(session: Session) -> DecisionCache | None:
    """The cache this session's decisions may use now, or None: not enabled, or the session has changes of its
    own (pending, or written to a watched table in this transaction)."""
    if not _CACHES:
        return None
    bind = session.bind
    engine = bind.engine if isinstance(bind, Engine | Connection) else None
    cache = _CACHES.get(engine.pool) if engine is not None else None
    if cache is None or session.new or session.dirty or session.deleted or generation.touched(session, AUTHZ):
        return None
    return cache


@event.listens_for(Session, "after_begin")
def _begun(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    if not _CACHES:
        return
    cache = _CACHES.get(connection.engine.pool)
    if cache is not None:
        session.info[_BEGUN] = cache.generation.token()  # before the transaction's first read


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    for state, prefix, window in session.info.pop(_OWN_WINDOWS, ()):
        state.windows[prefix] = window  # recorded: the rest of the window writes nothing


@event.listens_for(Session, "after_transaction_end")
def _ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and not transaction.nested:
        session.info.pop(_BEGUN, None)
        session.info.pop(_OWN_WINDOWS, None)  # rolled back: the window's use is not recorded


def _storable(session: Session) -> _State | None:
    """Where to keep what this session's transaction read, or None."""
    cache = of(session)
    return cache.for_storing(session.info.get(_BEGUN)) if cache is not None else None


# -- tokens ----------------------------------------------------------------------------------------------
def cached_token(session: Session, prefix: str) -> tuple[TokenEntry, _State] | None:
    cache = of(session)
    state = cache.current() if cache is not None else None
    entry = state.tokens.get(prefix) if state is not None else None
    if cache is not None:
        if entry is None:
            cache.misses += 1
        else:
            cache.hits += 1
    return (entry, state) if entry is not None and state is not None else None


def remember_token(session: Session, token: ApiToken, user: User, window: dt.datetime | None) -> None:
    """An accepted token and its user, read in this session's transaction (``window``: the use window whose
    use another, committed transaction recorded, if one did — this transaction's own record goes through
    ``remember_window_on_commit``)."""
    state = _storable(session)
    if state is None:
        return
    if len(state.tokens) >= MAX_ENTRIES:
        state.tokens.clear()
        state.windows.clear()
    state.tokens[token.prefix] = TokenEntry(
        token.id, token.user_id, token.prefix, token.secret_hash, tuple(token.scopes), token.expires_at,
        token.created_at, tuple(getattr(user, c) for c in _USER_COLUMNS))
    if window is not None:
        state.windows[token.prefix] = window


def remember_window_on_commit(session: Session, prefix: str, window: dt.datetime,
                              state: _State | None = None) -> None:
    """This transaction records the token's use in ``window``: the cache knows it once the transaction commits
    (a rollback takes the record with it, and the next use must write it again)."""
    state = state or _storable(session)
    if state is not None:
        session.info.setdefault(_OWN_WINDOWS, []).append((state, prefix, window))


def user_in(session: Session, entry: TokenEntry) -> User:
    """The entry's user as a persistent object of ``session`` (no query): its identity map's, if it holds it."""
    key = identity_key(User, entry.user_id)
    found = session.identity_map.get(key)
    if isinstance(found, User):
        return found
    user = User.__mapper__.class_manager.new_instance()
    for name, value in zip(_USER_COLUMNS, entry.user, strict=True):
        set_committed_value(user, name, value)
    make_transient_to_detached(user)
    session.add(user)
    return user


# -- readable projects and shares ---------------------------------------------------------------------------
NOT_CACHED = object()  # a lookup's answer when the cache does not know (None is a cached "no share")


def _lookup(session: Session, entries_of: Callable[[_State], dict[Any, Any]], key: Any) -> Any:
    cache = of(session)
    state = cache.current() if cache is not None else None
    return entries_of(state).get(key, NOT_CACHED) if state is not None else NOT_CACHED


def _remember(session: Session, entries_of: Callable[[_State], dict[Any, Any]], key: Any, value: Any) -> None:
    state = _storable(session)
    if state is None:
        return
    entries = entries_of(state)
    if len(entries) >= MAX_ENTRIES:
        entries.clear()
    entries[key] = value


def cached_readable(session: Session, key: ReadableKey) -> frozenset[uuid.UUID] | None:
    found = _lookup(session, lambda state: state.readable, key)
    return None if found is NOT_CACHED else found


def remember_readable(session: Session, key: ReadableKey, readable: frozenset[uuid.UUID]) -> None:
    _remember(session, lambda state: state.readable, key, readable)


def cached_share(session: Session, key: tuple[str, frozenset[uuid.UUID]]) -> Any:
    """The share through which one of the readable projects reads the file (project id, dataset id), None for
    none, or ``NOT_CACHED``."""
    return _lookup(session, lambda state: state.shares, key)


def remember_share(session: Session, key: tuple[str, frozenset[uuid.UUID]],
                   share: tuple[uuid.UUID, str] | None) -> None:
    _remember(session, lambda state: state.shares, key, share)
