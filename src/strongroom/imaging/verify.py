"""Independent verification of de-identified DICOM output, and the risk check that sends objects to review.

``leak_scan`` does not reuse the engine's action logic: it reads both objects with pydicom, collects what
is identifying in the original (person names, IDs, UIDs, dates, institution/device strings, free text of
attributes the profile does not retain, every private value, unknown-VR bytes) and looks for any of it in
the output: in every element (sequences and private blocks included) and byte-wise in the whole file
except the pixel data. It also checks the date option (dates removed, or all moved by one non-zero
whole-day offset), the markers, overlays/curves and private blocks. It uses the standard's tables as data
(``deid_table``), not the engine's resolution code.

``risk_check`` lists reasons to quarantine an instance for human review instead of releasing it.
"""

from __future__ import annotations

import collections
import datetime as _dt
import io
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset

from strongroom.imaging.deid_table import ROWS, SAFE_PRIVATE

__all__ = ["LEAK_CHECKS", "Leak", "identity_scan", "leak_scan", "national_ids", "risk_check"]

_FREE_TEXT_VRS = {"AE", "LO", "LT", "SH", "ST", "UC", "UT", "UR", "PN"}
_BYTES_VRS = {"OB", "OW", "UN", "OD", "OF", "OL", "OV", "OB or OW", "OW or OB"}
_PLACEHOLDERS = {"ANONYMIZED", "ANONYMOUS", "ANON", "UNKNOWN", "NONE", "REMOVED", "DEIDENTIFIED", "NULL", "N/A",
                 "NOT AVAILABLE", "YES", "NO"}
_COLUMN = {"retain_longitudinal_full": "rtn_long_full_dates",
           "retain_longitudinal_modified_dates": "rtn_long_modif_dates",
           "retain_patient_characteristics": "rtn_pat_chars", "retain_device_identity": "rtn_dev_id",
           "retain_institution_identity": "rtn_inst_id", "retain_uids": "rtn_uids",
           "retain_safe_private": "rtn_safe_priv", "clean_descriptors": "clean_desc",
           "clean_structured_content": "clean_struct_cont", "clean_graphics": "clean_graph"}
# UI attributes that name classes, syntaxes or code systems, not instances
_CLASS_UID_KEYWORDS = ("Class", "TransferSyntax", "CodingScheme", "ContextUID", "ContextGroupExtensionCreatorUID",
                       "MappingResourceUID")
_SAFE = {(sp.creator, sp.group, sp.element) for sp in SAFE_PRIVATE}
_PIXEL_GROUP = 0x7FE0

US_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6.2", "1.2.840.10008.5.1.4.1.1.6.3",
                  "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3"}
SC_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # .7, .7.1 .. .7.4
ENCAPSULATED_DOC_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
# modalities whose pixels routinely carry burned-in text (screens, scanned film, photos, video, etc.)
RISKY_MODALITIES = {"US", "IVUS", "OT", "SC", "XC", "ES", "GM", "SM", "DOC", "XA", "RF", "CR", "DX", "MG", "IO",
                    "PX", "OP", "OPT", "ECG", "HD", "VIDEO", "TG"}


class Leak(NamedTuple):
    kind: str  # value | uid | date | attribute | private | marker | graphics
    where: str  # where in the output (element path, or "file bytes")
    source: str  # where in the original the identifying value came from
    detail: str  # never the value itself


def _load(obj: Any) -> tuple[Dataset, bytes]:
    if isinstance(obj, Dataset):
        buf = io.BytesIO()
        obj.save_as(buf, enforce_file_format=False)
        return obj, buf.getvalue()
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
    elif isinstance(obj, str | os.PathLike):
        raw = Path(obj).read_bytes()
    else:
        raise TypeError(f"cannot scan a {type(obj).__name__}")
    return pydicom.dcmread(io.BytesIO(raw), force=True), raw


