"""Bulk import (`strongroom import dicom`): the de-identification pipeline end to end into the archive,
quarantine, rejection, resumption, the sealed key store and the catalogue facts."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from imaging_support import archived_bytes, instances, make_project, ultrasound, write_corpus
from strongroom.archive.models import Dataset, DatasetVersion
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.imaging import bulk, keystore
from strongroom.imaging.models import ImagingProject, ImportBatch, PseudonymEntry
from strongroom.imaging.settings import to_engine
from strongroom.imaging.synthetic import SyntheticPatient
from strongroom.imaging.verify import leak_scan

MODIFIED = {"retain_longitudinal": "modified"}


@pytest.fixture
def lung(hub, people):
    people("alice")
    make_project(hub, profile=MODIFIED)
    return bulk.project_by_slug(hub, "lung")


def test_bulk_import_archives_quarantines_rejects_and_publishes(hub, lung, tmp_path: Path) -> None:
    originals = write_corpus(tmp_path / "in")
    (tmp_path / "in" / "us.dcm").write_bytes(ultrasound())
    (tmp_path / "in" / "notes.txt").write_text("not DICOM at all")  # skipped, not rejected
    (tmp_path / "in" / "cut.dcm").write_bytes(next(iter(originals.values()))[:3000])  # truncated
    (tmp_path / "in" / "cut2.dcm").write_bytes(next(iter(originals.values()))[:200])  # truncated in the meta

    report = bulk.run_import(hub, lung, tmp_path / "in", workers=2)

    assert (report.received, report.archived, report.quarantined, report.rejected, report.skipped) == (
        15, 12, 1, 2, 1)
    assert report.reasons["not a DICOM file"] == 1
    assert report.published_version == 1
    assert any("ultrasound" in r for r in report.reasons)
    with hub.sessions() as s:
        batch = s.get(ImportBatch, report.batch_id)
        assert (batch.state, batch.received, batch.archived, batch.quarantined, batch.rejected) == (
            "closed", 15, 12, 1, 2)
        ds_id = s.get(ImagingProject, lung).dataset_id
        version = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds_id))
        assert (version.state, version.file_count) == ("released", 12)
        assert s.get(Dataset, ds_id).title == "Lung: imaging imports"

    profile = to_engine(MODIFIED)
    published = instances(hub, "published")
    assert len(published) == 12
    outputs = {}
    for inst in published:
        out = archived_bytes(hub, inst.file_id)  # encrypted at rest; decrypted as a download would be
        outputs[inst.sop_instance_uid] = out
        assert out[128:132] == b"DICM"
    for data in originals.values():
        assert all(pydicom.dcmread(io.BytesIO(data)).PatientID.encode() not in o for o in outputs.values())
    for inst in published:
        out = outputs[inst.sop_instance_uid]
        ds = pydicom.dcmread(io.BytesIO(out))
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID == inst.patient_pseudonym
    for data in originals.values():  # every output passes the independent leak scan against its original
        sop = keystore_pseudonym(hub, lung, "SOPInstanceUID", pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
        assert leak_scan(data, outputs[sop], profile) == []

    # the same patient has one pseudonym; intervals between a patient's studies survive the date shift
    per_patient: dict[str, set[str]] = {}
    for data in originals.values():
        original = pydicom.dcmread(io.BytesIO(data))
        per_patient.setdefault(original.PatientID, set()).add(
            keystore_pseudonym(hub, lung, "PatientID", original.PatientID))
    assert all(len(p) == 1 for p in per_patient.values())
    assert len({next(iter(p)) for p in per_patient.values()}) == 2
    dates = {}
    for inst in published:
        dates.setdefault(inst.patient_pseudonym, set()).add(inst.study_date)
    for study_dates in dates.values():
        a, b = sorted(study_dates)
        from datetime import date
        assert (date(int(b[:4]), int(b[4:6]), int(b[6:])) - date(int(a[:4]), int(a[4:6]), int(a[6:]))).days == 37

    # the key store holds originals sealed, never in clear
    with hub.sessions() as s:
        rows = list(s.scalars(select(PseudonymEntry)))
        assert {r.kind for r in rows} == {"PatientID", "StudyInstanceUID", "SOPInstanceUID"}
        for data in originals.values():
            pid = pydicom.dcmread(io.BytesIO(data)).PatientID.encode()
            assert all(pid not in r.sealed_original for r in rows)
        sealed_secret = s.get(ImagingProject, lung).sealed_secret
    with transaction(hub.sessions) as t:
        assert keystore.project_secret(t, hub.settings, lung) not in sealed_secret


def keystore_pseudonym(hub, project_id, kind: str, original: str) -> str:
    """Find the pseudonym whose sealed original is ``original`` (what re-identification reverses)."""
    key = keystore.keystore_key(hub.settings)
    with hub.sessions() as s:
        for r in s.scalars(select(PseudonymEntry).where(PseudonymEntry.kind == kind)):
            if keystore.unseal(key, r.sealed_original, keystore._context(project_id, kind, r.pseudonym)).decode() \
                    == original:
                return r.pseudonym
    raise AssertionError(f"no pseudonym for {kind}")


def test_rerun_resumes_and_zip_import(hub, lung, tmp_path: Path) -> None:
    write_corpus(tmp_path / "in", patients=1, studies=1, instances=4)
    first = bulk.run_import(hub, lung, tmp_path / "in", workers=1)
    assert first.archived == 4
    again = bulk.run_import(hub, lung, tmp_path / "in", workers=1)
    assert (again.archived, again.duplicates, again.published_version) == (0, 4, None)
    # a ZIP with more of the same patient, plus a new study: only the new ones are added
    write_corpus(tmp_path / "more", patients=1, studies=2, instances=4)
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as zf:
        for p in sorted((tmp_path / "more").iterdir()):
            zf.write(p, f"scans/{p.name}")
    third = bulk.run_import(hub, lung, tmp_path / "more.zip", workers=2)
    assert (third.archived, third.duplicates, third.published_version) == (4, 4, 2)
    assert len(instances(hub, "published")) == 8


def test_cli_import_prints_a_report(hub, lung, settings, tmp_path: Path) -> None:
    originals = write_corpus(tmp_path / "in", patients=1, studies=1, instances=2)
    (tmp_path / "in" / "junk.dcm").write_bytes(next(iter(originals.values()))[:3000])  # damaged DICOM
    env = {"STRONGROOM_VAR_DIR": str(settings.var_dir), "STRONGROOM_DATABASE_URL": settings.database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # a worktree's sources first, as in this process
    r = subprocess.run([sys.executable, "-m", "strongroom.cli", "import", "dicom", str(tmp_path / "in"),
                        "--project", "lung", "--json", "--workers", "1"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stderr  # a rejected file makes the exit status non-zero
    report = json.loads(r.stdout)
    assert (report["received"], report["archived"], report["rejected"]) == (3, 2, 1)
    assert report["published_version"] == 1
    r = subprocess.run([sys.executable, "-m", "strongroom.cli", "import", "dicom", str(tmp_path / "in"),
                        "--project", "nope"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no project" in r.stderr


def test_killed_bulk_import_resumes_without_loss_or_doubles(hub, lung, settings, tmp_path: Path) -> None:
    import os
    import signal
    import time

    write_corpus(tmp_path / "in", patients=4, studies=2, series=2, instances=12)  # 192 files
    env = {"STRONGROOM_VAR_DIR": str(settings.var_dir), "STRONGROOM_DATABASE_URL": settings.database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # a worktree's sources first, as in this process
    cmd = [sys.executable, "-m", "strongroom.cli", "import", "dicom", str(tmp_path / "in"), "--project", "lung",
           "--json", "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while len(instances(hub)) < 64 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the importer and its workers die mid-batch
    proc.wait(30)
    done_before = len(instances(hub))
    assert 64 <= done_before < 192
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["archived"] + report["duplicates"] == 192
    assert report["duplicates"] == done_before
    published = instances(hub, "published")
    assert len(published) == 192 and len({i.sop_instance_uid for i in published}) == 192


def _not_dicom_files(folder: Path) -> list[str]:
    """Everything a folder exported from a PACS, a CD or a Mac tends to carry besides the instances."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "metadata.json": b'{"PatientID": "x"}',
        "README.txt": b"Exported images",
        ".DS_Store": b"\0\0\0\1Bud1" + b"\0" * 300,
        "._p0-st0-se0-0.dcm": b"\0\5\x16\7\0\2\0\0Mac OS X" + b"\0" * 100,  # AppleDouble fork
        "empty.dcm": b"",
        "zeros.dcm": b"\0" * 200,
        "picture.jpg": b"\xff\xd8\xff\xe0\0\x10JFIF" + b"\0" * 300,
        ".hidden/p.dcm": b"hidden folder",
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    # a DICOMDIR, named as such and under another name
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.FileSetID = "CD1"
    ds.DirectoryRecordSequence = []
    ds.save_as(folder / "DICOMDIR", enforce_file_format=True)
    ds.save_as(folder / "dicomdir.bak", enforce_file_format=True)
    return [*files, "DICOMDIR", "dicomdir.bak"]


