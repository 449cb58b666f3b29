"""Airlock pages: the project's requests, a new request, a request with its checks and reviews, a file's
in-platform preview, the PI's destinations and reviewers, and a recipient's outbox. Forms write through
``service`` in the request's transaction and answer with a flash message."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError

from ..archive.backend import storage_for
from ..archive.downloads import AuditedStream, _stream, download_name
from ..archive.service import list_files
from ..config import AirlockS3Credential, AirlockSftpCredential
from ..db import open_session
from ..deps import CsrfChecked, Db, HubDep, Posted, PostedForm, WebPrincipal, posted_form
from ..errors import Invalid, MfaRequired
from ..identity.principal import Principal
from ..projects import service as projects
from ..text import content_disposition
from ..web.templating import redirect_with, templates
from . import service
from .models import OPEN_STATES, AirlockRequest

router = APIRouter()
STAGE_BYTES = 50 * 1024 * 1024
StageForm = Annotated[Posted, Depends(posted_form(max_file_bytes=STAGE_BYTES))]


def _base(db: Db, principal: Principal, slug: str) -> dict[str, Any]:
    access = projects.open_project(db, principal, slug)
    return {"access": access, "project": access.project, "is_pi": access.membership.role == "pi",
            "reviewer": service.is_reviewer(db, access, principal.user.id)}


@router.get("/projects/{slug}/airlock")
def airlock_page(request: Request, db: Db, principal: WebPrincipal, slug: str) -> Response:
    ctx = _base(db, principal, slug)
    access = ctx["access"]
    users = projects.users_of(db, {r.requester_id for r in service.list_requests(db, access)})
    return templates.TemplateResponse(request, "airlock/list.html", {
        **ctx, "requests": service.list_requests(db, access), "users": users,
        "destinations": service.destinations(db, access.project.id),
        "files": list_files(db, access, state="ready", limit=500) if "export" in access.rights else [],
        "staged": service.staged_files(db, principal, access) if "import" in access.rights else []})


@router.post("/projects/{slug}/airlock/exports", dependencies=[CsrfChecked])
def create_export(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal, slug: str) -> Response:
    form = posted.form
    access = projects.open_project(db, principal, slug)
    r = service.create_export(db, principal, access, file_ids=[str(f) for f in form.getlist("files")],
                              purpose=str(form.get("purpose", "")), destination=str(form.get("destination", "")))
    return redirect_with(request, f"/projects/{slug}/airlock/{r.id}",
                         f"Export request {r.id} submitted: its files are checked before reviewers see it.")


@router.post("/projects/{slug}/airlock/staging", dependencies=[CsrfChecked])
def stage(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str, posted: StageForm) -> Response:
    access = projects.open_project(db, principal, slug)
    upload = posted.files.get("file")
    if upload is None or not upload[2]:
        raise Invalid("choose a file to stage")
    filename, _type, data = upload
    name = (filename or "upload").rsplit("/", 1)[-1]
    service.stage_small(hub, db, principal, access, path=name, data=data)
    return redirect_with(request, f"/projects/{slug}/airlock#import",
                         f"{name} staged and held: request its import once it is ready.")


@router.post("/projects/{slug}/airlock/imports", dependencies=[CsrfChecked])
def create_import(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal, slug: str) -> Response:
    form = posted.form
    access = projects.open_project(db, principal, slug)
    r = service.create_import(db, principal, access, file_ids=[str(f) for f in form.getlist("files")],
                              purpose=str(form.get("purpose", "")))
    return redirect_with(request, f"/projects/{slug}/airlock/{r.id}",
                         f"Import request {r.id} submitted: its files are checked before reviewers see it.")


@router.get("/projects/{slug}/airlock/settings")
def settings_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str) -> Response:
    ctx = _base(db, principal, slug)
    access = ctx["access"]
    ids = set(service.reviewer_ids(db, access.project.id))
    return templates.TemplateResponse(request, "airlock/settings.html", {
        **ctx, "destinations": service.destinations(db, access.project.id),
        "reviewers": list(projects.users_of(db, ids).values()),
        "approvals": projects.get_setting(db, access.project.id, "airlock_approvals"),
        "expiry_days": projects.get_setting(db, access.project.id, "airlock_expiry_days"),
        "sources": projects.get_setting(db, access.project.id, "airlock_sources") or [],
        "may_change": "manage-settings" in access.rights,
        "s3_targets": _s3_targets(hub.settings.airlock.s3, access.project.slug),
        "sftp_targets": _sftp_targets(hub.settings.airlock.sftp, access.project.slug)})


def _s3_targets(s3: dict[str, AirlockS3Credential], slug: str) -> list[tuple[str, str]]:
    """The hub's S3 targets that serve this project, by name, with where they write (never a key)."""
    return [(name, f"{c.bucket}/{c.prefix}" + (f" at {c.endpoint_url}" if c.endpoint_url else ""))
            for name, c in sorted(s3.items()) if c.serves(slug)]


