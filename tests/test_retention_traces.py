"""After a certified retention deletion nothing of the deleted data names a patient pseudonym, an original
identifier or a UID anywhere the hub keeps it (audit of the retention leftovers): every text, JSON and binary
column of every table and every listing (SFTP, the API, the pages, DRS, QIDO-RS, the outbox) is searched for
them. Only the audit log still holds some — append-only and hash-chained, it is never rewritten; which events
do is listed here (``AUDITED``) and in docs/retention.md. The deleted files' rows stay, named by their
accession; the certificate names each path by its SHA-256 and still verifies; a patient's other, retained
study keeps its key-store link."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import uuid
from pathlib import Path

import pydicom
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from conftest import bearer, token_for, web_client
from imaging_support import make_project
from strongroom import models
from strongroom.archive import c4gh
from strongroom.archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from strongroom.audit.models import AuditEvent
from strongroom.catalog.models import CatalogEntry
from strongroom.db import Base, transaction, utcnow
from strongroom.errors import DomainError
from strongroom.imaging import bulk, keystore, synthetic
from strongroom.imaging import service as imaging
from strongroom.imaging.models import ImagingProject, ImportBatch, ImportedInstance, PseudonymEntry
from strongroom.projects.models import Project
from strongroom.retention import clock
from strongroom.retention.models import VersionClock
from strongroom.sftp import paths
from strongroom.sftp import service as sftp
from strongroom.sftp.models import SshKey
from test_airlock import CLEAN_CSV, _drain, _export, _get, _put_file, _review
from test_airlock import world as airlock_world  # noqa: F401 - fixture
from test_retention import _cli

# Audit events that name a file's path, a study's UID or an instance's: the record of who did what, kept as it
# was written (append-only, hash-chained; the audit log's own retention applies).
AUDITED = {
    "archive.upload.started", "archive.upload.completed",  # the path as uploaded (completed: a bundle's files)
    "sftp.upload.resumed", "sftp.upload.renamed",  # the path, and a rename's two
    "dicomweb.study.read", "dicomweb.window.refused", "dicom.study.retrieved",  # target study:<UID>, a SOP UID
    "imaging.quarantine.released", "imaging.quarantine.discarded",  # target instance:<SOP UID>
    "imaging.reidentified",  # target pseudonym:<…>
}


# -- what the hub keeps ------------------------------------------------------------------------------------
def _text(value: object) -> str:
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _traces(hub, needles: list[str]) -> dict[tuple[str, str], set[str]]:
    """(table, column) → the audit actions, or {""}, of every row in any table holding one of ``needles``."""
    models.load_all()
    found: dict[tuple[str, str], set[str]] = {}
    with hub.sessions() as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(select(table)).mappings():
                for column, value in row.items():
                    if value is not None and any(n in _text(value) for n in needles):
                        found.setdefault((table.name, column), set()).add(
                            row["action"] if table.name == AuditEvent.__tablename__ else "")
    return found


def _outside_the_audit_log(found: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], set[str]]:
    audited = {key: actions for key, actions in found.items() if key[0] == AuditEvent.__tablename__}
    assert set().union(*audited.values()) <= AUDITED, audited
    return {key: actions for key, actions in found.items() if key[0] != AuditEvent.__tablename__}


def _ssh_key(hub, person) -> uuid.UUID:
    with transaction(hub.sessions) as s:
        key = SshKey(user_id=person.user.id, fingerprint=f"SHA256:{uuid.uuid4().hex}", algorithm="ssh-ed25519",
                     public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI0000000000000000000000000000000000000000000")
        s.add(key)
        s.flush()
        return key.id


def _ls(hub, key_id: uuid.UUID, where: str) -> list[str]:
    """What `ls` shows over SFTP (an empty list for a directory that is not there)."""
    with hub.sessions() as s:
        try:
            rows, _ = sftp.list_page(s, sftp.key_principal(s, key_id), paths.parse(where), None)
        except DomainError:
            return []
    return [entry.name for _, entry in rows]


def _age(hub, dataset_id: str, number: int) -> None:
    """As if the version was last used 11 years ago (after the clock read every use there is)."""
    with transaction(hub.sessions) as s:
        clock.catch_up(s, hub.settings.retention)
        v = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id,
                                                  DatasetVersion.number == number))
        c = s.get(VersionClock, v.id)
        c.last_used_at = utcnow() - dt.timedelta(days=366 * 11)
        clock.recompute(s, hub.settings.retention, c)


def _delete(hub, api, dataset_id: str, number: int, owner: dict, operator: dict) -> dict:
    """Request (the owner), approve (an operator), run the job: the version's signed certificate."""
    _age(hub, dataset_id, number)
    r = api.post(f"/api/v1/datasets/{dataset_id}/versions/{number}/deletion", json={"reason": "Ten years unused"},
                 headers=owner)
    assert r.status_code == 201, r.text
    d = r.json()["id"]
    assert api.post(f"/api/v1/retention/deletions/{d}/approve", headers=operator).status_code == 200
    _drain(hub)
    assert api.get(f"/api/v1/retention/deletions/{d}", headers=owner).json()["state"] == "certified"
    r = api.get(f"/api/v1/retention/deletions/{d}/certificate", headers=owner)
    assert r.status_code == 200
    return {"text": r.text, **r.json()}


