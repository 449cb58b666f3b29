"""Uploads into a project's inbox: resumable multipart parts from the CLI, small plaintext files from the
browser; completing one queues its ingest."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..db import utcnow
from ..errors import Conflict, Invalid, NotFound
from ..hub import Hub
from ..identity.principal import Principal
from ..jobs import service as jobs
from ..projects import quota
from ..projects import service as projects
from . import c4gh
from .accession import new_accession
from .authz import project_access
from .keys import hub_keys
from .models import (
    FAILED,
    RECEIVING,
    UPLOADED,
    ArchiveFile,
    UploadPart,
)
from .paths import is_archive_path
from .storage.base import Storage

MAX_UPLOAD_BYTES = 5 * 1024**4  # 5 TiB: S3's largest object


MAX_PARTS = 10_000
MAX_BUNDLE_FILES = 10_000


@dataclass(frozen=True, slots=True)
class BundledFile:
    """What the answer to a bundle names of each file it created."""

    id: str
    path: str
    state: str


def begin_upload(session: Session, principal: Principal, access: projects.ProjectAccess, storage: Storage, *,
                 path: str, size: int, sha256: str | None) -> ArchiveFile:
    """Open an upload into the project's inbox, holding quota for its full size up front."""
    access.require("write-data")
    if access.project.status != "active":
        raise Conflict("the project is closed")
    _check_upload(path, size, sha256)
    file_id = new_accession("SRF")
    inbox_key = f"inbox/{access.project.id}/{file_id}"
    # Object storage first, before the first write: the route reads first (deps.read_first), so no lock
    # is held while S3 answers. The quota is then taken by one conditional UPDATE, correct under races.
    multipart_id = storage.begin_multipart(inbox_key)
    try:
        quota.reserve(session, access.project.id, size)
    except Exception:
        storage.abort_multipart(inbox_key, multipart_id)  # nothing of a refused upload stays behind
        raise
    f = ArchiveFile(id=file_id, project_id=access.project.id, uploader_id=principal.user.id, path=path,
                    state=RECEIVING, upload_size=size, reserved_bytes=size, inbox_key=inbox_key,
                    declared_sha256=sha256, multipart_id=multipart_id)
    session.add(f)
    audit.record(session, principal.actor, "archive.upload.started", project_id=access.project.id,
                 target=f"file:{file_id}", details={"path": path, "size": size})
    session.flush()
    return f


def _check_upload(path: str, size: int, sha256: str | None) -> None:
    if not is_archive_path(path):  # the rule a peer's sync manifest passes too (federation/manifest.py)
        raise Invalid("file path must be a relative path without control characters or '..'")
    if not 0 < size <= MAX_UPLOAD_BYTES:
        raise Invalid(f"size must be between 1 and {MAX_UPLOAD_BYTES} bytes")
    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise Invalid("sha256 must be 64 lower-case hex digits")


