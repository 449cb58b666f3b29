"""The audit log: one append-only, hash-chained table plus a one-row head that pins its end."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base


class AuditEvent(Base):
    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)
    at: Mapped[dt.datetime]
    action: Mapped[str] = mapped_column(String(80), index=True)
    outcome: Mapped[str] = mapped_column(String(16))  # ok | denied | failed
    actor_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(255))  # label at the time: survives user renames/deletes
    subject_user_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    project_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    target: Mapped[str | None] = mapped_column(String(255))
    ip: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's last link. Locked for update by every writer, so appends are strictly ordered,
    and compared by ``audit verify`` so deleting the newest events is detected too."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(Text)
    # The hub secret (hubsecret.secret_id) the next event must be keyed by: set by the first write, moved by
    # a rotation. A process holding another secret is refused (audit.service._writer_key).
    key_id: Mapped[str | None] = mapped_column(String(16))


class Auditor(Base):
    """A platform-level auditor (e.g. the data protection officer): may read every project's audit
    events. Granted and revoked by an operator, and each grant, revocation and read is itself audited."""

    __tablename__ = "audit_auditors"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    granted_at: Mapped[dt.datetime]
    granted_by: Mapped[str] = mapped_column(String(255))
