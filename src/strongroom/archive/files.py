"""Archived files: listing, metadata, download headers, and files sealed on the hub itself (imports)."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from functools import partial
from typing import cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from ..db import after_commit, utcnow
from ..errors import Conflict, NotFound
from ..hub import Hub
from ..identity.principal import Principal
from ..projects import quota
from ..projects import service as projects
from . import c4gh
from .authz import HOLD_RULES, authorize_read
from .keys import hub_keys
from .models import (
    DELETED,
    READY,
    ArchiveFile,
    DatasetFile,
)
from .sealing import SealedBody, seal_file
from .storage.base import Storage


def list_files(session: Session, access: projects.ProjectAccess, *, state: str | None = None,
               after: str | None = None, limit: int = 100) -> list[ArchiveFile]:
    """The project's files; held ones only for members with the hold's review right; never the ones retention
    deleted (their rows stay for the deletion's certificate and audit, named by their accession)."""
    stmt = (select(ArchiveFile).where(ArchiveFile.project_id == access.project.id, ArchiveFile.state != DELETED)
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


def seal_into_storage(keys: object, storage: Storage, project_id: uuid.UUID, file_id: str,
                      source_path: str) -> SealedBody:
    """``sealing.seal_file`` with the hub's current archive key."""
    fingerprint, keypair = keys.current  # type: ignore[attr-defined]
    return seal_file(fingerprint, keypair.public, storage, project_id, file_id, source_path)


def add_sealed_file(session: Session, project_id: uuid.UUID, uploader_id: uuid.UUID, path: str,
                    sealed: SealedBody, *, hold: str | None = None) -> ArchiveFile:
    """The archive row for a sealed body, READY at once (``hold``: born held, e.g. quarantined);
    counts against the project's quota."""
    return add_sealed_files(session, project_id, uploader_id, [(path, sealed, hold)])[0]


def add_sealed_files(session: Session, project_id: uuid.UUID, uploader_id: uuid.UUID,
                     files: list[tuple[str, SealedBody, str | None]]) -> list[ArchiveFile]:
    """``add_sealed_file`` for many bodies (path, sealed body, hold): the quota moves once for all of them,
    so the rows are inserted together at the flush instead of one flush per file before each quota
    statement."""
    total = sum(sealed.body_size for _, sealed, _ in files)
    quota.reserve(session, project_id, total)
    quota.settle(session, project_id, total, total)
    now = utcnow()
    rows = [ArchiveFile(id=sealed.file_id, project_id=project_id, uploader_id=uploader_id, path=path[:1024],
                        state=READY, upload_size=len(sealed.header) + sealed.body_size, header=sealed.header,
                        header_key=sealed.header_key, body_key=sealed.body_key, body_size=sealed.body_size,
                        body_sha256=sealed.body_sha256, plaintext_size=sealed.plaintext_size,
                        plaintext_sha256=sealed.plaintext_sha256, plaintext_md5=sealed.plaintext_md5,
                        ingested_at=now, hold=hold)
            for path, sealed, hold in files]
    session.add_all(rows)
    return rows


def insert_sealed_files(session: Session, project_id: uuid.UUID, uploader_id: uuid.UUID,
                        files: list[tuple[str, SealedBody, str | None]]) -> None:
    """``add_sealed_files`` without an ORM object per file: one multi-row INSERT at once (the DICOM
    destination's archiver, whose group commits only need the rows, named by their file ids)."""
    if not files:
        return
    total = sum(sealed.body_size for _, sealed, _ in files)
    quota.reserve(session, project_id, total)
    quota.settle(session, project_id, total, total)
    now = utcnow()
    session.execute(insert(cast(Table, ArchiveFile.__table__)), [
        {"id": sealed.file_id, "project_id": project_id, "uploader_id": uploader_id, "path": path[:1024],
         "state": READY, "upload_size": len(sealed.header) + sealed.body_size, "header": sealed.header,
         "header_key": sealed.header_key, "body_key": sealed.body_key, "body_size": sealed.body_size,
         "body_sha256": sealed.body_sha256, "plaintext_size": sealed.plaintext_size,
         "plaintext_sha256": sealed.plaintext_sha256, "plaintext_md5": sealed.plaintext_md5, "ingested_at": now,
         "hold": hold, "created_at": now}
        for path, sealed, hold in files])


def delete_unpublished_file(session: Session, storage: Storage, file_id: str) -> None:
    """Remove a file no dataset version holds (e.g. a discarded quarantined import). Its body goes once the row's
    deletion has committed: a transaction that rolls back leaves row and body as they were."""
    f = session.get(ArchiveFile, file_id)
    if f is None:
        return
    if session.scalar(select(DatasetFile.file_id).where(DatasetFile.file_id == file_id).limit(1)):
        raise Conflict("the file is part of a dataset version and stays")
    if f.body_key:
        after_commit(session, partial(storage.delete, f.body_key))
    if f.state == READY and f.body_size:
        quota.free(session, f.project_id, f.body_size)
    session.delete(f)
