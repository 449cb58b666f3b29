"""Serving file bytes: re-encrypted downloads (ranges, resume) and in-platform plaintext streams.
Shared by the API (token) and the web pages (session)."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import structlog
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from ..audit import outbox
from ..audit.service import Actor
from ..errors import Conflict, Forbidden, Invalid, NotFound
from ..hub import Hub
from ..identity.principal import Principal
from ..text import content_disposition
from . import c4gh, service
from .authz import plaintext_basis
from .backend import storage_for
from .keys import hub_keys
from .models import READY, ArchiveFile

# Body bytes per yield. At least the storage readers' buffer (LocalStorage: 4 MiB; S3: 1 MiB) so each read
# goes straight into the chunk instead of through the buffer (one memcpy less), and 4x fewer thread-pool
# hops and ASGI messages than 1 MiB: the server path's own CPU per GiB roughly halves
# (benchmarks/bench_download.py, "server path alone"). Larger chunks measured no better and cost memory.
STREAM_CHUNK = 4 * 1024 * 1024
log = structlog.get_logger("strongroom.archive")


class AuditedStream(StreamingResponse):
    """A download body whose end is audited: "archive.download.completed" (every byte sent),
    "archive.download.failed" (the storage or decryption broke; with the reason) or
    "archive.download.aborted" (the client went away). The "started" event was committed by the
    request's own transaction before the first byte; this one is written in a short transaction of
    its own once the body has ended, so no transaction stays open while bytes travel."""

    def __init__(self, chunks: Iterator[bytes], *, hub: Hub, actor: Actor, project_id: uuid.UUID,
                 target: str, started: dict[str, Any], length: int, ends_as: str = "archive.download",
                 **kw: Any) -> None:
        super().__init__(self._counted(chunks), **kw)
        self._ends_as = ends_as
        self._hub, self._actor, self._project_id, self._target = hub, actor, project_id, target
        self._started, self._length = started, length
        self.sent, self.exhausted = 0, False
        self.error: Exception | None = None

    async def _counted(self, chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in iterate_in_threadpool(chunks):
                self.sent += len(chunk)
                yield chunk
        except Exception as exc:  # the source broke (storage, decryption): not the client's doing
            self.error = exc
            raise
        self.exhausted = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette reports a gone client as ClientDisconnect (or just stops, on older ASGI servers);
        # a source error may reach here as one too (it is an OSError), so the source's own record decides.
        action, reason = "aborted", None
        try:
            await super().__call__(scope, receive, send)
        except Exception as exc:
            if not isinstance(exc, ClientDisconnect) and self.error is None:
                self.error = exc
            raise
        finally:
            if self.error is not None:
                action, reason = "failed", f"{type(self.error).__name__}: {self.error}"[:300]
            elif self.exhausted and self.sent == self._length:
                action = "completed"
            elif self.exhausted:
                action, reason = "failed", f"the source gave {self.sent} of {self._length} bytes"
            with anyio.CancelScope(shield=True):  # a disconnect must not cancel the record of it
                await anyio.to_thread.run_sync(self._record, action, reason)

    def _record(self, action: str, reason: str | None) -> None:
        record_end(self._hub, self._actor, f"{self._ends_as}.{action}", project_id=self._project_id,
                   target=self._target, started=self._started, sent=self.sent, expected=self._length, reason=reason)


def record_end(hub: Hub, actor: Actor, action: str, *, project_id: uuid.UUID, target: str,
               started: dict[str, Any], sent: int, expected: int, reason: str | None) -> None:
    """How a download ended (completed, failed, aborted), in its own transaction after the body: the
    bytes are gone either way, so if the database does not answer the event waits in the audit outbox
    and is replayed into the chain once it does (audit/outbox.py), never lost."""
    details = {**started, "bytes_sent": sent, "bytes_expected": expected, **({"reason": reason} if reason else {})}
    try:
        outbox.record_after(hub, actor, action, outcome="ok" if action.endswith(".completed") else "failed",
                            project_id=project_id, target=target, details=details)
    except Exception:  # neither the database nor the outbox file took it (a full disk as well as a dead db)
        log.exception("archive.download.audit_failed", target=target, action=action)


def record_refused(hub: Hub, principal: Principal, f: ArchiveFile, grant: service.ReadGrant, *, reason: str,
                   **details: object) -> None:
    """A refused download ("archive.download.refused", outcome denied), in its own transaction: the request's
    own rolls back with the 403 (through the audit outbox if the database does not answer)."""
    recorded = {"basis": grant.basis, "via_project": str(grant.project_id) if grant.project_id else None,
                "credential": principal.credential_id, "reason": reason,
                **{k: v for k, v in details.items() if v is not None}}
    try:
        outbox.record_after(hub, principal.actor, "archive.download.refused", outcome="denied",
                            project_id=f.project_id, target=f"file:{f.id}", details=recorded)
    except Exception:
        log.exception("archive.download.audit_failed", target=f"file:{f.id}", action="archive.download.refused")


# -- downloads ---------------------------------------------------------------------------------
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _byte_range(header: str | None, total: int) -> tuple[int, int] | None:
    """One `bytes=a-b` range as [start, end); None = the whole thing. Multi-ranges are not served."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise RangeNotSatisfiable(total)
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)) + 1, total) if m.group(2) else total
    else:
        start, end = max(total - int(m.group(2)), 0), total
    if start >= total or start >= end:
        raise RangeNotSatisfiable(total)
    return start, end


