"""Retention API: a dataset's retention (/api/v1/datasets/{id}/retention…), the operator's queue and
deletions (/api/v1/retention/…), and deletion certificates. Outside the owning project (and not an
operator) everything is 404."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import APIRouter, Response
from pydantic import Field

from ..deps import Db, HubDep, ProjectsRead, ProjectsWrite, read_first
from ..errors import NotFound
from ..schemas import Body, Int32, IsoDate, Out
from ..text import content_disposition
from . import service
from .models import Deletion, ProjectClock

router = APIRouter(prefix="/api/v1", tags=["retention"])


class VersionRetentionOut(Out):
    number: int
    state: str
    last_used_at: dt.datetime
    last_use: str
    keep_until: dt.datetime
    extended_until: dt.datetime | None
    extension_reason: str
    legal_hold: str | None
    legal_hold_at: dt.datetime | None
    legal_hold_by: uuid.UUID | None
    deletion: uuid.UUID | None
    deletion_state: str | None


class RetentionOut(Out):
    dataset_id: str
    dataset_class: str
    years: int
    project_last_used_at: dt.datetime | None = Field(description="the owning project's last use of any of its data")
    project_last_use: str | None
    versions: list[VersionRetentionOut]


class DeletionOut(Out):
    id: uuid.UUID
    dataset_id: str
    number: int
    state: str
    reason: str
    requested_by: uuid.UUID
    approved_by: uuid.UUID | None
    approved_at: dt.datetime | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    failure: str | None
    audit_seqs: dict[str, int]
    files: int = Field(description="files deleted with the version (known once it is marked)")
    certificate: bool


class ClassIn(Body):
    dataset_class: str = Field(max_length=40)


class ExtendIn(Body):
    until: IsoDate
    reason: str = Field(max_length=2000)


class ReasonIn(Body):
    reason: str = Field(max_length=2000)


def _deletion_out(d: Deletion) -> DeletionOut:
    return DeletionOut(id=d.id, dataset_id=d.dataset_id, number=d.number, state=d.state, reason=d.reason,
                       requested_by=d.requested_by, approved_by=d.approved_by, approved_at=d.approved_at,
                       created_at=d.created_at, finished_at=d.finished_at, failure=d.failure,
                       audit_seqs=d.audit_seqs, files=len(d.manifest), certificate=d.certificate is not None)


def retention_out(db: Db, hub: HubDep, seen: service.Seen) -> RetentionOut:
    settings = hub.settings.retention
    from .clock import class_of, years_for

    cls = class_of(db, settings, seen.dataset.id)
    project = db.get(ProjectClock, seen.dataset.project_id)
    return RetentionOut(dataset_id=seen.dataset.id, dataset_class=cls, years=years_for(settings, cls),
                        project_last_used_at=project.last_used_at if project else None,
                        project_last_use=project.last_use if project else None, versions=[
        VersionRetentionOut(number=s.version.number, state=s.version.state, last_used_at=s.clock.last_used_at,
                            last_use=s.clock.last_use, keep_until=s.clock.keep_until,
                            extended_until=s.clock.extended_until, extension_reason=s.clock.extension_reason or "",
                            legal_hold=s.clock.hold_reason, legal_hold_at=s.clock.hold_at,
                            legal_hold_by=s.clock.hold_by, deletion=s.deletion.id if s.deletion else None,
                            deletion_state=s.deletion.state if s.deletion else None)
        for s in service.status(db, settings, seen)])


@router.get("/datasets/{dataset_id}/retention", summary="A dataset's retention: last use and keep-until per version")
@read_first
def get_retention(db: Db, hub: HubDep, principal: ProjectsRead, dataset_id: str) -> RetentionOut:
    return retention_out(db, hub, service.open_dataset(db, principal, dataset_id))


@router.put("/datasets/{dataset_id}/retention/class", summary="Set the dataset's retention class (owner, operator)")
def put_class(db: Db, hub: HubDep, principal: ProjectsWrite, dataset_id: str, body: ClassIn) -> RetentionOut:
    service.set_class(db, hub.settings.retention, principal, dataset_id, body.dataset_class)
    return retention_out(db, hub, service.open_dataset(db, principal, dataset_id))


@router.post("/datasets/{dataset_id}/versions/{number}/retention/extend",
             summary="Keep a version longer, with a reason (owner, operator; audited)")
def extend(db: Db, hub: HubDep, principal: ProjectsWrite, dataset_id: str, number: Int32, body: ExtendIn
           ) -> RetentionOut:
    service.extend(db, hub.settings.retention, principal, dataset_id, number, body.until, body.reason)
    return retention_out(db, hub, service.open_dataset(db, principal, dataset_id))


@router.put("/datasets/{dataset_id}/versions/{number}/retention/hold",
            summary="Put a version under legal hold: it cannot be deleted (operator)")
def hold(db: Db, hub: HubDep, principal: ProjectsWrite, dataset_id: str, number: Int32, body: ReasonIn) -> RetentionOut:
    service.set_hold(db, hub.settings.retention, principal, dataset_id, number, body.reason, hold=True)
    return retention_out(db, hub, service.open_dataset(db, principal, dataset_id))


@router.post("/datasets/{dataset_id}/versions/{number}/retention/hold/lift",
             summary="Lift a version's legal hold, with a reason (operator)")
def lift_hold(db: Db, hub: HubDep, principal: ProjectsWrite, dataset_id: str, number: Int32, body: ReasonIn
              ) -> RetentionOut:
    service.set_hold(db, hub.settings.retention, principal, dataset_id, number, body.reason, hold=False)
    return retention_out(db, hub, service.open_dataset(db, principal, dataset_id))


@router.post("/datasets/{dataset_id}/versions/{number}/deletion", status_code=201,
             summary="Request a due version's deletion (owner, operator; fresh MFA); another person approves")
def request_deletion(db: Db, hub: HubDep, principal: ProjectsWrite, dataset_id: str, number: Int32, body: ReasonIn
                     ) -> DeletionOut:
    return _deletion_out(service.request_deletion(db, hub.settings.retention, principal, dataset_id, number,
                                                  body.reason, fresh_minutes=hub.settings.security.fresh_mfa_minutes))


@router.post("/retention/deletions/{deletion_id}/approve",
             summary="Approve a deletion: an operator other than the requester (fresh MFA); the job starts")
def approve_deletion(db: Db, hub: HubDep, principal: ProjectsWrite, deletion_id: uuid.UUID) -> DeletionOut:
    return _deletion_out(service.approve_deletion(db, hub.settings.retention, principal, deletion_id,
                                                  fresh_minutes=hub.settings.security.fresh_mfa_minutes))


@router.get("/retention/deletions/{deletion_id}", summary="A deletion and how far it got")
@read_first
def get_deletion(db: Db, principal: ProjectsRead, deletion_id: uuid.UUID) -> DeletionOut:
    return _deletion_out(service.get_deletion(db, principal, deletion_id)[0])


@router.get("/retention/deletions/{deletion_id}/certificate", summary="The signed deletion certificate (JSON + JWS)",
            responses={200: {"content": {"application/json": {}}}})
@read_first
def certificate(db: Db, principal: ProjectsRead, deletion_id: uuid.UUID) -> Response:
    d = service.get_deletion(db, principal, deletion_id)[0]
    if d.certificate is None:
        raise NotFound("this deletion has no certificate yet")
    return Response(d.certificate, media_type="application/json", headers={
        "Content-Disposition": content_disposition(f"deletion-{d.dataset_id}-v{d.number}.json")})


class QueueRowOut(Out):
    dataset_id: str
    title: str
    number: int
    keep_until: dt.datetime
    last_used_at: dt.datetime
    last_use: str
    legal_hold: str | None
    deletion: uuid.UUID | None
    deletion_state: str | None


class QueueOut(Out):
    due: list[QueueRowOut]
    held: list[QueueRowOut]
    deletions: list[DeletionOut]


def _row(r: service.QueueRow) -> QueueRowOut:
    return QueueRowOut(dataset_id=r.dataset.id, title=r.dataset.title, number=r.version.number,
                       keep_until=r.clock.keep_until, last_used_at=r.clock.last_used_at, last_use=r.clock.last_use,
                       legal_hold=r.clock.hold_reason, deletion=r.deletion.id if r.deletion else None,
                       deletion_state=r.deletion.state if r.deletion else None)


@router.get("/retention/queue", summary="The operator's review queue: versions due soon, legal holds, open deletions")
@read_first
def get_queue(db: Db, hub: HubDep, principal: ProjectsRead) -> QueueOut:
    due, held = service.queue(db, hub.settings.retention, principal)
    return QueueOut(due=[_row(r) for r in due], held=[_row(r) for r in held],
                    deletions=[_deletion_out(d) for d in service.open_deletions(db, principal)])
