"""SFTP: users' SSH keys, and the per-user file view the server serves (one function per SFTP operation).

Everything here is synchronous and database-bound; ``server`` runs it in worker threads. Every operation
resolves the caller again from their key (a removed key or a deactivated account stops working at once)
and reads project membership, rights, holds and the download setting fresh — exactly what the archive's
API asks. Uploads go through the archive's own upload functions (``begin_upload``, ``put_part``,
``complete_upload``, ``abort_upload``): the inbox, the quota and the ingest job are the archive's.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import asyncssh
from sqlalchemy import Select, and_, bindparam, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ..archive import c4gh
from ..archive import service as archive
from ..archive.authz import project_access
from ..archive.backend import storage_for
from ..archive.downloads import record_end
from ..archive.keys import hub_keys
from ..archive.models import DELETED, FAILED, READY, ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..audit import outbox
from ..audit import service as audit
from ..db import open_session, transaction, utcnow
from ..errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from ..hub import Hub
from ..identity import service as identity
from ..identity.models import User
from ..identity.principal import SCOPES, Principal
from ..projects import quota
from ..projects import service as projects
from ..projects.models import Membership, Project, ProjectSetting, Role
from . import paths
from .models import SftpUpload, SshKey

# Plaintext per stored part: whole crypt4gh segments, above S3's 5 MiB minimum part size. What a client
# sent after the last stored part is lost if the connection drops (it is never written anywhere in the
# clear); ``stat`` then reports the stored size and the client resumes from there.
PART_SEGMENTS = 128
PART_PLAIN = PART_SEGMENTS * c4gh.SEGMENT_SIZE
PAGE = 500  # rows per query when listing a folder (the SFTP server sends them 128 names per READDIR)
READ_WINDOW = 16 * c4gh.SEGMENT_SIZE  # plaintext decrypted per storage read when serving a download
# An open handle's full re-check (the archive's own functions) runs at least this often, and whenever the one
# query every read and write makes (``_standing_statement``) sees a change; see ``_Held``.
RECHECK_SECONDS = 5.0

ALGORITHMS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa",
              "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")

# Observation points for tests and operators' metrics (called in the worker thread, after the fact).
PART_STORED: list[Callable[[str, int], None]] = []  # (file id, plaintext bytes now stored)
HANDLE_RELEASED: list[Callable[[str, bool], None]] = []  # (file id, interrupted)


class OverQuota(Conflict):
    """The upload would pass the project's quota: an SFTP "failure" carrying this message."""

    code = "quota-exceeded"


class PermissionDenied(DomainError):
    """Allowed nowhere in the SFTP view (writes outside upload areas, links, deleting archived files)."""

    status, code = 403, "forbidden"


# -- SSH keys -----------------------------------------------------------------------------------
def parse_public_key(text: str) -> tuple[asyncssh.SSHKey, str]:
    """An OpenSSH public key line (``ssh-ed25519 AAAA… comment``) → the key and its comment."""
    text = text.strip()
    if not text or "\n" in text or "PRIVATE KEY" in text:
        raise Invalid("paste one public key line, as in ~/.ssh/id_ed25519.pub")
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise Invalid("that is not an SSH public key (paste the line of your ~/.ssh/id_ed25519.pub)") from exc
    algorithm = key.get_algorithm()
    if algorithm not in ALGORITHMS:
        raise Invalid(f"keys of type {algorithm} are not accepted; use ssh-ed25519")
    if algorithm == "ssh-rsa" and getattr(getattr(key, "pyca_key", None), "key_size", 4096) < 3072:
        raise Invalid("RSA keys need at least 3072 bits; better, use ssh-ed25519")
    comment = key.get_comment() or ""
    return key, comment


def add_key(session: Session, principal: Principal, text: str, *, comment: str | None, fresh_minutes: int) -> SshKey:
    """Register a key: a fresh second factor first (an SSH key opens the user's data without one)."""
    identity.require_fresh_mfa(principal, fresh_minutes)
    key, own_comment = parse_public_key(text)
    fingerprint = key.get_fingerprint("sha256")
    existing = session.scalar(select(SshKey).where(SshKey.fingerprint == fingerprint))
    if existing is not None:
        raise Conflict("this key is already registered" if existing.user_id == principal.user.id
                       else "this key is registered to another account: make a key of your own")
    line = key.export_public_key("openssh").decode().split()
    row = SshKey(user_id=principal.user.id, fingerprint=fingerprint, algorithm=key.get_algorithm(),
                 public_key=" ".join(line[:2]), comment=(comment if comment is not None else own_comment).strip()[:200])
    session.add(row)
    session.flush()
    audit.record(session, principal.actor, "sftp.key.added", subject_user_id=principal.user.id,
                 target=f"ssh-key:{fingerprint}", details={"algorithm": row.algorithm, "comment": row.comment})
    return row


