"""Project pages: list, create (admins), members, delegated rights, settings, audit."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from ..deps import CsrfChecked, Db, HubDep, PostedForm, WebPrincipal
from ..errors import Invalid
from ..identity.principal import Principal
from ..schemas import INT64_MAX, whole_number
from ..web.templating import redirect_with, templates
from . import service
from .rights import DELEGABLE, RIGHTS
from .settings import SETTINGS

router = APIRouter()


@router.get("/projects")
def projects_page(request: Request, db: Db, principal: WebPrincipal) -> Response:
    mine = service.list_my_projects(db, principal) if principal.has_mfa else []
    everything = service.admin_list_projects(db, principal) if principal.user.is_admin else []
    from ..access import applications as access  # the landing page tells a handler what waits for them

    to_review = len(access.queue(db, principal, state="submitted"))
    return templates.TemplateResponse(request, "projects.html", {
        "to_review": to_review,
        "mine": mine, "everything": everything, "classes": service.PROJECT_CLASSES, "error": None,
        "today": dt.date.today(), "default_end": dt.date.today() + dt.timedelta(days=3 * 365),
        "mfa": principal.has_mfa,
    })


@router.post("/projects", dependencies=[CsrfChecked])
def create_project(request: Request, db: Db, principal: WebPrincipal,
                   slug: Annotated[str, Form(max_length=40)], name: Annotated[str, Form(max_length=200)],
                   pi: Annotated[str, Form(max_length=255)], ethics_ref: Annotated[str, Form(max_length=120)],
                   end_date: Annotated[dt.date, Form()],
                   project_class: Annotated[str, Form(max_length=24)] = "project",
                   quota_tb: Annotated[float, Form(ge=0, le=100_000)] = 2.0,
                   description: Annotated[str, Form(max_length=5000)] = "") -> Response:
    project = service.create_project(db, principal, slug=slug, name=name, pi=pi, ethics_ref=ethics_ref,
                                     project_class=project_class, quota_bytes=int(quota_tb * 1000**4),
                                     end_date=end_date, description=description)
    # The admin who created it sees it only if they are its PI: segmentation applies to admins too.
    is_member = project.pi_id == principal.user.id
    return redirect_with(request, f"/projects/{project.slug}" if is_member else "/projects",
                         f"Project {project.slug} created." if is_member else
                         f"Project {project.slug} created. Only its members (PI: {pi}) see it.")


AUDIT_PAGE = 25
AUDIT_FILTERS = ("action", "actor", "since", "until")


def _day(value: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        raise Invalid(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _seq(value: str) -> int | None:
    """An audit page's bound from its link (``before``, ``after``); anything else is no bound."""
    try:
        return whole_number(value, "sequence", minimum=0, maximum=INT64_MAX)
    except Invalid:
        return None


def _project_context(db: Db, principal: Principal, slug: str, query: dict[str, str] | None = None
                     ) -> dict[str, Any]:
    access = service.open_project(db, principal, slug, managing=True)
    members = service.list_members(db, access)
    settings = service.list_settings(db, access)
    query = query or {}
    filters = {k: query.get(k, "").strip()[:200] for k in AUDIT_FILTERS}
    audit_page, audit_error = None, None
    if "view-audit" in access.rights:
        try:
            since, until = _day(filters["since"]), _day(filters["until"])
        except Invalid as exc:
            audit_error, since, until = exc.detail, None, None
        audit_page = service.project_audit_page(
            db, access, action=filters["action"], actor=filters["actor"], since=since, until=until,
            before=_seq(query.get("before", "")), after=_seq(query.get("after", "")), limit=AUDIT_PAGE)
    kept = {k: v for k, v in filters.items() if v}

    def page_url(**where: int) -> str:
        return f"/projects/{slug}?{urlencode({**kept, **where})}#audit"

    ended = service.ended_refusal(access.project).detail if service.project_ended(access.project) else None
    return {"access": access, "project": access.project, "ended": ended, "members": members, "settings": settings,
            "specs": SETTINGS, "events": audit_page.events if audit_page else [], "audit": audit_page,
            "audit_filters": filters, "audit_error": audit_error, "audit_filtered": bool(kept),
            "newer_url": page_url(after=audit_page.events[0].seq) if audit_page and audit_page.newer
            and audit_page.events else None,
            "older_url": page_url(before=audit_page.events[-1].seq) if audit_page and audit_page.older
            and audit_page.events else None,
            "rights_help": RIGHTS, "delegable": DELEGABLE,
            "roles": ["member", "steward"], "is_pi": access.membership.role == "pi", "error": None}


