"""Small formatting helpers shared by pages, JSON-LD and the CLI."""

from __future__ import annotations

import re
from urllib.parse import quote

from rich.markup import escape


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


# What a terminal obeys rather than shows: C0 controls (ESC starts CSI/OSC sequences: colours, cursor moves that
# overwrite earlier lines, OSC 8 links, OSC 52 clipboard writes; BEL; CR), DEL, C1 controls (0x9b is a one-byte
# CSI) and the bidirectional overrides and isolates that reorder what is shown.
_TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_LAYOUT = re.compile("[\t\n]")


def for_terminal(value: object, *, multiline: bool = False) -> str:
    """A value from a hub's answer or a stored field (a name, a title, a path, an error's detail) as Rich markup
    that prints as exactly its visible text: terminal controls dropped, tab and newline kept only for ``multiline``
    text (else a space, so a name cannot fake a line of its own), square brackets escaped so ``[link=…]`` shows
    literally. None is empty."""
    text = _TERMINAL_CONTROLS.sub("", "" if value is None else str(value))
    return escape(text if multiline else _LAYOUT.sub(" ", text))