def list_keys(session: Session, principal: Principal) -> list[SshKey]:
    return list(session.scalars(select(SshKey).where(SshKey.user_id == principal.user.id)
                                .order_by(SshKey.created_at.desc())))


def remove_key(session: Session, principal: Principal, key_id: uuid.UUID) -> SshKey:
    row = session.get(SshKey, key_id)
    if row is None or row.user_id != principal.user.id:
        raise NotFound("no such key")
    session.delete(row)
    audit.record(session, principal.actor, "sftp.key.removed", subject_user_id=principal.user.id,
                 target=f"ssh-key:{row.fingerprint}")
    return row


def withdraw_keys(session: Session, actor: audit.Actor, user: User, reason: str) -> dict[str, list[str]]:
    """``identity.revoke_access``'s hook (``CREDENTIAL_REVOKERS``): every SSH key of the user is removed with their
    sessions and tokens. Deleted, as **Remove** does, not marked: the model has no revoked state that every
    reader would have to honour, and a deleted row cannot be missed by one. The audit trail keeps the
    fingerprints (one ``sftp.key.removed`` each, with the reason), and the owner may register a key again
    under a fresh second factor."""
    rows = list(session.scalars(select(SshKey).where(SshKey.user_id == user.id).order_by(SshKey.created_at)))
    for row in rows:
        session.delete(row)
        audit.record(session, actor, "sftp.key.removed", subject_user_id=user.id, target=f"ssh-key:{row.fingerprint}",
                     details={"reason": reason})
    session.flush()
    return {"ssh_keys": [row.fingerprint for row in rows]}


def key_principal(session: Session, key_id: uuid.UUID, ip: str | None = None) -> Principal:
    """The caller behind a registered key, read fresh. The key was registered under a fresh second factor:
    that moment stands as the MFA time (as an API token's minting does) for as long as the key lives — and
    it lives no longer than the user's other credentials (``withdraw_keys``)."""
    row = session.get(SshKey, key_id)
    user = session.get(User, row.user_id) if row else None
    if row is None or user is None or not user.is_active:
        raise PermissionDenied("this SSH key is no longer registered")
    scopes = frozenset(s for s in SCOPES if s != "admin")
    return Principal(user=user, via="ssh", mfa_at=row.created_at, scopes=scopes,
                     credential_id=f"ssh-key:{row.fingerprint[7:19]}", ip=ip)


def login(session: Session, fingerprint: str, ip: str | None) -> uuid.UUID | None:
    """The key's id if it may log in (registered, active account); the login is audited either way."""
    row = session.scalar(select(SshKey).where(SshKey.fingerprint == fingerprint))
    user = session.get(User, row.user_id) if row else None
    if row is None or user is None or not user.is_active:
        return None
    row.last_used_at = utcnow()
    audit.record(session, audit.Actor(user.id, user.label, ip), "sftp.login", subject_user_id=user.id,
                 target=f"ssh-key:{fingerprint}")
    return row.id


# -- what a path shows --------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    name: str
    is_dir: bool
    size: int = 0
    mtime: dt.datetime | None = None
    writable: bool = False


def _project(session: Session, principal: Principal, slug: str) -> projects.ProjectAccess:
    try:
        return projects.open_project(session, principal, slug)
    except NotFound as exc:
        raise NotFound("no such file or directory") from exc


def writable_area(session: Session, principal: Principal, slug: str) -> None:
    """The caller may write into the project's upload area (else: no such project / permission denied)."""
    access = _project(session, principal, slug)
    if "write-data" not in access.rights:
        raise PermissionDenied("your role in this project does not include uploading data")


def _readable(access: projects.ProjectAccess) -> None:
    if "read-data" not in access.rights:
        raise PermissionDenied("your role in this project does not include reading its data")


def _visible_files(project_id: uuid.UUID):  # type: ignore[no-untyped-def]
    """The project's files as the upload area shows them: not held, failed or deleted (by retention)."""
    return (select(ArchiveFile, SftpUpload).outerjoin(SftpUpload, SftpUpload.file_id == ArchiveFile.id)
            .where(ArchiveFile.project_id == project_id, ArchiveFile.hold.is_(None),
                   ArchiveFile.state.notin_((FAILED, DELETED))))


def _file_size(f: ArchiveFile, up: SftpUpload | None) -> int:
    if f.state == READY:
        return f.plaintext_size or 0
    return up.received if up is not None else 0


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"


