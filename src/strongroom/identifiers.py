"""Direct identifiers recognised by their shape, in any text: Swedish personnummer and
samordningsnummer (a real date and the Luhn digit), e-mail addresses and telephone numbers; dates
written in free text in the usual renderings (``date_spans``); and CJK person names as text writes them
(``cjk_name_forms``).

Pure functions shared by the DICOM verification and the tabular strategy verification, so both
answer the same question the same way; the DICOM de-identification engine's text cleaner masks the
same date renderings (``DATE``) and name forms that the verification searches, without importing it.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
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


# ---- CJK person names


def _cjk(ch: str) -> bool:
    """Han ideographs (with the iteration mark 々), kana and Hangul: scripts written without spaces between
    words, where a name is its components written together, family name first."""
    o = ord(ch)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x3134F
            or 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF
            or 0x3130 <= o <= 0x318F or o == 0x3005)


# what stands between the family and the given name of a CJK name written apart: a space (the ideographic
# and the no-break one too) or a middle dot (Chinese ·, Japanese ・ and its half-width form ･)
_NAME_GAPS = (" ", "\u3000", "\u00a0", "\u00b7", "\u30fb", "\uff65")


def cjk_name_forms(value: str) -> list[str]:
    """A person name's (PN) family, given and middle name as CJK text writes them, in each component group
    (alphabetic ``=`` ideographic ``=`` phonetic) that is all Han, kana or Hangul, at least 2 characters:
    together, family name first (``李^娜`` -> ``李娜``), and apart, with a space or a middle dot between the
    names (``李 娜``, ``李·娜``). Components of 1-2 characters are too short to search alone, and a single
    ideograph is a word."""
    forms: list[str] = []
    for group in value.split("="):
        parts = [part for component in group.split("^")[:3] for part in component.split()]
        name = "".join(parts)
        if len(name) >= 2 and all(_cjk(ch) for ch in name):
            forms.append(name)
            if len(parts) > 1:
                forms += [gap.join(parts) for gap in _NAME_GAPS]
    return forms


# ---- dates written in free text
#
# ``date_spans`` gives each date-like span of a text with the calendar dates it can denote, for the DICOM
# verification (the original dates and the birth date searched in the output's free text); the
# de-identification engine's text cleaner masks every span of ``DATE``. What is recognised
# (case-insensitive; a day or month with or without its leading zero):
#
# - numeric, year first: 2021-01-04, 2021/1/4, 2021.01.04, 2021 01 04, Korean 2021. 1. 4.;
# - numeric, year last: 04.01.2021, 4/1/2021, 01-04-2021, 04 01 2021 — both readings, day-month and
#   month-day, when both are dates; written apart with spaces, not as a measurement (04 01 2021 mm) nor
#   within a longer run of numbers (1 04 01 2021 5);
# - compact: 20210104 (and, as the same digits, DDMMYYYY and MMDDYYYY);
# - a month's name or abbreviation — English, Swedish, Danish, Norwegian, German, French or Dutch, the
#   abbreviation with or without its point, the accented ones also without the accent (märz, marz,
#   février, fevrier) — with a four-digit year, a two-digit one or none: 4 Jan 2021, 4 January 2021,
#   Jan 4, 2021, 4-JAN-2021, 04JAN2021, 2021-Jan-04, 4 januari 2021, 4. Januar 2021, 4 mrt. 2021, 04-JAN-21,
#   04JAN21, JAN-04-21, 4 Jan, Jan 4; with an ordinal (4th Jan, January 4th, 4:e jan, 1er janvier, 4e mei);
#   between the parts a space, - / . , or nothing. A two-digit year is not the hour of a time (4 Jan 10:30
#   is 4 January, no year), a day alone not a measurement (Jan 4 mm); Norway's "des" (December) counts
#   only beside a year: alone it is the French article ("des 2 examens");
# - CJK: 2021年1月4日, 2021年01月04日, 2021年1月4号, Korean 2021년 1월 4일, the Japanese era and Minguo
#   years (令和3年1月4日, 民國110年1月4日), and without the year (1月4日, 1월 4일); full-width digits
#   (２０２１年) only as the callers read them, folded (NFKD) or mapped to ASCII digits;
# - two-digit years, numeric: NN-NN-NN, NN.NN.NN, NN/NN/NN read year first, day first and month first
#   (21-01-04, 04.01.21, 01/04/21; both centuries 19YY and 20YY), and N.N.YY, N/N/YY, N-N-YY day or month
#   first (4.1.21); the bare six digits (YYMMDD, DDMMYY, MMDDYY: 210104, 040121), which ``DateSpan.yymmdd``
#   marks: a counter or a compact time can have that shape too, so the verification searches them in free
#   text only, never in coded strings or codes;
# - the day and month alone, numeric, only as NN/NN or NN.NN. (04/01, 04.01., both readings): two digits
#   each, so neither a fraction or score (1/2, 3/4, 4/10) nor a decimal (04.01, 12.05 mm) is one, and not
#   before a unit (12/05 mm). A day and month alone read ``--MMDD`` (ISO 8601's form without the year):
#   it matches an original date of any year.
#
# Not recognised: a month and year without a day; an unpadded numeric day and month without a year (4/1: a
# fraction as often); a day and month separated by '-' without a year (a range, 10-12); numbers apart with
# a two-digit year (04 01 21); month names of other languages (Spanish, Italian...) and numerals written
# as words. A span is not taken from inside a longer number or a dotted numeric (3.1.2.1990, a UID), but a
# lone dotted triple that is a date is one: 1.2.1990 reads as 1 February or 2 January 1990 whether it was
# meant as a version or not (the verification acts only on dates equal to the original's: a chance
# collision is rare, and costs an instance held for review).

# month number -> its names and abbreviations: English, Swedish, Danish, Norwegian, German (with Austria's
# Jänner and Feber), French and Dutch; the accented ones also as typed without the accent, which is also
# how the verification's folded copy of a text (NFKD, marks dropped) writes them
_MONTH_NAMES = (
    ("january", "jan", "januari", "januar", "jänner", "jaenner", "janner", "jän", "janvier", "janv"),
    ("february", "feb", "februari", "februar", "feber", "février", "fevrier", "févr", "fevr", "fév", "fev"),
    ("march", "mar", "mars", "marts", "märz", "maerz", "marz", "mär", "mrz", "maart", "mrt"),
    ("april", "apr", "avril", "avr"),
    ("may", "maj", "mai", "mei"),
    ("june", "jun", "juni", "juin"),
    ("july", "jul", "juli", "juillet", "juil"),
    ("august", "aug", "augusti", "augustus", "août", "aout"),
    ("september", "sep", "sept", "septembre"),
    ("october", "oct", "okt", "oktober", "octobre"),
    ("november", "nov", "novembre"),
    ("december", "dec", "dez", "dezember", "des", "desember", "décembre", "decembre", "déc"),
)
MONTHS: dict[str, int] = {name: number for number, names in enumerate(_MONTH_NAMES, 1) for name in names}
# a month only beside a year: "des" is also the French article ("comparaison des 2 examens")
_NOT_WITHOUT_YEAR = frozenset({"des"})
# what every month's name starts with, lowered: the verification's first test (``may_write_dates``)
_MONTH_STEMS = {number: tuple(sorted({name[:3] for name in names})) for number, names in enumerate(_MONTH_NAMES, 1)}
_ALL_MONTH_STEMS = tuple(sorted({stem for stems in _MONTH_STEMS.values() for stem in stems}))
_TrieNode = dict[str, "_TrieNode"]


def _letter(ch: str) -> str:
    """One letter of a month's name: an accented one in both cases (the name is matched with ASCII-only case
    folding, see ``_month_word``)."""
    return re.escape(ch) if ch.isascii() else f"[{ch}{ch.upper()}]"


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
        branches = [_letter(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:
            return (body if body.startswith("(?:") and len(branches) > 1 else f"(?:{body})") + "?"
        return body

    return emit(tree)


_MONTH_WORDS = _trie(list(MONTHS))
_LONGEST_MONTH = max(map(len, MONTHS))
_DATE_DAY = r"0?[1-9]|[12][0-9]|3[01]"
_DATE_MONTH = r"0?[1-9]|1[0-2]"
_DATE_YEAR = r"[12][0-9]{3}"
# after a span: not inside a longer number, nor part of a longer dotted numeric (a UID, a version); before
# it, the same (see _number_first)
_DATE_END = r"(?![0-9])(?!\.[0-9])"
# two-digit years and the forms without a year are easier to meet by chance: no letter or underscore
# beside them either (see _LONE; six digits may stand before a number: 070385-1234, a Danish CPR number)
_DATE_END2 = r"(?![0-9A-Za-z_])(?!\.[0-9])"
# numbers alone with a two-digit year or none: nor part of a longer chain of numbers (1/04/01/21, 10-04/01),
# nor of a time (04:01:21)
_CHAIN_START = r"(?<![A-Za-z_])(?<![0-9][-/:])"
_CHAIN_END = _DATE_END2 + r"(?![-/:][0-9])"
# a two-digit year is not the hour of a time either: 4 Jan 10:30 is 4 January, no year
_YEAR2_END = _DATE_END2 + r"(?!:[0-9])"
_DATE_SEP = r"[ \t\u00a0]{0,2}[-/.,]?[ \t\u00a0]{0,2}"  # beside a month's name: "4 Jan, 2021", "04JAN2021"
_DATE_SEP1 = r"(?:[ \t\u00a0]{1,2}[-/.,]?|[-/.,])[ \t\u00a0]{0,2}"  # the same, not empty: "Jan 4 21", not "Jan 421"
_DATE_ORDINAL = r"(?:st|nd|rd|th|er|e|:[ae])?"  # 4th, 1er (French), 4e (Dutch), 4:e (Swedish); 4. is a SEP
_CJK_SPACE = r"[ \u00a0\u3000]?"
_CJK_DAY = r"[日号號일]"
# numbers written apart or a day and month alone: not a measurement (04 01 2021 mm, 12/05 mm)
_NO_UNIT = r"(?![ \t\u00a0]?(?:mm|cm|ml|mg|mgy|gy|mbq|kv|kev|mas|ma|ms|min|s|h|x|%)(?![^\W\d_]))"
# nor a run of numbers (1 04 01 2021 5), which a time may follow (04 01 2021 10:30)
_NOT_IN_A_RUN = r"(?![ \t\u00a0][0-9]{1,4}(?![0-9:]))"
# the years of an era's first year (year 1, 元年), in Japan and the Republic of China (Minguo)
_ERAS = {"明治": 1868, "大正": 1912, "昭和": 1926, "平成": 1989, "令和": 2019, "民國": 1912, "民国": 1912}


def _month_word(name: str) -> str:
    """A month's name as a word: no letter just before or after it, then an optional point (``jan.``). Its
    letters are matched ASCII-only (``(?a:``): Unicode case folding would let ``ſep`` or ``januarİ`` through,
    which are no key of ``MONTHS``."""
    return rf"(?<![^\W\d_])(?P<{name}>(?a:{_MONTH_WORDS}))(?![^\W\d_])\.?"


# The forms that start with a digit, in the order they are tried at one position (with a four-digit year,
# with a two-digit one, then without), each a named group of its own (``Match.lastgroup`` tells which), and
# whether it holds a month's name or a CJK year or month (see ``_NUMERIC_DATE``). Their look-behind for a
# number's start is shared (see ``DATE``); _LONE: no letter or underscore before either.
_LONE = r"(?<![A-Za-z_])"
_NUMBER_FIRST = (
    # 4 January 2021, 04JAN2021, 4-jan.-2021, 4:e januari 2021, 4th Jan 2021, 4. Januar 2021
    (rf"(?P<dmy_name>(?P<a_d>{_DATE_DAY}){_DATE_ORDINAL}{_DATE_SEP}{_month_word('a_m')}{_DATE_SEP}"
     rf"(?P<a_y>{_DATE_YEAR}){_DATE_END})", True),
    # 2021-Jan-04, 2021 januari 4
    (rf"(?P<ymd_name>(?P<c_y>{_DATE_YEAR}){_DATE_SEP}{_month_word('c_m')}{_DATE_SEP}(?P<c_d>{_DATE_DAY})"
     rf"{_DATE_ORDINAL}{_DATE_END})", True),
    # 2021年1月4日, 2021년 1월 4일
    (rf"(?P<cjk>(?P<j_y>{_DATE_YEAR}){_CJK_SPACE}[年년]{_CJK_SPACE}(?P<j_m>{_DATE_MONTH}){_CJK_SPACE}[月월]"
     rf"{_CJK_SPACE}(?P<j_d>{_DATE_DAY}){_CJK_SPACE}{_CJK_DAY})", True),
    # 2021-01-04, 2021/1/4, 2021.01.04, 2021 01 04, 2021. 1. 4. (the same separator twice)
    (rf"(?P<ymd>(?P<d_y>{_DATE_YEAR})(?P<d_s>[-/.] ?|[ \u00a0])(?P<d_m>{_DATE_MONTH})(?P=d_s)"
     rf"(?P<d_d>{_DATE_DAY}){_DATE_END})", False),
    # 04.01.2021, 4/1/2021, 01-04-2021: day-month or month-day
    (rf"(?P<xxy>(?P<e_a>{_DATE_DAY})(?P<e_s>[-/.])(?P<e_b>{_DATE_DAY})(?P=e_s)(?P<e_y>{_DATE_YEAR}){_DATE_END})",
     False),
    # 04 01 2021, 4 1 2021
    (rf"(?P<xxy_apart>(?<![0-9][ \t\u00a0])(?P<s_a>{_DATE_DAY})(?P<s_s>[ \u00a0])(?P<s_b>{_DATE_DAY})(?P=s_s)"
     rf"(?P<s_y>{_DATE_YEAR}){_DATE_END}{_NO_UNIT}{_NOT_IN_A_RUN})", False),
    # 20210104 (or 04012021, 01042021)
    (rf"(?P<compact>(?P<f>[0-9]{{8}}){_DATE_END})", False),
    # 04-JAN-21, 04JAN21, 4 jan. 21
    (rf"(?P<dmy_name2>{_LONE}(?P<k_d>{_DATE_DAY}){_DATE_ORDINAL}{_DATE_SEP}{_month_word('k_m')}{_DATE_SEP}"
     rf"(?P<k_y>[0-9]{{2}}){_YEAR2_END})", True),
    # 21-01-04, 04.01.21, 01/04/21, 4.1.21, 1/4/21
    (rf"(?P<short>{_CHAIN_START}(?P<g_a>[0-9]{{1,2}})(?P<g_s>[-./])(?P<g_b>[0-9]{{1,2}})(?P=g_s)"
     rf"(?P<g_c>[0-9]{{2}}){_CHAIN_END})", False),
    # 210104, 040121
    (rf"(?P<yymmdd>{_LONE}(?P<i>[0-9]{{6}}){_DATE_END2})", False),
    # without a year: 1月4日, 1월 4일
    (rf"(?P<cjk_md>(?P<l_m>{_DATE_MONTH}){_CJK_SPACE}[月월]{_CJK_SPACE}(?P<l_d>{_DATE_DAY}){_CJK_SPACE}{_CJK_DAY})",
     True),
    # 4 Jan, 4th January, 4. januar
    (rf"(?P<dm_name>{_LONE}(?P<n_d>{_DATE_DAY}){_DATE_ORDINAL}{_DATE_SEP}{_month_word('n_m')})", True),
    # 04/01, 04.01.
    (rf"(?P<dm>{_CHAIN_START}(?P<o_a>[0-9]{{2}})(?:/(?P<o_b>[0-9]{{2}})|\.(?P<o_c>[0-9]{{2}})\.)"
     rf"{_CHAIN_END}{_NO_UNIT})", False),
)


def _number_first(forms: Iterable[str]) -> str:
    """``forms`` as one alternation behind one look-ahead for a digit and the look-behind they share: not
    within a number or a dotted numeric (a UID, a version). Most positions of a text fail both at once."""
    return r"(?=[0-9])(?<![0-9])(?<![0-9]\.)(?:" + "|".join(forms) + ")"


# Every form in one alternation, compiled once: those that start with a digit, then those that start with a
# month's name or an era, each behind one look-ahead for its first letter.
DATE = re.compile(
    _number_first(form for form, _ in _NUMBER_FIRST)
    # Jan 4, 2021; January 4th 2021; jan. 4 2021; JAN-04-2021 — or JAN-04-21, Jan 4, 21 — or Jan 4, January 4th
    # (one form: the month's name is tried once at a position, then the year in the same order)
    + rf"|(?=[{''.join(sorted({m[0] for m in MONTHS}))}])"
    rf"(?P<mdy_name>{_month_word('b_m')}{_DATE_SEP}(?<![0-9])(?P<b_d>{_DATE_DAY}){_DATE_ORDINAL}"
    rf"(?:{_DATE_SEP}(?P<b_y>{_DATE_YEAR}){_DATE_END}|{_DATE_SEP1}(?P<b_yy>[0-9]{{2}}){_YEAR2_END}"
    rf"|{_DATE_END2}{_NO_UNIT}))"
    # 令和3年1月4日, 平成元年1月8日, 民國110年1月4日
    + rf"|(?=[{''.join(sorted({era[0] for era in _ERAS}))}])(?P<era>(?P<r_e>{'|'.join(_ERAS)}){_CJK_SPACE}"
    rf"(?P<r_y>元|[0-9]{{1,3}}){_CJK_SPACE}年{_CJK_SPACE}(?P<r_m>{_DATE_MONTH}){_CJK_SPACE}月{_CJK_SPACE}"
    rf"(?P<r_d>{_DATE_DAY}){_CJK_SPACE}日)",
    re.I)
# The numeric forms alone: what ``DATE`` finds on a line without a month's name or a CJK year or month beside a
# digit (``date_spans``), at a third of its cost (most lines of a header are words).
_NUMERIC_DATE = re.compile(_number_first(form for form, worded in _NUMBER_FIRST if not worded))

# What every numeric rendering holds — four digits in a row (a year, or part of six or eight digits), the
# two-digit years' ``N.N.NN`` or the day and month's ``NN/NN`` — found by a pattern that starts with a
# character class, which the ``re`` engine skips to without trying the alternatives at every position; the
# others hold a CJK year or month, or a month's name beside a digit (``_month_words_near_digits``). ``DATE``
# then runs only on the lines holding one (no rendering spans a line break): see ``date_spans``.
DATE_HINT = re.compile(r"[0-9](?:[0-9]{3}|[0-9]?[-./][0-9][0-9]?[-./][0-9][0-9]|[0-9][/.][0-9][0-9])")
_DIGIT = re.compile(r"[0-9]")
# how far from a month's name's first three letters the digits of its day or year can stand: before, a day
# with its ordinal and separator ("4th - Jan"); after, the rest of the longest name, its point, a separator
_BEFORE_MONTH = 2 + 2 + 5 + 1
_AFTER_MONTH = _LONGEST_MONTH + 1 + 5 + 1

_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class DateSpan(NamedTuple):
    start: int
    end: int
    # every reading that is a calendar date (none: not a date after all): YYYYMMDD, or --MMDD for a day and
    # month written without a year
    dates: tuple[str, ...]
    yymmdd: bool  # six bare digits: searched in free text only (see this section's first comment)


def _date(year: int | None, month: int, day: int) -> str | None:
    """YYYYMMDD, or --MMDD without a year; ``None`` when it is no calendar date."""
    if not 1 <= month <= 12 or not 1 <= day <= _MONTH_DAYS[month - 1]:
        return None
    if year is None:
        return f"--{month:02d}{day:02d}"
    if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return None
    return f"{year:04d}{month:02d}{day:02d}"


def _two_digit_year(yy: str, month: int, day: int) -> list[str | None]:
    return [_date(1900 + int(yy), month, day), _date(2000 + int(yy), month, day)]


def _month_named(g: Callable[[str], str], group: str) -> int:
    return MONTHS[g(group).lower()]


def _date_readings(m: re.Match[str]) -> list[str | None]:
    form, g = m.lastgroup, m.group
    if form == "dmy_name":
        return [_date(int(g("a_y")), _month_named(g, "a_m"), int(g("a_d")))]
    if form == "mdy_name":
        month, day = _month_named(g, "b_m"), int(g("b_d"))
        if g("b_y"):
            return [_date(int(g("b_y")), month, day)]
        if g("b_yy"):
            return _two_digit_year(g("b_yy"), month, day)
        return [] if g("b_m").lower() in _NOT_WITHOUT_YEAR else [_date(None, month, day)]
    if form == "ymd_name":
        return [_date(int(g("c_y")), _month_named(g, "c_m"), int(g("c_d")))]
    if form == "dmy_name2":
        return _two_digit_year(g("k_y"), _month_named(g, "k_m"), int(g("k_d")))
    if form == "dm_name":
        return [] if g("n_m").lower() in _NOT_WITHOUT_YEAR else [_date(None, _month_named(g, "n_m"), int(g("n_d")))]
    if form == "cjk":
        return [_date(int(g("j_y")), int(g("j_m")), int(g("j_d")))]
    if form == "cjk_md":
        return [_date(None, int(g("l_m")), int(g("l_d")))]
    if form == "era":
        year = _ERAS[g("r_e")] + (0 if g("r_y") == "元" else int(g("r_y")) - 1)
        return [_date(year, int(g("r_m")), int(g("r_d")))]
    if form == "ymd":
        return [_date(int(g("d_y")), int(g("d_m")), int(g("d_d")))]
    if form in ("xxy", "xxy_apart"):
        a, b, year = (int(g("e_a")), int(g("e_b")), int(g("e_y"))) if form == "xxy" else \
            (int(g("s_a")), int(g("s_b")), int(g("s_y")))
        return [_date(year, b, a), _date(year, a, b)]
    if form == "compact":
        f = g("f")
        return [_date(int(f[:4]), int(f[4:6]), int(f[6:])), _date(int(f[4:]), int(f[2:4]), int(f[:2])),
                _date(int(f[4:]), int(f[:2]), int(f[2:4]))]
    if form == "short":
        first, second, last = g("g_a"), g("g_b"), g("g_c")
        readings = (_two_digit_year(last, int(second), int(first))
                    + _two_digit_year(last, int(first), int(second)))
        if len(first) == len(second) == 2:  # year first only with every part two digits: 21-01-04
            readings += _two_digit_year(first, int(second), int(last))
        return readings
    if form == "yymmdd":
        f = g("i")
        return (_two_digit_year(f[:2], int(f[2:4]), int(f[4:])) + _two_digit_year(f[4:], int(f[2:4]), int(f[:2]))
                + _two_digit_year(f[4:], int(f[:2]), int(f[2:4])))
    first, second = int(g("o_a")), int(g("o_b") or g("o_c"))  # dm: 04/01, 04.01.
    return [_date(None, second, first), _date(None, first, second)]


def _lowered(text: str) -> str | None:
    """``text`` lowered, position for position (``None`` if that cannot be had): ``str.lower`` writes only
    U+0130 (İ) longer."""
    lowered = text.lower()
    if len(lowered) != len(text):
        lowered = text.replace("\u0130", "I").lower()
    return lowered if len(lowered) == len(text) else None


def _month_words_near_digits(text: str, stems: Sequence[str] = _ALL_MONTH_STEMS) -> Iterator[int]:
    """Where a month's name (its first three letters, ``stems``) may stand with a day or year beside it: a
    digit within reach, the first test for the renderings with a month's name. Conservative: a text that
    cannot be lowered position for position yields the start of each of its lines."""
    lowered = _lowered(text)
    if lowered is None:
        yield 0
        yield from (i + 1 for i, ch in enumerate(text) if ch == "\n")
        return
    for stem in stems:
        for at in _occurrences(lowered, stem):
            if _DIGIT.search(lowered, max(0, at - _BEFORE_MONTH), at + _AFTER_MONTH):
                yield at


def date_spans(text: str, *, months: Collection[int] | None = None) -> Iterator[DateSpan]:
    """Every date-like span of ``text`` (``DATE``, leftmost first, not overlapping) with the dates it can
    denote; a span that denotes none (``31/02/2021``) is left out. With ``months``, the renderings with a
    month's name are read for those months only: enough to find their dates, and cheaper (a line where
    only another month's name stands is read for numbers alone). Only the lines where a pattern that
    starts with a character class (``DATE_HINT``) finds a number, or where a CJK year or month or a month's
    name stands beside a digit (``_month_words_near_digits``), are read: with ``DATE``, or with
    ``_NUMERIC_DATE`` where none of the latter stands."""
    stems = _ALL_MONTH_STEMS if months is None else _stems_of(frozenset(months))
    numbers = [m.start() for m in DATE_HINT.finditer(text)]
    worded = list(_month_words_near_digits(text, stems))
    if not text.isascii():
        worded += [at for marker in "年月년월" for at in _occurrences(text, marker)]
    worded_lines = {text.rfind("\n", 0, at) + 1 for at in worded}
    scanned = 0  # the lines before this offset are done
    for at in sorted(numbers + worded):
        if at < scanned:
            continue
        start = text.rfind("\n", 0, at) + 1
        scanned = text.find("\n", at)
        if scanned < 0:
            scanned = len(text)
        for m in (DATE if start in worded_lines else _NUMERIC_DATE).finditer(text, start, scanned):
            dates = tuple(dict.fromkeys(d for d in _date_readings(m) if d is not None))
            if dates:
                yield DateSpan(m.start(), m.end(), dates, m.lastgroup == "yymmdd")


def _occurrences(text: str, part: str) -> Iterator[int]:
    at = text.find(part)
    while at >= 0:
        yield at
        at = text.find(part, at + 1)


class _Probes(NamedTuple):
    """What every rendering of some dates that ``date_spans`` reads holds (``may_write_dates``)."""

    exact: tuple[str, ...]  # substrings: the four-digit years, with ``yymmdd`` the six bare digits
    paired: tuple[str, ...]  # the day and month side by side, '.' standing for any of - . /
    stems: tuple[str, ...]  # the first three letters of the months' names, lowered


@functools.lru_cache(maxsize=1024)  # (a study's dates recur in each of its instances)
def _probes(wanted: frozenset[str], yymmdd: bool) -> _Probes:
    """For the dates of ``wanted`` (YYYYMMDD): the year (every rendering with a four-digit year: numeric,
    with a month's name, CJK); the day and month side by side as the two-digit years and the day and month
    alone write them (04.01, 01.04, and unpadded, followed by the year's separator: 4.1., 1.4.); the
    month's name; with ``yymmdd`` the six bare digits (YYMMDD, DDMMYY, MMDDYY)."""
    exact: dict[str, None] = {}
    paired: dict[str, None] = {}
    for date in sorted(wanted):
        y, yy, m, d = date[:4], date[2:4], date[4:6], date[6:8]
        short_m, short_d = str(int(m)), str(int(d))
        exact[y] = None
        if yymmdd:
            exact.update(dict.fromkeys((f"{yy}{m}{d}", f"{d}{m}{yy}", f"{m}{d}{yy}")))
        paired.update(dict.fromkeys((f"{d}.{m}", f"{m}.{d}", f"{short_d}.{short_m}.", f"{short_m}.{short_d}.")))
    return _Probes(tuple(exact), tuple(paired), _stems_of(frozenset(int(date[4:6]) for date in wanted)))


@functools.lru_cache(maxsize=1024)
def _stems_of(months: frozenset[int]) -> tuple[str, ...]:
    return tuple(sorted({stem for month in months for stem in _MONTH_STEMS.get(month, ())}))


def may_write_dates(text: str, wanted: Collection[str], *, yymmdd: bool = False) -> bool:
    """Whether ``text`` may write a date of ``wanted`` (YYYYMMDD) in a rendering ``date_spans`` reads (with
    ``yymmdd``, as six bare digits too). Conservative, and false for most texts without a pattern run over
    them: substring tests (``_probes``), a CJK year or month, and the months' names with a digit beside
    them."""
    probes = _probes(frozenset(wanted), yymmdd)
    if any(map(text.__contains__, probes.exact)):
        return True
    if not text.isascii() and any(ch in text for ch in "年月년월"):
        return True
    dotted = text.replace("-", ".").replace("/", ".")
    if any(map(dotted.__contains__, probes.paired)):
        return True
    return next(_month_words_near_digits(text, probes.stems), None) is not None


def dates_written(texts: Sequence[str], wanted: Collection[str],
                  yymmdd: Callable[[int], bool] | None = None) -> dict[str, int]:
    """The dates of ``wanted`` (YYYYMMDD) that ``texts`` (the values of a DICOM header) write in a rendering
    ``date_spans`` knows, each with the index of the first text writing it: a day and month without a year
    (``--MMDD``) writes the wanted dates of that day, whatever their year; the bare six digits count only
    in the texts whose index ``yymmdd`` accepts (none without it). One pass over the texts joined by line
    breaks (which no rendering spans), and none when ``may_write_dates`` finds no candidate: most headers
    hold numbers of four digits (code values, versions), but not those years."""
    joined = "\n".join(texts)
    if not wanted or not may_write_dates(joined, wanted, yymmdd=yymmdd is not None):
        return {}
    starts = list(itertools.accumulate((len(t) + 1 for t in texts), initial=0))
    of_day: dict[str, list[str]] = {}  # --MMDD -> the wanted dates of that day
    for d in wanted:
        of_day.setdefault(f"--{d[4:]}", []).append(d)
    written: dict[str, int] = {}
    for found in date_spans(joined, months={int(d[4:6]) for d in wanted}):
        hits = [w for d in found.dates for w in (of_day.get(d, ()) if d.startswith("--") else (d,))
                if w in wanted and w not in written]
        if hits:
            i = bisect.bisect_right(starts, found.start) - 1
            if not found.yymmdd or (yymmdd is not None and yymmdd(i)):
                written.update(dict.fromkeys(hits, i))
    return written
