"""Applications for data access, event-sourced: every command appends a typed event, and the
application's state is the fold of its events (``replay``). The ``Application`` row caches that
state for queries and is rewritten from the events on every command.

Who may do what is decided here: applicants act on their own applications; handlers, deciders
and reviewers are named per dataset; everyone else gets NotFound.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..archive.models import Dataset
from ..archive.service import new_accession
from ..audit import service as audit
from ..catalog.models import CatalogEntry
from ..db import utcnow
from ..errors import Conflict, Forbidden, Invalid, NotFound
from ..identity.models import User
from ..identity.principal import Principal
from ..projects.models import Membership
from .forms import DEFAULT_FORM, DEFAULT_TERMS, FormError, validate_answers
from .models import (
    AccessPolicy,
    Application,
    ApplicationEvent,
    Attachment,
    DatasetRole,
    Entitlement,
    FormVersion,
    TermsVersion,
)

OPEN_STATES = ("draft", "submitted", "returned")
FINAL_STATES = ("rejected", "closed", "revoked")
ROLES = ("handler", "decider", "reviewer")
MAX_ATTACHMENT = 10 * 1024 * 1024


# -- the event fold ----------------------------------------------------------------------------
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


# -- setup: forms, terms, policies, roles ------------------------------------------------------
def _latest(session: Session, model: type[FormVersion] | type[TermsVersion], name: str, builtin: str,
            **first_version: Any) -> Any:
    """The newest version of a named form or terms; the built-in one is created on first use."""
    row = session.scalar(select(model).where(model.name == name).order_by(model.version.desc()).limit(1))
    if row is None:
        if name != builtin:
            raise NotFound(f"no {model.__tablename__.removeprefix('access_')} named {name!r}")
        row = model(name=name, version=1, **first_version)
        session.add(row)
        session.flush()
    return row


def current_form(session: Session, name: str = "imaging-request") -> FormVersion:
    return _latest(session, FormVersion, name, "imaging-request", fields=DEFAULT_FORM)


def current_terms(session: Session, name: str = "standard-dua") -> TermsVersion:
    return _latest(session, TermsVersion, name, "standard-dua", text=DEFAULT_TERMS)


def publish_terms(session: Session, principal: Principal, name: str, text: str) -> TermsVersion:
    """A new version of the terms; applicants accept the version current when they submit."""
    if not principal.user.is_admin:
        raise NotFound("not found")
    latest = session.scalar(select(func.max(TermsVersion.version)).where(TermsVersion.name == name)) or 0
    terms = TermsVersion(name=name, version=latest + 1, text=text)
    session.add(terms)
    audit.record(session, principal.actor, "access.terms.published", target=f"terms:{name}",
                 details={"version": terms.version})
    return terms


def policy_for(session: Session, dataset_id: str) -> AccessPolicy:
    policy = session.get(AccessPolicy, dataset_id)
    return policy or AccessPolicy(dataset_id=dataset_id, form_name="imaging-request", terms_name="standard-dua",
                                  workflow="handler", quorum=1, max_days=365, applicant_download=False)


def is_owner_pi(session: Session, principal: Principal, dataset_id: str) -> bool:
    ds = session.get(Dataset, dataset_id)
    return ds is not None and _owner_pi(session, ds) == principal.user.id


def set_applicant_download(session: Session, principal: Principal, dataset_id: str, allowed: bool) -> AccessPolicy:
    """Only the download part of the policy (the data owner's page): the owning project's PI."""
    ds = session.get(Dataset, dataset_id)
    if ds is None or _owner_pi(session, ds) != principal.user.id:
        raise NotFound("no such dataset")
    policy = policy_for(session, dataset_id)
    policy.applicant_download = allowed
    session.merge(policy)
    audit.record(session, principal.actor, "access.policy.changed", project_id=ds.project_id,
                 target=f"dataset:{dataset_id}", details={"applicant_download": allowed})
    session.flush()
    return policy


def _owner_pi(session: Session, dataset: Dataset) -> uuid.UUID | None:
    return session.scalar(select(Membership.user_id).where(Membership.project_id == dataset.project_id,
                                                           Membership.role == "pi"))


def roles_of(session: Session, user_id: uuid.UUID, dataset_id: str) -> set[str]:
    roles = set(session.scalars(select(DatasetRole.role).where(DatasetRole.dataset_id == dataset_id,
                                                               DatasetRole.user_id == user_id)))
    if not roles:  # no one named: the owning project's PI handles
        ds = session.get(Dataset, dataset_id)
        named = session.scalar(select(func.count()).select_from(DatasetRole).where(
            DatasetRole.dataset_id == dataset_id)) or 0
        if ds is not None and not named and _owner_pi(session, ds) == user_id:
            roles.add("handler")
    return roles


def set_policy(session: Session, principal: Principal, dataset_id: str, *, workflow: str, quorum: int,
               max_days: int, external_owner: str | None, roles: dict[str, list[str]],
               applicant_download: bool = False) -> AccessPolicy:
    """The owning project's PI names the workflow, who handles, decides and reviews, and whether
    approved applicants may download to their own machines (default: in-platform use only)."""
    ds = session.get(Dataset, dataset_id)
    if ds is None or _owner_pi(session, ds) != principal.user.id:
        raise NotFound("no such dataset")
    if workflow not in ("handler", "quorum"):
        raise Invalid("workflow is 'handler' or 'quorum'")
    if not 1 <= quorum <= 20 or not 1 <= max_days <= 3650:
        raise Invalid("quorum must be 1-20 and max_days 1-3650")
    from ..identity.service import find_user

    rows = []
    for role, refs in roles.items():
        if role not in ROLES:
            raise Invalid(f"roles are {', '.join(ROLES)}")
        for ref in refs:
            user = find_user(session, ref)
            if user is None:
                raise Invalid(f"no user {ref!r}")
            rows.append(DatasetRole(dataset_id=dataset_id, user_id=user.id, role=role))
    if workflow == "quorum" and sum(1 for r in rows if r.role == "decider") < quorum:
        raise Invalid("a quorum workflow needs at least `quorum` deciders")
    policy = session.get(AccessPolicy, dataset_id) or AccessPolicy(dataset_id=dataset_id)
    policy.form_name = policy.form_name or "imaging-request"
    policy.terms_name = policy.terms_name or "standard-dua"
    policy.workflow, policy.quorum, policy.max_days, policy.external_owner = (workflow, quorum, max_days,
                                                                             external_owner)
    policy.applicant_download = applicant_download
    session.merge(policy)
    for old in session.scalars(select(DatasetRole).where(DatasetRole.dataset_id == dataset_id)):
        session.delete(old)
    session.flush()
    session.add_all(rows)
    audit.record(session, principal.actor, "access.policy.changed", project_id=ds.project_id,
                 target=f"dataset:{dataset_id}",
                 details={"workflow": workflow, "quorum": quorum, "external_owner": external_owner,
                          "applicant_download": applicant_download,
                          "roles": {r: len(v) for r, v in roles.items()}})
    session.flush()
    return policy


# -- loading with visibility -------------------------------------------------------------------
@dataclass
class Visible:
    app: Application
    state: ApplicationState
    roles: set[str]  # the caller's roles: applicant and/or handler, decider, reviewer
    events: list[ApplicationEvent]


def _events(session: Session, application_id: str) -> list[ApplicationEvent]:
    return list(session.scalars(select(ApplicationEvent).where(ApplicationEvent.application_id == application_id)
                                .order_by(ApplicationEvent.seq)))


def load(session: Session, principal: Principal, application_id: str) -> Visible:
    app = session.get(Application, application_id)
    if app is None:
        raise NotFound("no such application")
    roles = roles_of(session, principal.user.id, app.dataset_id)
    if app.applicant_id == principal.user.id:
        roles.add("applicant")
    events = _events(session, application_id)
    state = replay(events)
    if str(principal.user.id) in state.reviewers:
        roles.add("reviewer")
    if str(principal.user.id) in state.deciders:
        roles.add("decider")
    if not roles:
        raise NotFound("no such application")
    return Visible(app, state, roles, events)


def _append(session: Session, principal: Principal | None, app: Application, type_: str,
            payload: dict[str, Any]) -> ApplicationState:
    seq = (session.scalar(select(func.max(ApplicationEvent.seq)).where(
        ApplicationEvent.application_id == app.id)) or 0) + 1
    session.add(ApplicationEvent(application_id=app.id, seq=seq, type=type_,
                                 actor_id=principal.user.id if principal else None, payload=payload))
    session.flush()
    state = replay(_events(session, app.id))
    app.state, app.updated_at = state.state, utcnow()
    ds = session.get(Dataset, app.dataset_id)
    audit.record(session, principal.actor if principal else audit.Actor.system("access"),
                 f"access.application.{type_}", project_id=ds.project_id if ds else None,
                 subject_user_id=app.applicant_id, target=f"application:{app.id}",
                 details={k: v for k, v in payload.items() if k in ("reason", "ends", "approve", "public")})
    return state


def _require(v: Visible, *roles: str) -> None:
    if not v.roles & set(roles):
        raise Forbidden(f"this needs the {' or '.join(roles)} role on the application")


def _require_state(v: Visible, *states: str) -> None:
    if v.state.state not in states:
        raise Conflict(f"the application is {v.state.state}; this needs {' or '.join(states)}")


# -- applicant commands ------------------------------------------------------------------------
def applicable_dataset(session: Session, principal: Principal, dataset_id: str) -> Dataset:
    """A dataset the caller may see the apply page of and apply for: one published in the catalogue,
    or one whose project the caller belongs to or on which they are named (handler, decider,
    reviewer). For everyone else an unpublished, withdrawn or draft dataset does not exist: the same
    NotFound as a made-up id, so not even its title leaks."""
    ds = session.get(Dataset, dataset_id)
    if ds is None:
        raise NotFound("no such dataset")
    if session.scalar(select(CatalogEntry.id).where(CatalogEntry.dataset_id == ds.id,
                                                    CatalogEntry.published.is_(True))) is not None:
        return ds
    if session.scalar(select(Membership.user_id).where(Membership.project_id == ds.project_id,
                                                       Membership.user_id == principal.user.id)) is not None:
        return ds
    if session.scalar(select(DatasetRole.role).where(DatasetRole.dataset_id == ds.id,
                                                     DatasetRole.user_id == principal.user.id).limit(1)):
        return ds
    raise NotFound("no such dataset")


def create(session: Session, principal: Principal, dataset_id: str, *, renewal_of: str | None = None
           ) -> Application:
    applicable_dataset(session, principal, dataset_id)
    policy = policy_for(session, dataset_id)
    if policy.external_owner and not renewal_of:
        pass  # the hub still records the request; the external owner's system decides through the API
    existing = session.scalar(select(Application).where(
        Application.applicant_id == principal.user.id, Application.dataset_id == dataset_id,
        Application.state.in_(OPEN_STATES)))
    if existing is not None:
        raise Conflict(f"you already have application {existing.id} for this dataset", application=existing.id)
    if renewal_of:
        old = session.get(Application, renewal_of)
        if old is None or old.applicant_id != principal.user.id or old.dataset_id != dataset_id:
            raise Invalid("renewal_of must be one of your applications for this dataset")
    elif _active_entitlement(session, principal.user.id, dataset_id) is not None:
        raise Conflict("you already have access to this dataset; apply for a renewal when it nears its end")
    form = current_form(session, policy.form_name)
    app = Application(id=new_accession("SRA"), applicant_id=principal.user.id, dataset_id=dataset_id,
                      state="draft", renewal_of=renewal_of)
    session.add(app)
    session.flush()
    payload: dict[str, Any] = {"dataset_id": dataset_id, "form_version_id": form.id}
    if renewal_of:
        payload["renewal_of"] = renewal_of
        previous = replay(_events(session, renewal_of))
        _append(session, principal, app, "created", payload)
        if previous.answers:
            _append(session, principal, app, "saved", {"answers": previous.answers})
        return app
    _append(session, principal, app, "created", payload)
    return app


def _form_of(session: Session, state: ApplicationState) -> FormVersion:
    form = session.get(FormVersion, state.form_version_id)
    assert form is not None
    return form


def _attachment_ids(session: Session, application_id: str) -> set[str]:
    return set(session.scalars(select(Attachment.id).where(Attachment.application_id == application_id)))


def save(session: Session, principal: Principal, application_id: str, answers: dict[str, Any]) -> ApplicationState:
    v = load(session, principal, application_id)
    _require(v, "applicant")
    _require_state(v, "draft", "returned")
    try:
        cleaned = validate_answers(_form_of(session, v.state).fields, {**v.state.answers, **answers},
                                   attachments=_attachment_ids(session, application_id), complete=False)
    except FormError as exc:
        raise Invalid("some answers are not valid", fields=exc.errors) from None
    return _append(session, principal, v.app, "saved", {"answers": cleaned})


def attach(session: Session, principal: Principal, application_id: str, filename: str, content_type: str,
           data: bytes) -> Attachment:
    v = load(session, principal, application_id)
    _require(v, "applicant")
    _require_state(v, "draft", "returned")
    if not data or len(data) > MAX_ATTACHMENT:
        raise Invalid(f"attachments are 1 byte to {MAX_ATTACHMENT} bytes")
    a = Attachment(id="ATT-" + secrets.token_hex(6), application_id=application_id, filename=filename[:255],
                   content_type=content_type[:100] or "application/octet-stream", data=data,
                   uploaded_by=principal.user.id)
    session.add(a)
    session.flush()
    return a


def accept_terms(session: Session, principal: Principal, application_id: str) -> ApplicationState:
    v = load(session, principal, application_id)
    _require(v, "applicant")
    terms = current_terms(session, policy_for(session, v.app.dataset_id).terms_name)
    return _append(session, principal, v.app, "terms_accepted",
                   {"user_id": str(principal.user.id), "terms_version_id": terms.id})


def invite_member(session: Session, principal: Principal, application_id: str, email: str) -> ApplicationState:
    from email_validator import EmailNotValidError, validate_email

    v = load(session, principal, application_id)
    _require(v, "applicant")
    _require_state(v, "draft", "returned", "submitted")
    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise Invalid(str(exc)) from None
    return _append(session, principal, v.app, "member_invited", {"email": email})


def submit(session: Session, principal: Principal, application_id: str) -> ApplicationState:
    v = load(session, principal, application_id)
    _require(v, "applicant")
    _require_state(v, "draft", "returned")
    try:
        validate_answers(_form_of(session, v.state).fields, v.state.answers,
                         attachments=_attachment_ids(session, application_id), complete=True)
    except FormError as exc:
        raise Invalid("the application is incomplete", fields=exc.errors) from None
    terms = current_terms(session, policy_for(session, v.app.dataset_id).terms_name)
    if v.state.accepted_terms.get(str(principal.user.id)) != terms.id:
        raise Invalid(f"accept the current terms of use (version {terms.version}) first")
    state = _append(session, principal, v.app, "submitted", {})
    _notify_handlers(session, v.app, "application_submitted")
    return state


# -- handler commands --------------------------------------------------------------------------
def assign(session: Session, principal: Principal, application_id: str) -> ApplicationState:
    """A handler takes the application: other handlers see who is working on it."""
    v = load(session, principal, application_id)
    _require(v, "handler")
    return _append(session, principal, v.app, "assigned", {"handler_id": str(principal.user.id)})


def return_(session: Session, principal: Principal, application_id: str, comment: str) -> ApplicationState:
    v = load(session, principal, application_id)
    _require(v, "handler")
    _require_state(v, "submitted")
    state = _append(session, principal, v.app, "returned", {"comment": comment.strip()[:5000]})
    _notify_applicant(session, v.app, "application_returned", comment=comment)
    return state


def remark(session: Session, principal: Principal, application_id: str, text: str, public: bool
           ) -> ApplicationState:
    v = load(session, principal, application_id)
    _require(v, "handler", "reviewer", "decider")
    if not text.strip():
        raise Invalid("a remark needs text")
    state = _append(session, principal, v.app, "remarked", {"text": text.strip()[:5000], "public": public})
    if public:
        _notify_applicant(session, v.app, "remark", comment=text)
    return state


def request_review(session: Session, principal: Principal, application_id: str, users: list[str],
                   kind: str = "review") -> ApplicationState:
    from ..identity.service import find_user

    v = load(session, principal, application_id)
    _require(v, "handler")
    _require_state(v, "submitted")
    ids = []
    for ref in users:
        user = find_user(session, ref)
        if user is None:
            raise Invalid(f"no user {ref!r}")
        ids.append(str(user.id))
    key = "reviewer_ids" if kind == "review" else "decider_ids"
    return _append(session, principal, v.app, f"{kind}_requested" if kind == "review" else "decision_requested",
                   {key: ids})


def vote(session: Session, principal: Principal, application_id: str, approve: bool, comment: str = "",
         ends: dt.date | None = None) -> ApplicationState:
    """Deciders vote; with a quorum workflow, enough approvals approve and enough rejections reject."""
    v = load(session, principal, application_id)
    _require(v, "decider")
    _require_state(v, "submitted")
    state = _append(session, principal, v.app, "voted", {"approve": approve, "comment": comment[:5000]})
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
    _require(v, "handler")
    _require_state(v, "submitted")
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
    state = _append(session, principal, app, "approved", {"ends": ends.isoformat(), "comment": comment[:5000]})
    now = utcnow()
    session.add(Entitlement(user_id=app.applicant_id, dataset_id=app.dataset_id, version=None,
                            application_id=app.id, starts_at=now,
                            ends_at=dt.datetime.combine(ends, dt.time(), tzinfo=dt.UTC)))
    if app.renewal_of:  # the renewal replaces the old grant; history stays in both applications
        for old in session.scalars(select(Entitlement).where(Entitlement.application_id == app.renewal_of,
                                                             Entitlement.revoked_at.is_(None))):
            old.ends_at = min(old.ends_at, now)
    _notify_applicant(session, app, "application_approved", ends=ends.isoformat())
    return state


def reject(session: Session, principal: Principal, application_id: str, reason: str) -> ApplicationState:
    v = load(session, principal, application_id)
    _require(v, "handler")
    _require_state(v, "submitted")
    return _reject(session, principal, v.app, reason)


def _reject(session: Session, principal: Principal | None, app: Application, reason: str) -> ApplicationState:
    if not reason or not reason.strip():
        raise Invalid("a rejection needs a reason the applicant can read")
    state = _append(session, principal, app, "rejected", {"reason": reason.strip()[:5000]})
    _notify_applicant(session, app, "application_rejected", reason=reason)
    return state


def close(session: Session, principal: Principal, application_id: str, comment: str = "") -> ApplicationState:
    v = load(session, principal, application_id)
    _require(v, "handler", "applicant")
    if v.state.state in FINAL_STATES:
        raise Conflict(f"the application is already {v.state.state}")
    _end_entitlements(session, v.app.id)
    return _append(session, principal, v.app, "closed", {"comment": comment[:5000]})


def revoke(session: Session, principal: Principal, application_id: str, reason: str) -> ApplicationState:
    v = load(session, principal, application_id)
    _require(v, "handler")
    _require_state(v, "approved")
    if not reason.strip():
        raise Invalid("a revocation needs a reason")
    _end_entitlements(session, v.app.id)
    state = _append(session, principal, v.app, "revoked", {"reason": reason.strip()[:5000]})
    _notify_applicant(session, v.app, "application_revoked", reason=reason)
    return state


def _end_entitlements(session: Session, application_id: str) -> None:
    for e in session.scalars(select(Entitlement).where(Entitlement.application_id == application_id,
                                                       Entitlement.revoked_at.is_(None))):
        e.revoked_at = utcnow()


def _active_entitlement(session: Session, user_id: uuid.UUID, dataset_id: str) -> Entitlement | None:
    now = utcnow()
    return session.scalar(select(Entitlement).where(
        Entitlement.user_id == user_id, Entitlement.dataset_id == dataset_id, Entitlement.revoked_at.is_(None),
        Entitlement.starts_at <= now, Entitlement.ends_at > now).limit(1))


# -- external data owner -----------------------------------------------------------------------
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
            _append(session, principal, app, "submitted", {"external": True})
        return _approve(session, principal, app, ends, reason or "approved by the data owner")
    if app is None or app.state != "approved":
        raise NotFound("no approved application of that user for this dataset")
    _end_entitlements(session, app.id)
    return _append(session, principal, app, "revoked", {"reason": reason or "revoked by the data owner"})


# -- queries -----------------------------------------------------------------------------------
def my_applications(session: Session, principal: Principal) -> list[Application]:
    return list(session.scalars(select(Application).where(Application.applicant_id == principal.user.id)
                                .order_by(Application.updated_at.desc())))


def handled_datasets(session: Session, principal: Principal) -> set[str]:
    named = set(session.scalars(select(DatasetRole.dataset_id).where(DatasetRole.user_id == principal.user.id)))
    # datasets with nobody named, owned by projects where the caller is PI
    pi_projects = select(Membership.project_id).where(Membership.user_id == principal.user.id,
                                                      Membership.role == "pi")
    for ds_id in session.scalars(select(Dataset.id).where(Dataset.project_id.in_(pi_projects))):
        if roles_of(session, principal.user.id, ds_id):
            named.add(ds_id)
    return named


def queue(session: Session, principal: Principal, *, state: str | None = None) -> list[Application]:
    """Applications the caller handles, decides or reviews (never others' datasets)."""
    ids = handled_datasets(session, principal)
    if not ids:
        return []
    stmt = select(Application).where(Application.dataset_id.in_(ids), Application.state != "draft")
    if state:
        stmt = stmt.where(Application.state == state)
    return list(session.scalars(stmt.order_by(Application.updated_at.desc())))


def entitlements_of(session: Session, user_id: uuid.UUID) -> list[Entitlement]:
    return list(session.scalars(select(Entitlement).where(Entitlement.user_id == user_id)
                                .order_by(Entitlement.created_at.desc())))


def users_by_id(session: Session, ids: set[uuid.UUID]) -> dict[uuid.UUID, User]:
    return {u.id: u for u in session.scalars(select(User).where(User.id.in_(ids)))} if ids else {}


# -- notifications -----------------------------------------------------------------------------
def _email(session: Session, to: str | None, template: str, context: dict[str, Any]) -> None:
    if not to:
        return
    try:
        from ..notify.service import enqueue_email
    except ImportError:  # notifications not installed in this build
        return
    enqueue_email(session, to=to, template=template, context=context)


def _notify_applicant(session: Session, app: Application, template: str, **context: Any) -> None:
    user = session.get(User, app.applicant_id)
    ds = session.get(Dataset, app.dataset_id)
    _email(session, user.email if user else None, template,
           {"application_id": app.id, "dataset": ds.title if ds else app.dataset_id,
            "name": user.display_name if user else "", **context})


def _notify_handlers(session: Session, app: Application, template: str) -> None:
    ds = session.get(Dataset, app.dataset_id)
    handler_ids = set(session.scalars(select(DatasetRole.user_id).where(DatasetRole.dataset_id == app.dataset_id,
                                                                        DatasetRole.role == "handler")))
    if not handler_ids and ds is not None and (pi := _owner_pi(session, ds)):
        handler_ids = {pi}
    for user in users_by_id(session, handler_ids).values():
        _email(session, user.email, template, {"application_id": app.id, "dataset": ds.title if ds else "",
                                               "name": user.display_name})
