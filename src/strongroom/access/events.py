"""Applications are event-sourced: every command appends a typed event, and the application's
state is the fold of its events (``replay``). The ``Application`` row caches that state for queries
and is rewritten from the events on every command (``append``). ``load`` gives an application to
those who may see it (the applicant; handlers, deciders and reviewers of its dataset) with their
roles; everyone else gets NotFound. Whoever applied for an application (its applicant or a member
they invited) never holds a handler, decider or reviewer role on it: separation of duties. Handling,
deciding and reviewing need a login with a second factor (``require_staff_mfa``); applying does not."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..archive.models import Dataset
from ..audit import service as audit
from ..db import utcnow
from ..errors import Conflict, Forbidden, MfaRequired, NotFound
from ..identity.models import User
from ..identity.principal import Principal
from .models import Application, ApplicationEvent
from .policies import roles_of

OPEN_STATES = ("draft", "submitted", "returned")
FINAL_STATES = ("rejected", "closed", "revoked")
STAFF_ROLES = frozenset({"handler", "decider", "reviewer"})
OWN_APPLICATION = ("you applied for this application (or were invited to it), so you cannot handle, review or "
                   "decide it: another handler or decider of the dataset does; its owning project's PI names "
                   "them in the access policy")
# what the data owner's side keeps to itself: who handles, who was asked to review or decide, the votes
STAFF_ONLY_EVENTS = frozenset({"assigned", "review_requested", "decision_requested", "voted"})
STAFF_MFA = "handling, reviewing and deciding applications need a login with multi-factor authentication"


@dataclass
class ApplicationState:
    id: str
    applicant_id: uuid.UUID
    dataset_id: str
    form_version_id: int
    state: str = "draft"
    answers: dict[str, Any] = field(default_factory=dict)
    accepted_terms: dict[str, int] = field(default_factory=dict)  # user id → terms version id
    members: list[str] = field(default_factory=list)  # invited e-mails
    assignee: uuid.UUID | None = None
    votes: dict[str, bool] = field(default_factory=dict)  # decider id → approve?
    reviewers: list[str] = field(default_factory=list)
    deciders: list[str] = field(default_factory=list)
    remarks: list[dict[str, Any]] = field(default_factory=list)
    decision: dict[str, Any] | None = None
    submitted_at: dt.datetime | None = None
    decided_at: dt.datetime | None = None
    renewal_of: str | None = None


def replay(events: list[ApplicationEvent]) -> ApplicationState:
    """The application's state: a pure function of its events."""
    first = events[0]
    assert first.type == "created"
    s = ApplicationState(id=first.application_id, applicant_id=first.actor_id,  # type: ignore[arg-type]
                         dataset_id=first.payload["dataset_id"], form_version_id=first.payload["form_version_id"],
                         renewal_of=first.payload.get("renewal_of"))
    for e in events[1:]:
        p = e.payload
        match e.type:
            case "saved":
                s.answers = p["answers"]
            case "terms_accepted":
                s.accepted_terms[p["user_id"]] = p["terms_version_id"]
            case "member_invited":
                s.members.append(p["email"])
            case "submitted":
                s.state, s.submitted_at, s.votes = "submitted", e.at, {}
            case "returned":
                s.state = "returned"
            case "assigned":
                s.assignee = uuid.UUID(p["handler_id"]) if p.get("handler_id") else None
            case "review_requested":
                s.reviewers = sorted(set(s.reviewers) | set(p["reviewer_ids"]))
            case "decision_requested":
                s.deciders = sorted(set(s.deciders) | set(p["decider_ids"]))
            case "voted":
                s.votes[str(e.actor_id)] = p["approve"]
            case "remarked":
                s.remarks.append({"by": str(e.actor_id), "text": p["text"], "public": p["public"],
                                  "at": e.at.isoformat()})
            case "approved":
                s.state, s.decided_at = "approved", e.at
                s.decision = {"approved": True, "ends": p["ends"], "by": str(e.actor_id) if e.actor_id else None,
                              "comment": p.get("comment", "")}
            case "rejected":
                s.state, s.decided_at = "rejected", e.at
                s.decision = {"approved": False, "reason": p["reason"]}
            case "closed":
                s.state = "closed"
            case "revoked":
                s.state = "revoked"
    return s


