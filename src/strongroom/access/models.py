"""Access: forms and terms (versioned), per-dataset access policy and roles, event-sourced
applications, entitlements."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin, utcnow

Big = BigInteger().with_variant(Integer, "sqlite")


class FormVersion(CreatedMixin, Base):
    """An application form. Each edit is a new version; applications pin the version they used."""

    __tablename__ = "access_forms"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_access_forms_name_version"),)

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int]
    fields: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class TermsVersion(CreatedMixin, Base):
    __tablename__ = "access_terms"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_access_terms_name_version"),)

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int]
    text: Mapped[str] = mapped_column(Text)


class AccessPolicy(Base):
    """How access to one dataset is decided: which form and terms, which workflow."""

    __tablename__ = "access_policies"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    form_name: Mapped[str] = mapped_column(String(100))
    terms_name: Mapped[str] = mapped_column(String(100))
    workflow: Mapped[str] = mapped_column(String(16), default="handler")  # handler | quorum
    quorum: Mapped[int] = mapped_column(default=1)
    max_days: Mapped[int] = mapped_column(default=365)  # longest entitlement a decision may grant
    external_owner: Mapped[str | None] = mapped_column(String(200))  # e.g. "SCAPIS" decides in its own process
    # Whether approved applicants may download to their own machines; otherwise in-platform use only.
    applicant_download: Mapped[bool] = mapped_column(default=False, server_default=false())


class DatasetRole(Base):
    """Who handles applications for a dataset: handler (decides), decider (votes), reviewer (comments)."""

    __tablename__ = "access_dataset_roles"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True,
                                               index=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)


class Application(CreatedMixin, Base):
    """The projection of an application's events (rebuilt from them; cached for queries)."""

    __tablename__ = "access_applications"
    __table_args__ = (Index("ix_access_applications_dataset_state", "dataset_id", "state"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # SRA-…
    applicant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="draft")
    renewal_of: Mapped[str | None] = mapped_column(ForeignKey("access_applications.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApplicationEvent(Base):
    """The source of truth: typed, ordered, append-only."""

    __tablename__ = "access_application_events"
    __table_args__ = (UniqueConstraint("application_id", "seq", name="uq_access_events_app_seq"),)

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    application_id: Mapped[str] = mapped_column(ForeignKey("access_applications.id", ondelete="CASCADE"),
                                                index=True)
    seq: Mapped[int]
    type: Mapped[str] = mapped_column(String(40))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Entitlement(IdMixin, CreatedMixin, Base):
    """A user's time-limited right to a dataset (one version or all)."""

    __tablename__ = "access_entitlements"
    __table_args__ = (Index("ix_access_entitlements_user_dataset", "user_id", "dataset_id"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int | None]  # None: every released version
    application_id: Mapped[str | None] = mapped_column(ForeignKey("access_applications.id"))
    starts_at: Mapped[dt.datetime]
    ends_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    reminded_at: Mapped[dt.datetime | None]
    ended_notified_at: Mapped[dt.datetime | None]

    def active(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and self.starts_at <= now < self.ends_at


class Attachment(CreatedMixin, Base):
    """A document attached to an application (e.g. the ethics approval), kept in the database."""

    __tablename__ = "access_attachments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    application_id: Mapped[str] = mapped_column(ForeignKey("access_applications.id", ondelete="CASCADE"),
                                                index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))


class VisaRevocation(Base):
    """A visa this hub issued and then revoked by its ``jti`` (e.g. a leaked token), kept only until the
    visa would have expired anyway: the list stays short. Visas also end with their entitlement, which
    is checked on every use, so revoking an entitlement needs no entry here."""

    __tablename__ = "access_visa_revocations"

    jti: Mapped[str] = mapped_column(String(100), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    revoked_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reason: Mapped[str] = mapped_column(Text, default="")
