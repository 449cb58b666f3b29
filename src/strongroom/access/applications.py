"""The applicant's side of an application: apply for a dataset, answer its form, attach files,
accept the terms, invite members, submit; and the lists of applications, queues and entitlements
that pages show."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive.models import Dataset
from ..archive.service import new_accession
from ..catalog.models import CatalogEntry
from ..db import utcnow
from ..errors import Conflict, Invalid, NotFound
from ..identity.models import User
from ..identity.principal import Principal
from ..projects.models import Membership
from .events import (
    OPEN_STATES,
    ApplicationState,
    append,
    events_of,
    load,
    replay,
    require,
    require_staff_mfa,
    require_state,
)
from .forms import FormError, validate_answers
from .models import Application, Attachment, DatasetRole, Entitlement, FormVersion
from .notices import notify_handlers
from .policies import current_form, current_terms, policy_for, roles_of

MAX_ATTACHMENT = 10 * 1024 * 1024


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
    policy = policy_for(session, dataset_id)  # with an external owner too: its system decides through the API
    existing = session.scalar(select(Application).where(
        Application.applicant_id == principal.user.id, Application.dataset_id == dataset_id,
        Application.state.in_(OPEN_STATES)))
    if existing is not None:
        raise Conflict(f"you already have application {existing.id} for this dataset", application=existing.id)
    if renewal_of:
        old = session.get(Application, renewal_of)
        if old is None or old.applicant_id != principal.user.id or old.dataset_id != dataset_id:
            raise Invalid("renewal_of must be one of your applications for this dataset")
    elif active_entitlement(session, principal.user.id, dataset_id) is not None:
        raise Conflict("you already have access to this dataset; apply for a renewal when it nears its end")
    form = current_form(session, policy.form_name)
    app = Application(id=new_accession("SRA"), applicant_id=principal.user.id, dataset_id=dataset_id,
                      state="draft", renewal_of=renewal_of)
    session.add(app)
    session.flush()
    payload: dict[str, Any] = {"dataset_id": dataset_id, "form_version_id": form.id}
    if renewal_of:
        payload["renewal_of"] = renewal_of
        previous = replay(events_of(session, renewal_of))
        append(session, principal, app, "created", payload)
        if previous.answers:
            append(session, principal, app, "saved", {"answers": previous.answers})
        return app
    append(session, principal, app, "created", payload)
    return app


def _form_of(session: Session, state: ApplicationState) -> FormVersion:
    form = session.get(FormVersion, state.form_version_id)
    assert form is not None
    return form


def _attachment_ids(session: Session, application_id: str) -> set[str]:
    return set(session.scalars(select(Attachment.id).where(Attachment.application_id == application_id)))


def save(session: Session, principal: Principal, application_id: str, answers: dict[str, Any]) -> ApplicationState:
    v = load(session, principal, application_id)
    require(v, "applicant")
    require_state(v, "draft", "returned")
    try:
        cleaned = validate_answers(_form_of(session, v.state).fields, {**v.state.answers, **answers},
                                   attachments=_attachment_ids(session, application_id), complete=False)
    except FormError as exc:
        raise Invalid("some answers are not valid", fields=exc.errors) from None
    return append(session, principal, v.app, "saved", {"answers": cleaned})


def attach(session: Session, principal: Principal, application_id: str, filename: str, content_type: str,
           data: bytes) -> Attachment:
    v = load(session, principal, application_id)
    require(v, "applicant")
    require_state(v, "draft", "returned")
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
    require(v, "applicant")
    terms = current_terms(session, policy_for(session, v.app.dataset_id).terms_name)
    return append(session, principal, v.app, "terms_accepted",
                   {"user_id": str(principal.user.id), "terms_version_id": terms.id})


def invite_member(session: Session, principal: Principal, application_id: str, email: str) -> ApplicationState:
    from email_validator import EmailNotValidError, validate_email

    v = load(session, principal, application_id)
    require(v, "applicant")
    require_state(v, "draft", "returned", "submitted")
    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise Invalid(str(exc)) from None
    return append(session, principal, v.app, "member_invited", {"email": email})


def submit(session: Session, principal: Principal, application_id: str) -> ApplicationState:
    v = load(session, principal, application_id)
    require(v, "applicant")
    require_state(v, "draft", "returned")
    try:
        validate_answers(_form_of(session, v.state).fields, v.state.answers,
                         attachments=_attachment_ids(session, application_id), complete=True)
    except FormError as exc:
        raise Invalid("the application is incomplete", fields=exc.errors) from None
    terms = current_terms(session, policy_for(session, v.app.dataset_id).terms_name)
    if v.state.accepted_terms.get(str(principal.user.id)) != terms.id:
        raise Invalid(f"accept the current terms of use (version {terms.version}) first")
    state = append(session, principal, v.app, "submitted", {})
    notify_handlers(session, v.app, "application_submitted")
    return state


def active_entitlement(session: Session, user_id: uuid.UUID, dataset_id: str) -> Entitlement | None:
    now = utcnow()
    return session.scalar(select(Entitlement).where(
        Entitlement.user_id == user_id, Entitlement.dataset_id == dataset_id, Entitlement.revoked_at.is_(None),
        Entitlement.starts_at <= now, Entitlement.ends_at > now).limit(1))


def my_applications(session: Session, principal: Principal) -> list[Application]:
    return list(session.scalars(select(Application).where(Application.applicant_id == principal.user.id)
                                .order_by(Application.updated_at.desc())))


def handled_datasets(session: Session, principal: Principal) -> set[str]:
    """The datasets whose applications the caller handles, decides or reviews. Every staff list and report starts
    here (queues, the data owner's page and report, usage figures), so the second factor they need is asked for
    here too, once the caller turns out to handle anything."""
    named = set(session.scalars(select(DatasetRole.dataset_id).where(DatasetRole.user_id == principal.user.id)))
    # datasets with nobody named, owned by projects where the caller is PI
    pi_projects = select(Membership.project_id).where(Membership.user_id == principal.user.id,
                                                      Membership.role == "pi")
    for ds_id in session.scalars(select(Dataset.id).where(Dataset.project_id.in_(pi_projects))):
        if roles_of(session, principal.user.id, ds_id):
            named.add(ds_id)
    if named:
        require_staff_mfa(principal)
    return named


def queue(session: Session, principal: Principal, *, state: str | None = None) -> list[Application]:
    """Applications the caller handles, decides or reviews (never others' datasets). Pages every user sees (their
    own applications, the landing page) ask for it too: without a second factor it is empty, not an error."""
    if not principal.has_mfa:
        return []
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
