"""Append to and verify the hash-chained audit log.

Each event's hash is HMAC-SHA256 over its canonical JSON (sequence number and previous hash
included) keyed with a secret kept outside the database, so someone who can edit rows cannot
simply recompute the chain. Events are written in the same transaction as the change they
describe: either both land or neither does.

The key comes from the hub secret. When that secret is rotated the chain moves to the new key at an
event of its own (``hub.secret.rotated``, keyed by the old one and naming the new one), and the head
names the key the next event must use: a process still holding another secret is refused, not allowed
to write events no verifier would accept.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sqlalchemy import Table, and_, insert, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import utcnow
from ..hubsecret import Keyring
from .models import AuditEvent, AuditHead, Auditor

GENESIS = "0" * 64
AUDIT_KEYS = "audit_keys"  # the session.info entry holding the hub's Keyring
SECRET_ROTATED = "hub.secret.rotated"  # the event at which the chain moves to the key it names


ACTOR_LABEL_MAX = 255  # AuditEvent.actor


@dataclass(frozen=True)
class Actor:
    """Who is acting, as the audit log records it."""

    id: uuid.UUID | None
    label: str
    ip: str | None = None

    def __post_init__(self) -> None:
        # the label is for reading (name <subject@issuer>); a provider's long name must not fail the event
        if len(self.label) > ACTOR_LABEL_MAX:
            object.__setattr__(self, "label", self.label[:ACTOR_LABEL_MAX - 1] + "…")

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(id=None, label=label)


def _canonical(event: AuditEvent) -> bytes:
    return _canonical_values(event.seq, event.at, event.action, event.outcome, event.actor_id, event.actor,
                             event.subject_user_id, event.project_id, event.target, event.ip, event.details,
                             event.prev_hash)


def _canonical_values(seq: int, at: dt.datetime, action: str, outcome: str, actor_id: uuid.UUID | None,
                      actor: str, subject_user_id: uuid.UUID | None, project_id: uuid.UUID | None,
                      target: str | None, ip: str | None, details: dict[str, Any] | None, prev_hash: str) -> bytes:
    body = {
        "seq": seq,
        "at": at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "action": action,
        "outcome": outcome,
        "actor_id": str(actor_id) if actor_id else None,
        "actor": actor,
        "subject_user_id": str(subject_user_id) if subject_user_id else None,
        "project_id": str(project_id) if project_id else None,
        "target": target,
        "ip": ip,
        "details": details or {},
        "prev_hash": prev_hash,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def compute_hash(key: bytes, event: AuditEvent) -> str:
    return hmac.new(key, _canonical(event), hashlib.sha256).hexdigest()


def _keyring(session: Session) -> Keyring:
    try:
        keys: Keyring = session.info[AUDIT_KEYS]
    except KeyError:
        raise RuntimeError("session has no audit key; use the hub's session factory") from None
    return keys


class StaleSecret(RuntimeError):
    """This process holds another hub secret than the one the audit chain is keyed by now."""


def _writer_key(session: Session, head: AuditHead) -> bytes:
    """The key the next event is written with: this process's current one, which must be the one the head
    names (a chain that names none yet is given this process's)."""
    keys = _keyring(session)
    if head.key_id is None:
        head.key_id = keys.current_id
    elif head.key_id != keys.current_id:
        raise StaleSecret(f"the audit chain is keyed by hub secret {head.key_id}, this process holds "
                          f"{keys.current_id}: the secret was rotated (or this process was given another one); "
                          "restart it with the hub's current secret")
    return keys.current


def _locked_head(session: Session) -> AuditHead:
    """The chain head, row-locked until the caller's transaction ends (created on first use)."""
    stmt = select(AuditHead).where(AuditHead.id == 1).with_for_update()
    head = session.execute(stmt).scalar_one_or_none()
    if head is None:
        try:
            with session.begin_nested():
                session.add(AuditHead(id=1, seq=0, hash=GENESIS))
        except IntegrityError:  # another writer created it first; now lock theirs
            pass
        head = session.execute(stmt).scalar_one()
    return head


def record(
    session: Session,
    actor: Actor,
    action: str,
    *,
    outcome: str = "ok",
    project_id: uuid.UUID | None = None,
    subject_user_id: uuid.UUID | None = None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction."""
    head = _locked_head(session)
    event = AuditEvent(
        seq=head.seq + 1,
        at=utcnow(),
        action=action,
        outcome=outcome,
        actor_id=actor.id,
        actor=actor.label,
        subject_user_id=subject_user_id,
        project_id=project_id,
        target=target,
        ip=actor.ip,
        details=details or {},
        prev_hash=head.hash,
    )
    event.hash = compute_hash(_writer_key(session, head), event)
    session.add(event)
    head.seq, head.hash = event.seq, event.hash
    session.flush()
    return event


def record_many(
    session: Session,
    actor: Actor,
    action: str,
    entries: Sequence[tuple[uuid.UUID | None, str | None, dict[str, Any] | None]],
    *,
    outcome: str = "ok",
) -> None:
    """Append one event per ``(project_id, target, details)`` entry, in order, inside the caller's transaction:
    the same chain as :func:`record` called once per entry, with the head locked once and the events written by
    one multi-row INSERT (no ORM object per event: a bundle's thousand events are one statement's rows)."""
    if not entries:
        return
    head, at = _locked_head(session), utcnow()
    key = _writer_key(session, head)
    seq, prev = head.seq, head.hash
    rows = []
    for project_id, target, details in entries:
        seq += 1
        details = details or {}
        digest = hmac.new(key, _canonical_values(seq, at, action, outcome, actor.id, actor.label, None, project_id,
                                                 target, actor.ip, details, prev), hashlib.sha256).hexdigest()
        rows.append({"seq": seq, "at": at, "action": action, "outcome": outcome, "actor_id": actor.id,
                     "actor": actor.label, "subject_user_id": None, "project_id": project_id, "target": target,
                     "ip": actor.ip, "details": details, "prev_hash": prev, "hash": digest})
        prev = digest
    if session.get_bind().dialect.name == "postgresql":
        # One statement, one array per column (constant text, prepared once): the chain head stays locked
        # for one round trip instead of one pipelined INSERT per event.
        columns: dict[str, Any] = {name: [r[name] for r in rows] for name in _EVENT_ARRAYS}
        columns["details"] = [json.dumps(d, separators=(",", ":")) for d in columns["details"]]
        session.execute(_INSERT_EVENTS_PG, columns)
    else:
        session.execute(insert(cast(Table, AuditEvent.__table__)), rows)
    head.seq, head.hash = seq, prev
    session.flush()


def chain_key_id(session: Session) -> str | None:
    """The hub secret the chain's next event must be keyed by (its head locked until the transaction ends)."""
    return _locked_head(session).key_id


def holds_rotated_secret(session: Session) -> bool:
    """Whether this process's hub secret was rotated away: the chain names another one for its next event. A
    read (no lock): long-running servers ask it now and then and stop, since nothing they do can be audited."""
    head_key = session.scalar(select(AuditHead.key_id).where(AuditHead.id == 1))
    return head_key is not None and head_key != _keyring(session).current_id


def record_secret_rotation(session: Session, actor: Actor, to_id: str, details: dict[str, Any]) -> AuditEvent:
    """The chain's move to the key of hub secret ``to_id``: this event is keyed by the secret in use, every
    later one by the new secret (the head names it from now on, so only a process holding it may write)."""
    event = record(session, actor, SECRET_ROTATED, target=f"hub-secret:{to_id}",
                   details={**details, "to": to_id})
    _locked_head(session).key_id = to_id
    session.flush()
    return event


_EVENT_ARRAYS = {"seq": "bigint", "at": "timestamptz", "action": "text", "outcome": "text", "actor_id": "uuid",
                 "actor": "text", "subject_user_id": "uuid", "project_id": "uuid", "target": "text", "ip": "text",
                 "details": "json", "prev_hash": "text", "hash": "text"}
_INSERT_EVENTS_PG = text(
    "INSERT INTO audit_events (" + ", ".join(_EVENT_ARRAYS) + ") SELECT * FROM unnest("
    + ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _EVENT_ARRAYS.items()) + ")")


@dataclass
class Problem:
    seq: int
    kind: str  # edited | missing | broken-link | truncated | anchor-mismatch | bad-checkpoint | unknown-key | stale-key
    detail: str


class Anchor(Protocol):
    """A checkpoint whose signature was already checked: the chain had ``seq`` events ending in ``head``."""

    @property
    def seq(self) -> int: ...
    @property
    def head(self) -> str: ...
    @property
    def at(self) -> str: ...


@dataclass
class VerifyReport:
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    proven: Anchor | None = None  # the newest checkpoint the chain matches: events 1..proven.seq are anchored

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(session: Session, *, batch: int = 5000, progress: Callable[[int], None] | None = None,
           anchors: Sequence[Anchor] = ()) -> VerifyReport:
    """Walk the chain in sequence order; the report lists every break. ``progress`` hears how many
    events were checked, every ``batch`` events.

    Reads in pages, each in its own short read transaction (the session is rolled back between pages),
    so a long walk never holds a lock or a snapshot for its whole run and takes no write lock. Events
    appended meanwhile are walked too; the head is compared once the walk has caught up with it.
    ``anchors`` (checked checkpoints) must each match the event at their sequence number, and the
    chain must be at least as long as every one of them.

    Across hub secret rotations each event is checked with the key of its stretch of the chain only: the
    first event's, then, from each verified ``hub.secret.rotated`` event on, the key that event names — a
    retired secret cannot vouch for anything written after it was retired — and the newest stretch must be
    under this hub's current secret."""
    keys = _keyring(session)
    key_id: str | None = None  # whose stretch of the chain we are in; decided by the first event
    report = VerifyReport()
    by_seq: dict[int, list[Anchor]] = {}
    for anchor in anchors:
        by_seq.setdefault(anchor.seq, []).append(anchor)
    expected_seq, prev_hash = 1, GENESIS
    last_seq = 0
    for anchor in by_seq.get(0, ()):  # a checkpoint of the empty chain
        if anchor.head == GENESIS:
            report.proven = anchor
        else:
            report.problems.append(Problem(0, "anchor-mismatch", f"the checkpoint of {anchor.at} is malformed"))
    while True:
        page = list(session.scalars(select(AuditEvent).where(AuditEvent.seq > last_seq)
                                    .order_by(AuditEvent.seq).limit(batch)
                                    .execution_options(populate_existing=True)))
        for event in page:  # keep their loaded values: the rollback below would expire them
            session.expunge(event)
        session.rollback()  # end this page's read transaction
        for event in page:
            if event.seq != expected_seq:
                report.problems.append(Problem(event.seq, "missing",
                                               f"events {expected_seq}..{event.seq - 1} are gone"))
            elif event.prev_hash != prev_hash:
                report.problems.append(Problem(event.seq, "broken-link",
                                               "does not follow the event before it (reordered or replaced)"))
            if key_id is None:
                key_id = next((kid for kid, k in keys.audit_keys.items()
                               if hmac.compare_digest(compute_hash(k, event), event.hash)), keys.current_id)
            key = keys.audit_keys.get(key_id)
            if key is not None and not hmac.compare_digest(compute_hash(key, event), event.hash):
                report.problems.append(Problem(event.seq, "edited",
                                               f"event {event.action!r} differs from what was signed"))
            elif key is not None and event.action == SECRET_ROTATED and event.outcome == "ok":
                key_id = str(event.details.get("to"))
                if key_id not in keys.audit_keys:
                    report.problems.append(Problem(event.seq, "unknown-key", (
                        f"from here the chain is keyed by hub secret {key_id}, which this process neither holds "
                        "nor keeps retired: the events after this one are not checked (run with the current "
                        "secret)")))
            for anchor in by_seq.get(event.seq, ()):
                if not hmac.compare_digest(anchor.head, event.hash):
                    report.problems.append(Problem(event.seq, "anchor-mismatch",
                                                   f"the checkpoint of {anchor.at} signed a different event "
                                                   f"{event.seq}: the chain was rewritten from here"))
                elif not report.problems and (report.proven is None or anchor.seq >= report.proven.seq):
                    report.proven = anchor
            expected_seq, prev_hash, last_seq = event.seq + 1, event.hash, event.seq
            report.checked += 1
            if progress and report.checked % batch == 0:
                progress(report.checked)
        if len(page) == batch:
            continue
        head = session.get(AuditHead, 1, populate_existing=True)
        head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS)
        head_key = head.key_id if head else None
        session.rollback()
        if head_seq > last_seq and session.scalar(select(AuditEvent.seq).where(AuditEvent.seq > last_seq)
                                                  .limit(1)) is not None:
            session.rollback()
            continue  # appended while we walked: catch up
        session.rollback()
        if head_seq != last_seq or head_hash != prev_hash:
            report.problems.append(Problem(last_seq + 1, "truncated",
                                           f"the chain head says {head_seq} events, found up to {last_seq}"))
        elif key_id is not None and head_key is not None and head_key != key_id:
            report.problems.append(Problem(last_seq + 1, "truncated", (
                f"the chain head names hub secret {head_key}, the newest events are keyed by {key_id}: "
                "what followed a rotation was cut off")))
        elif key_id in keys.audit_keys and key_id != keys.current_id:
            report.problems.append(Problem(last_seq, "stale-key", (
                f"the newest events are keyed by retired hub secret {key_id}, not by this hub's current secret "
                f"{keys.current_id}")))
        break
    for anchor in anchors:
        if anchor.seq > last_seq:
            report.problems.append(Problem(last_seq + 1, "truncated",
                                           f"the checkpoint of {anchor.at} anchored {anchor.seq} events, "
                                           f"the database has {last_seq}: events were deleted"))
    return report


