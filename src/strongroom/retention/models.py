"""Retention tables: the last-use clocks (per dataset version and per project), a dataset's retention class,
and deletions with their two-person approval, progress and signed certificate.

A version's ``keep_until`` is stored (recomputed whenever its last use, extension or class changes) so the
review queue is one indexed range query.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin

Big = BigInteger().with_variant(Integer, "sqlite")

# Deletion states, in order; each step is idempotent and a crashed run resumes at the state it reached.
REQUESTED, APPROVED, MARKED, SHREDDED, PURGED, VERIFIED, CERTIFIED = (
    "requested", "approved", "marked", "shredded", "purged", "verified", "certified")


class ClockCursor(Base):
    """How far the clock has read the audit log (one row)."""

    __tablename__ = "retention_cursor"

    id: Mapped[int] = mapped_column(primary_key=True)
    audit_seq: Mapped[int] = mapped_column(Big, default=0)


class DatasetClass(Base):
    """A dataset's retention class (``[retention] years`` names the classes); absent: the default class."""

    __tablename__ = "retention_datasets"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    dataset_class: Mapped[str] = mapped_column(String(40))
    changed_at: Mapped[dt.datetime]
    changed_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class VersionClock(Base):
    """One dataset version's last use, keep-until date, extension, legal hold and notices sent."""

    __tablename__ = "retention_versions"

    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    last_used_at: Mapped[dt.datetime]
    last_use: Mapped[str] = mapped_column(String(40))  # download | in-platform read | application | release | …
    keep_until: Mapped[dt.datetime] = mapped_column(index=True)
    extended_until: Mapped[dt.datetime | None]
    extension_reason: Mapped[str] = mapped_column(Text, default="")
    hold_reason: Mapped[str | None] = mapped_column(Text)  # set: a legal hold; nothing under it is deleted
    hold_at: Mapped[dt.datetime | None]
    hold_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    notified_months: Mapped[int | None]  # the nearest notice threshold already sent for this keep-until date


class ProjectClock(Base):
    """A project's last use (any use of any of its data)."""

    __tablename__ = "retention_projects"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    last_used_at: Mapped[dt.datetime]
    last_use: Mapped[str] = mapped_column(String(40))


class Deletion(IdMixin, CreatedMixin, Base):
    """The deletion of one dataset version: requested by one person, approved by another, then carried out
    step by step (``STEPS``) by the ``retention.delete`` job, ending in a signed certificate."""

    __tablename__ = "retention_deletions"

    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), unique=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    number: Mapped[int]
    state: Mapped[str] = mapped_column(String(12), default=REQUESTED, index=True)
    reason: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    approved_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    approved_at: Mapped[dt.datetime | None]
    # captured when marked: every file deleted with the version (id, path, checksums, storage key)
    manifest: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    kept: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # files still in another version
    # what went with those files (marked): outbox copies {item, request, file, object}, DICOMweb index rows,
    # catalogue sample images; None on a deletion marked before this was recorded
    derived: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    audit_seqs: Mapped[dict[str, Any]] = mapped_column(default=dict)  # step → audit sequence number
    certificate: Mapped[str | None] = mapped_column(Text)  # the signed certificate (JSON text)
    finished_at: Mapped[dt.datetime | None]
    failure: Mapped[str | None] = mapped_column(Text)


__all__ = ["ClockCursor", "DatasetClass", "Deletion", "ProjectClock", "VersionClock"]
