"""Retention pages: a dataset's retention (/datasets/{id}/retention: class, extend, legal hold, request a
deletion), the operator's queue (/retention) and a deletion with its approval and certificate."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..deps import CsrfChecked, Db, HubDep, PostedForm, WebPrincipal
from ..errors import Invalid, NotFound
from ..projects.service import users_of
from ..schemas import whole_number
from ..text import content_disposition
from ..web.templating import redirect_with, templates
from . import clock, service
from .models import ProjectClock

router = APIRouter()


def _number(value: object) -> int:
    return whole_number(str(value), "version", minimum=1)


def _date(value: object) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise Invalid("the date is written YYYY-MM-DD") from None


@router.get("/datasets/{dataset_id}/retention")
def dataset_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, dataset_id: str) -> Response:
    seen = service.open_dataset(db, principal, dataset_id)
    settings = hub.settings.retention
    cls = clock.class_of(db, settings, seen.dataset.id)
    return templates.TemplateResponse(request, "retention/dataset.html", {
        "dataset": seen.dataset, "seen": seen, "rows": service.status(db, settings, seen), "dataset_class": cls,
        "years": clock.years_for(settings, cls), "classes": settings.years, "now": dt.datetime.now(dt.UTC),
        "project_clock": db.get(ProjectClock, seen.dataset.project_id)})


@router.post("/datasets/{dataset_id}/retention/class", dependencies=[CsrfChecked])
def change_class(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                 dataset_id: str) -> Response:
    cls = service.set_class(db, hub.settings.retention, principal, dataset_id,
                            str(posted.form.get("dataset_class", "")))
    return redirect_with(request, f"/datasets/{dataset_id}/retention",
                         f"Retention class set to {cls}: kept {hub.settings.retention.years[cls]} years after "
                         "the last use.")


@router.post("/datasets/{dataset_id}/retention/extend", dependencies=[CsrfChecked])
def extend(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
           dataset_id: str) -> Response:
    form = posted.form
    c = service.extend(db, hub.settings.retention, principal, dataset_id, _number(form.get("version")),
                       _date(form.get("until")), str(form.get("reason", "")))
    return redirect_with(request, f"/datasets/{dataset_id}/retention",
                         f"Extended: kept at least until {c.keep_until.date()}.")


@router.post("/datasets/{dataset_id}/retention/hold", dependencies=[CsrfChecked])
def hold(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
         dataset_id: str) -> Response:
    form = posted.form
    on = form.get("action") != "lift"
    number = _number(form.get("version"))
    service.set_hold(db, hub.settings.retention, principal, dataset_id, number, str(form.get("reason", "")), hold=on)
    return redirect_with(request, f"/datasets/{dataset_id}/retention",
                         f"Legal hold {'set on' if on else 'lifted from'} version {number}.")


@router.post("/datasets/{dataset_id}/retention/deletion", dependencies=[CsrfChecked])
def request_deletion(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                     dataset_id: str) -> Response:
    form = posted.form
    d = service.request_deletion(db, hub.settings.retention, principal, dataset_id, _number(form.get("version")),
                                 str(form.get("reason", "")), fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return redirect_with(request, f"/retention/deletions/{d.id}",
                         f"Deletion of version {d.number} requested: another operator approves it.")


@router.get("/retention")
def queue_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal) -> Response:
    due, held = service.queue(db, hub.settings.retention, principal)
    deletions = service.open_deletions(db, principal)
    return templates.TemplateResponse(request, "retention/queue.html", {
        "due": due, "held": held, "deletions": deletions, "months": hub.settings.retention.queue_months,
        "now": dt.datetime.now(dt.UTC)})


@router.get("/retention/deletions/{deletion_id}")
def deletion_page(request: Request, db: Db, principal: WebPrincipal, deletion_id: str) -> Response:
    d, seen = service.get_deletion(db, principal, _uuid(deletion_id))
    people = users_of(db, {u for u in (d.requested_by, d.approved_by) if u})
    return templates.TemplateResponse(request, "retention/deletion.html", {
        "d": d, "seen": seen, "dataset": seen.dataset, "people": people,
        "may_approve": seen.operator and d.state == "requested" and d.requested_by != principal.user.id})


@router.post("/retention/deletions/{deletion_id}/approve", dependencies=[CsrfChecked])
def approve(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, deletion_id: str) -> Response:
    d = service.approve_deletion(db, hub.settings.retention, principal, _uuid(deletion_id),
                                 fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return redirect_with(request, f"/retention/deletions/{d.id}",
                         f"Deletion of {d.dataset_id} version {d.number} approved: it runs now and ends in a "
                         "signed certificate.")


@router.get("/retention/deletions/{deletion_id}/certificate.json")
def certificate(db: Db, principal: WebPrincipal, deletion_id: str) -> Response:
    d = service.get_deletion(db, principal, _uuid(deletion_id))[0]
    if d.certificate is None:
        raise NotFound("this deletion has no certificate yet")
    return Response(d.certificate, media_type="application/json", headers={
        "Content-Disposition": content_disposition(f"deletion-{d.dataset_id}-v{d.number}.json")})


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound("no such deletion") from None
