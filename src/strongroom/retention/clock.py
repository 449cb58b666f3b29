"""The last-use clock, derived from the audit log.

Every use the clock counts is already an audit event, written in the same transaction as the use itself:
a download or in-platform read starts (``archive.download.started``: downloads, ZIP downloads, DRS access
URLs and plaintext reads all go through ``archive.record_download``), an access application is created or
submitted, a version is released, a catalogue entry is published. So the clock reads the log forward from
its cursor (``retention_cursor``) in the ``retention.clock`` job instead of adding a write to every read
path: a GET stays a read-only transaction, no other capability imports retention, uses from before this
capability existed are counted on its first run, and the cursor moves in the same transaction as the
clocks, so a crashed run is simply read again. The lag (one job period) is nothing against years.

``USE_EVENTS`` maps an audit action to the kind of use; another capability adds its own with
``config.add_hook("strongroom.retention.clock:USE_EVENTS", …)``. Targets name a file, a dataset, an
application or (DICOMweb reads, audited per study) a study of the event's project.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..access.models import Application
from ..archive.models import DatasetFile, DatasetVersion
from ..audit.models import AuditEvent, AuditHead
from ..config import RetentionSettings
from ..imaging.models import ImportedInstance
from .models import ClockCursor, DatasetClass, ProjectClock, VersionClock
from .rules import keep_until

USE_EVENTS: dict[str, str] = {
    "archive.download.started": "download",  # details.mode == "plaintext": an in-platform read
    "access.application.created": "application",
    "access.application.submitted": "application",
    "archive.dataset.released": "release",
    "catalog.entry.published": "publication",
    "dicomweb.study.read": "dicomweb",  # WADO-RS, once per caller and study per window: its instances' versions
    # a file sent out through the airlock (outbox, another project, a destination): results built on it must
    # stay checkable against the data, so this is use as much as a download is
    "airlock.file.delivered": "airlock export",
}
LIVE = ("released", "deprecated", "draft")  # a deleted version's clock stops
BATCH = 5000


def years_for(settings: RetentionSettings, dataset_class: str | None) -> int:
    return settings.years.get(dataset_class or settings.default_class, settings.years[settings.default_class])


def class_of(session: Session, settings: RetentionSettings, dataset_id: str) -> str:
    row = session.get(DatasetClass, dataset_id)
    return row.dataset_class if row is not None else settings.default_class


def version_clock(session: Session, settings: RetentionSettings, v: DatasetVersion) -> VersionClock:
    """The version's clock row, started at its release (or creation) when it has none yet."""
    clock = session.get(VersionClock, v.id)
    if clock is None:
        start = v.released_at or v.created_at
        clock = VersionClock(version_id=v.id, dataset_id=v.dataset_id, last_used_at=start,
                             last_use="release" if v.released_at else "created", extension_reason="",
                             keep_until=keep_until(start, years_for(settings, class_of(session, settings,
                                                                                         v.dataset_id)), None))
        session.add(clock)
        session.flush()
    return clock


def recompute(session: Session, settings: RetentionSettings, clock: VersionClock) -> None:
    years = years_for(settings, class_of(session, settings, clock.dataset_id))
    new = keep_until(clock.last_used_at, years, clock.extended_until)
    if new != clock.keep_until:
        clock.keep_until, clock.notified_months = new, None  # a new date: its notices start again


def _latest(found: dict[Any, tuple[dt.datetime, str]], key: Any, at: dt.datetime, use: str) -> None:
    if key not in found or at > found[key][0]:
        found[key] = (at, use)


def _use(event: Any) -> str:
    details = event.details or {}
    if (event.action == "archive.download.started" and details.get("mode") == "plaintext"
            and details.get("allowed_as") != "download"):
        return "in-platform read"
    return USE_EVENTS[event.action]