def list_page(session: Session, principal: Principal, where: paths.Where, after: str | None
              ) -> tuple[list[tuple[str, Entry]], str | None]:
    """One page of a directory as (row key, entry) — the entry may be a sub-directory repeated across rows
    (the caller drops repeats) — and the cursor of the next page (None: the end)."""
    if where.kind == "root":
        slugs = session.scalars(select(Project.slug).join(Membership, Membership.project_id == Project.id)
                                .where(Membership.user_id == principal.user.id).order_by(Project.slug))
        return [(s, Entry(s, True)) for s in slugs], None
    access = _project(session, principal, where.slug)
    if where.kind == "project":
        return [(a, Entry(a, True, writable=a == "uploads")) for a in paths.AREAS], None
    _readable(access)
    if where.kind == "datasets":
        return [(d.id, Entry(d.id, True, mtime=d.created_at))
                for d in archive.list_datasets(session, principal, access)], None
    if where.kind == "dataset":
        ds = _dataset(session, principal, access, where.dataset)
        versions = [v for v in ds.versions if v.state != "draft" or ds.project_id == access.project.id]
        return [(f"v{v.number}", Entry(f"v{v.number}", True, mtime=v.released_at or v.created_at))
                for v in versions], None
    if where.kind == "uploads":
        stmt = _visible_files(access.project.id)
        if where.rest:
            stmt = stmt.where(ArchiveFile.path.like(_like_prefix(where.rest), escape="\\"))
        if after:
            stmt = stmt.where(ArchiveFile.id > after)
        rows = list(session.execute(stmt.order_by(ArchiveFile.id).limit(PAGE)))
        out = []
        for f, up in rows:
            seen = paths.child(f.path, where.rest)
            if seen:
                name, is_dir = seen
                out.append((f.id, Entry(name, is_dir, 0 if is_dir else _file_size(f, up), f.ingested_at
                                        or f.created_at, writable=is_dir or f.state != READY)))
        if not out and where.rest and not after:
            raise NotFound("no such file or directory")
        return out, rows[-1][0].id if len(rows) == PAGE else None
    # a dataset version
    ds = _dataset(session, principal, access, where.dataset)
    version, files = archive.version_files(session, principal, ds.id, where.version, after=after, limit=PAGE)
    out = []
    for f in files:
        seen = paths.child(f.path, where.rest)
        if seen and f.hold is None:
            name, is_dir = seen
            out.append((f.id, Entry(name, is_dir, 0 if is_dir else f.plaintext_size or 0, f.ingested_at)))
    if not out and where.rest and not after:
        raise NotFound("no such file or directory")
    return out, files[-1].id if len(files) == PAGE else None


def _dataset(session: Session, principal: Principal, access: projects.ProjectAccess, dataset_id: str) -> Dataset:
    for ds in archive.list_datasets(session, principal, access):
        if ds.id == dataset_id:
            return ds
    raise NotFound("no such file or directory")


def stat(session: Session, principal: Principal, where: paths.Where) -> Entry:
    if where.kind == "root":
        return Entry("/", True)
    access = _project(session, principal, where.slug)
    if where.kind == "project":
        return Entry(where.slug, True, mtime=access.project.created_at)
    _readable(access)
    if where.kind in ("datasets", "uploads") and not where.rest:
        return Entry(where.kind, True, writable=where.kind == "uploads")
    if where.kind == "dataset":
        ds = _dataset(session, principal, access, where.dataset)
        return Entry(ds.id, True, mtime=ds.created_at)
    if where.kind == "uploads":
        found = session.execute(_visible_files(access.project.id).where(ArchiveFile.path == where.rest)
                                .order_by(ArchiveFile.created_at.desc()).limit(1)).first()
        if found is not None:
            f, up = found
            return Entry(where.rest.rsplit("/", 1)[-1], False, _file_size(f, up), f.ingested_at or f.created_at,
                         writable=f.state != READY)
        below = session.scalar(select(ArchiveFile.id).where(
            ArchiveFile.project_id == access.project.id, ArchiveFile.hold.is_(None), ArchiveFile.state != FAILED,
            ArchiveFile.path.like(_like_prefix(where.rest), escape="\\")).limit(1))
        if below is None:
            raise NotFound("no such file or directory")
        return Entry(where.rest.rsplit("/", 1)[-1], True, writable=True)
    ds = _dataset(session, principal, access, where.dataset)
    version = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id,
                                                          DatasetVersion.number == where.version))
    if version is None or (version.state == "draft" and ds.project_id != access.project.id):
        raise NotFound("no such file or directory")
    if not where.rest:
        return Entry(f"v{version.number}", True, mtime=version.released_at or version.created_at)
    f = _version_file(session, version.id, where.rest)
    if f is not None:
        return Entry(where.rest.rsplit("/", 1)[-1], False, f.plaintext_size or 0, f.ingested_at)
    below = session.scalar(select(ArchiveFile.id).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
                           .where(DatasetFile.version_id == version.id, ArchiveFile.hold.is_(None),
                                  ArchiveFile.path.like(_like_prefix(where.rest), escape="\\")).limit(1))
    if below is None:
        raise NotFound("no such file or directory")
    return Entry(where.rest.rsplit("/", 1)[-1], True)


