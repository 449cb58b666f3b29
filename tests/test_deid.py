"""The DICOM de-identification engine (PS3.15 Annex E, 2024b) and its independent verification.

Runs on pydicom's bundled test files and on synthetic identified CT instances (512x512, 16-bit, several
patients/studies/series). Real tools only: dicom3tools ``dciodvfy`` validates the output."""

from __future__ import annotations

import collections
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging_support import pydicom_bundled_files
from strongroom.imaging import deid_table
from strongroom.imaging.deid import (
    CID_7050,
    DeidError,
    DeidProfile,
    PixelRule,
    Pseudonymizer,
    deidentify,
)
from strongroom.imaging.synthetic import SyntheticPatient, make_ct, study_date
from strongroom.imaging.verify import leak_scan, risk_check
from strongroom.imaging.verify.elements import load

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"project-7 secret key, 32 bytes!!"
BASIC = DeidProfile()
MODIFIED = DeidProfile(retain_longitudinal_modified_dates=True, clean_descriptors=True, retain_safe_private=True,
                       clean_structured_content=True, clean_graphics=True)
RETAIN_ALL = DeidProfile(retain_longitudinal_full=True, retain_patient_characteristics=True,
                         retain_device_identity=True, retain_institution_identity=True, retain_uids=True,
                         retain_safe_private=True, clean_descriptors=True, clean_structured_content=True,
                         clean_graphics=True)
ALLOW_LIST = DeidProfile(retain_longitudinal_modified_dates=True, text_allow_list=True)
PROFILES = {"basic": BASIC, "modified": MODIFIED, "retain-all": RETAIN_ALL, "allow-list": ALLOW_LIST}
# pydicom test files that pydicom reads lazily but that are truncated: the engine must refuse them
KNOWN_TRUNCATED = {"MR_truncated.dcm", "rtplan_truncated.dcm"}


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def codes(ds: pydicom.Dataset) -> set[str]:
    return {str(item.CodeValue) for item in ds.DeidentificationMethodCodeSequence}


@pytest.fixture(scope="module")
def pseudo() -> Pseudonymizer:
    return Pseudonymizer(SECRET)


def _parses_fully(path: str) -> bool:
    try:
        ds = pydicom.dcmread(path)
        for _ in ds.iterall():
            pass
        return "DirectoryRecordSequence" not in ds
    except Exception:  # "ones that parse"
        return False


@pytest.fixture(scope="module")
def testdata() -> list[tuple[str, bytes]]:
    files = [f for f in pydicom_bundled_files() if _parses_fully(f)]
    assert len(files) > 100
    return [(Path(f).name, Path(f).read_bytes()) for f in files]


@pytest.fixture(scope="module")
def ct_corpus() -> dict[tuple[int, int, int, int], bytes]:
    """3 patients x 2 studies x 2 series x 3 instances of 512x512 16-bit CT."""
    return {(p, st, se, i): make_ct(p, st, se, i)
            for p in range(3) for st in range(2) for se in (1, 2) for i in (1, 2, 3)}


# --------------------------------------------------------------------------------- generated table


def test_table_is_edition_2024b_with_every_row_and_option() -> None:
    rows = deid_table.ROWS
    assert deid_table.EDITION == "2024b" and len(rows) == 621
    assert collections.Counter(r.basic for r in rows) == {
        "X": 384, "D": 92, "U": 54, "Z": 42, "X/D": 22, "X/Z": 11, "X/Z/D": 8, "Z/D": 6, "X/Z/U*": 2}
    counts = {f: collections.Counter(getattr(r, f) for r in rows if getattr(r, f)) for f in deid_table.OPTION_FIELDS}
    assert counts["rtn_long_full_dates"] == {"K": 165} and counts["rtn_long_modif_dates"] == {"C": 165}
    assert counts["clean_desc"] == {"C": 125} and counts["rtn_uids"] == {"K": 59}
    assert counts["rtn_dev_id"] == {"K": 46, "C": 11} and counts["rtn_inst_id"] == {"K": 10}
    assert counts["rtn_pat_chars"] == {"K": 9, "C": 4} and counts["clean_graph"] == {"C": 4}
    assert counts["clean_struct_cont"] == {"C": 3} and counts["rtn_safe_priv"] == {"C": 1}
    wildcards = {r.pattern for r in rows if r.tag is None}
    assert wildcards == {"50xx,xxxx", "60xx,3000", "60xx,4000", "gggg,eeee odd"}
    by_tag = {r.tag: r for r in rows}
    assert by_tag[0x00100020].basic == "Z/D" and by_tag[0x00100020].keyword == "PatientID"
    assert len(deid_table.SAFE_PRIVATE) == 479
    assert len({sp.creator for sp in deid_table.SAFE_PRIVATE}) == 20