class RangeNotSatisfiable(Invalid):
    status, code = 416, "range-not-satisfiable"

    def __init__(self, total: int) -> None:
        super().__init__(f"the requested range is outside 0-{total - 1}", total=total)


def _parse_plain_range(value: str, size: int) -> tuple[int, int]:
    """``START-END`` (inclusive, like HTTP) or ``START-`` → [start, end)."""
    m = re.fullmatch(r"(\d+)-(\d*)", value)
    if not m:
        raise Invalid("plaintext_range must look like START-END (inclusive) or START-")
    start = int(m.group(1))
    end = min(int(m.group(2)) + 1, size) if m.group(2) else size
    if start >= size or start >= end:
        raise RangeNotSatisfiable(size)
    return start, end


def _stream(prefix: bytes, storage, key: str, start: int, end: int) -> Iterator[bytes]:
    """`prefix` (a header, possibly sliced) then body bytes [start, end) from storage."""
    if prefix:
        yield prefix
    if end > start:
        with storage.open_reader(key, start, end) as reader:
            while chunk := reader.read(STREAM_CHUNK):
                yield chunk


def download_name(path: str, with_folders: bool) -> str:
    """The name a download suggests: the file name (+ ``.c4gh``), or its whole path with ``__`` between
    the folders."""
    parts = [p for p in path.split("/") if p]
    return ("__".join(parts) if with_folders else parts[-1] if parts else "download") + ".c4gh"


