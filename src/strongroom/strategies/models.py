"""A project's pseudonymization strategy, one row per saved version (never edited in place)."""

from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin


class StrategyVersion(IdMixin, CreatedMixin, Base):
    __tablename__ = "strategy_versions"
    __table_args__ = (UniqueConstraint("project_id", "version", name="uq_strategy_versions_project_version"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per project, in the order saved
    name: Mapped[str] = mapped_column(String(120))
    text: Mapped[str] = mapped_column(Text)  # the TOML as written: what the steward reviewed is what runs
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    comment: Mapped[str] = mapped_column(String(500), default="")
