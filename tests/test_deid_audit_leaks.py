"""The privacy audit's leaks that passed both the engine and the verification, each as a class: every case
goes through the pipeline as received instances do (``pipeline.process_file``: engine, then verification)
and must end removed by the engine or quarantined by the verification, never released."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from strongroom.imaging import pipeline, synthetic
from strongroom.imaging.deid import DeidProfile, Pseudonymizer, deidentify
from strongroom.imaging.verify import leak_scan

SECRET = b"audit-secret-0123456789abcdef"
BASIC = DeidProfile()


def _ct() -> Dataset:
    return pydicom.dcmread(io.BytesIO(synthetic.make_ct(0, 0, 1, 1, rows=16, columns=16)))


def _encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _comment(ds: Dataset, text: str) -> None:
    """``text`` in a kept free-text attribute (Comments on the Scheduled Procedure Step, unlisted)."""
    step = Dataset()
    step.CommentsOnTheScheduledProcedureStep = text
    ds.ScheduledProcedureStepSequence = Sequence([step])


def _process(tmp_path: Path, data: bytes, profile: DeidProfile = BASIC) -> tuple[list[str], bytes]:
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src.write_bytes(data)
    summary = pipeline.process_file(str(src), str(dst), profile, SECRET)
    return summary["reasons"], dst.read_bytes()


# ---- 1. Deflated Explicit VR Little Endian


def test_deflated_input_is_written_inflated_and_its_leaks_found(tmp_path: Path) -> None:
    ds = _ct()
    study_date = ds.StudyDate
    _comment(ds, f"scheduled {study_date}")
    ds.add_new(0x7FE00020, "OW", b"LINDQVIST0^ALICE")  # a name in group 7FE0: only the byte search sees it
    reasons, out = _process(tmp_path, _encode(ds, DeflatedExplicitVRLittleEndian))
    back = pydicom.dcmread(io.BytesIO(out))
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # the output is uncompressed
    assert study_date.encode() in out and b"LINDQVIST0" in out  # (the engine keeps both: verification's job)
    assert any(r.startswith("leak: date in (0040,0100)[0]") for r in reasons), reasons  # quarantined
    assert any(r.startswith("leak: name") for r in reasons), reasons


def test_real_deflated_file_round_trips_clean(tmp_path: Path) -> None:
    data = Path(get_testdata_file("image_dfl.dcm")).read_bytes()
    reasons, out = _process(tmp_path, data)
    orig, back = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(out))
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.PixelData == orig.PixelData and bytes(back.PixelData) in out
    assert not [r for r in reasons if r.startswith("leak")], reasons  # (a secondary capture: reviewed anyway)


def test_deflated_output_is_inflated_before_the_byte_checks() -> None:
    """Defence in depth: an output that is deflated (not this engine's) is searched inflated."""
    ds = _ct()
    _comment(ds, f"scheduled {ds.StudyDate}")
    original = _encode(ds)
    result = deidentify(original, BASIC, Pseudonymizer(SECRET))
    out = pydicom.dcmread(io.BytesIO(result.data))
    deflated = _encode(out, DeflatedExplicitVRLittleEndian)
    assert ds.StudyDate.encode() not in deflated  # compressed: a plain byte search cannot see it
    assert [leak.kind for leak in leak_scan(original, deflated, BASIC)] == ["date"]
    assert leak_scan(original, deflated, BASIC) == leak_scan(original, result.data, BASIC)


def test_deflated_output_that_does_not_inflate_is_quarantined() -> None:
    original = _encode(_ct())
    result = deidentify(original, BASIC, Pseudonymizer(SECRET))
    deflated = _encode(pydicom.dcmread(io.BytesIO(result.data)), DeflatedExplicitVRLittleEndian)
    broken = deflated[:-64] + b"\xff" * 64
    verified, _ = pipeline._verify(original, broken, BASIC, pipeline._summary(result))
    assert any("leak scan failed" in r for r in verified["reasons"]), verified["reasons"]


def test_inflate_helper_refuses_garbage() -> None:
    from strongroom.imaging.verify.reader import inflated

    good = _encode(_ct(), DeflatedExplicitVRLittleEndian)
    plain = inflated(good)
    assert pydicom.dcmread(io.BytesIO(plain)).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    with pytest.raises(ValueError):
        inflated(good[:200] + b"\xff" * 50)


# ---- 2. values of replaced attributes repeated in kept ones


def _serial(ds: Dataset) -> None:
    ds.DeviceSerialNumber = "SN-448812"
    ds.add_new(0x00181003, "LO", "SN-448812")  # Device ID: unlisted in E.1-1, kept


def _serial_in_text(ds: Dataset) -> None:
    ds.DeviceSerialNumber = "SN-448812"
    ds.add_new(0x00181003, "LO", "unit SN-448812")


def _station(ds: Dataset) -> None:
    ds.StationName = "CTROOM3-EXH"
    ds.add_new(0x00181003, "LO", "CTROOM3-EXH")


def _study_id(ds: Dataset) -> None:
    ds.StudyID = "RIS-2021-88123"
    _comment(ds, "RIS-2021-88123 booked by ward 7")


def _occupation(ds: Dataset) -> None:
    ds.Occupation = "Harbour pilot"
    _comment(ds, "Occupational exam: harbour pilot")


def _occupation_in_code_meaning(ds: Dataset) -> None:
    ds.Occupation = "Harbour pilot"
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D3000", "SRT", "Chest (Harbour pilot)"
    ds.AnatomicRegionSequence = Sequence([item])


def _private_first(ds: Dataset) -> None:  # a private copy read before the standard attribute
    ds.private_block(0x0009, "ACME 1.1", create=True).add_new(0x10, "LO", "SN-448812")
    _serial(ds)


@pytest.mark.parametrize("mutate, where", [
    (_serial, "(0018,1003)"), (_serial_in_text, "(0018,1003)"), (_station, "(0018,1003)"),
    (_study_id, "(0040,0100)[0].(0040,0400)"), (_occupation, "(0040,0100)[0].(0040,0400)"),
    (_occupation_in_code_meaning, "(0008,2218)[0].(0008,0104)"), (_private_first, "(0018,1003)"),
])
def test_replaced_value_repeated_in_a_kept_attribute_is_quarantined(tmp_path: Path, mutate, where) -> None:
    ds = _ct()
    mutate(ds)
    reasons, _ = _process(tmp_path, _encode(ds))
    assert f"leak: value in {where}" in reasons, reasons


def test_defined_terms_and_products_are_not_flagged(tmp_path: Path) -> None:
    """False-positive guards: a description equal to a kept defined term, an institution named after the
    manufacturer (test sites), a descriptor equal to a kept value as a whole."""
    ds = _ct()
    ds.StudyDescription, ds.BodyPartExamined = "Chest", "CHEST"
    ds.SeriesDescription, ds.ScanOptions = "Scout", "SCOUT MODE"
    ds.InstitutionName, ds.Manufacturer = "TOSHIBA", "TOSHIBA_MEC"
    ds.ProtocolName, ds.PositionReferenceIndicator = "Carotids", "Carotids"
    reasons, _ = _process(tmp_path, _encode(ds))
    assert reasons == []


# ---- 3. locations on the source system


def test_source_system_urls_are_removed(tmp_path: Path) -> None:
    ds = _ct()
    uid = ds.StudyInstanceUID
    ds.RetrieveURL = f"https://pacs.example-hospital.se/dicomweb/studies/{uid}"
    ds.add_new(0x00404073, "UR", f"https://pacs.example-hospital.se/store/{uid}")  # Storage URL
    ds.add_new(0x00287FE0, "UR", f"https://pacs.example-hospital.se/jpip/{uid}")  # Pixel Data Provider URL
    item = Dataset()
    item.RetrieveURL = f"https://pacs.example-hospital.se/dicomweb/studies/{uid}/series"
    ds.ReferencedSeriesSequence = Sequence([item])
    reasons, out = _process(tmp_path, _encode(ds))
    assert b"example-hospital" not in out and uid.encode() not in out
    assert reasons == []  # removed by the engine, so released


# ---- 4. free-text forms (names, identity numbers, dates in other renderings)


@pytest.mark.parametrize("name, text", [
    ("LINDQVIST-BERG^ALICE", "seen by Lindqvist today"),  # one part of a double-barrelled surname
    ("ÅSTRÖM^BJÖRN", "patient ASTROM BJORN"),  # typed without diacritics
    ("ÅSTRÖM^BJÖRN", "patient A\u030astro\u0308m Bjo\u0308rn"),  # NFD
])
def test_name_forms_in_kept_text_are_quarantined(tmp_path: Path, name: str, text: str) -> None:
    ds = _ct()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    _comment(ds, text)
    reasons, _ = _process(tmp_path, _encode(ds))
    assert any(r.startswith("leak: patient name") for r in reasons), reasons


@pytest.mark.parametrize("written", ["121212 - 1212", "121212/1212", "121212_1212", "121212. 1212", "121212--1212",
                                     "121212  1212", "19121212\t1212", "121212 \t1212", "121212  -  1212"])
def test_personnummer_with_separator_runs_is_quarantined(tmp_path: Path, written: str) -> None:
    ds = _ct()
    _comment(ds, f"pnr {written}")
    reasons, _ = _process(tmp_path, _encode(ds))
    assert "leak: personnummer in (0040,0100)[0]>(0040,0400)" in reasons, reasons


def test_ordinary_words_dates_and_numbers_are_not_flagged(tmp_path: Path) -> None:
    ds = _ct()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "ÅSTRÖM-BERG^BJÖRN"
    _comment(ds, "Kontroll 2019-03-05, dos 120 - 1212 mGy; lot 201513 - 4455; Astronomy berget")
    reasons, _ = _process(tmp_path, _encode(ds))
    assert reasons == []


REMOVE, MODIFIED, FULL = BASIC, DeidProfile(retain_longitudinal_modified_dates=True), \
    DeidProfile(retain_longitudinal_full=True)
STUDY_DATE, BIRTH_DATE = "20210104", "19850307"  # _ct()'s Study/Series/Acquisition/Content Date; set below
_MONTHS_EN = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December"]
_MONTHS_SV = ["januari", "februari", "mars", "april", "maj", "juni", "juli", "augusti", "september", "oktober",
              "november", "december"]


def _rendering(date: str, form: str) -> str:
    y, m, d = int(date[:4]), int(date[4:6]), int(date[6:])
    en, sv = _MONTHS_EN[m - 1], _MONTHS_SV[m - 1]
    return {
        "YYYY-MM-DD": f"{y}-{m:02d}-{d:02d}", "YYYY MM DD": f"{y} {m:02d} {d:02d}",
        "YYYY.MM.DD": f"{y}.{m:02d}.{d:02d}", "DD.MM.YYYY": f"{d:02d}.{m:02d}.{y}", "D/M/YYYY": f"{d}/{m}/{y}",
        "MM/DD/YYYY": f"{m:02d}/{d:02d}/{y}", "DD Mon YYYY": f"{d:02d} {en[:3]} {y}", "D Month YYYY": f"{d} {en} {y}",
        "Mon D, YYYY": f"{en[:3]} {d}, {y}", "D-MON-YYYY": f"{d}-{en[:3].upper()}-{y}",
        "DDMONYYYY": f"{d:02d}{en[:3].upper()}{y}", "D månad YYYY": f"{d} {sv} {y}",
        "D mån. YYYY": f"{d} {sv[:3]}. {y}", "YYYY-M-D": f"{y}-{m}-{d}", "D.M.YYYY": f"{d}.{m}.{y}",
        "Dth Month YYYY": f"{d}th {en} {y}", "YYYY-Mon-DD": f"{y}-{en[:3]}-{d:02d}",
        "DD/MM/YY": f"{d:02d}/{m:02d}/{y % 100:02d}",
    }[form]


_FORMS = ["YYYY-MM-DD", "YYYY MM DD", "YYYY.MM.DD", "DD.MM.YYYY", "D/M/YYYY", "MM/DD/YYYY", "DD Mon YYYY",
          "D Month YYYY", "Mon D, YYYY", "D-MON-YYYY", "DDMONYYYY", "D månad YYYY", "D mån. YYYY", "YYYY-M-D",
          "D.M.YYYY", "Dth Month YYYY", "YYYY-Mon-DD", "DD/MM/YY"]


@pytest.mark.parametrize("profile", [REMOVE, MODIFIED], ids=["remove", "modified"])
@pytest.mark.parametrize("form", _FORMS)
def test_study_date_in_another_rendering_is_quarantined(tmp_path: Path, form: str, profile: DeidProfile) -> None:
    ds = _ct()
    assert ds.StudyDate == STUDY_DATE
    _comment(ds, f"Scheduled {_rendering(STUDY_DATE, form)} by the ward")
    reasons, _ = _process(tmp_path, _encode(ds), profile)
    assert any(r.startswith("leak: date in (0040,0100)[0]") for r in reasons), reasons


@pytest.mark.parametrize("profile", [REMOVE, MODIFIED, FULL], ids=["remove", "modified", "full"])
@pytest.mark.parametrize("form", [*_FORMS, "YYMMDD"])
def test_birth_date_in_another_rendering_is_quarantined(tmp_path: Path, form: str, profile: DeidProfile) -> None:
    ds = _ct()
    ds.PatientBirthDate = BIRTH_DATE
    _comment(ds, f"född {BIRTH_DATE[2:] if form == 'YYMMDD' else _rendering(BIRTH_DATE, form)}, kontroll")
    reasons, _ = _process(tmp_path, _encode(ds), profile)
    assert "leak: birth date in (0040,0100)[0]>(0040,0400)" in reasons, reasons


def test_full_dates_keep_the_study_date_in_free_text(tmp_path: Path) -> None:
    """Under Full Dates the dates are kept, in their attributes and in free text alike: nothing to find."""
    ds = _ct()
    _comment(ds, f"Scheduled {_rendering(STUDY_DATE, 'D Month YYYY')}, {_rendering(STUDY_DATE, 'D/M/YYYY')}")
    reasons, _ = _process(tmp_path, _encode(ds), FULL)
    assert reasons == []


@pytest.mark.parametrize("profile", [REMOVE, MODIFIED], ids=["remove", "modified"])
def test_dates_that_are_not_the_originals_are_not_flagged(tmp_path: Path, profile: DeidProfile) -> None:
    """False-positive guards: other dates in any rendering (a day off, another year, the year-first reading
    of the birth date's digits), six digits that are not the study date's or stand inside a code, times,
    doses, versions and dotted numerics that hold a date's digits."""
    ds = _ct()
    ds.PatientBirthDate = BIRTH_DATE
    _comment(ds, "Kontroll 2019-03-05 och 5 januari 2021; Jan 4, 2020; 2021-01-05; 1985-07-03; 05/01/2021; "
                 "serie 210105, A210104; kl 10:30, 08.30.00; dos 120 - 1212 mGy; syngo VB20A 1.2.3, SW 2021.1; "
                 "ref 1.2.826.0.1.2021.01.04.7 and 3.4.1.2021; 04 01 2021 mm; Mars rover 4 2021")
    reasons, _ = _process(tmp_path, _encode(ds), profile)
    assert reasons == []


# CJK names: components of 1-2 characters, searched written together


@pytest.mark.parametrize("name, text", [
    ("李^娜", "患者李娜复查"),
    ("王^伟", "王伟"),
    ("Wang^Wei=王^伟", "王伟 seen today"),  # the ideographic component group
    ("Yamada^Taro=山田^太郎=やまだ^たろう", "山田太郎様"),
    ("Yamada^Taro=山田^太郎=やまだ^たろう", "やまだたろう"),  # the phonetic group
    ("김^민준", "환자 김민준"),
])
def test_cjk_name_in_kept_text_is_quarantined(tmp_path: Path, name: str, text: str) -> None:
    ds = _ct()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    _comment(ds, text)
    reasons, _ = _process(tmp_path, _encode(ds))
    assert "leak: patient name in (0040,0100)[0]>(0040,0400)" in reasons, reasons


def test_cjk_name_characters_apart_are_not_flagged(tmp_path: Path) -> None:
    """A single ideograph is a word: the family and given name apart, or in the other order, are not the
    name."""
    ds = _ct()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "李^娜"
    _comment(ds, "李医生复查。娜 娜李")
    reasons, _ = _process(tmp_path, _encode(ds))
    assert reasons == []


@pytest.mark.parametrize("written", ["19121212\n1212", "121212   1212"])
def test_personnummer_split_by_a_line_or_wide_gap_is_not_flagged(tmp_path: Path, written: str) -> None:
    ds = _ct()
    _comment(ds, f"values {written}")
    reasons, _ = _process(tmp_path, _encode(ds))
    assert reasons == []


@pytest.mark.parametrize("form", ["D Month YYYY", "D månad YYYY", "D mån. YYYY", "Mon D, YYYY", "DDMONYYYY",
                                  "YYYY MM DD", "YYYY-Mon-DD"])
def test_allow_list_profile_masks_dates_in_every_rendering(tmp_path: Path, form: str) -> None:
    """The engine's side: under ``text_allow_list`` a cleaned attribute (a code meaning) has the date masked
    and the instance is released; the standard profile keeps the text, and the verification holds it."""
    ds = _ct()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "T-D3000", "SRT"
    item.CodeMeaning = f"Chest {_rendering(STUDY_DATE, form)}"
    ds.AnatomicRegionSequence = Sequence([item])
    reasons, out = _process(tmp_path, _encode(ds), DeidProfile(retain_longitudinal_modified_dates=True,
                                                               text_allow_list=True))
    assert reasons == [] and _rendering(STUDY_DATE, form).encode() not in out
    assert pydicom.dcmread(io.BytesIO(out)).AnatomicRegionSequence[0].CodeMeaning == "Chest ***"
    reasons, _ = _process(tmp_path, _encode(ds), MODIFIED)
    assert "leak: date in (0008,2218)[0].(0008,0104)" in reasons, reasons


@pytest.mark.parametrize("keyword", ["PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar"])
def test_dates_in_an_alternative_calendar_are_removed(tmp_path: Path, keyword: str) -> None:
    """The birth (or death) date again, as LO text in another calendar: unlisted in E.1-1 2024b, so a profile
    that keeps unlisted attributes kept it, and no date option can shift it. The engine removes both."""
    ds = _ct()
    ds.PatientBirthDate = "19610307"
    setattr(ds, keyword, "1381-12-16")  # a Hijri date
    ds.PatientAlternativeCalendar = "I"
    reasons, out = _process(tmp_path, _encode(ds))
    back = pydicom.dcmread(io.BytesIO(out))
    assert keyword not in back and b"1381-12-16" not in out
    assert reasons == []
