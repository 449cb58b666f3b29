"""Compute tables: each project's GPU budget, its bookings, and the slot rows that make double booking
impossible (one row per machine, GPU and hour, unique: the second of two racing inserts fails)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, utcnow

Big = BigInteger().with_variant(Integer, "sqlite")

BOOKING, DROPIN = "booking", "dropin"
ACTIVE, CANCELLED = "active", "cancelled"  # a started booking that is cancelled stays active, cut to then
# What the scheduler holds for a booking: the drift check moves these.
NOT_CONFIGURED, PENDING, RESERVED, FAILED, REMOVED = "not configured", "pending", "reserved", "failed", "removed"


class ComputeBudget(Base):
    """A project's budget class and GPU-weeks per period (set by an operator, audited)."""

    __tablename__ = "compute_budgets"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    klass: Mapped[str] = mapped_column(String(20))  # project | fellowship | network_partner | custom
    gpu_weeks: Mapped[float] = mapped_column(Float)
    period_start: Mapped[dt.date]
    period_end: Mapped[dt.date]  # exclusive
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Booking(CreatedMixin, Base):
    __tablename__ = "compute_bookings"
    __table_args__ = (Index("ix_compute_bookings_machine_end", "machine", "end_at"),)

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    machine: Mapped[str] = mapped_column(String(64))
    gpus: Mapped[int] = mapped_column(Integer)
    gpu_indices: Mapped[str] = mapped_column(String(200))  # "0,1,2,3": which GPUs the slots hold
    kind: Mapped[str] = mapped_column(String(8), default=BOOKING)  # booking | dropin
    start_at: Mapped[dt.datetime]
    end_at: Mapped[dt.datetime]  # cut to the cancel time when a started booking is cancelled
    booked_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    state: Mapped[str] = mapped_column(String(10), default=ACTIVE)
    over_budget: Mapped[bool] = mapped_column(default=False)  # beyond the budget when booked: shown red
    note: Mapped[str] = mapped_column(Text, default="")
    reservation_state: Mapped[str] = mapped_column(String(16), default=NOT_CONFIGURED)
    reservation_detail: Mapped[str] = mapped_column(Text, default="")  # the scheduler's last word
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    @property
    def reservation_name(self) -> str:
        return f"sr-{self.id}"


class GpuSlot(Base):
    """One GPU of one machine for one hour (hours since the epoch, UTC), held by one booking."""

    __tablename__ = "compute_gpu_slots"
    __table_args__ = (UniqueConstraint("machine", "gpu", "hour", name="uq_compute_gpu_slots"),)

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    machine: Mapped[str] = mapped_column(String(64))
    gpu: Mapped[int] = mapped_column(Integer)
    hour: Mapped[int] = mapped_column(Integer)
    booking_id: Mapped[int] = mapped_column(ForeignKey("compute_bookings.id", ondelete="CASCADE"), index=True)
