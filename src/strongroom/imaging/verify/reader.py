"""The leak scan's fast read: a Part 10 file's elements straight from its bytes, without building pydicom
Datasets (building them was about half of verifying a CT instance).

It reads only the common, unambiguous case — little endian, explicit or implicit VR (the transfer syntaxes
of nearly every file a DICOM destination receives), a plain character set, every length consistent, tags in
ascending order, and only VRs it knows exactly as pydicom would: in explicit VR no UN or AT; in implicit VR
the data dictionary's VR when it is unambiguous, "US or SS" pixel values resolved by the Pixel
Representation beside them (as pydicom does), private creators as LO and private elements of creators
unknown to pydicom as UN. ``parse`` returns None for anything else: the scan then reads the file with
pydicom (``elements.load``). So a malformed or unusual file is never interpreted differently here; it is
read the way it always was. Whatever this reads must equal what the pydicom path reads, element for
element: tests/test_verify_values.py holds the two to each other for every bundled test file, their
implicit VR copies, and damaged copies of both.
"""

from __future__ import annotations

import functools
import struct
import zlib

from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.uid import UID, ImplicitVRLittleEndian

from .elements import _BINARY_VRS, _LONG_VRS, _PLAIN_CHARSETS, PIXEL_GROUP, Item, Read, Value, _numbers, _texts

_VRS = {vr.encode(): vr for vr in ("AE", "AS", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD",
                                   "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC",
                                   "UI", "UL", "UR", "US", "UT", "UV")}  # not UN, AT: pydicom converts those
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, _PIXEL_DATA)  # float, double float, pixel data
_HEAD = struct.Struct("<HH2sH")  # tag, VR, and the 2-byte length of the short VRs
_IMPLICIT_HEAD = struct.Struct("<HHI")  # tag and 4-byte length
# "US or SS" pixel values that pydicom resolves by the Pixel Representation of the same dataset
_US_OR_SS = {0x00280104, 0x00280105, 0x00280106, 0x00280107, 0x00280108, 0x00280109, 0x00280110, 0x00280111,
             0x00280120, 0x00280121}
_PIXEL_REPRESENTATION = 0x00280103
# private VRs (implicit VR: from pydicom's private dictionary) whose conversion gives what the raw decoding gives:
# not PN (pydicom's text of a name keeps trailing "="), SQ, AT or the ambiguous ones
_PRIVATE_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
                "OW", "SH", "SL", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"}
_U32 = struct.Struct("<I")
_ITEM_HEAD = struct.Struct("<HHI")
_SEQUENCE_END_BYTES = b"\xfe\xff\xdd\xe0"


class _NotPlain(Exception):
    """The file is not one this reader reads: the pydicom path reads it."""


def parse(raw: bytes) -> Read | None:
    """The elements of the Part 10 file ``raw`` (the file meta group left out, as pydicom's dataset does),
    or None when the file is not little endian, plain and well formed all through."""
    if len(raw) < 132 or raw[128:132] != b"DICM":
        return None
    try:
        meta, pos = _meta(raw)
        syntax = meta.get(0x00020010, b"").decode("ascii").strip("\x00 ")
        uid = UID(syntax)
        implicit = syntax == ImplicitVRLittleEndian
        if not implicit and not (uid.is_transfer_syntax and uid.is_little_endian and not uid.is_implicit_VR
                                 and not uid.is_deflated):
            return None
        if pos + 8 > len(raw) or (implicit and all(0x41 <= b <= 0x5A for b in raw[pos + 4:pos + 6])):
            return None  # no data set (pydicom guesses its encoding), or it looks explicit: pydicom would switch
        read = Read(raw=raw, part10=True, implicit=implicit, transfer_syntax=syntax)
        _dataset(read, raw, pos, len(raw), "", "latin-1", read.top, top=True)
    except (_NotPlain, struct.error, UnicodeDecodeError, RecursionError):
        return None
    return read


DEFLATED = "1.2.840.10008.1.2.1.99"
_EXPLICIT_LE = b"1.2.840.10008.1.2.1\x00"