def _version_file(session: Session, version_id: int, path: str) -> ArchiveFile | None:
    return session.scalar(select(ArchiveFile).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
                          .where(DatasetFile.version_id == version_id, ArchiveFile.path == path,
                                 ArchiveFile.hold.is_(None)).limit(1))


# -- open handles ------------------------------------------------------------------------------
@cache
def _standing_statement() -> Select[Any]:
    """What an open handle's right rests on, in one query of primary-key and unique-index lookups: no row when
    the key is gone; else the user's active flag, their membership in the project the path is under (role,
    delegated rights, the role's rights), that project's status and end date, the download setting of the project
    the read is granted through, and the file's hold and state. Built once per process: it runs on every read and
    write."""
    return (select(User.is_active, Membership.role, Membership.delegated_rights, Role.rights, Project.status,
                   Project.end_date, ProjectSetting.value, ArchiveFile.hold, ArchiveFile.state)
            .select_from(SshKey).join(User, User.id == SshKey.user_id)
            .outerjoin(Membership, and_(Membership.project_id == bindparam("member_of"),
                                        Membership.user_id == SshKey.user_id))
            .outerjoin(Role, Role.name == Membership.role)
            .outerjoin(Project, Project.id == bindparam("project"))
            .outerjoin(ProjectSetting, and_(ProjectSetting.project_id == bindparam("setting_of"),
                                            ProjectSetting.key == "download_allowed"))
            .outerjoin(ArchiveFile, ArchiveFile.id == bindparam("file"))
            .where(SshKey.id == bindparam("key")))


class _Held:
    """The re-check of an open handle before each read or write (docs/sftp.md: a removed key, a deactivated
    account, a member removed from the project or downloads locked end an open transfer at its next
    operation). Every operation asks ``_standing_statement`` (one indexed query); when anything it returns changed, or
    ``RECHECK_SECONDS`` passed (grants, shares and dataset policies it does not cover), the full check runs
    again — the same functions that allowed the open. Once refused, always refused; any error fails the
    operation (closed)."""

    hub: Hub
    key_id: uuid.UUID | None
    file_id: str
    refused: str | None
    standing: tuple[Any, ...] | None
    checked_at: float

    def _standing_args(self) -> dict[str, Any]:
        raise NotImplementedError

    def _authorize(self, session: Session) -> None:
        """The full check; raises a DomainError when the handle may no longer be used."""
        raise NotImplementedError

    def _refuse(self, detail: str) -> None:
        """Record a refusal (in its own transaction: the operation fails)."""

    def check(self) -> None:
        if self.refused is not None:
            raise PermissionDenied(self.refused)
        if self.key_id is None:  # never opened for a caller: nothing to vouch for it
            raise PermissionDenied("this handle has no key")
        # A bare connection, not an ORM session, and a read without the write lock (SQLite: plain BEGIN): this
        # runs before every read and write (measured: docs/sftp.md).
        with self.hub.sessions.kw["bind"].connect() as conn:
            conn.execution_options(deferred=True)
            row = conn.execute(_standing_statement(), {"key": self.key_id, **self._standing_args()}).first()
        now = tuple(row) if row is not None else None
        if now is not None and now == self.standing and time.monotonic() - self.checked_at < RECHECK_SECONDS:
            return
        with open_session(self.hub.sessions, deferred=True) as session:
            try:
                if now is None:
                    raise PermissionDenied("this SSH key is no longer registered")
                self._authorize(session)
            except DomainError as exc:
                self.refused = f"access to this file was withdrawn: {exc.detail}"
                session.rollback()
                self._refuse(exc.detail)
                raise PermissionDenied(self.refused) from exc
        self.standing, self.checked_at = now, time.monotonic()


