"""The project's strategy page: edit and save versions, read the history, check a sample table."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from markupsafe import Markup

from ..deps import CsrfChecked, Db, HubDep, Posted, WebPrincipal, posted_form
from ..errors import Invalid
from ..identity.principal import Principal
from ..projects.service import open_project
from ..web.templating import redirect_with, templates
from . import report as reports
from . import service

router = APIRouter()
SAMPLE_BYTES = 20 * 1024 * 1024
SampleForm = Annotated[Posted, Depends(posted_form(max_file_bytes=SAMPLE_BYTES))]


def _context(db: Db, principal: Principal, slug: str, **extra: Any) -> dict[str, Any]:
    access = open_project(db, principal, slug)
    versions = service.versions(db, access)
    newest = versions[0] if versions else None
    return {"project": access.project, "access": access, "versions": versions, "newest": newest,
            "may_edit": service.EDIT_RIGHT in access.rights,
            "text": newest.text if newest else service.example_text(), "comment": "", "problems": [],
            "error": None, "report_html": None, **extra}


@router.get("/projects/{slug}/strategy")
def strategy_page(request: Request, db: Db, principal: WebPrincipal, slug: str) -> Response:
    return templates.TemplateResponse(request, "strategies/page.html", _context(db, principal, slug))


@router.get("/projects/{slug}/strategy/versions/{version}")
def strategy_version_page(request: Request, db: Db, principal: WebPrincipal, slug: str, version: int) -> Response:
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