def _walk(ds: Dataset, sep: str = ".", path: str = "") -> Iterator[tuple[str, Any, Dataset]]:
    """(path, element, the dataset holding it) of every element at any depth, in file order, a sequence
    before its items' elements; an item's elements are under ``<sequence path>[i]<sep>``."""
    for elem in ds:
        here = f"{path}({elem.tag.group:04X},{elem.tag.element:04X})"
        yield here, elem, ds
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                yield from _walk(item, sep, f"{here}[{i}]{sep}")


def _strings(elem: Any) -> list[str]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, bytes | bytearray):
        return []
    values = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


def _private_creator(ds_stack: Dataset, tag: Any) -> str | None:
    creator_tag = (tag.group << 16) | (tag.element >> 8)
    if creator_tag in ds_stack:
        return str(ds_stack[creator_tag].value).strip()
    return None


def _profile_flags(profile: Any) -> dict[str, bool]:
    return {flag: bool(getattr(profile, flag, False)) for flag in _COLUMN}


def _row_policy(flags: dict[str, bool]) -> dict[int, str]:
    """tag -> 'keep' (an enabled option retains it), 'clean' (an option cleans it) or 'change'."""
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


def _date8(value: str) -> str | None:
    value = value.strip()
    if len(value) >= 8 and value[:8].isdigit():
        return value[:8]
    return None


def _days(a: str, b: str) -> int | None:
    try:
        da = _dt.date(int(a[:4]), int(a[4:6]), int(a[6:8]))
        db = _dt.date(int(b[:4]), int(b[4:6]), int(b[6:8]))
    except ValueError:
        return None
    return (db - da).days


