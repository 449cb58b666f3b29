"""Direct identifiers recognised by their shape, in any text: Swedish personnummer and
samordningsnummer (a real date and the Luhn digit), e-mail addresses and telephone numbers; and dates
written in free text in the usual renderings (``date_spans``).

Pure functions shared by the DICOM verification and the tabular strategy verification, so both
answer the same question the same way; the DICOM de-identification engine's text cleaner masks the
same date renderings (``DATE``) that the verification searches, without importing it.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import NamedTuple

# The separators written between date and number: '-', '+' (100 years or older), the Unicode dashes word
# processors substitute (U+2010-U+2015, U+2212) and one space (or the no-break space Word puts there) — and,
# as typed by hand, one or two punctuation characters, a space either side ("121212 - 1212", "121212/1212",
# "121212_1212", "121212. 1212"); the real date and the Luhn digit keep that from matching ordinary number
# pairs. Whitespace alone stays one character (two spaces or a line break separate two values). Literal
# characters, not escapes, so the same class works in Python's re and in the Rust regex Polars runs.
SEPARATORS = "-+\u2010-\u2015\u2212 \u00a0"
_SEPARATOR_RUN = r"(?:[ \u00a0]?[^0-9A-Za-z\s]{1,2}[ \u00a0]?|[" + SEPARATORS + r"]?)"
# Where one element value holds one text (a DICOM comment, description or report), whitespace between
# date and number is a layout, not two values: up to two spaces, tabs or no-break spaces ("121212  1212",
# "19121212<TAB>1212"), also either side of the punctuation. A line break still separates.
_WIDE_SEPARATOR_RUN = (r"(?:[ \t\u00a0]{0,2}[^0-9A-Za-z\s]{1,2}[ \t\u00a0]{0,2}|[" + SEPARATORS
                       + r"]?|[ \t\u00a0]{1,2})")


def _pnr(separator_run: str) -> re.Pattern[str]:
    """[CC]YYMMDD[sep]NNNN, not part of a longer number or of a decimal."""
    return re.compile(r"(?<![0-9])(?<![0-9]\.)((?:18|19|20)?)(\d{2})(\d{2})(\d{2})(" + separator_run
                      + r")(\d{4})(?![0-9])(?!\.[0-9])")


PNR = _pnr(_SEPARATOR_RUN)
PNR_WIDE = _pnr(_WIDE_SEPARATOR_RUN)
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


def national_ids(text: str, *, wide: bool = False) -> list[str]:
    """Kinds of the Swedish identity numbers in ``text`` (``personnummer``/``samordningsnummer``),
    checked for a real month/day and the Luhn digit. ``wide``: whitespace up to two characters (spaces,
    tabs) between date and number too (``PNR_WIDE``: a text that is one value, not a row of values)."""
    found = []
    for m in (PNR_WIDE if wide else PNR).finditer(text):
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


# ---- dates written in free text
#
# ``date_spans`` gives each date-like span of a text with the calendar dates (YYYYMMDD) it can denote, for
# the DICOM verification (the original dates and the birth date searched in the output's free text); the
# de-identification engine's text cleaner masks every span of ``DATE``. What is recognised
# (case-insensitive; a day or month with or without its leading zero):
#
# - numeric, year first: 2021-01-04, 2021/1/4, 2021.01.04, 2021 01 04;
# - numeric, year last: 04.01.2021, 4/1/2021, 01-04-2021 — both readings, day-month and month-day, when
#   both are dates;
# - compact: 20210104 (and, as the same digits, DDMMYYYY and MMDDYYYY);
# - a month's name or abbreviation, English or Swedish, the abbreviation with or without its point:
#   4 Jan 2021, 4 January 2021, Jan 4, 2021, 4-JAN-2021, 04JAN2021, 2021-Jan-04, 4 januari 2021,
#   4 jan. 2021, with an ordinal (4th Jan 2021, 4:e jan 2021); between the parts a space, - / . , or nothing;
# - two-digit years only in the forms YY-MM-DD, DD.MM.YY, DD/MM/YY (every part two digits; both centuries
#   19YY and 20YY), and the bare six digits YYMMDD, which ``DateSpan.yymmdd`` marks: a time or a counter
#   has that shape too, so the verification searches it for the birth date only.
#
# Not recognised: a day and month without a year (4 Jan), a month and year without a day, month names with
# a two-digit year (04-JAN-21), numbers separated by a space with the year last (04 01 2021). A span is not
# taken from inside a longer number or a dotted numeric (3.1.2.1990, a UID), but a lone dotted triple that
# is a date is one: 1.2.1990 reads as 1 February or 2 January 1990 whether it was meant as a version or not
# (the verification acts only on dates equal to the original's: a chance collision is rare, and costs an
# instance held for review).

# month number -> its names and abbreviations, English and Swedish
_MONTH_NAMES = (
    ("january", "jan", "januari"),
    ("february", "feb", "februari"),
    ("march", "mar", "mars"),
    ("april", "apr"),
    ("may", "maj"),
    ("june", "jun", "juni"),
    ("july", "jul", "juli"),
    ("august", "aug", "augusti"),
    ("september", "sep", "sept"),
    ("october", "oct", "okt", "oktober"),
    ("november", "nov"),
    ("december", "dec"),
)
MONTHS: dict[str, int] = {name: number for number, names in enumerate(_MONTH_NAMES, 1) for name in names}
_TrieNode = dict[str, "_TrieNode"]


def _trie(words: list[str]) -> str:
    """``words`` as one pattern that branches on a letter at a time (``re`` tries the alternatives of a plain
    ``jan|januari|...`` one after the other at every position)."""
    tree: _TrieNode = {}
    for word in words:
        node = tree
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: _TrieNode) -> str:
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:
            return (body if body.startswith("(?:") and len(branches) > 1 else f"(?:{body})") + "?"
        return body

    return emit(tree)


_MONTH_WORDS = _trie(list(MONTHS))
_DATE_DAY = r"0?[1-9]|[12][0-9]|3[01]"
_DATE_MONTH = r"0?[1-9]|1[0-2]"
_DATE_YEAR = r"[12][0-9]{3}"
# before and after a span: not inside a longer number, nor part of a longer dotted numeric (a UID, a version)
_DATE_START = r"(?<![0-9])(?<![0-9]\.)"
_DATE_END = r"(?![0-9])(?!\.[0-9])"
# two-digit years are easier to meet by chance: no letter or underscore beside them either
_DATE_START2 = r"(?<![0-9A-Za-z_])(?<![0-9]\.)"
_DATE_END2 = r"(?![0-9A-Za-z_])(?!\.[0-9])"
_DATE_SEP = r"[ \t\u00a0]{0,2}[-/.,]?[ \t\u00a0]{0,2}"  # beside a month's name: "4 Jan, 2021", "04JAN2021"
_DATE_ORDINAL = r"(?:st|nd|rd|th|:[ae])?"


def _month_word(name: str) -> str:
    """A month's name as a word: no letter just before or after it, then an optional point (``jan.``). Its
    letters are matched ASCII-only (``(?a:``): Unicode case folding would let ``ſep`` or ``januarİ`` through,
    which are no key of ``MONTHS``."""
    return rf"(?<![^\W\d_])(?P<{name}>(?a:{_MONTH_WORDS}))(?![^\W\d_])\.?"


# One alternation, compiled once; each form a named group of its own (``Match.lastgroup`` tells which). The
# forms that start with a digit sit behind one look-ahead for a digit, the one that starts with a month's
# name behind one for its first letter: most positions of a text fail both at once.
DATE = re.compile(
    r"(?=[0-9])(?:" + "|".join((
        # 4 January 2021, 04JAN2021, 4-jan.-2021, 4:e januari 2021, 4th Jan 2021
        rf"(?P<dmy_name>{_DATE_START}(?P<a_d>{_DATE_DAY}){_DATE_ORDINAL}{_DATE_SEP}{_month_word('a_m')}"
        rf"{_DATE_SEP}(?P<a_y>{_DATE_YEAR}){_DATE_END})",
        # 2021-Jan-04, 2021 januari 4
        rf"(?P<ymd_name>{_DATE_START}(?P<c_y>{_DATE_YEAR}){_DATE_SEP}{_month_word('c_m')}{_DATE_SEP}"
        rf"(?P<c_d>{_DATE_DAY}){_DATE_END})",
        # 2021-01-04, 2021/1/4, 2021.01.04, 2021 01 04 (the same separator twice)
        rf"(?P<ymd>{_DATE_START}(?P<d_y>{_DATE_YEAR})(?P<d_s>[-/. ])(?P<d_m>{_DATE_MONTH})(?P=d_s)"
        rf"(?P<d_d>{_DATE_DAY}){_DATE_END})",
        # 04.01.2021, 4/1/2021, 01-04-2021: day-month or month-day
        rf"(?P<xxy>{_DATE_START}(?P<e_a>{_DATE_DAY})(?P<e_s>[-/.])(?P<e_b>{_DATE_DAY})(?P=e_s)"
        rf"(?P<e_y>{_DATE_YEAR}){_DATE_END})",
        # 20210104 (or 04012021, 01042021)
        rf"(?P<compact>{_DATE_START}(?P<f>[0-9]{{8}}){_DATE_END})",
        # 21-01-04, 04.01.21, 04/01/21
        rf"(?P<short>{_DATE_START2}(?:(?P<g_y>[0-9]{{2}})-(?P<g_m>[0-9]{{2}})-(?P<g_d>[0-9]{{2}})"
        rf"|(?P<h_d>[0-9]{{2}})(?P<h_s>[./])(?P<h_m>[0-9]{{2}})(?P=h_s)(?P<h_y>[0-9]{{2}})){_DATE_END2})",
        # 210104
        rf"(?P<yymmdd>{_DATE_START2}(?P<i>[0-9]{{6}}){_DATE_END2})",
    )) + r")"
    # Jan 4, 2021; January 4th 2021; jan. 4 2021
    + rf"|(?=[{''.join(sorted({m[0] for m in MONTHS}))}])"
    + rf"(?P<mdy_name>{_month_word('b_m')}{_DATE_SEP}(?<![0-9])(?P<b_d>{_DATE_DAY}){_DATE_ORDINAL}{_DATE_SEP}"
    rf"(?P<b_y>{_DATE_YEAR}){_DATE_END})",
    re.I)

# What every rendering holds — four digits in a row (a year, or part of YYMMDD) or the two-digit forms'
# ``NN.NN.NN`` — found by a pattern that starts with a character class, which the ``re`` engine skips to
# without trying the alternatives at every position: ``DATE`` then runs only on the lines holding one
# (no rendering spans a line break). Over a CT header's free text joined: 18 µs, against 41 µs for ``DATE``
# over all of it and 250 µs for the same alternation without the look-aheads in front.
DATE_HINT = re.compile(r"[0-9][0-9](?:[0-9][0-9]|[-./][0-9][0-9][-./][0-9][0-9])")

_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class DateSpan(NamedTuple):
    start: int
    end: int
    dates: tuple[str, ...]  # YYYYMMDD, every reading that is a calendar date (none: not a date after all)
    yymmdd: bool  # six bare digits: for the birth date only (see this section's first comment)


def _date(year: int, month: int, day: int) -> str | None:
    if not 1 <= month <= 12 or not 1 <= day <= _MONTH_DAYS[month - 1]:
        return None
    if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return None
    return f"{year:04d}{month:02d}{day:02d}"


def _date_readings(m: re.Match[str]) -> list[str | None]:
    form, g = m.lastgroup, m.group
    if form == "dmy_name":
        return [_date(int(g("a_y")), MONTHS[g("a_m").lower()], int(g("a_d")))]
    if form == "mdy_name":
        return [_date(int(g("b_y")), MONTHS[g("b_m").lower()], int(g("b_d")))]
    if form == "ymd_name":
        return [_date(int(g("c_y")), MONTHS[g("c_m").lower()], int(g("c_d")))]
    if form == "ymd":
        return [_date(int(g("d_y")), int(g("d_m")), int(g("d_d")))]
    if form == "xxy":
        a, b, year = int(g("e_a")), int(g("e_b")), int(g("e_y"))
        return [_date(year, b, a), _date(year, a, b)]
    if form == "compact":
        f = g("f")
        return [_date(int(f[:4]), int(f[4:6]), int(f[6:])), _date(int(f[4:]), int(f[2:4]), int(f[:2])),
                _date(int(f[4:]), int(f[:2]), int(f[2:4]))]
    if form == "short":
        if g("g_y") is not None:
            yy, month, day = int(g("g_y")), int(g("g_m")), int(g("g_d"))
        else:
            yy, month, day = int(g("h_y")), int(g("h_m")), int(g("h_d"))
        return [_date(1900 + yy, month, day), _date(2000 + yy, month, day)]
    f = g("i")  # yymmdd
    yy, month, day = int(f[:2]), int(f[2:4]), int(f[4:])
    return [_date(1900 + yy, month, day), _date(2000 + yy, month, day)]


def date_spans(text: str) -> Iterator[DateSpan]:
    """Every date-like span of ``text`` (``DATE``, leftmost first, not overlapping) with the dates it can
    denote; a span that denotes none (``31/02/2021``) is left out."""
    scanned = 0  # the lines before this offset are done
    for hint in DATE_HINT.finditer(text):
        if hint.start() < scanned:
            continue
        start = text.rfind("\n", 0, hint.start()) + 1
        scanned = text.find("\n", hint.end())
        if scanned < 0:
            scanned = len(text)
        for m in DATE.finditer(text, start, scanned):
            dates = tuple(dict.fromkeys(d for d in _date_readings(m) if d is not None))
            if dates:
                yield DateSpan(m.start(), m.end(), dates, m.lastgroup == "yymmdd")


@functools.lru_cache(maxsize=4096)  # (a study's dates recur in each of its instances)
def date_probes(date: str, *, yymmdd: bool = False) -> tuple[str, ...]:
    """Substrings one of which every rendering of ``date`` (YYYYMMDD) that ``date_spans`` reads holds: its
    year, or one of its two-digit-year forms (every part two digits), or with ``yymmdd`` its bare YYMMDD —
    a test without a pattern that most texts fail."""
    y, yy, m, d = date[:4], date[2:4], date[4:6], date[6:8]
    probes = (y, f"{yy}-{m}-{d}", f"{d}.{m}.{yy}", f"{d}/{m}/{yy}")
    return (*probes, date[2:]) if yymmdd else probes


def dates_written(texts: Sequence[str], wanted: Collection[str],
                  yymmdd: Callable[[int], bool] | None = None) -> dict[str, int]:
    """The dates of ``wanted`` (YYYYMMDD) that ``texts`` (the values of a DICOM header) write in a rendering
    ``date_spans`` knows, each with the index of the first text writing it; the bare six digits YYMMDD count
    only in the texts whose index ``yymmdd`` accepts (none without it). One pass over the texts joined by line
    breaks (which no rendering spans), and none when no wanted date's ``date_probes`` occurs: most headers
    hold numbers of four digits (code values, versions), but not those years."""
    joined = "\n".join(texts)
    if not any(p in joined for d in wanted for p in date_probes(d, yymmdd=yymmdd is not None)):
        return {}
    starts = list(itertools.accumulate((len(t) + 1 for t in texts), initial=0))
    written: dict[str, int] = {}
    for found in date_spans(joined):
        hits = [d for d in found.dates if d in wanted and d not in written]
        if hits:
            i = bisect.bisect_right(starts, found.start) - 1
            if not found.yymmdd or (yymmdd is not None and yymmdd(i)):
                written.update(dict.fromkeys(hits, i))
    return written
