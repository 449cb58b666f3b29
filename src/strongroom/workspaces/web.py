"""Workspace pages: a project's (start, open, stop; my workspaces with their resources and the booking's
remaining time) and the operators' (every running workspace, stop any — audited)."""

from __future__ import annotations

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
    return templates.TemplateResponse(request, "workspaces/project.html", {
        "project": access.project, "access": access, "now": now, "can_start": "read-data" in access.rights,
        "workspaces": service.list_mine(db, access, principal.user), "live": LIVE,
        "booking": service.active_booking(db, access.project.id, now), "isolation": isolation, "why": why,
        "settings": hub.settings.workspaces})


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


@router.get("/admin/workspaces")
def operator_page(request: Request, db: Db, principal: WebPrincipal) -> Response:
    service.require_operator(principal)
    rows = [(ws, db.get(Project, ws.project_id), projects.users_of(db, {ws.user_id}).get(ws.user_id))
            for ws in service.list_live(db)]
    return templates.TemplateResponse(request, "workspaces/operator.html", {"rows": rows, "now": utcnow()})


@router.post("/admin/workspaces/stop", dependencies=[CsrfChecked])
def operator_stop(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal) -> Response:
    ws = service.stop_by_operator(db, hub.settings, principal, _id(posted.form.get("workspace")))
    return redirect_with(request, "/admin/workspaces", f"Workspace {str(ws.id)[:8]} stopped (audited).")