def test_generator_script_reproduces_the_committed_table(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "generate_deid_table.py"
    sys.path.insert(0, str(script.parent))
    try:
        import generate_deid_table as gen  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    source = gen.default_source()
    if not (source / "confidentiality_profile_attributes.json").exists():
        pytest.skip(f"DICOM standard JSON tables not found at {source} (set STRONGROOM_DICOM_STANDARD)")
    out = tmp_path / "deid_table.py"
    subprocess.run([sys.executable, str(script), "--source", str(source), "--output", str(out)], check=True,
                   capture_output=True)
    committed = ROOT / "src" / "strongroom" / "imaging" / "deid_table.py"
    assert out.read_bytes() == committed.read_bytes()
    check = subprocess.run([sys.executable, str(script), "--source", str(source), "--check"], capture_output=True)
    assert check.returncode == 0, check.stderr
    assert "GENERATED FILE" in committed.read_text() and "2024b" in committed.read_text().splitlines()[2]


def test_engine_imports_no_web_or_db_code() -> None:
    code = ("import sys, strongroom.imaging.deid, strongroom.imaging.verify, strongroom.imaging.synthetic; "
            "bad = {m.split('.')[0] for m in sys.modules} "
            "& {'fastapi', 'sqlalchemy', 'starlette', 'pydantic', 'httpx', 'jinja2', 'typer'}; "
            "bad |= {m for m in sys.modules if m.startswith('strongroom.') and m not in "
            "('strongroom.imaging', 'strongroom.imaging.deid', 'strongroom.imaging.deid_table', "
            "'strongroom.imaging.verify', 'strongroom.imaging.synthetic', 'strongroom.identifiers', "
            "'strongroom.patient_ids') "
            "and not m.startswith(('strongroom.imaging.deid.', 'strongroom.imaging.verify.'))}; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ leak scanning


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_pydicom_test_file_passes_the_leak_scan(name: str, testdata: list[tuple[str, bytes]],
                                                      pseudo: Pseudonymizer) -> None:
    profile = PROFILES[name]
    refused, done = set(), 0
    for fname, data in testdata:
        try:
            result = deidentify(data, profile, pseudo)
        except DeidError:
            refused.add(fname)
            continue
        leaks = leak_scan(data, result.data, profile)
        if fname.startswith("reportsi") and (profile.clean_structured_content or profile.text_allow_list):
            # a real finding: the report names a person ("Enter text") in a PNAME item and says the same
            # in a TEXT item and a code meaning ("Text"), which are kept: the identity scan quarantines it
            # (the leak scan's "name" too: a copy in kept text is never exempted)
            assert leaks and all(leak.kind.startswith(("person name", "name"))
                                 and leak.where.startswith("(0040,A730)[")
                                 for leak in leaks), leaks
            leaks = []
        assert not leaks, (fname, leaks)
        out = read(result.data)
        for _ in out.iterall():  # the output parses completely
            pass
        assert out.PatientIdentityRemoved == "YES"
        assert out.file_meta.TransferSyntaxUID == result.transfer_syntax
        done += 1
    assert refused <= KNOWN_TRUNCATED, refused
    assert done >= len(testdata) - len(KNOWN_TRUNCATED)


def test_synthetic_corpus_passes_the_leak_scan_with_every_profile(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    for profile in PROFILES.values():
        for data in list(ct_corpus.values())[::5]:
            result = deidentify(data, profile, pseudo)
            assert leak_scan(data, result.data, profile) == []


def test_leak_scan_finds_planted_leaks(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    original = ct_corpus[(1, 0, 1, 1)]
    assert {leak.kind for leak in leak_scan(original, original, BASIC)} >= {
        "value", "uid", "date", "private", "marker", "name"}
    good = deidentify(original, BASIC, pseudo).data
    assert leak_scan(original, good, BASIC) == []
    patient = SyntheticPatient(1)

    def planted(mutate) -> list:
        ds = read(good)
        mutate(ds)
        buf = io.BytesIO()
        ds.save_as(buf)
        return leak_scan(original, buf.getvalue(), BASIC)

    # a name hidden in an attribute the standard keeps, deep in a sequence
    leaks = planted(lambda ds: setattr(ds.ProcedureCodeSequence[0], "CodeMeaning",
                                       f"CT for {patient.name.split('^')[0]}"))
    assert [leak.kind for leak in leaks] == ["name", "patient name component"]
    assert leaks[0].where.startswith("(0008,1032)[0]") and leaks[1].where == "(0008,1032)[0]>(0008,0104)"
    assert patient.name.split("^")[0] not in repr(leaks)  # a leak report never repeats the value
    # an original UID, an original date, a private element, an unknown-VR blob
    assert "uid" in {leak.kind for leak in planted(lambda ds: setattr(ds, "FrameOfReferenceUID",
                                                                      read(original).FrameOfReferenceUID))}
    assert "date" in {leak.kind for leak in planted(lambda ds: setattr(ds, "SeriesDate", study_date(1, 0)))}
    assert "private" in {leak.kind for leak in planted(lambda ds: ds.private_block(
        0x0033, "SOME VENDOR", create=True).add_new(0x01, "DS", "1.5"))}
    assert {leak.kind for leak in planted(lambda ds: ds.add_new(0x00091001, "UN", b"x"))} == {"private"}
    # a retained attribute the profile replaces, and a missing marker
    assert {leak.kind for leak in planted(lambda ds: setattr(ds, "PatientWeight", "71.5"))} == {"attribute"}
    assert {leak.kind for leak in planted(lambda ds: setattr(ds, "PatientIdentityRemoved", "NO"))} == {"marker"}


def test_leak_scan_checks_the_date_option(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    original = ct_corpus[(2, 1, 1, 1)]
    shifted = deidentify(original, MODIFIED, pseudo).data
    assert leak_scan(original, shifted, MODIFIED) == []
    ds = read(shifted)
    ds.ContentDate = read(original).ContentDate  # one date left unshifted
    buf = io.BytesIO()
    ds.save_as(buf)
    kinds = [leak.detail for leak in leak_scan(original, buf.getvalue(), MODIFIED)]
    assert any("not shifted" in k for k in kinds) and any("original date" in k for k in kinds)
    full = deidentify(original, DeidProfile(retain_longitudinal_full=True), pseudo).data
    assert read(full).StudyDate == read(original).StudyDate
    assert leak_scan(original, full, DeidProfile(retain_longitudinal_full=True)) == []
    assert any(leak.kind == "date" for leak in leak_scan(original, full, BASIC))


# ------------------------------------------------------------------------------ pseudonym consistency


def test_pseudonyms_are_consistent_across_studies_instances_and_keys(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    results = {key: deidentify(data, BASIC, pseudo) for key, data in ct_corpus.items()}
    outs = {key: read(r.data) for key, r in results.items()}
    for p in range(3):
        ids = {str(ds.PatientID) for key, ds in outs.items() if key[0] == p}
        assert len(ids) == 1 and ids != {SyntheticPatient(p).patient_id}
        assert ids == {str(outs[(p, 0, 1, 1)].PatientName).rstrip("^")}
    assert len({str(ds.PatientID) for ds in outs.values()}) == 3
    for (p, st, se, i), ds in outs.items():
        first = outs[(p, st, 1, 1)]
        assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.FrameOfReferenceUID == first.FrameOfReferenceUID
        assert ds.StudyInstanceUID != read(ct_corpus[(p, st, se, i)]).StudyInstanceUID
        assert re.fullmatch(r"2\.25\.[1-9]\d{0,38}", ds.SOPInstanceUID)
        # UIDs stay internally consistent: a reference to the previous slice points at its new UID
        if i > 1:
            assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == outs[(p, st, se, i - 1)].SOPInstanceUID
    assert len({ds.SOPInstanceUID for ds in outs.values()}) == len(outs)
    assert len({ds.SeriesInstanceUID for ds in outs.values()}) == 3 * 2 * 2
    # a new Pseudonymizer with the same key agrees; another key does not
    again = deidentify(ct_corpus[(0, 0, 1, 1)], BASIC, Pseudonymizer(SECRET))
    assert again.data == results[(0, 0, 1, 1)].data
    other = deidentify(ct_corpus[(0, 0, 1, 1)], BASIC, Pseudonymizer(b"another project's key, 32 bytes"))
    assert other.patient_pseudonym != again.patient_pseudonym and other.sop_instance_uid != again.sop_instance_uid


def test_pseudonyms_are_consistent_across_processes(tmp_path: Path, ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    src = tmp_path / "in.dcm"
    src.write_bytes(ct_corpus[(1, 1, 2, 3)])
    code = (
        "import json, sys; from strongroom.imaging.deid import *; "
        "r = deidentify_file(sys.argv[1], sys.argv[2], "
        "DeidProfile(retain_longitudinal_modified_dates=True), Pseudonymizer(bytes.fromhex(sys.argv[3]))); "
        "print(json.dumps([r.patient_pseudonym, r.sop_instance_uid, r.study_instance_uid, r.date_shift_days]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")  # a different hash seed must not matter
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "out.dcm"), SECRET.hex()],
                          check=True, capture_output=True, text=True, env=env)
    theirs = json.loads(proc.stdout)
    mine = deidentify(src.read_bytes(), DeidProfile(retain_longitudinal_modified_dates=True), pseudo)
    assert theirs == [mine.patient_pseudonym, mine.sop_instance_uid, mine.study_instance_uid, mine.date_shift_days]
    assert (tmp_path / "out.dcm").read_bytes() == mine.data


def test_pseudonymizer_rejects_weak_keys_and_is_keyed() -> None:
    with pytest.raises(ValueError):
        Pseudonymizer(b"short")
    a, b = Pseudonymizer(b"a" * 32), Pseudonymizer(b"b" * 32)
    assert a.uid("1.2.3") != b.uid("1.2.3") and a.patient_pseudonym("X") != b.patient_pseudonym("X")
    uid = a.uid("1.2.3")
    n = int(uid.removeprefix("2.25."))
    assert (n >> 76) & 0xF == 8 and (n >> 62) & 0x3 == 2  # a version-8, RFC 4122 variant UUID
    shifts = {a.date_shift_days(f"P{i}") for i in range(500)}
    assert all(-3650 <= s <= -1 for s in shifts) and len(shifts) > 400
    assert "a" * 32 not in repr(a)


# ------------------------------------------------------------------------------------------- dates


def test_modified_dates_shift_each_patient_consistently_and_keep_intervals(ct_corpus: dict,
                                                                           pseudo: Pseudonymizer) -> None:
    import datetime as dt

    def day(s: str) -> dt.date:
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))

    shifts = {}
    for p in range(3):
        outs = {st: read(deidentify(ct_corpus[(p, st, 1, 2)], MODIFIED, pseudo).data) for st in (0, 1)}
        origs = {st: read(ct_corpus[(p, st, 1, 2)]) for st in (0, 1)}
        assert (day(outs[1].StudyDate) - day(outs[0].StudyDate)).days == 37  # interval between studies kept
        shift = (day(outs[0].StudyDate) - day(origs[0].StudyDate)).days
        assert -3650 <= shift <= -1 and shift == pseudo.date_shift_days(SyntheticPatient(p).patient_id)
        for st in (0, 1):
            out, orig = outs[st], origs[st]
            for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate"):
                assert (day(out[kw].value) - day(orig[kw].value)).days == shift, kw
            # the shift is whole days: times stay with their dates
            assert out.AcquisitionTime == orig.AcquisitionTime and out.StudyTime == orig.StudyTime
            assert out.LongitudinalTemporalInformationModified == "MODIFIED"
            assert "113107" in codes(out)
            assert "PatientBirthDate" not in out or not out.PatientBirthDate
        shifts[p] = shift
    assert len(set(shifts.values())) == 3  # per patient, not one offset for everybody
    basic = read(deidentify(ct_corpus[(0, 0, 1, 1)], BASIC, pseudo).data)
    assert basic.StudyDate == "" and basic.LongitudinalTemporalInformationModified == "REMOVED"
    assert basic.SeriesDate == "19000101"  # X/D resolved to a dummy when the IOD type is unknown


# ----------------------------------------------------------------------------------------- options


OPTION_CASES = {
    "retain_patient_characteristics": ("113108", ["PatientSex", "PatientAge", "PatientWeight"], []),
    "retain_device_identity": ("113109", ["DeviceSerialNumber", "StationName"], []),
    "retain_institution_identity": ("113112", ["InstitutionName", "InstitutionAddress",
                                               "InstitutionalDepartmentName"], []),
    "retain_uids": ("113110", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"], []),
    "retain_longitudinal_full": ("113106", ["StudyDate", "SeriesDate", "AcquisitionDate", "StudyTime",
                                            "AcquisitionTime"], []),
    "clean_descriptors": ("113105", [], ["StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments",
                                         "AdditionalPatientHistory"]),
}


@pytest.mark.parametrize("option", list(OPTION_CASES))
def test_each_option_toggles_its_attributes_and_code(option: str, ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    code, kept, cleaned = OPTION_CASES[option]
    original = ct_corpus[(2, 0, 2, 2)]
    orig = read(original)
    profile = DeidProfile(**{option: True})
    with_opt = read(deidentify(original, profile, pseudo).data)
    without = read(deidentify(original, BASIC, pseudo).data)
    assert codes(with_opt) == {"113100", code} and codes(without) == {"113100"}
    assert CID_7050[code] in list(with_opt.DeidentificationMethod)
    for item in with_opt.DeidentificationMethodCodeSequence:
        assert item.CodingSchemeDesignator == "DCM" and item.CodeMeaning == CID_7050[item.CodeValue]
    for kw in kept:
        assert with_opt[kw].value == orig[kw].value, kw
        assert kw not in without or without[kw].value != orig[kw].value, kw
    name_parts = str(orig.PatientName).split("^")
    for kw in cleaned:
        assert kw in with_opt and with_opt[kw].value, kw  # kept, with identifiers masked
        assert not any(part in str(with_opt[kw].value) for part in name_parts), kw
        assert kw not in without or without[kw].value == "ANONYMIZED", kw  # X, or D for X/D
    if option == "clean_descriptors":
        assert with_opt.StudyDescription == "CT THORAX for *** ***"
        assert with_opt.SeriesDescription == orig.SeriesDescription  # nothing identifying: unchanged
        assert SyntheticPatient(2).patient_id not in with_opt.AdditionalPatientHistory
    assert leak_scan(original, deidentify(original, profile, pseudo).data, profile) == []


def test_date_options_are_exclusive() -> None:
    with pytest.raises(ValueError):
        DeidProfile(retain_longitudinal_full=True, retain_longitudinal_modified_dates=True)


def test_clean_structured_content_and_dummy_content_in_sr(pseudo: Pseudonymizer) -> None:
    data = Path(get_testdata_file("test-SR.dcm")).read_bytes()
    orig = read(data)
    texts = [str(el.value) for el in orig.iterall() if el.keyword == "TextValue"]
    assert texts

    def text_values(ds: pydicom.Dataset) -> list[str]:
        return [str(el.value) for el in ds.iterall() if el.keyword == "TextValue"]

    cleaned = read(deidentify(data, DeidProfile(clean_structured_content=True), pseudo).data)
    dummied = read(deidentify(data, BASIC, pseudo).data)
    assert "113104" in codes(cleaned) and "113104" not in codes(dummied)
    # Content Sequence: D (basic) keeps the tree but replaces its text; C cleans it and keeps the meaning
    assert set(text_values(dummied)) == {"ANONYMIZED"}
    assert len(text_values(cleaned)) == len(texts) and text_values(cleaned) != ["ANONYMIZED"] * len(texts)
    assert len(list(dummied.ContentSequence)) == len(list(orig.ContentSequence))
    meanings = {str(el.value) for el in cleaned.iterall() if el.keyword == "CodeMeaning"}
    assert meanings & {str(el.value) for el in orig.iterall() if el.keyword == "CodeMeaning"}


def test_graphics_overlays_and_curves_are_removed(pseudo: Pseudonymizer) -> None:
    data = Path(get_testdata_file("examples_overlay.dcm")).read_bytes()
    assert any(0x6000 <= el.tag.group <= 0x601E for el in read(data))
    for profile in (BASIC, DeidProfile(clean_graphics=True)):
        result = deidentify(data, profile, pseudo)
        out = read(result.data)
        assert not any(0x6000 <= el.tag.group <= 0x601E for el in out)
        assert any("overlay" in e.rule for e in result.action_log)
    assert "113103" in codes(read(deidentify(data, DeidProfile(clean_graphics=True), pseudo).data))


# -------------------------------------------------------------------------------- sequences, private


def test_sequences_are_recursed(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    original = ct_corpus[(0, 1, 1, 2)]
    orig = read(original)
    result = deidentify(original, DeidProfile(clean_descriptors=True), pseudo)
    out = read(result.data)
    ref = out.ReferencedImageSequence[0]
    assert ref.ReferencedSOPClassUID == orig.ReferencedImageSequence[0].ReferencedSOPClassUID
    assert ref.ReferencedSOPInstanceUID == pseudo.uid(orig.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
    # Request Attributes Sequence: X, but C (cleaned) with Clean Descriptors: recursed, Z and X inside
    assert "RequestAttributesSequence" not in read(deidentify(original, BASIC, pseudo).data)
    assert out.RequestAttributesSequence[0].AccessionNumber == ""
    assert "RequestedProcedureID" not in out.RequestAttributesSequence[0]
    assert "OtherPatientIDsSequence" not in out
    assert out.ProcedureCodeSequence[0].CodeMeaning == "CT thorax with contrast"  # unlisted: kept
    paths = {e.tag for e in result.action_log}
    assert "(0040,0275)[0].(0008,0050)" in paths and "(0008,1140)[0].(0008,1155)" in paths


def test_private_tags_removed_unless_safe_by_creator(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    original = ct_corpus[(1, 0, 1, 1)]
    out = read(deidentify(original, BASIC, pseudo).data)
    assert not any(el.tag.is_private for el in out)
    safe = read(deidentify(original, DeidProfile(retain_safe_private=True), pseudo).data)
    block = safe.private_block(0x0019, "GEMS_ACQU_01")
    assert block[0x23].value == "39.37" and block[0x24].value == "3.5"  # in Table E.3.10-1
    assert 0x10 not in block  # same creator, element not in the table
    assert not any(el.tag.group == 0x0029 for el in safe)  # unknown creator
    assert "113111" in codes(safe)

    # by creator + element, never by raw position: move the GEMS block to 0x11 and put another
    # creator at 0x10 whose element sits exactly where GEMS Table Speed usually is
    ds = read(original)
    del ds[0x00190010], ds[0x00191023], ds[0x00191024], ds[0x00191010]
    ds.add_new(0x00190010, "LO", "OTHER VENDOR")
    ds.add_new(0x00191023, "DS", "666")
    ds.add_new(0x00190011, "LO", "GEMS_ACQU_01")
    ds.add_new(0x00191123, "DS", "39.37")
    buf = io.BytesIO()
    ds.save_as(buf)
    moved = read(deidentify(buf.getvalue(), DeidProfile(retain_safe_private=True), pseudo).data)
    assert moved.private_block(0x0019, "GEMS_ACQU_01")[0x23].value == "39.37"
    assert 0x00191023 not in moved and 0x00190010 not in moved
    # private sequences (nested, implicit VR, no dictionary) are removed as a whole
    nested = Path(get_testdata_file("nested_priv_SQ.dcm")).read_bytes()
    assert not any(el.tag.is_private for el in read(deidentify(nested, MODIFIED, pseudo).data).iterall())


# ----------------------------------------------------------------------------------- pixels, meta


def _pixels(data: bytes) -> bytes:
    return read(data).PixelData


def test_pixel_data_is_byte_identical_and_file_meta_consistent(ct_corpus: dict, testdata: list,
                                                               pseudo: Pseudonymizer) -> None:
    for original in list(ct_corpus.values())[:4] + [d for _, d in testdata]:
        try:
            result = deidentify(original, BASIC, pseudo)
        except DeidError:
            continue
        orig, out = read(original), read(result.data)
        if "PixelData" in orig:
            assert out.PixelData == orig.PixelData
            assert bytes(out.PixelData) in result.data  # never compressed as a whole (deflated is inflated)
            if orig.file_meta.get("TransferSyntaxUID") != "1.2.840.10008.1.2.1.99":  # compressed as a whole
                assert bytes(orig.PixelData) in original
        assert result.data[:128] == b"\0" * 128 and result.data[128:132] == b"DICM"
        meta = out.file_meta
        if "SOPInstanceUID" in out:
            assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == result.sop_instance_uid
            assert meta.MediaStorageSOPClassUID == out.SOPClassUID
        assert "SourceApplicationEntityTitle" not in meta
        assert meta.ImplementationVersionName == "STRONGROOM_DEID1"
        assert meta.FileMetaInformationGroupLength == len(result.data) - 144 - len(
            result.data[144 + meta.FileMetaInformationGroupLength:])


def test_pixel_rule_blanks_its_rectangle_only(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    original = ct_corpus[(0, 0, 1, 1)]
    rule = PixelRule(name="GE Revolution header", manufacturer="^GE ", model="Revolution",
                     rectangles=((10, 5, 100, 20), (500, 500, 40, 40)))
    profile = DeidProfile(pixel_rules=(rule,))
    result = deidentify(original, profile, pseudo)
    before = read(original).pixel_array
    after = read(result.data).pixel_array
    assert result.pixel_cleaned and not result.misses
    assert (after[5:25, 10:110] == 0).all() and (after[500:512, 500:512] == 0).all()
    mask = after == before
    mask[5:25, 10:110] = True
    mask[500:512, 500:512] = True
    assert mask.all()  # nothing outside the rectangles changed
    out = read(result.data)
    assert out.BurnedInAnnotation == "NO" and "113101" in codes(out)
    assert leak_scan(original, result.data, profile) == []
    # another scanner: untouched, byte for byte
    other = DeidProfile(pixel_rules=(PixelRule(name="x", manufacturer="SIEMENS", rectangles=((0, 0, 9, 9),)),))
    res2 = deidentify(original, other, pseudo)
    assert not res2.pixel_cleaned and _pixels(res2.data) == _pixels(original)
    assert "113101" not in codes(read(res2.data))
    # compressed pixel data cannot be blanked without re-encoding: a rule miss, which quarantines
    jpeg = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")).read_bytes()
    any_rule = DeidProfile(pixel_rules=(PixelRule(name="all", rectangles=((0, 0, 10, 10),)),))
    res3 = deidentify(jpeg, any_rule, pseudo)
    assert res3.misses and not res3.pixel_cleaned and _pixels(res3.data) == _pixels(jpeg)
    assert any(r.startswith("rule miss") for r in risk_check(jpeg, res3))


def test_multiframe_and_planar_pixel_rules(pseudo: Pseudonymizer) -> None:
    data = Path(get_testdata_file("SC_rgb_rle_2frame.dcm")).read_bytes()  # RLE: a miss
    assert deidentify(data, DeidProfile(pixel_rules=(PixelRule("r", ((0, 0, 2, 2),)),)), pseudo).misses
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    rgb.PlanarConfiguration = 0
    buf = io.BytesIO()
    rgb.save_as(buf)
    res = deidentify(buf.getvalue(), DeidProfile(pixel_rules=(PixelRule("r", ((1, 1, 2, 2),)),)), pseudo)
    arr = read(res.data).pixel_array
    assert (arr[1:3, 1:3] == 0).all() and (arr[0] == rgb.pixel_array[0]).all()


def test_pixel_rule_reads_every_value_of_a_multi_valued_attribute(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    """A rule written for one value (an anchored pattern) still blanks when a second value sits beside it,
    before or after: the same class as the risk check's multi-valued Modality (a second value must not hide
    the first)."""
    rule = PixelRule(name="US banner", modality="^US$", manufacturer="^GE ", rectangles=((0, 0, 16, 8),))
    profile = DeidProfile(pixel_rules=(rule,))
    for modality, manufacturer in (("CT\\US", "GE MEDICAL SYSTEMS"), ("US\\CT", "OTHER\\GE MEDICAL SYSTEMS"),
                                   ("CT \\ US", "GE MEDICAL SYSTEMS"), ("US", "GE MEDICAL SYSTEMS")):
        ds = read(ct_corpus[(0, 0, 1, 1)])
        ds.Modality, ds.Manufacturer = modality, manufacturer
        buf = io.BytesIO()
        ds.save_as(buf)
        result = deidentify(buf.getvalue(), profile, pseudo)
        assert result.pixel_cleaned, modality
        assert (read(result.data).pixel_array[0:8, 0:16] == 0).all()
    ds = read(ct_corpus[(0, 0, 1, 1)])
    ds.Modality = "CT\\MR"  # no value is US: untouched
    buf = io.BytesIO()
    ds.save_as(buf)
    assert not deidentify(buf.getvalue(), profile, pseudo).pixel_cleaned


# ---------------------------------------------------------------------------------------- action log


def test_action_log_names_rules_and_never_values(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    original = ct_corpus[(1, 1, 2, 2)]
    orig = read(original)
    for profile in PROFILES.values():
        result = deidentify(original, profile, pseudo)
        text = repr(result.action_log) + repr(result.misses)
        for el in orig.iterall():
            if el.VR in ("PN", "LO", "SH", "DA", "UI", "LT") and el.value and len(str(el.value)) > 3:
                value = str(el.value)
                if value in ("GE MEDICAL SYSTEMS", "Revolution CT", "REV 5.1", "THORAX", "CT Image Storage",
                             "ISO_IR 100") or value.startswith("1.2.840.10008") or el.tag.is_private and \
                        el.VR == "LO" and el.tag.element < 0x100:
                    continue
                assert value not in text, (el.keyword, profile)
    log = {e.tag: e for e in deidentify(original, BASIC, pseudo).action_log}
    assert log["(0010,0020)"] == ("(0010,0020)", "PatientID", "E.1-1 2024b basic:Z/D->D", "D")
    assert log["(0008,1030)"].action == "X" and log["(0020,000D)"].action == "U"
    assert log["(0008,0080)"].rule.endswith("X/Z/D->D")
    assert any(e.keyword == "PrivateBlock" and e.action == "X" for e in log.values())


# ----------------------------------------------------------------------------------- inputs, fuzzing


def test_dataset_input_gives_a_dataset(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    ds = read(ct_corpus[(0, 0, 2, 1)])
    result = deidentify(ds, BASIC, pseudo)
    assert isinstance(result.data, pydicom.Dataset)
    assert result.data.PatientID == deidentify(ct_corpus[(0, 0, 2, 1)], BASIC, pseudo).patient_pseudonym
    assert ds.PatientID == SyntheticPatient(0).patient_id  # the input is not modified


def test_transfer_syntaxes_round_trip(testdata: list, pseudo: Pseudonymizer) -> None:
    seen = set()
    for name, data in testdata:
        if name not in ("MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "MR_small_RLE.dcm",
                        "JPEG2000.dcm", "UN_sequence.dcm", "SC_rgb_jpeg.dcm"):
            continue
        result = deidentify(data, MODIFIED, pseudo)
        out, orig = read(result.data), pydicom.dcmread(io.BytesIO(data), force=True)
        seen.add(name)
        if name == "image_dfl.dcm":  # deflated: written inflated, so that byte-level checks can read it
            assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert orig.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
        elif "TransferSyntaxUID" in getattr(orig, "file_meta", {}) and name != "SC_rgb_jpeg.dcm":
            assert out.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID
        if "PixelData" in orig:
            assert out.PixelData == orig.PixelData, name
        assert leak_scan(data, result.data, MODIFIED) == []
    assert len(seen) == 7
    for name in ("ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm"):  # no file meta: syntax detected
        data = Path(get_testdata_file(name)).read_bytes()
        result = deidentify(data, BASIC, pseudo)
        assert read(result.data).file_meta.TransferSyntaxUID == (
            "1.2.840.10008.1.2.2" if "Big" in name else "1.2.840.10008.1.2.1")
        assert leak_scan(data, result.data, BASIC) == []


def test_malformed_objects_are_refused_never_crash(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    original = make_ct(0, 0, 1, 1, rows=64, columns=64)
    for bad in (b"", b"DICM", b"\0" * 200, b"not a dicom file at all, just text" * 10, original[:-7],
                original[:400], original[:132] + b"\x10\x00\x10\x00PN\xff\xff" + b"x" * 20):
        with pytest.raises(DeidError):
            deidentify(bad, BASIC, pseudo)
    rng = random.Random(20240611)
    header_end = original.index(b"\xe0\x7f\x10\x00")
    outcomes = collections.Counter()
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(132, header_end)] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(132, len(data))]
        try:
            result = deidentify(bytes(data), BASIC, pseudo)
        except DeidError:
            outcomes["refused"] += 1
            continue
        outcomes["ok"] += 1
        pydicom.dcmread(io.BytesIO(result.data))  # what is accepted comes out as a readable object
        assert SyntheticPatient(0).patient_id.encode() not in result.data[:header_end]
    assert outcomes["refused"] > 20 and outcomes["ok"] > 20, outcomes


def test_dicomdir_is_refused(pseudo: Pseudonymizer) -> None:
    with pytest.raises(DeidError, match="DICOMDIR"):
        deidentify(Path(get_testdata_file("DICOMDIR")).read_bytes(), BASIC, pseudo)


# ------------------------------------------------------------------------------------------ risk check


def test_risk_check_quarantines_what_cannot_be_trusted(ct_corpus: dict, pseudo: Pseudonymizer) -> None:
    ct = ct_corpus[(0, 0, 1, 1)]
    assert risk_check(ct, deidentify(ct, BASIC, pseudo)) == []
    us = Path(get_testdata_file("examples_rgb_color.dcm")).read_bytes()
    assert any("ultrasound" in r for r in risk_check(us))
    sc = Path(get_testdata_file("SC_rgb_small_odd.dcm")).read_bytes()
    reasons = risk_check(sc)
    assert any("secondary capture" in r for r in reasons) and any("Burned In Annotation missing" in r for r in reasons)
    ds = read(ct)
    ds.BurnedInAnnotation = "YES"
    assert any("YES" in r for r in risk_check(ds))
    cr = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    cr.Modality = "CR"
    assert any("missing" in r for r in risk_check(cr))
    cr.BurnedInAnnotation = "NO"
    assert risk_check(cr) == []
    # a second value never hides the first (every reader of the value: a Dataset, bytes, the scan's Read)
    cr.BurnedInAnnotation = ["NO", "YES"]
    cr.Modality = ["CT", "US"]
    buf = io.BytesIO()
    cr.save_as(buf, enforce_file_format=True)
    for given in (cr, buf.getvalue(), load(buf.getvalue())):
        reasons = risk_check(given)
        assert any("ultrasound" in r for r in reasons) and any("is YES" in r for r in reasons), reasons
    cr.BurnedInAnnotation, cr.Modality = "MAYBE", "CR"
    assert any("neither YES nor NO" in r for r in risk_check(cr))
    cr.SOPClassUID = ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7"]
    assert any("secondary capture" in r for r in risk_check(cr))


# ------------------------------------------------------------------------------------------ dciodvfy


def _dciodvfy_errors(path: Path) -> set[str]:
    proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, timeout=60,
                          encoding="utf-8", errors="replace")  # it echoes values in their own character set
    errors = set()
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("Error"):
            errors.add(re.sub(r"<[^>]*>", "<>", line))  # compare the finding, not the (replaced) values
    return errors


def test_output_is_valid_per_dciodvfy(tmp_path: Path, ct_corpus: dict, testdata: list, pseudo: Pseudonymizer) -> None:
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy (Debian package dicom3tools) is required in CI: scripts/install-test-deps.sh")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools, or run scripts/install-test-deps.sh)")
    cases = [(f"ct{k}", d) for k, d in list(ct_corpus.items())[::6]]
    cases += [(n, d) for n, d in testdata if "SOPClassUID" in pydicom.dcmread(io.BytesIO(d), force=True,
                                                                                 stop_before_pixels=True)]
    checked = 0
    for name, data in cases:
        if b"1.2.840.10008.1.2.1.99" in data[:512]:
            continue  # dciodvfy cannot read deflated datasets (it reports garbage for the input too)
        src = tmp_path / "in.dcm"
        src.write_bytes(data)
        before = _dciodvfy_errors(src)
        for profile in (BASIC, MODIFIED):
            try:
                result = deidentify(data, profile, pseudo)
            except DeidError:
                continue
            dst = tmp_path / "out.dcm"
            dst.write_bytes(result.data)
            new = _dciodvfy_errors(dst) - before
            assert not new, (name, sorted(new))
            checked += 1
        if name.startswith("ct"):
            assert before == set(), before  # the synthetic input is itself valid
    assert checked > 150


def test_leak_scan_ignores_pixel_values_that_happen_to_spell_a_name() -> None:
    """Pixel data is copied byte for byte; bytes in it that spell a name are not text (burned-in text is
    the risk check's business), so they must not make the scan cry wolf — and it must not read them."""
    p = SyntheticPatient(3)
    pixels = (p.name.upper().replace("^", " ").encode() * 40).ljust(64 * 64 * 2, b"\0")[:64 * 64 * 2]
    original = make_ct(3, 0, 1, 1, rows=64, columns=64, pixel_bytes=pixels)
    profile = DeidProfile(retain_longitudinal_modified_dates=True)
    out = deidentify(original, profile, Pseudonymizer(b"s" * 32)).data
    assert pixels in out  # untouched
    assert leak_scan(original, out, profile) == []


def test_allow_list_mode_cleans_every_kept_descriptor_at_any_depth(pseudo: Pseudonymizer) -> None:
    """Under ``text_allow_list`` a name or identity number typed into ANY kept free-text attribute (not
    only those Table E.1-1 lists for Clean Descriptors) is scrubbed, at any nesting depth, so the output
    passes the verification instead of being held; the keep-list survives as it is."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from strongroom.imaging.deid import TEXT_KEEP_LIST
    from strongroom.imaging.deid.plan import compiled_plan

    plan = compiled_plan(ALLOW_LIST)
    standard = compiled_plan(DeidProfile(retain_longitudinal_modified_dates=True))
    kept_text = {vr: [t for t, e in standard.ops.items() if e.op == 0 and e.vr == vr.encode()
                      and t not in TEXT_KEEP_LIST and t >> 16 > 0x0004 and "Retired" not in e.keyword
                      and e.keyword] for vr in ("LO", "SH", "UC", "LT", "ST", "UT", "UR")}
    assert all(kept_text.values())
    for vr, tags in kept_text.items():
        assert all(plan.ops[t].op != 0 for t in tags), vr  # none kept as is any more
    patient = SyntheticPatient(3)
    family = patient.name.split("^")[0]
    for depth in range(4):
        ds = read(make_ct(3, 0, 0, depth, rows=16, columns=16))
        holder = ds
        for _ in range(depth):
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = "T-D1100", "SRT"
            holder.AnatomicRegionSequence = Sequence([item])
            holder = item
        for vr, tags in kept_text.items():
            holder.add_new(tags[0], vr, f"{family} 19121212-1212" if vr != "UR" else f"urn:x:{family}")
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        original = buf.getvalue()
        out = deidentify(original, ALLOW_LIST, pseudo).data
        assert family.encode() not in out and b"19121212" not in out, depth
        assert leak_scan(original, out, ALLOW_LIST) == [], depth
        assert read(out).Manufacturer == read(original).Manufacturer
        # and the standard profile keeps them, which the verification catches
        kinds = {leak.kind for leak in leak_scan(original, deidentify(original, MODIFIED, pseudo).data, MODIFIED)}
        assert {"patient name component", "personnummer"} <= kinds, (depth, kinds)


def test_identity_scan_searches_retained_private_values(pseudo: Pseudonymizer) -> None:
    """A safe private element kept by Retain Safe Private is searched like any other value."""
    profile = DeidProfile(retain_safe_private=True)
    ds = read(make_ct(4, 0, 0, 0, rows=16, columns=16))
    family = SyntheticPatient(4).name.split("^")[0]
    block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    block.add_new(0x27, "SH", f"{family}")  # (0043,xx27) is in the safe private table
    block2 = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block2.add_new(0x9E, "LO", "id 19121212-1212")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out = deidentify(buf.getvalue(), profile, pseudo).data
    leaks = {(leak.kind, leak.where) for leak in leak_scan(buf.getvalue(), out, profile)}
    kept = read(out).private_block(0x0043, "GEMS_PARM_01").get_tag(0x27)
    assert ("patient name component", f"(0043,{kept & 0xFFFF:04X})") in leaks, leaks
    assert any(kind == "personnummer" and where.startswith("(0019,") for kind, where in leaks), leaks