def receive_bundle(session: Session, principal: Principal, access: projects.ProjectAccess, storage: Storage, *,
                   files: Sequence[tuple[str, int, str | None]], data: bytes,
                   key: str | None = None) -> list[BundledFile]:
    """Many small crypt4gh files in one request: ``data`` is their streams back to back, ``files`` their
    ``(path, size, plaintext sha256)`` in the same order. Stored as ONE inbox object (one fsync for the
    bundle, not three requests and several fsyncs per file); each file is still its own upload: its own
    row, quota held for its size, its own audit event, and ingest decrypts, verifies and checksums it on its
    own (a damaged file fails alone). One ingest job takes the whole bundle as one group commit.

    ``key`` (32 hex digits, chosen by the client) makes a retry safe: a bundle sent again with the same key —
    its answer was lost, or the client was killed — returns the files the first one created, and stores nothing
    twice. The key names the inbox object, whose (key, offset) pairs are unique in the table."""
    access.require("write-data")
    if access.project.status != "active":
        raise Conflict("the project is closed")
    if not 0 < len(files) <= MAX_BUNDLE_FILES:
        raise Invalid(f"a bundle holds 1 to {MAX_BUNDLE_FILES} files")
    for path, size, sha256 in files:
        _check_upload(path, size, sha256)
    total = sum(size for _, size, _ in files)
    if total != len(data):
        raise Invalid(f"the bundle has {len(data)} bytes but its files declare {total}")
    project_id = access.project.id
    inbox_key = f"inbox/{project_id}/" + (f"SRB-{key}" if key else new_accession("SRB"))
    if key is not None and (sent := _bundle_sent(session, principal, inbox_key, files)) is not None:
        return sent
    # Stored (and fsynced) before the first write, as begin_upload does: no lock is held during the I/O.
    storage.put_bytes(inbox_key, data)
    try:
        quota.reserve(session, project_id, total)
    except Exception:
        storage.delete(inbox_key)  # nothing of a refused bundle stays behind
        raise
    # Core INSERTs, no ORM object per file: a thousand rows are one multi-row statement (insertmanyvalues).
    rows, values, offset, now, uploader = [], [], 0, utcnow(), principal.user.id
    for path, size, sha256 in files:
        file_id = new_accession("SRF")
        rows.append(BundledFile(file_id, path, UPLOADED))
        values.append({"id": file_id, "project_id": project_id, "uploader_id": uploader, "path": path,
                       "state": UPLOADED, "upload_size": size, "reserved_bytes": size, "inbox_key": inbox_key,
                       "inbox_offset": offset, "declared_sha256": sha256, "created_at": now})
        offset += size
    try:
        session.execute(insert(cast(Table, ArchiveFile.__table__)), values)
    except IntegrityError:  # the same key, sent twice at once: the other request stored it (keep its object)
        raise Conflict("this bundle is being received by another request; send it again to get its files") from None
    audit.record_many(session, principal.actor, "archive.upload.completed",
                      [(project_id, f"file:{f.id}", {"path": f.path, "size": v["upload_size"], "via": "bundle"})
                       for f, v in zip(rows, values, strict=True)])
    jobs.enqueue(session, "archive.ingest", {"inbox_key": inbox_key}, dedup_key=f"ingest:{inbox_key}")
    return rows


def _bundle_sent(session: Session, principal: Principal, inbox_key: str,
                 files: Sequence[tuple[str, int, str | None]]) -> list[BundledFile] | None:
    """The files a bundle with this key already created (None: none yet); Conflict if the key named others."""
    t = ArchiveFile.__table__.c
    rows = session.execute(select(t.id, t.path, t.state, t.uploader_id, t.upload_size)
                           .where(t.inbox_key == inbox_key).order_by(t.inbox_offset)).all()
    if not rows:
        return None
    if any(f.uploader_id != principal.user.id for f in rows) or \
            [(f.path, f.upload_size) for f in rows] != [(path, size) for path, size, _ in files]:
        raise Conflict("this bundle key was already used for other files; choose a new key")
    return [BundledFile(f.id, f.path, f.state) for f in rows]


def _my_upload(session: Session, principal: Principal, file_id: str) -> ArchiveFile:
    """An upload of the caller's, in a project where they may still write: 404 otherwise."""
    f = session.get(ArchiveFile, file_id)
    if f is None or f.uploader_id != principal.user.id:
        raise NotFound("no such upload")
    project_access(session, principal, f.project_id).require("write-data")
    return f


def upload_parts(session: Session, principal: Principal, file_id: str) -> tuple[ArchiveFile, list[UploadPart]]:
    f = _my_upload(session, principal, file_id)
    parts = list(session.scalars(select(UploadPart).where(UploadPart.file_id == file_id)
                                 .order_by(UploadPart.number)))
    return f, parts


