"""The airlock's state changes: requests, checks, reviews, overrides, transfers, expiry and the outbox.

Every function takes a session (or, for the long jobs, the hub) and plain arguments, checks rights itself
and writes its audit events in the caller's transaction. States: submitted → checking → in_review →
approved → transferring → done | rejected | failed | expired.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import String, and_, cast, exists, func, select
from sqlalchemy.orm import Session

from ..archive import service as archive
from ..archive.backend import storage_for
from ..archive.models import DELETED, READY, ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..archive.storage.base import Storage
from ..audit import service as audit
from ..audit.service import Actor
from ..config import AirlockS3Credential, AirlockSettings, AirlockSftpCredential
from ..db import utcnow
from ..errors import Conflict, Forbidden, Invalid, NotFound
from ..hub import Hub
from ..identity.principal import Principal
from ..identity.service import find_user, require_fresh_mfa
from ..notify import service as notify
from ..projects import service as projects
from ..projects.models import Membership, Project, ProjectSetting
from . import checks
from .models import (
    APPROVED,
    EXPIRED,
    FAILED,
    IN_REVIEW,
    OPEN_STATES,
    REJECTED,
    SUBMITTED,
    AirlockFile,
    AirlockRequest,
    AirlockReview,
    OutboxItem,
)
from .plaintext import file_ref, plaintext_copy
from .settings import Destination

HOLD = "airlock"
HOLD_RULE = archive.HoldRule(right="import", viewed_event="airlock.file.viewed")  # see includeme
MAX_FILES = 1000
TRANSFER_ATTEMPTS = 5  # a destination that keeps failing marks the request failed
MAX_FILE_BYTES = 50 * 1024**3  # a file larger than this fails its size check (a reviewer cannot judge it)
CHECK_JOB, TRANSFER_JOB = "airlock.check", "airlock.transfer"
_DESTINATIONS: TypeAdapter[list[Any]] = TypeAdapter(list[Destination])


# -- settings ----------------------------------------------------------------------------------
PINNED_RECIPIENT = "user_id"  # a request's copy of a recipient destination: the account chosen at request time


def destinations(session: Session, project_id: uuid.UUID) -> list[dict[str, Any]]:
    value = projects.get_setting(session, project_id, "egress_destinations") or []
    return list(value)


def reviewer_ids(session: Session, project_id: uuid.UUID) -> list[uuid.UUID]:
    """The named reviewers who are still members of the project."""
    named = [uuid.UUID(v) for v in projects.get_setting(session, project_id, "airlock_reviewers") or []]
    if not named:
        return []
    members = set(session.scalars(select(Membership.user_id).where(Membership.project_id == project_id,
                                                                   Membership.user_id.in_(named))))
    return [u for u in named if u in members]


def _membership(session: Session, project_id: uuid.UUID, user_id: uuid.UUID) -> Membership | None:
    return session.scalar(select(Membership).where(Membership.project_id == project_id,
                                                   Membership.user_id == user_id))


def is_reviewer(session: Session, access: projects.ProjectAccess, user_id: uuid.UUID) -> bool:
    return user_id in reviewer_ids(session, access.project.id)


def set_reviewers(session: Session, principal: Principal, access: projects.ProjectAccess, users: list[str], *,
                  fresh_minutes: int) -> list[uuid.UUID]:
    """Name the reviewers (usernames, e-mails or ids of members): a locked setting, fresh MFA, audited."""
    access.require("manage-settings")  # before the names are looked up: no hints for those who may not change it
    ids: list[str] = []
    for ref in users:
        user = find_user(session, ref)
        if user is None or _membership(session, access.project.id, user.id) is None:
            raise Invalid(f"{ref!r} is not a member of this project")
        if str(user.id) not in ids:
            ids.append(str(user.id))
    projects.change_setting(session, principal, access, "airlock_reviewers", ids, fresh_minutes=fresh_minutes)
    return [uuid.UUID(i) for i in ids]


def check_approvals(session: Session, project_id: uuid.UUID, value: Any) -> None:
    """``airlock_approvals`` never asks for more approvals than there are named reviewers (members)."""
    named = len(reviewer_ids(session, project_id))
    if int(value) > named:
        raise Invalid(f"{value} approvals need at least {value} named reviewers, and this project names {named}: "
                      "name more reviewers first")


def check_reviewers(session: Session, project_id: uuid.UUID, value: Any) -> None:
    """Fewer reviewers than the approvals needed: refused, unless the list grows (from the default none)."""
    needed = int(projects.get_setting(session, project_id, "airlock_approvals"))
    before = len(reviewer_ids(session, project_id))
    try:
        named = {uuid.UUID(str(v)) for v in value}
    except ValueError:  # the setting's type admits only UUIDs: this guards a caller that skipped it
        raise Invalid("a reviewer is named by a user id (a UUID)") from None
    members = set(session.scalars(select(Membership.user_id).where(Membership.project_id == project_id)))
    after = len(named & members)
    if after < needed and after < before:
        raise Invalid(f"{needed} approvals are needed, so at least {needed} reviewers: lower the approvals "
                      f"first (this list names {after})")


def receiving_project(session: Session, slug: str, source: Project) -> Project | None:
    """The project ``slug`` names when it may receive ``source``'s exports: active, not ``source`` itself, and
    its PI lists ``source`` in its ``airlock_sources`` (a locked setting: fresh MFA, audited). None otherwise:
    a project that does not exist and one that did not agree look the same."""
    target = session.scalar(select(Project).where(Project.slug == slug))
    if target is None or target.id == source.id or target.status != "active":
        return None
    return target if source.slug in (projects.get_setting(session, target.id, "airlock_sources") or []) else None


def not_accepted(slug: str, source: Project) -> str:
    return (f"project {slug!r} does not accept exports from {source.slug!r}: its PI must first list "
            f"{source.slug!r} among the projects it accepts exports from (its airlock settings)")


def check_destinations(session: Session, project_id: uuid.UUID, value: Any) -> None:
    """``egress_destinations``: each entry added (the page's form or the settings API) that names another project
    needs that project's consent (`receiving_project`); one naming a recipient, an account of this hub. Entries
    already on the list stay as they are (the transfer checks them again)."""
    source = session.get(Project, project_id)
    assert source is not None
    current = destinations(session, project_id)
    for entry in value:
        if entry in current:
            continue
        if entry["kind"] == "project":
            if entry["project"] == source.slug:
                raise Invalid("a project cannot export into itself")
            if receiving_project(session, entry["project"], source) is None:
                raise Invalid(not_accepted(entry["project"], source))
        elif entry["kind"] == "recipient" and find_user(session, entry["user"]) is None:
            raise Invalid(f"no user {entry['user']!r} on this hub")


def add_destination(session: Session, principal: Principal, access: projects.ProjectAccess, entry: dict[str, Any],
                    *, fresh_minutes: int, configured: AirlockSettings) -> list[dict[str, Any]]:
    """One more allow-list entry (the page's form); an ``s3``/``sftp`` entry names one of the hub's configured
    credentials (``configured``) that serves this project, never holds one."""
    access.require("manage-settings")  # before anything is validated: no hints for those who may not change it
    current = destinations(session, access.project.id)
    try:
        parsed = _DESTINATIONS.validate_python([entry])[0]
    except ValidationError as exc:
        raise Invalid("invalid destination", errors=exc.errors(include_url=False, include_input=False,
                                                                  include_context=False)) from None
    if any(d["name"] == parsed.name for d in current):
        raise Invalid(f"there is already a destination named {parsed.name!r}")
    if parsed.kind in ("s3", "sftp") and credential_for(configured, parsed.kind, parsed.credential,
                                                        access.project.slug) is None:
        raise Invalid(f"the hub has no {parsed.kind.upper()} target {parsed.credential!r} for this project "
                      f"([airlock.{parsed.kind}.<name>] lists the projects it serves)")
    value = [*current, parsed.model_dump(mode="json", exclude_none=True)]
    projects.change_setting(session, principal, access, "egress_destinations", value, fresh_minutes=fresh_minutes)
    return value


def credential_for(configured: AirlockSettings, kind: str, name: str, slug: str
                   ) -> AirlockS3Credential | AirlockSftpCredential | None:
    """The hub's ``[airlock.<kind>.<name>]`` when it serves project ``slug``; None when it does not exist or
    serves other projects only (the same answer: no project learns of another's targets)."""
    credentials: dict[str, Any] = getattr(configured, kind, {})
    found = credentials.get(name)
    return found if found is not None and found.serves(slug) else None


def remove_destination(session: Session, principal: Principal, access: projects.ProjectAccess, name: str, *,
                       fresh_minutes: int) -> list[dict[str, Any]]:
    access.require("manage-settings")
    current = destinations(session, access.project.id)
    value = [d for d in current if d["name"] != name]
    if len(value) == len(current):
        raise Invalid(f"no destination named {name!r}")
    projects.change_setting(session, principal, access, "egress_destinations", value, fresh_minutes=fresh_minutes)
    return value


# -- reading -----------------------------------------------------------------------------------
def list_requests(session: Session, access: projects.ProjectAccess, *, state: str | None = None
                  ) -> list[AirlockRequest]:
    stmt = (select(AirlockRequest).where(AirlockRequest.project_id == access.project.id)
            .order_by(AirlockRequest.created_at.desc()).limit(500))
    if state:
        stmt = stmt.where(AirlockRequest.state == state)
    return list(session.scalars(stmt))


def get_request(session: Session, access: projects.ProjectAccess, request_id: str) -> AirlockRequest:
    r = session.get(AirlockRequest, request_id)
    if r is None or r.project_id != access.project.id:
        raise NotFound("no such airlock request")
    return r


def request_files(session: Session, r: AirlockRequest) -> list[AirlockFile]:
    return list(session.scalars(select(AirlockFile).where(AirlockFile.request_id == r.id)
                                .order_by(AirlockFile.path, AirlockFile.file_id)))


def request_reviews(session: Session, r: AirlockRequest) -> list[AirlockReview]:
    return list(session.scalars(select(AirlockReview).where(AirlockReview.request_id == r.id)
                                .order_by(AirlockReview.id)))


def approvals(session: Session, r: AirlockRequest) -> int:
    """Approvals by reviewers who are still named (and members): one taken off the list, or who left the
    project, since approving no longer vouches for the request."""
    current = set(reviewer_ids(session, r.project_id))
    return sum(1 for v in request_reviews(session, r) if v.decision == "approve" and v.reviewer_id in current)


def destination_still_approved(session: Session, r: AirlockRequest) -> bool:
    """An export's destination is still on the project's list, unchanged: the PI may take one off (or change
    it) while a request to it waits, and nothing is sent to a destination the project no longer approves. A
    receiving project must still accept the project's exports (its PI may withdraw that meanwhile)."""
    if r.direction != "export":
        return True
    chosen = {k: v for k, v in (r.destination or {}).items() if k != PINNED_RECIPIENT}
    if chosen not in destinations(session, r.project_id):
        return False
    if chosen.get("kind") == "project":
        source = session.get(Project, r.project_id)
        return source is not None and receiving_project(session, str(chosen["project"]), source) is not None
    return True


# -- requests ----------------------------------------------------------------------------------
def _expiry(session: Session, project_id: uuid.UUID) -> dt.datetime:
    days = int(projects.get_setting(session, project_id, "airlock_expiry_days"))
    return utcnow() + dt.timedelta(days=days)


def _new_request(session: Session, principal: Principal, access: projects.ProjectAccess, direction: str,
                 files: list[ArchiveFile], purpose: str, destination: dict[str, Any] | None,
                 version_id: int | None = None) -> AirlockRequest:
    purpose = purpose.strip()
    if not purpose:
        raise Invalid("say what the files are for (purpose)")
    if len(purpose) > 5000:
        raise Invalid("the purpose is at most 5000 characters")
    if not files:
        raise Invalid("name at least one file")
    if len(files) > MAX_FILES:
        raise Invalid(f"at most {MAX_FILES} files per request")
    r = AirlockRequest(id=archive.new_accession("SRX"), project_id=access.project.id, direction=direction,
                       requester_id=principal.user.id, purpose=purpose, destination=destination,
                       dataset_version_id=version_id, state=SUBMITTED,
                       approvals_needed=int(projects.get_setting(session, access.project.id, "airlock_approvals")),
                       expires_at=_expiry(session, access.project.id))
    session.add(r)
    session.flush()
    for f in files:
        assert f.plaintext_size is not None and f.plaintext_sha256 is not None
        session.add(AirlockFile(request_id=r.id, file_id=f.id, path=f.path, size=f.plaintext_size,
                                sha256=f.plaintext_sha256))
    audit.record(session, principal.actor, f"airlock.{direction}.submitted", project_id=access.project.id,
                 target=f"airlock:{r.id}",
                 details={"files": len(files), "destination": destination, "purpose": purpose[:500]})
    session.flush()
    check_coverage(session, access.project.id)
    from ..jobs import service as jobs

    jobs.enqueue(session, CHECK_JOB, {"request_id": r.id}, dedup_key=f"airlock-check:{r.id}")
    return r


def _project_files(session: Session, access: projects.ProjectAccess, file_ids: list[str], *, hold: str | None
                   ) -> list[ArchiveFile]:
    out = []
    for file_id in dict.fromkeys(file_ids):
        f = session.get(ArchiveFile, file_id)
        if f is None or f.project_id != access.project.id or f.hold != hold:
            raise Invalid(f"{file_id}: no such file in this project" + (" staged for import" if hold else ""))
        if f.state != READY:
            raise Invalid(f"{file_id}: the file is {f.state}, not ready")
        out.append(f)
    return out


def create_export(session: Session, principal: Principal, access: projects.ProjectAccess, *, file_ids: list[str],
                  purpose: str, destination: str, dataset_id: str | None = None,
                  version: int | None = None) -> AirlockRequest:
    """An export request: files of the project's archive (or a released version's files) to a destination
    on the project's allow-list. Needs the ``export`` right."""
    access.require("export")
    if access.project.status != "active":
        raise Conflict("the project is closed")
    chosen = next((d for d in destinations(session, access.project.id) if d["name"] == destination), None)
    if chosen is None:
        raise Invalid(f"{destination!r} is not one of this project's approved export destinations")
    if chosen["kind"] == "project" and receiving_project(session, chosen["project"], access.project) is None:
        raise Invalid(not_accepted(chosen["project"], access.project))
    if chosen["kind"] == "recipient":  # the person the name means now, pinned: a later rename or re-use of
        recipient = find_user(session, chosen["user"])  # the name or address must not redirect the files
        if recipient is None or not recipient.is_active:
            raise Invalid(f"the recipient {chosen['user']!r} is not an active user of this hub")
        chosen = {**chosen, PINNED_RECIPIENT: str(recipient.id)}
    version_id = None
    ids = list(file_ids)
    if dataset_id is not None:
        v = session.scalar(select(DatasetVersion).join(Dataset, Dataset.id == DatasetVersion.dataset_id)
                           .where(Dataset.id == dataset_id, Dataset.project_id == access.project.id,
                                  DatasetVersion.number == (version or 0)))
        if v is None or v.state != "released":
            raise Invalid(f"{dataset_id} has no released version {version} in this project")
        version_id = v.id
        ids += list(session.scalars(select(DatasetFile.file_id).where(DatasetFile.version_id == v.id)))
    files = _project_files(session, access, ids, hold=None)
    return _new_request(session, principal, access, "export", files, purpose, chosen, version_id)


def stage_upload(session: Session, principal: Principal, access: projects.ProjectAccess, storage: Storage, *,
                 path: str, size: int, sha256: str | None) -> ArchiveFile:
    """An upload into the project held as ``airlock`` (staged for an import request): its parts and
    completion go through the archive's ordinary upload API; it is absent for every ordinary read."""
    access.require("import")
    f = archive.begin_upload(session, principal, access, storage, path=path, size=size, sha256=sha256)
    f.hold = HOLD
    return f


def stage_small(hub: Hub, session: Session, principal: Principal, access: projects.ProjectAccess, *, path: str,
                data: bytes) -> ArchiveFile:
    """A small browser upload staged for import (encrypted in memory, then the normal ingest), held."""
    access.require("import")
    f = archive.receive_small_plaintext(hub, session, principal, access, storage_for(hub), path=path, data=data)
    f.hold = HOLD
    return f


def staged_files(session: Session, principal: Principal, access: projects.ProjectAccess) -> list[ArchiveFile]:
    """The caller's staged uploads not yet in an import request."""
    taken = select(AirlockFile.file_id)
    return list(session.scalars(select(ArchiveFile).where(
        ArchiveFile.project_id == access.project.id, ArchiveFile.hold == HOLD,
        ArchiveFile.uploader_id == principal.user.id, ArchiveFile.id.not_in(taken)).order_by(ArchiveFile.path)))


def create_import(session: Session, principal: Principal, access: projects.ProjectAccess, *, file_ids: list[str],
                  purpose: str) -> AirlockRequest:
    """An import request over staged (held) uploads of the caller's. Needs the ``import`` right."""
    access.require("import")
    files = _project_files(session, access, file_ids, hold=HOLD)
    for f in files:
        if f.uploader_id != principal.user.id:
            raise Invalid(f"{f.id}: stage your own uploads")
        if session.scalar(select(AirlockFile.request_id).where(AirlockFile.file_id == f.id).limit(1)):
            raise Invalid(f"{f.id}: already in an import request")
    return _new_request(session, principal, access, "import", files, purpose, None)


# -- reviewer coverage -------------------------------------------------------------------------
def possible_approvals(session: Session, r: AirlockRequest) -> int:
    """Approvals given plus those the named reviewers still could give (never the requester's own)."""
    reviewed = {v.reviewer_id for v in request_reviews(session, r)}
    able = [u for u in reviewer_ids(session, r.project_id) if u != r.requester_id and u not in reviewed]
    return approvals(session, r) + len(able)


def check_coverage(session: Session, project_id: uuid.UUID, what: str = "") -> None:
    """After members or reviewers changed (a ``PROJECT_CHANGED`` listener) or a request was made: an open
    request that can no longer get its approvals is marked, audited and its PI told (once); one that can
    again is unmarked."""
    if what and what not in ("members", "setting:airlock_reviewers"):
        return
    pi = session.scalar(select(Membership.user_id).where(Membership.project_id == project_id,
                                                         Membership.role == "pi"))
    for r in session.scalars(select(AirlockRequest).where(AirlockRequest.project_id == project_id,
                                                          AirlockRequest.state.in_(OPEN_STATES))):
        possible = possible_approvals(session, r)
        if possible >= r.approvals_needed:
            r.short_of_reviewers_at = None
            continue
        if r.short_of_reviewers_at is not None:
            continue
        r.short_of_reviewers_at = utcnow()
        audit.record(session, Actor.system("airlock"), "airlock.request.short_of_reviewers", project_id=project_id,
                     target=f"airlock:{r.id}", details={"needed": r.approvals_needed, "possible": possible})
        if pi is not None:
            _notify(session, r, "airlock_short_of_reviewers", [pi], needed=r.approvals_needed, possible=possible)


# -- notifications -----------------------------------------------------------------------------
def _notify(session: Session, r: AirlockRequest, template: str, user_ids: list[uuid.UUID], **extra: Any) -> None:
    project = session.get(Project, r.project_id)
    assert project is not None
    for user_id in dict.fromkeys(user_ids):
        notify.notify_user(session, user_id, template, {
            "request_id": r.id, "project": project.slug, "direction": r.direction, "state": r.state,
            "reason": r.reason or "", **extra})


def _everyone(session: Session, r: AirlockRequest) -> list[uuid.UUID]:
    return [r.requester_id, *reviewer_ids(session, r.project_id)]


def _set_state(session: Session, actor: Actor, r: AirlockRequest, state: str, *, reason: str | None = None,
               **details: Any) -> None:
    before = r.state
    r.state, r.updated_at = state, utcnow()
    if reason is not None:
        r.reason = reason
    audit.record(session, actor, f"airlock.request.{state}", outcome="failed" if state == FAILED else "ok",
                 project_id=r.project_id, target=f"airlock:{r.id}",
                 details={"from": before, **({"reason": reason} if reason else {}), **details})


# -- reviews -----------------------------------------------------------------------------------
def review(session: Session, principal: Principal, access: projects.ProjectAccess, request_id: str, *,
           decision: str, reason: str = "", fresh_minutes: int) -> AirlockRequest:
    """A named reviewer approves or rejects (with a reason). Never one's own request; an approval sends data
    on its way, so it needs a second factor within ``fresh_minutes`` (a rejection does not), and is refused
    while a check failed and the PI has not overridden it. N approvals → the transfer job."""
    r = get_request(session, access, request_id)
    if decision not in ("approve", "reject"):
        raise Invalid("decision must be 'approve' or 'reject'")
    if not is_reviewer(session, access, principal.user.id):
        raise Forbidden("you are not an airlock reviewer of this project")
    if r.requester_id == principal.user.id:
        raise Forbidden("nobody reviews their own request")
    if r.state != IN_REVIEW:
        raise Conflict(f"the request is {r.state.replace('_', ' ')}, not in review")
    reason = reason.strip()
    if decision == "reject" and not reason:
        raise Invalid("give a reason for the rejection")
    if decision == "approve" and not destination_still_approved(session, r):
        raise Conflict(f"{(r.destination or {}).get('name')!r} is no longer one of this project's approved export "
                       "destinations (removed or changed since the request was made): reject the request")
    if decision == "approve" and r.checks_passed is False and not r.override_reason:
        raise Conflict("a file failed its automatic checks: approval is blocked until the PI overrides it "
                       "with a reason (or the request is rejected)")
    if session.scalar(select(AirlockReview.id).where(AirlockReview.request_id == r.id,
                                                     AirlockReview.reviewer_id == principal.user.id)):
        raise Conflict("you have already reviewed this request")
    if decision == "approve":
        require_fresh_mfa(principal, fresh_minutes)
    session.add(AirlockReview(request_id=r.id, reviewer_id=principal.user.id, decision=decision, reason=reason[:5000]))
    audit.record(session, principal.actor, f"airlock.review.{decision}d", project_id=r.project_id,
                 target=f"airlock:{r.id}", details={"reason": reason[:500]} if reason else {})
    session.flush()
    if decision == "reject":
        _set_state(session, principal.actor, r, REJECTED, reason=reason)
        _notify(session, r, "airlock_decided", _everyone(session, r))
    elif approvals(session, r) >= r.approvals_needed:
        _set_state(session, principal.actor, r, APPROVED, approvals=approvals(session, r))
        from ..jobs import service as jobs

        jobs.enqueue(session, TRANSFER_JOB, {"request_id": r.id}, dedup_key=f"airlock-transfer:{r.id}",
                     max_attempts=TRANSFER_ATTEMPTS)
        _notify(session, r, "airlock_decided", _everyone(session, r))
    return r


def override(session: Session, principal: Principal, access: projects.ProjectAccess, request_id: str, *,
             reason: str, fresh_minutes: int) -> AirlockRequest:
    """The PI lets a request whose checks failed be approved: a reason, fresh MFA, audited. Never on the PI's
    own request: letting one's own files past the checks takes a second person."""
    r = get_request(session, access, request_id)
    if access.membership.role != "pi":
        raise Forbidden("only the project's PI can override a failed check")
    if r.requester_id == principal.user.id:
        raise Forbidden("nobody overrides the checks of their own request: fix the files and request again, or "
                        "reject it")
    require_fresh_mfa(principal, fresh_minutes)
    if r.state != IN_REVIEW or r.checks_passed is not False:
        raise Conflict("only a request in review whose checks failed can be overridden")
    reason = reason.strip()
    if not reason:
        raise Invalid("give a reason for the override")
    r.override_reason, r.override_by, r.updated_at = reason[:5000], principal.user.id, utcnow()
    audit.record(session, principal.actor, "airlock.checks.overridden", project_id=r.project_id,
                 target=f"airlock:{r.id}", details={"reason": reason[:500]})
    return r


# -- expiry (job) ------------------------------------------------------------------------------
def expire_due(session: Session, now: dt.datetime | None = None) -> int:
    now = now or utcnow()
    due = list(session.scalars(select(AirlockRequest).where(AirlockRequest.state.in_(OPEN_STATES),
                                                            AirlockRequest.expires_at < now).limit(1000)))
    for r in due:
        _set_state(session, Actor.system("airlock"), r, EXPIRED, reason="no decision before it expired")
        _notify(session, r, "airlock_decided", _everyone(session, r))
    return len(due)


# -- my reviews (across projects) --------------------------------------------------------------
def _waiting_for(user_id: uuid.UUID) -> Any:
    """In-review requests of projects where ``user_id`` is a member and a named reviewer, not their own, not
    yet reviewed by them, in a project that has not ended (its requests can no longer be opened): one query,
    driven by the memberships index and (project_id, state)."""
    return (select(AirlockRequest)
            .join(Membership, and_(Membership.project_id == AirlockRequest.project_id, Membership.user_id == user_id))
            .join(ProjectSetting, and_(ProjectSetting.project_id == AirlockRequest.project_id,
                                       ProjectSetting.key == "airlock_reviewers"))
            .where(AirlockRequest.state == IN_REVIEW, AirlockRequest.requester_id != user_id,
                   AirlockRequest.project_id.in_(select(Project.id).where(projects.open_clause())),
                   cast(ProjectSetting.value, String).contains(f'"{user_id}"'),  # the JSON list of ids
                   ~exists().where(AirlockReview.request_id == AirlockRequest.id,
                                   AirlockReview.reviewer_id == user_id)))


def waiting_count(session: Session, user_id: uuid.UUID) -> int:
    return int(session.scalar(select(func.count()).select_from(_waiting_for(user_id).subquery())) or 0)


def _whole_account(principal: Principal) -> None:
    """What spans the caller's projects (their reviews, their outbox) is not a project-bound token's (a notebook
    workspace's): it acts in its one project only. (`deps.ACCOUNT_PATHS` refuses it on these routes first.)"""
    if principal.project_id is not None:
        raise Forbidden("a workspace's token acts only inside its project: use the hub's pages or your own token")


def my_reviews(session: Session, principal: Principal) -> list[tuple[AirlockRequest, str]]:
    """The requests waiting for the caller's review, with their project's slug, oldest first."""
    _whole_account(principal)
    stmt = (_waiting_for(principal.user.id).join(Project, Project.id == AirlockRequest.project_id)
            .add_columns(Project.slug).order_by(AirlockRequest.created_at).limit(500))
    return [(r, slug) for r, slug in session.execute(stmt)]


# -- in-platform look and the outbox -----------------------------------------------------------
def may_look(session: Session, access: projects.ProjectAccess, principal: Principal) -> bool:
    return access.membership.role == "pi" or is_reviewer(session, access, principal.user.id)


def preview(hub: Hub, session: Session, principal: Principal, access: projects.ProjectAccess, request_id: str,
            file_id: str) -> dict[str, Any]:
    """The first rows of a table or the beginning of a text, for the project's reviewers and PI; audited."""
    r = get_request(session, access, request_id)
    if not may_look(session, access, principal):
        raise Forbidden("only the project's airlock reviewers and its PI look at a request's content")
    if session.get(AirlockFile, (r.id, file_id)) is None:
        raise NotFound("no such file in this request")
    f = session.get(ArchiveFile, file_id)
    if f is None or f.state != READY:
        raise NotFound("no such file")
    with plaintext_copy(hub, file_ref(hub, session, f), limit=4 * 1024 * 1024) as path:
        shown = checks.preview(path, f.path)
    audit.record(session, principal.actor, "airlock.file.viewed", project_id=r.project_id, target=f"file:{f.id}",
                 details={"request": r.id, "mode": "in-platform preview"})
    return shown


def my_outbox(session: Session, principal: Principal) -> list[OutboxItem]:
    _whole_account(principal)
    return list(session.scalars(select(OutboxItem).where(OutboxItem.recipient_id == principal.user.id)
                                .order_by(OutboxItem.created_at.desc())))


def take_outbox_item(session: Session, principal: Principal, item_id: uuid.UUID) -> OutboxItem:
    """The recipient's one download: marked taken (and audited) before the first byte is sent."""
    _whole_account(principal)
    if not principal.has_mfa:
        raise Forbidden("receiving data needs a login with multi-factor authentication")
    item = session.get(OutboxItem, item_id, with_for_update=True)
    if item is None or item.recipient_id != principal.user.id:
        raise NotFound("no such outbox file")
    source = session.get(ArchiveFile, item.source_file_id)
    if source is None or source.state == DELETED:  # retention deleted the file: its copies go with it
        raise NotFound("no such outbox file")
    if item.downloaded_at is not None:
        raise Conflict("this file was already downloaded: an outbox file is delivered once")
    if item.removed_at is not None or item.body_key is None:
        raise Conflict("this file was removed from the outbox (not downloaded in time): ask the requester for "
                       "a new export")
    item.downloaded_at = utcnow()
    r = session.get(AirlockRequest, item.request_id)
    assert r is not None
    audit.record(session, principal.actor, "airlock.outbox.download.started", project_id=r.project_id,
                 target=f"file:{item.source_file_id}", subject_user_id=principal.user.id,
                 details={"outbox": str(item.id), "request": r.id, "key": item.key_fingerprint})
    return item

