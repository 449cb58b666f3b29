"""The data owner's side of an application: handlers take, return, approve, reject and revoke,
reviewers and deciders remark and vote (a quorum of votes decides), and an external owner's system
approves or revokes through the API. Approval creates the applicant's entitlement."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive.service import new_accession
from ..db import utcnow
from ..errors import Conflict, Invalid, NotFound
from ..identity.principal import Principal
from .events import FINAL_STATES, ApplicationState, append, load, require, require_state
from .models import Application, ApplicationEvent, DatasetRole, Entitlement
from .notices import notify_applicant
from .policies import current_form, policy_for, roles_of


def assign(session: Session, principal: Principal, application_id: str) -> ApplicationState:
    """A handler takes the application: other handlers see who is working on it."""
    v = load(session, principal, application_id)
    require(v, "handler")
    return append(session, principal, v.app, "assigned", {"handler_id": str(principal.user.id)})


def return_(session: Session, principal: Principal, application_id: str, comment: str) -> ApplicationState:
    v = load(session, principal, application_id)
    require(v, "handler")
    require_state(v, "submitted")
    state = append(session, principal, v.app, "returned", {"comment": comment.strip()[:5000]})
    notify_applicant(session, v.app, "application_returned", comment=comment)
    return state


def remark(session: Session, principal: Principal, application_id: str, text: str, public: bool
           ) -> ApplicationState:
    v = load(session, principal, application_id)
    require(v, "handler", "reviewer", "decider")
    if not text.strip():
        raise Invalid("a remark needs text")
    state = append(session, principal, v.app, "remarked", {"text": text.strip()[:5000], "public": public})
    if public:
        notify_applicant(session, v.app, "remark", comment=text)
    return state


def request_review(session: Session, principal: Principal, application_id: str, users: list[str],
                   kind: str = "review") -> ApplicationState:
    from ..identity.service import find_user

    v = load(session, principal, application_id)
    require(v, "handler")
    require_state(v, "submitted")
    ids = []
    for ref in users:
        user = find_user(session, ref)
        if user is None:
            raise Invalid(f"no user {ref!r}")
        ids.append(str(user.id))
    key = "reviewer_ids" if kind == "review" else "decider_ids"
    return append(session, principal, v.app, f"{kind}_requested" if kind == "review" else "decision_requested",
                   {key: ids})


def vote(session: Session, principal: Principal, application_id: str, approve: bool, comment: str = "",
         ends: dt.date | None = None) -> ApplicationState:
    """Deciders vote; with a quorum workflow, enough approvals approve and enough rejections reject."""
    v = load(session, principal, application_id)
    require(v, "decider")
    require_state(v, "submitted")
    state = append(session, principal, v.app, "voted", {"approve": approve, "comment": comment[:5000]})
    policy = policy_for(session, v.app.dataset_id)
    deciders = set(session.scalars(select(DatasetRole.user_id).where(
        DatasetRole.dataset_id == v.app.dataset_id, DatasetRole.role == "decider"))) | {
        uuid.UUID(d) for d in state.deciders}
    approvals = sum(1 for a in state.votes.values() if a)
    rejections = sum(1 for a in state.votes.values() if not a)
    if policy.workflow == "quorum":
        if approvals >= policy.quorum:
            end = ends or (dt.date.today() + dt.timedelta(days=policy.max_days))
            return _approve(session, None, v.app, end, "approved by quorum vote")
        if len(deciders) - rejections < policy.quorum:
            return _reject(session, None, v.app, "rejected by the deciders' vote")
    return state


def approve(session: Session, principal: Principal, application_id: str, ends: dt.date, comment: str = ""
            ) -> ApplicationState:
    v = load(session, principal, application_id)
    require(v, "handler")
    require_state(v, "submitted")
    policy = policy_for(session, v.app.dataset_id)
    if policy.workflow == "quorum":
        raise Conflict("this dataset decides by the deciders' quorum vote")
    return _approve(session, principal, v.app, ends, comment)


def _approve(session: Session, principal: Principal | None, app: Application, ends: dt.date, comment: str
             ) -> ApplicationState:
    policy = policy_for(session, app.dataset_id)
    today = dt.date.today()
    if ends <= today:
        raise Invalid("the entitlement must end in the future")
    if ends > today + dt.timedelta(days=policy.max_days):
        raise Invalid(f"this dataset grants at most {policy.max_days} days")
    state = append(session, principal, app, "approved", {"ends": ends.isoformat(), "comment": comment[:5000]})
    now = utcnow()
    session.add(Entitlement(user_id=app.applicant_id, dataset_id=app.dataset_id, version=None,
                            application_id=app.id, starts_at=now,
                            ends_at=dt.datetime.combine(ends, dt.time(), tzinfo=dt.UTC)))
    if app.renewal_of:  # the renewal replaces the old grant; history stays in both applications
        for old in session.scalars(select(Entitlement).where(Entitlement.application_id == app.renewal_of,
                                                             Entitlement.revoked_at.is_(None))):
            old.ends_at = min(old.ends_at, now)
    notify_applicant(session, app, "application_approved", ends=ends.isoformat())
    return state


def reject(session: Session, principal: Principal, application_id: str, reason: str) -> ApplicationState:
    v = load(session, principal, application_id)
    require(v, "handler")
    require_state(v, "submitted")
    return _reject(session, principal, v.app, reason)


def _reject(session: Session, principal: Principal | None, app: Application, reason: str) -> ApplicationState:
    if not reason or not reason.strip():
        raise Invalid("a rejection needs a reason the applicant can read")
    state = append(session, principal, app, "rejected", {"reason": reason.strip()[:5000]})
    notify_applicant(session, app, "application_rejected", reason=reason)
    return state


def close(session: Session, principal: Principal, application_id: str, comment: str = "") -> ApplicationState:
    v = load(session, principal, application_id)
    require(v, "handler", "applicant")
    if v.state.state in FINAL_STATES:
        raise Conflict(f"the application is already {v.state.state}")
    end_entitlements(session, v.app.id)
    return append(session, principal, v.app, "closed", {"comment": comment[:5000]})


def revoke(session: Session, principal: Principal, application_id: str, reason: str) -> ApplicationState:
    v = load(session, principal, application_id)
    require(v, "handler")
    require_state(v, "approved")
    if not reason.strip():
        raise Invalid("a revocation needs a reason")
    end_entitlements(session, v.app.id)
    state = append(session, principal, v.app, "revoked", {"reason": reason.strip()[:5000]})
    notify_applicant(session, v.app, "application_revoked", reason=reason)
    return state


def end_entitlements(session: Session, application_id: str) -> None:
    for e in session.scalars(select(Entitlement).where(Entitlement.application_id == application_id,
                                                       Entitlement.revoked_at.is_(None))):
        e.revoked_at = utcnow()


def external_decision(session: Session, principal: Principal, dataset_id: str, *, applicant: str, approve: bool,
                      ends: dt.date | None, reason: str = "") -> ApplicationState:
    """The external owner's system (a handler of the dataset, using a token with the `access`
    scope) approves or revokes. Without an open application one is recorded on the user's
    behalf, so the hub's history shows what the owner decided."""
    from ..identity.service import find_user

    if "handler" not in roles_of(session, principal.user.id, dataset_id):
        raise NotFound("no such dataset")
    user = find_user(session, applicant)
    if user is None:
        raise Invalid(f"no user {applicant!r}; they must log in to the hub once")
    app = session.scalar(select(Application).where(Application.applicant_id == user.id,
                                                   Application.dataset_id == dataset_id,
                                                   Application.state.in_(("draft", "submitted", "returned",
                                                                          "approved")))
                         .order_by(Application.created_at.desc()).limit(1))
    if approve:
        if ends is None:
            raise Invalid("an approval needs an end date")
        if app is None or app.state == "approved":
            form = current_form(session, policy_for(session, dataset_id).form_name)
            app = Application(id=new_accession("SRA"), applicant_id=user.id, dataset_id=dataset_id, state="draft")
            session.add(app)
            session.flush()
            session.add(ApplicationEvent(application_id=app.id, seq=1, type="created", actor_id=user.id,
                                         payload={"dataset_id": dataset_id, "form_version_id": form.id,
                                                  "external": True}))
            session.flush()
        if app.state != "submitted":
            append(session, principal, app, "submitted", {"external": True})
        return _approve(session, principal, app, ends, reason or "approved by the data owner")
    if app is None or app.state != "approved":
        raise NotFound("no approved application of that user for this dataset")
    end_entitlements(session, app.id)
    return append(session, principal, app, "revoked", {"reason": reason or "revoked by the data owner"})
