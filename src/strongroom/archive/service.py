"""The encrypted archive: uploads into a project's inbox, ingest, datasets and versions, access checks.

State changes happen here only. Object storage calls are made outside long transactions where
possible; every step is idempotent so a crash anywhere can be retried.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..audit.service import Actor
from ..db import transaction, utcnow
from ..errors import Conflict, Forbidden, Invalid, MfaRequired, NotFound
from ..hub import Hub
from ..identity.principal import Principal
from ..jobs import service as jobs
from ..projects import quota
from ..projects import service as projects
from ..projects.models import Membership, Project
from . import c4gh
from .keys import hub_keys
from .models import (
    FAILED,
    INGESTED,
    READY,
    RECEIVING,
    UPLOADED,
    VERIFIED,
    ArchiveFile,
    Dataset,
    DatasetFile,
    DatasetShare,
    DatasetVersion,
    UploadPart,
    UserKey,
)
from .sealing import SealedBody, seal_file
from .storage.base import Storage

MAX_UPLOAD_BYTES = 5 * 1024**4  # 5 TiB: S3's largest object
MAX_PARTS = 10_000
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PATH_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,1024}$")


def new_accession(prefix: str) -> str:
    """Stable, unguessable, readable ids: SRF-7K2M9QX4TD (files), SRD-… (datasets)."""
    return f"{prefix}-" + "".join(secrets.choice(_CROCKFORD) for _ in range(10))


# -- project access by id ----------------------------------------------------------------------
def _access(session: Session, principal: Principal, project_id: uuid.UUID) -> projects.ProjectAccess:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound("not found")
    return projects.open_project(session, principal, project.slug)


def readable_projects(session: Session, principal: Principal) -> set[uuid.UUID]:
    """Projects whose data the caller may read (member with read-data)."""
    if not principal.has_mfa:
        return set()
    ids = set()
    for m in session.scalars(select(Membership).where(Membership.user_id == principal.user.id)):
        if "read-data" in projects.effective_rights(session, m):
            ids.add(m.project_id)
    return ids


# -- uploads -----------------------------------------------------------------------------------
def begin_upload(session: Session, principal: Principal, access: projects.ProjectAccess, storage: Storage, *,
                 path: str, size: int, sha256: str | None) -> ArchiveFile:
    """Open an upload into the project's inbox, holding quota for its full size up front."""
    access.require("write-data")
    if access.project.status != "active":
        raise Conflict("the project is closed")
    if not _PATH_RE.match(path) or path.startswith("/") or ".." in path.split("/"):
        raise Invalid("file path must be a relative path without control characters or '..'")
    if not 0 < size <= MAX_UPLOAD_BYTES:
        raise Invalid(f"size must be between 1 and {MAX_UPLOAD_BYTES} bytes")
    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise Invalid("sha256 must be 64 lower-case hex digits")
    quota.reserve(session, access.project.id, size)
    file_id = new_accession("SRF")
    inbox_key = f"inbox/{access.project.id}/{file_id}"
    f = ArchiveFile(id=file_id, project_id=access.project.id, uploader_id=principal.user.id, path=path,
                    state=RECEIVING, upload_size=size, reserved_bytes=size, inbox_key=inbox_key,
                    declared_sha256=sha256, multipart_id=storage.begin_multipart(inbox_key))
    session.add(f)
    audit.record(session, principal.actor, "archive.upload.started", project_id=access.project.id,
                 target=f"file:{file_id}", details={"path": path, "size": size})
    session.flush()
    return f


def _my_upload(session: Session, principal: Principal, file_id: str) -> ArchiveFile:
    """An upload of the caller's, in a project where they may still write: 404 otherwise."""
    f = session.get(ArchiveFile, file_id)
    if f is None or f.uploader_id != principal.user.id:
        raise NotFound("no such upload")
    _access(session, principal, f.project_id).require("write-data")
    return f


def upload_parts(session: Session, principal: Principal, file_id: str) -> tuple[ArchiveFile, list[UploadPart]]:
    f = _my_upload(session, principal, file_id)
    parts = list(session.scalars(select(UploadPart).where(UploadPart.file_id == file_id)
                                 .order_by(UploadPart.number)))
    return f, parts


