"""What the scans share: the ``Leak`` finding, loading an object with pydicom, and ``values``: every
element at any depth with its value(s) as text, read once per dataset for all the checks."""

from __future__ import annotations

import functools
import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

PLACEHOLDERS = {"ANONYMIZED", "ANONYMOUS", "ANON", "UNKNOWN", "NONE", "REMOVED", "DEIDENTIFIED", "NULL", "N/A",
                "NOT AVAILABLE", "YES", "NO"}
PIXEL_GROUP = 0x7FE0


class Leak(NamedTuple):
    kind: str  # value | uid | date | attribute | private | marker | graphics
    where: str  # where in the output (element path, or "file bytes")
    source: str  # where in the original the identifying value came from
    detail: str  # never the value itself


class Value(NamedTuple):
    """One element of a dataset at any depth, as the scans read it."""

    path: str  # "(0008,0020)", or "(0040,A730)[0].(0040,A160)" inside a sequence item
    tag: int
    vr: str
    texts: list[str]  # the value(s) as text, stripped, empty ones left out ([] for binary values)
    blob: bytes | None  # the value of a binary element (OB, OW, UN...), else None (always None in pixel data)
    parent: Item  # the elements of the dataset (or sequence item) holding it, by tag


Item = dict[int, Value]


@dataclass
class Read:
    """A file as the scans read it: every element (``values``, in file order), the top level by tag, the
    bytes, and where the top-level pixel data is — from the fast reader (``reader.parse``) or pydicom."""

    raw: bytes  # the file (b"" for an original read from its path by pydicom)
    part10: bool  # a preamble and "DICM": what a plain (not forced) pydicom read requires
    implicit: bool  # implicit VR
    transfer_syntax: str
    values: list[Value] = field(default_factory=list)
    top: Item = field(default_factory=dict)
    # top-level pixel elements: (tag, where its tag starts, where its value starts, where its value ends —
    # after the delimiter of encapsulated pixel data), in file order
    pixels: list[tuple[int, int, int, int]] = field(default_factory=list)
    dataset: Dataset | None = None  # pydicom's, when pydicom read it

    def text(self, keyword: str) -> str:
        """A top-level attribute's value(s) as text (backslash between values), "" when absent or empty."""
        if keyword == "TransferSyntaxUID":
            return self.transfer_syntax
        return "\\".join(self.texts(keyword))

    def texts(self, keyword: str) -> list[str]:
        """A top-level attribute's values as text ([] when absent or empty)."""
        found = self.top.get(_tag_for(keyword))
        return found.texts if found is not None else []


@functools.lru_cache(maxsize=256)
def _tag_for(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


# Top-level values longer than this stay in the file until something asks for them: ``values`` reads every
# one of them except the pixel data, which no scan looks into (copying it out was ~7 % of a scan in a loop).
DEFER_SIZE = 64 * 1024


def load(obj: Any, *, keep_bytes: bool = True) -> Read:
    """``obj`` (bytes, a path or a pydicom ``Dataset``) as the scans read it: by the fast reader when the
    file is plain explicit VR little endian (``reader.parse``), else by pydicom, large values deferred
    (``DEFER_SIZE``). ``keep_bytes=False`` (a path only): the bytes are not kept (``raw`` is b"")."""
    from .reader import parse

    if isinstance(obj, Dataset):  # scanned as given; where its pixel data lies, from its bytes read back
        buf = io.BytesIO()
        obj.save_as(buf, enforce_file_format=False)
        read = from_pydicom(obj, buf.getvalue())
        back = pydicom.dcmread(io.BytesIO(read.raw), force=True, defer_size=256)
        read.implicit = bool((getattr(back, "original_encoding", None) or (None,))[0])
        read.pixels = _pixel_positions(back, read.raw, read.implicit)
        return read
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
    elif isinstance(obj, str | os.PathLike):
        raw = Path(obj).read_bytes()
    else:
        raise TypeError(f"cannot scan a {type(obj).__name__}")
    read = parse(raw) or from_pydicom(pydicom.dcmread(io.BytesIO(raw), force=True, defer_size=DEFER_SIZE), raw)
    if not keep_bytes:
        read.raw = b""
    return read


def from_pydicom(ds: Dataset, raw: bytes) -> Read:
    """A ``Read`` of ``ds`` (read by pydicom from ``raw``, its raw elements not yet converted)."""
    encoding = getattr(ds, "original_encoding", None) or (None, None)
    meta = getattr(ds, "file_meta", None)
    read = Read(raw, getattr(ds, "preamble", None) is not None, bool(encoding[0]),
                str(getattr(meta, "TransferSyntaxUID", "") or "").strip(), dataset=ds)
    read.pixels = _pixel_positions(ds, raw, read.implicit)  # (before ``walk`` converts the raw elements)
    read.values, read.top = walk(ds)
    return read


def _pixel_positions(ds: Dataset, raw: bytes, implicit: bool) -> list[tuple[int, int, int, int]]:
    """``Read.pixels`` from the raw pixel elements of ``ds`` (read by pydicom from ``raw``)."""
    pixels: list[tuple[int, int, int, int]] = []
    for tag in (0x7FE00008, 0x7FE00009, 0x7FE00010):
        element = ds.get_item(tag, keep_deferred=True) if tag in ds else None
        tell = getattr(element, "value_tell", None)  # a raw element knows where its value is
        if not isinstance(element, RawDataElement) or tell is None:
            continue
        length = element.length
        if length == 0xFFFFFFFF:  # encapsulated: up to its sequence delimiter (as pydicom found it)
            end = raw.find(b"\xfe\xff\xdd\xe0", tell)
            stop = len(raw) if end < 0 else end + 8
        else:
            stop = tell + length
        header = 8 if implicit or element.VR not in _LONG_VRS else 12
        pixels.append((tag, tell - header, tell, stop))
    return sorted(pixels, key=lambda p: p[1])


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


# ---- reading values straight from the raw elements
#
# pydicom converts a raw element into Python values on first access (DSfloat, PersonName, UID,
# MultiValue...): for the scans, which only need every value as text, that conversion was ~90 % of their
# time. ``values`` decodes the raw bytes the way pydicom does (split on backslash, trailing NUL and space
# removed) for the character sets where that is plain decoding, and leaves everything else to pydicom:
# sequences, implicit-VR private elements, UN, AT, other character sets (ISO 2022 escapes can hold a
# backslash byte inside a character).

_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UC", "UI"}  # multi-valued
_SINGLE_TEXT_VRS = {"LT", "ST", "UT", "UR"}  # one value, backslash is text
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV"}
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}  # 4-byte lengths
_PLAIN_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def _charset(ds: Dataset, inherited: str | None) -> str | None:
    """The codec for this dataset's text values, or None when pydicom must decode them."""
    raw = ds.get_item(0x00080005) if 0x00080005 in ds else None
    if raw is None:
        return inherited
    value = raw.value
    if isinstance(value, bytes | bytearray):
        return _PLAIN_CHARSETS.get(bytes(value).decode("latin-1").strip(" \x00"))
    return _PLAIN_CHARSETS.get(value.strip()) if isinstance(value, str) else None