def inflated(raw: bytes) -> bytes:
    """The Part 10 file ``raw`` in Deflated Explicit VR Little Endian as the same file uncompressed: its file
    meta (the transfer syntax now Explicit VR Little Endian) and the inflated dataset. Byte searches on the
    compressed bytes would never match; raises ``ValueError`` when the file does not inflate."""
    try:
        if len(raw) < 132 or raw[128:132] != b"DICM":
            raise _NotPlain
        _, pos = _meta(raw)
        body = zlib.decompress(raw[pos:], -15)
    except (_NotPlain, struct.error, zlib.error) as exc:
        raise ValueError(f"deflated dataset does not inflate: {type(exc).__name__}") from None
    meta, at = [], 132
    while at < pos:  # every meta element but the group length (recomputed) and the transfer syntax (replaced)
        group, element, vr_bytes, length = _HEAD.unpack_from(raw, at)
        start, at = at, (at + 12 + _U32.unpack_from(raw, at + 8)[0] if _VRS[vr_bytes] in _LONG_VRS
                         else at + 8 + length)
        if element == 0x0010:
            meta.append(_HEAD.pack(0x0002, 0x0010, b"UI", len(_EXPLICIT_LE)) + _EXPLICIT_LE)
        elif element:
            meta.append(raw[start:at])
    group = b"".join(meta)
    return raw[:132] + _HEAD.pack(0x0002, 0x0000, b"UL", 4) + _U32.pack(len(group)) + group + body


def _meta(raw: bytes) -> tuple[dict[int, bytes], int]:
    """The file meta group's values by tag (explicit VR little endian), and where the dataset starts."""
    meta: dict[int, bytes] = {}
    pos, end = 132, len(raw)
    while pos + 8 <= end:
        group, element, vr_bytes, length = _HEAD.unpack_from(raw, pos)
        if group != 0x0002:
            break
        vr = _VRS.get(vr_bytes)
        if vr is None:
            raise _NotPlain
        if vr in _LONG_VRS:
            (length,), at = _U32.unpack_from(raw, pos + 8), pos + 12
        else:
            at = pos + 8
        if length == _UNDEFINED or at + length > end:
            raise _NotPlain
        meta[group << 16 | element] = raw[at:at + length]
        pos = at + length
    return meta, pos


def _dataset(read: Read, raw: bytes, pos: int, end: int, path: str, codec: str, item: Item, *,
             top: bool = False, delimited: bool = False) -> int:
    """Read the elements of one dataset (the file's, or a sequence item's) from ``pos`` to ``end`` — or to
    its item delimiter when ``delimited`` — into ``read.values`` and ``item``; the position after it."""
    out = read.values
    last = -1
    decoded_text = False  # a text value read before this dataset's Specific Character Set: refuse
    while pos < end:
        if pos + 8 > end:
            raise _NotPlain
        if read.implicit:
            group, element, length = _IMPLICIT_HEAD.unpack_from(raw, pos)
        else:
            group, element, vr_bytes, length = _HEAD.unpack_from(raw, pos)
        tag = group << 16 | element
        if tag == _ITEM_END:
            if not delimited or _U32.unpack_from(raw, pos + 4)[0] != 0:
                raise _NotPlain
            return pos + 8
        if tag <= last or group == 0xFFFE or (top and group == 0x0002):
            raise _NotPlain  # out of order (pydicom sorts and keeps one of a duplicate), a stray item
        last = tag
        if read.implicit:
            vr, at = _implicit_vr(tag, item, length), pos + 8
        else:
            explicit_vr = _VRS.get(vr_bytes)
            if explicit_vr is None:
                raise _NotPlain
            vr = explicit_vr
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise _NotPlain
                (length,), at = _U32.unpack_from(raw, pos + 8), pos + 12
            else:
                at = pos + 8
        here = f"{path}({group:04X},{element:04X})"
        if vr == "SQ":
            value = item[tag] = Value(here, tag, vr, [], None, item)
            out.append(value)
            pos = _sequence(read, raw, at, length, end, here, codec)
            continue
        if length == _UNDEFINED:
            if tag != _PIXEL_DATA or vr not in ("OB", "OW"):
                raise _NotPlain  # pydicom reads these its own way
            pos = _fragments(raw, at, end)
            if top:
                read.pixels.append((tag, at - (8 if read.implicit else 12), at, pos))
            value = item[tag] = Value(here, tag, vr, [], None, item)
            out.append(value)
            continue
        stop = at + length
        if stop > end:
            raise _NotPlain
        if tag in _PIXEL_TAGS:  # no scan looks into it: never copied out
            if vr not in _BINARY_VRS:
                raise _NotPlain
            if top:
                read.pixels.append((tag, at - 12 if vr in _LONG_VRS and not read.implicit else at - 8, at, stop))
            value = item[tag] = Value(here, tag, vr, [], None, item)
            out.append(value)
            pos = stop
            continue
        if tag == 0x00080005:
            charset = _PLAIN_CHARSETS.get(raw[at:stop].decode("latin-1").strip(" \x00"))
            if charset is None or (decoded_text and charset != codec):
                raise _NotPlain
            codec = charset
        texts: list[str] | None
        blob = None
        if length == 0:
            texts = []
        elif vr == "UN":  # (implicit VR: a private element of an unknown creator) its bytes, as pydicom keeps them
            texts, blob = [], raw[at:stop]
        else:
            data = raw[at:stop]
            texts = _texts(vr, data, codec)
            if texts is None:
                texts = _numbers(vr, data, True)
                if texts is None:
                    if vr not in _BINARY_VRS:
                        raise _NotPlain  # a number of the wrong length: pydicom decides what it is
                    texts, blob = [], None if group == PIXEL_GROUP else data
            else:
                decoded_text = True
        value = item[tag] = Value(here, tag, vr, texts, blob, item)
        out.append(value)
        pos = stop
    if delimited or pos != end:
        raise _NotPlain
    return pos


