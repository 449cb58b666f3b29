"""GPU booking: budgets (operators), bookings and drop-ins (members), cancel, the calendar and the
reconciliation with the scheduler. Every function takes a session and plain arguments (``now`` included:
the rules never read the clock), checks rights itself and writes audit events in the caller's transaction.

Double booking is impossible by construction: a booking inserts one `GpuSlot` per GPU and hour into a table
with a unique (machine, gpu, hour) constraint in its own transaction; of two people racing for the same
GPUs the second insert fails and that booking is refused (`Conflict`), whatever either of them saw before.
"""

from __future__ import annotations

import bisect
import datetime as dt
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..config import ComputeSettings
from ..db import utcnow
from ..errors import Conflict, Invalid, NotFound
from ..identity.models import User
from ..identity.principal import Principal
from ..jobs import service as jobs
from ..notify import service as notify
from ..projects import service as projects
from ..projects.models import Membership, Project
from . import accounts, rules
from .models import (
    ACTIVE,
    BOOKING,
    CANCELLED,
    DROPIN,
    FAILED,
    NOT_CONFIGURED,
    PENDING,
    REMOVED,
    RESERVED,
    Booking,
    ComputeBudget,
    GpuSlot,
)
from .scheduler import NoScheduler, Reservation, Scheduler, SchedulerError, SlurmMachine, SlurmScheduler

SYNC_JOB = "compute.sync"


# -- settings -----------------------------------------------------------------------------------
def tz(settings: ComputeSettings) -> ZoneInfo:
    return ZoneInfo(settings.timezone)


def scheduler_for(settings: ComputeSettings) -> Scheduler:
    s = settings.slurm
    if not s.enabled:
        return NoScheduler()
    machines = {name: SlurmMachine(name=name, nodes=m.slurm_nodes or name, license=m.slurm_license)
                for name, m in settings.machines.items()}
    return SlurmScheduler(machines, scontrol=s.scontrol, slurm_conf=s.slurm_conf, timeout=s.timeout_seconds)


def _machine(settings: ComputeSettings, name: str) -> int:
    m = settings.machines.get(name)
    if m is None:
        raise Invalid(f"no machine {name!r} on this hub" + (f": one of {', '.join(sorted(settings.machines))}"
                                                               if settings.machines else " (none configured)"))
    return m.gpus


# -- budgets ------------------------------------------------------------------------------------
def require_operator(principal: Principal) -> None:
    """Operators are the hub's admins (admin scope): to anyone else budgets and the drift check do not exist."""
    if not (principal.user.is_admin and principal.can("admin")):
        raise NotFound("not found")