def put_part(session: Session, principal: Principal, storage: Storage, file_id: str, number: int,
             data: bytes) -> UploadPart:
    f = _my_upload(session, principal, file_id)
    if f.state != RECEIVING:
        raise Conflict(f"the upload is {f.state}, not receiving parts")
    if not 1 <= number <= MAX_PARTS:
        raise Invalid(f"part number must be 1-{MAX_PARTS}")
    if not data:
        raise Invalid("empty part")
    others = session.scalar(select(func.coalesce(func.sum(UploadPart.size), 0))
                            .where(UploadPart.file_id == file_id, UploadPart.number != number)) or 0
    if others + len(data) > f.upload_size:
        raise Invalid(f"parts exceed the declared size of {f.upload_size} bytes")
    assert f.inbox_key and f.multipart_id
    # Store and hash before the first write: the route reads first (deps.read_first), so no write lock
    # is held during this I/O. FOR UPDATE then takes it (SQLite) and the checks are made again under it.
    info = storage.put_part(f.inbox_key, f.multipart_id, number, data)
    digest = hashlib.sha256(data).hexdigest()
    part = session.get(UploadPart, (file_id, number), with_for_update=True)
    session.refresh(f)
    if f.state != RECEIVING:
        raise Conflict(f"the upload is {f.state}, not receiving parts")
    if part is None:
        part = UploadPart(file_id=file_id, number=number, size=len(data), sha256=digest, etag=info.etag)
        session.add(part)
    else:  # a retried part replaces the earlier attempt
        part.size, part.sha256, part.etag = len(data), digest, info.etag
    return part


def complete_upload(session: Session, principal: Principal, storage: Storage, file_id: str, *,
                    sha256: str | None = None) -> ArchiveFile:
    """Assemble the parts into the inbox object and queue the ingest job."""
    f = _my_upload(session, principal, file_id)
    if f.state != RECEIVING:
        return f  # completing twice is harmless
    if sha256:
        f.declared_sha256 = sha256
    parts = list(session.scalars(select(UploadPart).where(UploadPart.file_id == file_id)
                                 .order_by(UploadPart.number)))
    numbers = [p.number for p in parts]
    if numbers != list(range(1, len(parts) + 1)):
        raise Invalid(f"parts are missing: have {numbers[:20]}")
    received = sum(p.size for p in parts)
    if received != f.upload_size:
        raise Invalid(f"received {received} of {f.upload_size} declared bytes")
    assert f.inbox_key and f.multipart_id
    storage.complete_multipart(f.inbox_key, f.multipart_id, [(p.number, p.etag) for p in parts])
    f.state = UPLOADED
    session.execute(delete(UploadPart).where(UploadPart.file_id == file_id))
    jobs.enqueue(session, "archive.ingest", {"file_id": file_id}, dedup_key=f"ingest:{file_id}")
    audit.record(session, principal.actor, "archive.upload.completed", project_id=f.project_id,
                 target=f"file:{file_id}", details={"size": received})
    return f


def abort_upload(session: Session, principal: Principal, storage: Storage, file_id: str) -> None:
    f = _my_upload(session, principal, file_id)
    if f.state != RECEIVING:
        raise Conflict(f"the upload is {f.state}; only an upload still receiving can be cancelled")
    assert f.inbox_key and f.multipart_id
    storage.abort_multipart(f.inbox_key, f.multipart_id)
    quota.release(session, f.project_id, f.reserved_bytes)
    f.reserved_bytes, f.state, f.failure = 0, FAILED, "cancelled by the uploader"
    audit.record(session, principal.actor, "archive.upload.cancelled", project_id=f.project_id,
                 target=f"file:{file_id}")


def receive_small_plaintext(hub: Hub, session: Session, principal: Principal, access: projects.ProjectAccess,
                            storage: Storage, *, path: str, data: bytes) -> ArchiveFile:
    """The browser upload: a small file arrives in plaintext over TLS and is encrypted to the
    archive key in memory before anything is stored; then it follows the normal ingest."""
    keys = hub_keys(hub, session)
    fingerprint, keypair = keys.current
    ciphertext = b"".join(c4gh.encrypt_stream([data], keypair.public, c4gh.generate_keypair()))
    f = begin_upload(session, principal, access, storage, path=path, size=len(ciphertext),
                     sha256=hashlib.sha256(data).hexdigest())
    assert f.inbox_key and f.multipart_id
    storage.abort_multipart(f.inbox_key, f.multipart_id)
    storage.put_bytes(f.inbox_key, ciphertext)
    f.multipart_id, f.state = None, UPLOADED
    jobs.enqueue(session, "archive.ingest", {"file_id": f.id}, dedup_key=f"ingest:{f.id}")
    audit.record(session, principal.actor, "archive.upload.completed", project_id=f.project_id,
                 target=f"file:{f.id}", details={"size": len(ciphertext), "via": "browser"})
    return f
