"""A profile compiled once into tag -> action (Table E.1-1 resolved under the enabled options)."""

from __future__ import annotations

import functools
from typing import NamedTuple

from pydicom.datadict import DicomDictionary

from strongroom.imaging.deid_table import EDITION, ROWS, SAFE_PRIVATE, Row

from .encoding import Codec, encode_element, pad, tagstr
from .profile import CID_7050, OPTIONS, DeidProfile
from .result import LogEntry

ENGINE = "Strongroom deid 1"
_DATE_COLUMNS = ("rtn_long_full_dates", "rtn_long_modif_dates")


# operations
KEEP, REMOVE, ZERO, DUMMY, UID, SHIFT, CLEAN, AE_TOKEN, PATIENT_ID, PATIENT_NAME = range(10)
SEQ, SEQ_CLEAN, SEQ_DUMMY = 10, 11, 12
OP_CODE = {KEEP: "K", REMOVE: "X", ZERO: "Z", DUMMY: "D", UID: "U", SHIFT: "C", CLEAN: "C", AE_TOKEN: "C",
           PATIENT_ID: "D", PATIENT_NAME: "Z", SEQ: "K", SEQ_CLEAN: "C", SEQ_DUMMY: "D"}
NORMAL, MODE_CLEAN, MODE_DUMMY = 0, 1, 2

TEXT_VRS = frozenset({b"AE", b"LO", b"LT", b"SH", b"ST", b"UC", b"UR", b"UT"})

# unlisted UI attributes naming classes, syntaxes or code systems: kept
_KEEP_UI_KEYWORDS = ("Class", "TransferSyntax", "CodingSchemeUID", "ContextUID", "ContextGroupExtensionCreatorUID",
                     "MappingResourceUID")
_EXTRA_REMOVE = {  # beyond Table E.1-1: may carry original values or stale private-block descriptions
    0x04000500: "Encrypted Attributes Sequence (original values)",
    0x00080300: "Private Data Element Characteristics Sequence",
    # locations on the source system (unlisted in E.1-1 2024b, so kept by it): they name the PACS host and
    # carry the original Study/Series/SOP Instance UIDs, and a de-identified copy has no valid one
    0x00081190: "Retrieve URL (source system location, original UIDs)",
    0x00404073: "Storage URL (source system location, original UIDs)",
    0x00287FE0: "Pixel Data Provider URL (source system location, original UIDs)",
    0x0040E010: "Retrieve URI (source system location, original UIDs)",
    # the birth and death dates again, as free text in another calendar (LO, unlisted in E.1-1 2024b): no date
    # option can shift them, and the birth date is an identifier
    0x00100033: "Patient's Birth Date in Alternative Calendar",
    0x00100034: "Patient's Death Date in Alternative Calendar",
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

PATIENT_ID_TAG, PATIENT_NAME_TAG = 0x00100020, 0x00100010
PIXEL_DATA_TAG = 0x7FE00010


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
    if tag == PATIENT_ID_TAG and code in ("D", "Z"):
        return PATIENT_ID
    if tag == PATIENT_NAME_TAG and code in ("D", "Z"):
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
        if vr in TEXT_VRS or vr == b"PN":
            return CLEAN
        if vr == b"CS":
            return KEEP  # coded string: defined terms
        return REMOVE  # binary: no cleaner, remove
    raise ValueError(f"unknown action {code!r}")


class Entry(NamedTuple):
    op: int
    vr: bytes  # dictionary VR (semantic VR when the file says UN or is implicit)
    tag: str
    keyword: str
    rule: str
    log_keep: bool  # log even when kept (the table or an option decided it)


class Plan:
    """A profile compiled to tag -> action; built once per profile and cached."""

    def __init__(self, profile: DeidProfile) -> None:
        self.profile = profile
        self.date_mode = profile.date_mode
        self.retain_uids = profile.retain_uids
        self.ops: dict[int, Entry] = {}
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
            self.ops[tag] = Entry(op, vr, tagstr(tag), keyword, rule, False)
        for tag, why in _EXTRA_REMOVE.items():
            if not (tag == 0x00080300 and profile.retain_safe_private):
                self.ops[tag] = Entry(REMOVE, _dict_vr(tag), tagstr(tag), DicomDictionary[tag][4],
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
            self.ops[row.tag] = Entry(op, vr, tagstr(row.tag), row.keyword, rule, True)
            if vr in (b"PN", b"LO", b"SH", b"AE", b"LT", b"ST", b"UT", b"UC") and not row.clean_desc \
                    and row.basic != "K" and code not in ("K",):
                self.identifier_tags.add(row.tag)
        self.identifier_tags.update({PATIENT_ID_TAG, PATIENT_NAME_TAG})
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
        # memos of the walk: (tag, vr, op, little endian, explicit) -> the encoded emptied or dummy element,
        # (tag, op) -> the log line of a public top-level element (immutable, shared by the results)
        self.const_elements: dict[tuple[int, bytes, int, bool, bool], bytes] = {}
        self.const_logs: dict[tuple[int, int], LogEntry] = {}

    def fallback(self, tag: int) -> Entry:
        """Entry for a public tag outside the dictionary (memoized)."""
        group = tag >> 16
        if tag & 0xFFFF == 0:
            entry = Entry(REMOVE, b"UL", tagstr(tag), "GroupLength", "group length: removed (retired)", False)
        elif 0x5000 <= group <= 0x501E:
            entry = Entry(REMOVE, b"UN", tagstr(tag), "CurveData", self.curve_rule, True)
        elif 0x6000 <= group <= 0x601E:
            entry = Entry(REMOVE, b"UN", tagstr(tag), "OverlayGroup", self.overlay_rule, True)
        else:
            entry = Entry(REMOVE, b"UN", tagstr(tag), "", "unlisted: not in the data dictionary: removed", True)
        self.ops[tag] = entry
        return entry

    def markers(self, codec: Codec, explicit: bool, pixel_cleaned: bool) -> list[tuple[int, bytes]]:
        key = (codec.little, explicit, pixel_cleaned)
        cached = self._markers.get(key)
        if cached is not None:
            return cached
        codes = sorted(set(self.codes) | ({"113101"} if pixel_cleaned else set()))
        items = []
        for code in codes:
            body = (encode_element(0x00080100, b"SH", pad(code.encode(), b"SH"), codec, explicit)
                    + encode_element(0x00080102, b"SH", b"DCM ", codec, explicit)
                    + encode_element(0x00080104, b"LO", pad(CID_7050[code].encode(), b"LO"), codec, explicit))
            items.append(codec.item_hdr(len(body)) + body)
        method = "\\".join([f"{ENGINE} PS3.15-{EDITION} E.1-1"] + [CID_7050[c] for c in codes])
        longitudinal = {"remove": b"REMOVED", "full": b"UNMODIFIED", "modified": b"MODIFIED "}[self.date_mode]
        seq = b"".join(items)
        out = [
            (0x00120062, encode_element(0x00120062, b"CS", b"YES ", codec, explicit)),
            (0x00120063, encode_element(0x00120063, b"LO", pad(method.encode(), b"LO"), codec, explicit)),
            (0x00120064, encode_element(0x00120064, b"SQ", seq, codec, explicit)),
        ]
        if pixel_cleaned:
            out.append((0x00280301, encode_element(0x00280301, b"CS", b"NO", codec, explicit)))
        out.append((0x00280303, encode_element(0x00280303, b"CS", pad(longitudinal, b"CS"), codec, explicit)))
        self._markers[key] = out
        return out


@functools.lru_cache(maxsize=64)
def compiled_plan(profile: DeidProfile) -> Plan:
    return Plan(profile)
