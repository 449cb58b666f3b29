"""``leak_scan``: the output checked against the identifying material of the original, one check a
function (``LEAK_CHECKS``)."""

from __future__ import annotations

import collections
import datetime as _dt
import functools
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag

from strongroom.identifiers import dates_written
from strongroom.imaging.deid_table import ROWS, SAFE_PRIVATE

from .elements import DEFER_SIZE, PIXEL_GROUP, PLACEHOLDERS, Item, Leak, Read, Value, date8, from_pydicom, load
from .identity import free_text_values, identity_leaks, text_values
from .reader import DEFLATED, inflated, parse

_FREE_TEXT_VRS = {"AE", "LO", "LT", "SH", "ST", "UC", "UT", "UR", "PN"}
_BYTES_VRS = {"OB", "OW", "UN", "OD", "OF", "OL", "OV", "OB or OW", "OW or OB"}
_COLUMN = {"retain_longitudinal_full": "rtn_long_full_dates",
           "retain_longitudinal_modified_dates": "rtn_long_modif_dates",
           "retain_patient_characteristics": "rtn_pat_chars", "retain_device_identity": "rtn_dev_id",
           "retain_institution_identity": "rtn_inst_id", "retain_uids": "rtn_uids",
           "retain_safe_private": "rtn_safe_priv", "clean_descriptors": "clean_desc",
           "clean_structured_content": "clean_struct_cont", "clean_graphics": "clean_graph"}
# UI attributes that name classes, syntaxes or code systems, not instances
_CLASS_UID_KEYWORDS = ("Class", "TransferSyntax", "CodingScheme", "ContextUID", "ContextGroupExtensionCreatorUID",
                       "MappingResourceUID")
# codes (value, scheme, version, long value, URN) and the product (Manufacturer, Model Name: test sites
# name themselves after it): words there are not identifying
_CODED_TAGS = {0x00080100, 0x00080102, 0x00080103, 0x00080119, 0x00080120, 0x00080070, 0x00081090}
# descriptors the profile removes because they MAY hold identifying text; equal to a kept value as a whole
# ("Carotids" = Position Reference Indicator) they hold none
_DESCRIPTOR = re.compile(r"Description|ProtocolName|Label$|Title$")
_SAFE = {(sp.creator, sp.group, sp.element) for sp in SAFE_PRIVATE}


def _private_creator(item: Item, tag: int) -> str | None:
    """The private creator of ``tag`` in ``item``, the dataset that holds it."""
    creator = item.get((tag & 0xFFFF0000) | ((tag & 0xFFFF) >> 8))
    return "\\".join(creator.texts) if creator is not None else None


def _profile_flags(profile: Any) -> dict[str, bool]:
    return {flag: bool(getattr(profile, flag, False)) for flag in _COLUMN}


def _row_policy(flags: dict[str, bool]) -> dict[int, str]:
    """tag -> 'keep' (an enabled option retains it), 'clean' (an option cleans it) or 'change'. Built
    once per set of options (the table is fixed); callers must not modify the returned dict."""
    return _row_policy_of(tuple(sorted(flags.items())))


@functools.lru_cache(maxsize=64)
def _row_policy_of(items: tuple[tuple[str, bool], ...]) -> dict[int, str]:
    flags = dict(items)
    policy: dict[int, str] = {}
    for row in ROWS:
        if row.tag is None:
            continue
        cells = [getattr(row, _COLUMN[f]) for f, on in flags.items() if on and getattr(row, _COLUMN[f])]
        if "C" in cells:
            policy[row.tag] = "clean"
        elif "K" in cells or row.basic == "K":
            policy[row.tag] = "keep"
        else:
            policy[row.tag] = "change"
    return policy


def _days(a: str, b: str) -> int | None:
    try:
        da = _dt.date(int(a[:4]), int(a[4:6]), int(a[6:8]))
        db = _dt.date(int(b[:4]), int(b[4:6]), int(b[6:8]))
    except ValueError:
        return None
    return (db - da).days


def _scan_bytes(read: Read) -> bytes:
    """What the byte-level checks search: the output without its pixel data values, inflated first when
    deflated — a search of compressed bytes never matches (``ValueError`` if it does not inflate: the scan
    fails and the instance is quarantined, never released unsearched)."""
    if read.transfer_syntax != DEFLATED:
        return _header_bytes(read)
    plain = inflated(read.raw)
    back = parse(plain) or from_pydicom(pydicom.dcmread(io.BytesIO(plain), force=True, defer_size=DEFER_SIZE), plain)
    return _header_bytes(back)


