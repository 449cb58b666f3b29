"""The verification pool's shortcuts change no finding: the DICOMweb index taken from the leak scan's read of
the output equals a fresh read of the file, the identity scan's patterns built only from the needles present
in the output find exactly what the full patterns find (Unicode case-folding equivalents included), and a
body sealed with a deferred directory fsync is made durable by the archiver's ``sync_sealed``."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from imaging_support import pydicom_bundled_files
from strongroom.archive import c4gh
from strongroom.archive.sealing import seal_file, sync_sealed
from strongroom.archive.storage.errors import StorageError
from strongroom.archive.storage.local import LocalStorage
from strongroom.imaging import dicomindex
from strongroom.imaging.deid import DeidProfile, Pseudonymizer, deidentify_file
from strongroom.imaging.synthetic import make_ct
from strongroom.imaging.verify import scan_read
from strongroom.imaging.verify.elements import DEFER_SIZE, from_pydicom, load, values
from strongroom.imaging.verify.identity import _IdentityNeedles, _text_values, identity_leaks

PROFILE = DeidProfile(retain_longitudinal_modified_dates=True)


def _deidentified(tmp_path: Path, raw: bytes, name: str) -> tuple[Path, Path]:
    src, out = tmp_path / f"{name}.raw", tmp_path / f"{name}.dcm"
    src.write_bytes(raw)
    deidentify_file(str(src), str(out), PROFILE, Pseudonymizer(b"k" * 32))
    return src, out


def _variants() -> dict[str, bytes]:
    raw = make_ct(3, 0, 1, 2, rows=32, columns=32)
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    rle = io.BytesIO()
    ds.save_as(rle)
    ds = pydicom.dcmread(io.BytesIO(raw))
    del ds.PixelData
    bare = io.BytesIO()
    ds.save_as(bare)
    return {"native": raw, "rle": rle.getvalue(), "no-pixels": bare.getvalue()}


@pytest.mark.parametrize("kind", ["native", "rle", "no-pixels"])
def test_the_index_from_the_scans_read_equals_a_fresh_read(tmp_path: Path, kind: str) -> None:
    src, out = _deidentified(tmp_path, _variants()[kind], kind)
    scanned = scan_read(str(src), str(out), PROFILE)
    shared = dicomindex.index_read(scanned.output)
    assert shared is not None
    assert shared == dicomindex.index_file(str(out))
    if kind != "no-pixels":
        assert shared["pixel_offset"] and shared["frames"]


def test_the_index_from_either_read_equals_a_fresh_read_for_every_test_file() -> None:
    """Whichever reader the scan used (the fast one, or pydicom's for the files it declines), the index
    taken from its read equals ``index_file``'s."""
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in pydicom_bundled_files("*.dcm"):
            try:
                expected = dicomindex.index_file(f)
            except dicomindex.NotIndexable:
                continue
            raw = Path(f).read_bytes()
            for read in (load(raw), from_pydicom(pydicom.dcmread(io.BytesIO(raw), force=True, defer_size=DEFER_SIZE),
                                                 raw)):
                shared = dicomindex.index_read(read)
                if shared is not None:
                    assert shared == expected, f
                    compared += 1
    assert compared > 80


def test_the_index_falls_back_when_the_output_is_not_part_10(tmp_path: Path) -> None:
    raw = make_ct(3, 0, 1, 2, rows=16, columns=16)
    ds = pydicom.dcmread(io.BytesIO(raw))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    headless = buf.getvalue()[128:] if buf.getvalue()[128:132] == b"DICM" else buf.getvalue()
    assert dicomindex.index_read(load(headless)) is None  # index_file decides (and refuses it)


def _person(texts: dict[str, str]) -> tuple[Dataset, Dataset]:
    orig = Dataset()
    orig.PatientName = "LINDQVIST^ALICE"
    orig.PatientID = "MRN7348119"
    orig.AccessionNumber = "ACC99812"
    out = Dataset()
    for keyword, text in texts.items():
        setattr(out, keyword, text)
    return orig, out


@pytest.mark.parametrize(
    "texts",
    [
        {"StudyDescription": "CT CHEST"},  # nothing present: no pattern at all
        {"StudyDescription": "follow-up of lindqvist"},  # ASCII, another case
        {"StudyDescription": "ALıCE LINDQVIST"},  # dotless i: re.I's equivalent of i, unknown to lower()
        {"StudyDescription": "ſcan for Alice", "SeriesDescription": "MRN7348119"},  # long s elsewhere in the text
        {"ImageComments": "acc99812 reviewed"},
    ],
)
def test_patterns_from_present_needles_find_what_the_full_patterns_find(texts: dict[str, str]) -> None:
    orig, out = _person(texts)
    flags = {"retain_institution_identity": False}
    orig_values, out_values = values(orig), values(out)
    found = identity_leaks(orig_values, out_values, flags)
    full = _IdentityNeedles(orig_values, flags)  # no haystack: every needle in every pattern
    expected = [(path, kind) for path, tag, vr, text in _text_values(out_values) for kind in full.search(tag, vr, text)]
    assert sorted({(leak.where, leak.kind) for leak in found}) == sorted(set(expected))
    if texts != {"StudyDescription": "CT CHEST"}:
        assert found


def test_a_deferred_directory_fsync_is_done_before_the_rows(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "objects")
    plain = tmp_path / "plain.dcm"
    plain.write_bytes(make_ct(1, 0, 1, 1, rows=16, columns=16))
    public = c4gh.generate_keypair().public
    deferred = seal_file("fp", public, storage, "p1", "f1", str(plain), defer_dir_sync=True)
    synced = seal_file("fp", public, storage, "p1", "f2", str(plain))
    assert not deferred.dir_synced and synced.dir_synced
    assert storage.exists(deferred.body_key)
    sync_sealed(storage, [deferred, synced])  # fsyncs archive/p1 once

    class OtherStorage:  # a storage that cannot make a deferred rename durable
        pass

    with pytest.raises(StorageError):
        sync_sealed(OtherStorage(), [deferred])  # type: ignore[arg-type]
    sync_sealed(OtherStorage(), [synced])  # type: ignore[arg-type]  # nothing deferred: nothing to do


def test_the_pool_seals_the_bytes_it_verified(tmp_path: Path) -> None:
    """``seal_file(data=...)`` archives the bytes given (those the leak scan read), not the file's."""
    storage = LocalStorage(tmp_path / "objects")
    keypair = c4gh.generate_keypair()
    verified = make_ct(2, 0, 1, 1, rows=16, columns=16) * 300  # several 4 MiB batches
    path = tmp_path / "out.dcm"
    path.write_bytes(b"not what was verified")
    sealed = seal_file("fp", keypair.public, storage, "p1", "f1", str(path), data=verified, defer_dir_sync=True)
    with storage.open_reader(sealed.body_key) as body:
        plain = b"".join(c4gh.decrypt_stream(io.BytesIO(sealed.header + body.read()), [keypair.secret]))
    assert plain == verified and sealed.plaintext_size == len(verified)


def test_acknowledged_on_receipt_the_work_is_done_in_memory_and_a_failure_leaves_the_output_for_review(
        tmp_path: Path) -> None:
    """``pipeline.deidentify_verify_and_seal`` (acknowledged on receipt) de-identifies, verifies and seals
    without writing the de-identified file to the spool; when sealing fails, the output is left at ``out`` for
    the archiver to seal for review, and an unprocessable original is refused."""
    from nacl.public import PrivateKey

    from strongroom.config import StorageSettings
    from strongroom.imaging import pipeline

    raw = tmp_path / "in.raw"
    raw.write_bytes(make_ct(4, 0, 1, 1, rows=16, columns=16))
    secret = b"s" * 32
    public = bytes(PrivateKey.generate().public_key)
    target = pipeline.SealTarget(StorageSettings(), tmp_path / "var", "fp", public, "p1", "")
    out = tmp_path / "in.dcm"
    summary, sealed = pipeline.deidentify_verify_and_seal(str(raw), str(out), PROFILE, secret, target)
    assert sealed is not None and summary["reasons"] == [] and summary["index"]["pixel_offset"]
    assert summary["size"] == sealed.plaintext_size and not out.exists()  # nothing written to the spool
    assert summary["received_size"] == raw.stat().st_size
    blocked = tmp_path / "not-a-directory"
    blocked.write_bytes(b"")
    summary, sealed = pipeline.deidentify_verify_and_seal(
        str(raw), str(out), PROFILE, secret, pipeline.SealTarget(StorageSettings(), blocked, "fp", public, "p1", ""))
    assert sealed is None and summary["reasons"][0].startswith("verification failed")
    assert out.stat().st_size == summary["size"]  # held for review: the archiver seals it
    assert scan_read(str(raw), str(out), PROFILE).leaks == []
    raw.write_bytes(raw.read_bytes()[:200])
    summary, sealed = pipeline.deidentify_verify_and_seal(str(raw), str(out), PROFILE, secret, target)
    assert sealed is None and summary["rejected"].startswith("not processable DICOM") and not out.exists()
