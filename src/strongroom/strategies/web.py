"""The project's strategy page: edit and save versions, read the history, check a sample table, run a version
on an extract in the project's archive and read each run's report."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from markupsafe import Markup

from ..deps import CsrfChecked, Db, HubDep, Posted, WebPrincipal, posted_form
from ..errors import Invalid
from ..identity.principal import Principal
from ..projects.service import open_project
from ..schemas import Int32, whole_number
from ..web.templating import redirect_with, templates
from . import report as reports
from . import runs, service

router = APIRouter()
SAMPLE_BYTES = 20 * 1024 * 1024
SampleForm = Annotated[Posted, Depends(posted_form(max_file_bytes=SAMPLE_BYTES))]


def _context(db: Db, principal: Principal, slug: str, **extra: Any) -> dict[str, Any]:
    access = open_project(db, principal, slug)
    versions = service.versions(db, access)
    newest = versions[0] if versions else None
    may_edit = service.EDIT_RIGHT in access.rights
    return {"project": access.project, "access": access, "versions": versions, "newest": newest,
            "may_edit": may_edit, "runs": runs.list_runs(db, access, limit=50),
            "run_files": runs.run_files(db, access) if may_edit and newest else [],
            "text": newest.text if newest else service.example_text(), "comment": "", "problems": [],
            "error": None, "report_html": None, **extra}


@router.get("/projects/{slug}/strategy")
def strategy_page(request: Request, db: Db, principal: WebPrincipal, slug: str) -> Response:
    return templates.TemplateResponse(request, "strategies/page.html", _context(db, principal, slug))


@router.get("/projects/{slug}/strategy/versions/{version}")
def strategy_version_page(request: Request, db: Db, principal: WebPrincipal, slug: str, version: Int32) -> Response:
    access = open_project(db, principal, slug)
    row = service.get_version(db, access, version)
    return templates.TemplateResponse(request, "strategies/version.html", {"project": access.project, "row": row})


@router.post("/projects/{slug}/strategy", dependencies=[CsrfChecked])
def save_strategy(request: Request, db: Db, principal: WebPrincipal, slug: str,
                  text: Annotated[str, Form(max_length=1_000_000)],
                  comment: Annotated[str, Form(max_length=500)] = "") -> Response:
    access = open_project(db, principal, slug)
    try:
        row, created = service.save(db, principal, access, text, comment=comment)
    except Invalid as exc:
        # keep what was typed: the steward fixes the named lines instead of starting again
        ctx = _context(db, principal, slug, text=text, comment=comment, error="Not saved: the strategy has problems.",
                       problems=exc.extra.get("problems", []))
        return templates.TemplateResponse(request, "strategies/page.html", ctx, status_code=422)
    said = (f"Saved as version {row.version}." if created
            else f"No change: version {row.version} already holds this text.")
    return redirect_with(request, f"/projects/{slug}/strategy", said)


@router.post("/projects/{slug}/strategy/check", dependencies=[CsrfChecked])
def check_sample(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str,
                 posted: SampleForm) -> Response:
    access = open_project(db, principal, slug)
    upload = posted.files.get("sample")
    try:
        if upload is None:
            raise Invalid("choose a sample table to check")
        filename, _type, data = upload
        if len(data) > SAMPLE_BYTES:
            raise Invalid(f"a sample checked on this page is at most {SAMPLE_BYTES // 2**20} MiB; run whole "
                          "extracts with `strongroom strategy apply --project`")
        version = service.get_version(db, access)
        result = service.check_sample(db, hub.settings, principal, access, version, filename, data)
    except Invalid as exc:
        return templates.TemplateResponse(request, "strategies/page.html",
                                          _context(db, principal, slug, error=exc.detail), status_code=422)
    verdict = ("The sample passed: every rule holds." if result["passed"]
               else "The sample failed: see the checks marked FAILED below.")
    html = Markup(reports.to_html(result, standalone=False))  # rendered by our autoescaping template
    return templates.TemplateResponse(request, "strategies/page.html", _context(
        db, principal, slug, notice={"kind": "ok", "text": verdict}, report_html=html, preview=result["preview"],
        checked_version=version.version))


@router.post("/projects/{slug}/strategy/runs", dependencies=[CsrfChecked])
def start_run(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str,
              file_id: Annotated[str, Form(max_length=32)] = "",
              version: Annotated[str, Form(max_length=12)] = "") -> Response:
    access = open_project(db, principal, slug)
    try:
        if not file_id:
            raise Invalid("choose an extract of the project's archive to run the strategy on")
        run = runs.start(db, hub.settings, principal, access, file_id=file_id,
                         version=whole_number(version, "version", minimum=1) if version else None)
    except Invalid as exc:
        return templates.TemplateResponse(request, "strategies/page.html",
                                          _context(db, principal, slug, error=f"Not started: {exc.detail}"),
                                          status_code=422)
    number, path = runs.get_run(db, access, run.id)[1:]
    return redirect_with(request, f"/projects/{slug}/strategy#runs",
                         f"Run of version {number} on {path} queued: its report appears below when it is done.")


@router.get("/projects/{slug}/strategy/runs/{run_id}/report.html")
def run_report_page(request: Request, db: Db, principal: WebPrincipal, slug: str, run_id: uuid.UUID) -> Response:
    access = open_project(db, principal, slug)
    run, number, path = runs.get_run(db, access, run_id)
    html = Markup(reports.to_html(run.report, standalone=False)) if run.report else None  # autoescaped template
    return templates.TemplateResponse(request, "strategies/run.html", {
        "project": access.project, "run": run, "version": number, "path": path, "report_html": html})
