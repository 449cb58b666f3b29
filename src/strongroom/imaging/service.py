"""Imports into a project: batches, archiving de-identified instances, quarantine review, publishing
dataset versions and indexing them for the catalogue. Used by the DICOM destination (``scp.py``), the
bulk importer (``bulk.py``), the API and the web pages.

An instance is written once, in one transaction with its encrypted archive file and its sealed
pseudonyms; a repeated send of the same instance (same pseudonymized SOP Instance UID) is counted as a
duplicate and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..archive import service as archive
from ..archive.keys import hub_keys
from ..archive.models import ArchiveFile, Dataset
from ..archive.sealing import SealedBody, sync_sealed
from ..archive.storage.base import Storage
from ..audit import service as audit
from ..audit.models import AuditEvent
from ..audit.service import Actor
from ..catalog import entries as catalog
from ..catalog.models import CatalogEntry
from ..db import transaction, utcnow
from ..errors import Conflict, Invalid, NotFound
from ..hub import Hub
from ..identity.models import User
from ..identity.principal import Principal
from ..projects import service as projects
from ..projects.models import Project
from . import dicomindex, keystore, pipeline
from .deid import DeidProfile
from .models import (
    ARCHIVED,
    DISCARDED,
    PUBLISHED,
    QUARANTINED,
    ActionLog,
    ImagingProject,
    ImportBatch,
    ImportedInstance,
)
from .settings import DeidProfileSetting, to_engine

SYSTEM_ISSUER = "urn:strongroom:system"
IMPORT_ACTOR = Actor.system("dicom-import")

# A quarantined instance's archive file is held: no download, DRS, share, entitlement, visa or dataset
# version reaches it; members with the import right may look at it in-platform (audited) to review it.
QUARANTINE_HOLD = "quarantine"
QUARANTINE_RULE = archive.HoldRule(right="import", viewed_event="imaging.quarantine.viewed")  # see includeme


@dataclass(frozen=True)
class ImportContext:
    """What importing into one project needs, loaded once per batch (secrets stay in memory)."""

    project_id: uuid.UUID
    slug: str
    profile: DeidProfile
    secret: bytes
    uploader_id: uuid.UUID
    keys: Any  # the archive's HubKeys

    def __repr__(self) -> str:  # never print the secret
        return f"ImportContext(project={self.slug!r})"


@dataclass
class Processed:
    """A worker's output waiting to be archived: the de-identified file and its summary."""

    batch_id: str
    out_path: str
    summary: dict[str, Any]
    sealed: SealedBody | None = None  # already encrypted into the archive (by a worker), or not yet


def import_user(session: Session) -> uuid.UUID:
    """The account imports are recorded under (it cannot log in)."""
    user = session.scalar(select(User).where(User.issuer == SYSTEM_ISSUER, User.subject == "dicom-import"))
    if user is None:
        user = User(issuer=SYSTEM_ISSUER, subject="dicom-import", display_name="DICOM import", is_active=False)
        session.add(user)
        session.flush()
    return user.id


def profile_setting(session: Session, project_id: uuid.UUID) -> DeidProfileSetting:
    return DeidProfileSetting.model_validate(projects.get_setting(session, project_id, "deid_profile"))


def load_context(hub: Hub, project_id: uuid.UUID) -> ImportContext:
    with transaction(hub.sessions) as session:
        project = session.get(Project, project_id)
        if project is None:
            raise NotFound("no such project")
        return ImportContext(project_id=project_id, slug=project.slug,
                             profile=to_engine(profile_setting(session, project_id)),
                             secret=keystore.project_secret(session, hub.settings, project_id),
                             uploader_id=import_user(session), keys=hub_keys(hub, session))


