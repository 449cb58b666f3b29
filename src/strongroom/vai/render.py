"""A released report as inline SVG plots (ROC curve, reliability diagram), a table of figures with CIs and
a PDF (fpdf2, core fonts, the plots embedded as SVG). Pure: no database or web imports, no third-party assets."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from fpdf import FPDF

W, H, PAD = 320, 320, 44


def _xy(x: float, y: float) -> tuple[float, float]:
    return PAD + x * (W - PAD - 12), H - PAD - y * (H - PAD - 12)


def _axes(title: str, xlabel: str, ylabel: str) -> list[str]:
    x0, y0 = _xy(0, 0)
    x1, y1 = _xy(1, 1)
    out = [f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="#fff" stroke="#444"/>',
           f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#999" stroke-dasharray="4 3"/>']
    for t in (0, 0.25, 0.5, 0.75, 1):
        tx, _ = _xy(t, 0)
        _, ty = _xy(0, t)
        out.append(f'<text x="{tx}" y="{y0 + 14}" font-size="10" text-anchor="middle">{t:g}</text>')
        out.append(f'<text x="{x0 - 6}" y="{ty + 3}" font-size="10" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{(x0 + x1) / 2}" y="{H - 8}" font-size="11" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{(y0 + y1) / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 12 {(y0 + y1) / 2})">{escape(ylabel)}</text>')
    out.append(f'<text x="{(x0 + x1) / 2}" y="{y1 - 2}" font-size="0">{escape(title)}</text>')
    return out


def _svg(title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'role="img" aria-label="{escape(title)}" font-family="Helvetica, Arial, sans-serif">'
            f'<title>{escape(title)}</title>' + "".join(body) + "</svg>")


def roc_svg(points: Sequence[Sequence[float]], auc: Mapping[str, Any] | None) -> str:
    """The ROC curve (FPR on x, TPR on y) from the released grid of points."""
    body = _axes("ROC curve", "1 - specificity (false positive rate)", "sensitivity")
    if len(points) > 2:  # a released curve may be its two ends only: no point without small cells
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (_xy(px, py) for px, py in points))
        body.append(f'<polyline points="{path}" fill="none" stroke="#1f5fa8" stroke-width="2.2"/>')
    elif auc:
        body.append(f'<text x="{W / 2}" y="{H / 2}" font-size="11" text-anchor="middle">no point without a small '
                    'cell</text>')
    if auc:
        body.append(f'<text x="{W - 20}" y="{H - PAD - 10}" font-size="12" text-anchor="end">'
                    f'AUC {auc["auc"]:.3f} ({auc["low"]:.3f}–{auc["high"]:.3f})</text>')
    else:
        body.append(f'<text x="{W / 2}" y="{H / 2}" font-size="12" text-anchor="middle">suppressed</text>')
    return _svg("ROC curve", body)


def calibration_svg(bins: Sequence[Mapping[str, Any]]) -> str:
    """Reliability diagram: observed fraction of positives against the mean predicted probability per bin."""
    body = _axes("Calibration", "mean predicted probability", "observed fraction positive")
    pts = [_xy(b["mean_predicted"], b["observed"]) for b in bins]
    if len(pts) > 1:
        body.append('<polyline points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                    + '" fill="none" stroke="#b5541b" stroke-width="1.6"/>')
    for (x, y), b in zip(pts, bins, strict=True):
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#b5541b"><title>n = {b["n"]}</title></circle>')
    if not pts:
        body.append(f'<text x="{W / 2}" y="{H / 2}" font-size="12" text-anchor="middle">suppressed</text>')
    return _svg("Calibration", body)


def ci(value: Mapping[str, Any] | None, key: str = "value") -> str:
    """``0.912 (0.874–0.952)`` or ``suppressed``."""
    if not value or value.get(key) is None:
        return "suppressed"
    return f"{value[key]:.3f} ({value['low']:.3f}–{value['high']:.3f})"


def rows(block: Mapping[str, Any]) -> list[list[str]]:
    """The figures of one block (overall or a subgroup level) as table rows."""
    def count(v: Any) -> str:
        return "<11" if v is None else str(v)

    auc = block.get("auc")
    out = [["Cases (positive / negative)", f"{count(block['n'])} ({count(block['positives'])} / "
                                           f"{count(block['negatives'])})"]]
    if auc and "noise_scale" in auc:  # as released: noised, its CI includes the noise
        d = _decimals(auc["grid"])
        out.append([f"AUC, 95 % CI (release noise of scale {auc['noise_scale']:g} included)",
                    f"{auc['auc']:.{d}f} ({auc['low']:.{d}f}–{auc['high']:.{d}f})"])
    else:
        out += [["AUC, DeLong 95 % CI", ci(auc, "auc")],
                ["AUC, bootstrap 95 % CI", f"{auc['auc']:.3f} ({auc['bootstrap_low']:.3f}–{auc['bootstrap_high']:.3f})"
                 if auc and "bootstrap_low" in auc else "suppressed" if not auc else "not computed"]]
    if block.get("degenerate"):
        out.append(["Scores", f"{block['degenerate']}: AUC and Brier score withheld"])
    for p in block.get("operating_points", []):
        at = f"At {p['name']}" + (f" (threshold {p['threshold']:.3g})" if p.get("threshold") is not None else "")
        if p.get("suppressed"):
            out.append([at, "suppressed (small cells, or what they could be worked back from)"])
            continue
        for k, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV"),
                         ("npv", "NPV")):
            out.append([f"{at}: {label}", ci(p[k])])
    cal = block.get("calibration")
    if cal:
        out.append(["Brier score", "suppressed" if cal.get("brier") is None else f"{cal['brier']:.4f}"])
        out.append(["Expected calibration error", "suppressed" if cal.get("ece") is None else f"{cal['ece']:.4f}"])
    return out


def _decimals(step: float) -> int:
    """The decimals a figure released on a grid of ``step`` is shown with (0.005: 3)."""
    return max(0, -math.floor(math.log10(step) + 1e-9))


def _latin1(text: str) -> str:
    for a, b in (("\u2013", "-"), ("\u2014", "-"), ("\u2019", "'"), ("\u2265", ">="), ("\u2026", "..."),
                 ("\u00a0", " "), ("\u00d7", "x")):
        text = text.replace(a, b)
    return text.encode("latin-1", "replace").decode("latin-1")


def to_pdf(report: Mapping[str, Any], *, site: str = "Strongroom", sha256: str = "") -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_creator(site)
    pdf.set_title(_latin1(f"VAI report: {report['model']['name']} {report['model']['version']}"))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("helvetica", "B", 14)
    model = report["model"]
    pdf.multi_cell(0, 7, _latin1(f"{model['name']} {model['version']} ({model['vendor']}) at {report['clinic']}"),
                   new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 9)
    pdf.multi_cell(0, 5, _latin1(f"{report['title']}. Aggregate figures only; every count under "
                                 f"{report['min_cell']} is suppressed."), new_x="LMARGIN", new_y="NEXT")
    m = report["metrics"]
    y = pdf.get_y() + 2
    pdf.image(_for_pdf(roc_svg(m.get("roc", []), m.get("auc"))), x=15, y=y, w=85)
    if m.get("calibration"):
        pdf.image(_for_pdf(calibration_svg(m["calibration"]["bins"])), x=110, y=y, w=85)
    pdf.set_y(y + 90)
    _table(pdf, "Overall", rows(m))
    for column, group in m.get("subgroups", {}).items():
        for level in group["levels"]:
            _table(pdf, f"{column} = {level['level']}", rows(level))
        if group["hidden_levels"]:
            pdf.set_font("helvetica", "I", 8)
            pdf.cell(0, 5, _latin1(f"{column}: {group['hidden_levels']} level(s) hidden (small cells)"),
                     new_x="LMARGIN", new_y="NEXT")
    pdf.add_page()
    pdf.set_font("helvetica", "B", 12)
    pdf.cell(0, 7, "Reporting checklist (CLAIM / TRIPOD-AI items filled by the platform)", new_x="LMARGIN",
             new_y="NEXT")
    pdf.set_font("helvetica", "", 8)
    with pdf.table(col_widths=(40, 30, 110), first_row_as_headings=True, line_height=4) as table:
        table.row(["Item", "Reference", "Value"])
        for item in report["checklist"]:
            table.row([_latin1(item["item"]), _latin1(item["ref"]), _latin1(item["value"])])
    if sha256:
        pdf.ln(3)
        pdf.cell(0, 5, f"SHA-256 of the released report: {sha256}", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _for_pdf(svg: str) -> io.BytesIO:
    """The page's SVG for fpdf2: core-font characters only, no <title> elements (fpdf2 ignores them)."""
    return io.BytesIO(_latin1(re.sub(r"<title>.*?</title>", "", svg)).encode("latin-1"))


def _table(pdf: FPDF, title: str, body: list[list[str]]) -> None:
    pdf.set_font("helvetica", "B", 10)
    pdf.cell(0, 6, _latin1(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 8)
    with pdf.table(col_widths=(110, 70), first_row_as_headings=False, line_height=4.5) as table:
        for label, value in body:
            table.row([_latin1(label), _latin1(value)])
    pdf.ln(2)
