"""Archive tables: hub keys, files (inbox → archive), upload parts, datasets, versions, shares, user keys.

A file's crypt4gh header lives here, in the database; the storage holds only the body, which never
changes after ingest (key rotation rewrites headers only).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..db import Base, CreatedMixin, IdMixin, utcnow

Big = BigInteger().with_variant(Integer, "sqlite")

# File states, in order. A failed file keeps its reason and can be retried.
RECEIVING, UPLOADED, INGESTED, VERIFIED, READY, FAILED = (
    "receiving", "uploaded", "ingested", "verified", "ready", "failed")
# A file's and a dataset version's state once retention (or the origin of a mirror) deleted it.
DELETED = "deleted"


class ArchiveKey(CreatedMixin, Base):
    """A hub key pair. Uploads are encrypted to the newest active key; every active key may open."""

    __tablename__ = "archive_keys"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    private_key_file: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(12), default="active")  # active | retired


class UserKey(IdMixin, CreatedMixin, Base):
    """A researcher's crypt4gh public key: downloads are re-encrypted to it."""

    __tablename__ = "user_keys"
    __table_args__ = (UniqueConstraint("user_id", "fingerprint", name="uq_user_keys_user_fp"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    fingerprint: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    revoked_at: Mapped[dt.datetime | None]


class ArchiveFile(CreatedMixin, Base):
    __tablename__ = "archive_files"
    __table_args__ = (Index("ix_archive_files_project_state", "project_id", "state"),
                      # a project's files in id order: the listing's keyset page is one range scan, however many
                      # other projects' rows the table holds (also serves every lookup by project alone)
                      Index("ix_archive_files_project_files", "project_id", "id"),
                      # a bundle's files by its inbox object (group ingest, a retried bundle); one file per offset
                      Index("ux_archive_files_inbox", "inbox_key", "inbox_offset", unique=True))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # stable accession, e.g. SRF-…
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"))
    uploader_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    path: Mapped[str] = mapped_column(String(1024))  # name as uploaded, for people
    state: Mapped[str] = mapped_column(String(12), default=RECEIVING)
    failure: Mapped[str | None] = mapped_column(Text)
    # upload
    upload_size: Mapped[int] = mapped_column(Big)  # declared size of the crypt4gh stream being sent
    reserved_bytes: Mapped[int] = mapped_column(Big, default=0)  # quota held while receiving/ingesting
    inbox_key: Mapped[str | None] = mapped_column(String(300))
    # Set for a file sent in a bundle: its stream is bytes [inbox_offset, inbox_offset + upload_size) of the
    # bundle object at inbox_key, shared with the bundle's other files. None: the object is the stream.
    inbox_offset: Mapped[int | None] = mapped_column(Big)
    multipart_id: Mapped[str | None] = mapped_column(String(300))
    declared_sha256: Mapped[str | None] = mapped_column(String(64))  # plaintext checksum the client computed
    # archive
    header: Mapped[bytes | None] = mapped_column(LargeBinary)
    header_key: Mapped[str | None] = mapped_column(ForeignKey("archive_keys.fingerprint"))
    body_key: Mapped[str | None] = mapped_column(String(300))
    body_size: Mapped[int | None] = mapped_column(Big)
    body_sha256: Mapped[str | None] = mapped_column(String(64))  # of the body bytes as received and stored
    plaintext_size: Mapped[int | None] = mapped_column(Big)
    plaintext_sha256: Mapped[str | None] = mapped_column(String(64))
    plaintext_md5: Mapped[str | None] = mapped_column(String(32))
    ingested_at: Mapped[dt.datetime | None]
    # Set by the capability that holds the file back (imaging: "quarantine"). A held file is never
    # downloaded, shared, granted or put in a version; see ``service.authorize_read``.
    hold: Mapped[str | None] = mapped_column(String(20))


class UploadPart(Base):
    __tablename__ = "upload_parts"

    file_id: Mapped[str] = mapped_column(ForeignKey("archive_files.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True)
    size: Mapped[int] = mapped_column(Big)
    sha256: Mapped[str] = mapped_column(String(64))
    etag: Mapped[str] = mapped_column(String(200))  # storage's part id; never used as a checksum


class Dataset(CreatedMixin, Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # stable accession, e.g. SRD-…
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))

    versions: Mapped[list[DatasetVersion]] = relationship(back_populates="dataset",
                                                          order_by="DatasetVersion.number")


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "number", name="uq_dataset_versions_number"),)

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    state: Mapped[str] = mapped_column(String(12), default="draft")  # draft | released | deprecated
    file_count: Mapped[int] = mapped_column(Big, default=0)
    total_bytes: Mapped[int] = mapped_column(Big, default=0)  # plaintext bytes
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    released_at: Mapped[dt.datetime | None]

    dataset: Mapped[Dataset] = relationship(back_populates="versions")


class DatasetFile(Base):
    """Membership of a file in a version. Primary key order makes listing a version a range scan."""

    __tablename__ = "dataset_files"

    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"),
                                            primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("archive_files.id"), primary_key=True, index=True)


class DatasetShare(Base):
    """A released dataset shared read-only into another project, by reference (no copy, no quota)."""

    __tablename__ = "dataset_shares"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True,
                                                  index=True)
    shared_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    shared_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
