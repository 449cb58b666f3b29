"""The rules behind the published figures (pure: no web or database imports): which DICOM modalities are
pathology, radiology or annotations, which files are annotation files, a person's country and
organisation, decision-time percentiles, and the small-count rule.

Small counts: a count of people or of their actions (applications, decisions, downloads, downloaders,
sharing events, a country's approvals) between 1 and 4 could point at one person, so every output
shows it as ``"< 5"`` (``shown``). Zero stays 0: nobody is pointed at by it. The number of countries
is exact: the countries are named in the list anyway, and only their counts could point at someone.
Counts of people's imaging (subjects, studies, scans, instances, annotations) follow the hub's one rule for
them (``strongroom.small_counts``, the Beacon's): "< 5", else rounded to 5 (``Cell(n, rounded=True)``), on
every public output; a data owner sees them exactly.

Subtraction: a total published beside its parts would give a hidden part back (total − the parts shown),
so every margin (a total and the parts that add up to it) is protected (``protect_all``): when a part is
hidden, more parts are ``"withheld"`` — the smallest shown ones first — until no hidden value can be worked
out from what each shown value tells (exactly, or the 5 values a rounded one may be), the hidden parts together
hold at least ``SMALL`` wherever their sum is known, and at least two are hidden; failing that, the total is
withheld too. A withheld part is not shown as ``"< 5"``: it need not be small.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pycountry

from .. import small_counts
from ..catalog.vocab import MODALITIES

SMALL = small_counts.MIN_COUNT
SUPPRESSED = small_counts.SUPPRESSED
WITHHELD: Literal["withheld"] = "withheld"  # hidden so that a small count cannot be worked out from a total
Count = int | Literal["< 5", "withheld"]

# Whole-slide microscopy is pathology; these modalities are not images but objects about images
# (segmentations, structured reports, RT structure sets, annotations, key objects, presentation states,
# registrations, documents): annotations are counted from the first four, the rest are neither.
PATHOLOGY = frozenset({"SM"})
ANNOTATION_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "ANN"})
NOT_IMAGES = ANNOTATION_MODALITIES | frozenset({"KO", "PR", "REG", "DOC", "RWV", "PLAN", "RTPLAN", "RTRECORD"})
# A non-DICOM file is an annotation file by its name: these endings, or any folder of these names.
ANNOTATION_SUFFIXES = (".geojson", ".seg.nrrd", ".seg.nii", ".seg.nii.gz", ".annotations.json", ".xml.ann")
ANNOTATION_FOLDERS = ("annotations", "labels", "segmentations", "masks")


_MORE_MODALITIES = {"SR": "Structured report", "RTSTRUCT": "RT structure set", "ANN": "Annotation",
                    "KO": "Key object selection", "PR": "Presentation state"}


def modality_name(code: str) -> str:
    return MODALITIES.get(code) or _MORE_MODALITIES.get(code) or code


def shown(n: int) -> Count:
    """A count of people or their actions as it may be published."""
    return SUPPRESSED if 0 < n < SMALL else n


def shown_bytes(n: int, events: Count) -> int | None:
    """Bytes of downloads counted as ``events`` (as published): withheld with the count whenever it is hidden."""
    return None if isinstance(events, str) else n


@dataclass(eq=False)
class Cell:
    """One published count: its true value and what is shown of it. Cells are shared by the margins
    they belong to, so a part withheld for one margin is hidden in every other one too. ``rounded``: a count of
    people's imaging, shown by ``small_counts.shown`` (rounded to 5); ``at_least``: a lower bound a reader knows
    of it (a dataset listing four modalities has at least four instances)."""

    value: int
    rounded: bool = False
    at_least: int = 0
    out: Count = field(init=False)

    def __post_init__(self) -> None:
        self.out = small_counts.shown(self.value, at_least=self.at_least) if self.rounded else shown(self.value)

    @property
    def hidden(self) -> bool:
        return isinstance(self.out, str)

    def bounds(self) -> tuple[float, float]:
        """What a reader knows of the value from what is shown: "< 5" is 1-4; a withheld one is never 0 or small
        (zero and small parts are not withheld for others), so assume the reader knows it is at least SMALL; a
        rounded one is one of the values that round to it; any other number is exact."""
        if self.out == WITHHELD:
            return max(float(SMALL), float(self.at_least)), math.inf
        if self.rounded or self.out == SUPPRESSED:
            return small_counts.bounds(self.out, at_least=self.at_least)
        return float(self.value), float(self.value)


@dataclass(eq=False)
class Margin:
    """A total and the parts that add up to it. ``unpublished``: the total also holds a part no output
    shows (approvals from unknown countries, applications still pending); a reader knows only that it is
    0 or more."""

    total: Cell
    parts: list[Cell]
    unpublished: bool = False


def safe(margin: Margin) -> bool:
    """Whether nothing hidden in ``margin`` can be worked out from what it shows: no hidden value (the total's
    included) is pinned by the bounds of the others; where the hidden parts' sum is pinned (an exact total less
    exact parts), it is 0 or at least SMALL and at least two cells are hidden (four "< 5" under a "< 5" total
    are 1 each; total 18 beside 5, 5 and "< 5" — 7, 7 and 4 rounded — leaves exactly 4)."""
    hidden = [c.bounds() for c in margin.parts if c.hidden] + ([(0.0, math.inf)] if margin.unpublished else [])
    shown_lo = sum(c.bounds()[0] for c in margin.parts if not c.hidden)
    shown_hi = sum(c.bounds()[1] for c in margin.parts if not c.hidden)
    t_lo, t_hi = margin.total.bounds()
    lows, highs = sum(b[0] for b in hidden), sum(b[1] for b in hidden)
    # the total, from its own bounds and those of its parts
    total_lo, total_hi = max(t_lo, shown_lo + lows), min(t_hi, shown_hi + highs)
    if margin.total.hidden and total_lo == total_hi:
        return False
    # the hidden parts together (and the unpublished one): total − the parts shown
    sum_lo, sum_hi = max(lows, total_lo - shown_hi), min(highs, total_hi - shown_lo)
    if sum_lo == sum_hi:
        if not any(c.hidden for c in margin.parts):
            return not 0 < sum_lo < SMALL  # the unpublished part alone is a count too
        if sum_lo < SMALL or len(hidden) < 2:
            return False
    for low, high in hidden[:len(hidden) - margin.unpublished]:
        lo = max(low, total_lo - shown_hi - (highs - high))
        hi = min(high, total_hi - shown_lo - (lows - low))
        if lo == hi:
            return False
    return True


def _protect_one(margin: Margin) -> bool:
    changed = False
    while not safe(margin):
        candidates = [c for c in margin.parts if not c.hidden and c.value > 0]  # a 0 hides nothing
        if candidates:
            min(candidates, key=lambda c: c.value).out = WITHHELD
        elif margin.total.out != WITHHELD:
            margin.total.out = WITHHELD  # even a total under five: "< 5" would pin its parts
        else:
            break  # everything is hidden already
        changed = True
    return changed


def protect_all(margins: Sequence[Margin]) -> None:
    """Secondary suppression over linked margins: a cell withheld for one margin is a hidden part of the
    others it is in, so go round until none changes (cells only ever get hidden: this ends)."""
    while any([_protect_one(m) for m in margins]):
        pass


def is_image(modality: str) -> bool:
    return bool(modality) and modality not in NOT_IMAGES


def is_pathology(modality: str) -> bool:
    return modality in PATHOLOGY


def is_radiology(modality: str) -> bool:
    return is_image(modality) and modality not in PATHOLOGY


def country_code(value: str | None) -> str | None:
    """An ISO 3166-1 alpha-2 code as stored (upper case), or None for anything that is not one."""
    code = (value or "").strip().upper()
    return code if len(code) == 2 and pycountry.countries.get(alpha_2=code) is not None else None


def country_name(code: str) -> str:
    found = pycountry.countries.get(alpha_2=code)
    return str(getattr(found, "common_name", None) or found.name) if found is not None else code


def countries() -> list[tuple[str, str]]:
    """Every ISO 3166-1 country as (alpha-2, name), by name: the choices of a profile form."""
    return sorted(((str(c.alpha_2), country_name(str(c.alpha_2))) for c in pycountry.countries),
                  key=lambda pair: pair[1])


def _domain(value: str | None) -> str | None:
    """The domain of an e-mail address or a scoped affiliation (``member@uu.se``); the first of a list."""
    for part in (value or "").split(","):
        if "@" in part:
            domain = part.rsplit("@", 1)[1].strip().lower().rstrip(".")
            if "." in domain:
                return domain
    return None


def person_country(country: str | None, affiliation: str | None, email: str | None) -> str | None:
    """The country a person gave (their profile), else the country-code domain of their home organisation
    (scoped affiliation, then e-mail); generic domains (.org, .edu) say nothing."""
    if code := country_code(country):
        return code
    for value in (affiliation, email):
        domain = _domain(value)
        if domain:
            return country_code(domain.rsplit(".", 1)[-1])
    return None


def organisation(affiliation: str | None, email: str | None) -> str | None:
    """A person's organisation as a domain: of the scoped affiliation, else of the e-mail address."""
    return _domain(affiliation) or _domain(email)


