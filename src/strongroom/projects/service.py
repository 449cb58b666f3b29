"""Projects: the security boundary. Everything outside the caller's projects is NotFound.

Each public function takes the acting ``Principal`` and checks rights itself, so no entry
point (API, web, CLI) can forget to.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import ColumnElement, and_, exists, func, select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..audit.models import AuditEvent
from ..audit.service import Actor
from ..db import utcnow
from ..errors import Conflict, Forbidden, Invalid, MfaRequired, NotFound
from ..identity import service as identity
from ..identity.models import User
from ..identity.principal import Principal
from ..identity.service import require_fresh_mfa
from .models import Membership, Project, ProjectSetting, Role
from .rights import DELEGABLE, RIGHTS
from .settings import SETTINGS

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$")
PROJECT_CLASSES = ("project", "fellowship", "network-partner")
DEFAULT_QUOTA_BYTES = 2 * 1000**4  # basic service: 2 TB private project storage
# Hook points (capabilities.SETTING_CHECKS, PROJECT_CHANGED): a capability refuses a setting's new value
# that contradicts its other settings (by key: (session, project id, new value), raises Invalid), and hears
# of a project's members (who, their roles and rights), its settings, or the project itself (status, end date)
# changing ((session, project id, "members" | "setting:<key>" | "project")).
SETTING_CHECKS: dict[str, Callable[[Session, uuid.UUID, Any], None]] = {}
PROJECT_CHANGED: list[Callable[[Session, uuid.UUID, str], None]] = []


def _changed(session: Session, project_id: uuid.UUID, what: str) -> None:
    session.flush()
    for hook in PROJECT_CHANGED:
        hook(session, project_id, what)


@dataclass
class ProjectAccess:
    """A project as seen by one member: the row, their membership and effective rights."""

    project: Project
    membership: Membership
    rights: frozenset[str]

    def require(self, right: str) -> None:
        if right not in self.rights:
            raise Forbidden(f"you need the {right!r} right in project {self.project.slug!r}")


def _require_mfa(principal: Principal) -> None:
    if not principal.has_mfa:
        raise MfaRequired("project data needs a login with multi-factor authentication")


def effective_rights(session: Session, membership: Membership) -> frozenset[str]:
    role = session.get(Role, membership.role)
    return frozenset((role.rights if role else []) + list(membership.delegated_rights or []))


def list_my_projects(session: Session, principal: Principal) -> list[tuple[Project, Membership]]:
    rows = session.execute(
        select(Project, Membership).join(Membership, Membership.project_id == Project.id)
        .where(Membership.user_id == principal.user.id).order_by(Project.name)
    )
    # a token bound to one project (a workspace's) sees that project only
    return [(p, m) for p, m in rows if principal.project_id is None or p.id == principal.project_id]


class Lifetime(Protocol):
    """A project's row, or a row of a query holding its ``status`` and ``end_date``."""

    @property
    def status(self) -> str: ...

    @property
    def end_date(self) -> dt.date: ...


def project_ended(project: Lifetime, today: dt.date | None = None) -> bool:
    """Whether the project has ended: an administrator closed it, or its end date (its ethics approval's and
    contract's) has passed. Its members' access to its data ends with it — the workspaces' check
    (``workspaces.service.lost_access``) stops theirs on the same two conditions."""
    return project.status != "active" or project.end_date < (today or utcnow().date())


def open_clause(today: dt.date | None = None) -> ColumnElement[bool]:
    """``project_ended``'s rule as a WHERE clause on ``Project`` (true while it has not ended), for lists that
    cross projects."""
    return and_(Project.status == "active", Project.end_date >= (today or utcnow().date()))


def ended_refusal(project: Project) -> Forbidden:
    """What a member is told when they ask an ended project for its data (403: they know it exists)."""
    if project.status != "active":
        return Forbidden(f"the project {project.slug!r} is closed: its members no longer reach its data")
    return Forbidden(f"the project {project.slug!r} ended on {project.end_date.isoformat()}: its members no longer "
                     "reach its data unless a platform administrator extends its end date")


