"""Who may read archived files: project access, read grants, holds, downloads and their audit events."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Connection, Select, bindparam, event, select
from sqlalchemy.orm import ORMExecuteState, Session

from .. import decision_cache
from ..audit import service as audit
from ..db import utcnow
from ..errors import Conflict, Forbidden, MfaRequired, NotFound
from ..identity.principal import Principal
from ..projects import service as projects
from ..projects.models import Membership, Project, Role
from .models import (
    READY,
    ArchiveFile,
    Dataset,
    DatasetFile,
    DatasetShare,
    DatasetVersion,
)

PUBLISHED_STATES = ("released", "deprecated")  # what a grant other than the owning project's can reach


def project_access(session: Session, principal: Principal, project_id: uuid.UUID, *, managing: bool = False
                   ) -> projects.ProjectAccess:
    """``projects.open_project`` by the project's id (an ended project refused unless ``managing``)."""
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound("not found")
    return projects.open_project(session, principal, project.slug, managing=managing)


# The per-transaction cache of ``readable_projects`` in ``Session.info``: a request that checks many files (a
# DICOMweb retrieve of a study, a DRS bundle) reads the caller's memberships and roles once, not once per file.
# It lives as long as the transaction (a new transaction reads afresh) and is dropped as soon as the session
# writes a membership, a role or a project (closing it ends its members' reads), so a decision never uses rights
# the database no longer holds. Keyed by the day too: an end date passes without a write.
_READABLE = "strongroom.archive.authz.readable"
_RIGHTS_TABLES = frozenset({"memberships", "roles", "projects"})


def _forget_readable(session: Session, *_: object) -> None:
    session.info.pop(_READABLE, None)


def _forget_if_rights_change(session: Session, *_: object) -> None:
    if _READABLE in session.info and any(
            getattr(getattr(o, "__table__", None), "name", None) in _RIGHTS_TABLES
            for o in (*session.new, *session.dirty, *session.deleted)):
        _forget_readable(session)


def _forget_on_bulk_write(state: ORMExecuteState) -> None:
    if (state.is_update or state.is_delete or state.is_insert) and _READABLE in state.session.info:
        _forget_readable(state.session)


event.listen(Session, "after_begin", _forget_readable)
event.listen(Session, "after_commit", _forget_readable)
event.listen(Session, "after_rollback", _forget_readable)
event.listen(Session, "before_flush", _forget_if_rights_change)
event.listen(Session, "do_orm_execute", _forget_on_bulk_write)


def readable_projects(session: Session, principal: Principal) -> set[uuid.UUID]:
    """Projects whose data the caller may read: member with read-data, the project not ended (closed, or past its
    end date: ``projects.project_ended``). One query (memberships with their roles' rights and their projects'
    status and end date), remembered for the rest of the transaction (see ``_READABLE``) and, in a web process, in
    its decision cache until a membership, role, project, user or token changes anywhere (``decision_cache``) or
    the day changes (the key holds it)."""
    if not principal.has_mfa:
        return set()
    today = utcnow().date()
    key = (principal.user.id, principal.project_id, today)
    if session.autoflush and (session.new or session.dirty or session.deleted):
        session.flush()  # a pending membership or role change drops the cached rights first (``_READABLE``)
    cache: dict[tuple[uuid.UUID, uuid.UUID | None, dt.date], frozenset[uuid.UUID]] = \
        session.info.setdefault(_READABLE, {})
    found = cache.get(key)
    if found is None:
        found = decision_cache.cached_readable(session, key)  # the process's, across requests
    if found is None:
        # a token bound to one project (a workspace's) reads through it only
        rows = _core(session).execute(_memberships_statement(principal.project_id is not None),
                                      {"user_id": key[0], "project_id": key[1]})
        found = frozenset(row.project_id for row in rows
                          if ("read-data" in (row.rights or []) or "read-data" in (row.delegated_rights or []))
                          and not projects.project_ended(row, today))
        decision_cache.remember_readable(session, key, found)
    cache[key] = found
    return set(found)


