"""VAI pages: the vendors' desk (/vai: their model versions and released reports), a report page with its
plots as inline SVG drawn here (/vai/reports/{id}, .json and .pdf beside it) and a clinic project's
evaluations and releases (/projects/{slug}/vai), where the named reviewers approve or reject a release."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..deps import CsrfChecked, Db, HubDep, Posted, PostedForm, WebPrincipal, posted_form
from ..errors import Invalid, MfaRequired
from ..projects import service as projects
from ..schemas import whole_number
from ..text import content_disposition
from ..web.templating import redirect_with, templates
from . import metrics, render, service
from .models import CREATED, DONE, IN_REVIEW, RESULTS_ONLY, RUNNING, Evaluation, ModelVersion
from .settings import BUDGET_SETTING

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
    offered = [(m, v) for m, v in service.list_models(db, principal) if m.mode == RESULTS_ONLY or m.file_key]
    return templates.TemplateResponse(request, "vai/project.html", {
        "project": access.project, "evaluations": evaluations, "models": models,
        "releases": [(r, e, service.release_reviews(db, r)) for r, e in releases],
        "can_review": principal.user.id in reviewers, "me": principal.user.id,
        "offered": offered, "datasets": service.dataset_choices(db, access.project.id),
        "budget": service.budget_overview(db, access.project.id), "budget_setting": BUDGET_SETTING,
        "can_change_budget": "manage-settings" in access.rights,
    })


def _number(form: dict[str, str], key: str, what: str) -> float | None:
    raw = form.get(key, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise Invalid(f"{what} is a number") from None


def protocol_from_form(form: dict[str, str]) -> dict[str, Any]:
    """The protocol a page's form describes (the API takes the same as JSON)."""
    threshold = _number(form, "threshold", "the vendor's operating point")
    clinic = _number(form, "clinic_threshold", "the clinic's operating point")
    target = _number(form, "target_sensitivity", "the target sensitivity")
    bootstrap = form.get("bootstrap", "").strip()
    resamples = whole_number(bootstrap, "bootstrap resamples", minimum=0, maximum=10_000) if bootstrap else 2000
    points = {"vendor": 0.5 if threshold is None else threshold, **({"clinic": clinic} if clinic is not None else {})}
    protocol: dict[str, Any] = {
        "operating_points": points, "target_sensitivities": [] if target is None else [target],
        "subgroups": [c.strip() for c in form.get("subgroups", "").split(",") if c.strip()],
        "reference_standard": form.get("reference_standard", ""), "inclusion": form.get("inclusion", ""),
        "bootstrap": resamples,
        "reference_source": form.get("reference_source", "labels"),
    }
    if form.get("level") in ("image", "study"):
        protocol["level"] = form["level"]
    return protocol


def _text(posted: Posted, field: str, upload: str) -> str:
    """A CSV typed into a text area or chosen as a file."""
    if upload in posted.files:
        name, _, data = posted.files[upload]
        if len(data) > service.MAX_CSV_CHARS:
            raise Invalid(f"{name} is too large")
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Invalid(f"{name} is not UTF-8 text") from None
    return str(posted.form.get(field, ""))


CsvForm = Annotated[Posted, Depends(posted_form(service.MAX_CSV_CHARS))]


@router.post("/projects/{slug}/vai/evaluations", dependencies=[CsrfChecked])
def create(request: Request, posted: CsvForm, db: Db, principal: WebPrincipal, slug: str) -> Response:
    """Create an evaluation and start it (its job is queued at once)."""
    form = {k: str(v) for k, v in posted.form.items() if isinstance(v, str)}
    dataset_id, version = None, None
    if form.get("dataset"):
        dataset_id, _, number = form["dataset"].partition(":")
        version = whole_number(number, "dataset version", minimum=1)
    ev = service.create_evaluation(
        db, principal, slug, model_version_id=form.get("model_version", ""), title=form.get("title", ""),
        labels_csv=_text(posted, "labels_csv", "labels_file"), protocol=protocol_from_form(form),
        dataset_id=dataset_id, dataset_version=version,
        predictions_csv=_text(posted, "predictions_csv", "predictions_file") or None)
    return redirect_with(request, f"/projects/{slug}/vai/evaluations/{ev.id}",
                         f"The evaluation {ev.title!r} is created and started: {ev.total} instances to predict.")


@router.get("/projects/{slug}/vai/evaluations/{evaluation_id}")
def evaluation_page(request: Request, db: Db, principal: WebPrincipal, slug: str,
                    evaluation_id: uuid.UUID) -> Response:
    """The clinic's full result: every figure unsuppressed, the plots, the subgroups and the failure lists."""
    access = projects.open_project(db, principal, slug)
    ev = service.read_evaluations(db, principal, slug, str(evaluation_id))[0]
    mv = db.get_one(ModelVersion, ev.model_version_id)
    m = (ev.result or {}).get("metrics")
    in_review = any(r.state == IN_REVIEW for r, e in service.list_releases(db, principal, slug) if e.id == ev.id)
    degenerate = metrics.degenerate(m) if m else None  # the release would be refused: said before anyone asks
    return templates.TemplateResponse(request, "vai/evaluation.html", {
        "project": access.project, "ev": ev, "mv": mv, "r": ev.result or {}, "m": m, "render": render,
        "rows": render.rows(m) if m else [],
        "roc_svg": render.roc_svg(m.get("roc", []), m.get("auc")) if m else None,
        "cal_svg": render.calibration_svg(m["calibration"]["bins"]) if m and m.get("calibration") else None,
        "running": ev.state in (CREATED, RUNNING),
        "degenerate": degenerate,
        "can_release": ev.state == DONE and "export" in access.rights and not in_review and not degenerate,
        "percent": int(100 * ev.done / ev.total) if ev.total else 100,
    })


@router.post("/projects/{slug}/vai/evaluations/{evaluation_id}/release", dependencies=[CsrfChecked])
def ask_release(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str,
                evaluation_id: uuid.UUID) -> Response:
    r = service.request_release(db, hub, principal, slug, str(evaluation_id))
    return redirect_with(request, f"/projects/{slug}/vai#releases",
                         f"The report is frozen and waits for {r.approvals_needed} approvals by the project's "
                         "named reviewers before the vendor sees it.")


@router.post("/projects/{slug}/vai/releases/{release_id}/review", dependencies=[CsrfChecked])
def review(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal, slug: str,
           release_id: uuid.UUID) -> Response:
    decision = str(posted.form.get("decision", ""))
    if decision not in ("approve", "reject"):
        raise Invalid("approve or reject")
    try:
        r = service.review_release(db, principal, slug, str(release_id), decision=decision,
                                   reason=str(posted.form.get("reason", "")),
                                   fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    except MfaRequired as exc:  # to the second factor, then back to the project's releases
        db.rollback()
        return redirect_with(request, f"/login/reauth?next={quote(f'/projects/{slug}/vai')}",
                             f"{exc.detail[:1].upper()}{exc.detail[1:]}: confirm it's you, then approve the report "
                             "again.", kind="error")
    ev = db.get_one(Evaluation, r.evaluation_id)
    state = {"in_review": "still in review", "released": "released to the vendor", "rejected": "rejected"}[r.state]
    return redirect_with(request, f"/projects/{slug}/vai#releases",
                         f"Your review of the report on {ev.title!r} is recorded: it is {state}.")
