"""What the scans share: the ``Leak`` finding, loading an object with pydicom, the one element
walker, and element values as text."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
from pydicom.dataset import Dataset

PLACEHOLDERS = {"ANONYMIZED", "ANONYMOUS", "ANON", "UNKNOWN", "NONE", "REMOVED", "DEIDENTIFIED", "NULL", "N/A",
                "NOT AVAILABLE", "YES", "NO"}
PIXEL_GROUP = 0x7FE0


class Leak(NamedTuple):
    kind: str  # value | uid | date | attribute | private | marker | graphics
    where: str  # where in the output (element path, or "file bytes")
    source: str  # where in the original the identifying value came from
    detail: str  # never the value itself


def load(obj: Any) -> tuple[Dataset, bytes]:
    if isinstance(obj, Dataset):
        buf = io.BytesIO()
        obj.save_as(buf, enforce_file_format=False)
        return obj, buf.getvalue()
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
    elif isinstance(obj, str | os.PathLike):
        raw = Path(obj).read_bytes()
    else:
        raise TypeError(f"cannot scan a {type(obj).__name__}")
    return pydicom.dcmread(io.BytesIO(raw), force=True), raw


def walk(ds: Dataset, sep: str = ".", path: str = "") -> Iterator[tuple[str, Any, Dataset]]:
    """(path, element, the dataset holding it) of every element at any depth, in file order, a sequence
    before its items' elements; an item's elements are under ``<sequence path>[i]<sep>``."""
    for elem in ds:
        here = f"{path}({elem.tag.group:04X},{elem.tag.element:04X})"
        yield here, elem, ds
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                yield from walk(item, sep, f"{here}[{i}]{sep}")


def strings(elem: Any) -> list[str]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, bytes | bytearray):
        return []
    values = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


def date8(value: str) -> str | None:
    value = value.strip()
    if len(value) >= 8 and value[:8].isdigit():
        return value[:8]
    return None