def open_batch(hub: Hub, project_id: uuid.UUID, *, source: str, origin: str, audited: bool = True) -> str:
    """A new import batch. ``origin`` says where the import came from without naming anything that came with
    the data (a sender's AE title and address, "a folder (240 files)"): a folder, file or part name of a
    hospital export often names the patient, and the batch is shown to members and audited for good.
    ``audited=False``: the caller records the import as one event of its own at the end (a STOW-RS request),
    instead of the opened/closed pair."""
    with transaction(hub.sessions) as session:
        batch = ImportBatch(id=archive.new_accession("SRI"), project_id=project_id, source=source,
                            origin=origin[:300], reasons={})
        session.add(batch)
        if audited:
            audit.record(session, IMPORT_ACTOR, "imaging.batch.opened", project_id=project_id,
                         target=f"import:{batch.id}", details={"source": source, "origin": origin[:300]})
        return batch.id


# An exception's message may quote what it choked on: pydicom's do ("Unable to convert '19121212' to 'DA'",
# 'Value "…" is not valid'), the OS's name the file. Quoted text (from a quote that opens a word to one that
# ends one, or to the end) and long digit runs (a personnummer, a date) are masked before a reason is kept;
# a pixel rule's name (the project's own setting, quoted by the engine) stays.
_QUOTED = re.compile(r"""(?<!pixel rule )(?<!\w)b?(?:'.*?(?:'(?!\w)|$)|".*?(?:"(?!\w)|$))""", re.S)
_DIGIT_RUN = re.compile(r"\d(?:[-+ ]?\d){7,}")
MASK = "…"


def safe_reason(reason: str) -> str:
    """``reason`` as it may be kept (batch and instance reasons, audit details): no quoted text or long
    number from an error message, at most 200 characters."""
    return _DIGIT_RUN.sub(MASK, _QUOTED.sub(MASK, reason))[:200]


def _count_reason(batch: ImportBatch, reason: str) -> None:
    reasons = dict(batch.reasons or {})
    key = safe_reason(reason)
    if key not in reasons and len(reasons) >= 50:
        key = "other reasons"
    reasons[key] = reasons.get(key, 0) + 1
    batch.reasons = reasons


def record_rejected(hub: Hub, batch_id: str, reason: str, *, nbytes: int = 0) -> None:
    """An object refused (the sender got a failure status, or the file was skipped)."""
    with transaction(hub.sessions) as session:
        batch = session.get(ImportBatch, batch_id, with_for_update=True)
        assert batch is not None
        _count_rejected(batch, reason, nbytes)


def _count_rejected(batch: ImportBatch, reason: str, nbytes: int) -> None:
    batch.received += 1
    batch.rejected += 1
    batch.bytes_received += nbytes
    _count_reason(batch, reason)


REFUSED_AFTER_ACK = "imaging.instance.refused"


def record_refused_after_acknowledgement(hub: Hub, batch_id: str, spool_id: str, reason: str, *,
                                         nbytes: int = 0) -> bool:
    """An object acknowledged on receipt that the engine then refused: counted as rejected with its reason and
    audited (the sender holds a success status for it), once per spool entry — after a crash between this
    commit and the spool file's deletion, the next start finds the object again and must not count it twice.
    Returns False when it was already recorded."""
    target = f"dicom-spool:{spool_id}"
    with transaction(hub.sessions) as session:
        batch = session.get(ImportBatch, batch_id, with_for_update=True)
        assert batch is not None
        if session.scalar(select(AuditEvent.seq).where(AuditEvent.action == REFUSED_AFTER_ACK,
                                                       AuditEvent.target == target).limit(1)) is not None:
            return False
        _count_rejected(batch, reason, nbytes)
        audit.record(session, IMPORT_ACTOR, REFUSED_AFTER_ACK, outcome="denied", project_id=batch.project_id,
                     target=target, details={"batch": batch_id, "reason": safe_reason(reason), "bytes": nbytes})
    return True