def count(session: Session) -> int:
    head = session.get(AuditHead, 1)
    return head.seq if head else 0


def query(
    session: Session,
    *,
    project_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    action_prefix: str | None = None,
    before_seq: int | None = None,
    limit: int = 50,
    platform_only: bool = False,
) -> list[AuditEvent]:
    """Newest first; page with ``before_seq`` (keyset pagination, fast at any depth).
    ``platform_only``: only events that belong to no project."""
    stmt = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(min(max(limit, 1), 500))
    if project_id is not None:
        stmt = stmt.where(AuditEvent.project_id == project_id)
    if platform_only:
        stmt = stmt.where(AuditEvent.project_id.is_(None))
    if user_id is not None:
        stmt = stmt.where(or_(AuditEvent.actor_id == user_id, AuditEvent.subject_user_id == user_id))
    if action_prefix:
        stmt = stmt.where(AuditEvent.action.startswith(action_prefix))
    if before_seq is not None:
        stmt = stmt.where(AuditEvent.seq < before_seq)
    return list(session.scalars(stmt))


# -- the personal trail ---------------------------------------------------------------------------
# What a user reads about themselves (GET /api/v1/me/audit, the account page): every event they did, as recorded;
# of what others did to them (events naming them as subject), only the kinds meant for them, and never the other
# actor's address. Each kind below names the detail that must be true for its subject to see it (None: always).
# Any other kind stays out: a data access committee's votes, assignments, review and decision requests and internal
# remarks are recorded with the applicant as subject, and the application page withholds them. A capability that
# records a new kind with a subject lists it here if it is meant for that person. The chain is never changed: this
# is a view, built at read.
SUBJECT_SEES: dict[str, str | None] = {
    # their account, as an administrator (or the hub, for a workspace's token) changed it
    "user.created": None, "user.deactivated": None, "user.access_revoked": None, "mfa.reset": None,
    "token.created": None, "token.revoked": None, "sftp.key.removed": None,
    # their roles: in projects, as platform auditor, as a model vendor's member
    "project.created": None, "project.member.added": None, "project.member.role_changed": None,
    "project.rights.delegated": None, "project.member.removed": None,
    "audit.auditor.granted": None, "audit.auditor.revoked": None, "vai.vendor.member_added": None,
    # their workspaces, cluster account and airlock deliveries
    "workspace.stopped": None, "workspace.cluster_account.set": None, "airlock.file.delivered": None,
    # their applications, as the application page shows them (access.events.shown_to_applicant), and grants
    "access.application.created": None, "access.application.saved": None,
    "access.application.terms_accepted": None, "access.application.member_invited": None,
    "access.application.submitted": None, "access.application.returned": None,
    "access.application.remarked": "public", "access.application.approved": None,
    "access.application.rejected": None, "access.application.closed": None, "access.application.revoked": None,
    "access.entitlement.ended": None,
}


