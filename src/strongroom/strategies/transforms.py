"""Each rule of a strategy as Polars expressions over a lazy frame: columnar, never row by row.

Keyed values (pseudonyms, per-person date shifts) are computed once per distinct input value and
joined back, so a million rows of a hundred thousand people cost a hundred thousand HMACs.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from functools import cache
from pathlib import Path

import polars as pl
from polars._typing import PolarsDataType

from ..identifiers import spans
from ..imaging.deid import Pseudonymizer
from . import spec
from .scan import NameMatcher, hints

REMOVED = "[REMOVED]"
# ICD-10 (WHO 2019) chapters by first character and the first code of the next chapter
ICD10_CHAPTERS: list[tuple[str, str, str]] = [
    ("A00", "B99", "I"), ("C00", "D48", "II"), ("D50", "D89", "III"), ("E00", "E90", "IV"), ("F00", "F99", "V"),
    ("G00", "G99", "VI"), ("H00", "H59", "VII"), ("H60", "H95", "VIII"), ("I00", "I99", "IX"), ("J00", "J99", "X"),
    ("K00", "K93", "XI"), ("L00", "L99", "XII"), ("M00", "M99", "XIII"), ("N00", "N99", "XIV"), ("O00", "O99", "XV"),
    ("P00", "P96", "XVI"), ("Q00", "Q99", "XVII"), ("R00", "R99", "XVIII"), ("S00", "T98", "XIX"),
    ("V01", "Y98", "XX"), ("Z00", "Z99", "XXI"), ("U00", "U99", "XXII"),
]
# ICD-10 (WHO 2019) blocks: first and last three-character category, chapter and a short title
ICD10_BLOCKS_FILE = Path(__file__).parent / "data" / "icd10_blocks.csv"
ICD10_CATEGORY = r"^([A-Z][0-9]{2})"  # what a code must start with, once dots, daggers and spaces are gone
DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d", "%d.%m.%Y", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")


class StrategyError(ValueError):
    """The strategy cannot be applied to this table (a named column is missing, a value cannot be read)."""


def as_date(column: str, dtype: pl.DataType) -> pl.Expr:
    """A column as Date whatever it was read as: dates, datetimes, or text in the usual forms."""
    col = pl.col(column)
    if dtype == pl.Date:
        return col
    if isinstance(dtype, pl.Datetime):
        return col.dt.date()
    text = col.cast(pl.String).str.strip_chars()
    return pl.coalesce([text.str.to_date(fmt, strict=False) for fmt in DATE_FORMATS])


def as_number(column: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(column)
    if dtype.is_numeric():
        return col.cast(pl.Float64)
    return col.cast(pl.String).str.strip_chars().str.replace(",", ".", literal=True).cast(pl.Float64, strict=False)


def band_labels(bounds: list[int], top: int | None) -> list[str]:
    labels, low = [], 0
    for upper in bounds:
        labels.append(f"{low}-{upper}")
        low = upper + 1
    labels.append(f"{low}+")
    return labels


def stratify(rule: spec.Stratify, column: str, dtype: pl.DataType) -> pl.Expr:
    bounds = rule.upper_bounds()
    # right-closed bands: (-inf, 5], (5, 10], ... so whole numbers 0-5, 6-10, ...
    return (as_number(column, dtype).cut([b + 0.5 for b in bounds], labels=band_labels(bounds, rule.top))
            .cast(pl.String))


def icd10_category(text: pl.Expr) -> pl.Expr:
    """The three-character category of an ICD-10 code written any usual way ("i20.9", " I209", "A17.0†",
    "G01*"); null when the text does not start like one."""
    return text.str.replace_all(r"[^A-Z0-9]", "").str.extract(ICD10_CATEGORY, 1)


@cache
def icd10_blocks() -> list[tuple[str, str, str, str]]:
    """(first, last, chapter, label) of every block, in the file's order; label: "I20-I25 Ischaemic heart diseases"."""
    with ICD10_BLOCKS_FILE.open(encoding="utf-8", newline="") as f:
        return [(r["first"], r["last"], r["chapter"], f"{r['first']}-{r['last']} {r['title']}")
                for r in csv.DictReader(f)]


@cache
def icd10_block_map() -> tuple[list[str], list[str]]:
    """Every three-character category a block covers and that block's label (2,600 codes at most): the
    codes of a column are then looked up by hash, never compared range by range per row."""
    categories, labels = [], []
    for first, last, _, label in icd10_blocks():
        for letter in range(ord(first[0]), ord(last[0]) + 1):
            for number in range(100):
                category = f"{chr(letter)}{number:02d}"
                if first <= category <= last:
                    categories.append(category)
                    labels.append(label)
    return categories, labels


