"""Reading the tables laboratory and radiology systems export, and writing the released ones.

CSV and TSV are read as text (a personnummer must keep its leading zeros and its dash), in UTF-8
or, when the file is not UTF-8, Windows-1252 (what Swedish Excel writes), with the separator sniffed
(`;` from Swedish Excel, `,`, tab). Excel and Parquet keep their own types.
"""

from __future__ import annotations

import codecs
import tempfile
from pathlib import Path

import polars as pl
from fastexcel import FastExcelError

SUFFIXES = (".csv", ".tsv", ".txt", ".xlsx", ".parquet")
# The names the airlock's checks read as tables. A release does not go by names: it judges every file by its
# content (`content.py`, `provenance.py`), whatever it is called.
TABLE_SUFFIXES = (".csv", ".tsv", ".xlsx", ".parquet")
SNIFF_BYTES = 1 << 16


def suffix_of(name: str) -> str:
    """A file name's suffix as Windows reads it (and so as a download gets it): trailing dots and spaces dropped,
    lower case (`LAB.CSV. ` is a `.csv`)."""
    return Path(name.rstrip(". ")).suffix.lower()


class TableError(ValueError):
    """The file cannot be read as a table."""


def _is_utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                return False
    return True


def _transcode(path: Path, encoding: str, workdir: Path) -> Path:
    """A UTF-8 copy, streamed: Polars reads UTF-8 only."""
    out = workdir / (path.stem + ".utf8" + path.suffix)
    with path.open("r", encoding=encoding, newline="") as src, out.open("w", encoding="utf-8", newline="") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    return out


def _separator(sample: str, suffix: str) -> str:
    if suffix == ".tsv":
        return "\t"
    header = sample.splitlines()[0] if sample else ""
    return max(("\t", ";", ","), key=header.count)


def read_sheets(path: Path) -> dict[str, pl.DataFrame]:
    """Every table the file holds: each sheet of a workbook (hidden ones too) by its name, else the one table
    under "". What leaves a project is judged on all of them, not on the sheet `read_table` reads."""
    if path.suffix.lower() != ".xlsx":
        return {"": read_table(path).collect()}
    try:
        # sheet_id=0: all sheets; an empty sheet is an empty frame, not an error
        sheets = pl.read_excel(path, sheet_id=0, infer_schema_length=0, raise_if_empty=False)
    except (pl.exceptions.PolarsError, FastExcelError, OSError, UnicodeError, ValueError) as exc:
        raise TableError(f"{path.name}: cannot be read as a table ({str(exc).splitlines()[0]})") from None
    return dict(sheets)


def read_table(path: Path, *, encoding: str | None = None) -> pl.LazyFrame:
    """A lazy frame over the file (CSV/TSV/TXT, XLSX, Parquet). Of a workbook, the first sheet: a strategy
    reads one table (`read_sheets` reads them all)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TableError(f"{path.name}: not a table this hub reads ({', '.join(SUFFIXES)})")
    try:
        if suffix == ".parquet":
            pl.read_parquet_schema(path)  # a broken file fails here, with its name, not later mid-run
            return pl.scan_parquet(path)
        if suffix == ".xlsx":
            return pl.read_excel(path, infer_schema_length=0).lazy()  # all text, as written in the cells
        if encoding is None:
            encoding = "utf-8" if _is_utf8(path) else "cp1252"
        # a transcoded copy is plaintext too: it lives beside nothing, in a private directory, only while read
        with tempfile.TemporaryDirectory(prefix="strongroom-table-") as tmp:
            source = path
            if encoding.replace("-", "").lower() not in ("utf8", "utf8sig"):
                source = _transcode(path, encoding, Path(tmp))
            with source.open("r", encoding="utf-8-sig", errors="replace") as f:
                sample = f.read(SNIFF_BYTES)
            frame = pl.read_csv(source, separator=_separator(sample, suffix), infer_schema=False, encoding="utf8",
                                truncate_ragged_lines=False)  # eager: the copy can go once this returns
        if frame.columns and frame.columns[0].startswith("\ufeff"):
            frame = frame.rename({frame.columns[0]: frame.columns[0].lstrip("\ufeff")})
        return frame.lazy()
    except (pl.exceptions.PolarsError, FastExcelError, OSError, UnicodeError) as exc:  # a broken workbook: calamine
        raise TableError(f"{path.name}: cannot be read as a table ({str(exc).splitlines()[0]})") from None


def write_table(frame: pl.DataFrame, path: Path) -> Path:
    """Parquet or CSV (UTF-8, comma), by the suffix."""
    if path.suffix.lower() == ".parquet":
        frame.write_parquet(path)
    elif path.suffix.lower() == ".csv":
        frame.write_csv(path)
    else:
        raise TableError(f"{path.name}: write .parquet or .csv")
    return path
