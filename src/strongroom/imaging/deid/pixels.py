"""Pixel rules: rectangles blanked in the native pixel data of matching instances (never re-encoded)."""

from __future__ import annotations

from collections.abc import Iterable

from .encoding import Codec, El
from .profile import PixelRule

_ROWS, _COLUMNS, _BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280100
_SAMPLES_PER_PIXEL, _PLANAR_CONFIGURATION, _NUMBER_OF_FRAMES = 0x00280002, 0x00280006, 0x00280008


def _us(mv: memoryview, idx: dict[int, El], codec: Codec, tag: int, default: int) -> int:
    e = idx.get(tag)
    return codec.u16(mv, e[3])[0] if e and e[4] - e[3] >= 2 else default


def matching_rule(rules: Iterable[PixelRule], mv: memoryview, idx: dict[int, El], codec: Codec,
                  manufacturer: str, model: str, modality: str) -> PixelRule | None:
    """The first rule that matches the instance (only one rule is applied)."""
    rows, cols = _us(mv, idx, codec, _ROWS, 0), _us(mv, idx, codec, _COLUMNS, 0)
    return next((rule for rule in rules if rule.matches(manufacturer, model, modality, rows, cols)), None)


def blank(mv: memoryview, el: El, idx: dict[int, El], codec: Codec, rule: PixelRule,
          misses: list[str]) -> bytes | None:
    """The pixel data ``el`` with the rule's rectangles zeroed in every frame and sample, or None (a rule
    miss appended to ``misses``) when the layout cannot be blanked without decoding."""
    if el[5]:
        misses.append(f"pixel rule {rule.name!r}: encapsulated pixel data cannot be blanked without re-encoding")
        return None
    rows, cols, bits = _us(mv, idx, codec, _ROWS, 0), _us(mv, idx, codec, _COLUMNS, 0), \
        _us(mv, idx, codec, _BITS_ALLOCATED, 0)
    spp, planar = _us(mv, idx, codec, _SAMPLES_PER_PIXEL, 1), _us(mv, idx, codec, _PLANAR_CONFIGURATION, 0)
    frames_el = idx.get(_NUMBER_OF_FRAMES)
    try:
        frames = int(bytes(mv[frames_el[3]:frames_el[4]]).strip(b"\0 ") or 1) if frames_el else 1
    except ValueError:
        frames = 1
    if not rows or not cols or bits % 8 or not bits:
        misses.append(f"pixel rule {rule.name!r}: unsupported pixel layout (BitsAllocated {bits})")
        return None
    bpp = bits // 8
    frame_size = rows * cols * spp * bpp
    data = bytearray(mv[el[3]:el[4]])
    if len(data) < frame_size * frames:
        misses.append(f"pixel rule {rule.name!r}: pixel data shorter than the image size")
        return None
    planes = [(p * rows * cols * bpp, bpp) for p in range(spp)] if planar and spp > 1 else [(0, spp * bpp)]
    for x, y, w, h in rule.rectangles:
        x0, y0, x1, y1 = max(0, x), max(0, y), min(cols, x + w), min(rows, y + h)
        if x0 >= x1 or y0 >= y1:
            continue
        for f in range(frames):
            for plane_off, stride in planes:
                base = f * frame_size + plane_off
                zeros = bytes((x1 - x0) * stride)
                for row in range(y0, y1):
                    start = base + (row * cols + x0) * stride
                    data[start:start + len(zeros)] = zeros
    return bytes(data)