def set_budget(session: Session, principal: Principal, slug: str, *, klass: str, gpu_weeks: float | None = None,
               period_start: dt.date, months: int = 12) -> ComputeBudget:
    """An operator sets a project's class and budget per period (audited)."""
    require_operator(principal)
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NotFound("not found")
    try:
        amount = rules.class_budget(klass, gpu_weeks)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if not 1 <= months <= 60:
        raise Invalid("a budget period is 1 to 60 months")
    end_month = period_start.month - 1 + months
    period_end = dt.date(period_start.year + end_month // 12, end_month % 12 + 1, 1)
    budget = session.get(ComputeBudget, project.id)
    before = {"class": budget.klass, "gpu_weeks": budget.gpu_weeks} if budget else None
    if budget is None:
        budget = ComputeBudget(project_id=project.id, klass=klass, gpu_weeks=amount,
                               period_start=period_start.replace(day=1), period_end=period_end)
        session.add(budget)
    else:
        budget.klass, budget.gpu_weeks = klass, amount
        budget.period_start, budget.period_end = period_start.replace(day=1), period_end
        budget.updated_at = utcnow()
    audit.record(session, principal.actor, "compute.budget.set", project_id=project.id, target=f"project:{slug}",
                 details={"class": klass, "gpu_weeks": amount, "period_start": str(budget.period_start),
                          "period_end": str(period_end), "before": before})
    return budget


@dataclass
class BudgetOut:
    klass: str | None
    period_start: dt.date | None
    period_end: dt.date | None
    view: rules.BudgetView


def budget(session: Session, project_id: uuid.UUID, now: dt.datetime) -> BudgetOut:
    """Used = GPU-weeks of the project's bookings from now on (past parts and drop-ins never count)."""
    row = session.get(ComputeBudget, project_id)
    used = past = 0.0
    for b in session.scalars(select(Booking).where(Booking.project_id == project_id, Booking.state == ACTIVE,
                                                   Booking.kind == BOOKING)):
        used += rules.gpu_weeks(b.gpus, b.start_at, b.end_at, since=now)
        if row is not None:
            since = dt.datetime.combine(row.period_start, dt.time(), dt.UTC)
            past += rules.gpu_weeks(b.gpus, b.start_at, b.end_at, since=since, until=now)
    view = rules.BudgetView(budget=row.gpu_weeks if row else 0.0, used=round(used, 4), past=round(past, 4))
    return BudgetOut(row.klass if row else None, row.period_start if row else None,
                     row.period_end if row else None, view)


# -- free capacity ------------------------------------------------------------------------------
def _taken(session: Session, machine: str, start: dt.datetime, end: dt.datetime) -> dict[int, list[int]]:
    """gpu → sorted hours already held in [start, end)."""
    hours = rules.hour_units(start, end)
    taken: dict[int, list[int]] = defaultdict(list)
    for gpu, hour in session.execute(select(GpuSlot.gpu, GpuSlot.hour).where(
            GpuSlot.machine == machine, GpuSlot.hour >= hours.start, GpuSlot.hour < hours.stop)):
        taken[gpu].append(hour)
    for held in taken.values():
        held.sort()
    return taken


def _free_gpus(taken: dict[int, list[int]], total: int, start: dt.datetime, end: dt.datetime) -> list[int]:
    hours = rules.hour_units(start, end)
    free = []
    for gpu in range(total):
        held = taken.get(gpu, [])
        i = bisect.bisect_left(held, hours.start)
        if i == len(held) or held[i] >= hours.stop:
            free.append(gpu)
    return free


@dataclass
class Proposal:
    machine: str
    gpus: int
    start: dt.datetime
    end: dt.datetime
    gpu_indices: list[int]
    gpu_weeks: float
    over_budget: bool = False
    budget: rules.BudgetView | None = None


def propose(session: Session, settings: ComputeSettings, project_id: uuid.UUID, *, machine: str, gpus: int,
            weeks: int, now: dt.datetime) -> Proposal:
    """The earliest slot with ``gpus`` free GPUs on ``machine`` for ``weeks`` weeks (ending Monday 09:00)."""
    total = _machine(settings, machine)
    if not 1 <= gpus <= total:
        raise Invalid(f"{machine} has {total} GPUs: book 1 to {total}")
    if not 1 <= weeks <= settings.max_weeks:
        raise Invalid(f"a booking lasts 1 to {settings.max_weeks} weeks")
    zone = tz(settings)
    first = rules.earliest_start(now, zone)
    horizon = first + dt.timedelta(weeks=settings.horizon_weeks + weeks + 1)
    taken = _taken(session, machine, first, horizon)
    view = budget(session, project_id, now).view
    for start in rules.candidate_starts(now, zone, settings.horizon_weeks):
        end = rules.monday_end(start, weeks, zone)
        free = _free_gpus(taken, total, start, end)
        if len(free) >= gpus:
            amount = rules.gpu_weeks(gpus, start, end, since=now)
            return Proposal(machine, gpus, start, end, free[:gpus], round(amount, 4),
                            rules.over_budget(view, amount), view)
    raise Conflict(f"no {gpus} GPUs free on {machine} for {weeks} weeks within {settings.horizon_weeks} weeks")


# -- booking ------------------------------------------------------------------------------------
def _hold(session: Session, booking: Booking, gpu_indices: list[int]) -> None:
    """Insert the slot rows; a unique violation means someone else got these GPUs first."""
    hours = rules.hour_units(booking.start_at, booking.end_at)
    rows = [{"machine": booking.machine, "gpu": g, "hour": h, "booking_id": booking.id}
            for g in gpu_indices for h in hours]
    try:
        with session.begin_nested():
            session.execute(insert(GpuSlot), rows)
    except IntegrityError:
        raise Conflict("those GPUs were just booked by someone else: ask for the earliest slot again") from None


def _pis(session: Session, project_id: uuid.UUID) -> list[uuid.UUID]:
    return list(session.scalars(select(Membership.user_id).where(Membership.project_id == project_id,
                                                                 Membership.role == "pi")))


def _create(session: Session, settings: ComputeSettings, principal: Principal, access: projects.ProjectAccess,
            p: Proposal, *, kind: str, note: str, counts: bool) -> Booking:
    over = counts and p.over_budget
    if over and settings.over_budget == "refuse":
        assert p.budget is not None
        raise Conflict(f"over budget: {p.gpu_weeks:g} GPU-weeks asked, {max(p.budget.remaining, 0):g} of "
                       f"{p.budget.budget:g} left; book fewer GPUs or weeks, or ask an operator")
    booking = Booking(project_id=access.project.id, machine=p.machine, gpus=p.gpus,
                      gpu_indices=",".join(map(str, p.gpu_indices)), kind=kind, start_at=p.start, end_at=p.end,
                      booked_by=principal.user.id, over_budget=over, note=note[:2000],
                      reservation_state=PENDING if settings.slurm.enabled else NOT_CONFIGURED)
    session.add(booking)
    session.flush()
    _hold(session, booking, p.gpu_indices)
    cluster = accounts.of_project(session, access.project.id) if settings.slurm.enabled else None
    audit.record(session, principal.actor, f"compute.{kind}.created", project_id=access.project.id,
                 target=f"booking:{booking.id}",
                 details={"machine": p.machine, "gpus": p.gpu_indices, "start": p.start.isoformat(),
                          "end": p.end.isoformat(), "gpu_weeks": p.gpu_weeks, "over_budget": over,
                          **(cluster.audit() if cluster else {})})
    if over:
        assert p.budget is not None
        for pi in _pis(session, access.project.id):
            notify.notify_user(session, pi, "compute_over_budget", {
                "project": access.project.slug, "booking_id": booking.id, "machine": p.machine, "gpus": p.gpus,
                "start": p.start.isoformat(), "end": p.end.isoformat(), "gpu_weeks": p.gpu_weeks,
                "used": round(p.budget.used + p.gpu_weeks, 2), "budget": p.budget.budget,
                "booked_by": principal.user.display_name})
    if settings.slurm.enabled:
        jobs.enqueue(session, SYNC_JOB, {"booking_id": booking.id}, max_attempts=5)
    return booking


def book(session: Session, settings: ComputeSettings, principal: Principal, access: projects.ProjectAccess, *,
         machine: str, gpus: int, weeks: int, now: dt.datetime, note: str = "") -> Booking:
    """Book the earliest slot (any member). Over budget: refused, or allowed red with the PIs told."""
    p = propose(session, settings, access.project.id, machine=machine, gpus=gpus, weeks=weeks, now=now)
    return _create(session, settings, principal, access, p, kind=BOOKING, note=note, counts=True)


def dropin(session: Session, settings: ComputeSettings, principal: Principal, access: projects.ProjectAccess, *,
           machine: str, gpus: int, now: dt.datetime, note: str = "") -> Booking:
    """Free capacity from now until 09:00 tomorrow; does not count against the budget."""
    total = _machine(settings, machine)
    if not 1 <= gpus <= total:
        raise Invalid(f"{machine} has {total} GPUs: drop in on 1 to {total}")
    start, end = rules.dropin_window(now, tz(settings))
    free = _free_gpus(_taken(session, machine, start, end), total, start, end)
    if len(free) < gpus:
        raise Conflict(f"only {len(free)} GPUs of {machine} are free until {end.astimezone(tz(settings)):%a %H:%M}")
    p = Proposal(machine, gpus, start, end, free[:gpus], round(rules.gpu_weeks(gpus, start, end), 4))
    return _create(session, settings, principal, access, p, kind=DROPIN, note=note, counts=False)


def get_booking(session: Session, access: projects.ProjectAccess, booking_id: int) -> Booking:
    b = session.get(Booking, booking_id)
    if b is None or b.project_id != access.project.id:
        raise NotFound("not found")
    return b


def cancel(session: Session, settings: ComputeSettings, principal: Principal, access: projects.ProjectAccess,
           booking_id: int, *, now: dt.datetime) -> Booking:
    """Free the GPUs (the booker or the PI). Not started: cancelled. Started: cut short to now."""
    b = get_booking(session, access, booking_id)
    if principal.user.id != b.booked_by and access.membership.role != "pi":
        raise NotFound("not found")  # others' bookings are not theirs to cancel
    if b.state != ACTIVE or b.end_at <= now:
        raise Invalid(f"booking {b.id} has already ended")
    if b.start_at >= now:
        b.state = CANCELLED
        cut = None
    else:
        b.end_at = cut = now
    first_free = rules.hour_units(now, now + rules.HOUR).start + (0 if b.start_at >= now else 1)
    session.execute(delete(GpuSlot).where(GpuSlot.booking_id == b.id, GpuSlot.hour >= first_free))
    b.updated_at = now
    if b.reservation_state != NOT_CONFIGURED:
        b.reservation_state = PENDING
        jobs.enqueue(session, SYNC_JOB, {"booking_id": b.id}, max_attempts=5)
    audit.record(session, principal.actor, "compute.booking.cancelled", project_id=access.project.id,
                 target=f"booking:{b.id}", details={"cut_to": cut.isoformat() if cut else None})
    return b


def list_bookings(session: Session, access: projects.ProjectAccess, *, now: dt.datetime,
                  include_past: bool = False) -> list[Booking]:
    stmt = select(Booking).where(Booking.project_id == access.project.id)
    if not include_past:
        stmt = stmt.where(Booking.state == ACTIVE, Booking.end_at > now)
    return list(session.scalars(stmt.order_by(Booking.start_at, Booking.id)))


def gpu_weeks_booked(session: Session, project_id: uuid.UUID, start: dt.datetime, end: dt.datetime) -> float:
    """GPU-weeks held by the project in [start, end): bookings and drop-ins, a cancelled started booking up to
    its cancel time, a booking cancelled before it started not at all (for metering)."""
    total = 0.0
    for b in session.scalars(select(Booking).where(Booking.project_id == project_id, Booking.state == ACTIVE,
                                                   Booking.start_at < end, Booking.end_at > start)):
        total += rules.gpu_weeks(b.gpus, b.start_at, b.end_at, since=start, until=end)
    return round(total, 6)


# -- the calendar -------------------------------------------------------------------------------
@dataclass
class Cell:
    booking_id: int | None = None
    label: str = ""  # own project's: who; others': "booked"
    over_budget: bool = False
    kind: str = ""


@dataclass
class Grid:
    machine: str
    gpus: int
    days: list[dt.date]
    rows: list[list[Cell]] = field(default_factory=list)  # rows[gpu][day]
    free: list[int] = field(default_factory=list)  # free GPUs per day (whole day)


def calendar(session: Session, settings: ComputeSettings, access: projects.ProjectAccess | None, *,
             week_of: dt.date) -> list[Grid]:
    """One week (Monday to Sunday, local days) per machine: which GPU is held by whom each day. Other
    projects' bookings show as "booked" (capacity, not names) unless ``access`` is None (operators)."""
    zone = tz(settings)
    monday = week_of - dt.timedelta(days=week_of.weekday())
    days = [monday + dt.timedelta(days=i) for i in range(7)]
    start = dt.datetime.combine(monday, dt.time(), zone).astimezone(dt.UTC)
    end = dt.datetime.combine(monday + dt.timedelta(days=7), dt.time(), zone).astimezone(dt.UTC)
    grids = []
    for name, m in sorted(settings.machines.items()):
        bookings = list(session.scalars(select(Booking).where(
            Booking.machine == name, Booking.state == ACTIVE, Booking.start_at < end, Booking.end_at > start)))
        people = projects.users_of(session, {b.booked_by for b in bookings})
        slugs = {pid: slug for pid, slug in session.execute(select(Project.id, Project.slug).where(
            Project.id.in_({b.project_id for b in bookings})))} if access is None else {}
        grid = Grid(name, m.gpus, days, [[Cell() for _ in days] for _ in range(m.gpus)])
        for b in bookings:
            mine = access is not None and b.project_id == access.project.id
            who = people[b.booked_by].display_name if b.booked_by in people else "?"
            label = who if mine else (f"{slugs.get(b.project_id, '?')}: {who}" if access is None else "booked")
            for i, day in enumerate(days):
                d0 = dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)
                d1 = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone).astimezone(dt.UTC)
                if b.start_at < d1 and b.end_at > d0:
                    for g in (int(x) for x in b.gpu_indices.split(",") if x):
                        if g < m.gpus:
                            grid.rows[g][i] = Cell(b.id if (mine or access is None) else None, label,
                                                   b.over_budget and (mine or access is None), b.kind)
        grid.free = [sum(1 for g in range(m.gpus) if grid.rows[g][i].label == "") for i in range(7)]
        grids.append(grid)
    return grids


