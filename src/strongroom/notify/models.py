"""Notification tables: each user's delivery preference and the items held for their digest."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, utcnow

Big = BigInteger().with_variant(Integer, "sqlite")

IMMEDIATE, DAILY = "immediate", "daily"


class NotifyPreference(Base):
    """How a user wants handler e-mails: one per event (``immediate``, the default) or a ``daily`` digest."""

    __tablename__ = "notify_preferences"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16), default=IMMEDIATE)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DigestItem(Base):
    """An e-mail held back for a user's next digest; ``sent_at`` is set when the digest is queued."""

    __tablename__ = "notify_digest_items"
    __table_args__ = (Index("ix_notify_digest_items_pending", "sent_at", "user_id"),)

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    to: Mapped[str] = mapped_column(String(320))
    template: Mapped[str] = mapped_column(String(64))
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None]
