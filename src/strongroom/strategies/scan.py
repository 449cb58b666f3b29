"""The identifier scan over every text cell of a table.

Polars narrows each column to the distinct values that could hold an identifier (cheap patterns, no
look-behind; names by Aho-Corasick over the lower-cased text); only those values meet the exact Python
patterns (a real date and the Luhn digit; names as whole words).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import polars as pl

from .. import identifiers


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

    def hint(self, column: pl.Expr) -> pl.Expr:
        """True for cells that may hold a name: any listed word as a substring (Aho-Corasick)."""
        return column.str.to_lowercase().str.contains_any(self.words)


Hint = Callable[[pl.Expr], pl.Expr]


def _contains(column: pl.Expr, pattern: str) -> pl.Expr:
    return column.str.contains(pattern)


def hints(names: NameMatcher, *, personnummer: bool, email: bool, phone: bool) -> list[tuple[str, Hint]]:
    """(kind, cheap filter) for every kind of identifier looked for."""
    out: list[tuple[str, Hint]] = []
    for kind, pattern, on in (("personnummer", identifiers.PNR_HINT, personnummer),
                              ("e-mail", identifiers.EMAIL_HINT, email),
                              ("telephone number", identifiers.PHONE_HINT, phone)):
        if on:
            out.append((kind, partial(_contains, pattern=pattern)))
    if names:
        out.append(("name from the list", names.hint))
    return out


def exact(kind: str, text: str, names: NameMatcher) -> bool:
    """Whether `text` really holds an identifier of this kind (after a cheap filter said it might)."""
    if kind == "personnummer":
        return bool(identifiers.national_ids(text))
    if kind == "name from the list":
        return bool(names.spans(text))
    if kind == "e-mail":
        return bool(identifiers.EMAIL.search(text))
    return any(sum(c.isdigit() for c in m.group(0)) >= 8 and not identifiers.national_ids(m.group(0))
               for m in identifiers.PHONE.finditer(text))


def scan_identifiers(frame: pl.DataFrame, names: NameMatcher, *, personnummer: bool = True, email: bool = True,
                     phone: bool = True, counts: Callable[[str], pl.DataFrame] | None = None) -> list[dict[str, Any]]:
    """[{column, kind, cells}] for every text column with identifiers; the values never leave.
    `counts(column)`: each distinct value of the column and its number of cells, when already counted."""
    kinds = hints(names, personnummer=personnummer, email=email, phone=phone)
    found: list[dict[str, Any]] = []
    for column in frame.columns:
        if frame.schema[column] not in (pl.String, pl.Categorical):
            continue  # numbers, dates and bands cannot spell a name, an address or a Luhn-checked number
        # each distinct value once, with the number of cells holding it
        values = counts(column) if counts else frame.group_by(column).len()
        values = values.with_columns(pl.col(column).cast(pl.String))
        for kind, hint in kinds:
            candidates = values.filter(hint(pl.col(column)).fill_null(False))
            cells = sum(n for text, n in candidates.iter_rows() if exact(kind, text, names))
            if cells:
                found.append({"column": column, "kind": kind, "cells": cells})
    return found
