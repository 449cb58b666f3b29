"""The QIDO-RS attributes the index answers (pure: standard library only).

Each attribute: its tag, VR, level (study, series, instance), the index column it reads and how it is
matched (PS3.18 §8.3.4, PS3.4 C.2.2.2): UIDs by list, dates and times by range, numbers exactly,
strings exactly or with ``*``/``?`` wildcards. Fuzzy matching is not offered. Also the DICOM JSON
(PS3.18 F.2) of one value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import Invalid

STUDY, SERIES, INSTANCE = "study", "series", "instance"


class BadQuery(Invalid):
    """PS3.18 answers a query it cannot run with 400."""

    status, code = 400, "bad-query"



@dataclass(frozen=True)
class Attribute:
    keyword: str
    tag: str  # 8 upper-case hex digits, as in DICOM JSON
    vr: str
    level: str
    column: str | None  # the index column; None: computed (counts, modalities in study, retrieve URL)


_TABLE = [
    Attribute("StudyDate", "00080020", "DA", STUDY, "study_date"),
    Attribute("StudyTime", "00080030", "TM", STUDY, "study_time"),
    Attribute("AccessionNumber", "00080050", "SH", STUDY, "accession_number"),
    Attribute("ModalitiesInStudy", "00080061", "CS", STUDY, "modality"),
    Attribute("ReferringPhysicianName", "00080090", "PN", STUDY, None),  # always removed by de-identification
    Attribute("StudyDescription", "00081030", "LO", STUDY, "study_description"),
    Attribute("PatientName", "00100010", "PN", STUDY, "patient_name"),
    Attribute("PatientID", "00100020", "LO", STUDY, "patient_pseudonym"),
    Attribute("StudyInstanceUID", "0020000D", "UI", STUDY, "study_uid"),
    Attribute("StudyID", "00200010", "SH", STUDY, "study_id"),
    Attribute("NumberOfStudyRelatedSeries", "00201206", "IS", STUDY, None),
    Attribute("NumberOfStudyRelatedInstances", "00201208", "IS", STUDY, None),
    Attribute("Modality", "00080060", "CS", SERIES, "modality"),
    Attribute("SeriesDescription", "0008103E", "LO", SERIES, "series_description"),
    Attribute("BodyPartExamined", "00180015", "CS", SERIES, "body_part"),
    Attribute("SeriesInstanceUID", "0020000E", "UI", SERIES, "series_uid"),
    Attribute("SeriesNumber", "00200011", "IS", SERIES, "series_number"),
    Attribute("NumberOfSeriesRelatedInstances", "00201209", "IS", SERIES, None),
    Attribute("SOPClassUID", "00080016", "UI", INSTANCE, "sop_class_uid"),
    Attribute("SOPInstanceUID", "00080018", "UI", INSTANCE, "sop_instance_uid"),
    Attribute("AvailableTransferSyntaxUID", "00083002", "UI", INSTANCE, "transfer_syntax_uid"),
    Attribute("InstanceNumber", "00200013", "IS", INSTANCE, "instance_number"),
    Attribute("NumberOfFrames", "00280008", "IS", INSTANCE, "number_of_frames"),
    Attribute("Rows", "00280010", "US", INSTANCE, "rows"),
    Attribute("Columns", "00280011", "US", INSTANCE, "columns"),
]
BY_KEYWORD = {a.keyword: a for a in _TABLE}
BY_TAG = {a.tag: a for a in _TABLE}
RETRIEVE_URL = Attribute("RetrieveURL", "00081190", "UR", STUDY, None)
COMPUTED = {"ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
            "NumberOfSeriesRelatedInstances"}

# What each level returns by default (PS3.18 Table 10.6.3-3..5), in this order; includefield adds more.
DEFAULT = {
    STUDY: ["StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
            "StudyDescription", "PatientName", "PatientID", "StudyInstanceUID", "StudyID",
            "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"],
    SERIES: ["Modality", "SeriesDescription", "BodyPartExamined", "SeriesInstanceUID", "SeriesNumber",
             "NumberOfSeriesRelatedInstances"],
    INSTANCE: ["SOPClassUID", "SOPInstanceUID", "AvailableTransferSyntaxUID", "InstanceNumber", "NumberOfFrames",
               "Rows", "Columns"],
}
# Attributes a level's rows can carry: its own and those of the levels above it.
REACHABLE = {STUDY: {STUDY}, SERIES: {STUDY, SERIES}, INSTANCE: {STUDY, SERIES, INSTANCE}}

NOT_MATCHABLE = {"ReferringPhysicianName", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                 "NumberOfSeriesRelatedInstances"}
CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}


def lookup(key: str) -> Attribute:
    """An attribute by keyword or tag (``StudyDate`` or ``00080020``); Invalid if the index lacks it."""
    found = BY_KEYWORD.get(key) or BY_TAG.get(key.upper().replace(",", ""))
    if found is None:
        raise BadQuery(f"{key!r} is not a query attribute here; supported: {', '.join(BY_KEYWORD)}")
    return found


@dataclass(frozen=True)
class Match:
    """One query key: the column and the kind of match (``list``, ``range``, ``wild``, ``exact``)."""

    attribute: Attribute
    kind: str
    values: tuple[Any, ...]


_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


def _check_range_value(attribute: Attribute, value: str) -> str:
    pattern = _DATE if attribute.vr == "DA" else _TIME
    if value and not pattern.match(value):
        raise BadQuery(f"{attribute.keyword}: {value!r} is not a DICOM {attribute.vr} value")
    return value


def parse_match(attribute: Attribute, raw: str) -> Match | None:
    """The match for ``attribute=raw``; None for universal matching (an empty value)."""
    if attribute.keyword in NOT_MATCHABLE:
        raise BadQuery(f"{attribute.keyword} cannot be matched on; ask for it with includefield")
    value = raw.strip()
    if value == "":
        return None
    if attribute.vr == "UI":  # UID list matching: comma or backslash separated
        uids = tuple(u for u in re.split(r"[,\\]", value) if u)
        if any(not re.fullmatch(r"[0-9.]{1,64}", u) for u in uids):
            raise BadQuery(f"{attribute.keyword}: a UID is digits and dots, at most 64 characters")
        return Match(attribute, "list", uids)
    if attribute.vr in ("DA", "TM"):
        if "-" in value:
            lo, _, hi = value.partition("-")
            lo, hi = _check_range_value(attribute, lo), _check_range_value(attribute, hi)
            if not lo and not hi:
                raise BadQuery(f"{attribute.keyword}: a range needs a start or an end")
            if attribute.vr == "TM" and hi:
                hi = hi + "\uffff"  # "-1200" includes 120000.5: compare as a prefix
            return Match(attribute, "range", (lo or None, hi or None))
        return Match(attribute, "exact", (_check_range_value(attribute, value),))
    if attribute.vr in ("IS", "US"):
        try:
            return Match(attribute, "exact", (int(value),))
        except ValueError:
            raise BadQuery(f"{attribute.keyword}: {value!r} is not a number") from None
    if "*" in value or "?" in value:
        return Match(attribute, "wild", (value,))
    if attribute.vr == "CS" and "\\" in value:  # CS multi-value: any of them
        return Match(attribute, "list", tuple(v for v in value.split("\\") if v))
    return Match(attribute, "exact", (value,))


def like_pattern(value: str) -> str:
    """A DICOM wildcard as a SQL LIKE pattern with ``\\`` as escape."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def include_fields(values: list[str], level: str) -> list[str]:
    """The extra keywords ``includefield`` asks for (``all``: every attribute the level can carry); attributes
    the index does not hold are ignored (PS3.18 lets an origin server return only what it supports)."""
    wanted: list[str] = []
    for raw in values:
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            if item == "all":
                wanted.extend(a.keyword for a in _TABLE if a.level in REACHABLE[level])
                continue
            # An attribute the index does not hold is left out, not refused: viewers ask for many.
            attribute = BY_KEYWORD.get(item) or BY_TAG.get(item.upper())
            if attribute is not None and attribute.level in REACHABLE[level]:
                wanted.append(attribute.keyword)
    return wanted


def element(attribute: Attribute, value: Any) -> dict[str, Any]:
    """One attribute in DICOM JSON: no ``Value`` when empty (PS3.18 F.2.5)."""
    values = value if isinstance(value, list) else [value]
    values = [v for v in values if v not in (None, "")]
    if not values:
        return {"vr": attribute.vr}
    if attribute.vr == "PN":
        return {"vr": "PN", "Value": [{"Alphabetic": str(v)} for v in values]}
    if attribute.vr in ("IS", "US"):
        return {"vr": attribute.vr, "Value": [int(v) for v in values]}
    return {"vr": attribute.vr, "Value": [str(v) for v in values]}
