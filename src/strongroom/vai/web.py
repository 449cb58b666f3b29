"""VAI pages: the vendors' desk (/vai: their model versions and released reports), a report page with its
plots as inline SVG drawn here (/vai/reports/{id}, .json and .pdf beside it) and a clinic project's
evaluations and releases (/projects/{slug}/vai), where the named reviewers approve or reject a release."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..deps import CsrfChecked, Db, HubDep, Posted, PostedForm, WebPrincipal, posted_form
from ..errors import Conflict, Invalid, MfaRequired
from ..projects import service as projects
from ..schemas import whole_number
from ..text import content_disposition
from ..web.templating import redirect_with, templates
from . import metrics, render, service
from .models import CREATED, DONE, IN_REVIEW, RESULTS_ONLY, RUNNING, Evaluation, ModelVersion
from .settings import BUDGET_SETTING

router = APIRouter()
log = structlog.get_logger("strongroom.vai")


# What rendering a stored figure of another shape raises (a key missing, a text where a number was, a list where a
# mapping was): a release's report and an evaluation's result are JSON as stored, possibly by hand or by an older
# version, and a page shows what of them reads rather than answering 500.
_UNREADABLE = (KeyError, TypeError, ValueError, AttributeError, IndexError)
NOT_RECORDED = "no metrics recorded"


def _readable(draw: Callable[..., Any], *args: Any) -> Any:
    """``draw(*args)``, or None when the stored figures it reads are missing or of another shape."""
    try:
        return draw(*args)
    except _UNREADABLE:
        return None


def figures(m: object, *, report: bool = True) -> dict[str, Any]:
    """The figures of a report's (or, ``report=False``, an evaluation result's) metrics as a page shows them, each
    part only when it reads: ``recorded`` False when there are none at all (the page says "no metrics recorded"),
    else ``rows`` (the overall table), ``roc_svg``, ``cal_svg`` and the report's ``subgroups`` as (column,
    [(level, rows)], hidden levels), each None (or left out) when missing or unreadable."""
    if not isinstance(m, dict) or not m:
        return {"recorded": False, "rows": None, "roc_svg": None, "cal_svg": None, "subgroups": []}
    subgroups: list[tuple[str, list[tuple[str, list[list[str]] | None]], Any]] = []
    groups = m.get("subgroups")
    if report and isinstance(groups, dict):
        for column, group in groups.items():
            levels = group.get("levels") if isinstance(group, dict) else None
            shown = [(str(level.get("level", "")) if isinstance(level, dict) else "",
                      _readable(render.rows, level))
                     for level in (levels if isinstance(levels, list) else [])]
            hidden = group.get("hidden_levels") if isinstance(group, dict) else None
            subgroups.append((str(column), shown, hidden))
    return {
        "recorded": True,
        "rows": _readable(render.rows, m),
        # no curve and no AUC recorded: nothing to draw (an AUC recorded as None is a suppressed one)
        "roc_svg": _readable(render.roc_svg, m.get("roc") or [], m.get("auc"))
        if "roc" in m or "auc" in m else None,
        "cal_svg": _readable(lambda: render.calibration_svg(m["calibration"]["bins"])) if m.get("calibration")
        else None,
        "subgroups": subgroups,
    }


def _auc_text(report: object) -> str:
    """A report's AUC with its CI for a listing: "suppressed" when released so, "no metrics recorded" when none."""
    m = service.stored_part(report, "metrics")
    if not m:
        return NOT_RECORDED
    auc = m.get("auc")
    if not auc:
        return "suppressed"
    return _readable(lambda: f"{auc['auc']:.3f} ({auc['low']:.3f}–{auc['high']:.3f})") or "not recorded"


@router.get("/vai")
def desk(request: Request, db: Db, principal: WebPrincipal) -> Response:
    vendors = service.my_vendors(db, principal)
    return templates.TemplateResponse(request, "vai/desk.html", {
        "vendors": [(v, [m for m, _ in service.list_models(db, principal) if m.vendor_id == v.id],
                     [(r, service.stored_part(r.report, "model"), _auc_text(r.report))
                      for r in service.vendor_reports(db, principal, v.slug)]) for v in vendors],
        "models": service.list_models(db, principal),
    })


@router.get("/vai/reports/{report_id}")
def report_page(request: Request, db: Db, principal: WebPrincipal, report_id: uuid.UUID) -> Response:
    r = service.visible_report(db, principal, str(report_id))
    report = r.report if isinstance(r.report, dict) else {}
    return templates.TemplateResponse(request, "vai/report.html", {
        "release": r, "report": report, "model": service.stored_part(report, "model"),
        "figures": figures(report.get("metrics")), "not_recorded": NOT_RECORDED,
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
    try:
        pdf = render.to_pdf(r.report, site=hub.settings.site_name, sha256=r.sha256)
    except _UNREADABLE as exc:  # the PDF lays out every part of a report: one without its figures has no PDF
        log.warning("vai.report.unprintable", release=str(r.id), error=type(exc).__name__)
        raise Conflict(f"this report has {NOT_RECORDED} (or some of them are unreadable), so there is no PDF of it: "
                       f"its page and its JSON (/vai/reports/{r.id}/report.json) show what it holds") from None
    return Response(pdf, media_type="application/pdf",
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
    result = ev.result if isinstance(ev.result, dict) else {}
    m = service.stored_part(result, "metrics")
    in_review = any(r.state == IN_REVIEW for r, e in service.list_releases(db, principal, slug) if e.id == ev.id)
    degenerate = metrics.degenerate(m) if m else None  # the release would be refused: said before anyone asks
    shown = figures(m, report=False)
    return templates.TemplateResponse(request, "vai/evaluation.html", {
        "project": access.project, "ev": ev, "mv": mv, "r": result, "m": m, "render": render,
        "rows": shown["rows"] or [], "roc_svg": shown["roc_svg"], "cal_svg": shown["cal_svg"],
        "subgroups": {column: levels for column, levels in (m.get("subgroups") or {}).items()
                      if isinstance(levels, list)} if isinstance(m.get("subgroups"), dict) else {},
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
