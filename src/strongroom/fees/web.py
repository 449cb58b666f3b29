"""Fee pages: a project's statement for its PI and the operators (page, CSV, PDF, forecast, issued versions), a
customer's statement, and the operators' fees desk (customers, price list, waivers to decide, issuing)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..db import utcnow
from ..deps import CsrfChecked, Db, HubDep, PostedForm, WebPrincipal
from ..errors import Invalid, NotFound
from ..identity.principal import Principal
from ..projects import service as projects
from ..text import content_disposition
from ..web.templating import redirect_with, templates
from . import pricing, render, service

router = APIRouter()


def _period(text: str | None) -> tuple[str, dt.date, dt.date]:
    text = (text or str(utcnow().year)).strip()
    try:
        start, end = pricing.period(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return text, start, end


def _date(text: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise Invalid(f"{what} is a date (YYYY-MM-DD), not {text!r}") from None


def _statement_page(request: Request, db: Db, principal: Principal, subject: service.Subject, period: str | None,
                    base: str) -> Response:
    text, start, end = _period(period)
    st = service.compute(db, subject, start, end)
    today = utcnow().date()
    return templates.TemplateResponse(request, "fees/statement.html", {
        "subject": subject, "st": st, "period": text, "start": start, "end": end, "base": base,
        "forecast": service.forecast(db, subject, today) if start.year == today.year else None,
        "issued": service.issued(db, subject), "operator": service.is_operator(principal), "sek": render.sek,
        "customer": subject.customer,
    })


def _download(st: pricing.Statement, meta: dict[str, str], fmt: str, filename: str, site: str) -> Response:
    if fmt == "csv":
        return Response(render.to_csv(st, meta), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": content_disposition(f"{filename}.csv")})
    if fmt == "pdf":
        return Response(render.to_pdf(st, meta, site=site), media_type="application/pdf",
                        headers={"Content-Disposition": content_disposition(f"{filename}.pdf")})
    raise NotFound("statements come as .csv or .pdf")


@router.get("/projects/{slug}/fees")
def project_page(request: Request, db: Db, principal: WebPrincipal, slug: str, period: str | None = None) -> Response:
    subject = service.project_subject(db, principal, slug)
    return _statement_page(request, db, principal, subject, period, f"/projects/{slug}/fees")


@router.get("/projects/{slug}/fees/{period}.{fmt}")
def project_file(db: Db, hub: HubDep, principal: WebPrincipal, slug: str, period: str, fmt: str) -> Response:
    subject = service.project_subject(db, principal, slug)
    text, start, end = _period(period)
    return _download(service.compute(db, subject, start, end), service.meta(subject, start, end), fmt,
                     f"statement-{slug}-{text}-draft", hub.settings.site_name)


@router.get("/fees/customers/{customer_id}")
def customer_page(request: Request, db: Db, principal: WebPrincipal, customer_id: uuid.UUID,
                  period: str | None = None) -> Response:
    subject = service.customer_subject(db, principal, str(customer_id))
    return _statement_page(request, db, principal, subject, period, f"/fees/customers/{customer_id}")


@router.get("/fees/customers/{customer_id}/{period}.{fmt}")
def customer_file(db: Db, hub: HubDep, principal: WebPrincipal, customer_id: uuid.UUID, period: str,
                  fmt: str) -> Response:
    subject = service.customer_subject(db, principal, str(customer_id))
    text, start, end = _period(period)
    return _download(service.compute(db, subject, start, end), service.meta(subject, start, end), fmt,
                     f"statement-customer-{text}-draft", hub.settings.site_name)


@router.get("/fees/statements/{number}.{fmt}")
def issued_file(db: Db, hub: HubDep, principal: WebPrincipal, number: str, fmt: str) -> Response:
    s = service.issued_statement(db, principal, number)
    return _download(service.frozen(s), {**s.meta, "checksum": s.checksum}, fmt, s.number, hub.settings.site_name)


@router.get("/fees")
def desk(request: Request, db: Db, principal: WebPrincipal) -> Response:
    """The operators' fees desk (NotFound for everyone else)."""
    service.require_operator(principal)
    ws = service.waivers(db)
    people = projects.users_of(db, {w.requested_by for w in ws} | {w.decided_by for w in ws if w.decided_by})
    customers = service.customers(db)
    return templates.TemplateResponse(request, "fees/desk.html", {
        "customers": [(c, service.customer_projects(db, c.id)) for c in customers], "waivers": ws,
        "people": people, "lists": service.price_lists(db), "me": principal.user.id,
        "categories": service.WAIVER_CATEGORIES, "sek": render.sek,
    })


@router.post("/fees/waivers", dependencies=[CsrfChecked])
def request_waiver(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal) -> Response:
    f = {k: str(v) for k, v in posted.form.items()}
    w = service.request_waiver(
        db, principal, kind=f.get("kind", ""), category=f.get("category", ""), reason=f.get("reason", ""),
        valid_from=_date(f.get("valid_from", ""), "valid from"), valid_to=_date(f.get("valid_to", ""), "valid to"),
        percent=f.get("percent", ""), amount=f.get("amount", ""), project=f.get("project", ""),
        customer=f.get("customer", ""), item=f.get("item", ""))
    return redirect_with(request, "/fees#waivers",
                         f"The {w.kind} is requested: another operator approves it before it applies.")


@router.post("/fees/waivers/{waiver_id}/decide", dependencies=[CsrfChecked])
def decide_waiver(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal,
                  waiver_id: uuid.UUID) -> Response:
    decision = str(posted.form.get("decision", ""))
    if decision not in ("approve", "reject"):
        raise Invalid("approve or reject")
    w = service.decide_waiver(db, principal, waiver_id, approve=decision == "approve",
                              note=str(posted.form.get("note", "")))
    return redirect_with(request, "/fees#waivers", f"The {w.kind} is {w.state}.")


@router.post("/fees/statements", dependencies=[CsrfChecked])
def issue(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal) -> Response:
    f = {k: str(v) for k, v in posted.form.items()}
    _text, start, end = _period(f.get("period"))
    subject: Any
    if f.get("project"):
        subject = service.project_subject(db, principal, f["project"])
        back = f"/projects/{subject.label}/fees?period={_text}"
    else:
        subject = service.customer_subject(db, principal, f.get("customer", ""))
        back = f"/fees/customers/{subject.key[9:]}?period={_text}"
    made = service.issue(db, principal, subject, start, end)
    return redirect_with(request, back, "Issued " + " and ".join(s.number for s in made) + ".")
