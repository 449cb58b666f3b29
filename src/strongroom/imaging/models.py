"""Imaging tables: a project's pseudonymization key and import dataset, the pseudonym key store,
import batches and the instances they brought (archived, quarantined, published).

The key store rows hold original identifiers sealed with a key that lives outside the database
(see ``keystore.py``); nothing else here holds an original value.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from ..archive.models import Big
from ..db import Base, CreatedMixin, utcnow

# Instance states. Archived instances wait for the next published version; quarantined ones for review.
ARCHIVED, QUARANTINED, PUBLISHED, DISCARDED = "archived", "quarantined", "published", "discarded"


class ImagingProject(CreatedMixin, Base):
    """Per project: the sealed pseudonymization secret and the dataset imports are published into."""

    __tablename__ = "imaging_projects"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"),
                                                  primary_key=True)
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)  # AES-GCM under the key-store key
    key_fingerprint: Mapped[str] = mapped_column(String(32))  # identifies the secret, reveals nothing
    # how patient IDs are keyed (deid.pseudonyms: 1 as received, 2 canonical); a row written without it is 1
    pseudonym_scheme: Mapped[int] = mapped_column(server_default=text("1"))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))


class PseudonymEntry(CreatedMixin, Base):
    """One pseudonym → its original, sealed. Looked up only by re-identification (audited)."""

    __tablename__ = "imaging_pseudonyms"
    __table_args__ = (UniqueConstraint("project_id", "kind", "pseudonym", name="uq_imaging_pseudonyms"),)

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40))  # PatientID | StudyInstanceUID | SOPInstanceUID
    pseudonym: Mapped[str] = mapped_column(String(128))
    sealed_original: Mapped[bytes] = mapped_column(LargeBinary)


class ActionLog(Base):
    """A de-identification action log, stored once per distinct content: instances of one series or
    scanner share the same log, so millions of instances need few rows."""

    __tablename__ = "imaging_action_logs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    entries: Mapped[bytes] = mapped_column(LargeBinary)  # zlib-compressed JSON [[path, keyword, rule, action]]


class ImportBatch(CreatedMixin, Base):
    """One association from a sender, or one bulk import run."""

    __tablename__ = "imaging_batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # SRI-…
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    source: Mapped[str] = mapped_column(String(12))  # dicom | bulk | stow (DICOMweb STOW-RS)
    origin: Mapped[str] = mapped_column(String(300))  # "CT_SCANNER_1 from 10.0.0.5", or the import path
    state: Mapped[str] = mapped_column(String(12), default="open")  # open | closed
    received: Mapped[int] = mapped_column(Big, default=0)
    archived: Mapped[int] = mapped_column(Big, default=0)
    quarantined: Mapped[int] = mapped_column(Big, default=0)
    rejected: Mapped[int] = mapped_column(Big, default=0)
    duplicates: Mapped[int] = mapped_column(Big, default=0)
    bytes_received: Mapped[int] = mapped_column(Big, default=0)
    reasons: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)  # reason → how many
    closed_at: Mapped[dt.datetime | None]


class ImportedInstance(Base):
    """A de-identified instance in the archive. Every identifier here is a pseudonym."""

    __tablename__ = "imaging_instances"
    __table_args__ = (
        UniqueConstraint("project_id", "sop_instance_uid", name="uq_imaging_instances_sop"),
        Index("ix_imaging_instances_state", "project_id", "state"),
        # DICOMweb (QIDO-RS): every query is per project; these keep matching and paging index scans
        Index("ix_imaging_instances_study", "project_id", "study_uid"),
        Index("ix_imaging_instances_series", "project_id", "series_uid"),
        Index("ix_imaging_instances_date", "project_id", "study_date"),
        Index("ix_imaging_instances_patient", "project_id", "patient_pseudonym"),
        Index("ix_imaging_instances_accession", "project_id", "accession_number"),
        Index("ix_imaging_instances_index_version", "index_version", "id"),  # the back-fill's resumable scan
    )

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"))
    batch_id: Mapped[str] = mapped_column(ForeignKey("imaging_batches.id"), index=True)
    # indexed: the metrics join a version's files to their instances (stats.service)
    file_id: Mapped[str | None] = mapped_column(ForeignKey("archive_files.id"), index=True)
    state: Mapped[str] = mapped_column(String(12))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    series_uid: Mapped[str] = mapped_column(String(64), default="")
    patient_pseudonym: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    manufacturer: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")  # as written in the output (shifted)
    size: Mapped[int] = mapped_column(Big, default=0)  # de-identified bytes
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)  # why it was quarantined
    action_count: Mapped[int] = mapped_column(default=0)
    action_log_sha256: Mapped[str | None] = mapped_column(ForeignKey("imaging_action_logs.sha256"))
    published_version: Mapped[int | None]
    reviewed_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    reviewed_at: Mapped[dt.datetime | None]
    review_note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # The DICOMweb index (``dicomindex.py``), after de-identification: what QIDO-RS matches and returns
    # without decrypting anything, and where the pixel data and frames sit in the plaintext.
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    patient_name: Mapped[str] = mapped_column(String(64), default="")  # the pseudonym written in the output
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[int | None]
    instance_number: Mapped[int | None]
    rows: Mapped[int | None]
    columns: Mapped[int | None]
    number_of_frames: Mapped[int] = mapped_column(default=0)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    pixel_offset: Mapped[int | None] = mapped_column(Big)  # the Pixel Data tag: the header is [0, pixel_offset)
    frames: Mapped[list[list[int]]] = mapped_column(JSON, default=list)  # [[frame, offset, length], ...]
    index_version: Mapped[int] = mapped_column(default=0)  # 0: not indexed yet (the back-fill's work)