def put_part(session: Session, principal: Principal, storage: Storage, file_id: str, number: int,
             data: bytes) -> UploadPart:
    f = _my_upload(session, principal, file_id)
    if f.state != RECEIVING:
        raise Conflict(f"the upload is {f.state}, not receiving parts")
    if not 1 <= number <= MAX_PARTS:
        raise Invalid(f"part number must be 1-{MAX_PARTS}")
    if not data:
        raise Invalid("empty part")
    others = session.scalar(select(func.coalesce(func.sum(UploadPart.size), 0))
                            .where(UploadPart.file_id == file_id, UploadPart.number != number)) or 0
    if others + len(data) > f.upload_size:
        raise Invalid(f"parts exceed the declared size of {f.upload_size} bytes")
    assert f.inbox_key and f.multipart_id
    # Store and hash before the first write: the route reads first (deps.read_first), so no write lock
    # is held during this I/O. FOR UPDATE then takes it (SQLite) and the checks are made again under it.
    info = storage.put_part(f.inbox_key, f.multipart_id, number, data)
    digest = hashlib.sha256(data).hexdigest()
    part = session.get(UploadPart, (file_id, number), with_for_update=True)
    session.refresh(f)
    if f.state != RECEIVING:
        raise Conflict(f"the upload is {f.state}, not receiving parts")
    if part is None:
        part = UploadPart(file_id=file_id, number=number, size=len(data), sha256=digest, etag=info.etag)
        session.add(part)
    else:  # a retried part replaces the earlier attempt
        part.size, part.sha256, part.etag = len(data), digest, info.etag
    return part


def complete_upload(session: Session, principal: Principal, storage: Storage, file_id: str, *,
                    sha256: str | None = None) -> ArchiveFile:
    """Assemble the parts into the inbox object and queue the ingest job."""
    f = _my_upload(session, principal, file_id)
    if f.state != RECEIVING:
        return f  # completing twice is harmless
    if sha256:
        f.declared_sha256 = sha256
    parts = list(session.scalars(select(UploadPart).where(UploadPart.file_id == file_id)
                                 .order_by(UploadPart.number)))
    numbers = [p.number for p in parts]
    if numbers != list(range(1, len(parts) + 1)):
        raise Invalid(f"parts are missing: have {numbers[:20]}")
    received = sum(p.size for p in parts)
    if received != f.upload_size:
        raise Invalid(f"received {received} of {f.upload_size} declared bytes")
    assert f.inbox_key and f.multipart_id
    storage.complete_multipart(f.inbox_key, f.multipart_id, [(p.number, p.etag) for p in parts])
    f.state = UPLOADED
    session.execute(delete(UploadPart).where(UploadPart.file_id == file_id))
    jobs.enqueue(session, "archive.ingest", {"file_id": file_id}, dedup_key=f"ingest:{file_id}")
    audit.record(session, principal.actor, "archive.upload.completed", project_id=f.project_id,
                 target=f"file:{file_id}", details={"size": received})
    return f


def abort_upload(session: Session, principal: Principal, storage: Storage, file_id: str) -> None:
    f = _my_upload(session, principal, file_id)
    if f.state != RECEIVING:
        raise Conflict(f"the upload is {f.state}; only an upload still receiving can be cancelled")
    assert f.inbox_key and f.multipart_id
    storage.abort_multipart(f.inbox_key, f.multipart_id)
    quota.release(session, f.project_id, f.reserved_bytes)
    f.reserved_bytes, f.state, f.failure = 0, FAILED, "cancelled by the uploader"
    audit.record(session, principal.actor, "archive.upload.cancelled", project_id=f.project_id,
                 target=f"file:{file_id}")


# -- ingest ------------------------------------------------------------------------------------
class IngestRefused(Exception):
    """The upload cannot become an archived file; the reason is recorded for people to read."""


