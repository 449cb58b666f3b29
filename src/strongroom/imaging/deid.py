"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile + options.

A pure engine (pydicom and the standard library only). It works on the encoded bytes: the object is
parsed into element *positions* (no value decoding), each element gets the action that the profile
compiled for its tag, and the output is spliced together from slices of the input (kept elements,
pixel data: copied byte-for-byte, never decoded) and freshly encoded replacements. pydicom is used for
its data dictionary and character-set codecs, and to convert ``Dataset`` inputs/outputs.

Policies (the conformance statement of this engine):

* **Table**: PS3.15 Table E.1-1 edition 2024b (``deid_table.py``, generated). For each attribute the enabled
  options' cells replace the Basic Profile cell; when two enabled options disagree, the stricter wins
  (C over K), e.g. a calibration date under Retain Device Identity + Modified Dates is shifted.
* **Composite codes** need the attribute's Type in the instance's IOD, which the machine-readable tables
  here do not carry. We therefore assume the strictest requirement (Type 1) and resolve to the action that
  can never break conformance while keeping no original value: Z/D, X/D, X/Z/D -> D (dummy), X/Z -> Z
  (emptied), X/Z/U* -> U* (sequence kept, every UID inside replaced, everything else inside processed).
* **Actions**: X removes; Z writes a zero-length value (an empty sequence for SQ); D writes a VR-valid
  dummy (``ANONYMIZED``, ``19000101``, ``0``...; a UI dummy is a keyed UID; Patient ID gets the keyed
  pseudonym); U replaces each UID by ``2.25.<HMAC>`` (well-known ``1.2.840.10008.*`` UIDs are kept);
  K keeps (sequences are kept *and cleaned*: recursed with the same profile); C cleans: dates shifted per
  patient (Modified Dates), times kept (the shift is whole days, so times stay consistent with their dates),
  AE titles replaced by keyed pseudonyms, free text with identifiers masked (``***``: names, IDs and other
  identifying values of the same instance, dates, long digit runs, e-mail addresses), coded strings kept,
  binary values (OB timestamps, maker notes) removed. A D sequence (e.g. Content Sequence without Clean
  Structured Content) keeps its structure with every free-text value replaced by a dummy (code triplets of
  standard coding schemes survive, local ``99*``/``L`` ones do not); a C sequence keeps its structure with
  free text cleaned.
* Patient's Name (Z) gets the patient pseudonym as its "non-zero length dummy value".
* **Unlisted attributes**: standard attributes not in Table E.1-1 are kept (the standard's premise),
  except: UI values are replaced (except SOP class / transfer syntax / coding-scheme / context UIDs and all
  well-known UIDs), PN values are emptied, DA/DT values follow the date option (emptied, shifted or kept),
  Encrypted Attributes Sequence and Private Data Element Characteristics Sequence are removed; attributes not
  in the data dictionary, group lengths, command-group elements and elements inside a file's dataset from
  group 0002 are removed. Curves (50xx) and overlays (60xx) are removed as whole groups (Overlay Data is X,
  and an overlay without its data is invalid; Clean Graphics has no bitmap cleaner, so it removes them too).
* **Private attributes** are removed, unless Retain Safe Private is on and (private creator, group,
  element-within-block) is in Table E.3.10-1 (2023b) or the profile's ``extra_safe_private``; never by raw
  tag position. Retained private UIDs are replaced like any UID; retained private sequences are recursed.
* **Pseudonyms** (``Pseudonymizer``): HMAC-SHA256 under a per-project secret, domain-separated per use.
  Patient ID -> ``<prefix><20 base32 chars>``; UIDs -> ``2.25.<int of a v8 UUID from the HMAC>``; date
  shift -> ``-(1 + HMAC mod max_shift_days)`` days (default 1..3650 days into the past), keyed on the original
  Patient ID, so every study of a patient moves by the same amount and intervals survive. Without a
  Patient ID the key falls back to name+birth date, then the Study Instance UID.
* **Markers**: Patient Identity Removed = YES; De-identification Method (text) and Code Sequence (CID 7050:
  113100 plus one code per option used; 113101 only when a pixel rule blanked this instance); Longitudinal
  Temporal Information Modified = REMOVED / UNMODIFIED / MODIFIED; Burned In Annotation = NO only when a pixel
  rule was applied (otherwise left as received: the risk check decides). File meta is rebuilt: zero preamble,
  Media Storage SOP Instance UID = the new SOP Instance UID, our implementation UID; the source AE title
  and private meta elements are dropped. The transfer syntax is unchanged.
* **Pixel rules** blank rectangles (all frames, all samples) in native pixel data of instances whose
  manufacturer/model/modality/size match. Encapsulated pixel data cannot be blanked without re-encoding:
  that is reported as a rule miss (``DeidResult.misses``) so the instance goes to quarantine.
* The **action log** records (attribute path, keyword, rule, action), never a value.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import functools
import hashlib
import hmac
import io
import mmap
import os
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.datadict import DicomDictionary  # type: ignore[attr-defined]

from strongroom.imaging.deid_table import EDITION, ROWS, SAFE_PRIVATE, Row

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "CID_7050",
    "DeidError",
    "DeidProfile",
    "DeidResult",
    "LogEntry",
    "PixelRule",
    "Pseudonymizer",
    "deidentify",
    "deidentify_file",
]

ENGINE = "Strongroom deid 1"
IMPLEMENTATION_CLASS_UID = "2.25.227926385014318662186221414929226069224"
IMPLEMENTATION_VERSION_NAME = "STRONGROOM_DEID1"

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
WELL_KNOWN_UID_PREFIX = "1.2.840.10008."

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
_DATE_COLUMNS = ("rtn_long_full_dates", "rtn_long_modif_dates")


class DeidError(ValueError):
    """The object cannot be de-identified (malformed, truncated, unsupported): refuse it."""