def encrypted(db: Session, hub: Hub, principal: Principal, file_id: str, *, key: str | None,
              plaintext_range: str | None, range_header: str | None, if_range: str | None,
              name_with_folders: bool = False) -> Response:
    """The file as crypt4gh for the caller's key: a deterministic header + the stored body.
    ``name_with_folders``: the suggested name keeps the folders (``a/b.png`` → ``a__b.png.c4gh``), so
    files of one name in different folders do not overwrite each other in a browser's downloads."""
    f, grant = service.authorize_download(db, principal, file_id)
    recipient = service.user_key(db, principal, key)
    assert f.body_key is not None and f.body_size is not None and f.plaintext_size is not None
    body_start, body_end, edit_list = 0, f.body_size, None
    if plaintext_range:
        start, end = _parse_plain_range(plaintext_range, f.plaintext_size)
        plan = c4gh.plan_range(start, end, f.plaintext_size)
        body_start, body_end, edit_list = plan.body_start, plan.body_end, list(plan.edit_list)
    header = service.download_header(hub, db, f, recipient.public_key, edit_list)
    total = len(header) + (body_end - body_start)
    etag = '"' + hashlib.sha256(header + (f.body_sha256 or "").encode()
                                + f"{body_start}-{body_end}".encode()).hexdigest()[:32] + '"'
    wanted = _byte_range(range_header, total) if (if_range is None or if_range == etag) else None
    start, end = wanted or (0, total)
    prefix = header[start:end] if start < len(header) else b""
    b_start = body_start + max(start - len(header), 0)
    b_end = body_start + max(end - len(header), 0)
    started = service.record_download(db, principal, f, grant, key=recipient.fingerprint,
                                      bytes=f"{start}-{end - 1}" if wanted else None,
                                      plaintext_range=plaintext_range)
    db.commit()  # the "started" event is durable before the first byte leaves
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Length": str(end - start),
               "Content-Disposition": content_disposition(download_name(f.path, name_with_folders)),
               "Cache-Control": "no-store", "X-Plaintext-SHA256": f.plaintext_sha256 or ""}
    if wanted:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
    return AuditedStream(_stream(prefix, storage_for(hub), f.body_key, b_start, b_end), hub=hub,
                         actor=principal.actor, project_id=f.project_id, target=f"file:{f.id}",
                         started=started, length=end - start, status_code=206 if wanted else 200,
                         headers=headers, media_type="application/octet-stream")


def plaintext(db: Session, hub: Hub, principal: Principal, file_id: str, *, range_header: str | None) -> Response:
    """Decrypted bytes, for members of the owning or a receiving project, when ``authz.plaintext_basis``
    allows them to leave the hub: a workspace's own token from the workspace, a download the project allows
    (audited as one), or a reviewer reading a held (quarantined) file (audited as a review read)."""
    f = db.get(ArchiveFile, file_id)
    if f is None:
        raise NotFound("no such file")
    if f.hold is not None:
        grant = service.authorize_review(db, principal, f)
    else:
        grant = service.authorize_read(db, principal, f)
        if grant.basis not in ("owner", "share"):
            raise NotFound("no such file")
    if f.state != READY:
        raise Conflict(f"the file is {f.state}, not ready")
    try:
        allowed_as = plaintext_basis(db, hub.settings, principal, grant)
    except Forbidden as exc:
        record_refused(hub, principal, f, grant, reason=exc.detail, mode="plaintext")
        raise
    assert f.header is not None and f.body_key is not None and f.plaintext_size is not None
    body_key = f.body_key
    wanted = _byte_range(range_header, f.plaintext_size) if f.plaintext_size else None
    start, end = wanted or (0, f.plaintext_size)
    opened = c4gh.open_header(f.header, hub_keys(hub, db).secrets)
    byte_range = f"{start}-{end - 1}" if wanted else None
    if grant.basis == "review":  # a reviewer reading a held file in-platform: never counted as a download
        started = service.record_review_view(db, principal, f, bytes=byte_range)
        ends_as = "archive.review_read"
    else:
        started = service.record_download(db, principal, f, grant, mode="plaintext", allowed_as=allowed_as,
                                          bytes=byte_range)
        ends_as = "archive.download"
    db.commit()
    storage = storage_for(hub)
    chunks = c4gh.decrypt_range(lambda a, b: storage.open_reader(body_key, a, b), opened.session_keys,
                                start, end, f.body_size)
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start), "Cache-Control": "no-store",
               "ETag": f'"{f.plaintext_sha256}"'}
    if wanted:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.plaintext_size}"
    return AuditedStream(chunks, hub=hub, actor=principal.actor, project_id=f.project_id, target=f"file:{f.id}",
                         started=started, length=end - start, ends_as=ends_as, status_code=206 if wanted else 200,
                         headers=headers, media_type="application/octet-stream")