def _sftp_targets(sftp: dict[str, AirlockSftpCredential], slug: str) -> list[tuple[str, str]]:
    """The hub's SFTP targets that serve this project, by name, with where they write (never a key)."""
    return [(name, f"{c.username}@{c.host}:{c.port}, folder {c.directory}")
            for name, c in sorted(sftp.items()) if c.serves(slug)]


@router.post("/projects/{slug}/airlock/settings/destinations", dependencies=[CsrfChecked])
def change_destinations(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                        slug: str) -> Response:
    form = posted.form
    access = projects.open_project(db, principal, slug)
    minutes = hub.settings.security.fresh_mfa_minutes
    if "remove" in form:
        name = str(form.get("remove"))
        service.remove_destination(db, principal, access, name, fresh_minutes=minutes)
        said = f"Destination {name} removed from the allow-list."
    else:
        kind = str(form.get("kind", ""))
        entry = {"kind": kind, "name": str(form.get("name", "")).strip()}
        if kind == "project":
            entry["project"] = str(form.get("target", "")).strip()
        else:
            entry["user"] = str(form.get("target", "")).strip()
        service.add_destination(db, principal, access, entry, fresh_minutes=minutes, configured=hub.settings.airlock)
        said = f"Destination {entry['name']} added to the allow-list."
    return redirect_with(request, f"/projects/{slug}/airlock/settings", said)


@router.post("/projects/{slug}/airlock/settings/destinations/external", dependencies=[CsrfChecked])
def add_external_destination(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                             slug: str) -> Response:
    """An S3 bucket or SFTP server: one of the hub's configured targets that serve this project (chosen, never
    typed: its address, account and host key are the operator's), the partner's crypt4gh key and a folder."""
    form = posted.form
    access = projects.open_project(db, principal, slug)
    kind = str(form.get("kind", ""))
    fields = {"s3": ("prefix",), "sftp": ("directory",)}.get(kind)
    if fields is None:
        raise Invalid("choose an S3 bucket or an SFTP host")
    entry: dict[str, Any] = {"kind": kind, "name": str(form.get("name", "")).strip(),
                             "credential": str(form.get("credential", "")),
                             "public_key": str(form.get("public_key", "")).strip()}
    for field in fields:
        value = str(form.get(field, "")).strip()
        if value:
            entry[field] = value
    service.add_destination(db, principal, access, entry, fresh_minutes=hub.settings.security.fresh_mfa_minutes,
                            configured=hub.settings.airlock)
    return redirect_with(request, f"/projects/{slug}/airlock/settings",
                         f"Destination {entry['name']} ({kind.upper()}: {entry['credential']}) added to the "
                         "allow-list.")