# -- downloads ----------------------------------------------------------------------------------
@dataclass
class Reading(_Held):
    """An open file being read: decrypted window by window, in memory only. Every read re-checks (``_Held``)."""

    hub: Hub
    file_id: str
    project_id: uuid.UUID
    actor: audit.Actor
    body_key: str
    body_size: int
    size: int
    session_keys: list[bytes]
    started: dict[str, Any]
    sent: int = 0
    reached_end: bool = False
    window: tuple[int, bytes] = (0, b"")
    # who reads, through which path and grant: what ``check`` asks again before every read
    key_id: uuid.UUID | None = None
    ip: str | None = None
    slug: str = ""
    member_of: uuid.UUID | None = None  # the project the path is under
    grant_project: uuid.UUID | None = None  # the project whose download setting applies (owner/share grants)
    refused: str | None = None
    standing: tuple[Any, ...] | None = None
    checked_at: float = 0.0

    def _standing_args(self) -> dict[str, Any]:
        return {"member_of": self.member_of, "project": self.member_of, "setting_of": self.grant_project,
                "file": self.file_id}

    def _authorize(self, session: Session) -> None:
        assert self.key_id is not None  # check() refuses a handle without one
        principal = key_principal(session, self.key_id, self.ip)
        _readable(_project(session, principal, self.slug))
        f = session.get(ArchiveFile, self.file_id)
        if f is None or f.state != READY:
            raise NotFound("no such file")
        grant = archive.authorize_read(session, principal, f)
        archive_authz_require_download(session, grant)
        self.grant_project = grant.project_id

    def _refuse(self, detail: str) -> None:
        with transaction(self.hub.sessions) as session:
            audit.record(session, self.actor, "archive.download.refused", outcome="denied", project_id=self.project_id,
                         target=f"file:{self.file_id}", details={"via": "sftp", "reason": detail, "open_handle": True,
                                                                 "bytes_sent": self.sent})

    def read(self, offset: int, length: int) -> bytes:
        self.check()
        if offset >= self.size or length <= 0:
            if offset >= self.size:
                self.reached_end = True
            return b""
        end = min(offset + length, self.size)
        start_w, data = self.window
        if not (start_w <= offset and end <= start_w + len(data)):
            lo = offset - offset % c4gh.SEGMENT_SIZE
            hi = min(max(end, lo + READ_WINDOW), self.size)
            storage = storage_for(self.hub)
            data = b"".join(c4gh.decrypt_range(lambda a, b: storage.open_reader(self.body_key, a, b),
                                               self.session_keys, lo, hi, self.body_size))
            self.window = start_w, data = lo, data
        out = data[offset - start_w:end - start_w]
        self.sent += len(out)
        if end >= self.size:
            self.reached_end = True
        return out

    def close(self) -> None:
        record_end(self.hub, self.actor, "archive.download.completed" if self.reached_end
                   else "archive.download.aborted", project_id=self.project_id, target=f"file:{self.file_id}",
                   started=self.started, sent=self.sent, expected=self.size, reason=None)


def open_read(hub: Hub, session: Session, principal: Principal, where: paths.Where, *, key_id: uuid.UUID
              ) -> Reading:
    """A file opened for reading: readable by the caller and allowed to leave the platform (the project's
    download setting, or the dataset's access policy for applicants) — the archive's own checks, asked again
    before every read (``Reading.check``)."""
    if not where.is_file_area or not where.rest:
        raise NotFound("no such file")
    access = _project(session, principal, where.slug)
    _readable(access)
    if where.kind == "uploads":
        f = session.scalar(select(ArchiveFile).where(
            ArchiveFile.project_id == access.project.id, ArchiveFile.path == where.rest, ArchiveFile.hold.is_(None),
            ArchiveFile.state != FAILED).order_by(ArchiveFile.created_at.desc()).limit(1))
    else:
        ds = _dataset(session, principal, access, where.dataset)
        version = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id,
                                                              DatasetVersion.number == where.version))
        f = _version_file(session, version.id, where.rest) if version is not None else None
    if f is None:
        raise NotFound("no such file")
    if f.state != READY:
        raise PermissionDenied(f"the file is still being archived ({f.state}); read it once it is ready")
    grant = archive.authorize_read(session, principal, f)
    try:
        archive_authz_require_download(session, grant)
    except Forbidden as exc:
        audit.record(session, principal.actor, "archive.download.refused", outcome="denied",
                     project_id=f.project_id, target=f"file:{f.id}", details={"via": "sftp", "reason": exc.detail})
        session.commit()  # the refusal is on record although the operation fails
        raise PermissionDenied(exc.detail) from exc
    assert f.header is not None and f.body_key is not None and f.body_size is not None
    started = archive.record_download(session, principal, f, grant, mode="plaintext", via="sftp")
    opened = c4gh.open_header(f.header, hub_keys(hub, session).secrets)
    reading = Reading(hub, f.id, f.project_id, principal.actor, f.body_key, f.body_size, f.plaintext_size or 0,
                      list(opened.session_keys), started, key_id=key_id, ip=principal.ip, slug=where.slug,
                      member_of=access.project.id, grant_project=grant.project_id)
    row = session.execute(_standing_statement(), {"key": key_id, **reading._standing_args()}).first()
    reading.standing, reading.checked_at = (tuple(row) if row is not None else None), time.monotonic()
    return reading


