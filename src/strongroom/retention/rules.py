"""The retention rules, pure (no database, no web): keep-until dates, notice thresholds, and the canonical
form of a deletion certificate that its signature covers."""

from __future__ import annotations

import calendar
import datetime as dt
import json
from collections.abc import Iterable
from typing import Any


def add_years(when: dt.datetime, years: int) -> dt.datetime:
    """``when`` plus whole years; 29 February becomes 28 February in a year without it."""
    try:
        return when.replace(year=when.year + years)
    except ValueError:
        return when.replace(year=when.year + years, day=28)


def add_months(when: dt.datetime, months: int) -> dt.datetime:
    """``when`` plus (or minus) whole months, the day clamped to the month's end."""
    year, month = divmod(when.year * 12 + when.month - 1 + months, 12)
    return when.replace(year=year, month=month + 1, day=min(when.day, calendar.monthrange(year, month + 1)[1]))


def keep_until(last_used_at: dt.datetime, years: int, extended_until: dt.datetime | None) -> dt.datetime:
    """Keep at least ``years`` after the last use, and at least until an owner's extension."""
    kept = add_years(last_used_at, years)
    return max(kept, extended_until) if extended_until is not None else kept


def due_notice(keep: dt.datetime, now: dt.datetime, thresholds: Iterable[int], sent: int | None) -> int | None:
    """The notice to send now: the nearest threshold (months before ``keep``) that has been reached and is
    nearer than the one already sent (``sent``); None when there is nothing new to say."""
    reached = [m for m in thresholds if add_months(keep, -m) <= now]
    if not reached:
        return None
    nearest = min(reached)
    return nearest if sent is None or nearest < sent else None


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes a certificate's signature covers: sorted keys, no spaces, UTF-8 (RFC 8785 for this shape:
    strings, integers and nested objects and lists only)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
