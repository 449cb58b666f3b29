"""Audit events written after the fact, made durable across a database outage.

Most events are written in the same transaction as the change they describe (either both land or neither
does). A few describe something that already happened outside any transaction and cannot be undone: a
download's end (every byte sent, or the client gone), a refused download whose request rolled back, a
refused DICOM association. If the database does not answer at that moment, the event used to be logged
and lost. :func:`record_after` writes it to the chain, or, when the database cannot be reached (or this
process still holds a hub secret that was rotated away, which cannot write to the chain), appends it
to a local outbox (JSON lines, fsync'd before the call returns: ``[audit] outbox_file``, default
``<var_dir>/audit-outbox.jsonl``), from where it is replayed into the chain:

* by a background thread of the process that wrote it, retrying with backoff (0.5 s doubling to 15 s)
  until the database answers, and at the next event that process writes after the fact;
* at start-up of any process on the host (``serve``, ``worker``, ``dicom serve``: :func:`resume`), for
  what a process that died left behind.

Exactly once: every entry has a random key, written into the event's details (``outbox_key``); a replay
takes the chain's head lock first and then skips each entry whose key the chain already holds, so a
replay whose commit was not confirmed (the connection broke in the commit), a crash between the commit
and the truncation of the file, or two processes replaying the same file, never write an event twice.
Order: a replayed event is appended at the chain's head like any other (its sequence number is the
order in which the chain learnt of it; ``occurred_at`` in its details is when it happened), entries are
replayed in the order they were written, and while a process has entries waiting, its new after-the-fact
events queue behind them instead of overtaking them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from ..db import transaction, utcnow
from ..hub import Hub
from ..paths import private_dir
from . import service as audit
from .models import AuditEvent
from .service import Actor

log = structlog.get_logger("strongroom.audit")

KEY = "outbox_key"
# How far the clocks of two hosts may disagree: the key of an entry is looked for among the events written
# since (its creation - this), found by walking the chain back from its head.
CLOCK_SKEW = dt.timedelta(minutes=10)
FIRST_RETRY, LAST_RETRY = 0.5, 15.0

_retriers: dict[Path, threading.Thread] = {}
_retriers_lock = threading.Lock()


def outbox_path(hub: Hub) -> Path:
    configured = hub.settings.audit.outbox_file
    return Path(configured) if configured else Path(hub.settings.var_dir) / "audit-outbox.jsonl"


def record_after(hub: Hub, actor: Actor, action: str, *, outcome: str = "ok", project_id: uuid.UUID | None = None,
                 subject_user_id: uuid.UUID | None = None, target: str | None = None,
                 details: dict[str, Any] | None = None) -> bool:
    """Append an event describing something already done, in a transaction of its own (call it outside any
    other). Returns True if it is in the chain now, False if it waits in the outbox (durably: on disk, its
    replay scheduled). Raises only if neither the database nor the outbox file could take it."""
    entry = {KEY: uuid.uuid4().hex, "occurred_at": utcnow().isoformat(), "action": action, "outcome": outcome,
             "actor_id": str(actor.id) if actor.id else None, "actor": actor.label, "ip": actor.ip,
             "project_id": str(project_id) if project_id else None,
             "subject_user_id": str(subject_user_id) if subject_user_id else None,
             "target": target, "details": details or {}}
    path = outbox_path(hub)
    if not _pending(path):
        try:
            with transaction(hub.sessions) as session:
                _write(session, entry, replayed=False)
            return True
        except (SQLAlchemyError, audit.StaleSecret) as exc:  # the database, or this process's rotated-away secret
            log.warning("audit.outbox.deferred", action=action, target=target, error=type(exc).__name__)
    _append(path, entry)  # behind whatever waits already: never overtakes an older event
    _schedule(hub, path)
    return False


def _write(session: Any, entry: dict[str, Any], *, replayed: bool) -> None:
    details = dict(entry["details"])
    if replayed:
        details |= {KEY: entry[KEY], "occurred_at": entry["occurred_at"]}
    actor = Actor(id=uuid.UUID(entry["actor_id"]) if entry["actor_id"] else None, label=entry["actor"],
                  ip=entry["ip"])
    audit.record(session, actor, entry["action"], outcome=entry["outcome"],
                 project_id=uuid.UUID(entry["project_id"]) if entry["project_id"] else None,
                 subject_user_id=uuid.UUID(entry["subject_user_id"]) if entry["subject_user_id"] else None,
                 target=entry["target"], details=details)


# -- the file ----------------------------------------------------------------------------------------
def _pending(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """The outbox file, open for appending and exclusively locked (processes on the same host share it)."""
    private_dir(path.parent)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if created:  # the file's name is durable too
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _append(path: Path, entry: dict[str, Any]) -> None:
    line = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
    with _locked(path) as fd:
        os.write(fd, line)
        os.fsync(fd)
    log.warning("audit.outbox.queued", action=entry["action"], target=entry["target"], key=entry[KEY])


def _read(fd: int) -> list[dict[str, Any]]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    entries = []
    for raw in b"".join(chunks).splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:  # a line cut short by a crash mid-write: it was never acknowledged to anyone
            log.error("audit.outbox.unreadable_line", line=raw[:200].decode(errors="replace"))
            continue
        entries.append(entry)
    return entries


# -- replay ------------------------------------------------------------------------------------------
def replay(hub: Hub) -> int:
    """Write every waiting entry into the chain (those it already holds are skipped), in one transaction,
    then empty the outbox. Returns how many were written; raises SQLAlchemyError if the database still
    does not answer (the outbox is left as it was)."""
    path = outbox_path(hub)
    if not _pending(path):
        return 0
    with _locked(path) as fd:
        entries = _read(fd)
        written = 0
        if entries:
            with transaction(hub.sessions) as session:
                audit._locked_head(session)  # from here on no one else appends: the key check below holds
                seen = _keys_in_chain(session, min(dt.datetime.fromisoformat(e["occurred_at"]) for e in entries))
                for entry in entries:
                    if entry[KEY] in seen:
                        continue
                    _write(session, entry, replayed=True)
                    seen.add(entry[KEY])
                    written += 1
        os.ftruncate(fd, 0)
        os.fsync(fd)
    log.info("audit.outbox.replayed", written=written, skipped=len(entries) - written)
    return written


def _keys_in_chain(session: Any, since: dt.datetime) -> set[str]:
    """The outbox keys of the events written since ``since`` (less the clock skew): the chain walked back
    from its head by sequence number (the primary key) until an older event."""
    floor = session.scalar(select(AuditEvent.seq).where(AuditEvent.at < since - CLOCK_SKEW)
                           .order_by(AuditEvent.seq.desc()).limit(1)) or 0
    keys = session.scalars(select(AuditEvent.details[KEY].as_string())
                           .where(AuditEvent.seq > floor, AuditEvent.details[KEY].as_string().is_not(None)))
    return {k for k in keys if k}


def _schedule(hub: Hub, path: Path) -> None:
    """Make sure a thread of this process replays the outbox until it is empty."""
    with _retriers_lock:
        running = _retriers.get(path)
        if running is not None and running.is_alive():
            return
        thread = threading.Thread(target=_retry, args=(hub, path), name="audit-outbox", daemon=True)
        _retriers[path] = thread
        thread.start()


def _retry(hub: Hub, path: Path) -> None:
    delay, idle = FIRST_RETRY, threading.Event()
    while True:
        try:
            replay(hub)
        except SQLAlchemyError as exc:
            log.info("audit.outbox.waiting", retry_in=delay, error=type(exc).__name__)
        except Exception:  # not the database: keep the entries, say so loudly, keep trying
            log.exception("audit.outbox.replay_failed")
        with _retriers_lock:
            if not _pending(path):
                _retriers.pop(path, None)
                return
        idle.wait(delay)  # backoff between attempts
        delay = min(delay * 2, LAST_RETRY)


def resume(hub: Hub) -> None:
    """At start-up: replay what a process on this host left in the outbox (in the background)."""
    path = outbox_path(hub)
    if _pending(path):
        log.warning("audit.outbox.found", path=str(path))
        _schedule(hub, path)
