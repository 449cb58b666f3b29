"""``identity_scan``: identifying values of the original and national identity numbers, searched in
every element value of the output."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from pydicom.dataset import Dataset

from ...identifiers import cjk_name_forms, dates_written, may_write_dates, national_ids
from .elements import PIXEL_GROUP, PLACEHOLDERS, Leak, Value, date8, values

# Identifying values of the original are searched in EVERY element value of the output (sequences at any
# depth, retained private elements, code meanings, kept descriptors), with no exception for attributes the
# profile keeps: a name typed into a kept attribute is exactly the leak this catches. National identity
# numbers are also searched by pattern, whoever they belong to.

_NAME_STOP = {"DR", "MD", "PROF", "MR", "MRS", "MS", "MISS", "JR", "SR", "PHD", "II", "III", "IV", "RN", "DDS",
              "DOC", "SIR", "VON", "VAN", "DER", "DEN", "DEL", "LA", "LE", "DE", "DA", "DI", "DU", "AF", "AV"}
_PATIENT_NAME_TAGS = {0x00100010: "patient name component", 0x00101001: "patient name component",
                      0x00101005: "patient name component", 0x00101060: "patient name component"}
# tag -> kind of identifying value (searched whole, at least 4 characters)
_IDENTIFIER_TAGS = {
    0x00100020: "patient ID", 0x00101000: "other patient ID", 0x00080050: "accession number",
    0x00101090: "medical record locator", 0x00380010: "admission ID", 0x00402016: "placer order number",
    0x00402017: "filler order number", 0x00401001: "requested procedure ID", 0x00101040: "address",
    0x00380300: "address", 0x00100101: "other patient ID",
}
_PHONE_TAGS = {0x00102154: "telephone number", 0x00080094: "telephone number", 0x00081149: "telephone number"}
_INSTITUTION_TAGS = {0x00080080: "institution name", 0x00080081: "institution address",
                     0x00081040: "institution department", 0x00080082: "institution name"}
_BIRTH_DATE = 0x00100030
_CODE_TAGS = {0x00080100, 0x00080102, 0x00080103, 0x00080119, 0x00080120}
_OTHER_IDS_SEQ = 0x00101002
# VRs whose values are text; numeric and coded-time VRs get only the exact-value checks (see below)
_FREE_VRS = {"AE", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR", "CS", "UN", "OB"}
_NUMERIC_VRS = {"AS", "DA", "DS", "DT", "IS", "TM"}


def _birth_date_forms(value: str) -> tuple[list[str], list[str]]:
    """(8+ character forms searched in every value, 6-digit YYMMDD searched in free text only)."""
    d = date8(value)
    if not d:
        return [], []
    y, m, dd = d[:4], d[4:6], d[6:8]
    long_forms = [d, f"{y}-{m}-{dd}", f"{y}.{m}.{dd}", f"{y}/{m}/{dd}", f"{dd}.{m}.{y}", f"{dd}/{m}/{y}",
                  f"{dd}-{m}-{y}", f"{m}/{dd}/{y}", f"{dd}{m}{y}", f"{y[2:]}-{m}-{dd}", f"{dd}.{m}.{y[2:]}",
                  f"{dd}/{m}/{y[2:]}"]
    # without leading zeros: 1.2.1990, 1990-2-1
    short_d, short_m = str(int(dd)), str(int(m))
    if (short_d, short_m) != (dd, m):
        long_forms += [f"{short_d}.{short_m}.{y}", f"{short_d}/{short_m}/{y}", f"{y}-{short_m}-{short_d}",
                       f"{short_m}/{short_d}/{y}"]
    return long_forms, [f"{y[2:]}{m}{dd}"]


class _IdentityNeedles:
    """What identifies the person in the original, compiled for one pass over the output."""

    def __init__(self, orig: list[Value], flags: dict[str, bool], haystack: str | None = None) -> None:
        """``haystack``: every text that will be searched, joined (``None``: unknown). Needles that occur
        in none of it cannot match anywhere and are left out of the patterns (see ``_present``)."""
        self.kinds: dict[str, str] = {}  # casefolded needle -> kind
        self.free_only: dict[str, str] = {}  # needles searched in free text only (YYMMDD)
        self.uid_components: dict[str, str] = {}  # numeric IDs matched as whole UID components
        self.phones: list[tuple[re.Pattern[str], str]] = []
        self.birth_dates: set[str] = set()  # YYYYMMDD, also searched in every rendering (date_spans)
        self._collect(orig, flags)
        if haystack is not None:
            self.kinds = _present(self.kinds, haystack)
            self.free_only = _present(self.free_only, haystack)
        self.rx = self._compile(self.kinds)
        self.free_rx = self._compile({**self.kinds, **self.free_only})
        # coded strings hold defined terms (TEXT, PNAME, CHEST...): other people's name components, often
        # placeholders in reports, are not searched there; the patient's identifiers are
        self.coded_rx = self._compile({k: v for k, v in self.kinds.items() if not v.startswith("person name")})
        # code values and scheme designators are codes ("TEST", "DCM"): searched for IDs and dates only
        self.code_rx = self._compile({k: v for k, v in self.kinds.items() if "name" not in v})

    @staticmethod
    def _compile(needles: dict[str, str]) -> re.Pattern[str] | None:
        if not needles:
            return None
        alts = "|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True))
        # letters/digits around a needle make it another word; a digit after a '.' another number
        return re.compile(rf"(?<![0-9A-Za-z_])(?<![0-9]\.)(?:{alts})(?![0-9A-Za-z_])(?!\.[0-9])", re.I)

    def _add(self, value: str, kind: str, minimum: int = 4) -> None:
        value = value.strip()
        if len(value) >= minimum and value.upper() not in PLACEHOLDERS:
            self.kinds.setdefault(value.casefold(), kind)
            if not value.isascii():  # ÅSTRÖM also as typed on an ASCII system (ASTROM); see fold
                self.kinds.setdefault(fold(value), kind)
            if value.isdigit() and len(value) >= 6:
                self.uid_components.setdefault(value, kind)

    def _collect(self, orig: list[Value], flags: dict[str, bool]) -> None:
        self._makers: dict[int, set[str]] = {}  # id of a dataset -> its Manufacturer and model name, casefolded
        for v in orig:
            if v.tag in (0x00080070, 0x00081090):
                self._makers.setdefault(id(v.parent), set()).update(t.casefold() for t in v.texts)
        for here, tag, vr, texts, _, ds in orig:
            if vr == "SQ":
                if tag == _OTHER_IDS_SEQ:  # recorded as other patient IDs before the walk enters the items
                    depth = here.count("(") + 1
                    for v in orig:
                        if v.tag == 0x00100020 and v.path.startswith(here + "[") and v.path.count("(") == depth:
                            for t in v.texts:
                                self._add(t, "other patient ID")
                continue
            if (tag >> 16) & 1 or tag >> 16 in (PIXEL_GROUP, 0x0002):
                continue
            if not texts:
                continue
            if vr == "PN":
                kind = _PATIENT_NAME_TAGS.get(tag, "person name component")
                for t in texts:
                    self._add(re.sub(r"[\^=]+", " ", t).strip(), kind.replace(" component", ""))
                    for part in re.split(r"[\^=\s,\-'\u2019]+", t):  # LINDQVIST-BERG: each part too
                        part = part.strip(" .")
                        if len(part) >= 3 and part.upper() not in _NAME_STOP:
                            self._add(part, kind, 3)
                    if not t.isascii():  # 李^娜: the name as written, 李娜 (CJK has no spaces between words), 李 娜
                        for joined in cjk_name_forms(t):
                            self._add(joined, kind.replace(" component", ""), 2)
            elif tag in _IDENTIFIER_TAGS:
                for t in texts:
                    self._add(t, _IDENTIFIER_TAGS[tag])
                    if _IDENTIFIER_TAGS[tag] == "address":  # street lines and postcodes: the parts with digits
                        for part in re.split(r"[,^\n\r]+", t):
                            if re.search(r"\d", part) and re.search(r"[A-Za-z]", part):
                                self._add(part, "address", 6)
            elif tag in _INSTITUTION_TAGS and not flags["retain_institution_identity"]:
                # an organisation: not identifying when it is also the equipment's maker (test sites)
                makers = self._makers.get(id(ds), set())
                for t in texts:
                    if t.strip().casefold() not in makers:
                        self._add(t, _INSTITUTION_TAGS[tag], 6)
            elif tag in _PHONE_TAGS:
                for t in texts:
                    digits = re.sub(r"\D", "", t)
                    if len(digits) >= 7:  # the subscriber part, whatever separators and prefixes are used
                        body = r"[\s\-./()]*".join(digits[-7:])
                        self.phones.append((re.compile(rf"(?<![0-9]){body}(?![0-9])"), _PHONE_TAGS[tag]))
            elif tag == _BIRTH_DATE:
                for t in texts:
                    long_forms, short_forms = _birth_date_forms(t)
                    for f in long_forms:
                        self.kinds.setdefault(f.casefold(), "birth date")
                    for f in short_forms:
                        self.free_only.setdefault(f, "birth date")
                    if long_forms:
                        self.uid_components.setdefault(long_forms[0], "birth date")
                        self.birth_dates.add(long_forms[0])

    def search(self, tag: int, vr: str, text: str) -> list[str]:
        """Kinds of identifying values in one element value."""
        if vr == "UI":  # dotted numerics: only a whole component equal to an original ID or birth date
            return [self.uid_components[c] for c in re.split(r"[.\\]", text) if c in self.uid_components]
        hits: list[str] = []
        rx = self.code_rx if tag in _CODE_TAGS else self.coded_rx if vr == "CS" else \
            self.free_rx if vr in _FREE_VRS else self.rx
        if rx is not None:
            for m in rx.finditer(text):
                key = m.group(0).casefold()
                hits.append(self.kinds.get(key) or self.free_only.get(key) or "identifying value")
        for phone, kind in self.phones:
            if phone.search(text):
                hits.append(kind)
        hits.extend(national_ids(text, wide=True))
        return hits

    def birth_date_texts(self, texts: list[tuple[str, int, str, str]], haystack: str) -> list[str]:
        """Paths of the free-text values among ``texts`` that write the birth date in a rendering
        ``identifiers.date_spans`` knows (4 Jan 1940, 1940 01 04, 4 januari 1940...); the bare YYMMDD only
        where ``search`` looks for it (free text, not coded strings or codes). ``haystack``: every text
        joined, for a first test (``may_write_dates``)."""
        if not self.birth_dates or not may_write_dates(haystack, self.birth_dates, yymmdd=True):
            return []
        free = free_text_values(texts)

        def yymmdd(i: int) -> bool:
            return free[i][2] != "CS" and free[i][1] not in _CODE_TAGS

        return [free[i][0] for i in dates_written([value[3] for value in free], self.birth_dates, yymmdd).values()]


def fold(text: str) -> str:
    """``text`` compatibility-decomposed, without combining marks, casefolded: Åström, A\u030astro\u0308m
    (NFD) and ASTROM alike."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def _present(needles: dict[str, str], haystack: str) -> dict[str, str]:
    """The needles that may match somewhere in ``haystack`` under ``re.I``. Compiling the patterns is most
    of the scan's cost (a few ms for each new patient or study), and in a clean output almost no needle
    occurs at all. The test is conservative: for ASCII text and an ASCII needle, ``re.I`` matches exactly
    the ASCII case-insensitive substrings, so a needle absent from ``haystack.lower()`` matches nowhere;
    a needle that is not ASCII is always kept, and so is every needle when the text is not all ASCII
    (Unicode case folding has equivalences such as ``ı``/``i`` and ``ſ``/``s`` that ``lower`` lacks).
    Dropping alternatives that match nowhere changes no match of the alternation."""
    if not haystack.isascii():
        return needles
    lowered = haystack.lower()
    return {n: kind for n, kind in needles.items() if not n.isascii() or n.lower() in lowered}


