"""Rendered frames (WADO-RS ``/rendered``, ``/thumbnail``): native pixel data → windowed 8-bit PNG.

Pure (numpy and the catalogue's dependency-free PNG writer). The modality LUT (rescale slope and
intercept) and a VOI window are applied: the header's own, one the hub offers (``offered_windows``) or,
for a caller who may also download the bytes, any ``window=center,width``; MONOCHROME1 is inverted;
colour (RGB) is passed through.

**Why the window is the hub's choice for viewers.** An 8-bit picture under a window of width ``w`` tells
each stored value to within ``w / 256``; windows of width 256 moved in steps of 256 tell it exactly, so a
caller free to pick windows rebuilds any frame from a few dozen pictures (a 16-bit one from ~500). With
windows from a fixed set of ``k`` (``offered_windows``: at most ``HEADER_WINDOWS`` of the header's and the
modality's ``PRESETS``), every picture of a pixel is a step function of its value with at most 255 steps,
so all allowed pictures together split the value axis into at most ``255·k + 1`` intervals: the stored
values are not determined (a 12-bit CT frame has 4096, a 16-bit one 65536), only told to within the
windows' resolution — exactly where a window narrower than 256 shows them one grey level or more apart,
which is what looking at that window means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..catalog import png

Window = tuple[float, float]  # (center, width) of a linear VOI window


class NotRenderable(ValueError):
    pass


class Preset(NamedTuple):
    name: str
    label: str
    center: float
    width: float


# Named windows a viewer offers per modality (CT in Hounsfield units). With the header's own windows they
# are the only windows rendered for a caller who may not download (see the module's note).
PRESETS: dict[str, tuple[Preset, ...]] = {
    "CT": (Preset("soft-tissue", "Soft tissue", 40, 400), Preset("lung", "Lung", -600, 1500),
           Preset("bone", "Bone", 300, 1500), Preset("brain", "Brain", 40, 80)),
}
HEADER_WINDOWS = 4  # a header's multi-valued Window Center/Width: its first few pairs are offered


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
    windows: tuple[Window, ...]  # the header's VOI windows (Window Center/Width pairs), the first the default
    modality: str = ""

    @classmethod
    def from_header(cls, ds: Any) -> Pixels:
        centers, widths = _numbers(ds.get("WindowCenter")), _numbers(ds.get("WindowWidth"))
        windows = tuple((c, w) for c, w in zip(centers, widths, strict=False) if w > 0)[:HEADER_WINDOWS]
        return cls(rows=int(ds.Rows), columns=int(ds.Columns), samples=int(ds.get("SamplesPerPixel", 1)),
                   bits_allocated=int(ds.BitsAllocated), signed=bool(int(ds.get("PixelRepresentation", 0))),
                   photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
                   planar=int(ds.get("PlanarConfiguration", 0) or 0),
                   slope=float(ds.get("RescaleSlope", 1) or 1), intercept=float(ds.get("RescaleIntercept", 0) or 0),
                   windows=windows, modality=str(ds.get("Modality", "") or ""))


def _numbers(value: Any) -> list[float]:
    """A DS element's finite values, in order (a window may be multi-valued)."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    out = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            break
        if not math.isfinite(number):
            break
        out.append(number)
    return out


def parse_window(value: str | None) -> Window | None:
    """``center,width[,linear]`` (PS3.18 §8.3.5.1.4)."""
    if not value:
        return None
    parts = value.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise ValueError("window is center,width[,linear]") from None
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0 or (
            len(parts) > 2 and parts[2] not in ("linear", "")) or len(parts) > 3:
        raise ValueError("window width must be positive and the function linear")
    return center, width


def format_window(window: Window) -> str:
    """``center,width`` as the ``window`` parameter spells it (``-600,1500``)."""
    return f"{window[0]:g},{window[1]:g}"


def offered_windows(pixels: Pixels) -> dict[str, Window]:
    """The windows the hub renders for anyone who may read: the header's (``header``, ``header-2``…) and
    the presets of the image's modality, by name. Colour is shown as stored, so it is offered no window."""
    if pixels.samples != 1:
        return {}
    out = {("header" if n == 0 else f"header-{n + 1}"): w for n, w in enumerate(pixels.windows)}
    for p in PRESETS.get(pixels.modality.upper(), ()):
        out.setdefault(p.name, (float(p.center), float(p.width)))
    return out


def window_name(window: Window | None, pixels: Pixels) -> str | None:
    """Which window a rendering uses, by name: ``header`` for none asked (``full-range`` without a header
    window, ``as-stored`` for colour), an offered window's name, or None for a window the hub does not offer."""
    if window is None:
        return "as-stored" if pixels.samples != 1 else "header" if pixels.windows else "full-range"
    return next((name for name, w in offered_windows(pixels).items() if w == window), None)


def to_png(frame: bytes, pixels: Pixels, *, window: Window | None = None, max_side: int | None = None) -> bytes:
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
    center, width = window or (pixels.windows[0] if pixels.windows else _full_range(values))
    low = center - 0.5 - (width - 1) / 2  # PS3.3 C.11.2.1.2.1: the linear VOI function
    scaled = np.clip((values - low) / max(width - 1, 1) * 255.0, 0, 255)
    if pixels.photometric == "MONOCHROME1":
        scaled = 255 - scaled
    grey = _shrink(scaled.astype(np.uint8), max_side)
    return png.write(grey.shape[1], grey.shape[0], [bytes(r) for r in grey])


def _full_range(values: np.ndarray) -> Window:
    lo, hi = float(values.min()), float(values.max())
    return (lo + hi) / 2 + 0.5, max(hi - lo + 1, 2.0)


def _shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    if not max_side:
        return image
    step = max(1, -(-max(image.shape[0], image.shape[1]) // max_side))
    return np.ascontiguousarray(image[::step, ::step])