def _resolve(session: Session, events: list[Any]) -> dict[int, tuple[dt.datetime, str]]:
    """Each live version's latest use among ``events``: a file's versions, a released version, and for an
    application or a publication every released version of the dataset. A few queries per batch."""
    refs: dict[str, set[str]] = defaultdict(set)
    for e in events:
        kind, _, ref = (e.target or "").partition(":")
        refs[kind].add(ref)
    live = DatasetVersion.state.in_(LIVE)
    by_file: dict[str, list[DatasetVersion]] = defaultdict(list)
    if refs["file"]:
        for file_id, v in session.execute(
                select(DatasetFile.file_id, DatasetVersion)
                .join(DatasetVersion, DatasetVersion.id == DatasetFile.version_id)
                .where(DatasetFile.file_id.in_(refs["file"]), live)).tuples():
            by_file[file_id].append(v)
    app_dataset: dict[str, str] = {}
    if refs["application"]:
        app_dataset = {a: d for a, d in session.execute(
            select(Application.id, Application.dataset_id).where(Application.id.in_(refs["application"]))).tuples()}
    by_study: dict[tuple[uuid.UUID | None, str], dict[int, DatasetVersion]] = defaultdict(dict)
    if refs["study"]:  # the live versions holding any instance of the study, in the event's project
        for project_id, study, v in session.execute(
                select(ImportedInstance.project_id, ImportedInstance.study_uid, DatasetVersion)
                .join(DatasetFile, DatasetFile.file_id == ImportedInstance.file_id)
                .join(DatasetVersion, DatasetVersion.id == DatasetFile.version_id)
                .where(ImportedInstance.study_uid.in_(refs["study"]), live)).tuples():
            by_study[(project_id, study)][v.id] = v
    dataset_ids = refs["dataset"] | set(app_dataset.values())
    by_dataset: dict[str, list[DatasetVersion]] = defaultdict(list)
    if dataset_ids:
        for v in session.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id.in_(dataset_ids), live)):
            by_dataset[v.dataset_id].append(v)
    found: dict[int, tuple[dt.datetime, str]] = {}
    for e in events:
        kind, _, ref = (e.target or "").partition(":")
        use = _use(e)
        if kind == "file":
            versions = by_file.get(ref, [])
        elif kind == "study":
            versions = list(by_study.get((e.project_id, ref), {}).values())
        else:
            versions = by_dataset.get(app_dataset.get(ref, "") if kind == "application" else ref, [])
            number = (e.details or {}).get("version") if e.action == "archive.dataset.released" else None
            versions = [v for v in versions if (v.number == int(number) if number is not None
                                                else v.state != "draft")]
        for v in versions:
            _latest(found, v.id, e.at, use)
    return found


def advance(session: Session, settings: RetentionSettings, *, batch: int = BATCH) -> dict[str, int]:
    """Read up to ``batch`` audit events past the cursor and move the clocks; returns counts."""
    cursor = session.get(ClockCursor, 1)
    if cursor is None:
        cursor = ClockCursor(id=1, audit_seq=0)
        session.add(cursor)
        session.flush()
    upto = min(head(session), cursor.audit_seq + batch)
    events = session.execute(
        select(AuditEvent.seq, AuditEvent.action, AuditEvent.target, AuditEvent.project_id, AuditEvent.at,
               AuditEvent.details)
        .where(AuditEvent.seq > cursor.audit_seq, AuditEvent.seq <= upto,
               AuditEvent.action.in_(list(USE_EVENTS)), AuditEvent.outcome == "ok")
        .order_by(AuditEvent.seq)).all()
    versions = _resolve(session, list(events))
    if versions:
        known = {c.version_id: c for c in session.scalars(select(VersionClock).where(
            VersionClock.version_id.in_(list(versions))))}
        for v in session.scalars(select(DatasetVersion).where(DatasetVersion.id.in_(list(versions)))):
            clock = known.get(v.id) or version_clock(session, settings, v)
            at, use = versions[v.id]
            if at > clock.last_used_at:
                clock.last_used_at, clock.last_use = at, use
                recompute(session, settings, clock)
    projects: dict[uuid.UUID, tuple[dt.datetime, str]] = {}
    for e in events:
        if e.project_id is not None:
            _latest(projects, e.project_id, e.at, _use(e))
    for project_id, (at, use) in projects.items():
        row = session.get(ProjectClock, project_id)
        if row is None:
            session.add(ProjectClock(project_id=project_id, last_used_at=at, last_use=use))
        elif at > row.last_used_at:
            row.last_used_at, row.last_use = at, use
    cursor.audit_seq = upto
    return {"events": len(events), "read_to": upto, "versions": len(versions), "projects": len(projects)}


def head(session: Session) -> int:
    return session.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0


def start_missing(session: Session, settings: RetentionSettings) -> int:
    """A clock for every released version that has none yet (started at its release)."""
    unclocked = select(DatasetVersion).outerjoin(VersionClock, VersionClock.version_id == DatasetVersion.id).where(
        VersionClock.version_id.is_(None), DatasetVersion.state.in_(("released", "deprecated")))
    found = session.scalars(unclocked).all()
    for v in found:
        version_clock(session, settings, v)
    return len(found)


def catch_up(session: Session, settings: RetentionSettings) -> int:
    """Advance to the log's head and start missing clocks, in the caller's transaction (the CLI, tests)."""
    n = 0
    while True:
        done = advance(session, settings)
        n += done["events"]
        if done["read_to"] >= head(session):
            break
    start_missing(session, settings)
    return n
