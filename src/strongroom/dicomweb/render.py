"""Rendered frames (WADO-RS ``/rendered``, ``/thumbnail``): native pixel data → windowed 8-bit PNG.

Pure (numpy and the catalogue's dependency-free PNG writer). The modality LUT (rescale slope and
intercept) and the VOI window of the header are applied, or the window the caller asks for
(``window=center,width``); MONOCHROME1 is inverted; colour (RGB) is passed through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..catalog import png


class NotRenderable(ValueError):
    pass


@dataclass(frozen=True)
class Pixels:
    """What decoding a native frame needs, read from the header."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    signed: bool
    photometric: str
    planar: int
    slope: float
    intercept: float
    window: tuple[float, float] | None

    @classmethod
    def from_header(cls, ds: Any) -> Pixels:
        def first(value: Any) -> float | None:  # a window may be multi-valued: the first is the default
            if value is None or value == "":
                return None
            return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)

        center, width = first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))
        return cls(rows=int(ds.Rows), columns=int(ds.Columns), samples=int(ds.get("SamplesPerPixel", 1)),
                   bits_allocated=int(ds.BitsAllocated), signed=bool(int(ds.get("PixelRepresentation", 0))),
                   photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
                   planar=int(ds.get("PlanarConfiguration", 0) or 0),
                   slope=float(ds.get("RescaleSlope", 1) or 1), intercept=float(ds.get("RescaleIntercept", 0) or 0),
                   window=(center, width) if center is not None and width else None)


def parse_window(value: str | None) -> tuple[float, float] | None:
    """``center,width[,linear]`` (PS3.18 §8.3.5.1.4)."""
    if not value:
        return None
    parts = value.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise ValueError("window is center,width[,linear]") from None
    if width <= 0 or (len(parts) > 2 and parts[2] not in ("linear", "")):
        raise ValueError("window width must be positive and the function linear")
    return center, width


def to_png(frame: bytes, pixels: Pixels, *, window: tuple[float, float] | None = None,
           max_side: int | None = None) -> bytes:
    """One native frame as an 8-bit PNG (greyscale, or RGB), optionally shrunk to ``max_side``."""
    if pixels.bits_allocated not in (8, 16, 32):
        raise NotRenderable(f"{pixels.bits_allocated}-bit pixels are not rendered")
    dtype = np.dtype(f"{'i' if pixels.signed else 'u'}{pixels.bits_allocated // 8}").newbyteorder("<")
    count = pixels.rows * pixels.columns * pixels.samples
    if len(frame) < count * dtype.itemsize:
        raise NotRenderable("the frame is shorter than its rows, columns and samples say")
    data = np.frombuffer(frame, dtype=dtype, count=count)
    if pixels.samples == 3:
        if pixels.photometric != "RGB" or pixels.bits_allocated != 8:
            raise NotRenderable(f"{pixels.photometric} colour is not rendered")
        shape = (3, pixels.rows, pixels.columns) if pixels.planar else (pixels.rows, pixels.columns, 3)
        rgb = data.reshape(shape)
        rgb = np.moveaxis(rgb, 0, -1) if pixels.planar else rgb
        rgb = _shrink(rgb, max_side)
        return png.write(rgb.shape[1], rgb.shape[0], [bytes(r) for r in rgb.astype(np.uint8)], color=True)
    if pixels.samples != 1:
        raise NotRenderable(f"{pixels.samples} samples per pixel are not rendered")
    values = data.reshape(pixels.rows, pixels.columns).astype(np.float64) * pixels.slope + pixels.intercept
    center, width = window or pixels.window or _full_range(values)
    low = center - 0.5 - (width - 1) / 2  # PS3.3 C.11.2.1.2.1: the linear VOI function
    scaled = np.clip((values - low) / max(width - 1, 1) * 255.0, 0, 255)
    if pixels.photometric == "MONOCHROME1":
        scaled = 255 - scaled
    grey = _shrink(scaled.astype(np.uint8), max_side)
    return png.write(grey.shape[1], grey.shape[0], [bytes(r) for r in grey])


def _full_range(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    return (lo + hi) / 2 + 0.5, max(hi - lo + 1, 2.0)


def _shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    if not max_side:
        return image
    step = max(1, -(-max(image.shape[0], image.shape[1]) // max_side))
    return np.ascontiguousarray(image[::step, ::step])