def same_organisation(a: str | None, b: str | None) -> bool | None:
    """Whether two organisation domains are one organisation (``med.uu.se`` is part of ``uu.se``);
    None when either is unknown."""
    if not a or not b:
        return None
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def is_external(*, member_of_owner: bool, applicant_org: str | None, owner_org: str | None) -> bool:
    """An approved application is an external sharing event when the applicant is not a member of the
    owning project and is known to belong to another organisation than its PI. Unknown organisations
    are not counted: the figure claims only what the records show."""
    return not member_of_owner and same_organisation(applicant_org, owner_org) is False


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100) by the nearest-rank method: a value that really occurred."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def decision_days(waits: list[float]) -> dict[str, float | None]:
    """Median and 90th percentile of days from submission to decision, over at least ``SMALL`` decisions
    (fewer could describe one person's application)."""
    if len(waits) < SMALL:
        return {"median": None, "p90": None}
    median, p90 = percentile(waits, 50), percentile(waits, 90)
    return {"median": None if median is None else round(median, 1), "p90": None if p90 is None else round(p90, 1)}


def month_of(value: dt.date | dt.datetime) -> str:
    return f"{value.year:04d}-{value.month:02d}"


def months_between(first: str, last: str) -> list[str]:
    """Every month from ``first`` to ``last`` (``YYYY-MM``), inclusive: charts show empty months too."""
    year, month = (int(p) for p in first.split("-"))
    end = tuple(int(p) for p in last.split("-"))
    out = []
    while (year, month) <= end:
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out