def generalize(rule: spec.Generalize, column: str, dtype: pl.DataType) -> pl.Expr:
    if rule.to in ("year", "quarter", "month"):
        date = as_date(column, dtype)
        year = date.dt.year().cast(pl.String)
        if rule.to == "year":
            return year
        if rule.to == "quarter":
            return pl.concat_str([year, pl.lit("-Q"), date.dt.quarter().cast(pl.String)])
        return date.dt.strftime("%Y-%m")
    text = pl.col(column).cast(pl.String).str.strip_chars().str.to_uppercase()
    if rule.to == "prefix":
        assert rule.length is not None
        return text.str.replace_all(r"\s", "").str.slice(0, rule.length)
    code = icd10_category(text)
    if rule.to == "icd10_category":
        return code
    if rule.to == "icd10_block":
        categories, labels = icd10_block_map()
        return code.replace_strict(categories, labels, default=None, return_dtype=pl.String)
    chapter = pl.lit(None, dtype=pl.String)
    for first, last, name in reversed(ICD10_CHAPTERS):
        chapter = pl.when((code >= first) & (code <= last)).then(pl.lit(name)).otherwise(chapter)
    return chapter


def suppress(rule: spec.Suppress, column: str) -> pl.Expr:
    col = pl.col(column)
    if rule.min_count is None:
        return pl.lit(None, dtype=pl.String).alias(column)
    return pl.when(col.count().over(column) >= rule.min_count).then(col).otherwise(None)


def top_code(rule: spec.TopCode, column: str, dtype: pl.DataType) -> pl.Expr:
    return as_number(column, dtype).clip(rule.bottom, rule.top)


def scrub_text(text: str | None, names: Callable[[str], list[tuple[int, int]]]) -> str | None:
    if text is None:
        return None
    found = [(s, e) for s, e, _ in spans(text)]  # every kind: a strategy never switches one off
    found += names(text)
    if not found:
        return text
    out, last = [], 0
    for start, end in sorted(found):
        if start < last:  # overlapping hits: the earlier one already covers this part
            start = last
        if end <= start:
            continue
        out.append(text[last:start] + REMOVED)
        last = end
    out.append(text[last:])
    return "".join(out)


def scrubbed(frame: pl.LazyFrame, column: str, names: NameMatcher) -> pl.Expr:
    """Free text with every identifier replaced: the Python scrub runs only on the distinct values a
    cheap filter flags; every other cell passes through as it is."""
    col = pl.col(column).cast(pl.String)
    flagged = pl.lit(False)
    for _kind, hint in hints(names):
        flagged = flagged | hint(col).fill_null(False)
    # the hints run over the distinct texts, not every cell (texts repeat: templates, empty fields)
    distinct = frame.select(col).unique().collect()  # collected first: the optimiser would push the filter down
    values = distinct.filter(flagged).to_series().to_list()
    return col.replace(values, [scrub_text(v, names.spans) for v in values])


def per_distinct(frame: pl.LazyFrame, column: str, expr: pl.Expr, rows: int) -> pl.Expr:
    """`expr` evaluated once per distinct value of `column` and mapped back: ages, dates and codes repeat,
    so parsing 3,000 distinct dates beats parsing ten million. Columns of mostly unique values skip it."""
    distinct = frame.select(pl.col(column)).unique().collect()
    if distinct.height * 4 > rows:
        return expr
    mapped = distinct.select(pl.col(column).alias("old"), expr.alias("new"))
    return pl.col(column).replace_strict(mapped.get_column("old"), mapped.get_column("new"), default=None,
                                         return_dtype=mapped.schema["new"])


def keyed(frame: pl.LazyFrame, source: str, fn: Callable[[str], object], dtype: PolarsDataType) -> pl.Expr:
    """`source` mapped through fn(value), with fn called once per distinct value (HMACs are the cost)."""
    distinct = frame.select(pl.col(source).cast(pl.String)).unique().drop_nulls().collect().to_series().to_list()
    return pl.col(source).cast(pl.String).replace_strict(distinct, [fn(v) for v in distinct], default=None,
                                                         return_dtype=dtype)


def shifted_date(frame: pl.LazyFrame, schema: pl.Schema, column: str, rule: spec.ShiftDate, person: str,
                 secret: bytes) -> pl.Expr:
    """The date moved by its person's keyed shift: the shift the imaging side gives the same person (keyed by
    the same patient key: one person however their personnummer is written, under the project's scheme)."""
    pseudo = Pseudonymizer(secret, max_shift_days=rule.max_shift_days)
    days = keyed(frame, person, lambda v: pseudo.date_shift_days(pseudo.patient_key(v.strip())), pl.Int64)
    return as_date(column, schema[column]) + pl.duration(days=days)


def pseudonym(frame: pl.LazyFrame, column: str, rule: spec.Pseudonymize, secret: bytes) -> pl.Expr:
    """Keyed tokens; a person's is the pseudonym the DICOM de-identification gives the same patient. A table
    does not say when its values were written: a 10-digit personnummer is read against the project key's
    own reference date (``Pseudonymizer.patient_key``)."""
    pseudo = Pseudonymizer(secret)
    if rule.kind == "person":
        return keyed(frame, column, lambda v: pseudo.patient_pseudonym(pseudo.patient_key(v.strip())), pl.String)
    return keyed(frame, column, lambda v: pseudo.token(rule.kind, v.strip(), 20), pl.String)