def _header_bytes(ds: Dataset, raw: bytes) -> bytes:
    """The file without its pixel data values (random pixels would produce accidental matches)."""
    cuts = []
    for tag in (0x7FE00008, 0x7FE00009, 0x7FE00010):
        if tag in ds:
            raw_el = ds.get_item(tag, keep_deferred=True)  # the raw element knows where its value is
            tell = getattr(raw_el, "value_tell", None)
            length = getattr(raw_el, "length", None)
            if tell is not None and length not in (None, 0xFFFFFFFF):
                cuts.append((tell, tell + length))
            elif tell is not None:
                cuts.append((tell, len(raw)))
    if not cuts:
        return raw
    out, pos = [], 0
    for start, end in sorted(cuts):
        out.append(raw[pos:start])
        pos = max(pos, end)
    out.append(raw[pos:])
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
    orig: Dataset
    out: Dataset
    header: bytes  # the output file without its pixel data values
    needles: dict[str, tuple[str, str]] = field(default_factory=dict)  # text -> (kind, source path)
    uids: dict[str, str] = field(default_factory=dict)  # original UID -> source path
    dates: dict[str, str] = field(default_factory=dict)  # original YYYYMMDD -> source path
    orig_values: dict[str, list[str]] = field(default_factory=dict)  # path -> text values
    private_bytes: list[tuple[bytes, str]] = field(default_factory=list)  # (value, source path)
    out_values: dict[str, list[str]] = field(default_factory=dict)  # path -> text values
    out_elems: dict[str, tuple[Any, Dataset]] = field(default_factory=dict)  # path -> (element, its dataset)

    @classmethod
    def of(cls, original: Any, deidentified: Any, profile: Any) -> _Scan:
        flags = _profile_flags(profile)
        date_mode = "full" if flags["retain_longitudinal_full"] else (
            "modified" if flags["retain_longitudinal_modified_dates"] else "remove")
        orig, _ = _load(original)
        out, out_raw = _load(deidentified)
        out_raw_ds = pydicom.dcmread(io.BytesIO(out_raw), force=True, defer_size=256)
        scan = cls(flags, _row_policy(flags), _SAFE | {tuple(x) for x in getattr(profile, "extra_safe_private", ())},
                   date_mode, orig, out, _header_bytes(out_raw_ds, out_raw))
        scan._collect()
        scan._drop_allowed()
        for path, elem, parent in _walk(out):
            scan.out_elems[path] = (elem, parent)
            if elem.VR != "SQ" and elem.tag.group != _PIXEL_GROUP:
                scan.out_values[path] = _strings(elem)
        return scan

    def _add(self, text: str, kind: str, source: str) -> None:
        text = text.strip().strip("^").strip()
        if len(text) >= 4 and text.upper() not in _PLACEHOLDERS and not re.fullmatch(r"[\d.\-+ ]{1,5}", text):
            self.needles.setdefault(text, (kind, source))

    def _collect(self) -> None:
        """Identifying material of the original: what the profile may not keep."""
        flags, policy = self.flags, self.policy
        for here, elem, ds in _walk(self.orig):
            tag = elem.tag
            vr = elem.VR
            if vr == "SQ" or tag.group == _PIXEL_GROUP or tag.group == 0x0002:
                continue
            texts = _strings(elem)
            if texts:
                self.orig_values[here] = texts
            if tag.is_private:
                if tag.element < 0x1000:
                    continue  # creators and reserved elements
                creator = _private_creator(ds, tag)
                safe = flags["retain_safe_private"] and (creator, tag.group, tag.element & 0xFF) in self.safe_private
                if safe:
                    if vr == "UI" and not flags["retain_uids"]:
                        for t in texts:
                            if not t.startswith("1.2.840.10008."):
                                self.uids.setdefault(t, here)
                    continue
                for t in texts:
                    self._add(t, "private", here)
                if isinstance(elem.value, bytes | bytearray) and len(elem.value) >= 8:
                    self.private_bytes.append((bytes(elem.value), here))
                continue
            row_policy = policy.get(int(tag))
            if vr == "UI":
                if not flags["retain_uids"]:
                    for t in texts:
                        if not t.startswith("1.2.840.10008.") and not any(
                                k in (elem.keyword or "") for k in _CLASS_UID_KEYWORDS):
                            self.uids.setdefault(t, here)
                continue
            if vr in ("DA", "DT"):
                if self.date_mode != "full":
                    for t in texts:
                        for part in re.split(r"[-\\]", t):
                            d = _date8(part)
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
            elif isinstance(elem.value, bytes) and len(elem.value) >= 8 and (
                    (row_policy == "change" and vr in _BYTES_VRS) or (row_policy is None and vr == "UN")):
                self.private_bytes.append((bytes(elem.value), here))  # unknown-VR / binary identifying values

    def _drop_allowed(self) -> None:
        """Values that the original also carries in attributes allowed to stay are not identifying."""
        allowed: list[str] = []
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
        allowed_text = "\n".join(allowed)
        needles = self.needles
        any_allowed = re.compile(r"(?<![0-9A-Za-z])(?:" + "|".join(re.escape(n) for n in sorted(needles, key=len,
                                 reverse=True)) + r")(?![0-9A-Za-z])", re.I) if needles else None
        for text in (list(needles) if any_allowed is not None and any_allowed.search(allowed_text) else ()):
            if re.search(rf"(?<![0-9A-Za-z]){re.escape(text)}(?![0-9A-Za-z])", allowed_text, re.I):
                del needles[text]
        allowed_set = set(allowed)
        for uid in list(self.uids):
            if uid in allowed_set:
                del self.uids[uid]

    def locate(self, rx: re.Pattern[str]) -> str:
        """The first output element whose value matches ``rx`` ("file bytes" when only the bytes do)."""
        for path, texts in self.out_values.items():
            if any(rx.search(t) for t in texts):
                return path
        return "file bytes"


# ---- the checks, run in this order; each yields its findings


