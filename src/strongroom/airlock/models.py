"""Airlock tables: requests, their files (with check results and what was delivered), reviews and the
recipients' outbox. No plaintext is ever stored here: check results name kinds and counts, never values."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin, utcnow

Big = BigInteger().with_variant(Integer, "sqlite")

# States, in order. Terminal: done, rejected, failed, expired.
SUBMITTED, CHECKING, IN_REVIEW, APPROVED, TRANSFERRING, DONE, REJECTED, FAILED, EXPIRED = (
    "submitted", "checking", "in_review", "approved", "transferring", "done", "rejected", "failed", "expired")
OPEN_STATES = (SUBMITTED, CHECKING, IN_REVIEW)  # undecided: these expire (done, rejected, failed, expired: final)


class AirlockRequest(CreatedMixin, Base):
    __tablename__ = "airlock_requests"
    __table_args__ = (Index("ix_airlock_requests_project_state", "project_id", "state"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # SRX-… accession
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # export | import
    requester_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    purpose: Mapped[str] = mapped_column(Text)
    destination: Mapped[dict[str, Any] | None]  # the allow-list entry as it was chosen (export only)
    dataset_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    state: Mapped[str] = mapped_column(String(16), default=SUBMITTED)
    approvals_needed: Mapped[int] = mapped_column(Integer, default=2)
    checks_passed: Mapped[bool | None]  # None until the checks ran
    override_reason: Mapped[str | None] = mapped_column(Text)  # the PI let a failed check through
    override_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str | None] = mapped_column(Text)  # why rejected / failed / expired
    receipt: Mapped[dict[str, Any] | None]  # per file: SHA-256 of what was delivered, verified after delivery
    expires_at: Mapped[dt.datetime]
    content_removed_at: Mapped[dt.datetime | None]  # the sweep deleted its staged or outbox bodies
    short_of_reviewers_at: Mapped[dt.datetime | None]  # open, but too few eligible reviewers left (PI told)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AirlockFile(Base):
    __tablename__ = "airlock_files"

    request_id: Mapped[str] = mapped_column(ForeignKey("airlock_requests.id", ondelete="CASCADE"), primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("archive_files.id"), primary_key=True, index=True)
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(Big)  # plaintext bytes, from the archive's record
    sha256: Mapped[str] = mapped_column(String(64))  # plaintext SHA-256, from the archive's record
    check_state: Mapped[str] = mapped_column(String(8), default="pending")  # pending | passed | failed
    checks: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)  # [{name, passed, detail}]
    content_type: Mapped[str | None] = mapped_column(String(40))  # what the bytes are (sniffed)
    delivered_id: Mapped[str | None] = mapped_column(String(64))  # the copy's file id / outbox id
    removed_at: Mapped[dt.datetime | None]  # a staged import's body marked for deletion by the sweep


class AirlockReview(CreatedMixin, Base):
    __tablename__ = "airlock_reviews"
    __table_args__ = (UniqueConstraint("request_id", "reviewer_id", name="uq_airlock_reviews_reviewer"),)

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("airlock_requests.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(8))  # approve | reject
    reason: Mapped[str] = mapped_column(Text, default="")


class OutboxItem(IdMixin, CreatedMixin, Base):
    """A file re-encrypted to a recipient's key (header only; the body is a copy of the archived body),
    downloadable once by that recipient."""

    __tablename__ = "airlock_outbox"

    request_id: Mapped[str] = mapped_column(ForeignKey("airlock_requests.id", ondelete="CASCADE"), index=True)
    recipient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    source_file_id: Mapped[str] = mapped_column(ForeignKey("archive_files.id"))
    path: Mapped[str] = mapped_column(String(1024))
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    header: Mapped[bytes] = mapped_column(LargeBinary)
    body_key: Mapped[str | None] = mapped_column(String(300))  # None: the sweep deleted the body
    body_size: Mapped[int] = mapped_column(Big)
    plaintext_sha256: Mapped[str] = mapped_column(String(64))
    stream_sha256: Mapped[str] = mapped_column(String(64))  # of header + body, exactly as it will be sent
    downloaded_at: Mapped[dt.datetime | None]
    removed_at: Mapped[dt.datetime | None]  # marked for deletion by the sweep: no longer downloadable
