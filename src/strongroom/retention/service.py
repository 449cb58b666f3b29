"""Retention's state changes: a dataset's class, extensions, legal holds, the review notices, and deletion
requests with their two-person approval. Each function checks the caller's rights itself and audits in the
caller's transaction.

Who may do what: members of the dataset's owning project see its retention; its **owner** (a member with
``manage-settings``: the PI) sets the class, extends and requests a deletion; an **operator** (a platform
admin with the admin scope) does all of that for any dataset, sets and lifts legal holds and approves
deletions, never their own request. Everyone else gets 404.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive.authz import project_access
from ..archive.models import Dataset, DatasetVersion
from ..audit import service as audit
from ..audit.service import Actor
from ..config import RetentionSettings
from ..db import utcnow
from ..errors import Conflict, Forbidden, Invalid, MfaRequired, NotFound
from ..identity.principal import Principal
from ..identity.service import require_fresh_mfa
from ..jobs import service as jobs
from ..projects.models import Project
from ..projects.service import ProjectAccess, users_of
from . import clock as clocks
from .models import APPROVED, CERTIFIED, REQUESTED, DatasetClass, Deletion, VersionClock
from .rules import add_months, due_notice

DELETE_JOB = "retention.delete"
MAX_REASON = 2000


def is_operator(principal: Principal) -> bool:
    return principal.user.is_admin and principal.can("admin")


@dataclass
class Seen:
    """A dataset as the caller sees it for retention."""

    dataset: Dataset
    access: ProjectAccess | None
    operator: bool

    @property
    def owner(self) -> bool:
        return self.access is not None and "manage-settings" in self.access.rights

    def require_owner(self) -> None:
        if not (self.owner or self.operator):
            raise Forbidden("this needs the dataset's owner (the 'manage-settings' right) or an operator")

    def require_operator(self) -> None:
        if not self.operator:
            raise Forbidden("only an operator can do this")


def open_dataset(session: Session, principal: Principal, dataset_id: str) -> Seen:
    ds = session.get(Dataset, dataset_id)
    if ds is None:
        raise NotFound("no such dataset")
    operator = is_operator(principal)
    try:
        access: ProjectAccess | None = project_access(session, principal, ds.project_id, managing=True)
    except NotFound:
        access = None
    if access is None and not operator:
        raise NotFound("no such dataset")
    if not principal.has_mfa:
        raise MfaRequired("retention needs a login with multi-factor authentication")
    return Seen(ds, access, operator)


def _reason(reason: str) -> str:
    reason = " ".join((reason or "").split())
    if not 3 <= len(reason) <= MAX_REASON:
        raise Invalid(f"give a reason (3 to {MAX_REASON} characters)")
    return reason


def _version(session: Session, ds: Dataset, number: int) -> DatasetVersion:
    v = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id,
                                                    DatasetVersion.number == number))
    if v is None:
        raise NotFound(f"no version {number} of {ds.id}")
    return v


# -- reading ------------------------------------------------------------------------------------
@dataclass
class VersionStatus:
    version: DatasetVersion
    clock: VersionClock
    deletion: Deletion | None


def peek_clock(session: Session, settings: RetentionSettings, v: DatasetVersion) -> VersionClock:
    """The version's clock, or (before the first job run) the one it would start with, not saved."""
    found = session.get(VersionClock, v.id)
    if found is not None:
        return found
    start = v.released_at or v.created_at
    years = clocks.years_for(settings, clocks.class_of(session, settings, v.dataset_id))
    return VersionClock(version_id=v.id, dataset_id=v.dataset_id, last_used_at=start, last_use="release",
                        keep_until=clocks.keep_until(start, years, None), extension_reason="")


def status(session: Session, settings: RetentionSettings, seen: Seen) -> list[VersionStatus]:
    deletions = {d.version_id: d for d in session.scalars(select(Deletion).where(
        Deletion.dataset_id == seen.dataset.id))}
    return [VersionStatus(v, peek_clock(session, settings, v), deletions.get(v.id))
            for v in seen.dataset.versions if v.state != "draft"]


def get_deletion(session: Session, principal: Principal, deletion_id: uuid.UUID) -> tuple[Deletion, Seen]:
    d = session.get(Deletion, deletion_id)
    if d is None:
        raise NotFound("no such deletion")
    try:
        seen = open_dataset(session, principal, d.dataset_id)
    except NotFound:
        raise NotFound("no such deletion") from None
    return d, seen


@dataclass
class QueueRow:
    dataset: Dataset
    version: DatasetVersion
    clock: VersionClock
    deletion: Deletion | None