def archive_authz_require_download(session: Session, grant: archive.ReadGrant) -> None:
    from ..archive.authz import require_download_allowed

    require_download_allowed(session, grant)


# -- uploads ------------------------------------------------------------------------------------
_BUSY: set[str] = set()  # uploads with an open handle in this process: one writer at a time
_BUSY_LOCK = threading.Lock()


@dataclass
class Writing(_Held):
    """An upload being received: plaintext only in ``buffer`` (memory), everything stored is crypt4gh. The server
    re-checks (``_Held``) before it takes each write's bytes."""

    hub: Hub
    key_id: uuid.UUID
    ip: str | None
    file_id: str
    header: bytes
    session_key: bytes
    received: int  # plaintext bytes stored (encrypted) in parts
    parts: int
    buffer: bytearray = field(default_factory=bytearray)
    nonce_seed: bytes = field(default_factory=lambda: os.urandom(32))
    failed: str | None = None

    in_flight: int = 0  # plaintext bytes of a part being stored by the server meanwhile (see server.write)
    # who writes, into which project: kept so that an interruption during a database outage is still audited
    actor: audit.Actor | None = None
    project_id: uuid.UUID | None = None
    refused: str | None = None
    standing: tuple[Any, ...] | None = None
    checked_at: float = 0.0

    def _standing_args(self) -> dict[str, Any]:
        return {"member_of": self.project_id, "project": self.project_id, "setting_of": None, "file": self.file_id}

    def _authorize(self, session: Session) -> None:
        if self.project_id is None:
            raise PermissionDenied("this upload has no project")
        principal = key_principal(session, self.key_id, self.ip)
        project_access(session, principal, self.project_id).require("write-data")
        f = session.get(ArchiveFile, self.file_id)
        if f is None or f.state != "receiving" or f.hold is not None:
            raise Conflict("the upload was cancelled")

    def _refuse(self, detail: str) -> None:
        with transaction(self.hub.sessions) as session:
            audit.record(session, self.actor or audit.Actor.system("sftp"), "sftp.upload.refused", outcome="denied",
                         project_id=self.project_id, target=f"file:{self.file_id}",
                         details={"reason": detail, "stored": self.received})

    @property
    def size(self) -> int:
        return self.received + self.in_flight + len(self.buffer)

    def accept(self, offset: int, data: bytes) -> bool:
        """Take the bytes into memory (no I/O: called on the server's event loop); True when a whole part
        is buffered: ``take_part`` then ``store_part`` (in a worker thread)."""
        if self.failed:
            raise OverQuota(self.failed)
        expected = self.size
        if offset < expected:  # a client re-sending what is already here (resume): keep what is new
            data = data[expected - offset:]
        elif offset > expected:
            raise Invalid(f"uploads are written in order: continue at byte {expected} (e.g. `reput`)")
        self.buffer += data
        return len(self.buffer) >= PART_PLAIN

    def take_part(self) -> bytes:
        """The next whole part, out of the buffer (memory only); ``store_part`` stores it."""
        part = bytes(self.buffer[:PART_PLAIN])
        del self.buffer[:PART_PLAIN]
        self.in_flight = len(part)
        return part

    def store_part(self, part: bytes) -> None:
        try:
            self._store(part)
        finally:
            self.in_flight = 0


    def _store(self, plain: bytes) -> None:
        """Encrypt one part and store it; the quota grows by its size first (refused: the upload is gone)."""
        body = c4gh.seal_segments(self.session_key, self.received // c4gh.SEGMENT_SIZE, plain, self.nonce_seed)
        try:
            with transaction(self.hub.sessions) as session:
                f = session.get(ArchiveFile, self.file_id, with_for_update=True)
                if f is None or f.state != "receiving":
                    raise Conflict("the upload was cancelled")
                quota.reserve(session, f.project_id, len(body))
                f.upload_size += len(body)
                f.reserved_bytes += len(body)
        except quota.QuotaExceeded as exc:
            self.failed = f"over quota: {exc.detail}; nothing of this upload was kept"
            self.discard(reason="over quota")
            raise OverQuota(self.failed) from exc
        with transaction(self.hub.sessions) as session:
            principal = key_principal(session, self.key_id, self.ip)
            archive.put_part(session, principal, storage_for(self.hub), self.file_id, self.parts + 1,
                             (self.header if self.parts == 0 else b"") + body)
            up = session.get(SftpUpload, self.file_id)
            assert up is not None
            up.received, up.parts = self.received + len(plain), self.parts + 1
        self.received += len(plain)
        self.parts += 1
        for hook in PART_STORED:
            hook(self.file_id, self.received)

    def discard(self, *, reason: str) -> None:
        """Drop the upload: parts deleted, quota given back, the path free again."""
        self.buffer = bytearray()
        with transaction(self.hub.sessions) as session:
            principal = key_principal(session, self.key_id, self.ip)
            f = session.get(ArchiveFile, self.file_id)
            if f is not None and f.state == "receiving":
                archive.abort_upload(session, principal, storage_for(self.hub), self.file_id)
                f.failure = f"{reason} (sftp)"
            up = session.get(SftpUpload, self.file_id)
            if up is not None:
                session.delete(up)

    def finish(self) -> None:
        """The client closed the file: store the last part and hand the upload to the archive's ingest."""
        try:
            if self.failed:
                raise OverQuota(self.failed)
            if self.refused is not None:  # withdrawn mid-upload: nothing more is stored, nothing completed
                raise PermissionDenied(self.refused)
            if self.size == 0:
                self.discard(reason="empty file")
                raise PermissionDenied("empty files are not archived")
            if self.buffer:
                self._store(bytes(self.buffer))
                self.buffer = bytearray()
            with transaction(self.hub.sessions) as session:
                principal = key_principal(session, self.key_id, self.ip)
                archive.complete_upload(session, principal, storage_for(self.hub), self.file_id)
                up = session.get(SftpUpload, self.file_id)
                assert up is not None
                up.completed_at = utcnow()
        finally:
            self.release(interrupted=False)

    def release(self, *, interrupted: bool) -> None:
        """The handle is gone. Interrupted (the connection dropped): what was stored stays, resumable; the
        unstored tail in memory is dropped (it is re-sent from ``stat``'s size)."""
        self.buffer = bytearray()
        try:
            if interrupted and not self.failed:
                self._record_interruption()
        finally:
            with _BUSY_LOCK:
                _BUSY.discard(self.file_id)
        for hook in HANDLE_RELEASED:
            hook(self.file_id, interrupted)


    def _record_interruption(self) -> None:
        details = {"stored": self.received}
        try:
            with transaction(self.hub.sessions) as session:
                f = session.get(ArchiveFile, self.file_id)
                if f is not None and f.state == "receiving":
                    principal = key_principal(session, self.key_id, self.ip)
                    audit.record(session, principal.actor, "sftp.upload.interrupted", project_id=f.project_id,
                                 target=f"file:{self.file_id}", details=details)
        except DBAPIError:  # the database does not answer: nothing could have completed the upload meanwhile
            if self.actor is None:
                raise
            outbox.record_after(self.hub, self.actor, "sftp.upload.interrupted", project_id=self.project_id,
                                target=f"file:{self.file_id}", details=details)


def open_write(hub: Hub, key_id: uuid.UUID, ip: str | None, where: paths.Where, *, truncate: bool) -> Writing:
    """Open ``/<project>/uploads/<path>`` for writing: a new upload, or (without truncation) the caller's
    unfinished upload of that path, continued where its stored bytes end."""
    if where.kind != "uploads" or not where.rest:
        raise PermissionDenied("new files go into /<project>/uploads/; everything else is read-only")
    storage = storage_for(hub)
    with transaction(hub.sessions) as session:
        principal = key_principal(session, key_id, ip)
        access = _project(session, principal, where.slug)
        access.require("write-data")
        found = session.execute(_visible_files(access.project.id).where(ArchiveFile.path == where.rest)
                                .order_by(ArchiveFile.created_at.desc()).limit(1)).first()
        resume: SftpUpload | None = None
        if found is not None:
            f, up = found
            if up is None or up.completed_at is not None or f.state != "receiving":
                raise PermissionDenied("an archived file of this name exists and archived files never change: "
                                       "upload under a new name")
            if up.user_id != principal.user.id:
                raise PermissionDenied("another member is uploading this path")
            resume = up
        if resume is not None:
            with _BUSY_LOCK:
                if resume.file_id in _BUSY:
                    raise PermissionDenied("this upload is open in another session; close it first")
                _BUSY.add(resume.file_id)
        if resume is not None and truncate:
            stale = Writing(hub, key_id, ip, resume.file_id, resume.header, b"", resume.received, resume.parts)
            with _BUSY_LOCK:
                _BUSY.discard(resume.file_id)
            session.commit()
            stale.discard(reason="replaced by a new upload")
            resume = None
        if resume is not None:
            try:
                opened = c4gh.open_header(resume.header, hub_keys(hub, session).secrets)
            except Exception:
                with _BUSY_LOCK:
                    _BUSY.discard(resume.file_id)
                raise
            audit.record(session, principal.actor, "sftp.upload.resumed", project_id=resume.project_id,
                         target=f"file:{resume.file_id}", details={"path": resume.path, "at": resume.received})
            return Writing(hub, key_id, ip, resume.file_id, resume.header, opened.session_keys[0], resume.received,
                           resume.parts, actor=principal.actor, project_id=resume.project_id)
    with transaction(hub.sessions) as session:
        principal = key_principal(session, key_id, ip)
        access = _project(session, principal, where.slug)
        session_key = os.urandom(32)
        _fingerprint, keypair = hub_keys(hub, session).current
        header = c4gh.make_header([session_key], keypair.public)
        f = archive.begin_upload(session, principal, access, storage, path=where.rest, size=len(header),
                                 sha256=None)
        session.add(SftpUpload(file_id=f.id, project_id=access.project.id, user_id=principal.user.id,
                               path=where.rest, header=header))
        with _BUSY_LOCK:
            _BUSY.add(f.id)
        return Writing(hub, key_id, ip, f.id, header, session_key, 0, 0, actor=principal.actor,
                       project_id=access.project.id)


def rename(hub: Hub, key_id: uuid.UUID, ip: str | None, old: paths.Where, new: paths.Where) -> None:
    """Rename one's own SFTP upload inside the same upload area while no dataset version holds it (rclone
    uploads to ``name.XXXX.partial`` and renames it when done). Nothing else is ever renamed."""
    if old.kind != "uploads" or new.kind != "uploads" or not old.rest or not new.rest or old.slug != new.slug:
        raise PermissionDenied("only your own uploads are renamed, within the same upload area")
    if not archive_path_ok(new.rest):
        raise Invalid("file names are relative paths without control characters")
    with transaction(hub.sessions) as session:
        principal = key_principal(session, key_id, ip)
        access = _project(session, principal, old.slug)
        access.require("write-data")
        found = session.execute(_visible_files(access.project.id).where(ArchiveFile.path == old.rest)
                                .order_by(ArchiveFile.created_at.desc()).limit(1)).first()
        if found is None:
            raise NotFound("no such file")
        f, up = found
        if up is None or up.user_id != principal.user.id or session.scalar(
                select(DatasetFile.file_id).where(DatasetFile.file_id == f.id).limit(1)) is not None:
            raise PermissionDenied("archived files are not renamed: only your own uploads, before they join a dataset")
        if session.scalar(select(ArchiveFile.id).where(ArchiveFile.project_id == access.project.id,
                                                       ArchiveFile.path == new.rest, ArchiveFile.state != FAILED,
                                                       ArchiveFile.hold.is_(None)).limit(1)) is not None:
            raise PermissionDenied("a file of that name exists")
        with _BUSY_LOCK:
            if f.id in _BUSY:
                raise PermissionDenied("this upload is still open")
        f.path = up.path = new.rest
        audit.record(session, principal.actor, "sftp.upload.renamed", project_id=f.project_id,
                     target=f"file:{f.id}", details={"from": old.rest, "to": new.rest})


def archive_path_ok(path: str) -> bool:
    return len(path) <= 1024 and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)


