"""VAI pages: the vendors' desk (/vai: their model versions and released reports), a report page with its
plots as inline SVG drawn here (/vai/reports/{id}, .json and .pdf beside it) and a clinic project's
evaluations and releases (/projects/{slug}/vai), where the named reviewers approve or reject a release."""

from __future__ import annotations

import json
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..deps import CsrfChecked, Db, HubDep, PostedForm, WebPrincipal
from ..errors import Invalid
from ..projects import service as projects
from ..text import content_disposition
from ..web.templating import redirect_with, templates
from . import render, service
from .models import Evaluation, ModelVersion

router = APIRouter()


@router.get("/vai")
def desk(request: Request, db: Db, principal: WebPrincipal) -> Response:
    vendors = service.my_vendors(db, principal)
    return templates.TemplateResponse(request, "vai/desk.html", {
        "vendors": [(v, [m for m, _ in service.list_models(db, principal) if m.vendor_id == v.id],
                     service.vendor_reports(db, principal, v.slug)) for v in vendors],
        "models": service.list_models(db, principal),
    })


@router.get("/vai/reports/{report_id}")
def report_page(request: Request, db: Db, principal: WebPrincipal, report_id: uuid.UUID) -> Response:
    r = service.visible_report(db, principal, str(report_id))
    m = r.report["metrics"]
    return templates.TemplateResponse(request, "vai/report.html", {
        "release": r, "report": r.report, "m": m, "rows": render.rows(m), "render": render,
        "roc_svg": render.roc_svg(m.get("roc", []), m.get("auc")),
        "cal_svg": render.calibration_svg(m["calibration"]["bins"]) if m.get("calibration") else None,
    })


@router.get("/vai/reports/{report_id}/report.json")
def report_json(db: Db, principal: WebPrincipal, report_id: uuid.UUID) -> Response:
    r = service.visible_report(db, principal, str(report_id))
    body = {"id": str(r.id), "state": r.state, "sha256": r.sha256, "report": r.report}
    return Response(json.dumps(body, indent=2, ensure_ascii=False), media_type="application/json",
                    headers={"Content-Disposition": content_disposition(f"vai-report-{r.id}.json")})


@router.get("/vai/reports/{report_id}/report.pdf")
def report_pdf(db: Db, hub: HubDep, principal: WebPrincipal, report_id: uuid.UUID) -> Response:
    r = service.visible_report(db, principal, str(report_id))
    return Response(render.to_pdf(r.report, site=hub.settings.site_name, sha256=r.sha256),
                    media_type="application/pdf",
                    headers={"Content-Disposition": content_disposition(f"vai-report-{r.id}.pdf")})


@router.get("/projects/{slug}/vai")
def project_page(request: Request, db: Db, principal: WebPrincipal, slug: str) -> Response:
    access = projects.open_project(db, principal, slug)
    evaluations = service.list_evaluations(db, principal, slug)
    models = {e.model_version_id: db.get(ModelVersion, e.model_version_id) for e in evaluations}
    releases = service.list_releases(db, principal, slug)
    reviewers = service._reviewers(db, access.project.id)
    return templates.TemplateResponse(request, "vai/project.html", {
        "project": access.project, "evaluations": evaluations, "models": models,
        "releases": [(r, e, service.release_reviews(db, r)) for r, e in releases],
        "can_review": principal.user.id in reviewers, "me": principal.user.id,
    })


@router.post("/projects/{slug}/vai/releases/{release_id}/review", dependencies=[CsrfChecked])
def review(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal, slug: str,
           release_id: uuid.UUID) -> Response:
    decision = str(posted.form.get("decision", ""))
    if decision not in ("approve", "reject"):
        raise Invalid("approve or reject")
    r = service.review_release(db, principal, slug, str(release_id), decision=decision,
                               reason=str(posted.form.get("reason", "")))
    ev = db.get_one(Evaluation, r.evaluation_id)
    state = {"in_review": "still in review", "released": "released to the vendor", "rejected": "rejected"}[r.state]
    return redirect_with(request, f"/projects/{slug}/vai#releases",
                         f"Your review of the report on {ev.title!r} is recorded: it is {state}.")
