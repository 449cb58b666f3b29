"""Data request pages: the project's requests and the applications waiting for one, a request's eight steps
with their evidence, and the steward's forms (open, run the named strategy on the extract, release, close)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from ..deps import CsrfChecked, Db, HubDep, WebPrincipal
from ..errors import Invalid
from ..projects.service import open_project
from ..schemas import whole_number
from ..web.templating import redirect_with, templates
from . import requests, runs, service
from .models import StrategyRun, StrategyVersion

router = APIRouter()
Text = Annotated[str, Form(max_length=requests.MAX_SELECTION)]
Short = Annotated[str, Form(max_length=300)]


@router.get("/projects/{slug}/requests")
def requests_page(request: Request, db: Db, principal: WebPrincipal, slug: str) -> Response:
    access = open_project(db, principal, slug)
    may_edit = service.EDIT_RIGHT in access.rights
    return templates.TemplateResponse(request, "strategies/requests.html", {
        "project": access.project, "may_edit": may_edit, "rows": requests.list_requests(db, access),
        "pending": requests.pending_applications(db, access) if may_edit else [],
        "versions": service.versions(db, access) if may_edit else []})


@router.post("/projects/{slug}/requests", dependencies=[CsrfChecked])
def create_request(request: Request, db: Db, principal: WebPrincipal, slug: str, application: Short = "",
                   title: Short = "", selection: Text = "", variables: Text = "", period_start: Short = "",
                   period_end: Short = "", strategy_version: Short = "") -> Response:
    access = open_project(db, principal, slug)
    version = whole_number(strategy_version, "strategy version", minimum=1) if strategy_version else None
    parameters = {k: v for k, v in (("variables", variables), ("period_start", period_start),
                                    ("period_end", period_end)) if v.strip()}
    r = requests.create(db, principal, access, application_id=application.strip() or None, title=title,
                        selection=selection, parameters=parameters,
                        strategy_version=version)
    return redirect_with(request, f"/projects/{slug}/requests/{r.id}",
                         f"Data request {r.id} opened: upload the extract, then run the strategy on it.")


@router.get("/projects/{slug}/requests/{request_id}")
def request_page(request: Request, db: Db, principal: WebPrincipal, slug: str, request_id: str) -> Response:
    access = open_project(db, principal, slug)
    r = requests.get(db, access, request_id)
    may_edit = service.EDIT_RIGHT in access.rights
    return templates.TemplateResponse(request, "strategies/request.html", {
        "project": access.project, "r": r, "may_edit": may_edit, "steps": requests.steps(db, access.project, r),
        "version": db.get(StrategyVersion, r.strategy_version_id),
        "run": db.get(StrategyRun, r.run_id) if r.run_id else None,
        "run_files": runs.run_files(db, access) if may_edit and r.state == "open" else []})


@router.post("/projects/{slug}/requests/{request_id}/runs", dependencies=[CsrfChecked])
def start_run(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str, request_id: str,
              file_id: Annotated[str, Form(max_length=32)] = "") -> Response:
    access = open_project(db, principal, slug)
    if not file_id:
        raise Invalid("choose the extract (a table uploaded into the project) to run the strategy on")
    run = requests.start_run(db, hub.settings, principal, access, request_id, file_id=file_id)
    return redirect_with(request, f"/projects/{slug}/requests/{request_id}",
                         f"Run {run.id} queued: its verification report appears here when it is done.")


@router.post("/projects/{slug}/requests/{request_id}/release", dependencies=[CsrfChecked])
def release(request: Request, db: Db, principal: WebPrincipal, slug: str, request_id: str) -> Response:
    access = open_project(db, principal, slug)
    version = requests.release(db, principal, access, request_id)
    return redirect_with(request, f"/projects/{slug}/requests/{request_id}",
                         f"Released version {version.number} of dataset {version.dataset_id}.")


@router.post("/projects/{slug}/requests/{request_id}/close", dependencies=[CsrfChecked])
def close(request: Request, db: Db, principal: WebPrincipal, slug: str, request_id: str,
          reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    access = open_project(db, principal, slug)
    requests.close(db, principal, access, request_id, reason)
    return redirect_with(request, f"/projects/{slug}/requests/{request_id}", f"Data request {request_id} closed.")
