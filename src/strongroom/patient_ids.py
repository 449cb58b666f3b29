"""One patient, one key: a Swedish personnummer or samordningsnummer, however a clinic wrote it, as its
12 digits.

A personnummer arrives as ``198501011236``, ``19850101-1236``, ``8501011236``, ``850101-1236``, ``850101+1236``
(``+``: 100 years or older), with spaces around it or the separator, or a typographic dash for ``-``; a
samordningsnummer (day + 60: ``850161-1233``) the same ways. Pseudonyms and date shifts keyed by the value as
received would make one patient two. ``canonical_patient_key`` gives every such form of one number the same
key; anything else (another country's ID, a hospital's MRN, a number failing the Luhn check) comes back only
stripped: it is not ours to guess.

Pure (no web or database imports), and cheap: the DICOM de-identification calls it per received object.
"""

from __future__ import annotations

import datetime as dt
import re

# [CC]YYMMDD, an optional separator (up to two spaces or tabs either side), NNNC. The dashes are what word
# processors put in place of '-' (U+2010-U+2015, U+2212); without a sign the number reads as written with '-'.
_WRITTEN = re.compile(r"((?:18|19|20)?)([0-9]{6})[ \t\u00a0]{0,2}([-+\u2010-\u2015\u2212]?)[ \t\u00a0]{0,2}([0-9]{4})")
# DICOM pads LO values with spaces (and writers with NULs); clinics' tables add spaces of every kind
_PADDING = re.compile(r"^[\s\x00]+|[\s\x00]+$")


def canonical_patient_key(value: str, reference_date: dt.date | None = None) -> str:
    """The key a patient ID is pseudonymised and date-shifted by: a personnummer or samordningsnummer with
    a valid Luhn digit and a real date (day - 60 for a samordningsnummer), in any written form, as its 12
    digits ``CCYYMMDDNNNC``; any other value with its surrounding whitespace and NULs removed, otherwise as is.

    A 10-digit form names no century: its separator says whether the person was under 100 (``-``, or none)
    or 100 or older (``+``) in the year it was written, ``reference_date`` (the year decides, as the
    separator changes in the year a person turns 100). Without a reference date a 10-digit form is not
    resolved (the clock is never read: a key must not change with the day the data is processed)."""
    text = _PADDING.sub("", value)
    if not 10 <= len(text) <= 17:  # the shortest and the longest forms matched below
        return text
    m = _WRITTEN.fullmatch(text)
    if m is None:
        return text
    century, yymmdd, sign, serial = m.groups()
    if not _luhn_ok(yymmdd + serial):
        return text
    yy = int(yymmdd[:2])
    if century:
        year = int(century) * 100 + yy
    elif reference_date is None:
        return text
    else:
        # the latest year ending in yy not after the reference year (100 years earlier for '+')
        latest = reference_date.year - (100 if sign == "+" else 0)
        year = latest - (latest - yy) % 100
    month, day = int(yymmdd[2:4]), int(yymmdd[4:6])
    if day > 60:  # samordningsnummer: the day of birth + 60
        day -= 60
    try:
        dt.date(year, month, day)
    except ValueError:  # no such date (a 29 February is checked in the century it resolved to)
        return text
    return f"{year:04d}{yymmdd[2:]}{serial}"


def _luhn_ok(digits: str) -> bool:
    """The Luhn check over YYMMDDNNNC (the century is not part of it)."""
    total = 0
    for i, ch in enumerate(digits):
        d = (ord(ch) - 48) * (2 - i % 2)
        total += d - 9 if d > 9 else d
    return total % 10 == 0