def _implicit_vr(tag: int, item: Item, length: int) -> str:
    """The VR pydicom gives an element read in implicit VR, when it is one this reader decodes the same way."""
    group, element = tag >> 16, tag & 0xFFFF
    if group & 1:
        if 0x0010 <= element <= 0x00FF:
            return "LO"  # a private creator
        creator = item.get(tag & 0xFFFF0000 | element >> 8) if element & 0xFF00 else None
        vr = _private_vr(tag, "\\".join(creator.texts)) if creator is not None and creator.texts else "UN"
        if length == _UNDEFINED or vr not in _PRIVATE_VRS:
            raise _NotPlain  # pydicom reads it as a sequence, or converts it in a way of its own
        return vr
    if tag == _PIXEL_DATA:
        return "OB" if length == _UNDEFINED else "OW"  # as pydicom: OW when native in implicit VR
    if tag in _US_OR_SS:
        representation = item.get(_PIXEL_REPRESENTATION)
        if representation is None or representation.texts not in (["0"], ["1"]):
            raise _NotPlain
        return "US" if representation.texts == ["0"] else "SS"
    public = _dictionary_vr(tag)
    if public is None and element == 0:
        public = "UL"  # a group length (pydicom: implied)
    if public is None or " " in public or public in ("UN", "AT") or (length == _UNDEFINED and public != "SQ"):
        raise _NotPlain
    return public


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


@functools.lru_cache(maxsize=4096)
def _private_vr(tag: int, creator: str) -> str:
    """The VR pydicom's private dictionary gives ``tag`` of ``creator``, "UN" when it does not know it."""
    try:
        return private_dictionary_VR(tag, creator)
    except KeyError:
        return "UN"


def _sequence(read: Read, raw: bytes, pos: int, length: int, end: int, path: str, codec: str) -> int:
    """Read a sequence's items (``length`` bytes, or up to its delimiter); the position after it."""
    stop = end if length == _UNDEFINED else pos + length
    if stop > end:
        raise _NotPlain
    index = 0
    while pos < stop:
        if pos + 8 > stop:
            raise _NotPlain
        group, element, item_length = _ITEM_HEAD.unpack_from(raw, pos)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            if length != _UNDEFINED or item_length != 0:
                raise _NotPlain
            return pos + 8
        if tag != _ITEM:
            raise _NotPlain
        item: Item = {}
        item_path = f"{path}[{index}]."
        if item_length == _UNDEFINED:
            pos = _dataset(read, raw, pos + 8, stop, item_path, codec, item, delimited=True)
        else:
            if pos + 8 + item_length > stop:
                raise _NotPlain
            pos = _dataset(read, raw, pos + 8, pos + 8 + item_length, item_path, codec, item)
        index += 1
    if length == _UNDEFINED or pos != stop:
        raise _NotPlain  # an undefined-length sequence with no delimiter
    return pos


def _fragments(raw: bytes, pos: int, end: int) -> int:
    """Skip an encapsulated pixel data value's items; the position after its delimiter. pydicom finds the
    end by searching for the delimiter's bytes: when that finds another place (the bytes occur inside a
    fragment), the file is left to pydicom."""
    start = pos
    while True:
        if pos + 8 > end:
            raise _NotPlain
        group, element, length = _ITEM_HEAD.unpack_from(raw, pos)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            if raw.find(_SEQUENCE_END_BYTES, start) != pos:
                raise _NotPlain
            return pos + 8
        if tag != _ITEM or length == _UNDEFINED or pos + 8 + length > end:
            raise _NotPlain
        pos += 8 + length