# ------------------------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class PixelRule:
    """Blank rectangles ``(x, y, width, height)`` (pixels, origin top-left) in matching instances.

    ``manufacturer``, ``model`` and ``modality`` are case-insensitive regular expressions searched in
    Manufacturer (0008,0070), Manufacturer's Model Name (0008,1090) and Modality (0008,0060); an empty
    pattern matches anything. ``rows``/``columns`` (0 = any) pin the image size, as CTP's signatures do.
    """

    name: str
    rectangles: tuple[tuple[int, int, int, int], ...]
    manufacturer: str = ""
    model: str = ""
    modality: str = ""
    rows: int = 0
    columns: int = 0

    def __post_init__(self) -> None:
        rects = tuple(tuple(int(v) for v in r) for r in self.rectangles)
        if not rects or any(len(r) != 4 or r[2] <= 0 or r[3] <= 0 for r in rects):
            raise ValueError("rectangles are (x, y, width, height) with positive width and height")
        object.__setattr__(self, "rectangles", rects)

    def matches(self, manufacturer: str, model: str, modality: str, rows: int, columns: int) -> bool:
        return (
            (not self.manufacturer or re.search(self.manufacturer, manufacturer, re.I) is not None)
            and (not self.model or re.search(self.model, model, re.I) is not None)
            and (not self.modality or re.search(self.modality, modality, re.I) is not None)
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
    # stricter than Clean Descriptors: standard free text outside TEXT_KEEP_LIST is cleaned or removed
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


# ------------------------------------------------------------------------------------ pseudonymizer


class Pseudonymizer:
    """Keyed, deterministic replacements for one project: same secret + same input => same output, on
    any host or process. HMAC-SHA256 with a label per use; never an unsalted hash."""

    def __init__(self, secret: bytes, *, prefix: str = "", max_shift_days: int = 3650) -> None:
        if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
            raise ValueError("the pseudonymization secret must be at least 16 bytes")
        if not 1 <= max_shift_days <= 36500:
            raise ValueError("max_shift_days must be within 1..36500")
        if len(prefix) > 40 or any(c in prefix for c in "\\^="):
            raise ValueError("prefix too long or contains DICOM delimiters")
        self._secret = bytes(secret)
        self.prefix = prefix
        self.max_shift_days = max_shift_days
        self._uid_cache: dict[str, str] = {}

    @classmethod
    def generate_secret(cls) -> bytes:
        return os.urandom(32)

    def __repr__(self) -> str:
        return f"Pseudonymizer(fingerprint={self.fingerprint!r}, prefix={self.prefix!r})"

    def _mac(self, label: bytes, value: str) -> bytes:
        return hmac.new(self._secret, label + b"\x00" + value.encode("utf-8"), hashlib.sha256).digest()

    @property
    def fingerprint(self) -> str:
        """Identifies the key (for audit/versioning) without revealing it."""
        return self._mac(b"strongroom/fingerprint", "").hex()[:16]

    def patient_pseudonym(self, patient_key: str) -> str:
        token = base64.b32encode(self._mac(b"strongroom/patient", patient_key)).decode("ascii")[:20]
        return self.prefix + token

    def uid(self, uid: str) -> str:
        """``2.25.<int>`` of a version-8 UUID built from the HMAC (122 keyed bits)."""
        cached = self._uid_cache.get(uid)
        if cached is not None:
            return cached
        b = bytearray(self._mac(b"strongroom/uid", uid)[:16])
        b[6] = (b[6] & 0x0F) | 0x80  # version 8
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        new = "2.25." + str(int.from_bytes(b, "big"))
        if len(self._uid_cache) > 200_000:
            self._uid_cache.clear()
        self._uid_cache[uid] = new
        return new

    def date_shift_days(self, patient_key: str) -> int:
        """Whole days to add to every date of this patient: within -max_shift_days..-1."""
        n = int.from_bytes(self._mac(b"strongroom/dateshift", patient_key)[:8], "big")
        return -(1 + n % self.max_shift_days)

    def token(self, kind: str, value: str, length: int = 14) -> str:
        """A keyed opaque token for other identifiers (e.g. AE titles under Retain Device Identity)."""
        return base64.b32encode(self._mac(b"strongroom/" + kind.encode(), value)).decode("ascii")[:length]


# ------------------------------------------------------------------------------------------- result


class LogEntry(NamedTuple):
    tag: str  # attribute path, e.g. "(0008,1140)[0].(0008,1155)"
    keyword: str
    rule: str  # e.g. "E.1-1 2024b basic X/Z/D->D", "private: not safe-listed"
    action: str  # X, Z, D, U, K, C, or a marker action


@dataclass
class DeidResult:
    data: Any  # bytes (Part 10 file) for bytes/path input, a pydicom Dataset for Dataset input
    action_log: list[LogEntry]
    sop_instance_uid: str
    study_instance_uid: str
    patient_pseudonym: str
    date_shift_days: int | None  # applied shift (Modified Dates), else None
    pixel_cleaned: bool
    misses: list[str]  # rule misses: reasons to quarantine
    transfer_syntax: str
    modality: str = ""
    sop_class_uid: str = ""
    edition: str = EDITION
    # original -> pseudonym pairs, for the encrypted key store ONLY; holds original identifiers
    pseudonym_map: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)


# ------------------------------------------------------------------------------------ compiled plan

# operations
KEEP, REMOVE, ZERO, DUMMY, UID, SHIFT, CLEAN, AE_TOKEN, PATIENT_ID, PATIENT_NAME = range(10)
SEQ, SEQ_CLEAN, SEQ_DUMMY = 10, 11, 12
_OP_CODE = {KEEP: "K", REMOVE: "X", ZERO: "Z", DUMMY: "D", UID: "U", SHIFT: "C", CLEAN: "C", AE_TOKEN: "C",
            PATIENT_ID: "D", PATIENT_NAME: "Z", SEQ: "K", SEQ_CLEAN: "C", SEQ_DUMMY: "D"}
NORMAL, MODE_CLEAN, MODE_DUMMY = 0, 1, 2

_TEXT_VRS = frozenset({b"AE", b"LO", b"LT", b"SH", b"ST", b"UC", b"UR", b"UT"})
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
_VALID_VRS = _LONG_VRS | frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
     b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_VR_KIND = {vr: (1 if vr in _LONG_VRS else 0) for vr in _VALID_VRS}  # 1: 4-byte length after 2 reserved
_DUMMY = {
    b"AE": b"ANONYMIZED", b"AS": b"000Y", b"CS": b"ANONYMIZED", b"DA": b"19000101", b"DS": b"0 ",
    b"DT": b"19000101000000", b"IS": b"0 ", b"LO": b"ANONYMIZED", b"LT": b"ANONYMIZED", b"PN": b"ANONYMIZED^ ",
    b"SH": b"ANONYMIZED", b"ST": b"ANONYMIZED", b"TM": b"000000", b"UC": b"ANONYMIZED", b"UR": b"ANONYMIZED",
    b"UT": b"ANONYMIZED", b"US": b"\0\0", b"SS": b"\0\0", b"UL": b"\0" * 4, b"SL": b"\0" * 4, b"FL": b"\0" * 4,
    b"AT": b"\0" * 4, b"FD": b"\0" * 8, b"SV": b"\0" * 8, b"UV": b"\0" * 8,
}
_MAX_LEN = {b"AE": 16, b"CS": 16, b"SH": 16, b"LO": 64, b"ST": 1024, b"LT": 10240, b"PN": 64, b"UC": 0xFFFE}

# unlisted UI attributes naming classes, syntaxes or code systems: kept
_KEEP_UI_KEYWORDS = ("Class", "TransferSyntax", "CodingSchemeUID", "ContextUID", "ContextGroupExtensionCreatorUID",
                     "MappingResourceUID")
# coded-entry attributes: kept inside dummy sequences when the coding scheme is a standard one
_CODE_TAGS = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080119, 0x00080120, 0x0008010F,
                        0x00080105})