def identifying_strings(s: _Scan) -> Iterator[Leak]:
    """Identifying strings of the original (names, IDs, free text the profile changes, private values)
    anywhere in the output's bytes except the pixel data, UTF-8 or Latin-1 encoded. One search for all of
    them first: with no hit anywhere (the usual case) no single needle can hit either, and ~100 separate
    pattern compilations are saved."""
    encoded = {n.encode(enc) for n in s.needles for enc in ("utf-8", "latin-1") if _encodable(n, enc)}
    anywhere = re.compile(rb"(?<![0-9A-Za-z])(?:" + b"|".join(re.escape(n) for n in sorted(encoded, key=len,
                          reverse=True)) + rb")(?![0-9A-Za-z])", re.I) if encoded else None
    for text, (kind, source) in (s.needles.items() if anywhere is not None and anywhere.search(s.header) else ()):
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
    """Instance UIDs of the original (unless Retain UIDs) in the output's bytes, the same single search
    first."""
    any_uid = re.compile(rb"(?<![0-9.])(?:" + b"|".join(re.escape(u.encode()) for u in sorted(s.uids, key=len,
                         reverse=True)) + rb")(?![0-9.])") if s.uids else None
    for uid, source in (s.uids.items() if any_uid is not None and any_uid.search(s.header) else ()):
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
            elem = s.out_elems.get(path, (None,))[0]
            if elem is None or elem.VR not in ("DA", "DT"):
                continue
            for old, new in zip(texts, _strings(elem), strict=False):
                a, b = _date8(old), _date8(new)
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
    for d, source in s.dates.items():
        if d in expected_shifted or d == "19000101":
            continue
        if re.search(rb"(?<![0-9])" + d.encode(), s.header):
            yield Leak("date", s.locate(re.compile(rf"(?<![0-9]){d}")), source,
                       f"original date of {source} found in the output ({s.date_mode} dates)")


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
            if all(t.upper() in _PLACEHOLDERS for t in texts):
                continue
            yield Leak("attribute", path, path, "attribute that the profile replaces kept its value")


def private_and_graphics(s: _Scan) -> Iterator[Leak]:
    """Private elements outside the safe private table, curves, and overlays (unless Clean Graphics)."""
    for path, (elem, parent) in s.out_elems.items():
        tag = elem.tag
        if tag.is_private and tag.element >= 0x1000:
            creator = _private_creator(parent, tag)
            if not (s.flags["retain_safe_private"] and (creator, tag.group, tag.element & 0xFF) in s.safe_private):
                yield Leak("private", path, path, "private element not retained by the safe private table")
        elif 0x5000 <= tag.group <= 0x501E and tag.group % 2 == 0:
            yield Leak("graphics", path, path, "curve data present")
        elif 0x6000 <= tag.group <= 0x601E and tag.group % 2 == 0 and tag.element == 0x3000 \
                and not s.flags["clean_graphics"]:
            yield Leak("graphics", path, path, "overlay data present")


def markers(s: _Scan) -> Iterator[Leak]:
    """The de-identification markers, and a Patient ID that is not the original one."""
    out, orig = s.out, s.orig
    if str(out.get("PatientIdentityRemoved", "")).upper() != "YES":
        yield Leak("marker", "(0012,0062)", "", "Patient Identity Removed is not YES")
    codes = {str(item.get("CodeValue", "")) for item in out.get("DeidentificationMethodCodeSequence", [])}
    if "113100" not in codes:
        yield Leak("marker", "(0012,0064)", "", "De-identification Method Code Sequence lacks 113100")
    expected = {"remove": "REMOVED", "full": "UNMODIFIED", "modified": "MODIFIED"}[s.date_mode]
    if str(out.get("LongitudinalTemporalInformationModified", "")).upper() != expected:
        yield Leak("marker", "(0028,0303)", "", f"Longitudinal Temporal Information Modified is not {expected}")
    if out.get("PatientID") and orig.get("PatientID") and str(out.PatientID) == str(orig.PatientID):
        yield Leak("attribute", "(0010,0020)", "(0010,0020)", "Patient ID unchanged")


def identity_values(s: _Scan) -> Iterator[Leak]:
    """Identifying values of the original and national identity numbers in any output value
    (``identity_scan``), with no exception for attributes the profile keeps."""
    yield from identity_scan(s.orig, s.out, s.flags)


