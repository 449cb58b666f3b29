"""The verification report as JSON and as a page: figures, failed checks, the offending groups and a
chart of equivalence-class sizes (inline SVG: no script, nothing fetched, works offline)."""

from __future__ import annotations

import json
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

_env = Environment(loader=PackageLoader("strongroom.strategies", "templates"),
                   autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def bar_chart(counts: dict[str, int], *, width: int = 560, bar_height: int = 22) -> dict[str, Any]:
    """Geometry of a horizontal bar chart (the template draws it as SVG)."""
    peak = max(counts.values(), default=0) or 1
    label_w, value_w = 70, 70
    span = width - label_w - value_w
    bars = [{"label": label, "value": value, "y": i * (bar_height + 6), "w": round(span * value / peak, 1),
             "x": label_w, "text_x": label_w + round(span * value / peak, 1) + 6}
            for i, (label, value) in enumerate(counts.items())]
    return {"width": width, "height": len(bars) * (bar_height + 6), "bar_height": bar_height, "bars": bars}


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"


def to_html(report: dict[str, Any], *, standalone: bool = True) -> str:
    """The report as an HTML document (standalone: own minimal styles) or fragment (inside a hub page)."""
    return _env.get_template("strategy_report.html").render(
        report=report, chart=bar_chart(report.get("class_sizes") or {}), standalone=standalone)