def ingest(hub: Hub, storage: Storage, file_id: str, *, workers: int = 2) -> str:
    """One pass over the uploaded bytes: open the header with an archive key, decrypt and verify
    every segment while hashing plaintext (SHA-256, MD5) and the received body (SHA-256), and store
    the body. Returns the final state. Safe to run again after a crash at any point."""
    with hub.sessions() as session:
        f = session.get(ArchiveFile, file_id)
        if f is None or f.state not in (UPLOADED, INGESTED, VERIFIED):
            return f.state if f else "missing"
        keys = hub_keys(hub, session)
        inbox_key, declared, project_id, upload_size = f.inbox_key, f.declared_sha256, f.project_id, f.upload_size
    assert inbox_key is not None
    body_key = f"archive/{project_id}/{file_id}"
    try:
        with storage.open_reader(inbox_key) as reader:
            try:
                header = c4gh.read_header(reader)
                opened = c4gh.open_header(header, keys.secrets)
            except c4gh.NoMatchingKey as exc:
                raise IngestRefused("the file is not encrypted to this hub's archive key "
                                    "(no active archive key opens its header)") from exc
            except c4gh.HeaderError as exc:
                raise IngestRefused(f"not a crypt4gh file: {exc}") from exc
            if opened.edit_list is not None:
                raise IngestRefused("uploads must not carry an edit list")
            writer = storage.open_writer(body_key)
            # Size the batches to the file: small files need neither big buffers nor threads.
            segments = max(1, -(-(upload_size - len(header)) // c4gh.CIPHER_SEGMENT_SIZE))
            batch = min(c4gh.BATCH_SEGMENTS, segments)
            try:
                result = c4gh.ingest(reader, opened.session_keys, writer.write,
                                     workers=workers if segments > batch else 0, batch_segments=batch)
                stored = writer.commit()
            except BaseException:
                writer.abort()
                raise
    except (c4gh.TamperedSegment, c4gh.TruncatedBody) as exc:
        return _fail(hub, storage, file_id, f"the encrypted body is damaged: {exc}")
    except IngestRefused as exc:
        return _fail(hub, storage, file_id, str(exc))
    with transaction(hub.sessions) as session:
        f = session.get(ArchiveFile, file_id)
        assert f is not None
        f.header, f.header_key = header, keys.fingerprint_at(opened.key_index)
        f.body_key, f.body_size, f.body_sha256 = body_key, stored.size, result.body_sha256
        f.plaintext_size, f.plaintext_sha256, f.plaintext_md5 = (result.plaintext_size, result.plaintext_sha256,
                                                                 result.plaintext_md5)
        f.state, f.ingested_at = INGESTED, utcnow()
    # Verify: what is stored is what we hashed; the plaintext is what the uploader hashed.
    problem = None
    if stored.size != result.body_size:
        problem = f"stored {stored.size} bytes but read {result.body_size}"
    elif storage.size(body_key) != result.body_size:
        problem = "the stored body has the wrong size"
    elif declared and not hmac.compare_digest(declared, result.plaintext_sha256):
        problem = "the plaintext SHA-256 differs from the one the uploader computed"
    if problem:
        return _fail(hub, storage, file_id, problem)
    with transaction(hub.sessions) as session:
        f = session.get(ArchiveFile, file_id)
        assert f is not None
        f.state = VERIFIED
        quota.settle(session, f.project_id, f.reserved_bytes, f.body_size or 0)
        f.reserved_bytes = 0
        f.state = READY
        audit.record(session, Actor.system("ingest"), "archive.file.ingested", project_id=f.project_id,
                     target=f"file:{file_id}",
                     details={"plaintext_size": f.plaintext_size, "sha256": f.plaintext_sha256})
    storage.delete(inbox_key)
    return READY


def _fail(hub: Hub, storage: Storage, file_id: str, reason: str) -> str:
    with transaction(hub.sessions) as session:
        f = session.get(ArchiveFile, file_id)
        assert f is not None
        quota.release(session, f.project_id, f.reserved_bytes)
        f.reserved_bytes, f.state, f.failure = 0, FAILED, reason
        audit.record(session, Actor.system("ingest"), "archive.file.failed", outcome="failed",
                     project_id=f.project_id, target=f"file:{file_id}", details={"reason": reason})
    return FAILED


def list_files(session: Session, access: projects.ProjectAccess, *, state: str | None = None,
               after: str | None = None, limit: int = 100) -> list[ArchiveFile]:
    """The project's files; held ones only for members with the hold's review right."""
    stmt = (select(ArchiveFile).where(ArchiveFile.project_id == access.project.id)
            .order_by(ArchiveFile.id).limit(min(max(limit, 1), 1000)))
    visible_holds = [h for h, rule in HOLD_RULES.items() if rule.right in access.rights]
    stmt = stmt.where(ArchiveFile.hold.is_(None) | ArchiveFile.hold.in_(visible_holds))
    if state:
        stmt = stmt.where(ArchiveFile.state == state)
    if after:
        stmt = stmt.where(ArchiveFile.id > after)
    return list(session.scalars(stmt))


def get_file(session: Session, principal: Principal, file_id: str) -> ArchiveFile:
    """File metadata for members of its project, or for anyone who may read it through a share."""
    f = session.get(ArchiveFile, file_id)
    if f is None:
        raise NotFound("no such file")
    authorize_read(session, principal, f)
    return f


# -- datasets ----------------------------------------------------------------------------------
def _ready_files(session: Session, project_id: uuid.UUID, ids: list[str]) -> list[ArchiveFile]:
    if not ids:
        return []
    found = {f.id: f for f in session.scalars(select(ArchiveFile).where(ArchiveFile.id.in_(set(ids))))}
    bad = [i for i in ids if i not in found or found[i].project_id != project_id]
    if bad:
        raise Invalid(f"not files of this project: {bad[:10]}")
    held = [i for i in ids if found[i].hold is not None]
    if held:
        raise Invalid(f"files held in quarantine cannot be in a dataset (release them first): {held[:10]}")
    not_ready = [i for i in ids if found[i].state != READY]
    if not_ready:
        raise Invalid(f"files not archived yet: {not_ready[:10]}")
    return list(found.values())


def create_dataset(session: Session, principal: Principal, access: projects.ProjectAccess, *, title: str,
                   description: str = "", files: list[str] | None = None) -> Dataset:
    access.require("write-data")
    if not title.strip():
        raise Invalid("a dataset needs a title")
    ds = Dataset(id=new_accession("SRD"), project_id=access.project.id, title=title.strip(),
                 description=description.strip(), created_by=principal.user.id)
    session.add(ds)
    session.flush()
    version = DatasetVersion(dataset_id=ds.id, number=1, state="draft")
    session.add(version)
    session.flush()
    _add_files(session, version, _ready_files(session, access.project.id, files or []))
    audit.record(session, principal.actor, "archive.dataset.created", project_id=access.project.id,
                 target=f"dataset:{ds.id}", details={"title": ds.title, "files": version.file_count})
    return ds


def _add_files(session: Session, version: DatasetVersion, files: list[ArchiveFile]) -> None:
    present = set(session.scalars(select(DatasetFile.file_id).where(
        DatasetFile.version_id == version.id, DatasetFile.file_id.in_([f.id for f in files])))) if files else set()
    new = [f for f in files if f.id not in present]
    if new:
        session.execute(insert(DatasetFile), [{"version_id": version.id, "file_id": f.id} for f in new])
        version.file_count += len(new)
        version.total_bytes += sum(f.plaintext_size or 0 for f in new)


# Other capabilities add ways to see a whole dataset (e.g. an entitlement); each returns True to allow.
DATASET_READERS: list[Callable[[Session, Principal, Dataset], bool]] = []


def visible_dataset(session: Session, principal: Principal, dataset_id: str) -> tuple[Dataset, bool]:
    """The dataset and whether the caller is in its owning project; NotFound unless they are an
    owner, a member of a project it is shared into, or allowed by a registered reader."""
    ds = session.get(Dataset, dataset_id)
    readable = readable_projects(session, principal)
    if ds is None:
        raise NotFound("no such dataset")
    if ds.project_id in readable:
        return ds, True
    shared = session.scalar(select(DatasetShare).where(DatasetShare.dataset_id == ds.id,
                                                       DatasetShare.project_id.in_(readable)))
    if shared is None and not any(reader(session, principal, ds) for reader in DATASET_READERS):
        raise NotFound("no such dataset")
    return ds, False


# Whether approved applicants may download a dataset (access: its policy); none registered → no.
DATASET_DOWNLOAD_POLICIES: list[Callable[[Session, Dataset], bool]] = []


def dataset_downloadable(session: Session, principal: Principal, ds: Dataset, owner: bool) -> bool:
    """For pages: whether the caller may download the dataset's files to their own machine — the
    project setting for members (of the owning or a receiving project), the dataset's access policy
    for everyone else. ``authorize_download`` decides per file; this only chooses what to show."""
    if owner:
        return bool(projects.get_setting(session, ds.project_id, "download_allowed"))
    receiving = session.scalars(select(DatasetShare.project_id).where(
        DatasetShare.dataset_id == ds.id, DatasetShare.project_id.in_(readable_projects(session, principal))))
    if any(projects.get_setting(session, pid, "download_allowed") for pid in receiving):
        return True
    return any(policy(session, ds) for policy in DATASET_DOWNLOAD_POLICIES)


def _owner_access(session: Session, principal: Principal, dataset_id: str) -> tuple[Dataset,
                                                                                  projects.ProjectAccess]:
    ds = session.get(Dataset, dataset_id)
    if ds is None:
        raise NotFound("no such dataset")
    try:
        access = _access(session, principal, ds.project_id)
    except NotFound:
        raise NotFound("no such dataset") from None
    return ds, access


def edit_draft(session: Session, principal: Principal, dataset_id: str, *, add: list[str],
               remove: list[str]) -> DatasetVersion:
    """Change the draft version; if the newest version is released, a new draft starts from it."""
    ds, access = _owner_access(session, principal, dataset_id)
    access.require("write-data")
    latest = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
                            .order_by(DatasetVersion.number.desc()).limit(1))
    assert latest is not None
    if latest.state != "draft":
        draft = DatasetVersion(dataset_id=ds.id, number=latest.number + 1, state="draft",
                               file_count=latest.file_count, total_bytes=latest.total_bytes)
        session.add(draft)
        session.flush()
        # copy the membership by reference in the database: no file is touched
        session.execute(insert(DatasetFile).from_select(
            ["version_id", "file_id"],
            select(func.cast(draft.id, DatasetFile.version_id.type), DatasetFile.file_id)
            .where(DatasetFile.version_id == latest.id)))
        latest = draft
    if remove:
        gone = list(session.scalars(select(ArchiveFile).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
                                    .where(DatasetFile.version_id == latest.id, ArchiveFile.id.in_(remove))))
        session.execute(delete(DatasetFile).where(DatasetFile.version_id == latest.id,
                                                  DatasetFile.file_id.in_([f.id for f in gone])))
        latest.file_count -= len(gone)
        latest.total_bytes -= sum(f.plaintext_size or 0 for f in gone)
    _add_files(session, latest, _ready_files(session, ds.project_id, add))
    audit.record(session, principal.actor, "archive.dataset.edited", project_id=ds.project_id,
                 target=f"dataset:{ds.id}", details={"version": latest.number, "added": len(add),
                                                     "removed": len(remove)})
    return latest


def _version(session: Session, ds: Dataset, number: int) -> DatasetVersion:
    v = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id,
                                                    DatasetVersion.number == number))
    if v is None:
        raise NotFound(f"no version {number}")
    return v


