"""Compute pages: a project's GPU calendar (week grid per machine, budget, book / drop in / cancel) and the
operators' page (every project's budget, the calendar with names, set a budget). Forms write through
``service`` in the request's transaction and answer with a flash message."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select

from ..db import utcnow
from ..deps import CsrfChecked, Db, HubDep, PostedForm, WebPrincipal
from ..errors import Invalid
from ..projects import service as projects
from ..projects.models import Project
from ..schemas import Int64, whole_number
from ..web.templating import redirect_with, templates
from . import accounts, service
from .models import ComputeBudget

router = APIRouter()


def _week(value: str | None, today: dt.date) -> dt.date:
    if not value:
        return today
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise Invalid("week must be a date (YYYY-MM-DD)") from None


def _int(form: Any, name: str, default: int | None = None) -> int:
    raw = str(form.get(name, "") or "").strip()
    if not raw and default is not None:
        return default
    return whole_number(raw, name)


def _calendar_context(db: Db, hub: HubDep, access: projects.ProjectAccess | None, week: str | None) -> dict[str, Any]:
    settings = hub.settings.compute
    now = utcnow()
    week_of = _week(week, now.astimezone(service.tz(settings)).date())
    monday = week_of - dt.timedelta(days=week_of.weekday())
    return {"grids": service.calendar(db, settings, access, week_of=week_of), "monday": monday,
            "prev_week": monday - dt.timedelta(days=7), "next_week": monday + dt.timedelta(days=7),
            "machines": sorted(settings.machines.items()), "tz": settings.timezone, "now": now,
            "over_budget_policy": settings.over_budget, "slurm": settings.slurm.enabled}


@router.get("/projects/{slug}/compute")
def compute_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str,
                 week: str | None = None) -> Response:
    access = projects.open_project(db, principal, slug, managing=True)
    ctx = _calendar_context(db, hub, access, week)
    bookings = service.list_bookings(db, access, now=ctx["now"])
    return templates.TemplateResponse(request, "compute/calendar.html", {
        **ctx, "access": access, "project": access.project, "budget": service.budget(db, access.project.id, ctx["now"]),
        "bookings": bookings, "users": projects.users_of(db, {b.booked_by for b in bookings}),
        "cluster": service.cluster_users(db, bookings, ctx["now"]),
        "left_out": accounts.of_project(db, access.project.id).left_out if ctx["slurm"] else (),
        "is_pi": access.membership.role == "pi", "me": principal.user.id})


@router.post("/projects/{slug}/compute/bookings", dependencies=[CsrfChecked])
def create_booking(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                   slug: str) -> Response:
    form = posted.form
    access = projects.open_project(db, principal, slug)
    settings = hub.settings.compute
    machine, gpus, note = str(form.get("machine", "")), _int(form, "gpus"), str(form.get("note", ""))
    zone = service.tz(settings)
    if form.get("kind") == "dropin":
        b = service.dropin(db, settings, principal, access, machine=machine, gpus=gpus, now=utcnow(), note=note)
        said = (f"Drop-in {b.id}: {b.gpus} GPUs on {b.machine} until "
                f"{b.end_at.astimezone(zone):%a %d %b %H:%M}.")
    else:
        b = service.book(db, settings, principal, access, machine=machine, gpus=gpus, weeks=_int(form, "weeks", 1),
                         now=utcnow(), note=note)
        said = (f"Booking {b.id}: {b.gpus} GPUs on {b.machine} from {b.start_at.astimezone(zone):%a %d %b %H:%M} "
                f"to {b.end_at.astimezone(zone):%a %d %b %H:%M}.")
        if b.over_budget:
            said += " It is over the project's budget: the PI has been told."
    if settings.slurm.enabled and (note := accounts.of_project(db, access.project.id).note):
        said += f" {note}."
    week = b.start_at.astimezone(zone).date().isoformat()
    return redirect_with(request, f"/projects/{slug}/compute?week={week}", said)


@router.post("/projects/{slug}/compute/bookings/{booking_id}/cancel", dependencies=[CsrfChecked])
def cancel_booking(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str,
                   booking_id: Int64) -> Response:
    access = projects.open_project(db, principal, slug, managing=True)
    b = service.cancel(db, hub.settings.compute, principal, access, booking_id, now=utcnow())
    said = f"Booking {b.id} cancelled." if b.state == "cancelled" else f"Booking {b.id} ended now: its GPUs are free."
    return redirect_with(request, f"/projects/{slug}/compute", said)


@router.get("/admin/compute")
def operator_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, week: str | None = None) -> Response:
    service.require_operator(principal)
    now = utcnow()
    rows = []
    budgets = {b.project_id: b for b in db.scalars(select(ComputeBudget))}
    for p in db.scalars(select(Project).order_by(Project.slug)):
        rows.append((p, budgets.get(p.id), service.budget(db, p.id, now).view))
    return templates.TemplateResponse(request, "compute/operator.html", {
        **_calendar_context(db, hub, None, week), "rows": rows, "today": now.date()})


@router.post("/admin/compute/budget", dependencies=[CsrfChecked])
def set_budget(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal) -> Response:
    form = posted.form
    raw = str(form.get("gpu_weeks", "") or "").strip()
    try:
        amount = float(raw) if raw else None
        start = dt.date.fromisoformat(str(form.get("period_start", "")))
    except ValueError:
        raise Invalid("give the GPU-weeks as a number and the period start as a date") from None
    slug, klass = str(form.get("project", "")), str(form.get("klass", ""))
    b = service.set_budget(db, principal, slug, klass=klass, gpu_weeks=amount, period_start=start,
                           months=_int(form, "months", 12))
    return redirect_with(request, "/admin/compute",
                         f"{slug}: {klass.replace('_', ' ')}, {b.gpu_weeks:g} GPU-weeks from {b.period_start} "
                         f"to {b.period_end}.")