@dataclass(frozen=True)
class TrailEvent:
    """An audit event as one user reads it in their own trail: a copy, the stored event stays as it is."""

    seq: int
    at: dt.datetime
    action: str
    outcome: str
    actor: str
    actor_id: uuid.UUID | None
    subject_user_id: uuid.UUID | None
    project_id: uuid.UUID | None
    target: str | None
    ip: str | None
    details: dict[str, Any]
    hash: str


def personal_trail(session: Session, user_id: uuid.UUID, *, before_seq: int | None = None, limit: int = 50
                   ) -> list[TrailEvent]:
    """The user's own trail (see ``SUBJECT_SEES``), newest first; page with ``before_seq`` like ``query``."""
    always = [kind for kind, detail in SUBJECT_SEES.items() if detail is None]
    meant = or_(AuditEvent.action.in_(always),
                *(and_(AuditEvent.action == kind, AuditEvent.details[detail].as_boolean())
                  for kind, detail in SUBJECT_SEES.items() if detail is not None))
    stmt = (select(AuditEvent)
            .where(or_(AuditEvent.actor_id == user_id, and_(AuditEvent.subject_user_id == user_id, meant)))
            .order_by(AuditEvent.seq.desc()).limit(min(max(limit, 1), 500)))
    if before_seq is not None:
        stmt = stmt.where(AuditEvent.seq < before_seq)
    return [TrailEvent(seq=e.seq, at=e.at, action=e.action, outcome=e.outcome, actor=e.actor, actor_id=e.actor_id,
                       subject_user_id=e.subject_user_id, project_id=e.project_id, target=e.target,
                       ip=e.ip if e.actor_id == user_id else None, details=dict(e.details or {}), hash=e.hash)
            for e in session.scalars(stmt)]