def release_version(session: Session, principal: Principal, dataset_id: str, number: int) -> DatasetVersion:
    ds, access = _owner_access(session, principal, dataset_id)
    access.require("write-data")
    v = _version(session, ds, number)
    if v.state != "draft":
        raise Conflict(f"version {number} is {v.state}; released versions never change")
    if v.file_count == 0:
        raise Invalid("an empty version cannot be released")
    v.state, v.released_at = "released", utcnow()
    audit.record(session, principal.actor, "archive.dataset.released", project_id=ds.project_id,
                 target=f"dataset:{ds.id}", details={"version": number, "files": v.file_count})
    return v


def deprecate_version(session: Session, principal: Principal, dataset_id: str, number: int) -> DatasetVersion:
    ds, access = _owner_access(session, principal, dataset_id)
    access.require("write-data")
    v = _version(session, ds, number)
    if v.state != "released":
        raise Conflict("only a released version can be deprecated")
    v.state = "deprecated"
    audit.record(session, principal.actor, "archive.dataset.deprecated", project_id=ds.project_id,
                 target=f"dataset:{ds.id}", details={"version": number})
    return v


def version_files(session: Session, principal: Principal, dataset_id: str, number: int, *,
                  after: str | None = None, limit: int = 1000) -> tuple[DatasetVersion, list[ArchiveFile]]:
    """One page of a version's files in id order (keyset: fast at any depth, any size)."""
    ds, is_owner = visible_dataset(session, principal, dataset_id)
    v = _version(session, ds, number)
    if not is_owner and v.state == "draft":
        raise NotFound(f"no version {number}")
    stmt = (select(ArchiveFile).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
            .where(DatasetFile.version_id == v.id, ArchiveFile.hold.is_(None))
            .order_by(DatasetFile.file_id).limit(min(max(limit, 1), 5000)))
    if after:
        stmt = stmt.where(DatasetFile.file_id > after)
    return v, list(session.scalars(stmt))