# -- the scheduler ------------------------------------------------------------------------------
def members_changed(session: Session, project_id: uuid.UUID, what: str) -> None:
    """``PROJECT_CHANGED`` listener: a member who left (or lost the project) leaves its cluster reservations now,
    through each current booking's sync job, not up to ten minutes later at the drift check."""
    if what not in ("members", "project"):
        return
    for b in session.scalars(select(Booking).where(
            Booking.project_id == project_id, Booking.state == ACTIVE, Booking.end_at > utcnow(),
            Booking.reservation_state != NOT_CONFIGURED)):
        b.reservation_state = PENDING
        jobs.enqueue(session, SYNC_JOB, {"booking_id": b.id}, max_attempts=5)


def withdraw_reservations(session: Session, actor: audit.Actor, user: User, reason: str) -> dict[str, list[str]]:
    """``identity.service.CREDENTIAL_REVOKERS`` entry: a deactivated account leaves every reservation of its
    projects at once (a password change or MFA reset keeps the account active, and its reservations)."""
    if not user.is_active:
        resync_user(session, user.id)
    return {}


def resync_user(session: Session, user_id: uuid.UUID) -> None:
    """The user's account was deactivated or their cluster account changed: every current reservation of their
    projects is synced now (with the accounts as they are then)."""
    for project_id in list(session.scalars(select(Membership.project_id).where(Membership.user_id == user_id))):
        members_changed(session, project_id, "members")