def close_batch(hub: Hub, batch_id: str) -> None:
    with transaction(hub.sessions) as session:
        batch = session.get(ImportBatch, batch_id, with_for_update=True)
        if batch is None or batch.state == "closed":
            return
        batch.state, batch.closed_at = "closed", utcnow()
        audit.record(session, IMPORT_ACTOR, "imaging.batch.closed", project_id=batch.project_id,
                     target=f"import:{batch.id}",
                     details={"received": batch.received, "archived": batch.archived,
                              "quarantined": batch.quarantined, "rejected": batch.rejected,
                              "duplicates": batch.duplicates})


def archive_processed(hub: Hub, storage: Storage, ctx: ImportContext, items: list[Processed]) -> list[str]:
    """Encrypt each de-identified file into the archive, then record all of them (instances, files,
    sealed pseudonyms, batch counters) in one transaction. Returns each item's outcome:
    ``archived``, ``quarantined`` or ``duplicate``. Safe to repeat after a crash: file ids are derived
    from the instance, so a retry overwrites the same object and the unique SOP UID stops doubles."""
    if not items:
        return []
    with hub.sessions() as session:
        known = set(session.scalars(select(ImportedInstance.sop_instance_uid).where(
            ImportedInstance.project_id == ctx.project_id,
            ImportedInstance.sop_instance_uid.in_({i.summary["sop_instance_uid"] for i in items}))))
    outcomes: list[str] = []
    sealed: dict[int, SealedBody] = {}
    seen: set[str] = set()
    for n, item in enumerate(items):
        sop = item.summary["sop_instance_uid"]
        if sop in known or sop in seen:
            outcomes.append("duplicate")
            if item.sealed is not None:  # a resend sealed by a worker: its body is not needed
                storage.delete(item.sealed.body_key)
            continue
        seen.add(sop)
        sealed[n] = item.sealed or archive.seal_into_storage(ctx.keys, storage, ctx.project_id,
                                                             archive_file_id(ctx, sop), item.out_path)
        outcomes.append(QUARANTINED if item.summary.get("reasons") else ARCHIVED)
    sync_sealed(storage, sealed.values())  # bodies sealed by the workers: their renames durable first
    with transaction(hub.sessions) as session:
        pairs: list[tuple[str, str, str]] = []
        logs: dict[str, bytes] = {}
        log_of = {n: _action_log_digest(item.summary.get("action_log") or [], logs)
                  for n, (item, outcome) in enumerate(zip(items, outcomes, strict=True)) if outcome != "duplicate"}
        _store_action_logs(session, logs)  # before the instances that point at them
        per_batch: dict[str, Counter[str]] = {}
        reasons_by_batch: dict[str, list[str]] = {}
        kept = [n for n, outcome in enumerate(outcomes) if outcome != "duplicate"]
        # Core INSERTs, no ORM object or unit of work per instance: the files, then the instances that
        # point at them, each one multi-row statement per group (insertmanyvalues)
        archive.insert_sealed_files(session, ctx.project_id, ctx.uploader_id, [
            (_archive_path(items[n].summary), sealed[n], QUARANTINE_HOLD if outcomes[n] == QUARANTINED else None)
            for n in kept])
        now = utcnow()
        instances: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # by column set (the index may be missing)
        for n, (item, outcome) in enumerate(zip(items, outcomes, strict=True)):
            counter = per_batch.setdefault(item.batch_id, Counter())
            counter[outcome] += 1
            counter["bytes"] += item.summary.get("received_size", 0)
            if outcome == "duplicate":
                continue
            s = item.summary
            row = dict(
                project_id=ctx.project_id, batch_id=item.batch_id, file_id=sealed[n].file_id, state=outcome,
                sop_instance_uid=s["sop_instance_uid"][:64], sop_class_uid=s.get("sop_class_uid", "")[:64],
                study_uid=s.get("study_uid", "")[:64], series_uid=s.get("series_uid", "")[:64],
                patient_pseudonym=s.get("patient_pseudonym", "")[:64], modality=s.get("modality", "")[:16],
                body_part=s.get("body_part", "")[:64], manufacturer=s.get("manufacturer", "")[:64],
                study_date=s.get("study_date", "")[:8], size=s.get("size", 0),
                reasons=[safe_reason(r) for r in (s.get("reasons") or [])[:50]], action_count=s.get("action_count", 0),
                action_log_sha256=log_of[n], created_at=now, **index_columns(s.get("index") or {}))
            instances.setdefault(tuple(row), []).append(row)
            pairs.extend(tuple(p) for p in s.get("pseudonym_map", []))
            if outcome == QUARANTINED:  # each quarantined instance's reasons (not only the group's last one's)
                reasons_by_batch.setdefault(item.batch_id, []).extend(s["reasons"])
        for rows in instances.values():
            session.execute(insert(cast(Table, ImportedInstance.__table__)), rows)
        keystore.record(session, hub.settings, ctx.project_id, pairs)
        for batch_id, counter in per_batch.items():
            batch = session.get(ImportBatch, batch_id, with_for_update=True)
            assert batch is not None
            batch.received += counter[ARCHIVED] + counter[QUARANTINED] + counter["duplicate"]
            batch.archived += counter[ARCHIVED]
            batch.quarantined += counter[QUARANTINED]
            batch.duplicates += counter["duplicate"]
            batch.bytes_received += counter["bytes"]
            for reason in reasons_by_batch.get(batch_id, []):
                _count_reason(batch, reason.split(":")[0] if reason.startswith("leak") else reason)
    return outcomes