def open_project(session: Session, principal: Principal, slug: str, *, managing: bool = False) -> ProjectAccess:
    """The project if the caller is a member; NotFound otherwise (existence is not revealed).

    Deny by default for an ended project (``project_ended``): its members are refused (``ended_refusal``) by
    every route that opens it for its data or anything made from it. Only the routes that winding a project up
    needs pass ``managing=True`` — its page, members and settings, its audit log, its fees, its retention and its
    GPU bookings (seeing and cancelling them) — and each of them hands out no data."""
    row = session.execute(
        select(Project, Membership).join(Membership, Membership.project_id == Project.id)
        .where(Project.slug == slug, Membership.user_id == principal.user.id)
    ).first()
    if row is None or (principal.project_id is not None and row[0].id != principal.project_id):
        raise NotFound(f"no project {slug!r}")
    _require_mfa(principal)
    project, membership = row
    if not managing and project_ended(project):
        raise ended_refusal(project)
    return ProjectAccess(project, membership, effective_rights(session, membership))


# -- administration (platform admins) ----------------------------------------------------------
def _require_admin(principal: Principal) -> None:
    if not (principal.user.is_admin and principal.can("admin")):
        raise NotFound("not found")
    _require_mfa(principal)


def create_project(
    session: Session,
    principal: Principal | Actor,
    *,
    slug: str,
    name: str,
    pi: str,
    ethics_ref: str,
    project_class: str = "project",
    quota_bytes: int = DEFAULT_QUOTA_BYTES,
    end_date: dt.date,
    description: str = "",
) -> Project:
    """Create a project (admins, or the CLI as a system actor) with its PI as first member."""
    actor = principal.actor if isinstance(principal, Principal) else principal
    if isinstance(principal, Principal):
        _require_admin(principal)
    slug = slug.strip().lower()
    if not SLUG_RE.match(slug):
        raise Invalid("project id must be 3-40 characters: lower-case letters, digits and '-'")
    if project_class not in PROJECT_CLASSES:
        raise Invalid(f"project class must be one of {', '.join(PROJECT_CLASSES)}")
    if not name.strip():
        raise Invalid("project name is required")
    if not ethics_ref.strip():
        raise Invalid("an ethics approval reference is required")
    if quota_bytes < 0:
        raise Invalid("quota cannot be negative")
    if end_date <= dt.date.today():
        raise Invalid("end date must be in the future")
    pi_user = identity.find_user(session, pi)
    if pi_user is None:
        raise Invalid(f"no user {pi!r} to be PI")
    if session.scalar(select(Project).where(Project.slug == slug)):
        raise Conflict(f"project {slug!r} exists")
    project = Project(slug=slug, name=name.strip(), description=description.strip(),
                      project_class=project_class, ethics_ref=ethics_ref.strip(), pi_id=pi_user.id,
                      quota_bytes=quota_bytes, end_date=end_date)
    session.add(project)
    session.flush()
    session.add(Membership(project_id=project.id, user_id=pi_user.id, role="pi", delegated_rights=[]))
    audit.record(session, actor, "project.created", project_id=project.id, subject_user_id=pi_user.id,
                 target=f"project:{slug}",
                 details={"class": project_class, "quota_bytes": quota_bytes, "end_date": str(end_date),
                          "ethics_ref": project.ethics_ref})
    session.flush()
    return project


def admin_list_projects(session: Session, principal: Principal) -> list[Project]:
    _require_admin(principal)
    return list(session.scalars(select(Project).order_by(Project.slug)))


