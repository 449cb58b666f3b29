"""How each dataset's access is set up: the forms and terms applicants answer and accept (built-in
ones created on first use), the access policy (workflow, quorum, longest grant, whether approved
applicants may download) and who handles, decides and reviews. The owning project's PI sets them, with
a second factor within the last ``fresh_minutes``: each change can open a data path or name who decides (only
switching applicants' downloads off needs none: it closes a path)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import String, cast, exists, func, select
from sqlalchemy.orm import Session

from ..archive.models import Dataset
from ..audit import service as audit
from ..config import SecuritySettings
from ..errors import Invalid, NotFound
from ..identity.models import User
from ..identity.principal import Principal
from ..identity.service import require_fresh_mfa
from ..projects.models import Membership
from .forms import DEFAULT_FORM, DEFAULT_TERMS
from .models import AccessPolicy, ApplicationEvent, DatasetRole, FormVersion, TermsVersion

ROLES = ("handler", "decider", "reviewer")
# Routes pass the site's `security.fresh_mfa_minutes`; a caller that does not (the demo seed) still gets the
# check, with the shipped window.
SHIPPED_FRESH_MFA_MINUTES: int = SecuritySettings.model_fields["fresh_mfa_minutes"].default


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


def policy_for(session: Session, dataset_id: str) -> AccessPolicy:
    policy = session.get(AccessPolicy, dataset_id)
    return policy or AccessPolicy(dataset_id=dataset_id, form_name="imaging-request", terms_name="standard-dua",
                                  workflow="handler", quorum=1, max_days=365, applicant_download=False)


def is_owner_pi(session: Session, principal: Principal, dataset_id: str) -> bool:
    ds = session.get(Dataset, dataset_id)
    return ds is not None and owner_pi(session, ds) == principal.user.id


def set_applicant_download(session: Session, principal: Principal, dataset_id: str, allowed: bool, *,
                           fresh_minutes: int = SHIPPED_FRESH_MFA_MINUTES) -> AccessPolicy:
    """Only the download part of the policy (the data owner's page): the owning project's PI; allowing downloads
    needs fresh MFA, going back to in-platform use only never waits for one (it closes a data path)."""
    ds = session.get(Dataset, dataset_id)
    if ds is None or owner_pi(session, ds) != principal.user.id:
        raise NotFound("no such dataset")
    if allowed:
        require_fresh_mfa(principal, fresh_minutes)
    policy = policy_for(session, dataset_id)
    policy.applicant_download = allowed
    session.merge(policy)
    audit.record(session, principal.actor, "access.policy.changed", project_id=ds.project_id,
                 target=f"dataset:{dataset_id}", details={"applicant_download": allowed})
    session.flush()
    return policy


def owner_pi(session: Session, dataset: Dataset) -> uuid.UUID | None:
    return session.scalar(select(Membership.user_id).where(Membership.project_id == dataset.project_id,
                                                           Membership.role == "pi"))


def roles_of(session: Session, user_id: uuid.UUID, dataset_id: str) -> set[str]:
    roles = set(session.scalars(select(DatasetRole.role).where(DatasetRole.dataset_id == dataset_id,
                                                               DatasetRole.user_id == user_id)))
    if not roles:  # no one named: the owning project's PI handles
        ds = session.get(Dataset, dataset_id)
        named = session.scalar(select(func.count()).select_from(DatasetRole).where(
            DatasetRole.dataset_id == dataset_id)) or 0
        if ds is not None and not named and owner_pi(session, ds) == user_id:
            roles.add("handler")
    return roles


# the application events that name someone a reviewer or decider of that one application (``events.load``)
NAMING_EVENTS = {"review_requested": "reviewer_ids", "decision_requested": "decider_ids"}


def holds_access_role(session: Session, user: User) -> bool:
    """Identity's MFA policy (`identity.service.DATA_ROLE_CHECKS`, registered in our includeme): whoever a
    dataset's access policy names (handler, decider, reviewer), or a handler asked to review or decide one
    application, reads applicants' answers and decides who sees data, so must use a second factor. The owning
    project's PI, who handles when nobody is named, is a project member: projects' check covers them."""
    if session.scalar(select(exists().where(DatasetRole.user_id == user.id))):
        return True
    uid = str(user.id)
    # the payload's text narrows the rows (portable across databases); the lists themselves decide
    rows = session.execute(select(ApplicationEvent.type, ApplicationEvent.payload).where(
        ApplicationEvent.type.in_(NAMING_EVENTS), cast(ApplicationEvent.payload, String).contains(uid)))
    return any(uid in (payload or {}).get(NAMING_EVENTS[type_], []) for type_, payload in rows)


def set_policy(session: Session, principal: Principal, dataset_id: str, *, workflow: str, quorum: int,
               max_days: int, external_owner: str | None, roles: dict[str, list[str]],
               applicant_download: bool = False, fresh_minutes: int) -> AccessPolicy:
    """The owning project's PI names the workflow, who handles, decides and reviews, and whether
    approved applicants may download to their own machines (default: in-platform use only)."""
    ds = session.get(Dataset, dataset_id)
    if ds is None or owner_pi(session, ds) != principal.user.id:
        raise NotFound("no such dataset")
    require_fresh_mfa(principal, fresh_minutes)
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
