"""What the DICOMweb index keeps of one de-identified instance (pure: pydicom and the standard library).

``index_file`` reads a Part 10 file once and returns the attributes QIDO-RS matches and returns, plus
where the pixel data sits in the plaintext: ``pixel_offset`` (the first byte of the Pixel Data element's
*tag*, so everything before it is the non-pixel header) and the frames as ``[offset, length]`` byte
ranges of the plaintext. A frame is then read by decrypting only the crypt4gh segments (64 KiB each)
that cover its range (``dicomweb.retrieve``). Native (uncompressed) frames are one range each; an
encapsulated frame is its fragments' ranges, in order.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

import pydicom
from pydicom.tag import Tag

if TYPE_CHECKING:
    from .verify.elements import Read

INDEX_VERSION = 1  # bump to make the back-fill revisit every instance
PIXEL_TAGS = (Tag(0x7FE0, 0x0010), Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009))  # Pixel, Float, Double Float
_ITEM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE0DD

# column -> (keyword, max length): the strings QIDO matches on
TEXT = {
    "study_time": ("StudyTime", 16), "accession_number": ("AccessionNumber", 16),
    "patient_name": ("PatientName", 64), "study_id": ("StudyID", 16),
    "study_description": ("StudyDescription", 64), "series_description": ("SeriesDescription", 64),
    "transfer_syntax_uid": ("TransferSyntaxUID", 64),
}
NUMBERS = {"series_number": "SeriesNumber", "instance_number": "InstanceNumber", "rows": "Rows",
           "columns": "Columns", "number_of_frames": "NumberOfFrames"}


class NotIndexable(ValueError):
    pass


def _number(text: str) -> int | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def index_file(path: str) -> dict[str, Any]:
    with open(path, "rb") as fp:
        return index_stream(fp)


def index_stream(fp: BinaryIO) -> dict[str, Any]:
    """The index attributes of one Part 10 instance (``NotIndexable`` when it cannot be read)."""
    from .verify.elements import from_pydicom

    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)  # leaves ``fp`` at the pixel element's tag
    except Exception as exc:
        raise NotIndexable(f"unreadable DICOM: {exc}") from exc
    read = from_pydicom(ds, b"")
    return _index(read.text, read.implicit, fp)


def index_read(read: Read) -> dict[str, Any] | None:
    """``index_stream`` of a Part 10 file from the leak scan's ``Read`` of it (its bytes and elements), so
    the file is not parsed again. ``None`` when it is not a Part 10 file (``index_file`` decides) or its
    first pixel element is not where the read says."""
    if not read.part10 or not read.raw:
        return None
    fp = io.BytesIO(read.raw)
    if not read.pixels:
        fp.seek(len(read.raw))  # no pixel element: index_stream reads to the end of the file
    else:
        tag, at, _, _ = read.pixels[0]  # the first pixel element in the file: where stop_before_pixels stops
        if at < 0 or read.raw[at:at + 4] != struct.pack("<HH", tag >> 16, tag & 0xFFFF):
            return None
        fp.seek(at)
    return _index(read.text, read.implicit, fp)


def _index(text: Callable[[str], str], implicit: bool, fp: BinaryIO) -> dict[str, Any]:
    """The index attributes (``text``: a top-level attribute's value as text, by keyword), with ``fp``
    where ``index_stream``'s read stopped."""
    out: dict[str, Any] = {col: text(kw).strip()[:n] for col, (kw, n) in TEXT.items()}
    out |= {col: _number(text(kw)) for col, kw in NUMBERS.items()}
    out |= {"pixel_offset": None, "frames": [], "index_version": INDEX_VERSION}
    at = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        out["number_of_frames"] = out["number_of_frames"] or 0
        return out
    group, elem = struct.unpack("<HH", head[:4])
    if Tag(group, elem) not in PIXEL_TAGS:
        out["number_of_frames"] = out["number_of_frames"] or 0
        return out
    frames = out["number_of_frames"] = out["number_of_frames"] or 1
    if implicit:  # tag + 4-byte length
        (length,), value_at = struct.unpack("<I", head[4:8]), at + 8
    else:  # tag + VR + 2 reserved + 4-byte length (OB, OW, OF, OD, UN)
        (length,), value_at = struct.unpack("<I", head[8:12]), at + 12
    out["pixel_offset"] = at
    out["frames"] = _frames(fp, value_at, length, frames)
    return out


def _frames(fp: BinaryIO, start: int, length: int, frames: int) -> list[list[int]]:
    """The frames' byte ranges in the file: ``[[frame number, offset, length], ...]``: one per native
    frame; an encapsulated frame has one per fragment, in order."""
    if length != 0xFFFFFFFF:  # native: frames are equal slices
        if frames <= 0 or length % frames:
            return [[1, start, length]] if frames == 1 else []
        size = length // frames
        return [[n + 1, start + n * size, size] for n in range(frames)]
    items = _items(fp, start)
    if not items:
        return []
    bot, fragments = items[0], items[1:]
    if not fragments:
        return []
    if frames == 1:
        return [[1, off, n] for off, n in fragments]
    if len(fragments) == frames:
        return [[i + 1, off, n] for i, (off, n) in enumerate(fragments)]
    if bot[1]:  # the Basic Offset Table says where each frame's first fragment starts
        fp.seek(bot[0])
        table = struct.unpack(f"<{bot[1] // 4}I", fp.read(bot[1]))
        first = fragments[0][0] - 8
        out, frame = [], 0
        for off, n in fragments:
            while frame < len(table) and off - 8 - first >= table[frame]:
                frame += 1  # frame numbers start at 1: the first fragment passes table[0] == 0
            out.append([frame, off, n])
        return out
    return []  # several fragments per frame without an offset table: frames are not addressable


def _items(fp: BinaryIO, start: int) -> list[tuple[int, int]]:
    """(value offset, length) of each item of an encapsulated Pixel Data value."""
    fp.seek(start)
    items: list[tuple[int, int]] = []
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return items
        group, elem, n = struct.unpack("<HHI", head)
        tag = (group << 16) | elem
        if tag == _SEQ_DELIM:
            return items
        if tag != _ITEM:
            return items
        items.append((fp.tell(), n))
        fp.seek(n, io.SEEK_CUR)
