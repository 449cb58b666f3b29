"""Byte-level DICOM I/O: transfer syntaxes, element positions (no value decoding), encoding."""

from __future__ import annotations

import struct

from .result import DeidError

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
VALID_VRS = LONG_VRS | frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
     b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_VR_KIND = {vr: (1 if vr in LONG_VRS else 0) for vr in VALID_VRS}  # 1: 4-byte length after 2 reserved


def tagstr(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class Codec:
    __slots__ = ("little", "tag", "short", "long", "u32", "u16", "impl", "item")

    def __init__(self, little: bool) -> None:
        e = "<" if little else ">"
        self.little = little
        self.tag = struct.Struct(e + "HH").unpack_from
        self.short = struct.Struct(e + "HH2sH")
        self.long = struct.Struct(e + "HH2s2xI")
        self.u32 = struct.Struct(e + "I").unpack_from
        self.u16 = struct.Struct(e + "H").unpack_from
        self.impl = struct.Struct(e + "HHI")
        self.item = struct.Struct(e + "HHI").pack

    def item_hdr(self, length: int) -> bytes:
        return self.item(0xFFFE, 0xE000, length)


LE, BE = Codec(True), Codec(False)
UNDEF = 0xFFFFFFFF


def pad(value: bytes, vr: bytes) -> bytes:
    if len(value) & 1:
        return value + (b"\0" if vr in (b"UI", b"OB", b"UN") else b" ")
    return value


def encode_element(tag: int, vr: bytes, value: bytes, codec: Codec, explicit: bool) -> bytes:
    g, e = tag >> 16, tag & 0xFFFF
    if not explicit:
        return codec.impl.pack(g, e, len(value)) + value
    if vr in LONG_VRS:
        return codec.long.pack(g, e, vr, len(value)) + value
    if len(value) > 0xFFFF:
        raise DeidError(f"{tagstr(tag)}: value too long for VR {vr.decode()}")
    return codec.short.pack(g, e, vr, len(value)) + value


# An element: (tag, vr or None, header start, value start, value end, undefined length)
El = tuple[int, bytes | None, int, int, int, bool]


def parse(buf: bytes, pos: int, end: int, codec: Codec, explicit: bool,
           in_item: bool = False) -> tuple[list[El], int]:
    """Element positions of one dataset level; stops after an item delimiter when ``in_item``."""
    elems: list[El] = []
    app = elems.append
    unpack_short = codec.short.unpack_from
    unpack_impl = codec.impl.unpack_from
    u32 = codec.u32
    vr_kind = _VR_KIND
    while pos < end:
        if pos + 8 > end:
            if in_item:
                raise DeidError("truncated item")
            if buf[pos:end].strip(b"\0"):
                raise DeidError(f"trailing garbage at byte {pos}")
            break
        if explicit:
            g, e, vr, length = unpack_short(buf, pos)
            if g == 0xFFFE:
                if e == 0xE00D and in_item:
                    return elems, pos + 8
                raise DeidError(f"unexpected (FFFE,{e:04X}) at byte {pos}")
            kind = vr_kind.get(vr)
            if kind == 1:
                if pos + 12 > end:
                    raise DeidError("truncated element header")
                length = u32(buf, pos + 8)[0]
                vstart = pos + 12
            elif kind is None:
                raise DeidError(f"invalid VR {vr!r} at byte {pos}")
            else:
                vstart = pos + 8
        else:
            g, e, length = unpack_impl(buf, pos)
            vr = None
            if g == 0xFFFE:
                if e == 0xE00D and in_item:
                    return elems, pos + 8
                raise DeidError(f"unexpected (FFFE,{e:04X}) at byte {pos}")
            vstart = pos + 8
        tag = (g << 16) | e
        if length == UNDEF:
            if explicit and vr == b"UN":
                vend = _skip_sequence(buf, vstart, end, LE, False)
            else:
                vend = _skip_sequence(buf, vstart, end, codec, explicit)
            app((tag, vr, pos, vstart, vend, True))
        else:
            vend = vstart + length
            if vend > end:
                raise DeidError(f"truncated value of {tagstr(tag)}")
            app((tag, vr, pos, vstart, vend, False))
        pos = vend
    if in_item:
        raise DeidError("missing item delimiter")
    return elems, pos


def _skip_sequence(buf: bytes, pos: int, end: int, codec: Codec, explicit: bool) -> int:
    """Position after the sequence delimiter of an undefined-length value (SQ, UN-SQ, encapsulated)."""
    tagu, u32 = codec.tag, codec.u32
    while pos + 8 <= end:
        g, e = tagu(buf, pos)
        length = u32(buf, pos + 4)[0]
        if g == 0xFFFE and e == 0xE0DD:
            return pos + 8
        if g != 0xFFFE or e != 0xE000:
            raise DeidError(f"malformed sequence at byte {pos}")
        if length == UNDEF:
            _, pos = parse(buf, pos + 8, end, codec, explicit, in_item=True)
        else:
            pos += 8 + length
            if pos > end:
                raise DeidError("truncated sequence item")
    raise DeidError("truncated sequence (no delimiter)")


def sequence_items(buf: bytes, el: El, codec: Codec, explicit: bool) -> list[list[El]]:
    """Parsed items of a sequence element."""
    start, end = el[3], (el[4] - 8 if el[5] else el[4])
    tagu, u32 = codec.tag, codec.u32
    items = []
    pos = start
    while pos + 8 <= end:
        g, e = tagu(buf, pos)
        length = u32(buf, pos + 4)[0]
        if g == 0xFFFE and e == 0xE0DD:  # delimiter inside a defined-length sequence: tolerated
            break
        if g != 0xFFFE or e != 0xE000:
            raise DeidError(f"malformed sequence item in {tagstr(el[0])}")
        if length == UNDEF:
            elems, pos = parse(buf, pos + 8, end, codec, explicit, in_item=True)
        else:
            if pos + 8 + length > end:
                raise DeidError(f"truncated item in {tagstr(el[0])}")
            elems, _ = parse(buf, pos + 8, pos + 8 + length, codec, explicit)
            pos += 8 + length
        items.append(elems)
    return items



def detect_encoding(buf: bytes, pos: int) -> tuple[Codec, bool]:
    """Transfer syntax guess for a dataset without file meta: explicit/implicit, little/big endian."""
    if len(buf) < pos + 8:
        raise DeidError("too short to be a DICOM dataset")
    vr = buf[pos + 4:pos + 6]
    group_le = LE.tag(buf, pos)[0]
    if vr in VALID_VRS:
        if group_le > 0x00FF and BE.tag(buf, pos)[0] <= 0x00FF:
            return BE, True
        return LE, True
    return LE, False


def read_meta(buf: bytes) -> tuple[int, dict[int, bytes], str | None]:
    """(dataset offset, meta values by tag, transfer syntax UID or None)."""
    if len(buf) >= 132 and buf[128:132] == b"DICM":
        pos = 132
    elif buf[:2] == b"\x02\x00" and buf[4:6] in VALID_VRS:
        pos = 0
    else:
        return 0, {}, None
    meta: dict[int, bytes] = {}
    end = len(buf)
    meta_end = None
    while pos + 8 <= end:
        g, e = LE.tag(buf, pos)
        if g != 0x0002 or (meta_end is not None and pos >= meta_end):
            break
        vr = buf[pos + 4:pos + 6]
        if vr in LONG_VRS:
            length = LE.u32(buf, pos + 8)[0]
            vstart = pos + 12
        elif vr in VALID_VRS:
            length = LE.u16(buf, pos + 6)[0]
            vstart = pos + 8
        else:  # implicit VR meta (non-conformant writers)
            length = LE.u32(buf, pos + 4)[0]
            vstart = pos + 8
        if length == UNDEF or vstart + length > end:
            raise DeidError("malformed file meta information")
        meta[(g << 16) | e] = buf[vstart:vstart + length]
        if e == 0 and length == 4:
            meta_end = vstart + 4 + LE.u32(buf, vstart)[0]
        pos = vstart + length
    ts = meta.get(0x00020010)
    return pos, meta, ts.decode("ascii", "replace").strip("\0 ") if ts else None