_EXTRA_REMOVE = {  # beyond Table E.1-1: may carry original values or stale private-block descriptions
    0x04000500: "Encrypted Attributes Sequence (original values)",
    0x00080300: "Private Data Element Characteristics Sequence",
}
# The allow-list mode (``DeidProfile.text_allow_list``): the standard free-text attributes that stay as they
# are. Everything else of VR LO/SH/UC (descriptions, code meanings, window explanations...) is cleaned
# (identifiers of the instance, dates, long digit runs, e-mail addresses masked), LT/ST/UT/UR (notes,
# comments, URLs) and unlisted AE titles are removed. Coded strings (CS) are defined terms and stay; the
# verification still searches them.
TEXT_KEEP_LIST: dict[int, str] = {
    0x00080070: "Manufacturer", 0x00081090: "ManufacturerModelName", 0x00181020: "SoftwareVersions",
    0x00080100: "CodeValue", 0x00080102: "CodingSchemeDesignator", 0x00080103: "CodingSchemeVersion",
    0x00080119: "LongCodeValue", 0x00080120: "URNCodeValue", 0x00080105: "MappingResource",
    0x0008010F: "ContextIdentifier", 0x00080106: "ContextGroupVersion", 0x00180024: "SequenceName",
    0x00189005: "PulseSequenceName", 0x00181210: "ConvolutionKernel", 0x00181250: "ReceiveCoilName",
    0x00181251: "TransmitCoilName", 0x00181160: "FilterType",
}
_ALLOW_LIST_CLEAN = frozenset({b"LO", b"SH", b"UC"})
_ALLOW_LIST_REMOVE = frozenset({b"LT", b"ST", b"UT", b"UR"})
_MARKER_TAGS = (0x00120062, 0x00120063, 0x00120064, 0x00280301, 0x00280303)

_PATIENT_ID, _PATIENT_NAME = 0x00100020, 0x00100010
_PIXEL_DATA = 0x7FE00010
_MMAP_MIN = 256 * 1024  # inputs at least this large are memory-mapped