def _text_values(out: list[Value]) -> Iterator[tuple[str, int, str, str]]:
    """(path with '>' between nesting levels, tag, VR, text) of every element value except pixel data."""
    for here, tag, vr, texts, blob, _ in out:
        group = tag >> 16
        if vr == "SQ" or group == PIXEL_GROUP or (0x6000 <= group <= 0x601E and tag & 0xFFFF == 0x3000):
            continue
        here = here.replace("].", "]>")
        if blob is not None:
            if vr in ("UN", "OB") and (group & 1 or vr == "UN"):  # retained private / unknown values
                yield here, tag, vr, blob.decode("latin-1")
            continue
        if vr in _FREE_VRS or vr in _NUMERIC_VRS or vr == "UI":
            for t in texts:
                yield here, tag, vr, t
                if not t.isascii() and fold(t) != t.casefold():  # searched folded too (NFD, diacritics)
                    yield here, tag, vr, fold(t)


def identity_scan(orig: Dataset, out: Dataset, flags: dict[str, bool]) -> list[Leak]:
    """Every element value of ``out`` searched for the identifying values of ``orig`` and for national
    identity numbers by pattern; one ``Leak`` per (attribute, kind), never naming the value."""
    return identity_leaks(values(orig), values(out), flags)


def text_values(out: list[Value]) -> list[tuple[str, int, str, str]]:
    """(path with '>' between nesting levels, tag, VR, text) of every element value the identity scan
    searches (every one but pixel data and overlays; non-ASCII text also folded)."""
    return list(_text_values(out))


def free_text_values(texts: list[tuple[str, int, str, str]]) -> list[tuple[str, int, str, str]]:
    """Those of ``text_values`` that are free text (names and codes too), where dates are also searched in
    other renderings (``identifiers.date_spans``)."""
    return [value for value in texts if value[2] in _FREE_VRS]


def identity_leaks(orig: list[Value], out: list[Value], flags: dict[str, bool],
                   texts: list[tuple[str, int, str, str]] | None = None) -> list[Leak]:
    """``identity_scan`` on elements already read (``values``); ``texts``: ``text_values(out)``, when the
    caller has it."""
    texts = text_values(out) if texts is None else texts
    haystack = "\n".join(text for _, _, _, text in texts)
    needles = _IdentityNeedles(orig, flags, haystack)
    leaks: list[Leak] = []
    seen: set[tuple[str, str]] = set()
    found = [(path, kind) for path, tag, vr, text in texts for kind in needles.search(tag, vr, text)]
    found += [(path, "birth date") for path in needles.birth_date_texts(texts, haystack)]
    for path, kind in found:
        if (path, kind) not in seen:
            seen.add((path, kind))
            leaks.append(Leak(kind, path, "original", f"{kind} found in the output"))
    return leaks