LEAK_CHECKS: tuple[Callable[[_Scan], Iterable[Leak]], ...] = (
    identifying_strings, original_uids, identifying_bytes, date_option, replaced_attributes, private_and_graphics,
    markers, identity_values,
)


def leak_scan(original: Any, deidentified: Any, profile: Any) -> list[Leak]:
    """Leaks of identifying information from ``original`` into ``deidentified`` under ``profile``: the
    findings of every check of ``LEAK_CHECKS``, in that order.

    Both may be bytes, a path or a pydicom ``Dataset``; an empty list means the output passed."""
    scan = _Scan.of(original, deidentified, profile)
    return [leak for check in LEAK_CHECKS for leak in check(scan)]


def risk_check(dataset: Any, result: Any = None) -> list[str]:
    """Reasons to quarantine this instance for human review (empty: may be released automatically).

    ``dataset`` is the received (original) instance: bytes, a path or a ``Dataset``; ``result`` the
    engine's ``DeidResult`` for it, whose rule misses are reasons too."""
    ds = dataset if isinstance(dataset, Dataset) else pydicom.dcmread(
        io.BytesIO(bytes(dataset)) if isinstance(dataset, bytes | bytearray | memoryview) else dataset,
        force=True, stop_before_pixels=True)
    reasons: list[str] = []
    modality = str(ds.get("Modality", "") or "").upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    burned = str(ds.get("BurnedInAnnotation", "") or "").upper()
    pixel_cleaned = bool(getattr(result, "pixel_cleaned", False))
    if modality in ("US", "IVUS") or sop_class in US_SOP_CLASSES:
        reasons.append("ultrasound: text is routinely burned into the pixels")
    if sop_class.startswith(SC_SOP_PREFIX):
        reasons.append("secondary capture: screenshots and scanned documents may show identifying text")
    if sop_class.startswith(ENCAPSULATED_DOC_PREFIX):
        reasons.append("encapsulated document: the embedded document is not de-identified")
    if not pixel_cleaned:
        if burned == "YES":
            reasons.append("Burned In Annotation is YES and no pixel rule cleaned the image")
        elif not burned and (modality in RISKY_MODALITIES or sop_class.startswith(SC_SOP_PREFIX)):
            reasons.append(f"Burned In Annotation missing on a {modality or 'secondary capture'} object, "
                           "a modality that often burns in text")
    if str(ds.get("RecognizableVisualFeatures", "") or "").upper() == "YES":
        reasons.append("Recognizable Visual Features is YES")
    for miss in getattr(result, "misses", None) or []:
        reasons.append(f"rule miss: {miss}")
    return reasons


# ------------------------------------------------------------------------------- identity scan
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
# Swedish personnummer / samordningsnummer: [CC]YYMMDD[-+]NNNN, not part of a longer number or a decimal
_PNR = re.compile(r"(?<![0-9])(?<![0-9]\.)((?:18|19|20)?)(\d{2})(\d{2})(\d{2})([-+]?)(\d{4})(?![0-9])(?!\.[0-9])")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(digits):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def national_ids(text: str) -> list[str]:
    """Kinds of the Swedish identity numbers in ``text`` (``personnummer``/``samordningsnummer``),
    checked for a real month/day and the Luhn digit."""
    found = []
    for m in _PNR.finditer(text):
        _cc, yy, mm, dd, _sep, tail = m.groups()
        month, day = int(mm), int(dd)
        kind = "personnummer"
        if day > 60:
            day -= 60
            kind = "samordningsnummer"
        if 1 <= month <= 12 and 1 <= day <= 31 and _luhn_ok(yy + mm + dd + tail):
            found.append(kind)
    return found


