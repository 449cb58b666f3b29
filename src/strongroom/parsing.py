"""The one rule for a whole number written as text by someone else (a form field, a header, a path segment, a
partner's or the hub's answer): ASCII digits, an optional minus, at most 20 of them, within a range. Never
``str.isdigit()`` then ``int()``: isdigit() takes "²" and "٣", which int() refuses (a ValueError, not a refusal),
and says nothing of the size (int() of thousands of digits is refused too).

Pure, standard library only: the researcher's client (``fs``, ``hubclient``) uses it without the hub's imports;
``schemas.whole_number`` is the same rule with the hub's error (422 naming the field).
"""

from __future__ import annotations

import re

WHOLE_NUMBER = re.compile(r"-?[0-9]+")
_MAX_DIGITS = 20  # with the minus: every 64-bit integer, and no int() of an unbounded string


def whole_number_in(text: str, minimum: int, maximum: int) -> int | None:
    """``text`` (surrounding white space ignored) as a whole number from ``minimum`` to ``maximum``, else None."""
    value = text.strip()
    if len(value) > _MAX_DIGITS or not WHOLE_NUMBER.fullmatch(value):
        return None
    number = int(value)
    return number if minimum <= number <= maximum else None
