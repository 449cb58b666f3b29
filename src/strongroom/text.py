"""Small formatting helpers shared by pages, JSON-LD and the CLI."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    """Decimal units, as storage is sold: 1.5 TB, 730.2 MB, 12 B."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
