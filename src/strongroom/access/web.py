"""Pages for applicants (apply, fill in, accept terms, submit) and handlers (queue, decide)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from ..archive.models import Dataset
from ..deps import CsrfChecked, Db, HubDep, Posted, PostedForm, WebPrincipal, posted_form
from ..errors import DomainError, Forbidden, Invalid, MfaRequired, NotFound
from ..schemas import whole_number
from ..web.templating import redirect_with, templates
from . import applications, decision_tokens, decisions, events, policies, titles
from .forms import describe_errors
from .models import Application, Attachment, FormVersion

router = APIRouter()
PostedWithFiles = Annotated[Posted, Depends(posted_form(applications.MAX_ATTACHMENT))]


def _go(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/apply/{dataset_id}")
def apply_page(request: Request, db: Db, principal: WebPrincipal, dataset_id: str) -> Response:
    ds = applications.applicable_dataset(db, principal, dataset_id)
    existing = [a for a in applications.my_applications(db, principal) if a.dataset_id == dataset_id]
    open_app = next((a for a in existing if a.state in events.OPEN_STATES), None)
    if open_app:
        return _go(f"/applications/{open_app.id}")
    return templates.TemplateResponse(request, "access_apply.html", {
        "ds": ds, "title": titles.title_for(db, principal.user.id, ds.id), "previous": existing})


@router.post("/apply/{dataset_id}", dependencies=[CsrfChecked])
def start(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal, dataset_id: str) -> Response:
    form = posted.form
    app = applications.create(db, principal, dataset_id, renewal_of=str(form.get("renewal_of") or "") or None)
    return redirect_with(request, f"/applications/{app.id}",
                         f"Application {app.id} started as a draft: fill in the form, accept the terms, submit.")


@router.get("/applications")
def applications_page(request: Request, db: Db, principal: WebPrincipal) -> Response:
    mine = applications.my_applications(db, principal)
    queue = applications.queue(db, principal)
    names = titles.titles_for(db, principal.user.id, {a.dataset_id for a in mine + queue})
    users = applications.users_by_id(db, {a.applicant_id for a in queue})
    context: dict[str, Any] = {"mine": mine, "queue": queue, "titles": names, "users": users,
                               "waiting": sum(1 for a in queue if a.state == "submitted")}
    if not principal.has_mfa and policies.holds_access_role(db, principal.user):
        # named after this single-factor login: say why the applications they handle are not listed
        context["notice"] = {"kind": "error", "text": f"{events.STAFF_MFA[:1].upper()}{events.STAFF_MFA[1:]}: "
                             "log out and in again with your second factor to see the applications you handle."}
    return templates.TemplateResponse(request, "access_list.html", context)


def _context(db: Db, principal: WebPrincipal, application_id: str, error: str | None = None,
             field_errors: dict[str, str] | None = None, answers: dict[str, Any] | None = None) -> dict[str, Any]:
    """``answers``: what the applicant typed, shown again when it could not be saved."""
    v = events.load(db, principal, application_id)
    form = db.get_one(FormVersion, v.state.form_version_id)
    terms = policies.current_terms(db, policies.policy_for(db, v.app.dataset_id).terms_name)
    attachments = list(db.query(Attachment).filter(Attachment.application_id == application_id))
    users = applications.users_by_id(db, {e.actor_id for e in v.events if e.actor_id} | {v.app.applicant_id})
    staff = bool(v.roles - {"applicant"})
    return {"v": v, "s": v.state, "form": form, "terms": terms, "ds": db.get(Dataset, v.app.dataset_id),
            "title": titles.title_for(db, principal.user.id, v.app.dataset_id),
            "attachments": attachments, "users": users, "staff": staff, "error": error,
            "field_errors": describe_errors(form.fields, field_errors or {}),
            "answers": {**v.state.answers, **(answers or {})}, "editable": "applicant" in v.roles and v.state.state in
            ("draft", "returned"), "terms_ok": v.state.accepted_terms.get(str(principal.user.id)) == terms.id,
            "default_end": dt.date.today() + dt.timedelta(days=365),
            "data_requests": _data_requests(db, application_id),
            "events": [e for e in v.events if staff or events.shown_to_applicant(e.type, e.payload)]}


def _data_requests(db: Db, application_id: str) -> list[Any]:
    """The owning project's data requests for this application and their eight steps (strategies' room)."""
    from ..strategies.requests import for_application

    return for_application(db, application_id)


@router.get("/applications/{application_id}")
def application_page(request: Request, db: Db, principal: WebPrincipal, application_id: str) -> Response:
    return templates.TemplateResponse(request, "access_application.html", _context(db, principal, application_id))


def _answers_from_form(form: FormData, fields: list[dict[str, Any]], attachment_ids: dict[str, str]
                       ) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for f in fields:
        fid, kind = f["id"], f["type"]
        if kind == "multiselect":
            answers[fid] = [str(x) for x in form.getlist(fid)]
        elif kind == "ethics":
            number = str(form.get(f"{fid}.number", "")).strip()
            answers[fid] = {"number": number, "attachment": attachment_ids.get(fid)} if number else None
        elif kind == "attachment":
            if fid in attachment_ids:
                answers[fid] = attachment_ids[fid]
        elif kind == "table":
            rows = []
            for line in str(form.get(fid, "")).splitlines():
                if line.strip():
                    cells = [c.strip() for c in line.split(";")]
                    rows.append(dict(zip(f.get("columns", []), cells + [""] * 10, strict=False)))
            answers[fid] = rows
        else:
            answers[fid] = str(form.get(fid, "")).strip()
    return answers


@router.post("/applications/{application_id}/save", dependencies=[CsrfChecked])
def save(request: Request, posted: PostedWithFiles, db: Db, hub: HubDep, principal: WebPrincipal, application_id: str
         ) -> Response:
    # Uploaded files were read (PostedWithFiles, before Db) before the first query takes the write lock.
    form_data = posted.form
    v = events.load(db, principal, application_id)
    fields = db.get_one(FormVersion, v.state.form_version_id).fields
    attachment_ids: dict[str, str] = {}
    for f in fields:
        upload = posted.files.get(f"{f['id']}.file") if f["type"] == "ethics" else posted.files.get(f["id"]) \
            if f["type"] == "attachment" else None
        if upload is not None:
            filename, content_type, data = upload
            attachment_ids[f["id"]] = applications.attach(db, principal, application_id, filename, content_type,
                                                     data).id
        elif f["type"] == "ethics" and isinstance(v.state.answers.get(f["id"]), dict):
            kept = v.state.answers[f["id"]].get("attachment")
            if kept:
                attachment_ids[f["id"]] = kept
    answers = _answers_from_form(form_data, fields, attachment_ids)
    then = str(form_data.get("then") or "save")
    try:
        applications.save(db, principal, application_id, answers)
    except Invalid as exc:
        ctx = _context(db, principal, application_id, _fix_below(exc), exc.extra.get("fields"),  # type: ignore[arg-type]
                       answers=answers)
        return templates.TemplateResponse(request, "access_application.html", ctx, status_code=422)
    if then in ("submit", "accept-terms"):
        db.commit()  # the draft stays saved even if what follows is refused
        return _command(request, db, principal, application_id, then, form_data,
                        fresh_minutes=hub.settings.security.fresh_mfa_minutes,
                        done="Draft saved and terms of use accepted. You can submit the application now."
                        if then == "accept-terms" else None)
    return redirect_with(request, f"/applications/{application_id}#form", "Draft saved.")


def _fix_below(exc: DomainError) -> str:
    if exc.extra.get("fields"):
        return f"{exc.detail[:1].upper()}{exc.detail[1:]}: please correct the fields marked below."
    return exc.detail


DONE = {
    "accept-terms": "Terms of use accepted.",
    "submit": "Application submitted. You will get an e-mail when it has been decided.",
    "assign": "You handle this application now.",
    "return": "Application returned to the applicant.",
    "remark": "Remark added.",
    "approve": "Application approved: the applicant can use the dataset.",
    "reject": "Application rejected. The applicant sees your reason.",
    "close": "Application closed.",
    "revoke": "Access revoked.",
    "vote": "Your vote is recorded.",
}


COMMANDS = {"accept-terms", "submit", "assign", "return", "remark", "approve", "reject", "close", "revoke", "vote"}
# what to do again after confirming it's you (the commands that open data need a fresh second factor)
AGAIN = {"approve": "approve the application again", "vote": "cast your vote again"}


def _command(request: Request, db: Db, principal: WebPrincipal, application_id: str, command: str,
             form: FormData, *, fresh_minutes: int, done: str | None = None) -> Response:
    text = str(form.get("text", "") or form.get("reason", "") or form.get("comment", ""))
    try:
        match command:
            case "accept-terms":
                applications.accept_terms(db, principal, application_id)
            case "submit":
                applications.submit(db, principal, application_id)
            case "assign":
                decisions.assign(db, principal, application_id)
            case "return":
                decisions.return_(db, principal, application_id, text)
            case "remark":
                decisions.remark(db, principal, application_id, text, form.get("public") == "on")
            case "approve":
                decisions.approve(db, principal, application_id, dt.date.fromisoformat(str(form.get("ends"))), text,
                                  fresh_minutes=fresh_minutes)
            case "reject":
                decisions.reject(db, principal, application_id, text)
            case "close":
                decisions.close(db, principal, application_id, text)
            case "revoke":
                decisions.revoke(db, principal, application_id, text)
            case "vote":
                decisions.vote(db, principal, application_id, form.get("approve") == "yes", text,
                               fresh_minutes=fresh_minutes)
            case _:
                raise NotFound("no such action")
    except MfaRequired as exc:
        db.rollback()
        # back to the application after the second factor (the form's own URL answers POST only)
        return redirect_with(request, f"/login/reauth?next={quote(f'/applications/{application_id}')}",
                             f"{exc.detail[:1].upper()}{exc.detail[1:]}: confirm it's you, then "
                             f"{AGAIN.get(command, 'try again')}.", kind="error")
    except (Invalid, Forbidden, ValueError) as exc:
        detail = exc.detail if isinstance(exc, DomainError) else "invalid date"
        fields = exc.extra.get("fields") if isinstance(exc, DomainError) else None
        db.rollback()
        if isinstance(exc, DomainError):
            detail = _fix_below(exc)
        ctx = _context(db, principal, application_id, detail, fields)  # type: ignore[arg-type]
        # e.g. a handler deciding their own application: the page says why, with the application below
        status = 403 if isinstance(exc, Forbidden) else 422
        return templates.TemplateResponse(request, "access_application.html", ctx, status_code=status)
    return redirect_with(request, f"/applications/{application_id}", done or DONE[command])


@router.post("/applications/{application_id}/{command}", dependencies=[CsrfChecked])
def command(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal, application_id: str,
            command: str) -> Response:
    if command not in COMMANDS:
        raise NotFound("no such action")
    return _command(request, db, principal, application_id, command, posted.form,
                    fresh_minutes=hub.settings.security.fresh_mfa_minutes)


__all__ = ["Application", "router"]


@router.get("/access")
def my_access(request: Request, db: Db, principal: WebPrincipal) -> Response:
    from ..db import utcnow

    ents = applications.entitlements_of(db, principal.user.id)
    names = titles.titles_for(db, principal.user.id, {e.dataset_id for e in ents})
    return templates.TemplateResponse(request, "access_mine.html", {"ents": ents, "titles": names, "now": utcnow()})


def _owner_context(db: Db, principal: WebPrincipal, dataset_id: str) -> dict[str, Any]:
    from sqlalchemy import select

    from . import reports
    from .models import DatasetRole

    report = reports.dataset_report(db, principal, dataset_id)  # NotFound unless the caller handles it
    apps = [a for a in applications.queue(db, principal) if a.dataset_id == dataset_id]
    roles = list(db.execute(select(DatasetRole.role, DatasetRole.user_id).where(DatasetRole.dataset_id == dataset_id)))
    users = applications.users_by_id(db, {a.applicant_id for a in apps} | {uid for _, uid in roles})
    assignees = {a.id: events.replay(events.events_of(db, a.id)).assignee for a in apps}
    users |= applications.users_by_id(db, {u for u in assignees.values() if u})
    countries = sorted(report["sharing_by_country"].items(), key=lambda kv: -kv[1])
    return {"report": report, "apps": apps, "users": users, "assignees": assignees,
            "policy": policies.policy_for(db, dataset_id), "roles": roles, "countries": countries,
            "max_country": max((n for _, n in countries), default=1),
            "is_pi": policies.is_owner_pi(db, principal, dataset_id),
            "is_handler": "handler" in policies.roles_of(db, principal.user.id, dataset_id),
            "decision_tokens": decision_tokens.live_tokens(db, dataset_id), "new_token": None, "error": None}


@router.get("/datasets/{dataset_id}/access")
def owner_page(request: Request, db: Db, principal: WebPrincipal, dataset_id: str) -> Response:
    """The data owner's view of one dataset: numbers, the queue, who decides, and the decision tokens."""
    return templates.TemplateResponse(request, "access_owner.html", _owner_context(db, principal, dataset_id))