def admin_update_project(session: Session, principal: Principal, slug: str, *, fresh_minutes: int,
                         **changes: Any) -> Project:
    _require_admin(principal)
    require_fresh_mfa(principal, fresh_minutes)
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NotFound(f"no project {slug!r}")
    before: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            continue
        if key == "quota_bytes" and value < 0:
            raise Invalid("quota cannot be negative")
        if key == "status" and value not in ("active", "closed"):
            raise Invalid("status must be active or closed")
        before[key] = str(getattr(project, key))
        setattr(project, key, value)
    audit.record(session, principal.actor, "project.updated", project_id=project.id,
                 target=f"project:{slug}", details={"before": before,
                                                    "after": {k: str(v) for k, v in changes.items()
                                                              if v is not None}})
    _changed(session, project.id, "project")
    return project


# -- members -----------------------------------------------------------------------------------
def is_member_anywhere(session: Session, user: User) -> bool:
    """Identity's MFA policy (`identity.service.DATA_ROLE_CHECKS`, registered in our includeme):
    a member of any project can see data, so must use a second factor."""
    return bool(session.scalar(select(exists().where(Membership.user_id == user.id))))


def list_members(session: Session, access: ProjectAccess) -> list[tuple[Membership, frozenset[str]]]:
    rows = session.scalars(select(Membership).where(Membership.project_id == access.project.id)
                           .order_by(Membership.added_at))
    return [(m, effective_rights(session, m)) for m in rows]


def _membership(session: Session, access: ProjectAccess, user_id: uuid.UUID) -> Membership:
    m = session.scalar(select(Membership).where(Membership.project_id == access.project.id,
                                                Membership.user_id == user_id))
    if m is None:
        raise NotFound("no such member")
    return m


def _check_role(session: Session, principal: Principal, access: ProjectAccess, role: str, *,
                fresh_minutes: int) -> None:
    """A role is handed out only by someone who holds every right it carries, and one that carries more
    than a researcher's needs a fresh second factor, as delegating those rights one by one does: holding
    ``manage-members`` alone must not be a way to ``publish`` or ``import``."""
    if role == "pi":
        raise Invalid("a project has one PI; a platform administrator changes it")
    found = session.get(Role, role)
    if found is None:
        raise Invalid(f"unknown role {role!r}")
    beyond = set(found.rights) - access.rights
    if beyond:
        raise Forbidden(f"the role {role!r} carries rights you do not hold: {', '.join(sorted(beyond))}")
    if set(found.rights) & set(DELEGABLE):
        require_fresh_mfa(principal, fresh_minutes)


def _check_within_reach(session: Session, access: ProjectAccess, member: Membership) -> None:
    """Another member's role is changed, or they are removed, only by someone holding every right they hold:
    ``manage-members`` alone must not be a way to take ``publish`` from the steward or ``reidentify`` from the
    key custodian the PI chose (the PI holds every right but re-identification, and may always)."""
    beyond = effective_rights(session, member) - access.rights
    if beyond and access.membership.role != "pi":
        raise Forbidden(f"this member holds rights you do not hold ({', '.join(sorted(beyond))}); "
                        "the project's PI can change their role or remove them")


def add_member(session: Session, principal: Principal, access: ProjectAccess, user_ref: str,
               role: str = "member", *, fresh_minutes: int) -> Membership:
    access.require("manage-members")
    _check_role(session, principal, access, role, fresh_minutes=fresh_minutes)
    user = identity.find_user(session, user_ref)
    if user is None:
        raise Invalid(f"no user {user_ref!r}; they must have logged in once or have a local account")
    if session.scalar(select(Membership).where(Membership.project_id == access.project.id,
                                               Membership.user_id == user.id)):
        raise Conflict(f"{user.display_name} is already a member")
    m = Membership(project_id=access.project.id, user_id=user.id, role=role, delegated_rights=[])
    session.add(m)
    audit.record(session, principal.actor, "project.member.added", project_id=access.project.id,
                 subject_user_id=user.id, target=f"project:{access.project.slug}", details={"role": role})
    session.flush()
    return m


