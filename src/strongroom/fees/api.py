"""Fees API: a project's statement (its PI and the operators) and a customer's (operators) as JSON."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from fastapi import APIRouter
from pydantic import Field

from ..deps import Admin, Db, ProjectsRead
from ..errors import Invalid
from ..schemas import Out
from . import pricing, service

router = APIRouter(prefix="/api/v1", tags=["fees"])


class LineOut(Out):
    project: str
    kind: str = Field(description="charge | waiver | discount")
    item: str
    description: str
    start: str
    end: str
    quantity: Decimal
    unit: str
    unit_price: Decimal = Field(description="SEK per unit (per unit and year for yearly items)")
    basis: str
    amount: Decimal = Field(description="SEK, rounded to öre")


class StatementOut(Out):
    subject: str
    name: str
    period_start: str
    period_end: str
    currency: str = "SEK"
    lines: list[LineOut]
    subtotal: Decimal
    reductions: Decimal
    total: Decimal


def _out(subject: service.Subject, st: pricing.Statement) -> StatementOut:
    return StatementOut(subject=subject.label, name=subject.name, period_start=st.start.isoformat(),
                        period_end=st.end.isoformat(), subtotal=st.subtotal, reductions=st.reductions, total=st.total,
                        lines=[LineOut(**{**x.as_dict(), "quantity": x.quantity, "unit_price": x.unit_price,
                                          "amount": x.amount}) for x in st.lines])


def _period(text: str) -> tuple[dt.date, dt.date]:
    try:
        return pricing.period(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


@router.get("/projects/{slug}/fees/statement", response_model=StatementOut,
            summary="A project's statement for a year or month (its PI and the operators), computed now")
def project_statement(db: Db, principal: ProjectsRead, slug: str, period: str) -> StatementOut:
    subject = service.project_subject(db, principal, slug)
    start, end = _period(period)
    return _out(subject, service.compute(db, subject, start, end))


@router.get("/fees/customers/{customer_id}/statement", response_model=StatementOut,
            summary="A customer organisation's statement (operators)")
def customer_statement(db: Db, principal: Admin, customer_id: uuid.UUID, period: str) -> StatementOut:
    subject = service.customer_subject(db, principal, str(customer_id))
    start, end = _period(period)
    return _out(subject, service.compute(db, subject, start, end))
