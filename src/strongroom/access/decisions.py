"""The data owner's side of an application: handlers take, return, approve, reject and revoke,
reviewers and deciders remark and vote (a quorum of the dataset's named deciders decides), and an
external owner's system approves or revokes through the API. Approval creates the applicant's
entitlement. Nobody takes part in deciding an application they applied for (``events.applied_for``):
refused with 403 and audited as ``access.decision.refused``.

Whatever opens data needs a second factor within ``fresh_minutes`` (``security.fresh_mfa_minutes``): an
approval, a vote for one (it counts towards the quorum) and an external approval (or, for a machine, a decision
token bound to the dataset: ``decision_tokens``). A stolen session cookie or an old API token must not open a
dataset. What closes data (reject, return, revoke, close, a vote against) never waits for a second factor."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive.models import Dataset
from ..archive.service import new_accession
from ..audit import service as audit
from ..db import utcnow
from ..errors import Conflict, Forbidden, Invalid, MfaRequired, NotFound
from ..identity.models import User
from ..identity.principal import Principal
from ..identity.service import require_fresh_mfa
from . import decision_tokens
from .events import (
    FINAL_STATES,
    OWN_APPLICATION,
    ApplicationState,
    Visible,
    append,
    applied_for,
    events_of,
    load,
    replay,
    require,
    require_staff_mfa,
    require_state,
)
from .models import Application, ApplicationEvent, DatasetRole, Entitlement
from .notices import notify_applicant
from .policies import current_form, policy_for, roles_of


def _record_refusal(session: Session, principal: Principal, dataset_id: str, action: str, target: str,
                    reason: str) -> None:
    """Record a refused decision. The refusal is committed at once so it stays on record although the
    request then fails and rolls back (as SFTP's refused reads do); a refusal comes before the command
    has written anything."""
    ds = session.get(Dataset, dataset_id)
    audit.record(session, principal.actor, "access.decision.refused", outcome="denied",
                 project_id=ds.project_id if ds else None, target=target,
                 details={"action": action, "reason": reason})
    session.commit()


def _refuse(session: Session, principal: Principal, dataset_id: str, action: str, target: str, reason: str
            ) -> Forbidden:
    """Record a refused decision and return the error to raise."""
    _record_refusal(session, principal, dataset_id, action, target, reason)
    return Forbidden(reason)


def _require_fresh(session: Session, principal: Principal, dataset_id: str, action: str, target: str,
                   fresh_minutes: int) -> None:
    """A second factor within the last ``fresh_minutes`` before anything that opens data. A refusal is recorded
    like the other refused decisions (a stale credential trying to open data may be a stolen one)."""
    try:
        require_fresh_mfa(principal, fresh_minutes)
    except MfaRequired:
        _record_refusal(session, principal, dataset_id, action, target,
                        f"no second factor within the last {fresh_minutes} minutes")
        raise


def _load_as(session: Session, principal: Principal, application_id: str, action: str, *roles: str) -> Visible:
    """The application for one of the data owner's commands. One rule for all of them, rejecting and
    revoking included: whoever applied for it (applicant or invited member) takes no part in handling
    or deciding it. Rejecting one's own application would be harmless, but a single rule is simpler to
    trust and to audit than a list of exceptions, and the applicant can always withdraw (close) it."""
    v = load(session, principal, application_id)
    if not v.roles & set(roles) and v.withheld & set(roles):
        raise _refuse(session, principal, v.app.dataset_id, action, f"application:{v.app.id}", OWN_APPLICATION)
    require(v, *roles)
    return v


def named_deciders(session: Session, dataset_id: str) -> set[uuid.UUID]:
    """The deciders the dataset's access policy names: the only people whose votes count."""
    return set(session.scalars(select(DatasetRole.user_id).where(DatasetRole.dataset_id == dataset_id,
                                                                 DatasetRole.role == "decider")))


def assign(session: Session, principal: Principal, application_id: str) -> ApplicationState:
    """A handler takes the application: other handlers see who is working on it."""
    v = _load_as(session, principal, application_id, "assign", "handler")
    return append(session, principal, v.app, "assigned", {"handler_id": str(principal.user.id)})


def return_(session: Session, principal: Principal, application_id: str, comment: str) -> ApplicationState:
    v = _load_as(session, principal, application_id, "return", "handler")
    require_state(v, "submitted")
    state = append(session, principal, v.app, "returned", {"comment": comment.strip()[:5000]})
    notify_applicant(session, v.app, "application_returned", comment=comment)
    return state


def remark(session: Session, principal: Principal, application_id: str, text: str, public: bool
           ) -> ApplicationState:
    v = _load_as(session, principal, application_id, "remark", "handler", "reviewer", "decider")
    if not text.strip():
        raise Invalid("a remark needs text")
    state = append(session, principal, v.app, "remarked", {"text": text.strip()[:5000], "public": public})
    if public:
        notify_applicant(session, v.app, "remark", comment=text)
    return state


def request_review(session: Session, principal: Principal, application_id: str, users: list[str],
                   kind: str = "review") -> ApplicationState:
    """Ask for a review (anyone the handler trusts) or for a decision (a vote: only the dataset's named
    deciders, so a handler cannot pack a quorum); never from someone who applied for the application."""
    from ..identity.service import find_user

    v = _load_as(session, principal, application_id, f"request-{kind}", "handler")
    require_state(v, "submitted")
    deciders = named_deciders(session, v.app.dataset_id) if kind == "decision" else set()
    ids = []
    for ref in users:
        user = find_user(session, ref)
        if user is None:
            raise Invalid(f"no user {ref!r}")
        if applied_for(v.app, v.state, user):
            raise _refuse(session, principal, v.app.dataset_id, f"request-{kind}", f"application:{v.app.id}",
                          f"{ref} applied for this application (or was invited to it): they cannot review or "
                          "decide it")
        if kind == "decision" and user.id not in deciders:
            raise _refuse(session, principal, v.app.dataset_id, "request-decision", f"application:{v.app.id}",
                          f"{ref} is not a named decider of this dataset: only those the access policy names "
                          "vote (the owning project's PI names them)")
        ids.append(str(user.id))
    key = "reviewer_ids" if kind == "review" else "decider_ids"
    return append(session, principal, v.app, f"{kind}_requested" if kind == "review" else "decision_requested",
                   {key: ids})


def vote(session: Session, principal: Principal, application_id: str, approve: bool, comment: str = "",
         ends: dt.date | None = None, *, fresh_minutes: int) -> ApplicationState:
    """The dataset's named deciders vote; with a quorum workflow, enough approvals approve and enough
    rejections reject. Only the votes of named deciders who did not apply count. A vote to approve needs
    a fresh second factor, whether or not it completes the quorum: it counts towards it."""
    v = _load_as(session, principal, application_id, "vote", "decider")
    require_state(v, "submitted")
    named = named_deciders(session, v.app.dataset_id)
    if principal.user.id not in named:  # e.g. asked before the policy stopped naming them
        raise _refuse(session, principal, v.app.dataset_id, "vote", f"application:{v.app.id}",
                      "only the dataset's named deciders vote: the access policy does not name you")
    if approve:
        _require_fresh(session, principal, v.app.dataset_id, "vote", f"application:{v.app.id}", fresh_minutes)
    state = append(session, principal, v.app, "voted", {"approve": approve, "comment": comment[:5000]})
    policy = policy_for(session, v.app.dataset_id)
    deciders = {u.id for u in session.scalars(select(User).where(User.id.in_(named)))
                if not applied_for(v.app, state, u)}
    counted = [a for voter, a in state.votes.items() if uuid.UUID(voter) in deciders]
    approvals = sum(1 for a in counted if a)
    rejections = sum(1 for a in counted if not a)
    if policy.workflow == "quorum":
        if approvals >= policy.quorum:
            end = ends or (dt.date.today() + dt.timedelta(days=policy.max_days))
            return _approve(session, None, v.app, end, "approved by quorum vote")
        # Only rejections make the quorum unreachable; too few eligible deciders (one applied) leaves the
        # application open for the PI to name another decider, or for a handler to return or reject it.
        if rejections and len(deciders) - rejections < policy.quorum:
            return _reject(session, None, v.app, "rejected by the deciders' vote")
    return state


def approve(session: Session, principal: Principal, application_id: str, ends: dt.date, comment: str = "", *,
            fresh_minutes: int) -> ApplicationState:
    v = _load_as(session, principal, application_id, "approve", "handler")
    require_state(v, "submitted")
    policy = policy_for(session, v.app.dataset_id)
    if policy.workflow == "quorum":
        raise Conflict("this dataset decides by the deciders' quorum vote")
    _require_fresh(session, principal, v.app.dataset_id, "approve", f"application:{v.app.id}", fresh_minutes)
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
    v = _load_as(session, principal, application_id, "reject", "handler")
    require_state(v, "submitted")
    return _reject(session, principal, v.app, reason)


def _reject(session: Session, principal: Principal | None, app: Application, reason: str) -> ApplicationState:
    if not reason or not reason.strip():
        raise Invalid("a rejection needs a reason the applicant can read")
    state = append(session, principal, app, "rejected", {"reason": reason.strip()[:5000]})
    notify_applicant(session, app, "application_rejected", reason=reason)
    return state


def close(session: Session, principal: Principal, application_id: str, comment: str = "") -> ApplicationState:
    v = _load_as(session, principal, application_id, "close", "handler", "applicant")
    if v.state.state in FINAL_STATES:
        raise Conflict(f"the application is already {v.state.state}")
    end_entitlements(session, v.app.id)
    return append(session, principal, v.app, "closed", {"comment": comment[:5000]})


def revoke(session: Session, principal: Principal, application_id: str, reason: str) -> ApplicationState:
    v = _load_as(session, principal, application_id, "revoke", "handler")
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
                      ends: dt.date | None, reason: str = "", fresh_minutes: int) -> ApplicationState:
    """The external owner's system (a handler of the dataset) approves or revokes. Without an open
    application one is recorded on the user's behalf, so the hub's history shows what the owner decided.
    The caller never decides about themselves, nor about an application they were invited to.

    Its credential: a decision token bound to this dataset (``decision_tokens``: a machine cannot give a
    second factor), or a token with the `access` scope, which approves only with a fresh second factor
    (a person's token minted in the last ``fresh_minutes``); revoking never needs one."""
    from ..identity.service import find_user

    bound = decision_tokens.decides_for(session, principal, dataset_id)
    if not bound and not principal.can("access"):
        raise Forbidden("this token lacks the 'access' scope (a decision token decides only for the dataset it "
                        "was minted for)")
    if "handler" not in roles_of(session, principal.user.id, dataset_id):
        raise NotFound("no such dataset")
    require_staff_mfa(principal)  # like every staff command (a token stands for one: its minting)
    if approve and not bound:
        try:
            _require_fresh(session, principal, dataset_id, "external-approve", f"dataset:{dataset_id}",
                           fresh_minutes)
        except MfaRequired as exc:
            raise MfaRequired(f"{exc.detail}; an external owner's system approves with a decision token for "
                              "this dataset (minted on its access page)", **exc.extra) from None
    user = find_user(session, applicant)
    if user is None:
        raise Invalid(f"no user {applicant!r}; they must log in to the hub once")
    app = session.scalar(select(Application).where(Application.applicant_id == user.id,
                                                   Application.dataset_id == dataset_id,
                                                   Application.state.in_(("draft", "submitted", "returned",
                                                                          "approved")))
                         .order_by(Application.created_at.desc()).limit(1))
    action = "external-approve" if approve else "external-revoke"
    if user.id == principal.user.id:
        raise _refuse(session, principal, dataset_id, action, f"dataset:{dataset_id}",
                      "you cannot decide your own access: another handler of the dataset (or the owner's "
                      "system, with its own account) does")
    if app is not None and applied_for(app, replay(events_of(session, app.id)), principal.user):
        raise _refuse(session, principal, dataset_id, action, f"application:{app.id}", OWN_APPLICATION)
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
