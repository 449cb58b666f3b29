"""Ingest: one pass turns an uploaded crypt4gh file into a verified archived body (retried safely after a crash)."""

from __future__ import annotations

import hmac

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
from .storage.base import Storage


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
        keys = hub_keys(hub, session)
        inbox_key, declared, project_id, upload_size = f.inbox_key, f.declared_sha256, f.project_id, f.upload_size
    assert inbox_key is not None
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
        f = session.get(ArchiveFile, file_id)
        assert f is not None
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
        f = session.get(ArchiveFile, file_id)
        assert f is not None
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
        f = session.get(ArchiveFile, file_id)
        assert f is not None
        quota.release(session, f.project_id, f.reserved_bytes)
        f.reserved_bytes, f.state, f.failure = 0, FAILED, reason
        audit.record(session, Actor.system("ingest"), "archive.file.failed", outcome="failed",
                     project_id=f.project_id, target=f"file:{file_id}", details={"reason": reason})
    return FAILED