@router.post("/datasets/{dataset_id}/access/decision-tokens", dependencies=[CsrfChecked])
def mint_decision_token(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                        dataset_id: str) -> Response:
    """A handler mints a decision token for their system (fresh MFA); shown once, on the page itself."""
    form = posted.form
    days, max_days = str(form.get("days", "")).strip(), hub.settings.security.token_max_days
    try:
        token, plaintext = decision_tokens.mint(
            db, principal, dataset_id, name=str(form.get("name", "")), max_days=max_days,
            days=whole_number(days, "days") if days else 0,  # its range is mint's to say (1 to max_days)
            fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    except MfaRequired as exc:
        return redirect_with(request, f"/login/reauth?next={quote(f'/datasets/{dataset_id}/access')}",
                             f"{exc.detail[:1].upper()}{exc.detail[1:]}: confirm it's you, then mint the decision "
                             "token again.", kind="error")
    except Invalid as exc:
        ctx = _owner_context(db, principal, dataset_id) | {"error": f"{exc.detail[:1].upper()}{exc.detail[1:]}."}
        return templates.TemplateResponse(request, "access_owner.html", ctx, status_code=422)
    ctx = _owner_context(db, principal, dataset_id) | {"new_token": plaintext, "notice": {
        "kind": "ok", "text": f"Decision token “{token.name}” minted: copy it now, it is shown only once."}}
    return templates.TemplateResponse(request, "access_owner.html", ctx)


@router.post("/datasets/{dataset_id}/access/download", dependencies=[CsrfChecked])
def set_download(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                 dataset_id: str) -> Response:
    allowed = posted.form.get("allowed") == "yes"
    try:
        policies.set_applicant_download(db, principal, dataset_id, allowed,
                                        fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    except MfaRequired as exc:
        # back to the owner's page after the second factor (this form's own URL has no page to return to)
        return redirect_with(request, f"/login/reauth?next={quote(f'/datasets/{dataset_id}/access')}",
                             f"{exc.detail[:1].upper()}{exc.detail[1:]}: confirm it's you, then change the "
                             "download policy again.", kind="error")
    return redirect_with(request, f"/datasets/{dataset_id}/access#download-policy",
                         "Approved applicants may now download files." if allowed
                         else "Approved applicants may no longer download files.")
