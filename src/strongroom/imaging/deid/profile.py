"""A de-identification profile: the PS3.15 Basic Profile, the options it selects, pixel rules."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# PS3.16 CID 7050 "De-identification Method", coding scheme DCM
CID_7050: dict[str, str] = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113102": "Clean Recognizable Visual Features Option",
    "113103": "Clean Graphics Option",
    "113104": "Clean Structured Content Option",
    "113105": "Clean Descriptors Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113110": "Retain UIDs Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}

# profile flag -> (Table E.1-1 option column, CID 7050 code)
OPTIONS: dict[str, tuple[str, str]] = {
    "retain_longitudinal_full": ("rtn_long_full_dates", "113106"),
    "retain_longitudinal_modified_dates": ("rtn_long_modif_dates", "113107"),
    "retain_patient_characteristics": ("rtn_pat_chars", "113108"),
    "retain_device_identity": ("rtn_dev_id", "113109"),
    "retain_institution_identity": ("rtn_inst_id", "113112"),
    "retain_uids": ("rtn_uids", "113110"),
    "retain_safe_private": ("rtn_safe_priv", "113111"),
    "clean_descriptors": ("clean_desc", "113105"),
    "clean_structured_content": ("clean_struct_cont", "113104"),
    "clean_graphics": ("clean_graph", "113103"),
}


# A value longer than any valid Manufacturer (LO, 64), Model (LO, 64) or Modality (CS, 16) is not searched: it
# counts as matching, so a crafted value can neither slow the search nor slip past a rule (fail closed).
VALUE_MAX = 1024


class PatternError(ValueError):
    pass


@dataclass(frozen=True)
class TextPattern:
    """A pixel rule's pattern: the safe subset of regular expressions that runs in linear time.

    Case-insensitive text searched in a value; ``.`` is any one character, ``.*`` any run of characters, a
    leading ``^`` anchors at the value's start and a trailing ``$`` at its end, ``\\`` before a punctuation mark
    makes it literal; empty matches anything. Every pattern of the subset means what it meant as a regular
    expression (old profiles keep working); anything else (groups, alternation, classes, other quantifiers) is
    refused (``parse``): nested quantifiers such as ``^(a+)+$`` backtrack for ages on a crafted value, and the
    search runs in the web process and the import workers. The search is a few fixed-length pieces found
    left to right (no backtracking, no quantifier ever reaches ``re``)."""

    source: str
    start: bool
    end: bool
    pieces: tuple[re.Pattern[str], ...]  # fixed-length: literals and "." only, no quantifier
    widths: tuple[int, ...]

    @classmethod
    def parse(cls, source: str) -> TextPattern:
        start = end = False
        pieces: list[list[str]] = [[]]  # split at each ".*"; an item: one character, as a regular expression
        i = 0
        while i < len(source):
            c = source[i]
            if c == "^" and i == 0:
                start = True
            elif c == "$" and i == len(source) - 1:
                end = True
            elif c == "\\":
                nxt = source[i + 1:i + 2]
                if not (nxt and nxt.isascii() and nxt.isprintable() and not nxt.isalnum()):
                    raise PatternError(f"'\\{nxt}' is not allowed: only a punctuation mark may follow '\\'")
                pieces[-1].append(re.escape(nxt))
                i += 1
            elif source.startswith(".*", i):
                pieces.append([])
                i += 1
            elif c == ".":
                pieces[-1].append(".")
            elif c in "^$*+?()[]{}|":
                raise PatternError(f"{c!r} is not allowed: a pattern is text with '.' (any character), '.*' (any "
                                   "characters), a leading '^' and a trailing '$' (write '\\' before a literal "
                                   "punctuation mark); no groups, alternatives, classes or other repeats")
            else:
                pieces[-1].append(re.escape(c))
            i += 1
        return cls(source, start, end, tuple(re.compile("".join(p), re.I) for p in pieces),
                   tuple(len(p) for p in pieces))

    @classmethod
    def literal(cls, text: str) -> TextPattern:
        """``text`` as plain text (a stored pattern outside the subset, written before it was enforced)."""
        return cls(text, False, False, (re.compile(re.escape(text), re.I),), (len(text),))

    def search(self, text: str) -> bool:
        if len(text) > VALUE_MAX:
            return True
        first, last = 0, len(self.pieces) - 1
        pos = 0
        for n, (piece, width) in enumerate(zip(self.pieces, self.widths, strict=True)):
            if n == last and self.end:
                at = len(text) - width
                return at >= pos and not (n == first and self.start and at != 0) and bool(piece.match(text, at))
            found = piece.match(text, pos) if n == first and self.start else piece.search(text, pos)
            if found is None:
                return False
            pos = found.end()
        return True


def compile_pattern(source: str) -> TextPattern:
    """The pattern, or a clear ``PatternError`` (a ValueError) when it is outside the safe subset."""
    try:
        return TextPattern.parse(source)
    except PatternError as exc:
        raise PatternError(f"pattern {source!r}: {exc}") from None


def _stored_pattern(source: str) -> TextPattern:
    try:
        return TextPattern.parse(source)
    except PatternError:
        return TextPattern.literal(source)


def _found(pattern: TextPattern, text: str) -> bool:
    """``pattern`` searched in ``text`` and in each of its values (their padding stripped)."""
    return any(pattern.search(v) for v in (text, *(value.strip() for value in text.split("\\"))))


@dataclass(frozen=True)
class PixelRule:
    """Blank rectangles ``(x, y, width, height)`` (pixels, origin top-left) in matching instances.

    ``manufacturer``, ``model`` and ``modality`` are case-insensitive patterns (``TextPattern``: text, ``.``,
    ``.*``, ``^``, ``$``) searched in Manufacturer (0008,0070), Manufacturer's Model Name (0008,1090) and
    Modality (0008,0060); an empty pattern matches anything. A pattern outside that subset (stored before it
    was enforced) is searched as plain text, never run as a regular expression. A multi-valued attribute
    (``CT\\US``) matches when the whole text or any one of its values does: a second value must never hide the
    one a rule is written for (an anchored ``^US$``).
    ``rows``/``columns`` (0 = any) pin the image size, as CTP's signatures do.
    """

    name: str
    rectangles: tuple[tuple[int, int, int, int], ...]
    manufacturer: str = ""
    model: str = ""
    modality: str = ""
    rows: int = 0
    columns: int = 0
    patterns: tuple[TextPattern, TextPattern, TextPattern] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(_stored_pattern(p) for p in
                                                   (self.manufacturer, self.model, self.modality)))
        rects = tuple(tuple(int(v) for v in r) for r in self.rectangles)
        if not rects or any(len(r) != 4 or r[2] <= 0 or r[3] <= 0 for r in rects):
            raise ValueError("rectangles are (x, y, width, height) with positive width and height")
        object.__setattr__(self, "rectangles", rects)

    def matches(self, manufacturer: str, model: str, modality: str, rows: int, columns: int) -> bool:
        return (
            all(_found(p, v) for p, v in zip(self.patterns, (manufacturer, model, modality), strict=True))
            and (not self.rows or self.rows == rows)
            and (not self.columns or self.columns == columns)
        )


@dataclass(frozen=True)
class DeidProfile:
    """A project's de-identification profile: the Basic Profile plus the PS3.15 options it selects."""

    retain_longitudinal_full: bool = False
    retain_longitudinal_modified_dates: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    retain_safe_private: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    pixel_rules: tuple[PixelRule, ...] = ()
    # stricter than Clean Descriptors: standard free text outside plan.TEXT_KEEP_LIST is cleaned or removed
    text_allow_list: bool = False
    # (private creator, group, element within the block) retained in addition to Table E.3.10-1
    extra_safe_private: tuple[tuple[str, int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.retain_longitudinal_full and self.retain_longitudinal_modified_dates:
            raise ValueError("choose one of retain_longitudinal_full / retain_longitudinal_modified_dates")
        object.__setattr__(self, "pixel_rules", tuple(self.pixel_rules))
        object.__setattr__(self, "extra_safe_private", tuple(tuple(x) for x in self.extra_safe_private))

    @property
    def date_mode(self) -> str:
        if self.retain_longitudinal_full:
            return "full"
        return "modified" if self.retain_longitudinal_modified_dates else "remove"

    def option_codes(self) -> list[str]:
        """CID 7050 codes of the profile (113100 first; 113101 is per instance, see ``DeidResult``)."""
        codes = {code for flag, (_, code) in OPTIONS.items() if getattr(self, flag)}
        if self.text_allow_list:  # the Clean Descriptors option, applied to every descriptor
            codes.add(OPTIONS["clean_descriptors"][1])
        return ["113100"] + sorted(codes)
