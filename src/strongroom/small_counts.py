"""The small-count rule for every count of people or their imaging that anyone without membership sees (pure: no
web or database imports). One rule for the Beacon, the public metrics, the catalogue's landing pages and index,
and the DCAT / HealthDCAT-AP export (docs/federation.md, "Small counts and differencing"; docs/fair.md, "Small
counts").

A count of 1–4 is private: it is shown as ``"< 5"``. Every other number is rounded to the nearest multiple of
``ROUND_TO`` (a 5 means 5–7, a 10 means 8–12), so a total minus its siblings does not land on one value by
itself; where it still could (several parts, a lower bound the reader knows), ``stats.figures.protect_all``
withholds more. Zero stays 0: it points at nobody.

A reader may know a lower bound of a count (a dataset that lists four modalities has at least four instances):
a "< 5" above a bound of 4 would say 4, so such a count is rounded instead (4 → 5, "4–7").
"""

from __future__ import annotations

from typing import Literal

MIN_COUNT = 5  # counts below this are never shown as numbers
# Shown numbers are rounded to this base: equal to MIN_COUNT, so each number's uncertainty (±2) is as large as a
# hidden cell; a larger base would blur the sizes of the small cohorts that researchers plan with.
ROUND_TO = 5
SUPPRESSED: Literal["< 5"] = "< 5"
Shown = int | Literal["< 5"]


def rounded(n: int) -> int:
    """``n`` to the nearest multiple of ``ROUND_TO`` (n ≥ MIN_COUNT - 1: never 0)."""
    return ROUND_TO * ((n + ROUND_TO // 2) // ROUND_TO)


def shown(n: int, *, at_least: int = 0) -> Shown:
    """A count as anyone may see it: 0, "< 5", or the number rounded to 5. ``at_least``: a lower bound the
    reader already knows (a "< 5" above 4 would pin 4, so it is rounded to 5 instead)."""
    if n <= 0:
        return 0
    if n < MIN_COUNT and at_least < MIN_COUNT - 1:
        return SUPPRESSED
    return rounded(n)


def number(n: int | None) -> int | None:
    """A count for a format that needs an integer (DCAT ``xsd:nonNegativeInteger``): None — leave the property
    out — when it is unknown or 1–4, else as ``shown``."""
    if n is None:
        return None
    value = shown(n)
    return value if isinstance(value, int) else None


def text(n: int | None) -> str:
    """A count for a page: "" when unknown, "< 5", or the rounded number with thousands separators."""
    if n is None:
        return ""
    value = shown(n)
    return value if isinstance(value, str) else f"{value:,}"


def bounds(value: Shown, *, at_least: int = 0) -> tuple[float, float]:
    """What a reader learns of a count from how it is shown (and the lower bound they know): the smallest and
    largest value it can have."""
    if value == SUPPRESSED:
        low, high = 1.0, float(MIN_COUNT - 1)
    elif value == 0:
        return 0.0, 0.0
    else:
        assert isinstance(value, int)
        low, high = float(value - ROUND_TO // 2), float(value + ROUND_TO // 2)
        if value == rounded(MIN_COUNT):  # 3 and 4 are "< 5" (but a 4 above a bound of 4 is 5)
            low = float(MIN_COUNT - 1 if at_least >= MIN_COUNT - 1 else MIN_COUNT)
    return max(low, float(at_least)), high
