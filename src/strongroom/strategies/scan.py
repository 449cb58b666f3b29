"""The identifier scan over every text cell of a table.

Polars narrows each column to the cells that could hold an identifier (cheap patterns, no look-behind);
only those cells meet the exact Python patterns (real dates, the Luhn digit). Names from the steward's
list match whole words, case-insensitively, by a vectorised word split and a hash lookup.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from .. import identifiers

WORD = r"[\p{L}][\p{L}'’-]*"


class NameMatcher:
    """Whole-word matching of a list of names (each entry's words count on their own)."""

    def __init__(self, names: list[str]) -> None:
        words = {w.casefold() for name in names for w in re.findall(r"[^\W\d_][\w'’-]*", name) if len(w) >= 2}
        self.words = sorted(words)
        self._rx = (re.compile(r"(?<![\w])(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
                               + r")(?![\w])", re.I) if words else None)

    def __bool__(self) -> bool:
        return bool(self.words)

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in self._rx.finditer(text)] if self._rx else []

    def cells(self, column: pl.Expr) -> pl.Expr:
        """True for the cells holding at least one of the names as a word."""
        words = column.str.to_lowercase().str.extract_all(WORD)
        return words.list.eval(pl.element().is_in(self.words)).list.any().fill_null(False)


def _exact(kind: str, text: str) -> bool:
    if kind == "personnummer":
        return bool(identifiers.national_ids(text))
    pattern = identifiers.EMAIL if kind == "e-mail" else identifiers.PHONE
    return any(kind == "e-mail" or (sum(c.isdigit() for c in m.group(0)) >= 8
                                    and not identifiers.national_ids(m.group(0))) for m in pattern.finditer(text))


def scan_identifiers(frame: pl.DataFrame, names: NameMatcher, *, personnummer: bool = True, email: bool = True,
                     phone: bool = True) -> list[dict[str, Any]]:
    """[{column, kind, cells}] for every text column with identifier-shaped values; values never leave."""
    hints = [(kind, hint) for kind, hint, on in (("personnummer", identifiers.PNR_HINT, personnummer),
                                                  ("e-mail", identifiers.EMAIL_HINT, email),
                                                  ("telephone number", identifiers.PHONE_HINT, phone)) if on]
    found: list[dict[str, Any]] = []
    for column in frame.columns:
        series = frame.get_column(column)
        if series.dtype != pl.String:
            continue  # numbers, dates and bands cannot spell a name, an address or a Luhn-checked number
        for kind, hint in hints:
            candidates = series.filter(series.str.contains(hint).fill_null(False)).unique()
            cells = sum(1 for text in candidates if _exact(kind, text))
            if cells:
                found.append({"column": column, "kind": kind, "cells": cells})
        if names:
            cells = int(frame.select(names.cells(pl.col(column))).to_series().sum())
            if cells:
                found.append({"column": column, "kind": "name from the list", "cells": cells})
    return found