def share_dataset(session: Session, principal: Principal, dataset_id: str, target_slug: str,
                  *, fresh_minutes: int) -> DatasetShare:
    """Share a released dataset read-only into another project (by reference, no quota)."""
    ds, access = _owner_access(session, principal, dataset_id)
    access.require("export")
    projects.require_fresh_mfa(principal, fresh_minutes)
    if not projects.get_setting(session, ds.project_id, "external_sharing"):
        raise Forbidden("the project's 'Share datasets with other projects' setting is locked")
    if not session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id,
                                                       DatasetVersion.state == "released")):
        raise Invalid("release a version before sharing")
    target = session.scalar(select(Project).where(Project.slug == target_slug))
    if target is None or target.id == ds.project_id:
        raise Invalid(f"no other project {target_slug!r}")
    share = session.get(DatasetShare, (ds.id, target.id))
    if share is None:
        share = DatasetShare(dataset_id=ds.id, project_id=target.id, shared_by=principal.user.id)
        session.add(share)
        audit.record(session, principal.actor, "archive.dataset.shared", project_id=ds.project_id,
                     target=f"dataset:{ds.id}", details={"into": target_slug})
    return share


def unshare_dataset(session: Session, principal: Principal, dataset_id: str, target_slug: str) -> None:
    ds, access = _owner_access(session, principal, dataset_id)
    access.require("export")
    target = session.scalar(select(Project).where(Project.slug == target_slug))
    share = session.get(DatasetShare, (ds.id, target.id)) if target else None
    if share is None:
        raise NotFound("not shared with that project")
    session.delete(share)
    audit.record(session, principal.actor, "archive.dataset.unshared", project_id=ds.project_id,
                 target=f"dataset:{ds.id}", details={"from": target_slug})


