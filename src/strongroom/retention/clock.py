"""The last-use clock, derived from the audit log.

Every use the clock counts is already an audit event, written in the same transaction as the use itself:
a download or in-platform read starts (``archive.download.started``: downloads, ZIP downloads, DRS access
URLs and plaintext reads all go through ``archive.record_download``), an access application is created or
submitted, a version is released, a catalogue entry is published. So the clock reads the log forward from
its cursor (``retention_cursor``) in the ``retention.clock`` job instead of adding a write to every read
path: a GET stays a read-only transaction, no other capability imports retention, uses from before this
capability existed are counted on its first run, and the cursor moves in the same transaction as the
clocks, so a crashed run is simply read again. The lag (one job period) is nothing against years.

``USE_EVENTS`` maps an audit action to the kind of use; another capability adds its own (e.g. DICOMweb
reads) with ``config.add_hook("strongroom.retention.clock:USE_EVENTS", …)``.
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
from .models import ClockCursor, DatasetClass, ProjectClock, VersionClock
from .rules import keep_until

USE_EVENTS: dict[str, str] = {
    "archive.download.started": "download",  # details.mode == "plaintext": an in-platform read
    "access.application.created": "application",
    "access.application.submitted": "application",
    "archive.dataset.released": "release",
    "catalog.entry.published": "publication",
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


def _touch(session: Session, settings: RetentionSettings, v: DatasetVersion, at: dt.datetime, use: str) -> None:
    clock = version_clock(session, settings, v)
    if at > clock.last_used_at:
        clock.last_used_at, clock.last_use = at, use
        recompute(session, settings, clock)


def _touch_project(session: Session, project_id: uuid.UUID, at: dt.datetime, use: str) -> None:
    row = session.get(ProjectClock, project_id)
    if row is None:
        session.add(ProjectClock(project_id=project_id, last_used_at=at, last_use=use))
    elif at > row.last_used_at:
        row.last_used_at, row.last_use = at, use


def _versions(session: Session, event: Any) -> list[DatasetVersion]:
    """The live versions an event used: a file's versions, a released version, a dataset's versions."""
    kind, _, ref = (event.target or "").partition(":")
    live = DatasetVersion.state.in_(LIVE)
    if kind == "file":
        return list(session.scalars(
            select(DatasetVersion).join(DatasetFile, DatasetFile.version_id == DatasetVersion.id)
            .where(DatasetFile.file_id == ref, live)))
    if kind == "application":
        ref = session.scalar(select(Application.dataset_id).where(Application.id == ref)) or ""
        kind = "dataset"
    if kind == "dataset":
        stmt = select(DatasetVersion).where(DatasetVersion.dataset_id == ref, live)
        number = (event.details or {}).get("version") if event.action == "archive.dataset.released" else None
        if number is not None:
            stmt = stmt.where(DatasetVersion.number == int(number))
        else:  # an application or a publication is about the dataset: every released version counts
            stmt = stmt.where(DatasetVersion.state != "draft")
        return list(session.scalars(stmt))
    return []


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
    touched: dict[str, int] = defaultdict(int)
    for event in events:
        use = USE_EVENTS[event.action]
        if event.action == "archive.download.started" and (event.details or {}).get("mode") == "plaintext":
            use = "in-platform read"
        for v in _versions(session, event):
            _touch(session, settings, v, event.at, use)
            touched["versions"] += 1
        if event.project_id is not None:
            _touch_project(session, event.project_id, event.at, use)
            touched["projects"] += 1
    cursor.audit_seq = upto
    return {"events": len(events), "read_to": upto, **touched}


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
