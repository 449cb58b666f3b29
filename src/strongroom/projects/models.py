"""Projects: the customer boundary. Members hold a role plus rights the PI delegated to them."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..db import Base, CreatedMixin, IdMixin, utcnow
from ..identity.models import User


class Role(Base):
    """A named bundle of rights. Built-in roles are seeded by the migration; more can be added."""

    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    rights: Mapped[list[str]] = mapped_column(JSON)
    builtin: Mapped[bool] = mapped_column(default=False)


class Project(IdMixin, CreatedMixin, Base):
    __tablename__ = "projects"

    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    project_class: Mapped[str] = mapped_column(String(24))  # project | fellowship | network-partner
    ethics_ref: Mapped[str] = mapped_column(String(120))
    pi_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    quota_bytes: Mapped[int] = mapped_column(BigInteger)
    # Archived bytes owned by the project, and bytes held for uploads in flight. Shared datasets
    # count for their owner only. Changed only by conditional UPDATEs (see archive.quota).
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reserved_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    end_date: Mapped[dt.date]
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | closed

    pi: Mapped[User] = relationship(foreign_keys=[pi_id], lazy="joined")
    memberships: Mapped[list[Membership]] = relationship(back_populates="project",
                                                         cascade="all, delete-orphan")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("project_id", "user_id", name="uq_memberships_project_user"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(ForeignKey("roles.name"))
    delegated_rights: Mapped[list[str]] = mapped_column(JSON, default=list)
    added_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    project: Mapped[Project] = relationship(back_populates="memberships")
    user: Mapped[User] = relationship(lazy="joined")


class ProjectSetting(Base):
    """A security setting that was opened. Absent rows mean the locked default applies."""

    __tablename__ = "project_settings"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"),
                                                  primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    changed_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    changed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


__all__ = ["Membership", "Project", "ProjectSetting", "Role"]
