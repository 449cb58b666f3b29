"""Ingest: one pass turns an uploaded crypt4gh file into a verified archived body (retried safely after a crash)."""

from __future__ import annotations

import datetime as dt
import hmac
import io
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import structlog
from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..audit.service import Actor
from ..db import transaction, utcnow
from ..hub import Hub
from ..projects import quota
from . import c4gh
from .keys import hub_keys
from .models import (
    FAILED,
    INGESTED,
    READY,
    UPLOADED,
    VERIFIED,
    ArchiveFile,
)
from .storage.base import Storage, Writer, commit_all

log = structlog.get_logger("strongroom.archive")


class IngestRefused(Exception):
    """The upload cannot become an archived file; the reason is recorded for people to read."""


def ingest(hub: Hub, storage: Storage, file_id: str, *, workers: int = 2) -> str:
    """One pass over the uploaded bytes: open the header with an archive key, decrypt and verify
    every segment while hashing plaintext (SHA-256, MD5) and the received body (SHA-256), and store
    the body. Returns the final state. Safe to run again after a crash at any point."""
    with hub.sessions() as session:
        f = session.get(ArchiveFile, file_id)
        if f is None or f.state not in (UPLOADED, INGESTED, VERIFIED):
            return f.state if f else "missing"
        bundle = f.inbox_key if f.inbox_offset is not None else None
        keys = hub_keys(hub, session)
        inbox_key, declared, project_id, upload_size = f.inbox_key, f.declared_sha256, f.project_id, f.upload_size
    assert inbox_key is not None
    if bundle is not None:  # part of a bundle: the bundle's group path handles it
        return ingest_bundle(hub, storage, bundle, only=file_id).get(file_id, "missing")
    body_key = f"archive/{project_id}/{file_id}"
    try:
        with storage.open_reader(inbox_key) as reader:
            try:
                header = c4gh.read_header(reader)
                opened = c4gh.open_header(header, keys.secrets)
            except c4gh.NoMatchingKey as exc:
                raise IngestRefused("the file is not encrypted to this hub's archive key "
                                    "(no active archive key opens its header)") from exc
            except c4gh.HeaderError as exc:
                raise IngestRefused(f"not a crypt4gh file: {exc}") from exc
            if opened.edit_list is not None:
                raise IngestRefused("uploads must not carry an edit list")
            writer = storage.open_writer(body_key)
            # Size the batches to the file: small files need neither big buffers nor threads.
            segments = max(1, -(-(upload_size - len(header)) // c4gh.CIPHER_SEGMENT_SIZE))
            batch = min(c4gh.BATCH_SEGMENTS, segments)
            try:
                result = c4gh.ingest(reader, opened.session_keys, writer.write,
                                     workers=workers if segments > batch else 0, batch_segments=batch)
                stored = writer.commit()
            except BaseException:
                writer.abort()
                raise
    except (c4gh.TamperedSegment, c4gh.TruncatedBody) as exc:
        return _fail(hub, storage, file_id, f"the encrypted body is damaged: {exc}")
    except IngestRefused as exc:
        return _fail(hub, storage, file_id, str(exc))
    with transaction(hub.sessions) as session:
        f = session.get(ArchiveFile, file_id, with_for_update=True)
        assert f is not None
        if f.state not in (UPLOADED, INGESTED, VERIFIED):  # its job gave up meanwhile (`give_up`): it stays so
            storage.delete(body_key)
            return f.state
        f.header, f.header_key = header, keys.fingerprint_at(opened.key_index)
        f.body_key, f.body_size, f.body_sha256 = body_key, stored.size, result.body_sha256
        f.plaintext_size, f.plaintext_sha256, f.plaintext_md5 = (result.plaintext_size, result.plaintext_sha256,
                                                                 result.plaintext_md5)
        f.state, f.ingested_at = INGESTED, utcnow()
    # Verify: what is stored is what we hashed; the plaintext is what the uploader hashed.
    problem = None
    if stored.size != result.body_size:
        problem = f"stored {stored.size} bytes but read {result.body_size}"
    elif storage.size(body_key) != result.body_size:
        problem = "the stored body has the wrong size"
    elif declared and not hmac.compare_digest(declared, result.plaintext_sha256):
        problem = "the plaintext SHA-256 differs from the one the uploader computed"
    if problem:
        return _fail(hub, storage, file_id, problem)
    with transaction(hub.sessions) as session:
        f = session.get(ArchiveFile, file_id, with_for_update=True)
        assert f is not None
        if f.state != INGESTED:  # given up meanwhile: failed, its quota already given back
            storage.delete(body_key)
            return f.state
        f.state = VERIFIED
        quota.settle(session, f.project_id, f.reserved_bytes, f.body_size or 0)
        f.reserved_bytes = 0
        f.state = READY
        audit.record(session, Actor.system("ingest"), "archive.file.ingested", project_id=f.project_id,
                     target=f"file:{file_id}",
                     details={"plaintext_size": f.plaintext_size, "sha256": f.plaintext_sha256})
    storage.delete(inbox_key)
    return READY


def _fail(hub: Hub, storage: Storage, file_id: str, reason: str) -> str:
    with transaction(hub.sessions) as session:
        f = session.get(ArchiveFile, file_id, with_for_update=True)
        assert f is not None
        if f.state not in (UPLOADED, INGESTED, VERIFIED):  # ended meanwhile (given up): not released twice
            return f.state
        quota.release(session, f.project_id, f.reserved_bytes)
        f.reserved_bytes, f.state, f.failure = 0, FAILED, reason
        audit.record(session, Actor.system("ingest"), "archive.file.failed", outcome="failed",
                     project_id=f.project_id, target=f"file:{file_id}", details={"reason": reason})
    return FAILED


def give_up(session: Session, payload: dict[str, Any], error: str) -> None:
    """`archive.ingest`'s ``on_given_up``: its job failed for good (the worker died, hung or ran past its time
    limit on the last attempt) with the file, or the bundle's files, still on the way: each that is not ready
    fails as a file that does not verify does, its reserved quota given back, audited. The inbox object is
    the storage sweep's. Idempotent: ready and failed files are left."""
    t = ArchiveFile
    query = select(t).where(t.state.in_((UPLOADED, INGESTED, VERIFIED))).with_for_update()
    query = query.where(t.inbox_key == payload["inbox_key"]) if "inbox_key" in payload else \
        query.where(t.id == payload["file_id"])
    for f in session.scalars(query):
        quota.release(session, f.project_id, f.reserved_bytes)
        f.reserved_bytes, f.state, f.failure = 0, FAILED, f"gave up: {error}"[:1000]
        audit.record(session, Actor.system("ingest"), "archive.file.failed", outcome="failed",
                     project_id=f.project_id, target=f"file:{f.id}", details={"reason": f.failure[:500]})


# Beyond this the group reads each file's range from storage instead of the whole bundle at once.
_BUNDLE_IN_MEMORY = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _File:
    """What the group ingest reads of one file's row (a plain tuple, no ORM object)."""

    id: str
    project_id: uuid.UUID
    upload_size: int
    inbox_offset: int
    declared_sha256: str | None


@dataclass
class _Done:
    """One file of a group that passed through the engine: what the verify step and the commit need."""

    row: _File
    header: bytes
    key_index: int
    result: c4gh.IngestResult
    writer: Writer


_FILES = cast(Table, ArchiveFile.__table__)
_OPEN = (UPLOADED, INGESTED, VERIFIED)  # not yet ready or failed: the group ingest still has to do these


def ingest_bundle(hub: Hub, storage: Storage, inbox_key: str, *, only: str | None = None) -> dict[str, str]:
    """Ingest the files of one bundle (see ``uploads.receive_bundle``) as a group commit.

    Every file gets the same one-pass treatment as :func:`ingest` (header opened with an archive key,
    each segment authenticated and decrypted, plaintext SHA-256 + MD5 and body SHA-256, declared checksum
    compared), but the fixed costs are paid once per group instead of once per file: one read of the
    bundle, the keys looked up once, one durability barrier for all the archived bodies (``commit_all``:
    bodies fsynced together, then renamed, then their directory fsynced once), one transaction that marks
    them ready with their audit events, and one delete of the inbox object. The transaction is set-based:
    the rows are locked by one SELECT, marked ready by one UPDATE (``_mark_ready``), their events written by
    one INSERT and the quota settled by one UPDATE per project. Nothing is published (state ready) before its
    body is durable and verified. A crash anywhere leaves every file not yet ready in state uploaded, and the
    retried job redoes exactly those. Returns each file's final state."""
    t, clock = _FILES.c, [time.perf_counter()]
    with hub.sessions() as session:
        query = select(t.id, t.project_id, t.state, t.upload_size, t.inbox_offset, t.declared_sha256) \
            .where(t.inbox_key == inbox_key)
        if only is not None:
            query = query.where(t.id == only)
        rows = session.execute(query.order_by(t.inbox_offset)).all()
        keys = hub_keys(hub, session)
    states: dict[str, str] = {r.id: r.state for r in rows}
    todo = [_File(r.id, r.project_id, r.upload_size, r.inbox_offset or 0, r.declared_sha256)
            for r in rows if r.state in _OPEN]
    failed: dict[str, str] = {}
    done: list[_Done] = []
    pairs = [c4gh.KeyPair.from_secret(secret) for secret in keys.secrets]  # derived once for the group
    try:
        if todo:
            span = (min(f.inbox_offset for f in todo), max(f.inbox_offset + f.upload_size for f in todo))
            blob = None
            if span[1] - span[0] <= _BUNDLE_IN_MEMORY:
                with storage.open_reader(inbox_key, *span) as reader:
                    blob = reader.read()
            for f in todo:
                start = f.inbox_offset - span[0]
                if blob is not None:
                    source: BinaryIO = io.BytesIO(memoryview(blob)[start:start + f.upload_size])
                else:
                    source = storage.open_reader(inbox_key, start + span[0], start + span[0] + f.upload_size)
                with source:
                    outcome = _one_pass(storage, pairs, f, source)
                if isinstance(outcome, str):
                    failed[f.id] = outcome
                else:
                    done.append(outcome)
        clock.append(time.perf_counter())
        stored = commit_all(storage, [d.writer for d in done])
        clock.append(time.perf_counter())
    except BaseException:
        for d in done:
            d.writer.abort()
        raise
    ready = []
    for d, obj in zip(done, stored, strict=True):
        problem = _verify(storage, d.row, obj.size, d.result)
        if problem:
            failed[d.row.id] = problem
        else:
            ready.append(d)
    now = utcnow()
    clock.append(time.perf_counter())
    with transaction(hub.sessions) as session:
        # Lock the rows still to do: one finished meanwhile by another runner (a lapsed lease) is not among
        # them and is counted once, there.
        lock = select(t.id, t.project_id, t.reserved_bytes).where(t.inbox_key == inbox_key, t.state.in_(_OPEN))
        if only is not None:
            lock = lock.where(t.id == only)
        live = {r.id: r for r in session.execute(lock.with_for_update())}
        marks, entries = [], []
        settle: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0])
        for d in ready:
            row = live.get(d.row.id)
            if row is None:
                continue
            result = d.result
            marks.append({"id": row.id, "header": d.header, "header_key": keys.fingerprint_at(d.key_index),
                          "body_key": _body_key(d.row), "body_size": result.body_size,
                          "body_sha256": result.body_sha256, "plaintext_size": result.plaintext_size,
                          "plaintext_sha256": result.plaintext_sha256, "plaintext_md5": result.plaintext_md5})
            settle[row.project_id][0] += row.reserved_bytes
            settle[row.project_id][1] += result.body_size
            states[row.id] = READY
            entries.append((row.project_id, f"file:{row.id}",
                            {"plaintext_size": result.plaintext_size, "sha256": result.plaintext_sha256}))
        _mark_ready(session, marks, now)
        failures = []
        for file_id, reason in failed.items():
            row = live.get(file_id)
            if row is None:
                continue
            session.execute(update(_FILES).where(t.id == file_id)
                            .values(reserved_bytes=0, state=FAILED, failure=reason))
            settle[row.project_id][0] += row.reserved_bytes  # given back: nothing stored
            states[file_id] = FAILED
            failures.append((row.project_id, f"file:{file_id}", {"reason": reason}))
        for project_id, (reserved, used) in settle.items():
            quota.settle(session, project_id, reserved, used)
        audit.record_many(session, Actor.system("ingest"), "archive.file.ingested", entries)
        audit.record_many(session, Actor.system("ingest"), "archive.file.failed", failures, outcome="failed")
        # The bundle goes once every file in it is archived; a failed file keeps it, as a single upload
        # that failed keeps its inbox object.
        pending = session.scalar(select(func.count()).select_from(_FILES).where(
            t.inbox_key == inbox_key, t.state != READY))
    clock.append(time.perf_counter())
    if not pending:
        storage.delete(inbox_key)
    log.info("ingest.bundle", inbox_key=inbox_key, files=len(todo), ready=len(ready), failed=len(failed),
             **{f"{phase}_s": round(b - a, 3) for phase, a, b in zip(
                 ("engine", "durable", "verify", "publish"), clock, clock[1:], strict=False)})
    return states


