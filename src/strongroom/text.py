"""Small formatting helpers shared by pages, JSON-LD and the CLI."""

from __future__ import annotations

from urllib.parse import quote


def human_bytes(n: int) -> str:
    """Decimal units, as storage is sold: 1.5 TB, 730.2 MB, 12 B."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


# RFC 5987 attr-char: what may stand unescaped in a filename*= value.
_ATTR_CHARS = "!#$&+-.^_`|~"


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """A Content-Disposition header value (RFC 6266) for any file name.

    Headers are Latin-1 and a quote, CR or LF would end the value or the header, so the name is
    sent twice: an ASCII `filename=` fallback with anything risky replaced, and the exact name as
    UTF-8 in `filename*=` for every current client. Control characters and path separators are
    dropped from both: a name is never a path.
    """
    name = "".join("_" if ch in "/\\" else ch for ch in filename if ch.isprintable()) or "download"
    fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\%' else "_" for ch in name)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe=_ATTR_CHARS)}"


# What a spreadsheet reads as the start of a formula (OWASP "CSV injection"); tab and CR too, which some strip.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text, never runs as a formula: a string that starts like one
    (a title typed by a steward, a customer's name) gets a leading apostrophe. Numbers — a negative amount
    included — and everything else pass unchanged, so the figures stay figures."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    try:
        float(value.replace(",", "."))
    except ValueError:
        return "'" + value
    return value