@router.get("/projects/{slug}")
def project_page(request: Request, db: Db, principal: WebPrincipal, slug: str) -> Response:
    """The project, its members and settings, and one page of its audit log (filters in the query)."""
    return templates.TemplateResponse(request, "project.html",
                                      _project_context(db, principal, slug, dict(request.query_params)))


@router.post("/projects/{slug}/members", dependencies=[CsrfChecked])
def add_member(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str,
               user: Annotated[str, Form(max_length=255)], role: Annotated[str, Form(max_length=40)] = "member",
               ) -> Response:
    access = service.open_project(db, principal, slug, managing=True)
    try:
        service.add_member(db, principal, access, user, role, fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    except Invalid as exc:
        ctx = _project_context(db, principal, slug) | {"error": exc.detail}
        return templates.TemplateResponse(request, "project.html", ctx, status_code=422)
    return redirect_with(request, f"/projects/{slug}#members", f"{user} added as {role}.")


def _member_name(db: Db, user_id: uuid.UUID) -> str:
    found = service.users_of(db, {user_id}).get(user_id)
    return found.display_name if found else "the member"


@router.post("/projects/{slug}/members/{user_id}/role", dependencies=[CsrfChecked])
def change_role(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str, user_id: uuid.UUID,
                role: Annotated[str, Form(max_length=40)]) -> Response:
    access = service.open_project(db, principal, slug, managing=True)
    service.change_role(db, principal, access, user_id, role, fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return redirect_with(request, f"/projects/{slug}#members", f"{_member_name(db, user_id)} is now {role}.")


@router.post("/projects/{slug}/members/{user_id}/rights", dependencies=[CsrfChecked])
def delegate(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal, slug: str,
             user_id: uuid.UUID) -> Response:
    form = posted.form
    access = service.open_project(db, principal, slug, managing=True)
    rights = [str(r) for r in form.getlist("rights")]
    service.delegate_rights(db, principal, access, user_id, rights,
                            fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return redirect_with(request, f"/projects/{slug}#members",
                         f"Rights of {_member_name(db, user_id)}: {', '.join(rights) or 'none delegated'}.")


@router.post("/projects/{slug}/members/{user_id}/remove", dependencies=[CsrfChecked])
def remove_member(request: Request, db: Db, principal: WebPrincipal, slug: str, user_id: uuid.UUID) -> Response:
    access = service.open_project(db, principal, slug, managing=True)
    name = _member_name(db, user_id)
    service.remove_member(db, principal, access, user_id)
    return redirect_with(request, f"/projects/{slug}#members", f"{name} removed from the project.")


@router.post("/projects/{slug}/settings/{key}", dependencies=[CsrfChecked])
def change_setting(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal, slug: str,
                   key: str) -> Response:
    """Booleans post ``value`` = on/off; list settings post ``add`` with the entry's fields, or
    ``remove`` with an index."""
    form = posted.form
    access = service.open_project(db, principal, slug, managing=True)
    spec = SETTINGS.get(key)
    if spec is None:
        raise Invalid(f"no setting {key!r}")
    current = service.get_setting(db, access.project.id, key)
    if isinstance(spec.locked, str):  # a text setting (e.g. a URL): empty locks it again
        value: Any = str(form.get("value", "")).strip()
    elif spec.item_model is None:
        value = str(form.get("value")) == "on"
    elif "remove" in form:
        index = whole_number(str(form.get("remove")), "entry", minimum=0)
        if index >= len(current):
            raise Invalid("no such entry")
        value = [v for i, v in enumerate(current) if i != index]
    else:
        entry = {name: (str(form.get(name)) == "on" if field.annotation is bool else str(form.get(name, "")))
                 for name, field in spec.item_model.model_fields.items()}
        value = [*current, entry]
    try:
        service.change_setting(db, principal, access, key, value,
                               fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    except Invalid as exc:
        ctx = _project_context(db, principal, slug) | {"error": f"{spec.title}: {_first_error(exc)}"}
        return templates.TemplateResponse(request, "project.html", ctx, status_code=422)
    if isinstance(spec.locked, str):
        text = f"{spec.title}: {'set to ' + value if value else 'locked again (none)'}."
    elif spec.item_model is None:
        text = f"{spec.title}: {'opened' if value else 'locked again'}."
    else:
        text = f"{spec.title}: entry {'removed' if 'remove' in form else 'added'}."
    return redirect_with(request, f"/projects/{slug}#settings", text)


def _first_error(exc: Invalid) -> str:
    errors = exc.extra.get("errors") or []
    if isinstance(errors, list) and errors:
        e = errors[0]
        field = " ".join(str(x).replace("_", " ") for x in e.get("loc", ()) if not isinstance(x, int))
        message = str(e.get("msg", "")).removeprefix("Value error, ")
        return f"{field} {message}".strip()
    return exc.detail