@dataclass
class Visible:
    app: Application
    state: ApplicationState
    roles: set[str]  # the caller's roles: applicant, or handler, decider, reviewer
    events: list[ApplicationEvent]
    # staff roles the caller holds on the dataset but not on this application, because they applied for it
    withheld: set[str] = field(default_factory=set)


def applied_for(app: Application, state: ApplicationState, user: User) -> bool:
    """Whether ``user`` applied for the application: its applicant, or a member the applicant invited
    (members are invited by e-mail, so they are matched by their account's e-mail)."""
    if user.id == app.applicant_id:
        return True
    invited = {email.casefold() for email in state.members}
    return user.email is not None and user.email.casefold() in invited


def events_of(session: Session, application_id: str) -> list[ApplicationEvent]:
    return list(session.scalars(select(ApplicationEvent).where(ApplicationEvent.application_id == application_id)
                                .order_by(ApplicationEvent.seq)))


def load(session: Session, principal: Principal, application_id: str) -> Visible:
    app = session.get(Application, application_id)
    if app is None:
        raise NotFound("no such application")
    roles = roles_of(session, principal.user.id, app.dataset_id)
    events = events_of(session, application_id)
    state = replay(events)
    if str(principal.user.id) in state.reviewers:
        roles.add("reviewer")
    if str(principal.user.id) in state.deciders:
        roles.add("decider")
    withheld: set[str] = set()
    if applied_for(app, state, principal.user):
        # A DAC member may apply for their own dataset, but then sees and acts on it as an applicant only.
        withheld, roles = roles & STAFF_ROLES, set()
    if app.applicant_id == principal.user.id:
        roles.add("applicant")
    if not roles and not withheld:
        raise NotFound("no such application")
    if roles & STAFF_ROLES:
        require_staff_mfa(principal)
    return Visible(app, state, roles, events, withheld)


def shown_to_applicant(type_: str, payload: dict[str, Any]) -> bool:
    """Whether the applicant (and their invited members) see an event of their application: not the staff's
    deliberation, nor a remark the staff kept internal. The audit trail's ``SUBJECT_SEES`` follows the same rule."""
    if type_ == "remarked":
        return bool(payload.get("public"))
    return type_ not in STAFF_ONLY_EVENTS


def require_staff_mfa(principal: Principal) -> None:
    """Staff (handlers, deciders, reviewers) read applicants' answers and decide who sees data: a login with a
    second factor, whatever the way in. Identity refuses them a single-factor login (``policies.holds_access_role``);
    this also stops a session from before they were named. Every token stands for a second factor (its minting)."""
    if not principal.has_mfa:
        raise MfaRequired(STAFF_MFA, reauthenticate=True)


def append(session: Session, principal: Principal | None, app: Application, type_: str,
            payload: dict[str, Any]) -> ApplicationState:
    seq = (session.scalar(select(func.max(ApplicationEvent.seq)).where(
        ApplicationEvent.application_id == app.id)) or 0) + 1
    session.add(ApplicationEvent(application_id=app.id, seq=seq, type=type_,
                                 actor_id=principal.user.id if principal else None, payload=payload))
    session.flush()
    state = replay(events_of(session, app.id))
    app.state, app.updated_at = state.state, utcnow()
    ds = session.get(Dataset, app.dataset_id)
    audit.record(session, principal.actor if principal else audit.Actor.system("access"),
                 f"access.application.{type_}", project_id=ds.project_id if ds else None,
                 subject_user_id=app.applicant_id, target=f"application:{app.id}",
                 details={k: v for k, v in payload.items() if k in ("reason", "ends", "approve", "public")})
    return state


def require(v: Visible, *roles: str) -> None:
    if not v.roles & set(roles):
        if v.withheld & set(roles):
            raise Forbidden(OWN_APPLICATION)
        raise Forbidden(f"this needs the {' or '.join(roles)} role on the application")


def require_state(v: Visible, *states: str) -> None:
    if v.state.state not in states:
        raise Conflict(f"the application is {v.state.state}; this needs {' or '.join(states)}")