def _header_bytes(read: Read) -> bytes:
    """The file without its pixel data values (random pixels would produce accidental matches)."""
    if not read.pixels:
        return read.raw
    out, pos = [], 0
    for start, end in sorted((start, end) for _, _, start, end in read.pixels):
        out.append(read.raw[pos:start])
        pos = max(pos, end)
    out.append(read.raw[pos:])
    return b"\x00".join(out)


def _encodable(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class _Scan:
    """What the leak checks share: the profile's policy, both objects, the identifying material collected
    from the original and the output's values by element path."""

    flags: dict[str, bool]
    policy: dict[int, str]  # tag -> keep | clean | change (see _row_policy)
    safe_private: set[tuple[Any, ...]]
    date_mode: str  # remove | modified | full
    orig: Read
    out: Read
    header: bytes  # the output file without its pixel data values
    needles: dict[str, tuple[str, str]] = field(default_factory=dict)  # text -> (kind, source path)
    uids: dict[str, str] = field(default_factory=dict)  # original UID -> source path
    dates: dict[str, str] = field(default_factory=dict)  # original YYYYMMDD -> source path
    orig_values: dict[str, list[str]] = field(default_factory=dict)  # path -> text values
    private_bytes: list[tuple[bytes, str]] = field(default_factory=list)  # (value, source path)
    out_values: dict[str, list[str]] = field(default_factory=dict)  # path -> text values
    out_elems: dict[str, Value] = field(default_factory=dict)  # path -> the output's element
    orig_all: list[Value] = field(default_factory=list)  # every element of the original
    out_all: list[Value] = field(default_factory=list)  # every element of the output
    _texts: list[tuple[str, int, str, str]] | None = None  # see texts()

    @classmethod
    def of(cls, original: Any, deidentified: Any, profile: Any) -> _Scan:
        flags = _profile_flags(profile)
        date_mode = "full" if flags["retain_longitudinal_full"] else (
            "modified" if flags["retain_longitudinal_modified_dates"] else "remove")
        orig, out = load(original, keep_bytes=False), load(deidentified)
        scan = cls(flags, _row_policy(flags), _SAFE | {tuple(x) for x in getattr(profile, "extra_safe_private", ())},
                   date_mode, orig, out, _scan_bytes(out))
        scan.orig_all, scan.out_all = orig.values, out.values
        scan._collect()
        scan._drop_allowed()
        for v in scan.out_all:
            scan.out_elems[v.path] = v
            if v.vr != "SQ" and v.tag >> 16 != PIXEL_GROUP:
                scan.out_values[v.path] = v.texts
        return scan

    def _add(self, text: str, kind: str, source: str) -> None:
        text = text.strip().strip("^").strip()
        if len(text) >= 4 and text.upper() not in PLACEHOLDERS and not re.fullmatch(r"[\d.\-+ ]{1,5}", text):
            # a private copy (read first when its group is lower) must not lend a standard attribute's
            # value the private exemption of _drop_allowed
            seen = self.needles.get(text)
            if seen is None or (seen[0] == "private" and kind != "private"):
                self.needles[text] = (kind, source)

    def _collect(self) -> None:
        """Identifying material of the original: what the profile may not keep."""
        flags, policy = self.flags, self.policy
        for here, tag, vr, texts, blob, ds in self.orig_all:
            group = tag >> 16
            if vr == "SQ" or group == PIXEL_GROUP or group == 0x0002:
                continue
            if texts:
                self.orig_values[here] = texts
            if group & 1:
                if tag & 0xFFFF < 0x1000:
                    continue  # creators and reserved elements
                creator = _private_creator(ds, tag)
                safe = flags["retain_safe_private"] and (creator, group, tag & 0xFF) in self.safe_private
                if safe:
                    if vr == "UI" and not flags["retain_uids"]:
                        for t in texts:
                            if not t.startswith("1.2.840.10008."):
                                self.uids.setdefault(t, here)
                    continue
                for t in texts:
                    self._add(t, "private", here)
                if blob is not None and len(blob) >= 8:
                    self.private_bytes.append((blob, here))
                continue
            row_policy = policy.get(tag)
            if vr == "UI":
                if not flags["retain_uids"]:
                    keyword = keyword_for_tag(tag) or ""
                    for t in texts:
                        if not t.startswith("1.2.840.10008.") and not any(k in keyword for k in _CLASS_UID_KEYWORDS):
                            self.uids.setdefault(t, here)
                continue
            if vr in ("DA", "DT"):
                if self.date_mode != "full":
                    for t in texts:
                        for part in re.split(r"[-\\]", t):
                            d = date8(part)
                            if d:
                                self.dates.setdefault(d, here)
                continue
            if vr == "PN":
                for t in texts:
                    self._add(t, "name", here)
                    for part in re.split(r"[\^=]", t):
                        if len(part.strip()) >= 3:
                            self._add(part, "name", here)
                continue
            if row_policy == "change" and vr in _FREE_TEXT_VRS:
                for t in texts:
                    self._add(t, "value", here)
            elif blob is not None and len(blob) >= 8 and (
                    (row_policy == "change" and vr in _BYTES_VRS) or (row_policy is None and vr == "UN")):
                self.private_bytes.append((blob, here))  # unknown-VR / binary identifying values

    def _drop_allowed(self) -> None:
        """Values that the original also carries in attributes allowed to stay, where they are not
        identifying. A value of an attribute the profile changes or removes (a name, an ID, a device or
        station identifier, free text) is dropped only when a kept coded or numeric attribute, a code or
        the product's name holds it (Series Description "Scout" beside Scan Options SCOUT MODE: a defined
        term; an Institution Name within the Manufacturer's name, as at test sites), or, for a descriptor
        (``_DESCRIPTOR``), when a kept attribute holds it as its whole value; never for a copy in kept
        text (a Device ID, a comment, a code meaning), which is exactly where it would leak. A private
        value (collected whatever it is) is dropped wherever a kept attribute holds it."""
        allowed: list[str] = []
        coded: list[str] = []  # values of kept CS / DS / IS attributes, codes, Manufacturer and model name
        whole: set[str] = set()  # every kept value, casefolded
        for path, texts in self.orig_values.items():
            last = path.rsplit("(", 1)[-1].rstrip(")")
            tag = int(last.replace(",", ""), 16)
            if (tag >> 16) & 1 or self.policy.get(tag) not in (None, "keep"):
                continue
            try:
                vr, keyword = dictionary_VR(tag), keyword_for_tag(tag)
            except KeyError:
                continue
            if vr == "PN" or (vr in ("DA", "DT") and self.date_mode != "full"):
                continue
            if vr == "UI" and not (self.flags["retain_uids"] or any(k in keyword for k in _CLASS_UID_KEYWORDS)):
                continue
            allowed.extend(texts)
            if vr in ("CS", "DS", "IS") or tag in _CODED_TAGS:
                coded.extend(texts)
            whole.update(t.casefold() for t in texts)
        allowed_text = "\n".join(allowed)
        allowed_lower = allowed_text.lower()
        needles = self.needles
        coded_text = "\n".join(coded)
        coded_lower = coded_text.lower()
        for text, (kind, source) in list(needles.items()):
            if kind == "private":
                continue
            in_code = text.lower() in coded_lower and re.search(
                rf"(?<![0-9A-Za-z]){re.escape(text)}(?![0-9A-Za-z])", coded_text, re.I)
            if in_code or (text.casefold() in whole and _DESCRIPTOR.search(
                    keyword_for_tag(int(source.rsplit("(", 1)[-1].rstrip(")").replace(",", ""), 16)) or "")):
                del needles[text]
        # a substring test first (no pattern to compile: the needles differ from file to file), the
        # word-boundary match only for the few that occur
        for text in [n for n, (kind, _) in needles.items() if kind == "private" and n.lower() in allowed_lower]:
            if re.search(rf"(?<![0-9A-Za-z]){re.escape(text)}(?![0-9A-Za-z])", allowed_text, re.I):
                del needles[text]
        allowed_set = set(allowed)
        for uid in list(self.uids):
            if uid in allowed_set:
                del self.uids[uid]

    def texts(self) -> list[tuple[str, int, str, str]]:
        """The output's values as the identity scan searches them (``identity.text_values``), read once for
        the checks that need them."""
        if self._texts is None:
            self._texts = text_values(self.out_all)
        return self._texts

    def locate(self, rx: re.Pattern[str]) -> str:
        """The first output element whose value matches ``rx`` ("file bytes" when only the bytes do)."""
        for path, texts in self.out_values.items():
            if any(rx.search(t) for t in texts):
                return path
        return "file bytes"


# ---- the checks, run in this order; each yields its findings


def identifying_strings(s: _Scan) -> Iterator[Leak]:
    """Identifying strings of the original (names, IDs, free text the profile changes, private values)
    anywhere in the output's bytes except the pixel data, UTF-8 or Latin-1 encoded. A case-insensitive
    substring test first (bytes: ASCII case, as ``re.I`` on bytes), so that only the needles that occur
    somewhere get a word-boundary pattern compiled — the needles differ from file to file."""
    header_lower = s.header.lower()
    present = [(text, where) for text, where in s.needles.items()
               if any(text.encode(enc).lower() in header_lower
                      for enc in ("utf-8", "latin-1") if _encodable(text, enc))]
    for text, (kind, source) in present:
        pattern = rf"(?<![0-9A-Za-z]){re.escape(text)}(?![0-9A-Za-z])"
        for enc in ("utf-8", "latin-1"):
            try:
                needle = text.encode(enc)
            except UnicodeEncodeError:
                continue
            if re.search(rb"(?<![0-9A-Za-z])" + re.escape(needle) + rb"(?![0-9A-Za-z])", s.header, re.I):
                yield Leak(kind, s.locate(re.compile(pattern, re.I)), source,
                           f"identifying {kind} value of {source} found in the output")
                break


def original_uids(s: _Scan) -> Iterator[Leak]:
    """Instance UIDs of the original (unless Retain UIDs) in the output's bytes: a substring test first,
    the bounded match only for those that occur."""
    for uid, source in [(u, where) for u, where in s.uids.items() if u.encode() in s.header]:
        if re.search(rb"(?<![0-9.])" + re.escape(uid.encode()) + rb"(?![0-9.])", s.header):
            yield Leak("uid", s.locate(re.compile(rf"(?<![0-9.]){re.escape(uid)}(?![0-9.])")), source,
                       f"original UID of {source} found in the output")


def identifying_bytes(s: _Scan) -> Iterator[Leak]:
    """Binary values of private and unknown-VR elements of the original (8 bytes or more) in the output."""
    for blob, source in s.private_bytes:
        probe = blob.strip(b"\0 ")
        if len(probe) >= 8 and probe in s.header:
            yield Leak("private", "file bytes", source, f"bytes of {source} found in the output")


def date_option(s: _Scan) -> Iterator[Leak]:
    """The date option: original dates gone (removed), or all moved by one non-zero whole-day offset
    (Modified Dates); nothing to check under Full Dates."""
    if s.date_mode == "full":
        return
    expected_shifted: set[str] = set()
    if s.date_mode == "modified":
        pairs: list[tuple[int, str]] = []
        for path, texts in s.orig_values.items():
            found = s.out_elems.get(path)
            if found is None or found.vr not in ("DA", "DT"):
                continue
            for old, new in zip(texts, found.texts, strict=False):
                a, b = date8(old), date8(new)
                delta = _days(a, b) if a and b else None
                if delta is not None:
                    pairs.append((delta, b))  # type: ignore[arg-type]
        offsets = collections.Counter(delta for delta, _ in pairs)
        if offsets.get(0):
            yield Leak("date", "dates", "dates", f"{offsets[0]} date(s) not shifted (Modified Dates)")
        if len([o for o in offsets if o]) > 1:
            yield Leak("date", "dates", "dates", f"dates shifted inconsistently ({len(offsets)} offsets)")
        common = [o for o, _ in offsets.most_common() if o]
        if common:
            expected_shifted = {b for delta, b in pairs if delta == common[0]}
    wanted = {d: source for d, source in s.dates.items() if d not in expected_shifted and d != "19000101"}
    unseen: dict[str, str] = {}  # not as YYYYMMDD, but maybe in another rendering: see below
    for d, source in wanted.items():
        if _occurs_undigited(d.encode(), s.header):
            yield Leak("date", s.locate(re.compile(rf"(?<![0-9]){d}")), source,
                       f"original date of {source} found in the output ({s.date_mode} dates)")
        else:
            unseen[d] = source
    # in free text (retained private and unknown bytes too), in another rendering: 2021-01-04, 4/1/2021,
    # 4 Jan 2021, 4 januari 2021, 2021年1月4日, 4 Jan (any year)...; as six bare digits (210104) not in coded
    # strings and codes, where a defined term or code value may have that shape
    if unseen:
        free = free_text_values(s.texts())

        def yymmdd(i: int) -> bool:
            return free[i][2] != "CS" and free[i][1] not in _CODED_TAGS

        for d, i in dates_written([value[3] for value in free], unseen, yymmdd).items():
            yield Leak("date", free[i][0].replace("]>", "]."), unseen[d],
                       f"original date of {unseen[d]} written in the output's free text ({s.date_mode} dates)")


def _occurs_undigited(needle: bytes, haystack: bytes) -> bool:
    """``re.search(rb"(?<![0-9])" + needle, haystack)`` without compiling a pattern per date."""
    at = haystack.find(needle)
    while at >= 0:
        if at == 0 or not 0x30 <= haystack[at - 1] <= 0x39:
            return True
        at = haystack.find(needle, at + 1)
    return False


def replaced_attributes(s: _Scan) -> Iterator[Leak]:
    """Attributes the profile must change, still holding their original value at the same place."""
    for path, texts in s.orig_values.items():
        last = path.rsplit("(", 1)[-1].rstrip(")")
        try:
            tag = int(last.replace(",", ""), 16)
        except ValueError:
            continue
        if s.policy.get(tag) != "change" or (tag >> 16) == 0x0002:
            continue
        found = s.out_values.get(path)
        if found and [t.upper() for t in found] == [t.upper() for t in texts] and any(texts):
            if all(t.upper() in PLACEHOLDERS for t in texts):
                continue
            yield Leak("attribute", path, path, "attribute that the profile replaces kept its value")


def private_and_graphics(s: _Scan) -> Iterator[Leak]:
    """Private elements outside the safe private table, curves, and overlays (unless Clean Graphics)."""
    for path, v in s.out_elems.items():
        group, element = v.tag >> 16, v.tag & 0xFFFF
        if group & 1 and element >= 0x1000:
            creator = _private_creator(v.parent, v.tag)
            if not (s.flags["retain_safe_private"] and (creator, group, element & 0xFF) in s.safe_private):
                yield Leak("private", path, path, "private element not retained by the safe private table")
        elif 0x5000 <= group <= 0x501E and group % 2 == 0:
            yield Leak("graphics", path, path, "curve data present")
        elif 0x6000 <= group <= 0x601E and group % 2 == 0 and element == 0x3000 \
                and not s.flags["clean_graphics"]:
            yield Leak("graphics", path, path, "overlay data present")


def markers(s: _Scan) -> Iterator[Leak]:
    """The de-identification markers, and a Patient ID that is not the original one."""
    def text(values: dict[str, list[str]], path: str) -> str:
        return "\\".join(values.get(path) or ()).upper()

    if text(s.out_values, "(0012,0062)") != "YES":
        yield Leak("marker", "(0012,0062)", "", "Patient Identity Removed is not YES")
    codes = {t for path, texts in s.out_values.items() if path.startswith("(0012,0064)[")
             and path.endswith("].(0008,0100)") and path.count("(") == 2 for t in texts}
    if "113100" not in codes:
        yield Leak("marker", "(0012,0064)", "", "De-identification Method Code Sequence lacks 113100")
    expected = {"remove": "REMOVED", "full": "UNMODIFIED", "modified": "MODIFIED"}[s.date_mode]
    if text(s.out_values, "(0028,0303)") != expected:
        yield Leak("marker", "(0028,0303)", "", f"Longitudinal Temporal Information Modified is not {expected}")
    patient_id = text(s.out_values, "(0010,0020)")
    if patient_id and patient_id == text(s.orig_values, "(0010,0020)"):
        yield Leak("attribute", "(0010,0020)", "(0010,0020)", "Patient ID unchanged")


def identity_values(s: _Scan) -> Iterator[Leak]:
    """Identifying values of the original and national identity numbers in any output value
    (``identity_scan``), with no exception for attributes the profile keeps."""
    yield from identity_leaks(s.orig_all, s.out_all, s.flags, s.texts())


LEAK_CHECKS: tuple[Callable[[_Scan], Iterable[Leak]], ...] = (
    identifying_strings, original_uids, identifying_bytes, date_option, replaced_attributes, private_and_graphics,
    markers, identity_values,
)


def leak_scan(original: Any, deidentified: Any, profile: Any) -> list[Leak]:
    """Leaks of identifying information from ``original`` into ``deidentified`` under ``profile``: the
    findings of every check of ``LEAK_CHECKS``, in that order.

    Both may be bytes, a path or a pydicom ``Dataset``; an empty list means the output passed."""
    return scan_read(original, deidentified, profile).leaks


class ScanRead(NamedTuple):
    leaks: list[Leak]
    original: Read
    output: Read  # its ``raw`` is the output file as read


def scan_read(original: Any, deidentified: Any, profile: Any) -> ScanRead:
    """``leak_scan``, and both files as it read them, so that a caller checking more (``risk_check``, the
    catalogue's attributes, the DICOMweb index: ``dicomindex.index_read``) reads neither file again."""
    scan = _Scan.of(original, deidentified, profile)
    return ScanRead([leak for check in LEAK_CHECKS for leak in check(scan)], scan.orig, scan.out)
