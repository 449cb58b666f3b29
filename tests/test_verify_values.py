"""The leak scan reads element values straight from the raw bytes (``verify.elements.values``) instead of
through pydicom's conversion: it must read exactly what pydicom reads, for every element of every kind of
file (character sets, implicit and big-endian VR, numbers, empty values, nested sequences), and a leak must
be found whatever the character set."""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from imaging_support import pydicom_bundled_files
from strongroom.imaging.deid import DeidProfile, Pseudonymizer, deidentify_file
from strongroom.imaging.synthetic import make_ct
from strongroom.imaging.verify import leak_scan, scan_read
from strongroom.imaging.verify.elements import DEFER_SIZE, Read, from_pydicom, load, strings, values
from strongroom.imaging.verify.reader import parse


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
            assert [(v.path, v.vr, v.texts) for v in load(raw).values] == fast, f
            charsets.add(str(_read(raw).get("SpecificCharacterSet", "")))
    assert {"ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87"} & charsets  # several character sets were read


def _pydicom_read(raw: bytes) -> Read:
    return from_pydicom(pydicom.dcmread(io.BytesIO(raw), force=True, defer_size=DEFER_SIZE), raw)


def _same_read(fast: Read, slow: Read) -> None:
    """The fast reader read what pydicom reads: every element (path, tag, VR, texts, bytes), the item each
    belongs to, the top level, where the pixel data is, and the file's encoding."""
    assert [v[:5] for v in fast.values] == [v[:5] for v in slow.values]
    assert [sorted(v.parent) for v in fast.values] == [sorted(v.parent) for v in slow.values]
    assert {tag: v[:5] for tag, v in fast.top.items()} == {tag: v[:5] for tag, v in slow.top.items()}
    assert fast.pixels == slow.pixels
    assert (fast.part10, fast.implicit, fast.transfer_syntax) == (slow.part10, slow.implicit, slow.transfer_syntax)


def _plain_files() -> list[tuple[str, bytes]]:
    """The test files the fast reader reads (the others go to pydicom), and ours: a CT, encapsulated."""
    out = [(f, _bytes(f)) for f in _corpus()]
    ct = make_ct(2, 0, 1, 3, rows=32, columns=32)
    ds = pydicom.dcmread(io.BytesIO(ct))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    rle = io.BytesIO()
    ds.save_as(rle)
    out += [("make_ct", ct), ("make_ct RLE", rle.getvalue())]
    plain = [(name, raw) for name, raw in out if parse(raw) is not None]
    return plain + [(f"{name} (implicit)", raw) for name, raw in map(_implicit_copy, plain)
                    if raw and parse(raw) is not None]


def _implicit_copy(file: tuple[str, bytes]) -> tuple[str, bytes]:
    """The file in implicit VR little endian, as pydicom writes it (b"" when pydicom cannot)."""
    name, raw = file
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            return name, b""
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    except Exception:
        return name, b""
    return name, buf.getvalue()


def test_the_fast_reader_reads_what_pydicom_reads() -> None:
    """Every file the fast reader takes (little endian, plain character sets, well formed) is
    read exactly as the pydicom path reads it; the others it declines, and pydicom reads them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _plain_files()
        for _, raw in plain:
            _same_read(parse(raw), _pydicom_read(raw))  # type: ignore[arg-type]
    names = {Path(name).name for name, _ in plain}
    assert len(plain) > 50 and {"CT_small.dcm", "make_ct", "make_ct RLE", "make_ct (implicit)"} <= names
    assert {"MR_small_implicit.dcm", "CT_small.dcm (implicit)"} & names  # implicit VR too
    assert not {"MR_small_bigendian.dcm", "chrH32.dcm"} & names  # big endian, ISO 2022: pydicom reads them


def test_the_fast_reader_declines_or_agrees_on_every_damaged_file() -> None:
    """Damage (a changed byte anywhere in the header, a letter, a changed length, a cut) either makes the fast reader
    decline the file, or it reads exactly what pydicom reads: never a third interpretation. A file pydicom
    cannot read at all is never read by the fast reader either."""
    rng = random.Random(1234)
    agreed = declined = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, raw in _plain_files()[::2]:
            header_end = min([at for _, at, _, _ in parse(raw).pixels] or [len(raw)])  # type: ignore[union-attr]
            for _ in range(40):
                damaged = bytearray(raw)
                how = rng.random()
                if how < 0.4:
                    damaged[rng.randrange(132, header_end)] = rng.randrange(256)
                elif how < 0.6:  # a letter: another valid-looking VR, where it lands on one
                    damaged[rng.randrange(132, header_end)] = rng.choice(b"ABCDFLNOPQSTUVW")
                elif how < 0.8:  # a length field: two bytes after a tag-like position
                    at = rng.randrange(132, max(133, header_end - 8))
                    damaged[at + 6:at + 8] = rng.randrange(65536).to_bytes(2, "little")
                else:
                    del damaged[rng.randrange(132, len(raw)):]
                data = bytes(damaged)
                fast = parse(data)
                try:
                    slow = _pydicom_read(data)
                except Exception:
                    assert fast is None, name
                    declined += 1
                    continue
                if fast is None:
                    declined += 1
                else:
                    _same_read(fast, slow)
                    agreed += 1
    assert agreed > 300 and declined > 300, (agreed, declined)  # both sides of the rule were exercised


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
    # (the long value is UN in an explicit VR file: pydicom read both, the pixel data deferred and never read)
    plain = _read(buf.getvalue())
    del plain.ImageComments
    plain.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fast = io.BytesIO()
    plain.save_as(fast, enforce_file_format=True)
    for read in (scanned.original, scanned.output, scan_read(src, fast.getvalue(), DeidProfile()).output):
        pixel = read.top[0x7FE00010]
        assert pixel.blob is None and pixel.texts == []  # the pixel data is never copied out
        (_, _, start, end), = read.pixels
        assert end - start == pixels
        if read.dataset is not None:
            assert read.dataset.get_item(0x7FE00010, keep_deferred=True).value is None  # nor read
    assert scanned.output.dataset is not None and scan_read(src, fast.getvalue(), DeidProfile()).output.dataset is None