def _verifies(hub, certificate: dict, tmp_path: Path) -> None:
    path = tmp_path / "certificate.json"
    path.write_text(certificate["text"])
    ok = _cli(hub, "verify", str(path))
    assert ok.exit_code == 0 and "OK" in ok.output, ok.output


def _absent(needles: list[str], texts: dict[str, str]) -> None:
    shown = {where: [n for n in needles if n in text] for where, text in texts.items()}
    assert not any(shown.values()), shown


# -- imported instances: the index, the key store, the import's records, every listing -----------------------
def test_an_imported_study_leaves_no_trace_and_the_patients_other_study_keeps_its_link(app, hub, people,
                                                                                        tmp_path) -> None:
    alice, ops = people("alice"), people("ops", admin=True)
    make_project(hub, "lung", "alice", profile={"retain_longitudinal": "modified"})
    project = bulk.project_by_slug(hub, "lung")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "a.dcm").write_bytes(synthetic.make_ct(0, 0, 1, 1, rows=32, columns=32))  # patient 0, study 0
    (first / "b.dcm").write_bytes(synthetic.make_ct(1, 0, 1, 1, rows=32, columns=32))  # patient 1
    c_bytes = synthetic.make_ct(0, 1, 1, 1, rows=32, columns=32)  # patient 0 again: a later study
    original = pydicom.dcmread(io.BytesIO(c_bytes))
    (second / "c.dcm").write_bytes(c_bytes)
    # a file the import refuses, named (as PACS exports name them) by an original UID: the batch records it
    (second / f"{original.SOPInstanceUID}.1.dcm").write_bytes(c_bytes[:200])  # cut short
    bulk.run_import(hub, project, first, workers=1)
    bulk.run_import(hub, project, second, workers=1)  # version 2: a, b and c
    with transaction(hub.sessions) as s:
        ds_id = s.get(ImagingProject, project).dataset_id
        c = s.scalar(select(ImportedInstance).where(ImportedInstance.published_version == 2))
        c_path = s.get_one(ArchiveFile, c.file_id).path
        entry = CatalogEntry(dataset_id=ds_id, slug="lung-imaging", title="Lung imaging", created_by=alice.user.id,
                             published=True, published_at=utcnow())
        s.add(entry)
        s.flush()
        imaging.index_entry(s, entry)
        assert entry.studies == 3
        batch_of_c, patient = c.batch_id, c.patient_pseudonym
        assert s.get_one(ImportBatch, batch_of_c).rejected == 1
        before = {(e.kind, e.pseudonym) for e in s.scalars(select(PseudonymEntry))}
    needles = [c.study_uid, c.series_uid, c.sop_instance_uid, c_path, original.StudyInstanceUID,
               original.SeriesInstanceUID, original.SOPInstanceUID]
    assert len(before) == 8 and ("StudyInstanceUID", c.study_uid) in before
    api = TestClient(app)
    owner, operator = bearer(token_for(hub, alice)), bearer(token_for(hub, ops))
    # an in-platform view of study c (audited: the audit log names the study)
    seen = api.get(f"/dicomweb/projects/lung/studies/{c.study_uid}/series/{c.series_uid}/thumbnail", headers=owner)
    assert seen.status_code == 200, seen.text
    assert _traces(hub, needles)  # there is something to find

    certificate = _delete(hub, api, ds_id, 2, owner, operator)

    # nothing kept anywhere names study c, its series, its instance or its path; the audit log as written
    assert _outside_the_audit_log(_traces(hub, needles)) == {}
    with hub.sessions() as s:
        after = {(e.kind, e.pseudonym) for e in s.scalars(select(PseudonymEntry))}
        # patient 0 keeps the link of their other, retained study; study c's and its instance's went
        assert before - after == {("StudyInstanceUID", c.study_uid), ("SOPInstanceUID", c.sop_instance_uid)}
        assert ("PatientID", patient) in after
        # the import that brought only c keeps its counts, not what it recorded of the data
        batch = s.get_one(ImportBatch, batch_of_c)
        assert batch.reasons == {} and batch.origin == "" and (batch.archived, batch.rejected) == (1, 1)
        # the catalogue counts what is left
        assert s.scalar(select(CatalogEntry.studies).where(CatalogEntry.dataset_id == ds_id)) == 2
        gone = s.get_one(ArchiveFile, c.file_id)
        assert (gone.state, gone.path) == ("deleted", gone.id)

    # no listing shows the deleted file
    key = _ssh_key(hub, alice)
    study_dirs = _ls(hub, key, f"/lung/uploads/{patient}")
    assert len(study_dirs) == 1 and c.study_uid not in study_dirs
    page = web_client(app, hub, alice)
    listings = {
        "API files": api.get("/api/v1/projects/lung/files", headers=owner).text,
        **{f"API v{n} files": api.get(f"/api/v1/datasets/{ds_id}/versions/{n}/files", headers=owner).text
           for n in (1, 2)},
        "API imports": api.get("/api/v1/projects/lung/imaging/imports", headers=owner).text,
        "SFTP uploads": " ".join(_ls(hub, key, "/lung/uploads") + study_dirs
                                 + _ls(hub, key, f"/lung/uploads/{patient}/{c.study_uid}")),
        **{f"SFTP v{n}": " ".join(_ls(hub, key, f"/lung/datasets/{ds_id}/v{n}")) for n in (1, 2)},
        "page: project data": page.get("/projects/lung/data").text,
        **{f"page: v{n}": page.get(f"/datasets/{ds_id}?version={n}").text for n in (1, 2)},
        "DRS bundle": api.get(f"/ga4gh/drs/v1/objects/{ds_id}", headers=owner).text,
        "QIDO-RS": api.get("/dicomweb/projects/lung/instances", headers=owner).text,
        "certificate": certificate["text"],
        "deletion page": page.get(f"/retention/deletions/{certificate['certificate']['deletion']}").text,
        "retention page": page.get(f"/datasets/{ds_id}/retention").text,
    }
    _absent(needles, listings)
    assert "1 file(s) deleted" in listings["retention page"]  # what went, when, by which deletion
    assert len(json.loads(listings["API files"])) == 2  # a and b, still released in version 1

    # the certificate names the path by its digest, and still proves the deletion
    files = certificate["certificate"]["files"]
    assert [f["path_sha256"] for f in files] == [hashlib.sha256(c_path.encode()).hexdigest()]
    assert certificate["certificate"]["format"] == 2 and "path" not in files[0]
    assert certificate["certificate"]["derived"]["keystore_entries"] == 2
    assert {k["path_sha256"] for k in certificate["certificate"]["kept_in_other_versions"]} == {
        hashlib.sha256(p.encode()).hexdigest() for p in _paths_of(hub, project, exclude=c.file_id)}
    _verifies(hub, certificate, tmp_path)


