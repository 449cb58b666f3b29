"""Access API: applications (applicant and handler commands), policies, external owners, entitlements."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field

from ..deps import AccessScope as Access
from ..deps import ApiPrincipal, Db, HubDep, RawBody
from ..openapi import errors
from ..schemas import Body, IsoDate, Out
from . import applications, decisions, events, policies, reports

router = APIRouter(prefix="/api/v1", tags=["access"])


class EventOut(Out):
    seq: int
    type: str
    actor_id: uuid.UUID | None
    at: dt.datetime
    payload: dict[str, Any]


class ApplicationOut(Out):
    id: str
    dataset_id: str
    applicant_id: uuid.UUID
    state: str
    renewal_of: str | None
    answers: dict[str, Any]
    accepted_terms: dict[str, int]
    members: list[str]
    assignee: uuid.UUID | None
    votes: dict[str, bool]
    decision: dict[str, Any] | None
    remarks: list[dict[str, Any]]
    your_roles: list[str]
    events: list[EventOut]


class ApplicationSummary(Out):
    id: str
    dataset_id: str
    applicant_id: uuid.UUID
    state: str
    created_at: dt.datetime
    updated_at: dt.datetime


class NewApplication(Body):
    renewal_of: str | None = Field(default=None, max_length=32)


class Answers(Body):
    answers: dict[str, Any]


class Comment(Body):
    comment: str = Field(default="", max_length=5000)


class Reason(Body):
    reason: str = Field(min_length=1, max_length=5000, description="shown to the applicant; required")


class RemarkIn(Body):
    text: str = Field(min_length=1, max_length=5000)
    public: bool = Field(default=False, description="visible to the applicant")


class Invite(Body):
    email: str = Field(max_length=320)


class ReviewRequest(Body):
    users: list[str] = Field(min_length=1, max_length=20)
    kind: Literal["review", "decision"] = "review"


class Vote(Body):
    approve: bool
    comment: str = Field(default="", max_length=5000)


class Approval(Body):
    ends: IsoDate = Field(description="the entitlement's last day (exclusive)")
    comment: str = Field(default="", max_length=5000)


class Policy(Body):
    workflow: Literal["handler", "quorum"] = "handler"
    quorum: int = Field(default=1, ge=1, le=20)
    max_days: int = Field(default=365, ge=1, le=3650)
    external_owner: str | None = Field(default=None, max_length=200)
    roles: dict[str, list[str]] = Field(default_factory=dict, description="handler/decider/reviewer → users")
    applicant_download: bool = Field(default=False, description=(
        "whether approved applicants (and visa holders) may download to their own machines; "
        "false (the default): in-platform use only"))


class ExternalDecision(Body):
    applicant: str = Field(min_length=1, max_length=255, description="the researcher's e-mail, username or id")
    approve: bool
    ends: IsoDate | None = None
    reason: str = Field(default="", max_length=5000)


class EntitlementOut(Out):
    id: uuid.UUID
    dataset_id: str
    version: int | None
    application_id: str | None
    starts_at: dt.datetime
    ends_at: dt.datetime
    revoked_at: dt.datetime | None


def _out(v: events.Visible) -> ApplicationOut:
    s = v.state
    staff = bool(v.roles - {"applicant"})
    shown = [EventOut.model_validate(e) for e in v.events if staff or events.shown_to_applicant(e.type, e.payload)]
    return ApplicationOut(id=s.id, dataset_id=s.dataset_id, applicant_id=s.applicant_id, state=s.state,
                          renewal_of=s.renewal_of, answers=s.answers, accepted_terms=s.accepted_terms,
                          members=s.members, assignee=s.assignee if staff else None,
                          votes=s.votes if staff else {}, decision=s.decision,
                          remarks=[r for r in s.remarks if staff or r["public"]], your_roles=sorted(v.roles),
                          events=shown)


def _reload(db: Db, principal: Any, application_id: str) -> ApplicationOut:
    return _out(events.load(db, principal, application_id))


@router.post("/datasets/{dataset_id}/applications", response_model=ApplicationOut, status_code=201,
             summary="Start an application for a dataset (a draft); renewals link the earlier one")
def create(db: Db, principal: Access, dataset_id: str, body: NewApplication | None = None) -> ApplicationOut:
    app = applications.create(db, principal, dataset_id, renewal_of=body.renewal_of if body else None)
    return _reload(db, principal, app.id)


@router.get("/applications", response_model=list[ApplicationSummary], summary="My applications")
def mine(db: Db, principal: Access) -> list[ApplicationSummary]:
    return [ApplicationSummary.model_validate(a) for a in applications.my_applications(db, principal)]


@router.get("/applications/queue", response_model=list[ApplicationSummary],
            summary="Applications for datasets I handle, decide or review")
def handler_queue(db: Db, principal: Access, state: str | None = Query(None, max_length=16)
                  ) -> list[ApplicationSummary]:
    return [ApplicationSummary.model_validate(a) for a in applications.queue(db, principal, state=state)]


@router.get("/applications/{application_id}", response_model=ApplicationOut,
            summary="An application: answers, state and its history")
def get(db: Db, principal: Access, application_id: str) -> ApplicationOut:
    return _reload(db, principal, application_id)


@router.put("/applications/{application_id}/answers", response_model=ApplicationOut,
            summary="Save answers (draft or returned); each field is validated by its type")
def save(db: Db, principal: Access, application_id: str, body: Answers) -> ApplicationOut:
    applications.save(db, principal, application_id, body.answers)
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/attachments", status_code=201,
             summary="Attach a document (raw bytes; ?filename=…)",
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}})
def attach(request: Request, principal: Access, data: RawBody, db: Db, application_id: str,
           filename: str = Query(min_length=1, max_length=255)) -> dict[str, str]:
    # The body is read (RawBody) after the token check has committed and before the next query: no
    # transaction is open while it arrives.
    a = applications.attach(db, principal, application_id, filename, request.headers.get("content-type", ""), data)
    return {"id": a.id, "filename": a.filename}


@router.post("/applications/{application_id}/accept-terms", response_model=ApplicationOut,
             summary="Accept the current version of the dataset's terms of use")
def accept_terms(db: Db, principal: Access, application_id: str) -> ApplicationOut:
    applications.accept_terms(db, principal, application_id)
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/invite", response_model=ApplicationOut,
             summary="Invite a co-applicant by e-mail")
def invite(db: Db, principal: Access, application_id: str, body: Invite) -> ApplicationOut:
    applications.invite_member(db, principal, application_id, body.email)
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/submit", response_model=ApplicationOut,
             summary="Submit: every required field must be valid and the terms accepted")
def submit(db: Db, principal: Access, application_id: str) -> ApplicationOut:
    applications.submit(db, principal, application_id)
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/assign", response_model=ApplicationOut,
             summary="Take the application (handlers see who works on what)")
def assign(db: Db, principal: Access, application_id: str) -> ApplicationOut:
    decisions.assign(db, principal, application_id)
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/return", response_model=ApplicationOut,
             summary="Return to the applicant for changes")
def return_(db: Db, principal: Access, application_id: str, body: Comment) -> ApplicationOut:
    decisions.return_(db, principal, application_id, body.comment)
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/remark", response_model=ApplicationOut,
             summary="Remark, internal or visible to the applicant")
def remark(db: Db, principal: Access, application_id: str, body: RemarkIn) -> ApplicationOut:
    decisions.remark(db, principal, application_id, body.text, body.public)
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/request", response_model=ApplicationOut,
             summary="Ask users for a review, or the dataset's named deciders for a decision (vote); "
                     "never anyone who applied")
def request_review(db: Db, principal: Access, application_id: str, body: ReviewRequest) -> ApplicationOut:
    decisions.request_review(db, principal, application_id, body.users, body.kind)
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/vote", response_model=ApplicationOut,
             summary="A decider's vote; a quorum decides (a vote to approve: fresh MFA)")
def vote(db: Db, hub: HubDep, principal: Access, application_id: str, body: Vote) -> ApplicationOut:
    decisions.vote(db, principal, application_id, body.approve, body.comment,
                   fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/approve", response_model=ApplicationOut,
             summary="Approve (handler; fresh MFA): grants an entitlement ending on `ends`")
def approve(db: Db, hub: HubDep, principal: Access, application_id: str, body: Approval) -> ApplicationOut:
    decisions.approve(db, principal, application_id, body.ends, body.comment,
                      fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/reject", response_model=ApplicationOut,
             summary="Reject (handler); the reason is mandatory")
def reject(db: Db, principal: Access, application_id: str, body: Reason) -> ApplicationOut:
    decisions.reject(db, principal, application_id, body.reason)
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/close", response_model=ApplicationOut,
             summary="Close (applicant or handler); ends any entitlement")
def close(db: Db, principal: Access, application_id: str, body: Comment | None = None) -> ApplicationOut:
    decisions.close(db, principal, application_id, body.comment if body else "")
    return _reload(db, principal, application_id)


@router.post("/applications/{application_id}/revoke", response_model=ApplicationOut,
             summary="Revoke an approved application; access ends on the next request")
def revoke(db: Db, principal: Access, application_id: str, body: Reason) -> ApplicationOut:
    decisions.revoke(db, principal, application_id, body.reason)
    return _reload(db, principal, application_id)


@router.put("/datasets/{dataset_id}/access-policy", status_code=204,
            summary="Workflow and handlers/deciders/reviewers of a dataset (the owning project's PI; fresh MFA)")
def set_policy(db: Db, hub: HubDep, principal: Access, dataset_id: str, body: Policy) -> None:
    policies.set_policy(db, principal, dataset_id, workflow=body.workflow, quorum=body.quorum,
                       max_days=body.max_days, external_owner=body.external_owner, roles=body.roles,
                       applicant_download=body.applicant_download,
                       fresh_minutes=hub.settings.security.fresh_mfa_minutes)


@router.post("/external/datasets/{dataset_id}/decisions", response_model=ApplicationOut, responses=errors(403),
             summary="An external data owner's system approves or revokes a researcher's access",
             description="With a decision token for this dataset (minted by a handler on the dataset's access page; "
                         "it has no other use), or a token with the `access` scope, which approves only when minted "
                         "within the last `security.fresh_mfa_minutes` (403 `mfa-required` otherwise).")
def external(db: Db, hub: HubDep, principal: ApiPrincipal, dataset_id: str, body: ExternalDecision
             ) -> ApplicationOut:
    # ApiPrincipal, not Access: a decision token carries no scope; the service checks the credential
    state = decisions.external_decision(db, principal, dataset_id, applicant=body.applicant, approve=body.approve,
                                      ends=body.ends, reason=body.reason,
                                      fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return _reload(db, principal, state.id)


@router.get("/me/entitlements", response_model=list[EntitlementOut], summary="My entitlements, newest first")
def my_entitlements(db: Db, principal: Access) -> list[EntitlementOut]:
    return [EntitlementOut.model_validate(e) for e in applications.entitlements_of(db, principal.user.id)]


@router.get("/datasets/{dataset_id}/access-report", summary="Applications, decisions, entitlements, downloads "
            "and sharing by country for one dataset (its handlers)")
def access_report(db: Db, principal: Access, dataset_id: str) -> dict[str, Any]:
    return reports.dataset_report(db, principal, dataset_id)
