"""The entitlement lifecycle job: reminders before an entitlement ends, and a notice once it has.

Access itself needs no job: every read check uses `Entitlement.active(now)`, so an entitlement
stops opening files the moment it ends. This job only tells people, exactly once each
(``reminded_at``, ``ended_notified_at`` are set in the transaction that queues the e-mail), and
records the expiry in the audit chain.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..audit.service import Actor
from ..db import utcnow
from ..jobs.context import JobContext
from ..jobs.registry import job
from ..notify import service as notify
from .models import Entitlement
from .titles import title_for

BATCH = 200
QUIET_AFTER = dt.timedelta(days=30)  # entitlements that ended longer ago are marked without an e-mail
ACTOR = Actor.system("entitlement-lifecycle")


def _lock(session: Session, stmt):
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=True)
    return stmt


def _renewed(session: Session, ent: Entitlement, after: dt.datetime) -> bool:
    """Does the user hold another live entitlement to the same dataset that lasts beyond ``after``?"""
    now = utcnow()
    return session.scalar(select(Entitlement.id).where(
        Entitlement.user_id == ent.user_id, Entitlement.dataset_id == ent.dataset_id,
        Entitlement.id != ent.id,
        Entitlement.revoked_at.is_(None), Entitlement.starts_at <= now, Entitlement.ends_at > after,
        (Entitlement.version.is_(None)) | (Entitlement.version == ent.version)).limit(1)) is not None


def _context(session: Session, ent: Entitlement, now: dt.datetime) -> dict[str, Any]:
    return {"dataset": title_for(session, ent.user_id, ent.dataset_id), "dataset_id": ent.dataset_id,
            "application_id": ent.application_id or "", "ends": ent.ends_at.date().isoformat(),
            "days_left": max((ent.ends_at - now).days, 0)}


def send_reminders(session: Session, now: dt.datetime, days: int) -> int:
    due = list(session.scalars(_lock(session, select(Entitlement).where(
        Entitlement.revoked_at.is_(None), Entitlement.reminded_at.is_(None),
        Entitlement.ended_notified_at.is_(None), Entitlement.starts_at <= now, Entitlement.ends_at > now,
        Entitlement.ends_at <= now + dt.timedelta(days=days)).order_by(Entitlement.ends_at).limit(BATCH))))
    for ent in due:
        ent.reminded_at = now
        if not _renewed(session, ent, ent.ends_at):
            notify.notify_user(session, ent.user_id, "entitlement_expiring", _context(session, ent, now))
    return len(due)


def close_expired(session: Session, now: dt.datetime) -> int:
    ended = list(session.scalars(_lock(session, select(Entitlement).where(
        Entitlement.revoked_at.is_(None), Entitlement.ended_notified_at.is_(None),
        Entitlement.ends_at <= now).order_by(Entitlement.ends_at).limit(BATCH))))
    for ent in ended:
        ent.ended_notified_at = now
        renewed = _renewed(session, ent, now)
        if not renewed and now - ent.ends_at < QUIET_AFTER:
            notify.notify_user(session, ent.user_id, "entitlement_ended", _context(session, ent, now))
        audit.record(session, ACTOR, "access.entitlement.ended", subject_user_id=ent.user_id,
                     target=f"dataset:{ent.dataset_id}",
                     details={"entitlement": str(ent.id), "application": ent.application_id,
                              "ends_at": ent.ends_at.isoformat(), "renewed": renewed})
    return len(ended)


@job("access.entitlements", every_seconds=3600, max_attempts=3)
def entitlement_lifecycle(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Hourly: remind ``access.entitlement_reminder_days`` before the end (once), and notify and
    audit each expiry (once). Batches of 200, one short transaction each."""
    days = int(payload.get("days", ctx.hub.settings.access.entitlement_reminder_days))
    reminded = ended = 0
    while True:
        with ctx.transaction() as session:
            n = send_reminders(session, utcnow(), days)
        reminded += n
        if n < BATCH:
            break
    while True:
        with ctx.transaction() as session:
            n = close_expired(session, utcnow())
        ended += n
        if n < BATCH:
            break
    return {"reminded": reminded, "ended": ended}
