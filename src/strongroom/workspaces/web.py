"""Workspace pages: a project's (start, open, stop; my workspaces with their resources and the booking's
remaining time) and the operators' (every running workspace, stop any — audited)."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..db import utcnow
from ..deps import CsrfChecked, Db, HubDep, PostedForm, WebPrincipal
from ..errors import Invalid
from ..projects import service as projects
from ..projects.models import Project
from ..web.templating import redirect_with, templates
from . import service
from .models import LIVE

router = APIRouter()


def _id(raw: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw or ""))
    except ValueError:
        raise Invalid("workspace must be a workspace id") from None


@router.get("/projects/{slug}/workspaces")
def workspaces_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str) -> Response:
    access = projects.open_project(db, principal, slug)
    now = utcnow()
    try:
        isolation, why = service.isolation_for(hub.settings)
    except Exception as exc:
        isolation, why = "refused", str(exc)
    mine = service.list_mine(db, access, principal.user)
    return templates.TemplateResponse(request, "workspaces/project.html", {
        "project": access.project, "access": access, "now": now, "can_start": "read-data" in access.rights,
        "workspaces": mine, "live": LIVE, "left": _left, "mount": hub.settings.workspaces.mount_data,
        "resources": {ws.id: service.resources(hub.settings, ws) for ws in mine if ws.state in LIVE},
        "soon": {ws.id: when for ws in mine if (when := service.stopping_soon(hub.settings, ws, now))},
        "booking": service.active_booking(db, access.project.id, now), "isolation": isolation, "why": why,
        "settings": hub.settings.workspaces,
        "no_origin": "" if service.browser_origin(hub.settings) else service.NO_ORIGIN})


@router.post("/projects/{slug}/workspaces", dependencies=[CsrfChecked])
def start_workspace(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str) -> Response:
    access = projects.open_project(db, principal, slug)
    ws = service.start(db, hub.settings, hub.secret, principal, access)
    return redirect_with(request, f"/projects/{slug}/workspaces",
                         f"Workspace started: open it at {service.base_path(slug, ws.id)}lab.")


@router.post("/projects/{slug}/workspaces/stop", dependencies=[CsrfChecked])
def stop_workspace(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                   slug: str) -> Response:
    access = projects.open_project(db, principal, slug)
    ws = service.stop_mine(db, hub.settings, principal, access, _id(posted.form.get("workspace")))
    return redirect_with(request, f"/projects/{slug}/workspaces",
                         f"Workspace {str(ws.id)[:8]} stopped; its scratch space is wiped.")


def _left(ends: dt.datetime | None, now: dt.datetime) -> str:
    """"3 h 05 min left" until ``ends``."""
    if ends is None:
        return ""
    minutes = max(0, int((ends - now).total_seconds() // 60))
    return f"{minutes // 60} h {minutes % 60:02d} min left" if minutes >= 60 else f"{minutes} min left"


@router.get("/admin/workspaces")
def operator_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal) -> Response:
    service.require_operator(principal)
    now = utcnow()
    live = service.list_live(db)
    owners = projects.users_of(db, {ws.user_id for ws in live})
    rows = [(ws, db.get(Project, ws.project_id), owners.get(ws.user_id), service.resources(hub.settings, ws),
             service.stopping_soon(hub.settings, ws, now)) for ws in live]
    return templates.TemplateResponse(request, "workspaces/operator.html", {"rows": rows, "now": now, "left": _left})


@router.post("/admin/workspaces/stop", dependencies=[CsrfChecked])
def operator_stop(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal) -> Response:
    ws = service.stop_by_operator(db, hub.settings, principal, _id(posted.form.get("workspace")))
    return redirect_with(request, "/admin/workspaces", f"Workspace {str(ws.id)[:8]} stopped (audited).")