@pytest.mark.parametrize("packed", ["folder", "zip"])
def test_cli_skips_files_that_are_not_dicom(hub, lung, settings, tmp_path: Path, packed: str) -> None:
    write_corpus(tmp_path / "in", patients=1, studies=1, instances=2)
    junk = _not_dicom_files(tmp_path / "in")
    source = tmp_path / "in"
    if packed == "zip":
        source = tmp_path / "export.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for p in sorted((tmp_path / "in").rglob("*")):
                if p.is_file():
                    zf.write(p, f"export/{p.relative_to(tmp_path / 'in')}")
            zf.writestr("__MACOSX/export/._x.dcm", b"\0\5\x16\7fork")
        junk.append("__MACOSX")
    env = {"STRONGROOM_VAR_DIR": str(settings.var_dir), "STRONGROOM_DATABASE_URL": settings.database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # a worktree's sources first, as in this process
    r = subprocess.run([sys.executable, "-m", "strongroom.cli", "import", "dicom", str(source),
                        "--project", "lung", "--json", "--workers", "1"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr  # nothing went wrong: skipped files are not errors
    report = json.loads(r.stdout)
    assert (report["received"], report["archived"], report["rejected"], report["skipped"]) == (
        2, 2, 0, len(junk)), report
    assert report["reasons"] == {"not a DICOM file": len(junk)}
    with hub.sessions() as s:
        batch = s.get(ImportBatch, report["batch_id"])
        assert (batch.received, batch.rejected) == (2, 0)
    # the human-readable report says so too
    r = subprocess.run([sys.executable, "-m", "strongroom.cli", "import", "dicom", str(source),
                        "--project", "lung", "--workers", "1"], env={**env, "COLUMNS": "200"}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "not a DICOM file" in r.stdout and "skipped" in r.stdout


def test_the_keystore_key_rotates_and_every_sealed_value_follows(hub, lung, settings, tmp_path: Path) -> None:
    """`strongroom admin rotate-keystore-key`, in a process of its own: the running hub seals with the new key at
    once (no restart), every project secret and original is re-sealed under it (none opens under the old key any
    more), the pseudonyms stay the same (same project secret), and what was sealed under the old key meanwhile
    still opens and is re-sealed by `--resume`."""
    from cryptography.exceptions import InvalidTag

    from test_cli_and_ops import run_cli

    write_corpus(tmp_path / "in", patients=1, studies=1, instances=2)
    bulk.run_import(hub, lung, tmp_path / "in", workers=1)
    old_key = keystore.keystore_key(hub.settings)
    with transaction(hub.sessions) as t:
        secret = keystore.project_secret(t, hub.settings, lung)
    patient = SyntheticPatient(0).patient_id
    pseudonym = keystore_pseudonym(hub, lung, "PatientID", patient)

    rotated = run_cli(settings, "admin", "rotate-keystore-key")
    assert rotated.returncode == 0, rotated.stderr
    new_key = keystore.keystore_key(hub.settings)  # this process: the new key without a restart
    assert new_key != old_key and "re-sealed 5 of 5" in rotated.stdout  # a project secret + 4 originals
    retired = keystore.retired_dir(hub.settings) / f"{keystore.key_id(old_key)}.key"
    assert bytes.fromhex(retired.read_text()) == old_key and oct(retired.stat().st_mode & 0o777) == "0o600"
    assert oct(retired.parent.stat().st_mode & 0o777) == "0o700"
    with hub.sessions() as s:
        sealed = [(r.sealed_original, keystore._context(r.project_id, r.kind, r.pseudonym))
                  for r in s.scalars(select(PseudonymEntry))]
        sealed.append((s.get(ImagingProject, lung).sealed_secret, keystore._secret_context(lung)))
    for blob, context in sealed:
        keystore.unseal(new_key, blob, context)
        with pytest.raises(InvalidTag):
            keystore.unseal(old_key, blob, context)
    with transaction(hub.sessions) as t:
        assert keystore.project_secret(t, hub.settings, lung) == secret
    assert keystore_pseudonym(hub, lung, "PatientID", patient) == pseudonym  # re-identification still works
    write_corpus(tmp_path / "more", patients=1, studies=2, instances=1)  # the same patient, a new study
    assert bulk.run_import(hub, lung, tmp_path / "more", workers=1).archived == 1
    assert {i.patient_pseudonym for i in instances(hub, "published")} == {pseudonym}  # the same pseudonym

    # A process that sealed under the old key while the rotation ran: its row still opens, --resume re-seals it.
    context = keystore._context(lung, "PatientID", "LATE")
    with transaction(hub.sessions) as t:
        t.add(PseudonymEntry(project_id=lung, kind="PatientID", pseudonym="LATE",
                             sealed_original=keystore.seal(old_key, b"late-original", context)))
    with hub.sessions() as s:
        late = s.scalar(select(PseudonymEntry).where(PseudonymEntry.pseudonym == "LATE"))
        assert keystore.open_sealed(hub.settings, late.sealed_original, context) == b"late-original"
    resumed = run_cli(settings, "admin", "rotate-keystore-key", "--resume")
    assert resumed.returncode == 0 and "re-sealed 1 of" in resumed.stdout, resumed.stdout + resumed.stderr
    assert keystore.keystore_key(hub.settings) == new_key  # no new key
    with hub.sessions() as s:
        late = s.scalar(select(PseudonymEntry).where(PseudonymEntry.pseudonym == "LATE"))
        assert keystore.unseal(new_key, late.sealed_original, context) == b"late-original"
        events = [(e.action, e.details) for e in s.scalars(select(AuditEvent).where(
            AuditEvent.action.like("imaging.keystore_key.%")).order_by(AuditEvent.seq))]
    assert [a for a, _ in events] == ["imaging.keystore_key.rotated", "imaging.keystore_key.resealed",
                                      "imaging.keystore_key.resealed"]
    assert events[0][1] == {"previous": keystore.key_id(old_key), "current": keystore.key_id(new_key)}
    assert events[2][1]["resealed"] == 1


def test_every_quarantined_instance_of_a_group_counts_in_its_batchs_reasons(hub, lung, tmp_path: Path) -> None:
    """The batch's reason counts (the import page's *Reasons* table) hold every quarantined instance of an
    archived group, wherever it stands in the group (they held only the group's last instance's reasons, so a
    group ending with an archived instance showed none)."""
    write_corpus(tmp_path / "in" / "z", patients=1, studies=1, series=1, instances=2)
    (tmp_path / "in" / "a-us.dcm").write_bytes(ultrasound())  # first in the walk: not the group's last
    report = bulk.run_import(hub, lung, tmp_path / "in", workers=1)
    assert (report.archived, report.quarantined) == (2, 1)
    with hub.sessions() as s:
        batch = s.get(ImportBatch, report.batch_id)
        assert any("ultrasound" in r for r in batch.reasons), batch.reasons  # (one instance, two reasons)
