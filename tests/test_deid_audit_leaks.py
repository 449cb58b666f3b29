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


# ---- 4. free-text forms (names, identity numbers); dates in other renderings are still open


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


@pytest.mark.parametrize("written", ["121212 - 1212", "121212/1212", "121212_1212", "121212. 1212", "121212--1212"])
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