def _paths_of(hub, project_id: uuid.UUID, *, exclude: str) -> list[str]:
    with hub.sessions() as s:
        return list(s.scalars(select(ArchiveFile.path).where(ArchiveFile.project_id == project_id,
                                                             ArchiveFile.id != exclude)))


# -- an SFTP upload exported through the airlock: the session, the request, its receipt, the outbox -----------
def test_an_uploaded_and_exported_file_leaves_no_trace(airlock_world, people, tmp_path) -> None:  # noqa: F811
    w, hub, c = airlock_world, airlock_world["hub"], airlock_world["c"]
    pseudonym, study = "RT7ZQK2M4XWB6N3PLD5J", f"2.25.{uuid.uuid4().int}"
    path = f"{pseudonym}/{study}/measurements.csv"
    key = _ssh_key(hub, w["p"]["sam"])
    upload = sftp.open_write(hub, key, "127.0.0.1", paths.parse(f"/lung/uploads/{path}"), truncate=True)
    upload.accept(0, CLEAN_CSV * 50)
    upload.finish()
    _drain(hub)
    with transaction(hub.sessions) as s:
        f = s.scalar(select(ArchiveFile).where(ArchiveFile.path == path))
        assert f is not None and f.state == "ready"
        fid, lung = f.id, s.scalar(select(Project.id).where(Project.slug == "lung"))
        s.add(Dataset(id="SRD-TRACE", project_id=lung, title="Measurements", created_by=w["p"]["alice"].user.id))
        s.flush()
        v = DatasetVersion(dataset_id="SRD-TRACE", number=1, state="released", released_at=utcnow(), file_count=1)
        s.add(v)
        s.flush()
        s.add(DatasetFile(version_id=v.id, file_id=fid))
    # exported to Carl (an outbox copy sealed to his key), after two reviews
    carl = c4gh.generate_keypair()
    assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(carl.public).decode()},
                  headers=bearer(w["t"]["carl"])).status_code == 201
    request = _export(w, "sam", [fid], "Carl at the registry").json()["id"]
    _drain(hub)
    _review(w, request, "rita")
    _review(w, request, "ron")
    _drain(hub)
    assert _get(w, request)["state"] == "done"
    needles = [pseudonym, study, path]
    assert {key[0] for key in _traces(hub, needles)} >= {"archive_files", "sftp_uploads", "airlock_files",
                                                        "airlock_outbox", "airlock_requests"}

    owner, operator = bearer(w["t"]["alice"]), bearer(token_for(hub, people("ops", admin=True)))
    certificate = _delete(hub, c, "SRD-TRACE", 1, owner, operator)

    assert _outside_the_audit_log(_traces(hub, needles)) == {}
    page = web_client(c.app, hub, w["p"]["sam"])
    listings = {
        "API files": c.get("/api/v1/projects/lung/files", headers=bearer(w["t"]["sam"])).text,
        "API v1 files": c.get("/api/v1/datasets/SRD-TRACE/versions/1/files", headers=owner).text,
        "SFTP uploads": " ".join(_ls(hub, key, "/lung/uploads") + _ls(hub, key, f"/lung/uploads/{pseudonym}")),
        "the airlock request": c.get(f"/api/v1/projects/lung/airlock/requests/{request}",
                                     headers=bearer(w["t"]["sam"])).text,
        "Carl's outbox": c.get("/api/v1/airlock/outbox", headers=bearer(w["t"]["carl"])).text,
        "page: project data": page.get("/projects/lung/data").text,
    }
    _absent(needles, listings)
    receipt = _get(w, request)["receipt"]["files"]
    assert [(e["file_id"], e["path"]) for e in receipt] == [(fid, fid)]  # who got what, when and its checksum stay
    assert certificate["certificate"]["files"][0]["path_sha256"] == hashlib.sha256(path.encode()).hexdigest()
    _verifies(hub, certificate, tmp_path)


