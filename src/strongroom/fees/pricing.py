"""The fee engine (pure: no database, no web). Price lists, charges, waivers → statement lines and totals.

Everything is computed day by day in exact fractions and rounded to öre once per line (half up), so a total
is the sum of its printed lines and a statement can be recomputed by hand:

- an item priced **per year** (membership, storage per TB, CPUs, GPUs) costs ``quantity × price / days in
  that calendar year`` per day it runs (pro-rated by day; 365 or 366);
- an item priced **per unit** (a GPU-week booked) costs ``quantity × price`` on the day it is used;
- a waiver or discount takes a percentage of each in-scope day's amount, or a fixed sum spread evenly over
  its validity days; waivers apply in order on what is left, so nothing goes below zero.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from functools import lru_cache

ORE = Decimal("0.01")
PER_YEAR = "year"
PER_UNIT = "unit"
TB = 1000**4  # decimal terabytes, as the storage is sold


def money(value: Fraction | Decimal | int) -> Decimal:
    """Round to öre, half up (the finance office's rounding)."""
    if isinstance(value, Fraction):
        return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(ORE, rounding=ROUND_HALF_UP)
    return Decimal(value).quantize(ORE, rounding=ROUND_HALF_UP)


def days_in_year(day: dt.date) -> int:
    return 366 if calendar.isleap(day.year) else 365


def days(start: dt.date, end: dt.date) -> Iterable[dt.date]:
    """Every day of [start, end] (both included)."""
    for n in range((end - start).days + 1):
        yield start + dt.timedelta(days=n)


@dataclass(frozen=True)
class Item:
    code: str
    name: str
    unit: str  # what one of quantity is: "membership", "TB", "CPU", "GPU", "GPU-week"
    per: str  # PER_YEAR (pro-rated by day) | PER_UNIT
    price: Decimal  # SEK per unit (per year when per == PER_YEAR)
    included_tb: Decimal = Decimal(0)  # project storage included while this item runs (membership)
    metered: bool = False  # measured (storage, GPU-weeks), not subscribed


@dataclass(frozen=True)
class PriceList:
    version: int
    effective_from: dt.date
    items: dict[str, Item]
    note: str = ""


MEMBERSHIP = "membership"
PROJECT_STORAGE = "project-storage"
GPU_WEEK = "gpu-week"

# The source documents' price list (tentative figures, SEK, excluding VAT). A GPU-week is the yearly GPU price
# over 52 weeks, rounded to öre on the list (1 538.46) so that quantity × unit price is what is charged.
SEED = PriceList(version=1, effective_from=dt.date(2025, 1, 1), note="source documents (tentative)", items={
    i.code: i for i in (
        Item(MEMBERSHIP, "Membership (basic service, up to 2 TB private project storage, no backup)",
             "membership", PER_YEAR, Decimal("50000.00"), included_tb=Decimal(2)),
        Item("backup-storage", "Backed-up primary storage", "TB", PER_YEAR, Decimal("2500.00")),
        Item(PROJECT_STORAGE, "Large-volume project storage (archive, beyond the included 2 TB)", "TB", PER_YEAR,
             Decimal("1500.00"), metered=True),
        Item("cpu", "CPU", "CPU", PER_YEAR, Decimal("24000.00")),
        Item("gpu", "GPU (dedicated, yearly)", "GPU", PER_YEAR, Decimal("80000.00")),
        Item(GPU_WEEK, "GPU-weeks booked", "GPU-week", PER_UNIT, money(Fraction(80000, 52)), metered=True),
        Item("data-sharing", "Data sharing", "dataset", PER_UNIT, Decimal("0.00")),
    )})


def price_list_on(lists: Sequence[PriceList], day: dt.date) -> PriceList:
    """The version in force on a day: the latest effective on or before it (the oldest before any)."""
    ordered = sorted(lists, key=lambda p: p.effective_from)
    current = ordered[0]
    for p in ordered:
        if p.effective_from <= day:
            current = p
    return current


def _price_lists_by_day(lists: Sequence[PriceList], start: dt.date, end: dt.date) -> dict[dt.date, PriceList]:
    """``price_list_on`` for every day of [start, end], in one pass."""
    ordered = sorted(lists, key=lambda p: p.effective_from)
    out: dict[dt.date, PriceList] = {}
    current, i = ordered[0], 0
    for day in days(start, end):
        while i < len(ordered) and ordered[i].effective_from <= day:
            current, i = ordered[i], i + 1
        out[day] = current
    return out


@dataclass(frozen=True)
class Subscription:
    project: str
    item: str
    quantity: Decimal
    start: dt.date
    end: dt.date | None  # last day charged; None = open


@dataclass(frozen=True)
class Usage:
    """What a meter measured: ``quantity`` of ``item`` on ``day`` (TB held that day; GPU-weeks booked)."""

    project: str
    item: str
    day: dt.date
    quantity: Fraction | Decimal
    note: str = ""


@dataclass(frozen=True)
class Waiver:
    id: str
    kind: str  # waiver | discount
    reason: str
    valid_from: dt.date
    valid_to: dt.date
    percent: Decimal | None = None
    amount: Decimal | None = None
    projects: frozenset[str] | None = None  # None: every project of the statement
    item: str | None = None  # None: every item


@dataclass(frozen=True)
class Charge:
    project: str
    item: str
    day: dt.date
    quantity: Fraction  # unit-days for yearly items (one per day), units for per-unit items
    amount: Fraction
    version: int
    source: str  # subscription | metered


@dataclass
class Line:
    project: str
    kind: str  # charge | waiver | discount
    item: str
    description: str
    start: dt.date
    end: dt.date
    quantity: Decimal
    unit: str
    unit_price: Decimal
    basis: str  # "per year, pro-rated by day (365)" | "per unit"
    amount: Decimal
    price_version: int = 0

    def as_dict(self) -> dict[str, str | int]:
        return {"project": self.project, "kind": self.kind, "item": self.item, "description": self.description,
                "start": self.start.isoformat(), "end": self.end.isoformat(), "quantity": str(self.quantity),
                "unit": self.unit, "unit_price": str(self.unit_price), "basis": self.basis,
                "amount": str(self.amount), "price_version": self.price_version}

    @classmethod
    def from_dict(cls, d: dict[str, str | int]) -> Line:
        return cls(project=str(d["project"]), kind=str(d["kind"]), item=str(d["item"]),
                   description=str(d["description"]), start=dt.date.fromisoformat(str(d["start"])),
                   end=dt.date.fromisoformat(str(d["end"])), quantity=Decimal(str(d["quantity"])),
                   unit=str(d["unit"]), unit_price=Decimal(str(d["unit_price"])), basis=str(d["basis"]),
                   amount=Decimal(str(d["amount"])), price_version=int(d.get("price_version", 0)))


@dataclass
class Statement:
    start: dt.date
    end: dt.date
    lines: list[Line] = field(default_factory=list)

    @property
    def subtotal(self) -> Decimal:
        return sum((x.amount for x in self.lines if x.kind == "charge"), Decimal("0.00"))

    @property
    def reductions(self) -> Decimal:
        return sum((x.amount for x in self.lines if x.kind != "charge"), Decimal("0.00"))

    @property
    def total(self) -> Decimal:
        return self.subtotal + self.reductions


def charges(lists: Sequence[PriceList], subscriptions: Iterable[Subscription], usage: Iterable[Usage],
            start: dt.date, end: dt.date) -> list[Charge]:
    """Day-level charges in [start, end]: subscriptions per day they run, usage on its day. Metered project
    storage is reduced by the storage a running membership includes (per project and day)."""
    out: list[Charge] = []
    included: dict[tuple[str, dt.date], Fraction] = {}
    on = _price_lists_by_day(lists, start, end)
    for sub in subscriptions:
        first, last = max(sub.start, start), min(sub.end or end, end)
        qty = Fraction(sub.quantity)
        for day in days(first, last) if first <= last else ():
            pl = on[day]
            item = pl.items.get(sub.item)
            if item is None:
                raise ValueError(f"no item {sub.item!r} in price list version {pl.version}")
            if item.included_tb:
                key = (sub.project, day)
                included[key] = included.get(key, Fraction(0)) + Fraction(item.included_tb) * qty
            out.append(_charge(item, pl.version, sub.project, day, qty, "subscription"))
    for u in usage:
        if not start <= u.day <= end:
            continue
        pl = on[u.day]
        item = pl.items.get(u.item)
        if item is None:
            raise ValueError(f"no item {u.item!r} in price list version {pl.version}")
        qty = Fraction(u.quantity)
        if u.item == PROJECT_STORAGE:
            free = included.get((u.project, u.day), Fraction(0))
            used = min(free, qty)
            included[(u.project, u.day)] = free - used
            qty -= used
        if qty > 0:
            out.append(_charge(item, pl.version, u.project, u.day, qty, "metered"))
    return out


@lru_cache(maxsize=256)
def _rate(item: Item, year_days: int) -> Fraction:
    """What one unit costs for a day (yearly items) or once (per-unit items), as an exact fraction."""
    price = Fraction(item.price)
    return price / year_days if item.per == PER_YEAR else price


def _charge(item: Item, version: int, project: str, day: dt.date, qty: Fraction, source: str) -> Charge:
    return Charge(project, item.code, day, qty, qty * _rate(item, days_in_year(day)), version, source)


def _in_scope(w: Waiver, c: Charge) -> bool:
    return (w.valid_from <= c.day <= w.valid_to and (w.projects is None or c.project in w.projects)
            and (w.item is None or w.item == c.item))


def waive(waivers: Sequence[Waiver], all_charges: Sequence[Charge]) -> dict[tuple[str, str, str], Fraction]:
    """(waiver id, project, item) → the reduction (positive). Percentages apply per day on what earlier
    waivers left; a fixed sum is spread evenly over its validity days and never exceeds what is left."""
    left = {id(c): c.amount for c in all_charges}
    out: dict[tuple[str, str, str], Fraction] = {}
    for w in waivers:
        scoped = [c for c in all_charges if _in_scope(w, c) and left[id(c)] > 0]
        if w.percent is not None:
            for c in scoped:
                cut = left[id(c)] * Fraction(w.percent) / 100
                left[id(c)] -= cut
                key = (w.id, c.project, c.item)
                out[key] = out.get(key, Fraction(0)) + cut
        elif w.amount is not None:
            per_day = Fraction(w.amount) / ((w.valid_to - w.valid_from).days + 1)
            by_day: dict[dt.date, list[Charge]] = {}
            for c in scoped:
                by_day.setdefault(c.day, []).append(c)
            for day_charges in by_day.values():
                budget = per_day
                for c in sorted(day_charges, key=lambda c: (c.project, c.item)):
                    cut = min(budget, left[id(c)])
                    if cut <= 0:
                        continue
                    budget -= cut
                    left[id(c)] -= cut
                    key = (w.id, c.project, c.item)
                    out[key] = out.get(key, Fraction(0)) + cut
    return out


def statement(lists: Sequence[PriceList], subscriptions: Iterable[Subscription], usage: Iterable[Usage],
              waivers: Sequence[Waiver], start: dt.date, end: dt.date) -> Statement:
    """The statement lines for [start, end]: one charge line per (project, item, price version, year length,
    source), then one line per waiver and item it reduced."""
    if end < start:
        raise ValueError("a statement period ends on or after its start")
    all_charges = charges(lists, subscriptions, usage, start, end)
    items = {(p.version, code): item for p in lists for code, item in p.items.items()}
    groups: dict[tuple[str, str, int, int, str], list[Charge]] = {}
    for c in all_charges:
        groups.setdefault((c.project, c.item, c.version, days_in_year(c.day), c.source), []).append(c)
    out = Statement(start, end)
    for (project, code, version, year_days, _source), cs in sorted(groups.items()):
        item = items[(version, code)]
        qty = sum((c.quantity for c in cs), Fraction(0))
        if item.per == PER_YEAR:
            unit = "day" if item.unit == "membership" else f"{item.unit}-day"
            basis = f"per {item.unit} and year, pro-rated by day ({year_days})"
        else:
            unit, basis = item.unit, f"per {item.unit}"
        out.lines.append(Line(project, "charge", code, item.name, min(c.day for c in cs), max(c.day for c in cs),
                              _qty(qty), unit, item.price, basis, money(sum((c.amount for c in cs), Fraction(0))),
                              version))
    by_id = {w.id: w for w in waivers}
    for (wid, project, code), cut in sorted(waive(waivers, all_charges).items()):
        w = by_id[wid]
        what = f"{w.percent.normalize():f} %" if w.percent is not None else f"{w.amount} SEK"
        out.lines.append(Line(project, w.kind, code, f"{w.kind.title()} ({what}): {w.reason}",
                              max(start, w.valid_from), min(end, w.valid_to), Decimal(1), w.kind,
                              -money(cut), "reduction", -money(cut)))
    return out


def _qty(q: Fraction) -> Decimal:
    """Quantities to six decimals (TB-days of bytes are rarely whole)."""
    return (Decimal(q.numerator) / Decimal(q.denominator)).quantize(Decimal("0.000001"),
                                                                      rounding=ROUND_HALF_UP).normalize()


def checksum(lines: Sequence[dict[str, str | int]], meta: dict[str, str]) -> str:
    """SHA-256 of the canonical JSON of a statement's lines and heading: what an issued statement is."""
    blob = json.dumps({"meta": meta, "lines": list(lines)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def period(text: str) -> tuple[dt.date, dt.date]:
    """``2025`` (a year) or ``2025-03`` (a month) → (first day, last day)."""
    try:
        if len(text) == 4:
            year = int(text)
            return dt.date(year, 1, 1), dt.date(year, 12, 31)
        year, month = (int(x) for x in text.split("-"))
        return dt.date(year, month, 1), dt.date(year, month, calendar.monthrange(year, month)[1])
    except ValueError:
        raise ValueError(f"a period is a year (2025) or a month (2025-03), not {text!r}") from None