def _core(session: Session) -> Connection:
    """The session's connection, for the read check's plain row queries: they skip the ORM's execution layer
    (no entity is loaded), but see the session's pending changes exactly as ``session.execute`` would —
    autoflush first."""
    if session.autoflush and (session.new or session.dirty or session.deleted):
        session.flush()
    return session.connection()


# The statements of the read check, built once per process (``catalog.page_cache._revision_statement``'s
# pattern): constructing them cost more CPU than running them, and the check runs on every data request.
@cache
def _memberships_statement(bound: bool) -> Select[uuid.UUID, list[str], list[str], str, dt.date]:
    """The caller's memberships with their roles' rights and their projects' status and end date (``bound``: only
    the token's own project)."""
    stmt = (select(Membership.project_id, Role.rights, Membership.delegated_rights, Project.status,
                   Project.end_date)
            .join(Project, Project.id == Membership.project_id)
            .outerjoin(Role, Role.name == Membership.role).where(Membership.user_id == bindparam("user_id")))
    return stmt.where(Membership.project_id == bindparam("project_id")) if bound else stmt


@cache
def _share_statement() -> Select[uuid.UUID, str]:
    """A released (or deprecated) version of a dataset holding the file, shared into one of the projects."""
    return (select(DatasetShare.project_id, DatasetShare.dataset_id)
            .join(DatasetVersion, DatasetVersion.dataset_id == DatasetShare.dataset_id)
            .join(DatasetFile, DatasetFile.version_id == DatasetVersion.id)
            .where(DatasetFile.file_id == bindparam("file_id"),
                   DatasetShare.project_id.in_(bindparam("projects", expanding=True)),
                   DatasetVersion.state.in_(PUBLISHED_STATES))
            .limit(1))


@dataclass(frozen=True)
class ReadGrant:
    """Why the caller may read a file: through which project (or other basis)."""

    basis: str  # owner | share | entitlement | visa | review
    project_id: uuid.UUID | None
    detail: str = ""
    # For entitlement and visa grants: whether the dataset's access policy lets approved applicants
    # download to their own machines (owner and share grants follow the project's setting instead).
    may_download: bool = False
    # For share grants: the dataset shared into the project (reads are audited per dataset).
    dataset_id: str | None = None


@dataclass(frozen=True)
class VersionGrant:
    """Which versions of one dataset a grant opens (the answer of ``datasets.DATASET_READERS``). A grant names
    a dataset or one version of it; a grant to version N opens version N only, never the versions before or
    after it (import versions are cumulative, so a later version holds files the grant never covered).

    ``numbers`` None: every released or deprecated version (an entitlement or visa without a version, a share).
    ``drafts``: drafts and every other state too (members of the owning project only)."""

    numbers: frozenset[int] | None = None
    drafts: bool = False

    def opens(self, version: DatasetVersion) -> bool:
        if self.drafts:
            return True
        return version.state in PUBLISHED_STATES and (self.numbers is None or version.number in self.numbers)

    def __or__(self, other: VersionGrant) -> VersionGrant:
        numbers = None if self.numbers is None or other.numbers is None else self.numbers | other.numbers
        return VersionGrant(numbers, self.drafts or other.drafts)


@dataclass(frozen=True)
class HoldRule:
    """Who may look at a held file, and how that look is audited. Registered by the capability that
    sets the hold (imaging: ``quarantine`` → the ``import`` right, ``imaging.quarantine.viewed``)."""

    right: str
    viewed_event: str


# A held file (``ArchiveFile.hold``) is readable only through ``authorize_review`` and only in-platform;
# every ordinary read, download, DRS object, share, entitlement and visa treats it as absent.
# A hold without a rule here is readable by nobody.
HOLD_RULES: dict[str, HoldRule] = {}


# Credentials that may read plaintext in-platform while downloads are locked, registered by the capability
# that issues them (workspaces: a workspace's own project-bound token, used from the workspace's own network
# address). Each returns where the read happens (``workspace:<id>``) or None.
IN_PLATFORM_READERS: list[Callable[[Session, Any, Principal], str | None]] = []

PLAINTEXT_LOCKED = ("downloads are locked for this project: read it in a workspace, or its PI can open "
                    "'Download to researchers' own machines'")


