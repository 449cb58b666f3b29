"""Airlock API: requests under /api/v1/projects/{slug}/airlock/requests/…, the recipients' outbox under
/api/v1/airlock/outbox. Every project route resolves the project through the caller's membership."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import Field

from ..archive.api import UploadOut, _upload_out
from ..archive.backend import storage_for
from ..archive.downloads import AuditedStream, _stream, download_name
from ..deps import DataRead, DataWrite, Db, HubDep, ProjectsRead, ProjectsWrite, read_first
from ..projects.service import open_project
from ..schemas import Body, Int32, Int64, Out
from ..text import content_disposition
from . import service
from .models import AirlockRequest

router = APIRouter(prefix="/api/v1", tags=["airlock"])


class FileCheckOut(Out):
    file_id: str
    path: str
    size: int
    sha256: str
    check_state: str
    content_type: str | None
    checks: list[dict[str, Any]] | None
    delivered_id: str | None
    removed_at: dt.datetime | None = None


class ReviewOut(Out):
    reviewer_id: uuid.UUID
    decision: str
    reason: str
    created_at: dt.datetime


class RequestOut(Out):
    id: str
    direction: str
    state: str
    purpose: str
    requester_id: uuid.UUID
    destination: dict[str, Any] | None
    approvals_needed: int
    approvals: int = 0
    checks_passed: bool | None
    override_reason: str | None
    reason: str | None
    receipt: dict[str, Any] | None
    expires_at: dt.datetime
    created_at: dt.datetime
    content_removed_at: dt.datetime | None = None  # the sweep deleted its staged or outbox bodies
    short_of_reviewers_at: dt.datetime | None = None  # too few eligible reviewers left (the PI was told)
    files: list[FileCheckOut] = []
    reviews: list[ReviewOut] = []


class ExportIn(Body):
    files: list[str] = Field(default=[], max_length=service.MAX_FILES, description="archive file ids")
    dataset: str | None = Field(default=None, max_length=32, description="a dataset of the project …")
    version: Int32 | None = Field(default=None, ge=1, description="… and its released version: all its files")
    purpose: str = Field(min_length=1, max_length=5000)
    destination: str = Field(min_length=1, max_length=100, description="name of an approved destination")


class ImportIn(Body):
    files: list[str] = Field(min_length=1, max_length=service.MAX_FILES, description="staged upload ids")
    purpose: str = Field(min_length=1, max_length=5000)


class StageIn(Body):
    path: str = Field(min_length=1, max_length=1024)
    size: Int64 = Field(gt=0)
    sha256: str | None = Field(default=None, max_length=64)


class ReviewIn(Body):
    decision: Literal["approve", "reject"]
    reason: str = Field(default="", max_length=5000)


class OverrideIn(Body):
    reason: str = Field(min_length=1, max_length=5000)


class ReviewersIn(Body):
    users: list[str] = Field(max_length=50, description="usernames, e-mails or ids of project members")


class OutboxOut(Out):
    id: uuid.UUID
    request_id: str
    path: str
    key_fingerprint: str
    body_size: int
    plaintext_sha256: str
    stream_sha256: str
    downloaded_at: dt.datetime | None
    removed_at: dt.datetime | None = None
    created_at: dt.datetime


def _out(db: Db, r: AirlockRequest, *, detail: bool = True) -> RequestOut:
    out = RequestOut.model_validate(r)
    out.approvals = service.approvals(db, r)
    if detail:
        out.files = [FileCheckOut.model_validate(f) for f in service.request_files(db, r)]
        out.reviews = [ReviewOut.model_validate(v) for v in service.request_reviews(db, r)]
    return out


@router.get("/projects/{slug}/airlock/requests", response_model=list[RequestOut],
            summary="The project's airlock requests")
def list_requests(db: Db, principal: ProjectsRead, slug: str, state: str | None = None) -> list[RequestOut]:
    access = open_project(db, principal, slug)
    return [_out(db, r, detail=False) for r in service.list_requests(db, access, state=state)]


@router.get("/projects/{slug}/airlock/requests/{request_id}", response_model=RequestOut,
            summary="One request: files with their checks, reviews, receipt")
def get_request(db: Db, principal: ProjectsRead, slug: str, request_id: str) -> RequestOut:
    access = open_project(db, principal, slug)
    return _out(db, service.get_request(db, access, request_id))


@router.post("/projects/{slug}/airlock/exports", response_model=RequestOut, status_code=201,
             summary="Request an export to an approved destination (export right)")
def create_export(db: Db, principal: DataWrite, slug: str, body: ExportIn) -> RequestOut:
    access = open_project(db, principal, slug)
    r = service.create_export(db, principal, access, file_ids=body.files, purpose=body.purpose,
                              destination=body.destination, dataset_id=body.dataset, version=body.version)
    return _out(db, r)


@router.post("/projects/{slug}/airlock/staging", response_model=UploadOut, status_code=201,
             summary="Open an upload staged for import (held; send parts to /uploads/{id}/parts/n)")
@read_first  # the multipart upload is opened in object storage before any write lock is taken
def stage_upload(db: Db, hub: HubDep, principal: DataWrite, slug: str, body: StageIn) -> UploadOut:
    access = open_project(db, principal, slug)
    f = service.stage_upload(db, principal, access, storage_for(hub), path=body.path, size=body.size,
                             sha256=body.sha256)
    return _upload_out(f, [], hub.settings.archive.part_size)


@router.post("/projects/{slug}/airlock/imports", response_model=RequestOut, status_code=201,
             summary="Request the import of staged uploads (import right)")
def create_import(db: Db, principal: DataWrite, slug: str, body: ImportIn) -> RequestOut:
    access = open_project(db, principal, slug)
    return _out(db, service.create_import(db, principal, access, file_ids=body.files, purpose=body.purpose))


@router.post("/projects/{slug}/airlock/requests/{request_id}/reviews", response_model=RequestOut,
             summary="Approve (fresh MFA) or reject (named reviewers; never one's own request)")
def review(db: Db, hub: HubDep, principal: ProjectsWrite, slug: str, request_id: str, body: ReviewIn) -> RequestOut:
    access = open_project(db, principal, slug)
    r = service.review(db, principal, access, request_id, decision=body.decision, reason=body.reason,
                       fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return _out(db, r)


@router.post("/projects/{slug}/airlock/requests/{request_id}/override", response_model=RequestOut,
             summary="Let a request whose checks failed be approved (PI, not their own; fresh MFA, a reason)")
def override(db: Db, hub: HubDep, principal: ProjectsWrite, slug: str, request_id: str,
             body: OverrideIn) -> RequestOut:
    access = open_project(db, principal, slug)
    r = service.override(db, principal, access, request_id, reason=body.reason,
                         fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return _out(db, r)


@router.get("/projects/{slug}/airlock/requests/{request_id}/files/{file_id}/preview",
            summary="The first rows or text of a file, in-platform (reviewers and the PI; audited)")
def preview(db: Db, hub: HubDep, principal: DataRead, slug: str, request_id: str, file_id: str) -> dict[str, Any]:
    access = open_project(db, principal, slug)
    return service.preview(hub, db, principal, access, request_id, file_id)


@router.put("/projects/{slug}/airlock/reviewers", response_model=list[uuid.UUID],
            summary="Name the project's airlock reviewers (manage-settings, fresh MFA)")
def set_reviewers(db: Db, hub: HubDep, principal: ProjectsWrite, slug: str, body: ReviewersIn) -> list[uuid.UUID]:
    access = open_project(db, principal, slug)
    return service.set_reviewers(db, principal, access, body.users,
                                 fresh_minutes=hub.settings.security.fresh_mfa_minutes)


class WaitingOut(RequestOut):
    project: str


@router.get("/airlock/reviews", response_model=list[WaitingOut],
            summary="Requests waiting for my review, across my projects")
def my_reviews(db: Db, principal: ProjectsRead) -> list[WaitingOut]:
    return [WaitingOut.model_validate({**_out(db, r, detail=False).model_dump(), "project": slug})
            for r, slug in service.my_reviews(db, principal)]


@router.get("/airlock/outbox", response_model=list[OutboxOut], summary="Files exported to me")
def outbox(db: Db, principal: DataRead) -> list[OutboxOut]:
    return [OutboxOut.model_validate(i) for i in service.my_outbox(db, principal)]


@router.get("/airlock/outbox/{item_id}/content", summary="Download an outbox file once (crypt4gh, to my key)",
            response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
def outbox_content(db: Db, hub: HubDep, principal: DataRead, item_id: uuid.UUID) -> Response:
    item = service.take_outbox_item(db, principal, item_id)
    r = db.get(AirlockRequest, item.request_id)
    assert r is not None
    header, body_key, body_size, project_id = item.header, item.body_key, item.body_size, r.project_id
    assert body_key is not None  # take_outbox_item refuses a removed file
    started = {"outbox": str(item.id), "request": r.id}
    name, digest = download_name(item.path, False), item.stream_sha256
    db.commit()  # taken (and audited) before the first byte leaves
    length = len(header) + body_size
    return AuditedStream(_stream(header, storage_for(hub), body_key, 0, body_size), hub=hub, actor=principal.actor,
                         project_id=project_id, target=f"outbox:{item_id}", started=started, length=length,
                         ends_as="airlock.outbox.download", headers={
                             "Content-Length": str(length), "Content-Disposition": content_disposition(name),
                             "Cache-Control": "no-store", "X-Stream-SHA256": digest},
                         media_type="application/octet-stream")