def list_datasets(session: Session, principal: Principal, access: projects.ProjectAccess) -> list[Dataset]:
    """Datasets the project owns plus those shared into it."""
    owned = list(session.scalars(select(Dataset).where(Dataset.project_id == access.project.id)
                                 .order_by(Dataset.created_at)))
    shared = list(session.scalars(select(Dataset).join(DatasetShare, DatasetShare.dataset_id == Dataset.id)
                                  .where(DatasetShare.project_id == access.project.id)))
    return owned + shared


# -- read authorisation ------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadGrant:
    """Why the caller may read a file: through which project (or other basis)."""

    basis: str  # owner | share | entitlement | visa | review
    project_id: uuid.UUID | None
    detail: str = ""
    # For entitlement and visa grants: whether the dataset's access policy lets approved applicants
    # download to their own machines (owner and share grants follow the project's setting instead).
    may_download: bool = False


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

# Other capabilities (access: entitlements, visas) add ways to be allowed; each returns a grant or None.
GRANT_PROVIDERS: list[Callable[[Session, Principal, ArchiveFile], ReadGrant | None]] = []


def authorize_read(session: Session, principal: Principal, f: ArchiveFile) -> ReadGrant:
    """Checked on every request — membership, release state, shares, grants and holds are read fresh."""
    if f.hold is not None:
        # Quarantined (or otherwise held) files do not exist for ordinary reads: same answer as a
        # made-up id, for members, the PI, applicants, share recipients and admins alike.
        raise NotFound("no such file")
    readable = readable_projects(session, principal)
    if f.project_id in readable:
        return ReadGrant("owner", f.project_id)
    if readable:
        share = session.execute(
            select(DatasetShare.project_id)
            .join(DatasetVersion, DatasetVersion.dataset_id == DatasetShare.dataset_id)
            .join(DatasetFile, DatasetFile.version_id == DatasetVersion.id)
            .where(DatasetFile.file_id == f.id, DatasetShare.project_id.in_(readable),
                   DatasetVersion.state.in_(("released", "deprecated")))
            .limit(1)).first()
        if share is not None:
            return ReadGrant("share", share[0])
    for provider in GRANT_PROVIDERS:
        grant = provider(session, principal, f)
        if grant is not None:
            return grant
    if not principal.has_mfa:
        raise MfaRequired("data access needs a login with multi-factor authentication")
    raise NotFound("no such file")


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
    if (grant.basis in ("owner", "share") and grant.project_id is not None
            and not projects.get_setting(session, grant.project_id, "download_allowed")):
        raise Forbidden("downloads are locked for this project: its PI can open "
                        "'Download to researchers' own machines'")
    if grant.basis not in ("owner", "share") and not grant.may_download:
        raise Forbidden("this dataset is for in-platform use only: its access policy does not let approved "
                        "users download to their own machines")
    return f, grant