def _tagstr(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _dict_vr(tag: int) -> bytes:
    entry = DicomDictionary.get(tag)
    if not entry:
        return b"UN"
    return entry[0][:2].encode("ascii")


def _strictest(codes: list[tuple[str, str]]) -> tuple[str, str]:
    order = {"K": 0, "C": 1}
    return max(codes, key=lambda c: order.get(c[0], 2))


COMPOSITE = {"X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "U*"}


def resolve_row(row: Row, profile: DeidProfile) -> tuple[str, str, str]:
    """(action code, option column or 'basic', rule text) for one Table E.1-1 row under ``profile``."""
    cands = [(getattr(row, col), col) for flag, (col, _) in OPTIONS.items()
             if getattr(profile, flag) and getattr(row, col)]
    if cands:
        code, col = _strictest(cands)
        return code, col, f"E.1-1 {EDITION} {col}:{code}"
    code = COMPOSITE.get(row.basic, row.basic)
    arrow = f"->{code}" if code != row.basic else ""
    return code, "basic", f"E.1-1 {EDITION} basic:{row.basic}{arrow}"


def _op_for(code: str, column: str, vr: bytes, tag: int) -> int:
    if tag == _PATIENT_ID and code in ("D", "Z"):
        return PATIENT_ID
    if tag == _PATIENT_NAME and code in ("D", "Z"):
        return PATIENT_NAME
    if code == "X":
        return REMOVE
    if code == "Z":
        return ZERO
    if code == "D":
        return SEQ_DUMMY if vr == b"SQ" else UID if vr == b"UI" else DUMMY
    if code == "U":
        return SEQ if vr == b"SQ" else UID
    if code in ("U*", "K"):
        return SEQ if vr == b"SQ" else KEEP
    if code == "C":
        if column in _DATE_COLUMNS:
            if vr in (b"DA", b"DT"):
                return SHIFT
            return KEEP if vr in (b"TM", b"SH") else REMOVE  # whole-day shift: times/offsets unchanged
        if vr == b"SQ":
            return SEQ_CLEAN
        if vr == b"AE":
            return AE_TOKEN
        if vr in _TEXT_VRS or vr == b"PN":
            return CLEAN
        if vr == b"CS":
            return KEEP  # coded string: defined terms
        return REMOVE  # binary: no cleaner, remove
    raise ValueError(f"unknown action {code!r}")


class _Entry(NamedTuple):
    op: int
    vr: bytes  # dictionary VR (semantic VR when the file says UN or is implicit)
    tag: str
    keyword: str
    rule: str
    log_keep: bool  # log even when kept (the table or an option decided it)


class _Plan:
    """A profile compiled to tag -> action; built once per profile and cached."""

    def __init__(self, profile: DeidProfile) -> None:
        self.profile = profile
        self.date_mode = profile.date_mode
        self.retain_uids = profile.retain_uids
        self.ops: dict[int, _Entry] = {}
        self.overlay_rule = self.curve_rule = ""
        date_default = {"remove": ZERO, "full": KEEP, "modified": SHIFT}[self.date_mode]
        for tag, (vr_s, _vm, _name, _ret, keyword) in DicomDictionary.items():
            vr = vr_s[:2].encode("ascii")
            rule = "unlisted: kept"
            op = SEQ if vr == b"SQ" else KEEP
            if tag >> 16 in (0x0000, 0x0002, 0x0004):
                op, rule = REMOVE, "unlisted: command/meta/directory element inside a dataset"
            elif vr == b"UI" and not any(k in keyword for k in _KEEP_UI_KEYWORDS):
                op, rule = (KEEP, "unlisted UID: kept (retain_uids)") if self.retain_uids else (
                    UID, "unlisted UID: replaced")
            elif vr == b"PN":
                op, rule = ZERO, "unlisted person name: emptied"
            elif vr in (b"DA", b"DT"):
                op, rule = date_default, f"unlisted date: dates {self.date_mode}"
            self.ops[tag] = _Entry(op, vr, _tagstr(tag), keyword, rule, False)
        for tag, why in _EXTRA_REMOVE.items():
            if not (tag == 0x00080300 and profile.retain_safe_private):
                self.ops[tag] = _Entry(REMOVE, _dict_vr(tag), _tagstr(tag), DicomDictionary[tag][4],
                                       f"beyond E.1-1: {why}", True)
        self.identifier_tags: set[int] = set()
        for row in ROWS:
            code, column, rule = resolve_row(row, profile)
            if row.tag is None:
                if row.pattern == "60xx,3000":
                    self.overlay_rule = rule + " (whole overlay group removed)"
                elif row.pattern == "50xx,xxxx":
                    self.curve_rule = rule + " (whole curve group removed)"
                continue
            vr = row.vr[:2].encode("ascii") if row.vr else _dict_vr(row.tag)
            op = _op_for(code, column, vr, row.tag)
            if code == "C" and op == REMOVE:
                rule += " (no cleaner for this VR: removed)"
            self.ops[row.tag] = _Entry(op, vr, _tagstr(row.tag), row.keyword, rule, True)
            if vr in (b"PN", b"LO", b"SH", b"AE", b"LT", b"ST", b"UT", b"UC") and not row.clean_desc \
                    and row.basic != "K" and code not in ("K",):
                self.identifier_tags.add(row.tag)
        self.identifier_tags.update({_PATIENT_ID, _PATIENT_NAME})
        if profile.text_allow_list:
            for tag, entry in list(self.ops.items()):
                if entry.op not in (KEEP, CLEAN) or tag in TEXT_KEEP_LIST or tag >> 16 in (0x0002, 0x0004):
                    continue
                if entry.vr in _ALLOW_LIST_CLEAN and entry.op == KEEP:
                    self.ops[tag] = entry._replace(op=CLEAN, rule="allow list: descriptor cleaned", log_keep=True)
                elif entry.vr in _ALLOW_LIST_REMOVE:
                    self.ops[tag] = entry._replace(op=REMOVE, rule="allow list: free text removed", log_keep=True)
                elif entry.vr == b"AE" and entry.op == KEEP:
                    self.ops[tag] = entry._replace(op=AE_TOKEN, rule="allow list: AE title replaced", log_keep=True)
        self.safe_private: dict[tuple[str, int, int], tuple[bytes, str]] = {}
        if profile.retain_safe_private:
            for sp in SAFE_PRIVATE:
                self.safe_private[(sp.creator, sp.group, sp.element)] = (
                    sp.vr.encode("ascii") if len(sp.vr) == 2 else b"UN", f"E.3.10-1 safe private: {sp.meaning}")
            for creator, group, element in profile.extra_safe_private:
                self.safe_private[(creator, group, element)] = (b"UN", "profile extra safe private")
        self.codes = profile.option_codes()
        self._markers: dict[tuple[bool, bool, bool], list[tuple[int, bytes]]] = {}

    def fallback(self, tag: int) -> _Entry:
        """Entry for a public tag outside the dictionary (memoized)."""
        group = tag >> 16
        if tag & 0xFFFF == 0:
            entry = _Entry(REMOVE, b"UL", _tagstr(tag), "GroupLength", "group length: removed (retired)", False)
        elif 0x5000 <= group <= 0x501E:
            entry = _Entry(REMOVE, b"UN", _tagstr(tag), "CurveData", self.curve_rule, True)
        elif 0x6000 <= group <= 0x601E:
            entry = _Entry(REMOVE, b"UN", _tagstr(tag), "OverlayGroup", self.overlay_rule, True)
        else:
            entry = _Entry(REMOVE, b"UN", _tagstr(tag), "", "unlisted: not in the data dictionary: removed", True)
        self.ops[tag] = entry
        return entry

    def markers(self, codec: _Codec, explicit: bool, pixel_cleaned: bool) -> list[tuple[int, bytes]]:
        key = (codec.little, explicit, pixel_cleaned)
        cached = self._markers.get(key)
        if cached is not None:
            return cached
        codes = sorted(set(self.codes) | ({"113101"} if pixel_cleaned else set()))
        items = []
        for code in codes:
            body = (_element(0x00080100, b"SH", _pad(code.encode(), b"SH"), codec, explicit)
                    + _element(0x00080102, b"SH", b"DCM ", codec, explicit)
                    + _element(0x00080104, b"LO", _pad(CID_7050[code].encode(), b"LO"), codec, explicit))
            items.append(codec.item_hdr(len(body)) + body)
        method = "\\".join([f"{ENGINE} PS3.15-{EDITION} E.1-1"] + [CID_7050[c] for c in codes])
        longitudinal = {"remove": b"REMOVED", "full": b"UNMODIFIED", "modified": b"MODIFIED "}[self.date_mode]
        seq = b"".join(items)
        out = [
            (0x00120062, _element(0x00120062, b"CS", b"YES ", codec, explicit)),
            (0x00120063, _element(0x00120063, b"LO", _pad(method.encode(), b"LO"), codec, explicit)),
            (0x00120064, _element(0x00120064, b"SQ", seq, codec, explicit)),
        ]
        if pixel_cleaned:
            out.append((0x00280301, _element(0x00280301, b"CS", b"NO", codec, explicit)))
        out.append((0x00280303, _element(0x00280303, b"CS", _pad(longitudinal, b"CS"), codec, explicit)))
        self._markers[key] = out
        return out


@functools.lru_cache(maxsize=64)
def _plan(profile: DeidProfile) -> _Plan:
    return _Plan(profile)


# ----------------------------------------------------------------------------------- byte level I/O


class _Codec:
    __slots__ = ("little", "tag", "short", "long", "u32", "u16", "impl", "item")

    def __init__(self, little: bool) -> None:
        e = "<" if little else ">"
        self.little = little
        self.tag = struct.Struct(e + "HH").unpack_from
        self.short = struct.Struct(e + "HH2sH")
        self.long = struct.Struct(e + "HH2s2xI")
        self.u32 = struct.Struct(e + "I").unpack_from
        self.u16 = struct.Struct(e + "H").unpack_from
        self.impl = struct.Struct(e + "HHI")
        self.item = struct.Struct(e + "HHI").pack

    def item_hdr(self, length: int) -> bytes:
        return self.item(0xFFFE, 0xE000, length)


_LE, _BE = _Codec(True), _Codec(False)
_UNDEF = 0xFFFFFFFF


def _pad(value: bytes, vr: bytes) -> bytes:
    if len(value) & 1:
        return value + (b"\0" if vr in (b"UI", b"OB", b"UN") else b" ")
    return value


def _element(tag: int, vr: bytes, value: bytes, codec: _Codec, explicit: bool) -> bytes:
    g, e = tag >> 16, tag & 0xFFFF
    if not explicit:
        return codec.impl.pack(g, e, len(value)) + value
    if vr in _LONG_VRS:
        return codec.long.pack(g, e, vr, len(value)) + value
    if len(value) > 0xFFFF:
        raise DeidError(f"{_tagstr(tag)}: value too long for VR {vr.decode()}")
    return codec.short.pack(g, e, vr, len(value)) + value


# An element: (tag, vr or None, header start, value start, value end, undefined length)
_El = tuple[int, bytes | None, int, int, int, bool]


def _parse(buf: bytes, pos: int, end: int, codec: _Codec, explicit: bool,
           in_item: bool = False) -> tuple[list[_El], int]:
    """Element positions of one dataset level; stops after an item delimiter when ``in_item``."""
    elems: list[_El] = []
    app = elems.append
    unpack_short = codec.short.unpack_from
    unpack_impl = codec.impl.unpack_from
    u32 = codec.u32
    vr_kind = _VR_KIND
    while pos < end:
        if pos + 8 > end:
            if in_item:
                raise DeidError("truncated item")
            if buf[pos:end].strip(b"\0"):
                raise DeidError(f"trailing garbage at byte {pos}")
            break
        if explicit:
            g, e, vr, length = unpack_short(buf, pos)
            if g == 0xFFFE:
                if e == 0xE00D and in_item:
                    return elems, pos + 8
                raise DeidError(f"unexpected (FFFE,{e:04X}) at byte {pos}")
            kind = vr_kind.get(vr)
            if kind == 1:
                if pos + 12 > end:
                    raise DeidError("truncated element header")
                length = u32(buf, pos + 8)[0]
                vstart = pos + 12
            elif kind is None:
                raise DeidError(f"invalid VR {vr!r} at byte {pos}")
            else:
                vstart = pos + 8
        else:
            g, e, length = unpack_impl(buf, pos)
            vr = None
            if g == 0xFFFE:
                if e == 0xE00D and in_item:
                    return elems, pos + 8
                raise DeidError(f"unexpected (FFFE,{e:04X}) at byte {pos}")
            vstart = pos + 8
        tag = (g << 16) | e
        if length == _UNDEF:
            if explicit and vr == b"UN":
                vend = _skip_sequence(buf, vstart, end, _LE, False)
            else:
                vend = _skip_sequence(buf, vstart, end, codec, explicit)
            app((tag, vr, pos, vstart, vend, True))
        else:
            vend = vstart + length
            if vend > end:
                raise DeidError(f"truncated value of {_tagstr(tag)}")
            app((tag, vr, pos, vstart, vend, False))
        pos = vend
    if in_item:
        raise DeidError("missing item delimiter")
    return elems, pos


def _skip_sequence(buf: bytes, pos: int, end: int, codec: _Codec, explicit: bool) -> int:
    """Position after the sequence delimiter of an undefined-length value (SQ, UN-SQ, encapsulated)."""
    tagu, u32 = codec.tag, codec.u32
    while pos + 8 <= end:
        g, e = tagu(buf, pos)
        length = u32(buf, pos + 4)[0]
        if g == 0xFFFE and e == 0xE0DD:
            return pos + 8
        if g != 0xFFFE or e != 0xE000:
            raise DeidError(f"malformed sequence at byte {pos}")
        if length == _UNDEF:
            _, pos = _parse(buf, pos + 8, end, codec, explicit, in_item=True)
        else:
            pos += 8 + length
            if pos > end:
                raise DeidError("truncated sequence item")
    raise DeidError("truncated sequence (no delimiter)")


def _items(buf: bytes, el: _El, codec: _Codec, explicit: bool) -> list[list[_El]]:
    """Parsed items of a sequence element."""
    start, end = el[3], (el[4] - 8 if el[5] else el[4])
    tagu, u32 = codec.tag, codec.u32
    items = []
    pos = start
    while pos + 8 <= end:
        g, e = tagu(buf, pos)
        length = u32(buf, pos + 4)[0]
        if g == 0xFFFE and e == 0xE0DD:  # delimiter inside a defined-length sequence: tolerated
            break
        if g != 0xFFFE or e != 0xE000:
            raise DeidError(f"malformed sequence item in {_tagstr(el[0])}")
        if length == _UNDEF:
            elems, pos = _parse(buf, pos + 8, end, codec, explicit, in_item=True)
        else:
            if pos + 8 + length > end:
                raise DeidError(f"truncated item in {_tagstr(el[0])}")
            elems, _ = _parse(buf, pos + 8, pos + 8 + length, codec, explicit)
            pos += 8 + length
        items.append(elems)
    return items


# ---------------------------------------------------------------------------------------- cleaning

_GENERIC_PHI = re.compile(
    r"[\w.+-]+@[\w-]+\.[\w.-]+"  # e-mail
    r"|\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"  # dates
    r"|\d{5,}"  # long digit runs: IDs, compact dates, phone numbers
)


class _TextCleaner:
    """Masks identifying values of the instance and generic PHI patterns in free text."""

    def __init__(self, identifiers: Iterable[str]) -> None:
        tokens: set[str] = set()
        for value in identifiers:
            value = value.strip()
            if len(value) >= 3:
                tokens.add(value)
            for tok in re.split(r"[\^\\=\s,;/]+", value):
                if len(tok) >= 3:
                    tokens.add(tok)
        alternatives = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
        self._rx = re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.I) if tokens else None

    def clean(self, text: str) -> str:
        if self._rx is not None:
            text = self._rx.sub("***", text)
        return _GENERIC_PHI.sub("***", text)


@functools.lru_cache(maxsize=65536)
def _shift_date(value: str, days: int) -> str | None:
    value = value.strip()
    if len(value) == 10 and value[4] == "." and value[7] == ".":  # ACR-NEMA YYYY.MM.DD
        value = value.replace(".", "")
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        d = _dt.date(int(value[:4]), int(value[4:6]), int(value[6:8])) + _dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def _shift_values(raw: bytes, vr: bytes, days: int) -> bytes | None:
    text = raw.decode("ascii", "replace").rstrip("\0 ")
    if not text:
        return b""
    out = []
    for value in text.split("\\"):
        value = value.strip()
        if not value:
            out.append("")
            continue
        if vr == b"DA":
            if "-" in value:  # range (queries)
                sides = [(_shift_date(s, days) if s else "") for s in value.split("-", 1)]
                if None in sides:
                    return None
                out.append("-".join(s or "" for s in sides))
                continue
            new = _shift_date(value, days)
        else:  # DT: YYYYMMDD[HH[MM[SS[.F]]]][&ZZXX]
            new_date = _shift_date(value[:8], days) if len(value) >= 8 else None
            new = None if new_date is None else new_date + value[8:]
        if new is None:
            return None
        out.append(new)
    return "\\".join(out).encode("ascii")


# -------------------------------------------------------------------------------------- the engine

_SIMPLE_CODECS = {"iso8859": "latin_1", "latin_1": "latin_1", "UTF8": "utf-8"}


class _Run:
    """State of one de-identification call."""

    def __init__(self, plan: _Plan, pseudo: Pseudonymizer, buf: bytes) -> None:
        self.plan = plan
        self.pseudo = pseudo
        self.buf = buf
        self.mv = memoryview(buf)
        self.log: list[LogEntry] = []
        self.misses: list[str] = []
        self.encodings: list[str] = ["iso8859"]
        self.simple_codec: str | None = "latin_1"
        self.pseudonym = ""
        self.shift: int | None = None
        self.identifiers: list[str] = []
        self._cleaner: _TextCleaner | None = None

    # ---- values
    def text(self, raw: bytes | memoryview, vr: bytes) -> str:
        raw = bytes(raw)
        if self.simple_codec:
            return raw.decode(self.simple_codec, "replace").rstrip("\0 ")
        delims = {0x5C} if vr not in (b"LT", b"ST", b"UT") else {0x0D, 0x0A, 0x09, 0x0C}
        if vr == b"PN":
            delims = {0x5E, 0x3D, 0x5C}
        return decode_bytes(raw, self.encodings, delims).rstrip("\0 ")

    def encode(self, text: str, vr: bytes) -> bytes:
        limit = _MAX_LEN.get(vr)
        if limit and vr not in (b"LT", b"ST", b"UT", b"UC"):
            text = "\\".join(v[:limit] for v in text.split("\\"))
        elif limit:
            text = text[:limit]
        if self.simple_codec:
            return _pad(text.encode(self.simple_codec, "replace"), vr)
        return _pad(encode_string(text, self.encodings), vr)

    @property
    def cleaner(self) -> _TextCleaner:
        if self._cleaner is None:
            self._cleaner = _TextCleaner(self.identifiers)
        return self._cleaner

    def uids(self, raw: bytes | memoryview) -> bytes:
        values = bytes(raw).decode("ascii", "replace").rstrip("\0 ").split("\\")
        uid = self.pseudo.uid
        out = [v if not v or v.startswith(WELL_KNOWN_UID_PREFIX) else uid(v.strip()) for v in values]
        return _pad("\\".join(out).encode("ascii"), b"UI")

    # ---- the walk
    def emit(self, elems: list[_El], codec: _Codec, explicit: bool, mode: int, path: str, out: list[Any],
             inserts: list[tuple[int, bytes]] | None = None) -> None:
        plan, mv, log = self.plan, self.mv, self.log
        ops = plan.ops
        private = self.private_decisions(elems, codec, explicit, path)
        ins_i, ins_n = 0, len(inserts) if inserts else 0
        inserts = inserts or []
        next_ins = inserts[0][0] if ins_n else 0x1_0000_0000
        run_s = run_e = -1
        scheme_local: bool | None = None
        for el in elems:
            tag = el[0]
            if tag >= next_ins:
                while ins_i < ins_n and inserts[ins_i][0] <= tag:
                    if run_s >= 0:
                        out.append(mv[run_s:run_e])
                        run_s = run_e = -1
                    if inserts[ins_i][0] == tag:
                        log.append(LogEntry(_tagstr(tag), DicomDictionary.get(tag, ("",) * 5)[4],
                                            "replaced by the engine", "D"))
                        tag = -1
                    out.append(inserts[ins_i][1])
                    ins_i += 1
                next_ins = inserts[ins_i][0] if ins_i < ins_n else 0x1_0000_0000
                if tag == -1:
                    continue
            if tag & 0x10000:
                entry = private.get(tag)
                if entry is None:
                    continue  # removed; logged per block by private_decisions
            else:
                entry = ops.get(tag) or plan.fallback(tag)
            op = entry[0]
            if op < SEQ and op != REMOVE and (el[5] or el[1] == b"SQ") and tag != _PIXEL_DATA:
                # encoded as a sequence although the plan expected a plain value: never copy it unprocessed
                op = SEQ if op == KEEP else SEQ_DUMMY if op == DUMMY else SEQ_CLEAN if op == CLEAN else ZERO
            if mode and op in (KEEP, SEQ, SEQ_CLEAN):
                fvr = el[1]
                vr = fvr if explicit and fvr is not None and fvr != b"UN" else entry[1]
                if op != KEEP:
                    op = SEQ_DUMMY if mode == MODE_DUMMY else SEQ_CLEAN
                elif vr in _TEXT_VRS or vr == b"UN":
                    if mode == MODE_DUMMY:
                        if tag in _CODE_TAGS:
                            if scheme_local is None:
                                scheme_local = self.local_scheme(elems)
                            op = DUMMY if scheme_local else KEEP
                        else:
                            op = AE_TOKEN if vr == b"AE" else DUMMY
                    elif vr != b"UN":
                        op = AE_TOKEN if vr == b"AE" else CLEAN
            if op == KEEP:
                if entry[5]:
                    log.append(LogEntry(path + entry[2], entry[3], entry[4], "K"))
                if el[2] == run_e:
                    run_e = el[4]
                else:
                    if run_s >= 0:
                        out.append(mv[run_s:run_e])
                    run_s, run_e = el[2], el[4]
                continue
            if run_s >= 0:
                out.append(mv[run_s:run_e])
                run_s = run_e = -1
            tpath = path + entry[2]
            if op == REMOVE:
                log.append(LogEntry(tpath, entry[3], entry[4], "X"))
                continue
            fvr = el[1]
            vr = fvr if explicit and fvr is not None and fvr != b"UN" else entry[1]
            if op >= SEQ:
                self.emit_sequence(el, entry, op, codec, explicit, tpath, out)
                continue
            raw = mv[el[3]:el[4]]
            action = _OP_CODE[op]
            if op == ZERO:
                value = b""
            elif op == UID:
                value = self.uids(raw)
            elif op == PATIENT_ID:
                value = _pad(self.pseudonym.encode("ascii"), vr)
            elif op == PATIENT_NAME:
                value = _pad(self.pseudonym.encode("ascii") + b"^", vr)  # family name component
            elif op == DUMMY:
                if vr == b"UI":
                    value, action = self.uids(raw), "U"
                else:
                    value = _DUMMY.get(vr, b"\0\0")
            elif op == SHIFT:
                if self.shift is None:
                    value, action = b"", "Z"
                else:
                    shifted = _shift_values(bytes(raw), vr, self.shift)
                    if shifted is None:
                        value, action = b"", "Z (unparseable date)"
                    else:
                        value = _pad(shifted, vr)
            elif op == AE_TOKEN:
                value = b"" if not bytes(raw).strip(b"\0 ") else _pad(
                    ("AE" + self.pseudo.token("ae", self.text(raw, b"AE"))).encode("ascii"), b"AE")
            elif op == CLEAN:
                try:
                    value = self.encode(self.cleaner.clean(self.text(raw, vr)), vr)
                except (UnicodeError, LookupError, ValueError):
                    value, action = _DUMMY.get(vr, b""), "D (undecodable text)"
            else:  # pragma: no cover - exhaustive above
                raise AssertionError(op)
            log.append(LogEntry(tpath, entry[3], entry[4], action))
            out.append(_element(tag, vr, value, codec, explicit))
        if run_s >= 0:
            out.append(mv[run_s:run_e])
        while ins_i < ins_n:
            out.append(inserts[ins_i][1])
            ins_i += 1

    def emit_sequence(self, el: _El, entry: _Entry, op: int, codec: _Codec, explicit: bool, tpath: str,
                      out: list[Any]) -> None:
        un = explicit and el[1] == b"UN"
        icodec, iexplicit = (_LE, False) if un else (codec, explicit)
        mode = {SEQ: NORMAL, SEQ_CLEAN: MODE_CLEAN, SEQ_DUMMY: MODE_DUMMY}[op]
        self.log.append(LogEntry(tpath, entry[3], entry[4], _OP_CODE[op]))
        items = []
        for i, item in enumerate(_items(self.buf, el, icodec, iexplicit)):
            parts: list[Any] = []
            self.emit(item, icodec, iexplicit, mode, f"{tpath}[{i}].", parts)
            body = b"".join(parts)
            items.append(icodec.item_hdr(len(body)))
            items.append(body)
        value = b"".join(items)
        tag = el[0]
        if un or el[1] is None and el[5]:  # keep the undefined-length form (UN-SQ, implicit SQ)
            g, e = tag >> 16, tag & 0xFFFF
            hdr = codec.long.pack(g, e, b"UN", _UNDEF) if un else codec.impl.pack(g, e, _UNDEF)
            out.append(hdr + value + codec.item(0xFFFE, 0xE0DD, 0))
        else:
            out.append(_element(tag, b"SQ", value, codec, explicit))

    def local_scheme(self, elems: list[_El]) -> bool:
        for el in elems:
            if el[0] == 0x00080102:
                scheme = bytes(self.mv[el[3]:el[4]]).decode("ascii", "replace").strip("\0 ").upper()
                return not scheme or scheme.startswith("99") or scheme in ("L", "LOCAL")
        return True

    def private_decisions(self, elems: list[_El], codec: _Codec, explicit: bool, path: str) -> dict[int, _Entry]:
        """Private tags retained at this level (tag -> entry); logs the removed blocks and creators."""
        safe = self.plan.safe_private
        keep: dict[int, _Entry] = {}
        removed: dict[int, int] = {}  # block key -> number of elements removed
        creators: list[int] = []
        creator_names: dict[int, str] = {}  # creator tag -> name (only needed to look up the safe table)
        for el in elems:
            tag = el[0]
            if not tag & 0x10000:
                continue
            low = tag & 0xFFFF
            if 0x10 <= low <= 0xFF:
                creators.append(tag)
                if safe:
                    creator_names[tag] = bytes(self.mv[el[3]:el[4]]).decode("latin_1").strip("\0 ")
                continue
            if low >= 0x1000:
                if safe:
                    group = tag >> 16
                    ctag = (tag & 0xFFFF0000) | (low >> 8)
                    creator = creator_names.get(ctag)
                    hit = safe.get((creator, group, low & 0xFF)) if creator is not None else None
                    if hit is not None:
                        fvr = el[1]
                        vr = fvr if explicit and fvr is not None and fvr != b"UN" else hit[0]
                        if el[5] and vr == b"UN":
                            vr = b"SQ"
                        op = SEQ if vr == b"SQ" else (KEEP if self.plan.retain_uids else UID) if vr == b"UI" \
                            else KEEP
                        keep[tag] = _Entry(op, vr, _tagstr(tag), "", f"{hit[1]} (retain_safe_private)", True)
                        keep[ctag] = _Entry(KEEP, b"LO", _tagstr(ctag), "PrivateCreator",
                                            "private creator of a retained safe private element", True)
                        continue
                key = tag & 0xFFFFFF00
            else:
                key = tag
            removed[key] = removed.get(key, 0) + 1
        why = "not in the safe private table" if safe else "private attributes removed"
        log = self.log
        for key, n in removed.items():
            low = key & 0xFFFF
            block = f"({key >> 16:04X},{low >> 8:02X}xx)" if low >= 0x1000 else _tagstr(key)
            log.append(LogEntry(path + block, "PrivateBlock", f"E.1-1 {EDITION} basic:X, {why} ({n})", "X"))
        for ctag in creators:
            if ctag not in keep:
                log.append(LogEntry(path + _tagstr(ctag), "PrivateCreator", "private block removed", "X"))
        return keep

    # ---- pixel rules
    def clean_pixels(self, el: _El, idx: dict[int, _El], codec: _Codec, rule: PixelRule) -> bytes | None:
        def us(tag: int, default: int) -> int:
            e = idx.get(tag)
            return codec.u16(self.buf, e[3])[0] if e and e[4] - e[3] >= 2 else default

        if el[5]:
            self.misses.append(f"pixel rule {rule.name!r}: encapsulated pixel data cannot be blanked "
                               "without re-encoding")
            return None
        rows, cols, bits = us(0x00280010, 0), us(0x00280011, 0), us(0x00280100, 0)
        spp, planar = us(0x00280002, 1), us(0x00280006, 0)
        frames_el = idx.get(0x00280008)
        try:
            frames = int(bytes(self.mv[frames_el[3]:frames_el[4]]).strip(b"\0 ") or 1) if frames_el else 1
        except ValueError:
            frames = 1
        if not rows or not cols or bits % 8 or not bits:
            self.misses.append(f"pixel rule {rule.name!r}: unsupported pixel layout (BitsAllocated {bits})")
            return None
        bpp = bits // 8
        frame_size = rows * cols * spp * bpp
        data = bytearray(self.mv[el[3]:el[4]])
        if len(data) < frame_size * frames:
            self.misses.append(f"pixel rule {rule.name!r}: pixel data shorter than the image size")
            return None
        planes = [(p * rows * cols * bpp, bpp) for p in range(spp)] if planar and spp > 1 else [(0, spp * bpp)]
        for x, y, w, h in rule.rectangles:
            x0, y0, x1, y1 = max(0, x), max(0, y), min(cols, x + w), min(rows, y + h)
            if x0 >= x1 or y0 >= y1:
                continue
            for f in range(frames):
                for plane_off, stride in planes:
                    base = f * frame_size + plane_off
                    zeros = bytes((x1 - x0) * stride)
                    for row in range(y0, y1):
                        start = base + (row * cols + x0) * stride
                        data[start:start + len(zeros)] = zeros
        return bytes(data)


def _detect_encoding(buf: bytes, pos: int) -> tuple[_Codec, bool]:
    """Transfer syntax guess for a dataset without file meta: explicit/implicit, little/big endian."""
    if len(buf) < pos + 8:
        raise DeidError("too short to be a DICOM dataset")
    vr = buf[pos + 4:pos + 6]
    group_le = _LE.tag(buf, pos)[0]
    if vr in _VALID_VRS:
        if group_le > 0x00FF and _BE.tag(buf, pos)[0] <= 0x00FF:
            return _BE, True
        return _LE, True
    return _LE, False


def _read_meta(buf: bytes) -> tuple[int, dict[int, bytes], str | None]:
    """(dataset offset, meta values by tag, transfer syntax UID or None)."""
    if len(buf) >= 132 and buf[128:132] == b"DICM":
        pos = 132
    elif buf[:2] == b"\x02\x00" and buf[4:6] in _VALID_VRS:
        pos = 0
    else:
        return 0, {}, None
    meta: dict[int, bytes] = {}
    end = len(buf)
    meta_end = None
    while pos + 8 <= end:
        g, e = _LE.tag(buf, pos)
        if g != 0x0002 or (meta_end is not None and pos >= meta_end):
            break
        vr = buf[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            length = _LE.u32(buf, pos + 8)[0]
            vstart = pos + 12
        elif vr in _VALID_VRS:
            length = _LE.u16(buf, pos + 6)[0]
            vstart = pos + 8
        else:  # implicit VR meta (non-conformant writers)
            length = _LE.u32(buf, pos + 4)[0]
            vstart = pos + 8
        if length == _UNDEF or vstart + length > end:
            raise DeidError("malformed file meta information")
        meta[(g << 16) | e] = buf[vstart:vstart + length]
        if e == 0 and length == 4:
            meta_end = vstart + 4 + _LE.u32(buf, vstart)[0]
        pos = vstart + length
    ts = meta.get(0x00020010)
    return pos, meta, ts.decode("ascii", "replace").strip("\0 ") if ts else None


def _meta_bytes(sop_class: str, sop_instance: str, ts: str) -> bytes:
    def el(tag: int, vr: bytes, value: bytes) -> bytes:
        return _element(tag, vr, _pad(value, vr), _LE, True)

    body = (el(0x00020001, b"OB", b"\x00\x01") + el(0x00020002, b"UI", sop_class.encode())
            + el(0x00020003, b"UI", sop_instance.encode()) + el(0x00020010, b"UI", ts.encode())
            + el(0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode())
            + el(0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode()))
    return b"\0" * 128 + b"DICM" + _element(0x00020000, b"UL", struct.pack("<I", len(body)), _LE, True) + body


def _deidentify_bytes(data: bytes, profile: DeidProfile, pseudo: Pseudonymizer) -> DeidResult:
    result, chunks = _deidentify_buffer(data, profile, pseudo)
    result.data = b"".join(chunks)
    return result


def _deidentify_buffer(buf: Any, profile: DeidProfile, pseudo: Pseudonymizer) -> tuple[DeidResult, list[Any]]:
    """The engine on any buffer (bytes or an mmap): the result (without data) and the output chunks,
    which may be views into ``buf`` (the kept regions, e.g. pixel data, are never copied here)."""
    plan = _plan(profile)
    pos, meta, ts = _read_meta(buf)
    deflated = False
    if ts is None:
        codec, explicit = _detect_encoding(buf, pos)
        ts = (EXPLICIT_LE if explicit else IMPLICIT_LE) if codec.little else EXPLICIT_BE
    elif ts == IMPLICIT_LE:
        codec, explicit = _LE, False
    elif ts == EXPLICIT_BE:
        codec, explicit = _BE, True
    elif ts == DEFLATED_LE:
        try:
            buf = zlib.decompress(buf[pos:], -15)
        except zlib.error as exc:
            raise DeidError(f"deflated dataset does not inflate: {exc}") from None
        pos, codec, explicit, deflated = 0, _LE, True, True
    else:
        codec, explicit = _LE, True
    if explicit and codec.little and len(buf) >= pos + 8 and buf[pos + 4:pos + 6] not in _VALID_VRS:
        # the meta says explicit VR but the dataset is implicit (as pydicom, accept it; fix the syntax UID
        # when the transfer syntax is a native one)
        explicit = False
        if ts == EXPLICIT_LE:
            ts = IMPLICIT_LE
    elems, _ = _parse(buf, pos, len(buf), codec, explicit)
    idx = {el[0]: el for el in elems}
    if 0x00041220 in idx or b"1.2.840.10008.1.3.10" in meta.get(0x00020002, b""):
        raise DeidError("a DICOMDIR (Media Storage Directory) is not an instance to de-identify")
    if not elems or max(idx) >> 16 < 0x0008 or not any(t & 0xFFFF for t in idx if t >> 16 >= 0x0008):
        raise DeidError("no data elements: not a DICOM dataset")
    run = _Run(plan, pseudo, buf)

    def value(tag: int) -> str:
        el = idx.get(tag)
        return bytes(run.mv[el[3]:el[4]]).decode("latin_1").strip("\0 ") if el and not el[5] else ""

    charset = value(0x00080005)
    if charset:
        run.encodings = convert_encodings([c.strip() for c in charset.split("\\")])
        run.simple_codec = _SIMPLE_CODECS.get(run.encodings[0]) if len(run.encodings) == 1 else None

    def text(tag: int) -> str:
        el = idx.get(tag)
        return run.text(run.mv[el[3]:el[4]], b"PN" if tag == _PATIENT_NAME else b"LO") if el and not el[5] else ""
    sop_class = value(0x00080016) or (meta.get(0x00020002, b"").decode("ascii", "replace").strip("\0 "))
    if sop_class == "1.2.840.10008.1.3.10" or 0x00041220 in idx:
        raise DeidError("a DICOMDIR (Media Storage Directory) is not an instance to de-identify")
    sop_instance = value(0x00080018) or meta.get(0x00020003, b"").decode("ascii", "replace").strip("\0 ")
    study_uid = value(0x0020000D)
    patient_id, patient_name = text(_PATIENT_ID), text(_PATIENT_NAME)
    patient_key = patient_id or (f"name:{patient_name}|{value(0x00100030)}" if patient_name else f"study:{study_uid}")
    run.pseudonym = pseudo.patient_pseudonym(patient_key)
    if plan.date_mode == "modified":
        run.shift = pseudo.date_shift_days(patient_key)
    if profile.clean_descriptors or profile.clean_structured_content or profile.clean_graphics \
            or profile.retain_patient_characteristics or profile.text_allow_list:
        run.identifiers = [run.text(run.mv[idx[t][3]:idx[t][4]], b"PN") for t in plan.identifier_tags
                           if t in idx and not idx[t][5]]
    new_sop = sop_instance if plan.retain_uids or not sop_instance else pseudo.uid(sop_instance)
    new_study = study_uid if plan.retain_uids or not study_uid else pseudo.uid(study_uid)

    # pixel rules
    pixel_cleaned = False
    extra_inserts: list[tuple[int, bytes]] = []
    pixel_el = idx.get(_PIXEL_DATA)
    if profile.pixel_rules and pixel_el is not None:
        manufacturer, model, modality = value(0x00080070), value(0x00081090), value(0x00080060)
        rows_el, cols_el = idx.get(0x00280010), idx.get(0x00280011)
        rows = codec.u16(buf, rows_el[3])[0] if rows_el and rows_el[4] - rows_el[3] >= 2 else 0
        cols = codec.u16(buf, cols_el[3])[0] if cols_el and cols_el[4] - cols_el[3] >= 2 else 0
        for rule in profile.pixel_rules:
            if rule.matches(manufacturer, model, modality, rows, cols):
                cleaned = run.clean_pixels(pixel_el, idx, codec, rule)
                if cleaned is not None:
                    vr = pixel_el[1] if explicit else b"OW"
                    extra_inserts.append((_PIXEL_DATA, _element(_PIXEL_DATA, vr or b"OW", cleaned, codec,
                                                                explicit)))
                    run.log.append(LogEntry("(7FE0,0010)", "PixelData", f"pixel rule {rule.name!r}", "C"))
                    pixel_cleaned = True
                break
    inserts = sorted(plan.markers(codec, explicit, pixel_cleaned) + extra_inserts)
    out: list[Any] = []
    run.emit(elems, codec, explicit, NORMAL, "", out, inserts)
    meta_bytes = _meta_bytes(sop_class, new_sop, ts)
    if deflated:
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        out = [meta_bytes, comp.compress(b"".join(out)) + comp.flush()]
    else:
        out.insert(0, meta_bytes)
    pmap = {"PatientID": (patient_key, run.pseudonym)}
    if not plan.retain_uids:
        pmap["StudyInstanceUID"] = (study_uid, new_study)
        pmap["SOPInstanceUID"] = (sop_instance, new_sop)
    result = DeidResult(
        data=None, action_log=run.log, sop_instance_uid=new_sop, study_instance_uid=new_study,
        patient_pseudonym=run.pseudonym, date_shift_days=run.shift, pixel_cleaned=pixel_cleaned,
        misses=run.misses, transfer_syntax=ts, modality=value(0x00080060), sop_class_uid=sop_class,
        pseudonym_map=pmap,
    )
    del run.mv, run.buf  # only the chunks keep views into the input
    return result, out


def _dataset_bytes(ds: Dataset) -> bytes:
    from pydicom import dcmwrite

    buf = io.BytesIO()
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        dcmwrite(buf, ds, enforce_file_format=False)
    else:
        dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def deidentify(data: Any, profile: DeidProfile, pseudonymizer: Pseudonymizer) -> DeidResult:
    """De-identify one instance: ``bytes`` (Part 10 file or bare dataset), a path, or a pydicom ``Dataset``.

    Returns the same kind (bytes for bytes/paths, a ``Dataset`` for a ``Dataset``). Raises ``DeidError``
    for objects that cannot be processed safely (malformed, truncated, DICOMDIR)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return _deidentify_bytes(bytes(data), profile, pseudonymizer)
    if isinstance(data, str | os.PathLike):
        return _deidentify_bytes(Path(data).read_bytes(), profile, pseudonymizer)
    from pydicom import dcmread
    from pydicom.dataset import Dataset

    if isinstance(data, Dataset):
        result = _deidentify_bytes(_dataset_bytes(data), profile, pseudonymizer)
        result.data = dcmread(io.BytesIO(result.data))
        return result
    raise TypeError(f"cannot de-identify a {type(data).__name__}")


def deidentify_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], profile: DeidProfile,
                    pseudonymizer: Pseudonymizer) -> DeidResult:
    """De-identify the file ``src`` into ``dst``: written to a temporary name, then renamed.

    The input is memory-mapped and kept regions (pixel data) go from the mapping straight to the output
    file: they are never copied through Python objects. ``result.data`` is ``None`` (the output is on disk)."""
    dst = Path(dst)
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size >= _MMAP_MIN:
            buf: Any = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            buf = f.read()
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        result, chunks = _deidentify_buffer(buf, profile, pseudonymizer)
        with open(tmp, "wb") as out:
            out.writelines(chunks)
        del chunks
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if isinstance(buf, mmap.mmap):
            with contextlib.suppress(BufferError):  # a view still alive (a traceback): the GC closes it
                buf.close()
    return result