# -- auditors ------------------------------------------------------------------------------------
# Platform admins are segmented: they see platform events only. Reading a project's events takes
# membership with the view-audit right, or this explicit auditor role (the data protection officer),
# whose grants, revocations and reads are all written to the chain.
def auditor(session: Session, user_id: uuid.UUID) -> Auditor | None:
    return session.get(Auditor, user_id)


def is_auditor(session: Session, user_id: uuid.UUID) -> bool:
    return auditor(session, user_id) is not None


def auditors(session: Session) -> list[Auditor]:
    return list(session.scalars(select(Auditor).order_by(Auditor.granted_at)))


def grant_auditor(session: Session, actor: Actor, user_id: uuid.UUID) -> bool:
    """Make the user an auditor; False if they already were (nothing is recorded then)."""
    if is_auditor(session, user_id):
        return False
    session.add(Auditor(user_id=user_id, granted_at=utcnow(), granted_by=actor.label))
    record(session, actor, "audit.auditor.granted", subject_user_id=user_id)
    return True


def revoke_auditor(session: Session, actor: Actor, user_id: uuid.UUID) -> bool:
    found = session.get(Auditor, user_id)
    if found is None:
        return False
    session.delete(found)
    record(session, actor, "audit.auditor.revoked", subject_user_id=user_id)
    return True


def record_read(session: Session, actor: Actor, *, project_id: uuid.UUID | None, returned: int,
                **filters: object) -> None:
    """An auditor's (or operator's) read of project events, written to the chain; tagged with the
    project when one was asked for, so that project's own view-audit members see it too."""
    record(session, actor, "audit.events.read", project_id=project_id,
           details={"returned": returned, **{k: str(v) for k, v in filters.items() if v is not None}})