def queue(session: Session, settings: RetentionSettings, principal: Principal, now: dt.datetime | None = None
          ) -> tuple[list[QueueRow], list[QueueRow]]:
    """The operator's queue: versions due within ``queue_months`` (or past due), and every legal hold."""
    if not (is_operator(principal) and principal.has_mfa):
        raise NotFound("not found")
    now = now or utcnow()
    rows = session.execute(
        select(VersionClock, DatasetVersion, Dataset)
        .join(DatasetVersion, DatasetVersion.id == VersionClock.version_id)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(DatasetVersion.state.in_(clocks.LIVE))
        .where((VersionClock.keep_until <= add_months(now, settings.queue_months))
               | VersionClock.hold_reason.is_not(None))
        .order_by(VersionClock.keep_until)).all()
    deletions = {d.version_id: d for d in session.scalars(select(Deletion).where(
        Deletion.version_id.in_([c.version_id for c, _v, _d in rows])))} if rows else {}
    found = [QueueRow(ds, v, c, deletions.get(v.id)) for c, v, ds in rows]
    return [r for r in found if r.clock.hold_reason is None], [r for r in found if r.clock.hold_reason is not None]


def open_deletions(session: Session, principal: Principal) -> list[Deletion]:
    if not (is_operator(principal) and principal.has_mfa):
        raise NotFound("not found")
    return list(session.scalars(select(Deletion).where(Deletion.state != CERTIFIED).order_by(Deletion.created_at)))


# -- owner and operator actions -------------------------------------------------------------------
def set_class(session: Session, settings: RetentionSettings, principal: Principal, dataset_id: str,
              dataset_class: str) -> str:
    seen = open_dataset(session, principal, dataset_id)
    seen.require_owner()
    if dataset_class not in settings.years:
        raise Invalid(f"the retention class is one of: {', '.join(sorted(settings.years))}")
    row = session.get(DatasetClass, seen.dataset.id)
    before = row.dataset_class if row else settings.default_class
    if row is None:
        row = DatasetClass(dataset_id=seen.dataset.id, dataset_class=dataset_class, changed_at=utcnow(),
                           changed_by=principal.user.id)
        session.add(row)
    row.dataset_class, row.changed_at, row.changed_by = dataset_class, utcnow(), principal.user.id
    session.flush()
    for v in seen.dataset.versions:
        c = session.get(VersionClock, v.id)
        if c is not None:
            clocks.recompute(session, settings, c)
    audit.record(session, principal.actor, "retention.class.changed", project_id=seen.dataset.project_id,
                 target=f"dataset:{seen.dataset.id}", details={"from": before, "to": dataset_class,
                                                              "years": settings.years[dataset_class]})
    return dataset_class


def extend(session: Session, settings: RetentionSettings, principal: Principal, dataset_id: str, number: int,
           until: dt.date, reason: str) -> VersionClock:
    """Keep a version at least until ``until`` (later than its current date), with a reason."""
    seen = open_dataset(session, principal, dataset_id)
    seen.require_owner()
    reason = _reason(reason)
    v = _version(session, seen.dataset, number)
    if v.state not in clocks.LIVE:
        raise Conflict(f"version {number} is {v.state}")
    c = clocks.version_clock(session, settings, v)
    when = dt.datetime.combine(until, dt.time(), tzinfo=dt.UTC)
    if when <= c.keep_until:
        raise Invalid(f"an extension keeps the version longer: choose a date after {c.keep_until.date()}")
    if when > utcnow() + dt.timedelta(days=100 * 366):
        raise Invalid("an extension reaches at most 100 years ahead")
    before = c.keep_until
    c.extended_until, c.extension_reason = when, reason
    clocks.recompute(session, settings, c)
    audit.record(session, principal.actor, "retention.extended", project_id=seen.dataset.project_id,
                 target=f"dataset:{seen.dataset.id}",
                 details={"version": number, "from": before.isoformat(), "until": when.isoformat(), "reason": reason})
    return c


def set_hold(session: Session, settings: RetentionSettings, principal: Principal, dataset_id: str, number: int,
             reason: str, *, hold: bool) -> VersionClock:
    """An operator's legal hold (``hold``) or its lifting: nothing under hold can be deleted."""
    seen = open_dataset(session, principal, dataset_id)
    seen.require_operator()
    reason = _reason(reason)
    v = _version(session, seen.dataset, number)
    if v.state not in clocks.LIVE:
        raise Conflict(f"version {number} is {v.state}")
    c = clocks.version_clock(session, settings, v)
    if hold == (c.hold_reason is not None):
        raise Conflict(f"version {number} is {'already' if hold else 'not'} under a legal hold")
    dropped = None
    if hold:
        c.hold_reason, c.hold_at, c.hold_by = reason, utcnow(), principal.user.id
        pending = session.scalar(select(Deletion).where(Deletion.version_id == v.id, Deletion.state == REQUESTED))
        if pending is not None:  # a request not yet approved ends with the hold; approved work is under way
            dropped = str(pending.id)
            session.delete(pending)
    else:
        c.hold_reason, c.hold_at, c.hold_by = None, None, None
    audit.record(session, principal.actor, "retention.hold.set" if hold else "retention.hold.lifted",
                 project_id=seen.dataset.project_id, target=f"dataset:{seen.dataset.id}",
                 details={"version": number, "reason": reason, **({"dropped_request": dropped} if dropped else {})})
    return c