@router.post("/projects/{slug}/airlock/settings/sources", dependencies=[CsrfChecked])
def change_sources(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str,
                   sources: Annotated[str, Form(max_length=4000)] = "") -> Response:
    """The projects whose exports may land in this one (``airlock_sources``): the receiving PI's consent."""
    access = projects.open_project(db, principal, slug)
    slugs = list(dict.fromkeys(s.strip().lower() for s in sources.replace("\n", ",").split(",") if s.strip()))
    projects.change_setting(db, principal, access, "airlock_sources", slugs,
                            fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return redirect_with(request, f"/projects/{slug}/airlock/settings#sources",
                         f"Exports accepted from: {', '.join(slugs)}." if slugs
                         else "No project may export into this one.")


@router.post("/projects/{slug}/airlock/settings/reviewers", dependencies=[CsrfChecked])
def change_reviewers(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str,
                     reviewers: Annotated[str, Form(max_length=2000)] = "",
                     approvals: Annotated[int, Form(ge=1, le=10)] = 2,
                     expiry_days: Annotated[int, Form(ge=1, le=365)] = 14) -> Response:
    access = projects.open_project(db, principal, slug)
    minutes = hub.settings.security.fresh_mfa_minutes
    names = [n.strip() for n in reviewers.replace("\n", ",").split(",") if n.strip()]

    def set_approvals() -> None:
        if projects.get_setting(db, access.project.id, "airlock_approvals") != approvals:
            projects.change_setting(db, principal, access, "airlock_approvals", approvals, fresh_minutes=minutes)

    # fewer approvals first (when the present reviewers allow them), otherwise after the reviewers: each step
    # keeps approvals ≤ reviewers, as the settings' own checks demand
    lowering = (approvals < projects.get_setting(db, access.project.id, "airlock_approvals")
                and approvals <= len(service.reviewer_ids(db, access.project.id)))
    if lowering:
        set_approvals()
    chosen = service.set_reviewers(db, principal, access, names, fresh_minutes=minutes)
    if not lowering:
        set_approvals()
    if projects.get_setting(db, access.project.id, "airlock_expiry_days") != expiry_days:
        projects.change_setting(db, principal, access, "airlock_expiry_days", expiry_days, fresh_minutes=minutes)
    return redirect_with(request, f"/projects/{slug}/airlock/settings",
                         f"{len(chosen)} reviewer(s); {approvals} approval(s) needed; requests expire after "
                         f"{expiry_days} days.")


@router.get("/projects/{slug}/airlock/{request_id}")
def request_page(request: Request, db: Db, principal: WebPrincipal, slug: str, request_id: str) -> Response:
    ctx = _base(db, principal, slug)
    r = service.get_request(db, ctx["access"], request_id)
    reviews = service.request_reviews(db, r)
    users = projects.users_of(db, {r.requester_id, *(v.reviewer_id for v in reviews)})
    return templates.TemplateResponse(request, "airlock/request.html", {
        **ctx, "r": r, "files": service.request_files(db, r), "reviews": reviews, "users": users,
        "approvals": service.approvals(db, r), "mine": r.requester_id == principal.user.id,
        "possible": service.possible_approvals(db, r) if r.state in OPEN_STATES else None,
        "may_look": service.may_look(db, ctx["access"], principal),
        "reviewed": any(v.reviewer_id == principal.user.id for v in reviews)})


@router.get("/projects/{slug}/airlock/{request_id}/files/{file_id}")
def preview_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str, request_id: str,
                 file_id: str) -> Response:
    ctx = _base(db, principal, slug)
    r = service.get_request(db, ctx["access"], request_id)
    shown = service.preview(hub, db, principal, ctx["access"], request_id, file_id)
    af = next(f for f in service.request_files(db, r) if f.file_id == file_id)
    return templates.TemplateResponse(request, "airlock/preview.html", {**ctx, "r": r, "f": af, "shown": shown})


