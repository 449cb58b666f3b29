"""A statement as CSV (for the finance system) and as PDF (fpdf2, its core fonts: no files, no system packages).
Pure: no database or web imports."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from decimal import Decimal

from fpdf import FPDF

from ..text import spreadsheet_safe
from .pricing import Statement

CSV_COLUMNS = ("statement", "subject", "period_start", "period_end", "project", "kind", "item", "description",
               "line_start", "line_end", "quantity", "unit", "unit_price_sek", "basis", "amount_sek",
               "price_version")


def sek(amount: Decimal) -> str:
    """Swedish style: a space between thousands, a decimal comma (1 234 567,89)."""
    return f"{amount:,.2f}".replace(",", " ").replace(".", ",")


def to_csv(st: Statement, meta: Mapping[str, str]) -> str:
    """One row per line and a closing total row; amounts with a decimal point and no grouping, UTF-8."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    head = [meta.get("number", "draft"), meta["label"], meta["period_start"], meta["period_end"]]
    rows = [[*head, x.project, x.kind, x.item, x.description, x.start.isoformat(), x.end.isoformat(), x.quantity,
             x.unit, x.unit_price, x.basis, x.amount, x.price_version] for x in st.lines]
    rows.append([*head, "", "total", "", "Total (SEK, excluding VAT)", "", "", "", "", "", "", st.total, ""])
    w.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
    return out.getvalue()


def _latin1(text: str) -> str:
    """The PDF core fonts are Latin-1: other characters (dashes, quotes) become their nearest or '?'."""
    text = text.replace("\u2013", "-").replace("\u2014", "-").replace("\u2019", "'").replace("\u00a0", " ")
    return text.encode("latin-1", "replace").decode("latin-1")


def to_pdf(st: Statement, meta: Mapping[str, str], *, site: str = "Strongroom") -> bytes:
    pdf = FPDF(orientation="landscape", format="A4")
    pdf.set_creator(site)
    pdf.set_title(_latin1(f"Statement {meta.get('number', 'draft')}"))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("helvetica", "B", 15)
    number = meta.get("number")
    kind = "Credit note" if meta.get("credits") else "Statement"
    pdf.cell(0, 9, _latin1(f"{kind} {number}" if number else "Statement (draft, not issued)"),
             new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 10)
    rows = [("Subject", f"{meta['name']} ({meta['label']})"),
            ("Period", f"{meta['period_start']} to {meta['period_end']}")]
    if meta.get("customer"):
        rows.append(("Customer", f"{meta['customer']} {meta.get('org_number', '')}".strip()))
    if meta.get("invoice_ref"):
        rows.append(("Reference", meta["invoice_ref"]))
    if meta.get("credits"):
        rows.append(("Credits", meta["credits"]))
    for label, value in rows:
        pdf.cell(30, 6, _latin1(label))
        pdf.cell(0, 6, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    widths = (28, 100, 42, 28, 38, 38)
    with pdf.table(col_widths=widths, text_align=("LEFT", "LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT"),
                   first_row_as_headings=True, line_height=5, width=sum(widths)) as table:
        table.row(["Project", "Item", "Dates", "Quantity", "Unit price (SEK)", "Amount (SEK)"])
        for x in st.lines:
            table.row([_latin1(x.project), _latin1(x.description),
                       f"{x.start.isoformat()} - {x.end.isoformat()}", _latin1(f"{x.quantity} {x.unit}"),
                       sek(x.unit_price) if x.kind == "charge" else "", sek(x.amount)])
    pdf.ln(3)
    pdf.set_font("helvetica", "", 10)
    for label, amount in (("Subtotal", st.subtotal), ("Waivers and discounts", st.reductions)):
        pdf.cell(236, 6, label, align="R")
        pdf.cell(38, 6, sek(amount), align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "B", 11)
    pdf.cell(236, 7, "Total SEK (excluding VAT)", align="R")
    pdf.cell(38, 7, sek(st.total), align="R", new_x="LMARGIN", new_y="NEXT")
    if meta.get("checksum"):
        pdf.set_font("helvetica", "", 8)
        pdf.cell(0, 6, f"SHA-256 of the issued lines: {meta['checksum']}", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