def change_role(session: Session, principal: Principal, access: ProjectAccess, user_id: uuid.UUID,
                role: str, *, fresh_minutes: int) -> Membership:
    access.require("manage-members")
    m = _membership(session, access, user_id)
    if m.role == "pi":
        raise Invalid("the PI's role cannot be changed here")
    if user_id == principal.user.id:
        raise Forbidden("you cannot change your own role; another member with manage-members can")
    _check_within_reach(session, access, m)
    _check_role(session, principal, access, role, fresh_minutes=fresh_minutes)
    before, m.role = m.role, role
    audit.record(session, principal.actor, "project.member.role_changed", project_id=access.project.id,
                 subject_user_id=user_id, target=f"project:{access.project.slug}",
                 details={"before": before, "after": role})
    _changed(session, access.project.id, "members")  # (a role may carry fewer rights)
    return m


def remove_member(session: Session, principal: Principal, access: ProjectAccess, user_id: uuid.UUID) -> None:
    access.require("manage-members")
    m = _membership(session, access, user_id)
    if m.role == "pi":
        raise Invalid("the PI cannot be removed from their project")
    if user_id != principal.user.id:  # leaving a project takes no right from anyone
        _check_within_reach(session, access, m)
    session.delete(m)
    audit.record(session, principal.actor, "project.member.removed", project_id=access.project.id,
                 subject_user_id=user_id, target=f"project:{access.project.slug}")
    _changed(session, access.project.id, "members")


def delegate_rights(session: Session, principal: Principal, access: ProjectAccess, user_id: uuid.UUID,
                    rights: list[str], *, fresh_minutes: int) -> Membership:
    """The PI hands named rights to a member (replacing what was delegated before)."""
    if access.membership.role != "pi":
        raise Forbidden("only the project's PI can delegate rights")
    require_fresh_mfa(principal, fresh_minutes)
    wanted = sorted(set(rights))
    bad = [r for r in wanted if r not in DELEGABLE]
    if bad:
        raise Invalid(f"cannot delegate {bad}; delegable rights: {', '.join(DELEGABLE)}")
    m = _membership(session, access, user_id)
    if m.role == "pi":
        raise Invalid("the PI already holds every right")
    before, m.delegated_rights = list(m.delegated_rights or []), wanted
    audit.record(session, principal.actor, "project.rights.delegated", project_id=access.project.id,
                 subject_user_id=user_id, target=f"project:{access.project.slug}",
                 details={"before": before, "after": wanted})
    _changed(session, access.project.id, "members")
    return m


# -- security settings -------------------------------------------------------------------------
@dataclass
class SettingView:
    key: str
    title: str
    description: str
    value: Any
    locked: bool
    changed_at: dt.datetime | None


def list_settings(session: Session, access: ProjectAccess) -> list[SettingView]:
    stored = {s.key: s for s in session.scalars(
        select(ProjectSetting).where(ProjectSetting.project_id == access.project.id))}
    views = []
    for spec in SETTINGS.values():
        row = stored.get(spec.key)
        value = row.value if row else spec.locked
        views.append(SettingView(spec.key, spec.title, spec.description, value, value == spec.locked,
                                 row.changed_at if row else None))
    return views


def get_setting(session: Session, project_id: uuid.UUID, key: str) -> Any:
    """The effective value other capabilities consult (e.g. the DICOM destination's senders)."""
    spec = SETTINGS[key]
    row = session.get(ProjectSetting, (project_id, key))
    return row.value if row else spec.locked