def remove(hub: Hub, key_id: uuid.UUID, ip: str | None, where: paths.Where) -> None:
    """Only an unfinished upload of one's own can be removed (the upload is cancelled, quota freed)."""
    with transaction(hub.sessions) as session:
        principal = key_principal(session, key_id, ip)
        if where.kind != "uploads" or not where.rest:
            raise PermissionDenied("only unfinished uploads can be removed")
        access = _project(session, principal, where.slug)
        up = session.scalar(select(SftpUpload).where(SftpUpload.project_id == access.project.id,
                                                     SftpUpload.path == where.rest, SftpUpload.completed_at.is_(None),
                                                     SftpUpload.user_id == principal.user.id))
        if up is None:
            exists = session.scalar(select(func.count()).select_from(ArchiveFile).where(
                ArchiveFile.project_id == access.project.id, ArchiveFile.path == where.rest,
                ArchiveFile.state != FAILED, ArchiveFile.hold.is_(None)))
            if not exists:
                raise NotFound("no such file")
            raise PermissionDenied("archived files are not deleted over SFTP")
        with _BUSY_LOCK:
            if up.file_id in _BUSY:
                raise PermissionDenied("this upload is open in another session")
        file_id, header, received, parts = up.file_id, up.header, up.received, up.parts
    Writing(hub, key_id, ip, file_id, header, b"", received, parts).discard(reason="removed by the uploader")
