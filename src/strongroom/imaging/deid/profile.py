"""A de-identification profile: the PS3.15 Basic Profile, the options it selects, pixel rules."""

from __future__ import annotations

import re
from dataclasses import dataclass

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


def _found(pattern: str, text: str) -> bool:
    """``pattern`` (empty: anything) searched in ``text`` and in each of its values (their padding stripped)."""
    return not pattern or any(re.search(pattern, v, re.I) is not None
                              for v in (text, *(value.strip() for value in text.split("\\"))))


@dataclass(frozen=True)
class PixelRule:
    """Blank rectangles ``(x, y, width, height)`` (pixels, origin top-left) in matching instances.

    ``manufacturer``, ``model`` and ``modality`` are case-insensitive regular expressions searched in
    Manufacturer (0008,0070), Manufacturer's Model Name (0008,1090) and Modality (0008,0060); an empty
    pattern matches anything. A multi-valued attribute (``CT\\US``) matches when the whole text or any one of
    its values does: a second value must never hide the one a rule is written for (an anchored ``^US$``).
    ``rows``/``columns`` (0 = any) pin the image size, as CTP's signatures do.
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
            _found(self.manufacturer, manufacturer) and _found(self.model, model) and _found(self.modality, modality)
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