# -- notices ------------------------------------------------------------------------------------
def send_notices(session: Session, settings: RetentionSettings, now: dt.datetime | None = None) -> int:
    """Tell each due version's owner and PI, once per threshold (``notice_months``) of its keep-until date."""
    from ..notify.service import enqueue_email

    now = now or utcnow()
    if not settings.notice_months:
        return 0
    horizon = add_months(now, max(settings.notice_months))
    rows = session.execute(
        select(VersionClock, DatasetVersion, Dataset, Project)
        .join(DatasetVersion, DatasetVersion.id == VersionClock.version_id)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id).join(Project, Project.id == Dataset.project_id)
        .where(DatasetVersion.state.in_(clocks.LIVE), VersionClock.keep_until <= horizon,
               VersionClock.hold_reason.is_(None))).all()
    sent = 0
    for c, v, ds, project in rows:
        months = due_notice(c.keep_until, now, settings.notice_months, c.notified_months)
        if months is None:
            continue
        c.notified_months = months
        people = users_of(session, {project.pi_id, ds.created_by})
        for user in people.values():
            if user.email and user.is_active:
                enqueue_email(session, to=user.email, template="retention_due", context={
                    "name": user.display_name, "dataset": ds.title, "dataset_id": ds.id, "version": v.number,
                    "keep_until": c.keep_until.date().isoformat(), "last_used": c.last_used_at.date().isoformat(),
                    "last_use": c.last_use, "months": months})
        audit.record(session, Actor.system("retention"), "retention.notice", project_id=ds.project_id,
                     target=f"dataset:{ds.id}", details={"version": v.number, "months": months,
                                                         "keep_until": c.keep_until.isoformat(),
                                                         "to": sorted(str(u) for u in people)})
        sent += 1
    return sent


# -- deletion: two people ------------------------------------------------------------------------
def _deletable(session: Session, settings: RetentionSettings, v: DatasetVersion, now: dt.datetime) -> VersionClock:
    if v.state not in ("released", "deprecated"):
        raise Conflict(f"version {v.number} is {v.state}: only released versions are deleted by retention")
    c = clocks.version_clock(session, settings, v)
    if c.hold_reason is not None:
        raise Conflict(f"version {v.number} is under a legal hold: {c.hold_reason}")
    if c.keep_until > now:
        raise Conflict(f"version {v.number} is kept until {c.keep_until.date()} "
                       f"(last used {c.last_used_at.date()}: {c.last_use})")
    return c


def request_deletion(session: Session, settings: RetentionSettings, principal: Principal, dataset_id: str,
                     number: int, reason: str, *, fresh_minutes: int, now: dt.datetime | None = None) -> Deletion:
    now = now or utcnow()
    seen = open_dataset(session, principal, dataset_id)
    seen.require_owner()
    require_fresh_mfa(principal, fresh_minutes)
    reason = _reason(reason)
    v = _version(session, seen.dataset, number)
    if session.scalar(select(Deletion.id).where(Deletion.version_id == v.id)) is not None:
        raise Conflict(f"version {number} already has a deletion request")
    _deletable(session, settings, v, now)
    d = Deletion(version_id=v.id, dataset_id=seen.dataset.id, number=number, reason=reason,
                 requested_by=principal.user.id, manifest=[], kept=[], audit_seqs={})
    session.add(d)
    session.flush()
    event = audit.record(session, principal.actor, "retention.deletion.requested", project_id=seen.dataset.project_id,
                         target=f"dataset:{seen.dataset.id}",
                         details={"version": number, "deletion": str(d.id), "reason": reason})
    d.audit_seqs = {"requested": event.seq}
    return d


def approve_deletion(session: Session, settings: RetentionSettings, principal: Principal, deletion_id: uuid.UUID,
                     *, fresh_minutes: int, now: dt.datetime | None = None) -> Deletion:
    """The second person: an operator who is not the requester. The deletion job starts on commit."""
    now = now or utcnow()
    d, seen = get_deletion(session, principal, deletion_id)
    seen.require_operator()
    if d.requested_by == principal.user.id:
        raise Forbidden("a deletion needs a second person: whoever requested it cannot approve it")
    require_fresh_mfa(principal, fresh_minutes)
    if d.state != REQUESTED:
        raise Conflict(f"this deletion is already {d.state}")
    _deletable(session, settings, session.get_one(DatasetVersion, d.version_id), now)
    d.state, d.approved_by, d.approved_at = APPROVED, principal.user.id, now
    event = audit.record(session, principal.actor, "retention.deletion.approved", project_id=seen.dataset.project_id,
                         target=f"dataset:{seen.dataset.id}", details={"version": d.number, "deletion": str(d.id)})
    d.audit_seqs = {**d.audit_seqs, "approved": event.seq}
    jobs.enqueue(session, DELETE_JOB, {"deletion": str(d.id)}, dedup_key=f"retention.delete:{d.id}", max_attempts=20)
    return d