def cluster_users(session: Session, bookings: list[Booking], now: dt.datetime) -> dict[int, accounts.ClusterUsers]:
    """Booking id → who of its project its reservation names and leaves out, for the current bookings that have
    one (or will have: pending); as the next sync will see it."""
    current = [b for b in bookings if b.reservation_state != NOT_CONFIGURED and b.state == ACTIVE and b.end_at > now]
    of = {pid: accounts.of_project(session, pid) for pid in {b.project_id for b in current}}
    return {b.id: of[b.project_id] for b in current}


def _wanted(b: Booking, cluster: accounts.ClusterUsers) -> Reservation:
    return Reservation(name=b.reservation_name, start=b.start_at, end=b.end_at, users=cluster.accounts,
                       gpus=b.gpus, machine=b.machine)


NOBODY = ("no member of the project has a cluster account, so nobody could use the reservation: an operator sets "
          "them (strongroom admin cluster-account)")
SYNC_ACTOR = audit.Actor.system("compute.sync")


def _audit_users(session: Session, b: Booking, what: str, cluster: accounts.ClusterUsers) -> None:
    """Which cluster accounts a reservation names, and who of the project it leaves out (and why)."""
    audit.record(session, SYNC_ACTOR, f"compute.reservation.{what}", project_id=b.project_id,
                 target=f"booking:{b.id}", details={"reservation": b.reservation_name, **cluster.audit()})


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "deleted": self.deleted, "failed": self.failed}


