"""GPU-weeks booked, as the fees capability meters them (hook ``strongroom.fees.meters:METERS``).

A statement asks for each day of a period; the project's bookings over the whole period are read once and
cut into days (UTC) here, so a year is one query, not 365."""

from __future__ import annotations

import datetime as dt
import uuid
from fractions import Fraction

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..fees.pricing import GPU_WEEK, Usage
from . import rules
from .models import ACTIVE, Booking

DAY = dt.timedelta(days=1)


def gpu_week_meter(session: Session, project_id: uuid.UUID, start: dt.date, end: dt.date) -> list[Usage]:
    """GPU-weeks the project held on each day of [start, end] (both included): bookings and drop-ins, a
    cancelled started booking up to its cancel time (``gpu_weeks_booked`` per day)."""
    since = dt.datetime.combine(start, dt.time(), dt.UTC)
    until = dt.datetime.combine(end, dt.time(), dt.UTC) + DAY
    bookings = list(session.scalars(select(Booking).where(
        Booking.project_id == project_id, Booking.state == ACTIVE, Booking.start_at < until, Booking.end_at > since)))
    out: list[Usage] = []
    day = start
    while day <= end and bookings:
        lo = dt.datetime.combine(day, dt.time(), dt.UTC)
        weeks = sum(rules.gpu_weeks(b.gpus, b.start_at, b.end_at, since=lo, until=lo + DAY) for b in bookings)
        if weeks:
            # hours are whole, so a day's GPU-weeks are a multiple of 1/168: exact as a fraction
            out.append(Usage(str(project_id), GPU_WEEK, day, Fraction(weeks).limit_denominator(168 * 7),
                             "GPU booking"))
        day += DAY
    return out