def index_columns(index: dict[str, Any]) -> dict[str, Any]:
    """The DICOMweb index columns of an instance from ``dicomindex.index_file``'s result."""
    return {k: index[k] for k in INDEX_COLUMNS if k in index}


INDEX_COLUMNS = (*dicomindex.TEXT, *dicomindex.NUMBERS, "pixel_offset", "frames", "index_version")


def _action_log_digest(entries: list[list[str]], logs: dict[str, bytes]) -> str:
    data = json.dumps(entries, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    if digest not in logs:
        logs[digest] = zlib.compress(data, 6)
    return digest


def _store_action_logs(session: Session, logs: dict[str, bytes]) -> None:
    if not logs:
        return
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(insert(ActionLog).on_conflict_do_nothing(index_elements=["sha256"]),
                    [{"sha256": k, "entries": v} for k, v in logs.items()])


def action_log(session: Session, access: projects.ProjectAccess, instance_id: int) -> tuple[ImportedInstance,
                                                                                       list[list[str]]]:
    """An instance and what de-identification did to it, attribute by attribute (never a value)."""
    access.require("import")
    inst = session.get(ImportedInstance, instance_id)
    if inst is None or inst.project_id != access.project.id:
        raise NotFound("no such instance")
    row = session.get(ActionLog, inst.action_log_sha256) if inst.action_log_sha256 else None
    return inst, json.loads(zlib.decompress(row.entries)) if row else []


def archive_file_id(ctx: ImportContext, sop_instance_uid: str) -> str:
    """A stable archive id per (project, instance): a retry finds the row instead of doubling it."""
    return pipeline.archive_file_id(ctx.secret, sop_instance_uid)


def _archive_path(s: dict[str, Any]) -> str:
    """Where the instance sits in the dataset: patient / study / series / instance (all pseudonyms)."""
    return "/".join([s.get("patient_pseudonym") or "unknown", s.get("study_uid") or "study",
                     s.get("series_uid") or "series", s["sop_instance_uid"] + ".dcm"])


# -- publishing -------------------------------------------------------------------------------
def import_dataset(session: Session, project_id: uuid.UUID) -> Dataset:
    """The dataset a project's imports are published into (created on first publish)."""
    row = session.get(ImagingProject, project_id)
    assert row is not None, "the project has no imaging key yet"
    if row.dataset_id:
        ds = session.get(Dataset, row.dataset_id)
        assert ds is not None
        return ds
    project = session.get(Project, project_id)
    assert project is not None
    ds = Dataset(id=archive.new_accession("SRD"), project_id=project_id,
                 title=f"{project.name}: imaging imports",
                 description="De-identified DICOM images imported through the project's DICOM destination "
                             "and bulk imports. Each import is published as a new version.",
                 created_by=import_user(session))
    session.add(ds)
    session.flush()
    row.dataset_id = ds.id
    audit.record(session, IMPORT_ACTOR, "archive.dataset.created", project_id=project_id,
                 target=f"dataset:{ds.id}", details={"title": ds.title, "via": "imaging import"})
    return ds


def publish_pending(hub: Hub, project_id: uuid.UUID, actor: Actor = IMPORT_ACTOR) -> int | None:
    """Publish every archived (verified, not quarantined) instance not yet in a version as a new
    released version of the import dataset, and refresh its catalogue facts. Returns the version."""
    with transaction(hub.sessions) as session:
        return publish_in(session, project_id, actor)


def publish_in(session: Session, project_id: uuid.UUID, actor: Actor) -> int | None:
    """``publish_pending`` inside the caller's transaction (e.g. right after a quarantine release)."""
    pending = list(session.execute(select(ImportedInstance.id, ImportedInstance.file_id).where(
        ImportedInstance.project_id == project_id, ImportedInstance.state == ARCHIVED)
        .order_by(ImportedInstance.id)))
    if not pending:
        return None
    ds = import_dataset(session, project_id)
    file_ids = [file_id for _, file_id in pending if file_id]  # an archived instance always has its file
    version = archive.publish_version(session, actor, ds, file_ids,
                                      note=f"{len(pending)} de-identified instance(s) imported")
    ids = [i for i, _ in pending]
    for start in range(0, len(ids), 2000):
        session.execute(update(ImportedInstance).where(ImportedInstance.id.in_(ids[start:start + 2000]))
                        .values(state=PUBLISHED, published_version=version.number))
    entry = catalog.entry_for(session, ds.id)
    if entry is not None:
        index_entry(session, entry)
    return version.number


def dataset_facts(session: Session, project_id: uuid.UUID) -> dict[str, Any]:
    """Counts over everything published from imports: what the catalogue shows."""
    base = select(ImportedInstance).where(ImportedInstance.project_id == project_id,
                                          ImportedInstance.state == PUBLISHED).subquery()
    row = session.execute(select(
        func.count(func.distinct(base.c.patient_pseudonym)), func.count(func.distinct(base.c.study_uid)),
        func.count(func.distinct(base.c.series_uid)), func.count(), func.coalesce(func.sum(base.c.size), 0),
    )).one()

    def distinct(column: Any) -> list[str]:
        return [v for v in session.scalars(select(func.distinct(column)).select_from(base).order_by(column))
                if v]

    return {"subjects": row[0], "studies": row[1], "series": row[2], "instances": row[3], "size_bytes": row[4],
            "modalities": distinct(base.c.modality), "organs": distinct(base.c.body_part),
            "manufacturers": distinct(base.c.manufacturer)}


def index_entry(session: Session, entry: CatalogEntry) -> None:
    """Catalogue facts for an import dataset's entry (no-op for other datasets)."""
    row = session.scalar(select(ImagingProject).where(ImagingProject.dataset_id == entry.dataset_id))
    if row is None:
        return
    facts = dataset_facts(session, row.project_id)
    catalog.apply_index(session, entry, **facts)


# -- quarantine review ------------------------------------------------------------------------
def quarantined(session: Session, access: projects.ProjectAccess, *, limit: int = 200) -> list[ImportedInstance]:
    access.require("import")
    return list(session.scalars(select(ImportedInstance).where(
        ImportedInstance.project_id == access.project.id, ImportedInstance.state == QUARANTINED)
        .order_by(ImportedInstance.id).limit(limit)))


def review(session: Session, storage: Storage, principal: Principal, access: projects.ProjectAccess,
           instance_ids: list[int], *, decision: str, note: str) -> int | None:
    """Release (``approve``) or ``discard`` quarantined instances. Released ones are published at once
    as a new version (returned); discarded ones are deleted from the archive. Each decision is audited."""
    access.require("import")
    if decision not in ("approve", "discard"):
        raise Invalid("decision is approve or discard")
    note = note.strip()
    if decision == "approve" and len(note) < 5:
        raise Invalid("say why the images are safe to release (a short note: e.g. 'checked: no burned-in text')")
    if not instance_ids:
        raise Invalid("choose at least one image")
    rows = list(session.scalars(select(ImportedInstance).where(
        ImportedInstance.project_id == access.project.id, ImportedInstance.id.in_(instance_ids[:1000]))))
    if len(rows) != len(set(instance_ids[:1000])):
        raise NotFound("no such quarantined image")
    if any(r.state != QUARANTINED for r in rows):
        raise Conflict("only quarantined images can be reviewed; someone may have reviewed them already")
    now = utcnow()
    for r in rows:
        r.reviewed_by, r.reviewed_at, r.review_note = principal.user.id, now, note[:2000]
        if decision == "approve":
            r.state = ARCHIVED
            f = session.get(ArchiveFile, r.file_id) if r.file_id else None
            if f is not None:
                f.hold = None  # release is the only way out of quarantine
        else:
            r.state = DISCARDED
            if r.file_id:
                archive.delete_unpublished_file(session, storage, r.file_id)
                r.file_id = None
        action = "imaging.quarantine.released" if decision == "approve" else "imaging.quarantine.discarded"
        audit.record(session, principal.actor, action,
                     project_id=access.project.id, target=f"instance:{r.sop_instance_uid}",
                     details={"reasons": r.reasons, "note": note[:500], "batch": r.batch_id})
    session.flush()
    return publish_in(session, access.project.id, principal.actor) if decision == "approve" else None


# -- status -----------------------------------------------------------------------------------
def batches(session: Session, access: projects.ProjectAccess, *, limit: int = 50) -> list[ImportBatch]:
    access.require("import")
    return list(session.scalars(select(ImportBatch).where(ImportBatch.project_id == access.project.id)
                                .order_by(ImportBatch.created_at.desc()).limit(limit)))


def batch(session: Session, access: projects.ProjectAccess, batch_id: str) -> ImportBatch:
    access.require("import")
    b = session.get(ImportBatch, batch_id)
    if b is None or b.project_id != access.project.id:
        raise NotFound("no such import")
    return b


def overview(session: Session, access: projects.ProjectAccess) -> dict[str, Any]:
    """Counts by state, the import dataset and the key fingerprint (for the imaging page)."""
    counts = dict(session.execute(select(ImportedInstance.state, func.count()).where(
        ImportedInstance.project_id == access.project.id).group_by(ImportedInstance.state)).all())
    row = session.get(ImagingProject, access.project.id)
    return {"counts": {state: counts.get(state, 0) for state in (ARCHIVED, QUARANTINED, PUBLISHED, DISCARDED)},
            "dataset_id": row.dataset_id if row else None,
            "key_fingerprint": row.key_fingerprint if row else None}


def recent_days(session: Session, access: projects.ProjectAccess, days: int = 14) -> list[tuple[dt.date, int]]:
    """Instances received per day (for the import page's chart)."""
    since = utcnow() - dt.timedelta(days=days - 1)
    day = func.date(ImportedInstance.created_at)
    per_day = {str(d): n for d, n in session.execute(select(day, func.count()).where(
        ImportedInstance.project_id == access.project.id, ImportedInstance.created_at >= since).group_by(day))}
    today = utcnow().date()
    dates = [today - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]
    return [(d, per_day.get(d.isoformat(), 0)) for d in dates]


def batch_instances(session: Session, access: projects.ProjectAccess, batch_id: str, *,
                    limit: int = 500) -> list[ImportedInstance]:
    batch(session, access, batch_id)
    return list(session.scalars(select(ImportedInstance).where(ImportedInstance.batch_id == batch_id)
                                .order_by(ImportedInstance.id).limit(limit)))