# Other capabilities (access: entitlements, visas) add ways to be allowed; each returns a grant or None.
GRANT_PROVIDERS: list[Callable[[Session, Principal, ArchiveFile], ReadGrant | None]] = []


def authorize_read(session: Session, principal: Principal, f: ArchiveFile) -> ReadGrant:
    """Checked on every request — holds and grants are read fresh; memberships, release state and shares too, or,
    in a web process, come from its decision cache while none of them changed anywhere (``decision_cache``)."""
    if f.hold is not None:
        # Quarantined (or otherwise held) files do not exist for ordinary reads: same answer as a
        # made-up id, for members, the PI, applicants, share recipients and admins alike.
        raise NotFound("no such file")
    readable = readable_projects(session, principal)
    if f.project_id in readable:
        return ReadGrant("owner", f.project_id)
    if readable:
        key = (f.id, frozenset(readable))
        share = decision_cache.cached_share(session, key)  # the process's, across requests
        if share is decision_cache.NOT_CACHED:
            row = _core(session).execute(_share_statement(), {"file_id": f.id, "projects": list(readable)}).first()
            share = (row[0], row[1]) if row is not None else None
            decision_cache.remember_share(session, key, share)
        if share is not None:
            return ReadGrant("share", share[0], dataset_id=share[1])
    for provider in GRANT_PROVIDERS:
        grant = provider(session, principal, f)
        if grant is not None:
            return grant
    if not principal.has_mfa:
        # "log in with MFA" only to someone whose grant needs it (an entitlement, a visa): told to anyone else,
        # it would say that the file exists, which a made-up id does not
        with_mfa = dataclasses.replace(principal, mfa_at=utcnow())
        if any(provider(session, with_mfa, f) is not None for provider in GRANT_PROVIDERS):
            raise MfaRequired("data access needs a login with multi-factor authentication")
    refuse_if_ended(session, principal, f.project_id)
    raise NotFound("no such file")


def refuse_if_ended(session: Session, principal: Principal, project_id: uuid.UUID) -> None:
    """On the way to a refusal: a member who would read the project's data but for its end is told that
    (``projects.ended_refusal``, 403) instead of NotFound; anyone else learns nothing here."""
    if not principal.has_mfa or principal.project_id not in (None, project_id):
        return
    row = session.execute(select(Project, Membership).join(Membership, Membership.project_id == Project.id)
                          .where(Project.id == project_id, Membership.user_id == principal.user.id)).first()
    if row is not None and projects.project_ended(row[0]) \
            and "read-data" in projects.effective_rights(session, row[1]):
        raise projects.ended_refusal(row[0])


def authorize_review(session: Session, principal: Principal, f: ArchiveFile) -> ReadGrant:
    """In-platform reading of a held file, for a member of its project with the hold's review right
    (MFA as for every data read). NotFound for everyone else, exactly as for a made-up id."""
    rule = HOLD_RULES.get(f.hold or "")
    if rule is None:
        raise NotFound("no such file")
    membership = session.scalar(select(Membership).where(Membership.user_id == principal.user.id,
                                                         Membership.project_id == f.project_id))
    if membership is None or rule.right not in projects.effective_rights(session, membership):
        raise NotFound("no such file")
    if not principal.has_mfa:
        raise MfaRequired("data access needs a login with multi-factor authentication")
    project = session.get_one(Project, f.project_id)
    if projects.project_ended(project):  # an ended project's quarantine is looked at no more
        raise projects.ended_refusal(project)
    return ReadGrant("review", f.project_id, detail=f.hold or "")


def authorize_download(session: Session, principal: Principal, file_id: str) -> tuple[ArchiveFile, ReadGrant]:
    """A download to the caller's own machine: a read grant, plus who decides about downloads —
    the project's setting for its members (and projects it shares into), the dataset's access
    policy for approved applicants and visa holders."""
    f = session.get(ArchiveFile, file_id)
    if f is None:
        raise NotFound("no such file")
    if not principal.can("data:read"):
        raise Forbidden("this token lacks the 'data:read' scope")
    grant = authorize_read(session, principal, f)
    if f.state != READY:
        raise Conflict(f"the file is {f.state}, not ready")
    require_download_allowed(session, grant)
    return f, grant