def _texts(vr: str, value: bytes, codec: str) -> list[str] | None:
    if vr in _TEXT_VRS:
        text = value.decode(codec, "replace").rstrip(" \x00")
        parts = text.split("\\")
    elif vr in _SINGLE_TEXT_VRS:
        parts = [value.decode(codec, "replace")]
    else:
        return None
    if vr == "PN":  # as pydicom's PersonName: empty trailing component groups dropped
        parts = [p.rstrip("=") for p in parts]
    return [s for p in parts if (s := p.strip(" \x00\t\r\n\f\v"))]


def _numbers(vr: str, value: bytes, little_endian: bool) -> list[str] | None:
    fmt = _NUMBER_FORMATS.get(vr)
    if fmt is None:
        return None
    size = struct.calcsize("<" + fmt)
    if len(value) % size:
        return None
    count = len(value) // size
    return [str(n) for n in struct.unpack(f"{'<' if little_endian else '>'}{count}{fmt}", value)]


def values(ds: Dataset, sep: str = ".", path: str = "", codec: str | None = "latin-1") -> list[Value]:
    """Every element of ``ds`` at any depth with its value(s) as text, in file order, a sequence before its
    items' elements; an item's elements are under ``<sequence path>[i]<sep>``."""
    return walk(ds, sep, path, codec)[0]


def walk(ds: Dataset, sep: str = ".", path: str = "", codec: str | None = "latin-1") -> tuple[list[Value], Item]:
    """``values``, and the top level's elements by tag."""
    out: list[Value] = []
    return out, _values_into(out, ds, sep, path, _charset(ds, codec))


def _values_into(out: list[Value], ds: Dataset, sep: str, path: str, codec: str | None) -> Item:
    item: Item = {}

    def add(here: str, tag: int, vr: str, texts: list[str], blob: bytes | None) -> None:
        out.append(value := Value(here, tag, vr, texts, blob, item))
        item[tag] = value

    for tag in sorted(ds.keys()):
        elem = ds.get_item(tag, keep_deferred=True)
        here = f"{path}({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if isinstance(elem, RawDataElement) and elem.value is None:  # empty, or left in the file (DEFER_SIZE)
            if elem.length and tag >> 16 == PIXEL_GROUP and elem.VR is not None:  # no scan looks into it
                add(here, int(tag), elem.VR, [], None)
                continue
            elem = ds.get_item(tag)  # as pydicom reads it
        if isinstance(elem, RawDataElement) and codec is not None:
            vr = elem.VR
            if vr is None and not elem.tag.is_private:  # implicit VR: the dictionary's, when it is unambiguous
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    vr = None
                if vr is not None and (" " in vr or vr == "UN"):
                    vr = None
            value = elem.value
            if vr is not None and vr not in ("SQ", "UN", "AT") and isinstance(value, bytes):
                texts = _texts(vr, value, codec)
                if texts is None:
                    texts = _numbers(vr, value, elem.is_little_endian)
                if texts is not None:
                    add(here, int(tag), vr, texts, None)
                    continue
                if vr in _BINARY_VRS:
                    add(here, int(tag), vr, [], None if tag >> 16 == PIXEL_GROUP else value)
                    continue
            elif vr is not None and value is None:  # an empty element
                add(here, int(tag), vr, [], None)
                continue
        converted = ds[tag]  # what pydicom makes of it
        value = converted.value
        sequence = converted.VR == "SQ"
        blob = bytes(value) if isinstance(value, bytes | bytearray) and tag >> 16 != PIXEL_GROUP else None
        add(here, int(tag), converted.VR, [] if sequence else strings(converted), blob)
        if sequence:
            for i, child in enumerate(value or []):
                _values_into(out, child, sep, f"{here}[{i}]{sep}", _charset(child, codec))
    return item
