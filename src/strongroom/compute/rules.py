"""The booking rules as pure functions (no web or database imports): `now` is always passed in, so a test
freezes the clock by passing a fixed instant. Times in and out are aware UTC datetimes; the 09:00 and
12:00 rules are applied in the hub's local time zone (Europe/Stockholm by default, summer time included).

The habits of the GPU sheet these rules keep:
- a booking starts as soon as possible: today if it is before 12:00 (now, or 09:00 if earlier), else
  tomorrow 09:00;
- it ends on a Monday at 09:00: the first Monday 09:00 after (weeks - 1) whole weeks from its start, so a
  K-week booking started mid-week has a short first week;
- a drop-in runs from now until 09:00 the next morning;
- a budget counts GPU-weeks still ahead: the part of a booking already past never counts.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

HOUR = dt.timedelta(hours=1)
HANDOVER = dt.time(9, 0)  # bookings start and end at 09:00 local
CUTOFF = dt.time(12, 0)  # a booking made before noon may start today

# Budget classes: GPU-weeks per period (the source documents' figures); custom carries its own number.
CLASSES: dict[str, float | None] = {"project": 32.0, "fellowship": 16.0, "network_partner": 8.0, "custom": None}


def class_budget(klass: str, custom: float | None = None) -> float:
    """The GPU-weeks a class grants; ``custom`` needs its number."""
    if klass not in CLASSES:
        raise ValueError(f"unknown budget class {klass!r}: one of {', '.join(CLASSES)}")
    fixed = CLASSES[klass]
    if fixed is not None:
        return fixed
    if custom is None or not math.isfinite(custom) or custom < 0:
        raise ValueError("a custom budget needs a number of GPU-weeks (0 or more)")
    return float(custom)


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return value.astimezone(dt.UTC)


def floor_hour(value: dt.datetime) -> dt.datetime:
    v = _utc(value)
    return v.replace(minute=0, second=0, microsecond=0)


def _at(day: dt.date, time: dt.time, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, time, tzinfo=tz).astimezone(dt.UTC)


def earliest_start(now: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """Today (before 12:00 local: from now, or 09:00 if that is later), else tomorrow 09:00."""
    local = _utc(now).astimezone(tz)
    if local.time() < CUTOFF:
        return max(_at(local.date(), HANDOVER, tz), floor_hour(now))
    return _at(local.date() + dt.timedelta(days=1), HANDOVER, tz)


def monday_end(start: dt.datetime, weeks: int, tz: ZoneInfo) -> dt.datetime:
    """The first Monday 09:00 local strictly after ``start`` + (weeks - 1) weeks."""
    if weeks < 1:
        raise ValueError("a booking lasts at least one week")
    local = (_utc(start) + dt.timedelta(weeks=weeks - 1)).astimezone(tz)
    day = local.date() + dt.timedelta(days=(7 - local.weekday()) % 7)  # this or the next Monday
    end = _at(day, HANDOVER, tz)
    if end <= _utc(start) + dt.timedelta(weeks=weeks - 1):
        end = _at(day + dt.timedelta(days=7), HANDOVER, tz)
    return end


def candidate_starts(now: dt.datetime, tz: ZoneInfo, horizon_weeks: int) -> Iterable[dt.datetime]:
    """The earliest start, then 09:00 local on each following day, up to the horizon."""
    first = earliest_start(now, tz)
    yield first
    day = first.astimezone(tz).date()
    for n in range(1, horizon_weeks * 7 + 1):
        yield _at(day + dt.timedelta(days=n), HANDOVER, tz)


def dropin_window(now: dt.datetime, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """A drop-in: from this hour until 09:00 local the next morning."""
    local = _utc(now).astimezone(tz)
    return floor_hour(now), _at(local.date() + dt.timedelta(days=1), HANDOVER, tz)


def hour_units(start: dt.datetime, end: dt.datetime) -> range:
    """The whole UTC hours [start, end) covers, numbered from the epoch: one slot row each per GPU."""
    first = int(floor_hour(start).timestamp()) // 3600
    last = math.ceil(_utc(end).timestamp() / 3600)
    return range(first, last)


def gpu_weeks(gpus: int, start: dt.datetime, end: dt.datetime, *, since: dt.datetime | None = None,
              until: dt.datetime | None = None) -> float:
    """GPU-weeks of ``gpus`` over [start, end) clipped to [since, until)."""
    lo = max(_utc(start), _utc(since)) if since else _utc(start)
    hi = min(_utc(end), _utc(until)) if until else _utc(end)
    if hi <= lo:
        return 0.0
    return gpus * (hi - lo) / dt.timedelta(weeks=1)


@dataclass(frozen=True)
class BudgetView:
    budget: float  # GPU-weeks per period
    used: float  # GPU-weeks booked from now on (past parts never count)
    past: float  # GPU-weeks already used this period (shown, never counted)

    @property
    def remaining(self) -> float:
        return self.budget - self.used

    @property
    def over(self) -> bool:
        return self.used > self.budget + 1e-9


def over_budget(view: BudgetView, extra: float) -> bool:
    """Would ``extra`` more GPU-weeks ahead exceed the budget?"""
    return view.used + extra > view.budget + 1e-9