def _confirm_first(request: Request, db: Db, exc: MfaRequired, slug: str, request_id: str, then: str) -> Response:
    """To the second factor, then back to the request's page (the form's own address answers POST only)."""
    db.rollback()
    return redirect_with(request, f"/login/reauth?next={quote(f'/projects/{slug}/airlock/{request_id}')}",
                         f"{exc.detail[:1].upper()}{exc.detail[1:]}: confirm it's you, then {then}.", kind="error")


@router.post("/projects/{slug}/airlock/{request_id}/review", dependencies=[CsrfChecked])
def review(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str, request_id: str,
           decision: Annotated[str, Form(max_length=10)], reason: Annotated[str, Form(max_length=5000)] = ""
           ) -> Response:
    access = projects.open_project(db, principal, slug)
    try:
        r = service.review(db, principal, access, request_id, decision=decision, reason=reason,
                           fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    except MfaRequired as exc:
        return _confirm_first(request, db, exc, slug, request_id, "approve the request again")
    said = {"rejected": f"Request {r.id} rejected.", "approved": f"Request {r.id} approved: the transfer runs now."
            }.get(r.state, f"Approval recorded ({service.approvals(db, r)} of {r.approvals_needed}).")
    return redirect_with(request, f"/projects/{slug}/airlock/{request_id}", said)


@router.post("/projects/{slug}/airlock/{request_id}/override", dependencies=[CsrfChecked])
def override(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str, request_id: str,
             reason: Annotated[str, Form(max_length=5000)] = "") -> Response:
    access = projects.open_project(db, principal, slug)
    try:
        service.override(db, principal, access, request_id, reason=reason,
                         fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    except MfaRequired as exc:
        return _confirm_first(request, db, exc, slug, request_id, "override the checks again")
    return redirect_with(request, f"/projects/{slug}/airlock/{request_id}",
                         "Failed checks overridden: reviewers may approve now.")


def nav_context(request: Request) -> dict[str, object]:
    """The count of requests waiting for the viewer's review, for the top navigation (one query)."""
    viewer_id = getattr(getattr(request.state, "user", None), "id", None)
    if viewer_id is None:
        return {}
    try:
        with open_session(request.app.state.hub.sessions, deferred=True) as session:
            return {"airlock_waiting": service.waiting_count(session, viewer_id)}
    except SQLAlchemyError:  # a count in the navigation never breaks a page (an error page least of all)
        return {}


@router.get("/airlock/reviews")
def reviews_page(request: Request, db: Db, principal: WebPrincipal) -> Response:
    waiting = service.my_reviews(db, principal)
    users = projects.users_of(db, {r.requester_id for r, _slug in waiting})
    return templates.TemplateResponse(request, "airlock/reviews.html", {"waiting": waiting, "users": users})


@router.get("/airlock/outbox")
def outbox_page(request: Request, db: Db, principal: WebPrincipal) -> Response:
    return templates.TemplateResponse(request, "airlock/outbox.html", {"items": service.my_outbox(db, principal)})


@router.get("/airlock/outbox/{item_id}/download")
def outbox_download(db: Db, hub: HubDep, principal: WebPrincipal, item_id: uuid.UUID) -> Response:
    item = service.take_outbox_item(db, principal, item_id)
    r = db.get(AirlockRequest, item.request_id)
    assert r is not None
    header, body_key, body_size, project_id = item.header, item.body_key, item.body_size, r.project_id
    assert body_key is not None  # take_outbox_item refuses a removed file
    name, started = download_name(item.path, False), {"outbox": str(item.id), "request": r.id}
    db.commit()
    length = len(header) + body_size
    return AuditedStream(_stream(header, storage_for(hub), body_key, 0, body_size), hub=hub, actor=principal.actor,
                         project_id=project_id, target=f"outbox:{item_id}", started=started, length=length,
                         ends_as="airlock.outbox.download", headers={
                             "Content-Length": str(length), "Content-Disposition": content_disposition(name),
                             "Cache-Control": "no-store"}, media_type="application/octet-stream")