def sync(session: Session, scheduler: Scheduler, *, now: dt.datetime, booking_id: int | None = None,
         repair: bool = True) -> SyncReport:
    """Reconcile the scheduler with the calendar: every current booking has its reservation with the same
    times, GPUs and users; every ``sr-*`` reservation without one is deleted. ``repair=False`` only reports.
    With ``booking_id`` only that booking's reservation is looked at (after a change)."""
    report = SyncReport()
    if not scheduler.configured:
        return report
    try:
        actual = {r.name: r for r in scheduler.list()}
    except SchedulerError as exc:
        report.failed["*"] = str(exc)
        return report
    stmt = select(Booking).where(Booking.reservation_state != NOT_CONFIGURED).order_by(Booking.id)
    if booking_id is not None:
        stmt = stmt.where(Booking.id == booking_id)
    else:
        stmt = stmt.where(Booking.reservation_state != REMOVED)
    seen: set[str] = set()
    for b in session.scalars(stmt):
        name, current = b.reservation_name, b.state == ACTIVE and b.end_at > now
        seen.add(name)
        have = actual.get(name)
        try:
            if current:
                cluster = accounts.of_project(session, b.project_id)
                want = _wanted(b, cluster)
                if not want.users:  # fail closed: a reservation nobody of the project may use is not kept
                    if have is not None:
                        report.deleted.append(name)
                        if repair:
                            scheduler.delete(name)
                    raise SchedulerError(NOBODY)
                if have is None:
                    if want.start < now:  # Slurm refuses a start long past: a late reservation starts now
                        want = replace(want, start=(now + dt.timedelta(minutes=1)).replace(second=0, microsecond=0))
                    report.created.append(name)
                    if repair:
                        scheduler.create(want)
                        _audit_users(session, b, "created", cluster)
                else:
                    if have.start <= now or want.start <= now:  # a started one's start cannot move: keep Slurm's
                        want = replace(want, start=have.start)
                    if (have.start, have.end, have.gpus, set(have.users)) != (want.start, want.end, want.gpus,
                                                                              set(want.users)):
                        report.updated.append(name)
                        if repair:
                            scheduler.update(want)
                            _audit_users(session, b, "updated", cluster)
                if repair:
                    b.reservation_state, b.reservation_detail = RESERVED, ""
            else:
                if have is not None:
                    report.deleted.append(name)
                    if repair:
                        scheduler.delete(name)
                if repair:
                    b.reservation_state, b.reservation_detail = REMOVED, ""
        except SchedulerError as exc:
            report.failed[name] = str(exc)
            if repair:
                b.reservation_state, b.reservation_detail = FAILED, str(exc)[:2000]
    if booking_id is None:
        for name in sorted(set(actual) - seen):  # a reservation of ours the calendar does not know
            report.deleted.append(name)
            if repair:
                try:
                    scheduler.delete(name)
                except SchedulerError as exc:
                    report.failed[name] = str(exc)
    return report
