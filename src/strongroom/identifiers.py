"""Direct identifiers recognised by their shape, in any text: Swedish personnummer and
samordningsnummer (a real date and the Luhn digit), e-mail addresses and telephone numbers.

Pure functions shared by the DICOM verification and the tabular strategy verification, so both
answer the same question the same way.
"""

from __future__ import annotations

import re

# The separators written between date and number: '-', '+' (100 years or older), the Unicode dashes word
# processors substitute (U+2010-U+2015, U+2212) and one space (or the no-break space Word puts there) — and,
# as typed by hand, one or two punctuation characters, a space either side ("121212 - 1212", "121212/1212",
# "121212_1212", "121212. 1212"); the real date and the Luhn digit keep that from matching ordinary number
# pairs. Whitespace alone stays one character (two spaces or a line break separate two values). Literal
# characters, not escapes, so the same class works in Python's re and in the Rust regex Polars runs.
SEPARATORS = "-+\u2010-\u2015\u2212 \u00a0"
_SEPARATOR_RUN = r"(?:[ \u00a0]?[^0-9A-Za-z\s]{1,2}[ \u00a0]?|[" + SEPARATORS + r"]?)"
# [CC]YYMMDD[sep]NNNN, not part of a longer number or of a decimal
PNR = re.compile(r"(?<![0-9])(?<![0-9]\.)((?:18|19|20)?)(\d{2})(\d{2})(\d{2})(" + _SEPARATOR_RUN
                 + r")(\d{4})(?![0-9])(?!\.[0-9])")
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+(?![\w-])")
# +46 70 123 45 67, 070-123 45 67, 013-12 34 56, (013) 123456: a leading + or 0, then 8+ digits in groups
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ -]?|\(?0\d{1,3}\)?[ -]?)\d{2,4}(?:[ -]?\d{2,4}){1,3}(?![\w])")
# Cheap first passes (no look-behind): a column engine filters with these, then the exact patterns run
PNR_HINT = r"\d{6}" + _SEPARATOR_RUN + r"\d{4}"
EMAIL_HINT = r"@[A-Za-z0-9-]+\."
PHONE_HINT = r"(?:\+|\b0)\d[\d ()-]{6,}\d"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(digits):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def national_ids(text: str) -> list[str]:
    """Kinds of the Swedish identity numbers in ``text`` (``personnummer``/``samordningsnummer``),
    checked for a real month/day and the Luhn digit."""
    found = []
    for m in PNR.finditer(text):
        _cc, yy, mm, dd, _sep, tail = m.groups()
        month, day = int(mm), int(dd)
        kind = "personnummer"
        if day > 60:
            day -= 60
            kind = "samordningsnummer"
        if 1 <= month <= 12 and 1 <= day <= 31 and luhn_ok(yy + mm + dd + tail):
            found.append(kind)
    return found


def spans(text: str, *, personnummer: bool = True, email: bool = True,
          phone: bool = True) -> list[tuple[int, int, str]]:
    """(start, end, kind) of every identifier found, for scrubbing."""
    out: list[tuple[int, int, str]] = []
    if personnummer:
        out += [(m.start(), m.end(), k) for m in PNR.finditer(text) for k in national_ids(m.group(0))]
    if email:
        out += [(m.start(), m.end(), "e-mail") for m in EMAIL.finditer(text)]
    if phone:
        out += [(m.start(), m.end(), "telephone number") for m in PHONE.finditer(text)
                if sum(c.isdigit() for c in m.group(0)) >= 8 and not national_ids(m.group(0))]
    return sorted(out)
