"""WADO-RS from the encrypted archive: every byte is decrypted in memory, never written to disk.

An instance is found through the index (within the caller's ``query.Scope``), then its archive file goes
through the archive's read check (``authorize_read``: membership, shares, entitlements, visas and holds,
read fresh). Only the crypt4gh segments (64 KiB of plaintext each) that cover the bytes asked for are
fetched and decrypted: a frame is its byte range (``ImportedInstance.frames``), the metadata is the
header before the Pixel Data element (``pixel_offset``), so neither reads the rest of the file.

Reads are audited per study, aggregated: one ``dicomweb.study.read`` event per caller and study within
``AUDIT_WINDOW`` (a viewer fetching 500 frames writes one event, not 500) — except rendered pictures for a
caller who may not download (``audit_rendered``): those are the only pixels such a caller gets, so each
request is one event, with the frame and the window it showed, and a refused window is one too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive import c4gh
from ..archive.authz import ReadGrant, authorize_read, require_download_allowed
from ..archive.keys import hub_keys
from ..archive.models import READY, ArchiveFile
from ..archive.storage.base import Storage
from ..audit import service as audit
from ..audit.models import AuditEvent
from ..db import utcnow
from ..errors import Conflict, Forbidden, NotFound
from ..hub import Hub
from ..identity.principal import Principal
from ..imaging.models import ImportedInstance
from .query import Scope

I = ImportedInstance  # noqa: E741
AUDIT_WINDOW = dt.timedelta(minutes=10)
READ_EVENT = "dicomweb.study.read"
WINDOW_REFUSED_EVENT = "dicomweb.window.refused"
MAX_INSTANCES = 20_000  # one study/series retrieve; more is refused rather than streamed for hours

# Media types of encapsulated frames (PS3.18 Table 8.7.3-2); native frames are application/octet-stream.
FRAME_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}
NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def frame_media_type(transfer_syntax: str) -> str:
    return "application/octet-stream" if transfer_syntax in NATIVE or not transfer_syntax else \
        FRAME_TYPES.get(transfer_syntax, "application/octet-stream")


@dataclass
class Readable:
    """An instance the caller may read, with its archive file and why."""

    instance: ImportedInstance
    file: ArchiveFile
    grant: ReadGrant


def find(session: Session, scope: Scope, study: str, series: str | None = None, sop: str | None = None
         ) -> list[ImportedInstance]:
    """The visible instances of a study (series, instance), in series and instance order; NotFound if none."""
    stmt = select(I).where(*scope.where(), I.study_uid == study)
    if series:
        stmt = stmt.where(I.series_uid == series)
    if sop:
        stmt = stmt.where(I.sop_instance_uid == sop)
    rows = list(session.scalars(stmt.order_by(I.series_number, I.series_uid, I.instance_number,
                                              I.sop_instance_uid).limit(MAX_INSTANCES + 1)))
    if not rows:
        raise NotFound("no such study, series or instance")
    if len(rows) > MAX_INSTANCES:
        raise Conflict(f"more than {MAX_INSTANCES} instances: retrieve series by series")
    return rows


def authorize(session: Session, principal: Principal, rows: Sequence[ImportedInstance], *, download: bool
              ) -> list[Readable]:
    """The archive's read check on every instance's file (fresh each request). One refused file makes the
    whole answer NotFound: a retrieve never returns part of a study silently. ``download``: the answer hands
    out the instance's bytes (instances, frames), so the download rules apply as on the download route (a
    locked project, an in-platform-only dataset: 403); metadata and rendered images are viewing (rendered
    with the hub's windows only for a caller who may not download: ``may_download``)."""
    out = []
    for inst in rows:
        f = session.get(ArchiveFile, inst.file_id) if inst.file_id else None
        if f is None:
            raise NotFound("no such study, series or instance")
        grant = authorize_read(session, principal, f)  # NotFound / MfaRequired for everyone else
        if f.state != READY:
            raise Conflict(f"an instance's archive file is {f.state}, not ready")
        if download:
            require_download_allowed(session, grant)
        out.append(Readable(inst, f, grant))
    return out


def may_download(session: Session, readable: Sequence[Readable]) -> bool:
    """Whether the caller may take every one of these instances home (``require_download_allowed`` on each
    grant): the right that also lets a caller choose any window on the rendered routes."""
    grants = {(r.grant.basis, r.grant.project_id, r.grant.may_download): r.grant for r in readable}
    try:
        for grant in grants.values():  # a study's instances share a few grants: each is asked once
            require_download_allowed(session, grant)
    except Forbidden:
        return False
    return True


def _grant_details(grant: ReadGrant) -> dict[str, Any]:
    return {"basis": grant.basis, "via_project": str(grant.project_id) if grant.project_id else None}


def audit_rendered(session: Session, principal: Principal, scope: Scope, r: Readable, what: str, frame: int,
                   window: str) -> None:
    """One event per rendered picture for a caller who may not download: what (rendered, thumbnail), which
    instance and frame, and the window by name (``header``, ``lung``…) with its center and width."""
    audit.record(session, principal.actor, READ_EVENT, project_id=scope.project_id,
                 target=f"study:{r.instance.study_uid}"[:255],
                 details={"read": what, "counted": "per request", "instances": 1, "frames": 1,
                          "sop_instance_uid": r.instance.sop_instance_uid, "frame": frame, "window": window,
                          **_grant_details(r.grant)})


def audit_window_refused(session: Session, principal: Principal, scope: Scope, r: Readable, frame: int,
                         asked: str) -> None:
    """A window the hub does not offer, asked for by a caller who may not download (outcome denied)."""
    audit.record(session, principal.actor, WINDOW_REFUSED_EVENT, outcome="denied", project_id=scope.project_id,
                 target=f"study:{r.instance.study_uid}"[:255],
                 details={"sop_instance_uid": r.instance.sop_instance_uid, "frame": frame, "window": asked[:100],
                          **_grant_details(r.grant)})


def audit_read(session: Session, principal: Principal, scope: Scope, readable: Sequence[Readable], what: str
               ) -> None:
    """One event per caller and study per ``AUDIT_WINDOW``: the first read of a study in a window."""
    since = utcnow() - AUDIT_WINDOW
    for study in dict.fromkeys(r.instance.study_uid for r in readable):
        target = f"study:{study}"[:255]
        recent = session.scalar(select(AuditEvent.seq).where(
            AuditEvent.actor_id == principal.user.id, AuditEvent.action == READ_EVENT,
            AuditEvent.target == target, AuditEvent.project_id == scope.project_id, AuditEvent.at >= since)
            .limit(1))
        if recent is not None:
            continue
        grant = next(r.grant for r in readable if r.instance.study_uid == study)
        audit.record(session, principal.actor, READ_EVENT, project_id=scope.project_id, target=target,
                     details={"first": what, **_grant_details(grant),
                              "window_minutes": int(AUDIT_WINDOW.total_seconds() // 60)})


@dataclass
class Decryptor:
    """Plaintext ranges of archive files, from the segments that cover them (headers opened once)."""

    hub: Hub
    storage: Storage
    secrets: list[bytes]
    _keys: dict[str, list[bytes]] = field(default_factory=dict)

    @classmethod
    def open(cls, hub: Hub, session: Session, storage: Storage) -> Decryptor:
        return cls(hub, storage, list(hub_keys(hub, session).secrets))

    def session_keys(self, f: ArchiveFile) -> list[bytes]:
        keys = self._keys.get(f.id)
        if keys is None:
            assert f.header is not None
            keys = self._keys[f.id] = list(c4gh.open_header(f.header, self.secrets).session_keys)
        return keys

    def chunks(self, f: ArchiveFile, start: int, end: int) -> Iterator[bytes]:
        body_key = f.body_key
        assert body_key is not None
        yield from c4gh.decrypt_range(lambda a, b: self.storage.open_reader(body_key, a, b), self.session_keys(f),
                                      start, end, f.body_size)

    def read(self, f: ArchiveFile, start: int, end: int) -> bytes:
        return b"".join(self.chunks(f, start, end))


def header_dataset(dec: Decryptor, r: Readable) -> pydicom.Dataset:
    """The instance's non-pixel header, from the segments before its Pixel Data (never the pixels)."""
    end = r.instance.pixel_offset if r.instance.pixel_offset is not None else r.file.plaintext_size or 0
    return pydicom.dcmread(io.BytesIO(dec.read(r.file, 0, end)), stop_before_pixels=True)


# The longest binary value /metadata gives a caller who may not download. Longer ones are data rather than
# header — waveform samples, spectroscopy data, an encapsulated document, a LUT — and are left out for them.
VIEWING_BINARY_MAX = 64


def metadata(dec: Decryptor, r: Readable, bulk_url: str, *, downloader: bool) -> dict[str, Any]:
    """DICOM JSON of one instance's header (PS3.18 F.2), the pixels as a BulkDataURI. For a caller who may
    not download, binary values longer than ``VIEWING_BINARY_MAX`` bytes are left out (at any depth)."""
    ds = header_dataset(dec, r)
    if not downloader:
        _leave_out_binary(ds, VIEWING_BINARY_MAX)
    out: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=10**9)
    transfer_syntax = getattr(ds.file_meta, "TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    if transfer_syntax:
        out["00020010"] = {"vr": "UI", "Value": [str(transfer_syntax)]}
    if r.instance.pixel_offset is not None:
        out["7FE00010"] = {"vr": "OB" if r.instance.transfer_syntax_uid not in NATIVE else "OW",
                           "BulkDataURI": bulk_url}
    return dict(sorted(out.items()))


def _leave_out_binary(ds: pydicom.Dataset, limit: int) -> None:
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _leave_out_binary(item, limit)
        elif isinstance(elem.value, bytes | bytearray) and len(elem.value) > limit:
            del ds[elem.tag]


def frame_ranges(inst: ImportedInstance, numbers: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Per frame asked for: its [start, end) plaintext ranges (one, or an encapsulated frame's fragments)."""
    by_frame: dict[int, list[tuple[int, int]]] = {}
    for frame, offset, length in inst.frames or []:
        by_frame.setdefault(frame, []).append((offset, offset + length))
    missing = [n for n in numbers if n not in by_frame]
    if missing:
        raise NotFound(f"no frame {missing[0]} in this instance (it has {inst.number_of_frames})")
    return [by_frame[n] for n in numbers]


def etag(files: Sequence[ArchiveFile], extra: str = "") -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update((f.id + ":" + (f.plaintext_sha256 or "") + ";").encode())
    digest.update(extra.encode())
    return '"' + digest.hexdigest()[:32] + '"'


# Pieces handed to the server at once. A sync iterator behind a StreamingResponse costs a worker-thread hop and
# an ASGI send per item; crypt4gh yields 64 KiB segments (and multipart its part headers apart), so a 0.5 MB
# instance was ~10 hops. Joined up to this size (the download route's chunk), it is one.
STREAM_CHUNK = 4 * 1024 * 1024


def coalesce(pieces: Iterable[bytes], size: int = STREAM_CHUNK) -> Iterator[bytes]:
    """The same bytes, in order, as chunks of at least ``size`` (the last one shorter); no empty chunk."""
    held: list[bytes] = []
    length = 0
    for piece in pieces:
        held.append(piece)
        length += len(piece)
        if length >= size:
            yield b"".join(held)
            held, length = [], 0
    if length:
        yield b"".join(held)


def multipart(parts: Iterator[tuple[str, Iterator[bytes]]], boundary: str) -> Iterator[bytes]:
    """A multipart/related body (RFC 2387) streamed part by part."""
    for content_type, chunks in parts:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
