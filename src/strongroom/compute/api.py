"""Compute API under /api/v1/compute/…: machines, a project's budget, bookings (the earliest slot, drop-ins,
cancel) and the week calendar. Project routes resolve the project through the caller's membership (404
outside it); budgets are set by operators."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from ..db import utcnow
from ..deps import Admin, Db, HubDep, ProjectsRead, ProjectsWrite
from ..errors import Invalid
from ..projects.service import open_project
from ..schemas import Body, Int32, Int64, IsoDate, Out
from . import service
from .models import Booking

router = APIRouter(prefix="/api/v1/compute", tags=["compute"])


class MachineOut(Out):
    name: str
    gpus: int
    description: str


class BudgetOut(Out):
    klass: str | None = Field(description="project | fellowship | network_partner | custom; null: none set")
    period_start: dt.date | None
    period_end: dt.date | None
    budget: float = Field(description="GPU-weeks per period")
    used: float = Field(description="GPU-weeks booked from now on (past parts never count)")
    remaining: float
    past: float = Field(description="GPU-weeks already used this period (shown, not counted)")
    over: bool


class BudgetIn(Body):
    klass: Literal["project", "fellowship", "network_partner", "custom"]
    gpu_weeks: float | None = Field(default=None, ge=0, le=100000, description="custom class only")
    period_start: IsoDate
    months: Int32 = Field(default=12, ge=1, le=60)


class BookingOut(Out):
    id: int
    machine: str
    gpus: int
    gpu_indices: str
    kind: str
    start_at: dt.datetime
    end_at: dt.datetime
    booked_by: uuid.UUID
    state: str
    over_budget: bool
    note: str
    reservation_name: str
    reservation_state: str
    reservation_detail: str
    created_at: dt.datetime
    cluster_users: int | None = Field(default=None, description="how many cluster accounts the reservation names "
                                      "(null: no reservation, or the booking has ended)")
    without_cluster_account: list[str] = Field(default_factory=list, description="members left out of the "
                                               "reservation: no usable cluster account (an operator sets it)")
    cluster_note: str = Field(default="", description='e.g. "2 members have no cluster account and cannot use '
                              'this reservation"')


class BookIn(Body):
    machine: str = Field(min_length=1, max_length=64)
    gpus: Int32 = Field(ge=1, le=1024)
    weeks: Int32 = Field(default=1, ge=1, le=104, description="ignored for a drop-in")
    kind: Literal["booking", "dropin"] = "booking"
    note: str = Field(default="", max_length=2000)


class ProposalOut(Out):
    machine: str
    gpus: int
    start: dt.datetime
    end: dt.datetime
    gpu_indices: list[int]
    gpu_weeks: float
    over_budget: bool


class CellOut(Out):
    booking_id: int | None
    label: str
    over_budget: bool
    kind: str


class GridOut(Out):
    machine: str
    gpus: int
    days: list[dt.date]
    rows: list[list[CellOut]]
    free: list[int]


def _budget_out(b: service.BudgetOut) -> BudgetOut:
    v = b.view
    return BudgetOut(klass=b.klass, period_start=b.period_start, period_end=b.period_end, budget=v.budget,
                     used=v.used, remaining=round(v.remaining, 4), past=v.past, over=v.over)


def _outs(db: Db, bookings: list[Booking]) -> list[BookingOut]:
    """The bookings, each current one with whom its reservation names and leaves out."""
    cluster = service.cluster_users(db, bookings, utcnow())
    outs = []
    for b in bookings:
        out = BookingOut.model_validate(b)
        if (c := cluster.get(b.id)) is not None:
            out.cluster_users, out.cluster_note = len(c.accounts), c.note
            out.without_cluster_account = [m.name for m in c.left_out]
        outs.append(out)
    return outs


@router.get("/machines", response_model=list[MachineOut], summary="The hub's bookable machines")
def machines(hub: HubDep, principal: ProjectsRead) -> list[MachineOut]:
    return [MachineOut(name=n, gpus=m.gpus, description=m.description)
            for n, m in sorted(hub.settings.compute.machines.items())]


@router.get("/projects/{slug}/budget", response_model=BudgetOut, summary="The project's GPU budget and use")
def get_budget(db: Db, principal: ProjectsRead, slug: str) -> BudgetOut:
    access = open_project(db, principal, slug, managing=True)
    return _budget_out(service.budget(db, access.project.id, utcnow()))


@router.put("/projects/{slug}/budget", response_model=BudgetOut,
            summary="Set a project's budget class and GPU-weeks per period (operators; audited)")
def put_budget(db: Db, principal: Admin, slug: str, body: BudgetIn) -> BudgetOut:
    b = service.set_budget(db, principal, slug, klass=body.klass, gpu_weeks=body.gpu_weeks,
                           period_start=body.period_start, months=body.months)
    return _budget_out(service.budget(db, b.project_id, utcnow()))


@router.get("/projects/{slug}/bookings", response_model=list[BookingOut], summary="The project's bookings")
def list_bookings(db: Db, principal: ProjectsRead, slug: str, past: bool = False) -> list[BookingOut]:
    access = open_project(db, principal, slug, managing=True)
    return _outs(db, service.list_bookings(db, access, now=utcnow(), include_past=past))


@router.get("/projects/{slug}/proposal", response_model=ProposalOut,
            summary="The earliest slot for N GPUs for K weeks (nothing is booked)")
def proposal(db: Db, hub: HubDep, principal: ProjectsRead, slug: str, machine: str, gpus: Int32,
             weeks: Int32 = 1) -> ProposalOut:
    access = open_project(db, principal, slug)
    p = service.propose(db, hub.settings.compute, access.project.id, machine=machine, gpus=gpus, weeks=weeks,
                        now=utcnow())
    return ProposalOut(machine=p.machine, gpus=p.gpus, start=p.start, end=p.end, gpu_indices=p.gpu_indices,
                       gpu_weeks=p.gpu_weeks, over_budget=p.over_budget)


@router.post("/projects/{slug}/bookings", response_model=BookingOut, status_code=201,
             summary="Book the earliest slot, or drop in on free capacity until 09:00 tomorrow")
def create_booking(db: Db, hub: HubDep, principal: ProjectsWrite, slug: str, body: BookIn) -> BookingOut:
    access = open_project(db, principal, slug)
    settings = hub.settings.compute
    if body.kind == "dropin":
        b = service.dropin(db, settings, principal, access, machine=body.machine, gpus=body.gpus, now=utcnow(),
                           note=body.note)
    else:
        b = service.book(db, settings, principal, access, machine=body.machine, gpus=body.gpus, weeks=body.weeks,
                         now=utcnow(), note=body.note)
    return _outs(db, [b])[0]


@router.delete("/projects/{slug}/bookings/{booking_id}", response_model=BookingOut,
               summary="Cancel a booking (a started one is cut short to now)")
def cancel_booking(db: Db, hub: HubDep, principal: ProjectsWrite, slug: str, booking_id: Int64) -> BookingOut:
    access = open_project(db, principal, slug, managing=True)
    b = service.cancel(db, hub.settings.compute, principal, access, booking_id, now=utcnow())
    return _outs(db, [b])[0]


@router.get("/projects/{slug}/calendar", response_model=list[GridOut],
            summary="One week per machine: who holds which GPU each day (other projects: 'booked')")
def calendar(db: Db, hub: HubDep, principal: ProjectsRead, slug: str,
             week: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$",
                                               description="any day of the week (YYYY-MM-DD)")] = None
             ) -> list[GridOut]:
    access = open_project(db, principal, slug, managing=True)
    try:
        day = dt.date.fromisoformat(week) if week else utcnow().date()
    except ValueError:
        raise Invalid("week must be a date (YYYY-MM-DD)") from None
    grids = service.calendar(db, hub.settings.compute, access, week_of=day)
    return [GridOut.model_validate(g) for g in grids]


@router.post("/drift", summary="Reconcile the calendar with the scheduler now (operators)")
def drift(db: Db, hub: HubDep, principal: Admin, repair: bool = True) -> dict[str, object]:
    service.require_operator(principal)
    report = service.sync(db, service.scheduler_for(hub.settings.compute), now=utcnow(), repair=repair)
    return {"configured": hub.settings.compute.slurm.enabled, **report.as_dict()}