def change_setting(session: Session, principal: Principal, access: ProjectAccess, key: str, value: Any,
                   *, fresh_minutes: int) -> SettingView:
    """Open (or close) one setting. Validated, needs fresh MFA, audited with before and after."""
    spec = SETTINGS.get(key)
    if spec is None:
        raise NotFound(f"no setting {key!r}")
    access.require("manage-settings")
    require_fresh_mfa(principal, fresh_minutes)
    try:
        value = spec.adapter.dump_python(spec.adapter.validate_python(value), mode="json")
    except ValidationError as exc:
        # no `input` echoed back: it may be NaN/Infinity (not JSON: the answer would fail) or 100 KB of text
        raise Invalid(f"invalid value for {key}", errors=exc.errors(include_url=False, include_input=False,
                                                                   include_context=False)) from exc
    if key in SETTING_CHECKS:
        SETTING_CHECKS[key](session, access.project.id, value)
    before = get_setting(session, access.project.id, key)
    row = session.get(ProjectSetting, (access.project.id, key))
    if value == spec.locked:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(ProjectSetting(project_id=access.project.id, key=key, value=value,
                                   changed_by=principal.user.id))
    else:
        row.value, row.changed_by, row.changed_at = value, principal.user.id, utcnow()
    audit.record(session, principal.actor,
                 "project.setting.locked" if value == spec.locked else "project.setting.opened",
                 project_id=access.project.id, target=f"setting:{key}",
                 details={"before": before, "after": value})
    _changed(session, access.project.id, f"setting:{key}")
    return next(v for v in list_settings(session, access) if v.key == key)


# -- audit views -------------------------------------------------------------------------------
def project_audit(session: Session, access: ProjectAccess, *, before_seq: int | None = None,
                  limit: int = 50) -> list[AuditEvent]:
    access.require("view-audit")
    return audit.query(session, project_id=access.project.id, before_seq=before_seq, limit=limit)


@dataclass
class AuditPage:
    events: list[AuditEvent]
    newer: bool  # there are newer events than this page (a "previous" page)
    older: bool  # there are older events (a "next" page)
    actions: list[str]  # every action this project's log holds, for the filter


def project_audit_page(session: Session, access: ProjectAccess, *, action: str = "", actor: str = "",
                       since: dt.date | None = None, until: dt.date | None = None, before: int | None = None,
                       after: int | None = None, limit: int = 25) -> AuditPage:
    """One page of the project's audit log, newest first, filtered by action (prefix), actor
    (part of the name) and day range (inclusive). Keyset pages: ``before``/``after`` a sequence number."""
    access.require("view-audit")
    where = [AuditEvent.project_id == access.project.id]
    if action:
        where.append(AuditEvent.action.startswith(action, autoescape=True))
    if actor:
        where.append(func.lower(AuditEvent.actor).contains(actor.lower(), autoescape=True))
    if since:
        where.append(AuditEvent.at >= dt.datetime.combine(since, dt.time.min, dt.UTC))
    if until:
        where.append(AuditEvent.at < dt.datetime.combine(until + dt.timedelta(days=1), dt.time.min, dt.UTC))

    def exists(*extra: Any) -> bool:
        return session.scalar(select(AuditEvent.seq).where(*where, *extra).limit(1)) is not None

    if after is not None:
        rows = list(session.scalars(select(AuditEvent).where(*where, AuditEvent.seq > after)
                                    .order_by(AuditEvent.seq.asc()).limit(limit + 1)))
        newer, rows = len(rows) > limit, rows[:limit][::-1]
        older = exists(AuditEvent.seq < (rows[-1].seq if rows else after + 1))
    else:
        stmt = select(AuditEvent).where(*where).order_by(AuditEvent.seq.desc()).limit(limit + 1)
        if before is not None:
            stmt = stmt.where(AuditEvent.seq < before)
        rows = list(session.scalars(stmt))
        older, rows = len(rows) > limit, rows[:limit]
        newer = exists(AuditEvent.seq > (rows[0].seq if rows else (before or 1) - 1)) if before is not None \
            else False
    actions = list(session.scalars(select(AuditEvent.action).where(AuditEvent.project_id == access.project.id)
                                   .distinct().order_by(AuditEvent.action)))
    return AuditPage(rows, newer, older, actions)


def users_of(session: Session, ids: set[uuid.UUID]) -> dict[uuid.UUID, User]:
    if not ids:
        return {}
    return {u.id: u for u in session.scalars(select(User).where(User.id.in_(ids)))}


__all__ = ["RIGHTS", "ProjectAccess"]
