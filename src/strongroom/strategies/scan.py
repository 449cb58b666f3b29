"""The identifier scan over every cell of a table, whatever its column type, and over its column names.

Text is scanned as it is; integral numbers of personnummer range (7-12 digits, of any integer, float or
decimal type) as their digits padded to ten, for a personnummer (a number type drops the dash and the leading
zero of a YYMMDDNNNN born 2000-2009, not the other digits; the real date and the Luhn digit decide); the elements of
list and struct columns as their own columns; every other type (dates, times, booleans, binary) as its text.
The kinds looked for are always personnummer (and samordningsnummer), e-mail addresses and telephone
numbers, plus the names a strategy lists: a strategy adds to the scan, never switches a kind off.

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


def hints(names: NameMatcher) -> list[tuple[str, Hint]]:
    """(kind, cheap filter) for every kind of identifier looked for: all of them, and the names if any."""
    out: list[tuple[str, Hint]] = [(kind, partial(_contains, pattern=pattern)) for kind, pattern in (
        ("personnummer", identifiers.PNR_HINT), ("e-mail", identifiers.EMAIL_HINT),
        ("telephone number", identifiers.PHONE_HINT))]
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


# Integral numbers of 7-12 digits may be personnummer written as numbers (YYMMDDNNNN, YYYYMMDDNNNN): the
# leading zero of a YYMMDDNNNN of 2000-2009 is lost (0503070005 -> 503070005; 000101NNNN -> 101NNNN), the
# other digits kept. Padded to ten digits, the real date and the Luhn digit decide; below 10**6 the padded
# month is 00, never a date.
_PERSONNUMMER_DIGITS = r"^[0-9]{7,12}$"


def _numbers_as_text(values: pl.DataFrame, column: str) -> pl.DataFrame:
    """The integral values of a numeric column (integer, float, decimal) that have personnummer's width,
    as their digits padded to ten: read for a personnummer only (a padded number would look like a telephone
    number, and a number holds no e-mail address or name)."""
    dtype = values.schema[column]
    col = pl.col(column)
    if dtype.is_float():  # pandas writes an integer column with a gap as floats
        values = values.filter(((col == col.floor()) & (col.abs() < 10**12)).fill_null(False))
        text = col.cast(pl.Int64).cast(pl.String)
    elif dtype.is_decimal():  # 191212121212 or 191212121212.00; a fraction that is not zero is no personnummer
        text = col.cast(pl.String).str.replace(r"\.0*$", "")
    else:
        text = col.cast(pl.String)
    return (values.with_columns(text).filter(col.str.contains(_PERSONNUMMER_DIGITS).fill_null(False))
            .with_columns(col.str.zfill(10)))


def _as_text(values: pl.DataFrame, column: str) -> pl.DataFrame | None:
    """(distinct value, cells) with the value as the text the scan reads, or None for a column holding
    nothing (all null)."""
    dtype = values.schema[column]
    col = pl.col(column)
    if dtype == pl.Null:
        return None
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return values.with_columns(col.cast(pl.String))
    if dtype.is_numeric():
        return _numbers_as_text(values, column)
    if dtype == pl.Binary:
        return values.with_columns(col.cast(pl.String, strict=False))  # bytes that are UTF-8 text
    try:  # dates, times, booleans, …: their text (nothing slips through for its type)
        return values.with_columns(col.cast(pl.String))
    except pl.exceptions.PolarsError:  # a type Polars does not cast (durations, objects): as Python writes it
        texts = [None if v is None else str(v) for v in values.get_column(column).to_list()]
        return values.with_columns(pl.Series(column, texts, dtype=pl.String))


def _leaves(series: pl.Series, label: str, shown: Callable[[str, int], str]) -> list[tuple[str, pl.Series]]:
    """The scalar columns inside a nested one (list elements, struct fields), labelled `column.field`."""
    dtype = series.dtype
    if isinstance(dtype, pl.List):
        return _leaves(series.explode(), label, shown)
    if isinstance(dtype, pl.Array):
        return _leaves(series.arr.explode(), label, shown)
    if isinstance(dtype, pl.Struct):
        return [leaf for i, field in enumerate(dtype.fields, 1)
                for leaf in _leaves(series.struct.field(field.name), f"{label}.{shown(field.name, i)}", shown)]
    return [(label, series)]


def _field_names(dtype: object) -> list[str]:
    if isinstance(dtype, (pl.List, pl.Array)):
        return _field_names(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return [n for f in dtype.fields for n in (f.name, *_field_names(f.dtype))]
    return []


HEADER = "the column names"  # where identifiers found in column (and struct field) names are reported


def scan_identifiers(frame: pl.DataFrame, names: NameMatcher, *,
                     counts: Callable[[str], pl.DataFrame] | None = None) -> list[dict[str, Any]]:
    """[{column, kind, cells}] for every column with identifiers (any type: `_as_text`; the elements of lists
    and fields of structs) and for the column names themselves (column: `HEADER`, one cell per name); the
    values never leave. A column (or field) whose name holds an identifier is reported by position (`#3`),
    not by name.
    `counts(column)`: each distinct value of the column and its number of cells, when already counted."""
    kinds = hints(names)
    found: list[dict[str, Any]] = []
    # a pivoted extract has one column per patient: the header is data too
    header = [*frame.columns, *(n for c in frame.columns for n in _field_names(frame.schema[c]))]
    for kind, _hint in kinds:
        cells = sum(1 for name in header if exact(kind, name, names))
        if cells:
            found.append({"column": HEADER, "kind": kind, "cells": cells})

    def shown(name: str, position: int) -> str:
        return f"#{position}" if any(exact(k, name, names) for k, _ in kinds) else name

    for position, column in enumerate(frame.columns, 1):
        label = column if shown(column, position) == column else f"column #{position}"
        if isinstance(frame.schema[column], (pl.List, pl.Array, pl.Struct)):
            leaves = [(leaf, series.rename(column).to_frame().group_by(column).len())
                      for leaf, series in _leaves(frame.get_column(column), label, shown)]
        else:  # each distinct value once, with the number of cells holding it
            leaves = [(label, counts(column) if counts else frame.group_by(column).len())]
        for leaf, counted in leaves:
            values = _as_text(counted, column)
            if values is None:
                continue
            number = counted.schema[column].is_numeric()
            for kind, hint in kinds:
                if number and kind != "personnummer":  # padded digits are read as a personnummer, nothing else
                    continue
                candidates = values.filter(hint(pl.col(column)).fill_null(False))
                cells = sum(n for text, n in candidates.iter_rows() if exact(kind, text, names))
                if cells:
                    found.append({"column": leaf, "kind": kind, "cells": cells})
    return found
