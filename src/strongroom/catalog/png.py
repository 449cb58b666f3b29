"""PNG without dependencies (pure engine): write 8-bit images, and clean uploaded thumbnails.

``clean`` parses every chunk, checks the CRCs and keeps only what is needed to draw the picture:
text, EXIF, time and private chunks (which can carry names, dates or device ids) are dropped, so a
sample image shown to the public carries pixels only.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from dataclasses import dataclass

SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEEP = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"gAMA", b"sRGB"}


class BadPng(ValueError):
    pass


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int
    data: bytes  # the cleaned file


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def write(width: int, height: int, rows: list[bytes], *, color: bool = False) -> bytes:
    """A PNG from raw rows: 8-bit greyscale (one byte per pixel) or RGB (three)."""
    channels = 3 if color else 1
    if len(rows) != height or any(len(r) != width * channels for r in rows):
        raise ValueError("rows do not match the size")
    raw = b"".join(b"\x00" + r for r in rows)  # filter type 0 on every row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if color else 0, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def clean(data: bytes, *, max_side: int = 2048) -> PngInfo:
    """Validate a PNG and return it with only the drawing chunks kept."""
    if not data.startswith(SIGNATURE):
        raise BadPng("not a PNG file")
    pos, out, width, height, seen_end, has_data = len(SIGNATURE), [SIGNATURE], 0, 0, False, False
    while pos < len(data):
        if pos + 8 > len(data):
            raise BadPng("truncated PNG")
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise BadPng("truncated PNG")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise BadPng(f"bad checksum in the {kind.decode('latin-1')!r} chunk")
        if pos == len(SIGNATURE):
            if kind != b"IHDR" or length != 13:
                raise BadPng("the PNG does not start with its header")
            width, height = struct.unpack(">II", body[:8])
        if kind in KEEP:
            out.append(data[pos:pos + 12 + length])
        has_data = has_data or kind == b"IDAT"
        pos += 12 + length
        if kind == b"IEND":
            seen_end = True
            break
    if not seen_end or not has_data:
        raise BadPng("incomplete PNG (no image data or no end)")
    if not (0 < width <= max_side and 0 < height <= max_side):
        raise BadPng(f"thumbnails may be at most {max_side}×{max_side} pixels")
    return PngInfo(width, height, b"".join(out))


# -- synthetic pictures (demo data and the fallback share card) ----------------------------------
def synthetic_ct_slice(seed: int, size: int = 256, z: float = 0.5) -> bytes:
    """A CT-like axial chest slice of nobody: body outline, lungs with vessels, spine, a nodule.

    ``z`` (0..1) moves through the chest; ``seed`` varies anatomy and noise. Pure arithmetic, no
    patient data was ever involved."""
    rnd = random.Random(seed)
    c = size / 2
    body_a, body_b = size * (0.42 + rnd.uniform(-0.02, 0.02)), size * (0.30 + rnd.uniform(-0.02, 0.02))
    lung_scale = 0.75 + 0.5 * math.sin(math.pi * min(max(z, 0.05), 0.95))
    lung_a, lung_b = size * 0.13 * lung_scale, size * 0.19 * lung_scale
    lung_dx, lung_cy = size * 0.17, c - size * 0.02
    spine = (c, c + size * 0.2, size * 0.055)
    nodule = (c + lung_dx + rnd.uniform(-0.4, 0.4) * lung_a, lung_cy + rnd.uniform(-0.4, 0.4) * lung_b,
              size * (0.012 + 0.018 * rnd.random()))
    vessels = [(c + s * lung_dx + rnd.uniform(-0.7, 0.7) * lung_a, lung_cy + rnd.uniform(-0.7, 0.7) * lung_b,
                size * rnd.uniform(0.004, 0.01)) for s in (-1, 1) for _ in range(14)]
    rows = []
    for y in range(size):
        row = bytearray(size)
        for x in range(size):
            v = 8.0  # air outside the body
            bx, by = (x - c) / body_a, (y - c - size * 0.03) / body_b
            r_body = bx * bx + by * by
            if r_body <= 1.0:
                v = 150.0 if r_body > 0.86 else 112.0  # fat/muscle ring, soft tissue inside
                for side in (-1, 1):
                    lx, ly = (x - c - side * lung_dx) / lung_a, (y - lung_cy) / lung_b
                    if lx * lx + ly * ly <= 1.0:
                        v = 22.0
                        for vx, vy, vr in vessels:
                            if (x - vx) ** 2 + (y - vy) ** 2 <= vr * vr:
                                v = 95.0
                if (x - spine[0]) ** 2 + (y - spine[1]) ** 2 <= spine[2] ** 2:
                    v = 235.0
                if (x - nodule[0]) ** 2 + (y - nodule[1]) ** 2 <= nodule[2] ** 2:
                    v = 120.0
            elif y > c + body_b + size * 0.08 and abs(y - (c + body_b + size * 0.1)) < size * 0.012:
                v = 70.0  # the scanner table
            v += rnd.gauss(0, 4.0)
            row[x] = max(0, min(255, int(v)))
        rows.append(bytes(row))
    return write(size, size, rows)


def share_card(width: int = 600, height: int = 315) -> bytes:
    """A plain branded picture for link previews of entries without sample images."""
    top, bottom = (31, 78, 121), (23, 32, 42)
    rows = []
    for y in range(height):
        t = y / (height - 1)
        rgb = bytes(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        line = bytearray(rgb * width)
        if height * 0.45 < y < height * 0.55:  # a light band: "a strongroom door"
            for x in range(int(width * 0.1), int(width * 0.9)):
                line[3 * x:3 * x + 3] = b"\xe8\xee\xf5"
        rows.append(bytes(line))
    return write(width, height, rows, color=True)
