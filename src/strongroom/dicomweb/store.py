"""STOW-RS (PS3.18 10.5): instances posted over HTTP, stored into the project through the DICOM
destination's pipeline — de-identification → verification (leak scan, risk check) → quarantine or
archive → the encrypted archive and the index in ``imaging_instances``.

One request is one import batch (source ``stow``). Each part is spooled where the destination spools
what it receives (``[imaging] spool_dir``, default ``<var_dir>/dicom-spool``, mode 0700), de-identified
and verified there, then sealed into the archive at once; its plaintext files are deleted before the next
part is read, so at most one instance is on disk in plaintext. The rows are written for the whole request
in one transaction at the end: a request over the project's quota stores nothing (its sealed bodies are
deleted), and a request cut short (connection lost, body too large) leaves nothing behind either.

The answer names instances by their de-identified UIDs only (what QIDO and WADO serve): an original
identifier is never echoed back.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select

from ..archive import service as archive
from ..archive.backend import storage_for
from ..audit import service as audit
from ..db import transaction, utcnow
from ..hub import Hub
from ..identity.principal import Principal
from ..imaging import pipeline
from ..imaging import service as imaging
from ..imaging.deid import DeidError
from ..imaging.models import ARCHIVED, PUBLISHED, QUARANTINED, ImportBatch, ImportedInstance
from ..paths import private_dir
from ..projects import quota
from ..projects.models import Project

log = structlog.get_logger("strongroom.dicomweb.stow")

STORE_EVENT = "dicomweb.stow"
SOURCE = "stow"
# Failure reasons (PS3.18 Table 10.5.3-2, the C-STORE statuses of PS3.4 B.2.3)
OUT_OF_RESOURCES = 0xA700  # the project's quota
WRONG_STUDY = 0xA900  # posted to /studies/{study}, the instance is of another study
CANNOT_UNDERSTAND = 0xC000  # not a DICOM instance the pipeline can process
PROCESSING_FAILURE = 0x0110  # sent before and discarded at review: not stored again
# Warning reason (PS3.18 Table 10.5.3-3): stored, but held in quarantine for review, so not yet served
COERCED = 0xB000
STALE_SPOOL_SECONDS = 6 * 3600  # a request's spool folder older than this was left by a crashed process

QUOTA_REASON = "the project's storage quota is full"
# A part's own Content-Type is the sender's free text: a refusal names it only if it is one of these, else
# only its top-level type (or not at all). Nothing else a part carries (Content-Disposition's filename,
# Content-Location, Content-Description) is read: it may name the patient.
_COMMON_TYPES = {"application/dicom+json", "application/dicom+xml", "application/octet-stream", "application/json",
                 "application/xml", "application/zip", "application/pdf", "text/plain", "text/html", "image/jpeg",
                 "image/png", "image/jp2", "image/jls", "image/gif", "image/tiff", "video/mp4", "video/mpeg",
                 "multipart/related"}
_TOP_LEVEL_TYPES = {"application", "audio", "font", "image", "message", "model", "multipart", "text", "video"}


def part_type(content_type: str) -> str:
    """How a refusal names a part's media type (see ``_COMMON_TYPES``)."""
    if content_type in _COMMON_TYPES:
        return content_type
    top = content_type.partition("/")[0]
    return f"{top}/{imaging.MASK}" if top in _TOP_LEVEL_TYPES else imaging.MASK