# The columns ingest fills in, with their PostgreSQL array types for ``_MARK_READY_PG``.
_MARKED = {"header": "bytea", "header_key": "text", "body_key": "text", "body_size": "bigint",
           "body_sha256": "text", "plaintext_size": "bigint", "plaintext_sha256": "text", "plaintext_md5": "text"}
# One statement for the whole group: the values arrive as one array per column (a constant statement, prepared
# and cached like any other, whatever the group's size) and are joined back to their rows by id.
_MARK_READY_PG = text(
    "UPDATE archive_files AS f SET "
    + ", ".join(f"{name} = v.{name}" for name in _MARKED)
    + ", ingested_at = :now, reserved_bytes = 0, state = :ready"
    + " FROM unnest(CAST(:id AS text[]), "
    + ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _MARKED.items())
    + ") AS v(id, " + ", ".join(_MARKED) + ") WHERE f.id = v.id")


def _mark_ready(session: Session, marks: list[dict[str, Any]], now: dt.datetime) -> None:
    """Mark the verified files ready with what ingest found (``marks``: one dict per file, its ``id`` and the
    ``_MARKED`` columns). PostgreSQL: one ``UPDATE … FROM unnest(…)`` for the lot; elsewhere (SQLite) one
    executemany of the UPDATE by id."""
    if not marks:
        return
    if session.get_bind().dialect.name == "postgresql":
        columns = {name: [m[name] for m in marks] for name in ("id", *_MARKED)}
        session.execute(_MARK_READY_PG, {**columns, "now": now, "ready": READY})
        return
    t = _FILES.c
    session.execute(update(_FILES).where(t.id == bindparam("m_id"))
                    .values({name: bindparam("m_" + name) for name in _MARKED}
                            | {"ingested_at": now, "reserved_bytes": 0, "state": READY}),
                    [{"m_" + k: v for k, v in m.items()} for m in marks])