def require_download_allowed(session: Session, grant: ReadGrant) -> None:
    """Whether a read grant lets the bytes leave the platform (a download, a WADO-RS retrieve): the project's
    setting for its members (and projects it shares into), the dataset's access policy for approved applicants
    and visa holders. Every route that hands out a file's bytes asks this, not only the download route."""
    if (grant.basis in ("owner", "share") and grant.project_id is not None
            and not projects.get_setting(session, grant.project_id, "download_allowed")):
        raise Forbidden("downloads are locked for this project: its PI can open "
                        "'Download to researchers' own machines'")
    if grant.basis not in ("owner", "share") and not grant.may_download:
        raise Forbidden("this dataset is for in-platform use only: its access policy does not let approved "
                        "users download to their own machines")


def plaintext_basis(session: Session, settings: Any, principal: Principal, grant: ReadGrant) -> str:
    """The one rule for decrypted bytes leaving the hub (``/files/{id}/plaintext``, DRS's ``plaintext``
    access method, fsspec ``via="plaintext"``). Returns why they may:

    - ``review``: a named reviewer reading a held (quarantined) file to decide on it — a deliberate,
      separately audited in-platform review read (``authorize_review`` already checked the right);
    - ``workspace:<id>``: a workspace's own token, from that workspace's own network address
      (``IN_PLATFORM_READERS``) — the bytes stay on the platform's compute; the same token copied to a
      laptop does not qualify;
    - ``download``: otherwise the read is a download to the caller's machine, so ``require_download_allowed``
      decides (the project's setting; an approved applicant's dataset policy) and it is audited as one.

    Raises Forbidden (with what to do instead) when none applies."""
    if grant.basis == "review":
        return "review"
    for reader in IN_PLATFORM_READERS:
        where = reader(session, settings, principal)
        if where:
            return where
    try:
        require_download_allowed(session, grant)
    except Forbidden as exc:
        raise Forbidden(PLAINTEXT_LOCKED if grant.basis in ("owner", "share") else exc.detail) from None
    return "download"


def _own_datasets(session: Session, grant: ReadGrant, f: ArchiveFile) -> dict[str, Any]:
    """For a read of the project's own file: the project's datasets holding it (in any version), named as a
    share's dataset is — ``dataset`` when one holds it, ``datasets`` when several; nothing for a plain file."""
    if grant.basis != "owner":
        return {}
    ids = sorted(session.scalars(
        select(DatasetVersion.dataset_id).distinct()
        .join(DatasetFile, DatasetFile.version_id == DatasetVersion.id)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(DatasetFile.file_id == f.id, Dataset.project_id == f.project_id)))
    if not ids:
        return {}
    return {"dataset": ids[0]} if len(ids) == 1 else {"datasets": ids}


def record_download(session: Session, principal: Principal, f: ArchiveFile, grant: ReadGrant, **details: object
                    ) -> dict[str, Any]:
    """The "started" event, in the request's transaction; its details (plus the started event's number)
    are repeated on the completed/failed/aborted event written when the body ends."""
    recorded = {"basis": grant.basis, "via_project": str(grant.project_id) if grant.project_id else None,
                **({"grant": grant.detail} if grant.detail else {}),
                **({"dataset": grant.dataset_id} if grant.dataset_id else _own_datasets(session, grant, f)),
                # the credential that read (a workspace's project-bound token is ``token:<prefix>``)
                "credential": principal.credential_id,
                **{k: v for k, v in details.items() if v is not None}}
    event = audit.record(session, principal.actor, "archive.download.started", project_id=f.project_id,
                         target=f"file:{f.id}", details=recorded)
    return {**recorded, "started_seq": event.seq}


def record_review_view(session: Session, principal: Principal, f: ArchiveFile, **details: object
                       ) -> dict[str, Any]:
    """A reviewer's in-platform read of a held file: its own event, never counted as a download."""
    rule = HOLD_RULES[f.hold or ""]
    recorded = {"mode": "in-platform", **{k: v for k, v in details.items() if v is not None}}
    event = audit.record(session, principal.actor, rule.viewed_event, project_id=f.project_id,
                         target=f"file:{f.id}", details=recorded)
    return {**recorded, "started_seq": event.seq}