@dataclass
class Outcome:
    """What became of one part, in the order received. UIDs are de-identified ones (or empty)."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    failure: int | None = None
    warning: int | None = None
    reason: str = ""  # for the batch's reasons and the Warning header: never an original value
    size: int = 0  # bytes received


@dataclass
class StoreResult:
    outcomes: list[Outcome]
    batch_id: str
    quota_exceeded: bool = False
    published_version: int | None = None

    @property
    def status(self) -> int:
        """200 every instance stored; 409 none; 202 some failed or were stored with a warning."""
        failed = sum(1 for o in self.outcomes if o.failure is not None)
        if failed == len(self.outcomes):
            return 409
        if failed or any(o.warning is not None for o in self.outcomes):
            return 202
        return 200


@dataclass
class StowRequest:
    """One STOW-RS request in progress. ``add`` each received part (a file in ``folder``), then ``finish``
    (or ``discard`` if the request failed)."""

    hub: Hub
    ctx: imaging.ImportContext
    principal: Principal
    study: str | None
    batch_id: str
    folder: Path
    free_bytes: int
    outcomes: list[Outcome] = field(default_factory=list)
    processed: list[tuple[int, imaging.Processed]] = field(default_factory=list)  # (outcome index, item)
    received_bytes: int = 0
    over_quota: bool = False
    recorded: bool = False  # archive_processed committed the request's rows

    def __post_init__(self) -> None:
        self.storage = storage_for(self.hub)

    # -- one part -------------------------------------------------------------------------------
    def new_part_path(self) -> Path:
        return self.folder / f"{uuid.uuid4().hex}.raw"

    def add(self, raw: Path, content_type: str) -> None:
        """De-identify, check, verify and seal one received part; its plaintext files are gone afterwards."""
        out = raw.with_suffix(".dcm")
        try:
            self.outcomes.append(self._process(raw, out, content_type))
        finally:
            raw.unlink(missing_ok=True)
            out.unlink(missing_ok=True)

    def _process(self, raw: Path, out: Path, content_type: str) -> Outcome:
        size = raw.stat().st_size
        self.received_bytes += size
        if content_type not in ("", "application/dicom"):
            return Outcome(failure=CANNOT_UNDERSTAND, size=size,
                           reason=f"a part of type {part_type(content_type)}, not application/dicom")
        if self.over_quota or self.received_bytes > self.free_bytes:
            self.over_quota = True  # the rest is read and dropped; nothing of this request is stored
            return Outcome(failure=OUT_OF_RESOURCES, reason=QUOTA_REASON, size=size)
        ctx = self.ctx
        try:
            summary = pipeline.deidentify_stage(str(raw), str(out), ctx.profile, ctx.secret)
        except DeidError as exc:
            return Outcome(failure=CANNOT_UNDERSTAND, reason=imaging.safe_reason(f"not processable DICOM: {exc}"),
                           size=size)
        except Exception as exc:  # an object the engine cannot handle: refuse it, never store it as is
            log.exception("dicomweb.stow_deid_error", project=ctx.slug)
            return Outcome(failure=CANNOT_UNDERSTAND, reason=f"de-identification failed: {type(exc).__name__}",
                           size=size)
        summary["received_size"] = size
        found = Outcome(sop_class_uid=summary.get("sop_class_uid", ""), sop_instance_uid=summary["sop_instance_uid"],
                        study_uid=summary.get("study_uid", ""), size=size)
        if self.study is not None:
            originals = {original for kind, original, _ in summary["pseudonym_map"] if kind == "StudyInstanceUID"}
            if self.study not in ({summary.get("study_uid")} | originals):
                found.failure, found.reason = WRONG_STUDY, "the instance is not of the study in the URL"
                return found
        try:
            summary = pipeline.verify_stage(str(raw), str(out), ctx.profile, summary)
        except Exception as exc:  # never release what could not be verified; keep it sealed for review
            summary = summary | {"reasons": [f"verification failed: {type(exc).__name__}"],
                                 "size": out.stat().st_size}
        sealed = archive.seal_into_storage(ctx.keys, self.storage, ctx.project_id,
                                           imaging.archive_file_id(ctx, summary["sop_instance_uid"]), str(out))
        found.series_uid = summary.get("series_uid", "")
        self.processed.append((len(self.outcomes), imaging.Processed(self.batch_id, str(out), summary, sealed)))
        return found

    # -- the end of the request -----------------------------------------------------------------
    def discard(self) -> None:
        """Delete whatever was spooled, and what was sealed unless its rows were committed."""
        if not self.recorded:
            for _, item in self.processed:
                if item.sealed is not None:
                    self.storage.delete(item.sealed.body_key)
            self.processed.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    def abandon(self, why: str) -> None:
        """The request ended without an answer (a malformed or cut-short body, too large, a lost
        connection): nothing is stored (unless the failure came after the rows were committed); the batch
        is closed and the request audited as failed."""
        self.discard()
        with transaction(self.hub.sessions) as session:
            batch = session.get(ImportBatch, self.batch_id, with_for_update=True)
            if batch is None or batch.state == "closed":
                return
            batch.state, batch.closed_at = "closed", utcnow()
            batch.reasons = {f"request not completed: {why}"[:200]: 1}
            audit.record(session, self.principal.actor, STORE_EVENT, outcome="failed",
                         project_id=self.ctx.project_id, target=f"import:{self.batch_id}",
                         details={"batch": self.batch_id, "received": len(self.outcomes),
                                  "stored": len(self.processed) if self.recorded else 0,
                                  "refused": f"request not completed: {why}"[:200], "bytes": self.received_bytes})

    def finish(self, base_url: str) -> tuple[StoreResult, dict[str, Any]]:
        """Record everything in one transaction (or nothing, over quota), publish, and audit the request.
        Returns the result and the Store Instances Response (DICOM JSON)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        result = StoreResult(self.outcomes, self.batch_id)
        if not self.over_quota and self.processed:
            try:
                outcomes = imaging.archive_processed(self.hub, self.storage, self.ctx, [p for _, p in self.processed])
            except quota.QuotaExceeded:  # the race-free check at the write: the rows were rolled back
                self.over_quota = True
            else:
                self.recorded = True  # the rows point at the sealed bodies now: they stay, whatever follows
                self._settle(outcomes)
        if self.over_quota:
            self.discard()
            for o in self.outcomes:
                if o.failure is None:
                    o.failure, o.warning, o.reason = OUT_OF_RESOURCES, None, QUOTA_REASON
            result.quota_exceeded = True
        elif any(o.failure is None for o in self.outcomes):
            try:
                result.published_version = imaging.publish_pending(self.hub, self.ctx.project_id,
                                                                   self.principal.actor)
            except Exception:  # stored all the same; the next import or `…/imaging/publish` publishes them
                log.exception("dicomweb.stow_publish_failed", project=self.ctx.slug)
        self._close(result)
        return result, response(result, base_url)

    def _settle(self, outcomes: list[str]) -> None:
        """Archived instances are stored; quarantined ones stored with a warning; a resend of a known
        instance answers as that instance is now (stored, held, or refused if it was discarded)."""
        states = {}
        dupes = [p.summary["sop_instance_uid"] for (_, p), o in zip(self.processed, outcomes, strict=True)
                 if o == "duplicate"]
        if dupes:
            with self.hub.sessions() as session:
                states = dict(session.execute(select(ImportedInstance.sop_instance_uid, ImportedInstance.state).where(
                    ImportedInstance.project_id == self.ctx.project_id,
                    ImportedInstance.sop_instance_uid.in_(dupes))).all())
        for (n, _), outcome in zip(self.processed, outcomes, strict=True):
            o = self.outcomes[n]
            state = states.get(o.sop_instance_uid, QUARANTINED) if outcome == "duplicate" else outcome
            if state == QUARANTINED:
                o.warning, o.reason = COERCED, "held in quarantine for review (verification)"
            elif state not in (ARCHIVED, PUBLISHED):
                o.failure, o.reason = PROCESSING_FAILURE, "this instance was discarded at review before"

    def _close(self, result: StoreResult) -> None:
        """Close the batch and write the request's one audit event (counts, study pseudonyms)."""
        failed = [o for o in result.outcomes if o.failure is not None]
        stored = [o for o in result.outcomes if o.failure is None]
        with transaction(self.hub.sessions) as session:
            batch = session.get(ImportBatch, self.batch_id, with_for_update=True)
            assert batch is not None
            batch.state, batch.closed_at = "closed", utcnow()
            # what archive_processed did not count: refusals (a discarded resend was counted as a duplicate)
            recorded = set() if result.quota_exceeded else {n for n, _ in self.processed}
            counted = [o for n, o in enumerate(result.outcomes) if n not in recorded]
            batch.received += len(counted)
            batch.rejected += len(counted)
            batch.bytes_received += sum(o.size for o in counted)
            reasons = dict(batch.reasons or {})
            for reason, n in Counter(imaging.safe_reason(o.reason) for o in counted).items():
                reasons[reason] = reasons.get(reason, 0) + n
            batch.reasons = reasons
            details = {"batch": self.batch_id, "received": len(result.outcomes), "stored": len(stored),
                       "quarantined": sum(1 for o in stored if o.warning is not None), "failed": len(failed),
                       "bytes": self.received_bytes,
                       "studies": sorted({o.study_uid for o in stored if o.study_uid})[:100],
                       "published_version": result.published_version}
            if self.study is not None:
                details["study_in_url"] = "given"  # the URL's study may be an original UID: not recorded
            if result.quota_exceeded:
                details["refused"] = QUOTA_REASON
            audit.record(session, self.principal.actor, STORE_EVENT,
                         outcome="ok" if stored else "failed", project_id=self.ctx.project_id,
                         target=f"import:{self.batch_id}", details=details)


