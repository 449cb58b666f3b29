"""Fees: customers (the organisations projects bill to), price list versions, subscriptions, storage measured
per day, waivers and discounts, and issued (frozen) statements."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin

Big = BigInteger().with_variant(Integer, "sqlite")
Money = Numeric(14, 2)


class Customer(IdMixin, CreatedMixin, Base):
    """An organisation that pays for projects (a university department, a region, a company)."""

    __tablename__ = "fee_customers"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    org_number: Mapped[str] = mapped_column(String(40), default="")  # organisationsnummer
    invoice_ref: Mapped[str] = mapped_column(String(120), default="")  # the buyer's reference on invoices


class ProjectCustomer(Base):
    """Which customer a project bills to (one; absent = not billed yet)."""

    __tablename__ = "fee_project_customers"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("fee_customers.id"), index=True)


class PriceListVersion(CreatedMixin, Base):
    """A published price list: its items (amounts as strings, öre) apply from ``effective_from``."""

    __tablename__ = "fee_price_lists"

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    effective_from: Mapped[dt.date] = mapped_column(unique=True)
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    note: Mapped[str] = mapped_column(String(300), default="")
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))


class Subscription(IdMixin, CreatedMixin, Base):
    __tablename__ = "fee_subscriptions"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    item: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[Decimal] = mapped_column(Numeric(12, 3))
    start: Mapped[dt.date]
    end: Mapped[dt.date | None]  # last day charged
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))


class StorageDay(Base):
    """Bytes a project held in the archive on a day, per storage class (the daily ``fees.snapshot``)."""

    __tablename__ = "fee_storage_days"

    day: Mapped[dt.date] = mapped_column(primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True,
                                                  index=True)
    storage_class: Mapped[str] = mapped_column(String(40), primary_key=True)
    bytes: Mapped[int] = mapped_column(Big)


class Waiver(IdMixin, CreatedMixin, Base):
    """A waiver or discount: requested by one operator, in force once another approves it."""

    __tablename__ = "fee_waivers"

    kind: Mapped[str] = mapped_column(String(12))  # waiver | discount
    category: Mapped[str] = mapped_column(String(40))  # co-funding | data-sharing | other
    reason: Mapped[str] = mapped_column(Text)
    percent: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))
    amount: Mapped[Decimal | None] = mapped_column(Money)
    project_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    customer_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("fee_customers.id"), index=True)
    item: Mapped[str | None] = mapped_column(String(40))  # None: every item
    valid_from: Mapped[dt.date]
    valid_to: Mapped[dt.date]
    state: Mapped[str] = mapped_column(String(12), default="requested")  # requested | approved | rejected
    requested_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    decided_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[dt.datetime | None]
    decision_note: Mapped[str] = mapped_column(Text, default="")


class IssuedStatement(IdMixin, CreatedMixin, Base):
    """A frozen statement (or credit note): its lines as issued and their checksum. Never edited: a
    correction issues a credit note for the old version and a new version."""

    __tablename__ = "fee_statements"
    __table_args__ = (UniqueConstraint("subject", "period_start", "period_end", "version", "kind",
                                       name="uq_fee_statements_version"),)

    number: Mapped[str] = mapped_column(String(60), unique=True)  # e.g. ST-chest-2025-v1, CN-chest-2025-v1
    kind: Mapped[str] = mapped_column(String(12))  # statement | credit-note
    subject: Mapped[str] = mapped_column(String(80))  # project:<uuid> | customer:<uuid>
    period_start: Mapped[dt.date]
    period_end: Mapped[dt.date]
    version: Mapped[int]
    credits_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("fee_statements.id"))
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    meta: Mapped[dict[str, str]] = mapped_column(JSON)
    total: Mapped[Decimal] = mapped_column(Money)
    checksum: Mapped[str] = mapped_column(String(64))
    issued_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))


__all__ = ["Customer", "IssuedStatement", "PriceListVersion", "ProjectCustomer", "StorageDay", "Subscription",
           "Waiver"]