def _body_key(f: _File) -> str:
    return f"archive/{f.project_id}/{f.id}"


def _one_pass(storage: Storage, pairs: Sequence[c4gh.KeyPair], f: _File, source: BinaryIO) -> _Done | str:
    """Decrypt-verify-hash one file of a group into an open (uncommitted) writer; a reason if refused."""
    try:
        header = c4gh.read_header(source)
        opened = c4gh.open_header(header, pairs)
    except c4gh.NoMatchingKey:
        return ("the file is not encrypted to this hub's archive key "
                "(no active archive key opens its header)")
    except c4gh.HeaderError as exc:
        return f"not a crypt4gh file: {exc}"
    if opened.edit_list is not None:
        return "uploads must not carry an edit list"
    segments = max(1, -(-(f.upload_size - len(header)) // c4gh.CIPHER_SEGMENT_SIZE))
    writer = storage.open_writer(_body_key(f))
    try:
        # Buffers sized to the file, inline: a small file needs neither big buffers nor threads.
        result = c4gh.ingest(source, opened.session_keys, writer.write, workers=0,
                             batch_segments=min(c4gh.BATCH_SEGMENTS, segments))
    except (c4gh.TamperedSegment, c4gh.TruncatedBody) as exc:
        writer.abort()
        return f"the encrypted body is damaged: {exc}"
    except BaseException:
        writer.abort()
        raise
    return _Done(f, header, opened.key_index, result, writer)


def _verify(storage: Storage, f: _File, stored: int, result: c4gh.IngestResult) -> str | None:
    """What is stored is what we hashed; the plaintext is what the uploader hashed."""
    if stored != result.body_size:
        return f"stored {stored} bytes but read {result.body_size}"
    if storage.size(_body_key(f)) != result.body_size:
        return "the stored body has the wrong size"
    if f.declared_sha256 and not hmac.compare_digest(f.declared_sha256, result.plaintext_sha256):
        return "the plaintext SHA-256 differs from the one the uploader computed"
    return None