def _birth_date_forms(value: str) -> tuple[list[str], list[str]]:
    """(8+ character forms searched in every value, 6-digit YYMMDD searched in free text only)."""
    d = _date8(value)
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

    def __init__(self, orig: Dataset, flags: dict[str, bool]) -> None:
        self.kinds: dict[str, str] = {}  # casefolded needle -> kind
        self.free_only: dict[str, str] = {}  # needles searched in free text only (YYMMDD)
        self.uid_components: dict[str, str] = {}  # numeric IDs matched as whole UID components
        self.phones: list[tuple[re.Pattern[str], str]] = []
        self._collect(orig, flags)
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
        if len(value) >= minimum and value.upper() not in _PLACEHOLDERS:
            self.kinds.setdefault(value.casefold(), kind)
            if value.isdigit() and len(value) >= 6:
                self.uid_components.setdefault(value, kind)

    def _collect(self, orig: Dataset, flags: dict[str, bool]) -> None:
        for _, elem, ds in _walk(orig):
            tag = int(elem.tag)
            if elem.VR == "SQ":
                if tag == _OTHER_IDS_SEQ:  # recorded as other patient IDs before the walk enters the items
                    for item in elem.value or []:
                        if "PatientID" in item:
                            self._add(str(item.PatientID), "other patient ID")
                continue
            if elem.tag.is_private or elem.tag.group in (_PIXEL_GROUP, 0x0002):
                continue
            texts = _strings(elem)
            if not texts:
                continue
            if elem.VR == "PN":
                kind = _PATIENT_NAME_TAGS.get(tag, "person name component")
                for t in texts:
                    self._add(re.sub(r"[\^=]+", " ", t).strip(), kind.replace(" component", ""))
                    for part in re.split(r"[\^=\s,]+", t):
                        part = part.strip(" .")
                        if len(part) >= 3 and part.upper() not in _NAME_STOP:
                            self._add(part, kind, 3)
            elif tag in _IDENTIFIER_TAGS:
                for t in texts:
                    self._add(t, _IDENTIFIER_TAGS[tag])
                    if _IDENTIFIER_TAGS[tag] == "address":  # street lines and postcodes: the parts with digits
                        for part in re.split(r"[,^\n\r]+", t):
                            if re.search(r"\d", part) and re.search(r"[A-Za-z]", part):
                                self._add(part, "address", 6)
            elif tag in _INSTITUTION_TAGS and not flags["retain_institution_identity"]:
                # an organisation: not identifying when it is also the equipment's maker (test sites)
                makers = {str(ds.get(k, "") or "").strip().casefold()
                          for k in ("Manufacturer", "ManufacturerModelName")}
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
        hits.extend(national_ids(text))
        return hits


def _text_values(ds: Dataset) -> Iterator[tuple[str, int, str, str]]:
    """(path with '>' between nesting levels, tag, VR, text) of every element value except pixel data."""
    for here, elem, _ in _walk(ds, ">"):
        tag = elem.tag
        vr = elem.VR
        if vr == "SQ" or tag.group == _PIXEL_GROUP or (0x6000 <= tag.group <= 0x601E and tag.element == 0x3000):
            continue
        value = elem.value
        if isinstance(value, bytes | bytearray):
            if vr in ("UN", "OB") and (tag.is_private or vr == "UN"):  # retained private / unknown values
                yield here, int(tag), vr, bytes(value).decode("latin-1")
            continue
        if vr in _FREE_VRS or vr in _NUMERIC_VRS or vr == "UI":
            for t in _strings(elem):
                yield here, int(tag), vr, t


def identity_scan(orig: Dataset, out: Dataset, flags: dict[str, bool]) -> list[Leak]:
    """Every element value of ``out`` searched for the identifying values of ``orig`` and for national
    identity numbers by pattern; one ``Leak`` per (attribute, kind), never naming the value."""
    needles = _IdentityNeedles(orig, flags)
    leaks: list[Leak] = []
    seen: set[tuple[str, str]] = set()
    for path, tag, vr, text in _text_values(out):
        for kind in needles.search(tag, vr, text):
            if (path, kind) not in seen:
                seen.add((path, kind))
                leaks.append(Leak(kind, path, "original", f"{kind} found in the output"))
    return leaks
