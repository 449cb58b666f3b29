"""A dataset version's files as one ZIP, streamed: each file re-encrypted (crypt4gh) to the caller's key,
stored uncompressed under its own path + ``.c4gh``, so folders survive and nothing is held in memory.

Each file is authorised again just before its bytes go (the same ``authorize_download`` as a single
download: held files and locked projects never appear) and audited as a download of its own:
"archive.download.started" (committed before its first byte), then "completed", "failed" or
"aborted" — the same events, with the same details, as ``downloads.AuditedStream`` writes.
"""

from __future__ import annotations

import datetime as dt
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

import anyio
import structlog
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from ..db import transaction
from ..errors import DomainError
from ..hub import Hub
from ..identity.principal import Principal
from ..text import content_disposition
from . import service
from .backend import storage_for
from .downloads import STREAM_CHUNK, record_end
from .paths import safe_relative

log = structlog.get_logger("strongroom.archive")
PAGE = 1000


class _Sink:
    """The ZIP writer's output: collected, then handed on by the generator (never seekable)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


@dataclass
class _InFlight:
    target: str
    project_id: Any
    started: dict[str, Any]
    expected: int
    sent: int = 0


def entry_name(path: str, file_id: str, seen: set[str]) -> str:
    """The file's path + ``.c4gh``; a path already used in this archive gets its accession added. Whatever the
    path's source (an upload, a peer's manifest, a row from before a rule), the name stays inside the folder the
    ZIP is extracted into: no ``..``, leading ``/``, backslash or drive letter (``paths.safe_relative``); a path
    with nothing left is named by its accession."""
    base = safe_relative(path) or file_id
    name = base + ".c4gh"
    if name in seen:
        name = f"{base}.{file_id}.c4gh"
    seen.add(name)
    return name


class DatasetZip(StreamingResponse):
    def __init__(self, hub: Hub, principal: Principal, dataset_id: str, number: int, key_fingerprint: str) -> None:
        self._hub, self._principal, self._actor = hub, principal, principal.actor
        self._dataset_id, self._number, self._key = dataset_id, number, key_fingerprint
        self._current: _InFlight | None = None
        self.error: Exception | None = None
        super().__init__(self._pump(), media_type="application/zip", headers={
            "Content-Disposition": content_disposition(f"{dataset_id}-v{number}.zip"),
            "Cache-Control": "no-store"})

    # -- the body --------------------------------------------------------------------------------
    def _file_ids(self) -> Iterator[str]:
        after = None
        while True:
            with transaction(self._hub.sessions, deferred=True) as s:
                _, files = service.version_files(s, self._principal, self._dataset_id, self._number,
                                                 after=after, limit=PAGE)
                ids = [f.id for f in files]
            yield from ids
            if len(ids) < PAGE:
                return
            after = ids[-1]

    def _open(self, file_id: str) -> tuple[_InFlight, bytes, str, int, str, dt.datetime] | None:
        """Authorise this file now, make its header for the key, and commit its "started" event."""
        with transaction(self._hub.sessions) as s:
            try:
                f, grant = service.authorize_download(s, self._principal, file_id)
                recipient = service.user_key(s, self._principal, self._key)
            except DomainError as exc:  # held, no longer ready, access changed: it is left out
                log.info("archive.zip.skipped", file=file_id, reason=exc.code)
                return None
            assert f.body_key is not None and f.body_size is not None
            header = service.download_header(self._hub, s, f, recipient.public_key)
            started = service.record_download(s, self._principal, f, grant, key=recipient.fingerprint,
                                              archive=f"{self._dataset_id}-v{self._number}.zip")
            flight = _InFlight(f"file:{f.id}", f.project_id, started, len(header) + f.body_size)
            return flight, header, f.body_key, f.body_size, f.path, f.ingested_at or f.created_at

    def _chunks(self) -> Iterator[bytes]:
        storage = storage_for(self._hub)
        sink, seen = _Sink(), set[str]()
        with zipfile.ZipFile(cast(IO[bytes], sink), "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for file_id in self._file_ids():
                opened = self._open(file_id)
                if opened is None:
                    continue
                flight, header, body_key, body_size, path, when = opened
                self._current = flight
                info = zipfile.ZipInfo(entry_name(path, file_id, seen), date_time=when.timetuple()[:6])
                info.compress_type, info.file_size = zipfile.ZIP_STORED, flight.expected
                with zf.open(info, "w", force_zip64=flight.expected > 0x7FFFFFFF) as out:
                    out.write(header)
                    flight.sent += len(header)
                    yield sink.take()
                    with storage.open_reader(body_key, 0, body_size) as reader:
                        while chunk := reader.read(STREAM_CHUNK):
                            out.write(chunk)
                            flight.sent += len(chunk)
                            yield sink.take()
                yield sink.take()  # the entry's data descriptor
                self._current = None
                self._record(flight, "completed" if flight.sent == flight.expected else "failed",
                             None if flight.sent == flight.expected
                             else f"the source gave {flight.sent} of {flight.expected} bytes")
        yield sink.take()  # the central directory

    async def _pump(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in iterate_in_threadpool(self._chunks()):
                if chunk:
                    yield chunk
        except Exception as exc:  # the source broke (storage, database): not the client's doing
            self.error = exc
            raise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Exception as exc:
            if not isinstance(exc, ClientDisconnect) and self.error is None:
                self.error = exc
            raise
        finally:
            flight, self._current = self._current, None
            if flight is not None:  # the file whose bytes were going when the body stopped
                action, reason = "aborted", None
                if self.error is not None:
                    action, reason = "failed", f"{type(self.error).__name__}: {self.error}"[:300]
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._record, flight, action, reason)

    def _record(self, flight: _InFlight, action: str, reason: str | None) -> None:
        record_end(self._hub, self._actor, f"archive.download.{action}", project_id=flight.project_id,
                   target=flight.target, started=flight.started, sent=flight.sent, expected=flight.expected,
                   reason=reason)


def dataset_zip(db: Any, hub: Hub, principal: Principal, dataset_id: str, number: int) -> DatasetZip:
    """Checks that can answer with a proper error page before any byte: the version is visible, the
    caller has a key, and (by its first file) downloads are open to them. Each file is checked again."""
    _, first = service.version_files(db, principal, dataset_id, number, limit=1)
    recipient = service.user_key(db, principal, None)
    if first:
        service.authorize_download(db, principal, first[0].id)
    return DatasetZip(hub, principal, dataset_id, number, recipient.fingerprint)
