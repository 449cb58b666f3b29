"""Server-side SVG charts (pure: strings in, an SVG string out). No script, no style sheet and no inline
``style``: shapes are drawn with presentation attributes only, so the pages pass the hub's CSP
(``style-src 'self'``) and read the same without JavaScript. Each chart has a <title> and a <desc>
that says in words what it shows; the page puts the numbers in a table next to it as well.

A suppressed count (``"< 5"``) is drawn as a dashed outline up to 5: "somewhere below five". A withheld one
(``"withheld"``, hidden so that a total cannot give a small one back) is not drawn at all: it could be any
size, so any bar would mislead; its label says "withheld".
"""

from __future__ import annotations

from html import escape

from .figures import SMALL, SUPPRESSED, WITHHELD, Count

WIDTH = 640
INK, BAR, LIGHT, GRID = "#1f2933", "#2f6f9f", "#9fc3de", "#d9e2ec"
FONT = 'font-family="system-ui, sans-serif"'


def _value(v: Count) -> float:
    """How tall to draw a value: "< 5" up to the threshold, a withheld one not at all."""
    return float(SMALL if v == SUPPRESSED else 0 if v == WITHHELD else v)


def _nice_max(top: float) -> float:
    """The axis end: 1, 2 or 5 times a power of ten, at least the largest value."""
    if top <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= top:
        step *= 10
    for m in (1, 2, 5, 10):
        if m * step >= top:
            return m * step
    return 10 * step


def _number(v: float) -> str:
    return f"{v:,.0f}" if v >= 1 or v == 0 else f"{v:g}"


def _open(chart_id: str, title: str, desc: str, height: int) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" width="100%" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-labelledby="{escape(chart_id)}-t {escape(chart_id)}-d">',
            f'<title id="{escape(chart_id)}-t">{escape(title)}</title>',
            f'<desc id="{escape(chart_id)}-d">{escape(desc)}</desc>']


def _grid(top_value: float, left: int, right: int, top: int, plot_h: int) -> list[str]:
    """Four horizontal grid lines with their values on the y axis."""
    out = []
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" x2="{WIDTH - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(top_value * i / 4)}</text>')
    return out


def _bar(x: float, y: float, w: float, h: float, value: Count, colour: str = BAR) -> str:
    if value == WITHHELD:
        return ""
    if isinstance(value, str):  # suppressed: an outline up to the threshold
        return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="none" stroke="{colour}" '
                f'stroke-dasharray="3 2" class="chart-suppressed"/>')
    return f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{colour}" class="chart-bar"/>'


def columns(chart_id: str, title: str, points: list[tuple[str, Count]], *, unit: str = "") -> str:
    """Vertical bars over time (``points``: (month, value)), with a y axis and every few months named."""
    height, left, right, top, bottom = 240, 56, 12, 16, 40
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    top_value = _nice_max(max((_value(v) for _, v in points), default=0))
    total = sum(v for _, v in points if isinstance(v, int))
    withheld = sum(1 for _, v in points if v == WITHHELD)
    desc = (f"{len(points)} months from {points[0][0]} to {points[-1][0]}; largest month shown "
            f"{max(points, key=lambda p: _value(p[1]))[0]}; {total:,} {unit} in months with five or more"
            + (f"; {withheld} months withheld (not drawn)." if withheld else ".")
            if points else "No data yet.")
    out = _open(chart_id, title, desc, height)
    out.append(f'<g {FONT} font-size="13" fill="{INK}">')
    out.extend(_grid(top_value, left, right, top, plot_h))
    if points:
        slot = plot_w / len(points)
        width = min(48.0, max(1.0, slot * 0.7))
        every = max(1, len(points) // 8)
        for i, (label, v) in enumerate(points):
            h = plot_h * _value(v) / top_value
            x = left + i * slot + (slot - width) / 2
            out.append(f'<g><title>{escape(label)}: {escape(str(v))}</title>'
                       f'{_bar(x, top + plot_h - h, width, h, v)}</g>')
            if i % every == 0 or i == len(points) - 1:
                out.append(f'<text x="{x + width / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle">'
                           f'{escape(label)}</text>')
    else:
        out.append(f'<text x="{WIDTH / 2}" y="{top + plot_h / 2}" text-anchor="middle">No data yet</text>')
    out.append(f'<line x1="{left}" x2="{WIDTH - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="{INK}"/>')
    out.append("</g></svg>")
    return "".join(out)


def line(chart_id: str, title: str, points: list[tuple[str, int]], *, unit: str = "") -> str:
    """A running total over time (``points``: (month, total so far)) as a filled line."""
    height, left, right, top, bottom = 220, 56, 12, 16, 40
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    top_value = _nice_max(max((v for _, v in points), default=0))
    desc = (f"From {points[0][1]:,} {unit} in {points[0][0]} to {points[-1][1]:,} in {points[-1][0]}."
            if points else "No data yet.")
    out = _open(chart_id, title, desc, height)
    out.append(f'<g {FONT} font-size="13" fill="{INK}">')
    out.extend(_grid(top_value, left, right, top, plot_h))
    if points:
        step = plot_w / max(1, len(points) - 1)
        xy = [(left + (i * step if len(points) > 1 else plot_w / 2), top + plot_h - plot_h * v / top_value)
              for i, (_, v) in enumerate(points)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        out.append(f'<polygon points="{xy[0][0]:.1f},{top + plot_h} {path} {xy[-1][0]:.1f},{top + plot_h}" '
                   f'fill="{LIGHT}" class="chart-area"/>')
        out.append(f'<polyline points="{path}" fill="none" stroke="{BAR}" stroke-width="2" class="chart-line"/>')
        every = max(1, len(points) // 8)
        for i, (label, _) in enumerate(points):
            if i % every == 0 or i == len(points) - 1:
                anchor = "start" if i == 0 else "end" if i == len(points) - 1 else "middle"  # inside the frame
                out.append(f'<text x="{xy[i][0]:.1f}" y="{height - bottom + 16}" text-anchor="{anchor}">'
                           f'{escape(label)}</text>')
    else:
        out.append(f'<text x="{WIDTH / 2}" y="{top + plot_h / 2}" text-anchor="middle">No data yet</text>')
    out.append("</g></svg>")
    return "".join(out)


def bars(chart_id: str, title: str, items: list[tuple[str, Count]], *, unit: str = "") -> str:
    """Horizontal bars, one per item, in the order given (``items``: (label, value))."""
    row, left, right, top = 26, 250, 70, 8
    height = top * 2 + row * max(1, len(items))
    plot_w = WIDTH - left - right
    top_value = _nice_max(max((_value(v) for _, v in items), default=0))
    desc = ("; ".join(f"{label}: {v} {unit}".strip() for label, v in items[:12])
            + ("; …" if len(items) > 12 else "")) if items else "No data yet."
    out = _open(chart_id, title, desc, height)
    out.append(f'<g {FONT} font-size="14" fill="{INK}">')
    for i, (label, v) in enumerate(items):
        y = top + i * row
        w = plot_w * _value(v) / top_value
        short = label if len(label) <= 30 else label[:29] + "…"
        out.append(f'<text x="{left - 8}" y="{y + 18}" text-anchor="end">{escape(short)}</text>')
        out.append(_bar(left, y + 3, w, row - 6, v))
        text = v if isinstance(v, str) else f"{v:,}"
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + 18}">{escape(text)}</text>')
    if not items:
        out.append(f'<text x="{WIDTH / 2}" y="{top + 14}" text-anchor="middle">No data yet</text>')
    out.append("</g></svg>")
    return "".join(out)