def begin(hub: Hub, principal: Principal, project_id: uuid.UUID, study: str | None, origin: str) -> StowRequest:
    """Open the request's batch and spool folder (after the caller checked the rights)."""
    ctx = imaging.load_context(hub, project_id)
    with hub.sessions() as session:
        project = session.get(Project, project_id)
        assert project is not None
        free = max(0, project.quota_bytes - project.used_bytes - project.reserved_bytes)
    batch_id = imaging.open_batch(hub, project_id, source=SOURCE, origin=origin, audited=False)
    base = spool_root(hub)
    _sweep(base)
    folder = base / batch_id
    folder.mkdir(mode=0o700)
    return StowRequest(hub, ctx, principal, study, batch_id, folder, free)


def spool_root(hub: Hub) -> Path:
    """``<spool>/stow``: beside the destination's per-project folders, which its recovery leaves alone."""
    spool = hub.settings.imaging.spool_dir or hub.settings.var_dir / "dicom-spool"
    private_dir(spool)
    os.chmod(spool, 0o700)
    base = spool / "stow"
    base.mkdir(exist_ok=True, mode=0o700)
    return base


def _sweep(base: Path) -> None:
    """Folders left by a process that died mid-request (its batch stays open, nothing was recorded)."""
    cutoff = time.time() - STALE_SPOOL_SECONDS
    for entry in os.scandir(base):
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


def response(result: StoreResult, base_url: str) -> dict[str, Any]:
    """The Store Instances Response (PS3.18 Table 10.5.3-1) as DICOM JSON."""

    def uid(tag: str, value: str) -> dict[str, Any]:
        return {tag: {"vr": "UI", "Value": [value]}} if value else {}

    stored, failed = [], []
    for o in result.outcomes:
        item = uid("00081150", o.sop_class_uid) | uid("00081155", o.sop_instance_uid)
        if o.failure is not None:
            failed.append(item | {"00081197": {"vr": "US", "Value": [o.failure]}})
            continue
        if o.warning is not None:  # held for review: not served until released, so no RetrieveURL
            stored.append(item | {"00081196": {"vr": "US", "Value": [o.warning]}})
        else:
            stored.append(item | {"00081190": {"vr": "UR", "Value": [
                f"{base_url}/studies/{o.study_uid}/series/{o.series_uid}/instances/{o.sop_instance_uid}"]}})
    out: dict[str, Any] = {}
    served = {o.study_uid for o in result.outcomes if o.failure is None and o.warning is None}
    if len(served) == 1:
        out["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{served.pop()}"]}
    if failed:
        out["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        out["00081199"] = {"vr": "SQ", "Value": stored}
    return out