def record_download(session: Session, principal: Principal, f: ArchiveFile, grant: ReadGrant, **details: object
                    ) -> dict[str, Any]:
    """The "started" event, in the request's transaction; its details (plus the started event's number)
    are repeated on the completed/failed/aborted event written when the body ends."""
    recorded = {"basis": grant.basis, "via_project": str(grant.project_id) if grant.project_id else None,
                **({"grant": grant.detail} if grant.detail else {}),
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


# -- user keys ---------------------------------------------------------------------------------
def add_user_key(session: Session, principal: Principal, name: str, public_key: bytes) -> UserKey:
    if len(public_key) != 32:
        raise Invalid("a crypt4gh public key is 32 bytes (X25519)")
    fp = c4gh.fingerprint(public_key)
    existing = session.scalar(select(UserKey).where(UserKey.user_id == principal.user.id,
                                                    UserKey.fingerprint == fp))
    if existing is not None:
        existing.revoked_at = None
        return existing
    key = UserKey(user_id=principal.user.id, name=name.strip()[:100] or "key", fingerprint=fp,
                  public_key=public_key)
    session.add(key)
    audit.record(session, principal.actor, "archive.user_key.added", subject_user_id=principal.user.id,
                 target=f"key:{fp}")
    session.flush()
    return key


def user_key(session: Session, principal: Principal, fingerprint: str | None) -> UserKey:
    stmt = select(UserKey).where(UserKey.user_id == principal.user.id, UserKey.revoked_at.is_(None))
    if fingerprint:
        stmt = stmt.where(UserKey.fingerprint == fingerprint)
    keys = list(session.scalars(stmt.order_by(UserKey.created_at.desc())))
    if not keys:
        raise Invalid("register a crypt4gh public key first (`strongroom keys register`), "
                      "or name one of yours with ?key=FINGERPRINT")
    return keys[0]


def list_user_keys(session: Session, principal: Principal) -> list[UserKey]:
    return list(session.scalars(select(UserKey).where(UserKey.user_id == principal.user.id)
                                .order_by(UserKey.created_at.desc())))


def revoke_user_key(session: Session, principal: Principal, fingerprint: str) -> None:
    key = session.scalar(select(UserKey).where(UserKey.user_id == principal.user.id,
                                               UserKey.fingerprint == fingerprint))
    if key is None:
        raise NotFound("no such key")
    key.revoked_at = utcnow()
    audit.record(session, principal.actor, "archive.user_key.revoked", subject_user_id=principal.user.id,
                 target=f"key:{fingerprint}")


def download_header(hub: Hub, session: Session, f: ArchiveFile, recipient_public: bytes,
                    edit_list: list[int] | None = None) -> bytes:
    """The file's header re-encrypted to the recipient: deterministic per (file, key, edit list),
    so the same request always yields the same bytes (stable ETag, resumable ranges)."""
    assert f.header is not None
    keys = hub_keys(hub, session)
    seed = hmac.new(hub.secret, b"download header|" + f.id.encode() + b"|" + recipient_public
                    + b"|" + repr(edit_list).encode(), hashlib.sha256).digest()
    return c4gh.reencrypt_header(f.header, keys.secrets, recipient_public, keys.current[1],
                                 edit_list=edit_list, seed=seed)


def receive_small_plaintext(hub: Hub, session: Session, principal: Principal, access: projects.ProjectAccess,
                            storage: Storage, *, path: str, data: bytes) -> ArchiveFile:
    """The browser upload: a small file arrives in plaintext over TLS and is encrypted to the
    archive key in memory before anything is stored; then it follows the normal ingest."""
    keys = hub_keys(hub, session)
    fingerprint, keypair = keys.current
    ciphertext = b"".join(c4gh.encrypt_stream([data], keypair.public, c4gh.generate_keypair()))
    f = begin_upload(session, principal, access, storage, path=path, size=len(ciphertext),
                     sha256=hashlib.sha256(data).hexdigest())
    assert f.inbox_key and f.multipart_id
    storage.abort_multipart(f.inbox_key, f.multipart_id)
    storage.put_bytes(f.inbox_key, ciphertext)
    f.multipart_id, f.state = None, UPLOADED
    jobs.enqueue(session, "archive.ingest", {"file_id": f.id}, dedup_key=f"ingest:{f.id}")
    audit.record(session, principal.actor, "archive.upload.completed", project_id=f.project_id,
                 target=f"file:{f.id}", details={"size": len(ciphertext), "via": "browser"})
    return f


def retry_ingest(session: Session, principal: Principal, file_id: str) -> ArchiveFile:
    """Queue a failed-but-retryable ingest again (stewards, after fixing the cause)."""
    f = session.get(ArchiveFile, file_id)
    if f is None:
        raise NotFound("no such file")
    access = _access(session, principal, f.project_id)
    access.require("import")
    if f.state not in (UPLOADED, INGESTED, VERIFIED):
        raise Conflict(f"the file is {f.state}; only interrupted ingests can be retried")
    jobs.enqueue(session, "archive.ingest", {"file_id": file_id}, dedup_key=f"ingest:{file_id}:{utcnow().timestamp()}")
    return f


# -- files produced on the hub (imports) -------------------------------------------------------
def seal_into_storage(keys: object, storage: Storage, project_id: uuid.UUID, file_id: str,
                      source_path: str) -> SealedBody:
    """``sealing.seal_file`` with the hub's current archive key."""
    fingerprint, keypair = keys.current  # type: ignore[attr-defined]
    return seal_file(fingerprint, keypair.public, storage, project_id, file_id, source_path)


def add_sealed_file(session: Session, project_id: uuid.UUID, uploader_id: uuid.UUID, path: str,
                    sealed: SealedBody, *, hold: str | None = None) -> ArchiveFile:
    """The archive row for a sealed body, READY at once (``hold``: born held, e.g. quarantined);
    counts against the project's quota."""
    quota.reserve(session, project_id, sealed.body_size)
    quota.settle(session, project_id, sealed.body_size, sealed.body_size)
    now = utcnow()
    f = ArchiveFile(id=sealed.file_id, project_id=project_id, uploader_id=uploader_id, path=path[:1024],
                    state=READY, upload_size=len(sealed.header) + sealed.body_size, header=sealed.header,
                    header_key=sealed.header_key, body_key=sealed.body_key, body_size=sealed.body_size,
                    body_sha256=sealed.body_sha256, plaintext_size=sealed.plaintext_size,
                    plaintext_sha256=sealed.plaintext_sha256, plaintext_md5=sealed.plaintext_md5,
                    ingested_at=now, hold=hold)
    session.add(f)
    return f


def delete_unpublished_file(session: Session, storage: Storage, file_id: str) -> None:
    """Remove a file no dataset version holds (e.g. a discarded quarantined import)."""
    f = session.get(ArchiveFile, file_id)
    if f is None:
        return
    if session.scalar(select(DatasetFile.file_id).where(DatasetFile.file_id == file_id).limit(1)):
        raise Conflict("the file is part of a dataset version and stays")
    if f.body_key:
        storage.delete(f.body_key)
    if f.state == READY and f.body_size:
        quota.free(session, f.project_id, f.body_size)
    session.delete(f)


def publish_version(session: Session, actor: Actor, dataset: Dataset, file_ids: list[str], *,
                    note: str) -> DatasetVersion:
    """A new released version: the latest version's files plus ``file_ids`` (used by imports, which
    publish what passed verification without a person in the loop)."""
    latest = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
                            .order_by(DatasetVersion.number.desc()).limit(1))
    if latest is not None and latest.state == "draft" and latest.file_count == 0:
        version = latest  # the empty first version a new dataset starts with
    else:
        version = DatasetVersion(dataset_id=dataset.id, number=(latest.number + 1) if latest else 1,
                                 state="draft", file_count=latest.file_count if latest else 0,
                                 total_bytes=latest.total_bytes if latest else 0)
        session.add(version)
        session.flush()
        if latest is not None:
            session.execute(insert(DatasetFile).from_select(
                ["version_id", "file_id"],
                select(func.cast(version.id, DatasetFile.version_id.type), DatasetFile.file_id)
                .where(DatasetFile.version_id == latest.id)))
    for start in range(0, len(file_ids), 2000):  # bounded IN lists
        _add_files(session, version, _ready_files(session, dataset.project_id, file_ids[start:start + 2000]))
    version.state, version.released_at, version.note = "released", utcnow(), note
    audit.record(session, actor, "archive.dataset.released", project_id=dataset.project_id,
                 target=f"dataset:{dataset.id}",
                 details={"version": version.number, "files": version.file_count, "added": len(file_ids)})
    return version