# -- the key store: what still refers to an entry ------------------------------------------------------------
def test_a_key_store_entry_stays_while_an_instance_or_a_file_name_refers_to_it(hub, people, tmp_path) -> None:
    alice = people("alice")
    make_project(hub, "lung", "alice", profile={"retain_longitudinal": "modified"})
    project = bulk.project_by_slug(hub, "lung")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(synthetic.make_ct(0, 0, 1, 1, rows=32, columns=32))
    bulk.run_import(hub, project, tmp_path / "in", workers=1)
    with hub.sessions() as s:
        a = s.scalar(select(ImportedInstance))
        patient, study, sop, image = a.patient_pseudonym, a.study_uid, a.sop_instance_uid, a.file_id
    # the patient's pseudonym names a file of the project that is no import: e.g. a segmentation uploaded later
    notes = _put_file(hub, "lung", alice, f"segmentations/{patient}_lungs.nii", b"a mask")
    everything = {"PatientID": {patient}, "StudyInstanceUID": {study}, "SOPInstanceUID": {sop}}

    def drop() -> set[str]:
        with transaction(hub.sessions) as s:
            keystore.drop_unreferenced(s, project, everything)
            return set(s.scalars(select(PseudonymEntry.kind)))

    assert drop() == {"PatientID", "StudyInstanceUID", "SOPInstanceUID"}  # the instance refers to all three
    with transaction(hub.sessions) as s:  # the instance deleted (as retention does: its file, its index row)
        s.get_one(ArchiveFile, image).state = "deleted"
        s.execute(delete(ImportedInstance))
    assert drop() == {"PatientID"}  # the file named after the patient still does
    with transaction(hub.sessions) as s:
        s.get_one(ArchiveFile, notes).state = "deleted"
    assert drop() == set()
