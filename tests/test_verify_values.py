"""The leak scan reads element values straight from the raw bytes (``verify.elements.values``) instead of
through pydicom's conversion: it must read exactly what pydicom reads, for every element of every kind of
file (character sets, implicit and big-endian VR, numbers, empty values, nested sequences), and a leak must
be found whatever the character set."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from imaging_support import pydicom_bundled_files
from strongroom.imaging.deid import DeidProfile, Pseudonymizer, deidentify_file
from strongroom.imaging.verify import leak_scan, scan_read
from strongroom.imaging.verify.elements import DEFER_SIZE, load, strings, values


def _reference(ds: Dataset, path: str = "") -> list[tuple[str, str, list[str]]]:
    """(path, VR, texts) of every element as pydicom converts it: what the scans read before."""
    out = []
    for elem in ds:
        here = f"{path}({elem.tag.group:04X},{elem.tag.element:04X})"
        out.append((here, elem.VR, [] if elem.VR == "SQ" else [t.strip("\x00 ") for t in strings(elem)]))
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                out.extend(_reference(item, f"{here}[{i}]."))
    return out


def _read(raw: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(raw), force=True)


def _bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def _corpus() -> list[str]:
    readable = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in pydicom_bundled_files():
            try:
                pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:
                continue
            readable.append(f)
    return readable


def test_values_read_what_pydicom_reads_for_every_test_file() -> None:
    files = _corpus()
    assert len(files) > 60  # pydicom's test files: every transfer syntax, character sets, SR, RT, private data
    charsets = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            raw = _bytes(f)
            fast = [(v.path, v.vr, v.texts) for v in values(_read(raw))]
            assert fast == _reference(_read(raw)), f
            # as the scans read it: large values deferred, each read on demand but the pixel data's
            assert [(v.path, v.vr, v.texts) for v in values(load(raw)[0])] == fast, f
            charsets.add(str(_read(raw).get("SpecificCharacterSet", "")))
    assert {"ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87"} & charsets  # several character sets were read


def _with_name(name: str, charset: str | None, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.PatientID = "PID-778899"
    ds.StudyDescription = f"follow-up of {name}"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.99.1"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = ds.SamplesPerPixel = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Modality = "CT"
    ds.PixelData = b"\0" * 8
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(("name", "charset", "syntax"), [
    ("Müller^Jürgen", "ISO_IR 100", ExplicitVRLittleEndian),
    ("Ødegård^Åse", "ISO_IR 192", ExplicitVRLittleEndian),
    ("Wang^XiaoDong=王^小東", "ISO_IR 192", ImplicitVRLittleEndian),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "\\ISO 2022 IR 87", ExplicitVRLittleEndian),
    ("Smith^Anne", None, ImplicitVRLittleEndian),
])
def test_a_name_left_in_free_text_is_found_in_every_character_set(
        tmp_path: Path, name: str, charset: str | None, syntax: str) -> None:
    """The Basic Profile removes Study Description; an output that kept it (and with it the name) must fail."""
    original = _with_name(name, charset, syntax)
    (tmp_path / "in.dcm").write_bytes(original)
    deidentify_file(str(tmp_path / "in.dcm"), str(tmp_path / "out.dcm"), DeidProfile(), Pseudonymizer(b"k" * 32))
    assert leak_scan(tmp_path / "in.dcm", tmp_path / "out.dcm", DeidProfile()) == []
    leaky = _read((tmp_path / "out.dcm").read_bytes())
    leaky.StudyDescription = f"follow-up of {name}"
    found = leak_scan(original, leaky, DeidProfile())
    assert found and any("(0008,1030)" in leak.where or leak.where == "file bytes" for leak in found)
    assert all(name not in leak.detail for leak in found)  # a finding never names the value


def test_values_of_a_real_ct_match_in_implicit_and_big_endian() -> None:
    for name in ("MR_small_implicit.dcm", "MR_small_bigendian.dcm", "CT_small.dcm"):
        raw = _bytes(get_testdata_file(name))
        assert [(v.path, v.vr, v.texts) for v in values(_read(raw))] == _reference(_read(raw))


def test_values_larger_than_the_deferral_size_are_scanned_but_the_pixel_data_is_never_read(tmp_path: Path) -> None:
    """The scans read large values on demand (``DEFER_SIZE``): an identifying value longer than that, outside
    the pixel data, is found as any other; the pixel data (of both files) is never copied out."""
    name = "Kowalski^Janusz"
    pixels = 512 * 512 * 2
    original = _read(_with_name(name, "ISO_IR 100"))
    original.Rows = original.Columns = 512
    original.PixelData = b"\1" * pixels
    original.ImageComments = f"seen by {name} " * (DEFER_SIZE // 16)  # removed by the Basic Profile
    src = tmp_path / "in.dcm"
    original.save_as(src, enforce_file_format=True)
    deidentify_file(str(src), str(tmp_path / "out.dcm"), DeidProfile(), Pseudonymizer(b"k" * 32))
    assert leak_scan(src, tmp_path / "out.dcm", DeidProfile()) == []
    leaky = _read((tmp_path / "out.dcm").read_bytes())
    leaky.ImageComments = original.ImageComments  # longer than DEFER_SIZE, at the top level
    buf = io.BytesIO()
    leaky.save_as(buf, enforce_file_format=True)
    scanned = scan_read(src, buf.getvalue(), DeidProfile())
    assert any(leak.where == "(0020,4000)" for leak in scanned.leaks), scanned.leaks
    for ds in (scanned.original, scanned.output):
        assert ds.get_item(0x7FE00010, keep_deferred=True).value is None  # never read
        assert len(ds.PixelData) == pixels  # and still there for whoever asks
