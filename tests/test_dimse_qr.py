"""DIMSE Query/Retrieve on the project's DICOM destination (issue 13) against real dcmtk peers: findscu at
study, series and image levels (wildcards, date ranges, UID lists, counts), getscu and movescu (a real
storescp started here as the registered move destination) receiving the de-identified archived instances
byte for byte; downloads locked → retrieve refused while C-FIND answers; an unregistered move destination
refused; another project's workstation sees nothing; quarantined instances never appear."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from sqlalchemy import select

from imaging_support import archived_bytes, instances, make_project, ultrasound, write_corpus
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.imaging import bulk
from strongroom.imaging.models import ImportedInstance
from strongroom.projects.models import Project, ProjectSetting
from support.live import free_port
from test_imaging_destination import _env, dicom_serve, wait_listening

pytestmark = pytest.mark.skipif(not Path("/usr/bin/findscu").exists(), reason="dcmtk (findscu) not installed")

MODIFIED = {"retain_longitudinal": "modified"}
AET, WS = "LUNG_AE", "WS1"  # the lung project's destination and its registered workstation
OTHER_AET, OTHER_WS = "HEART_AE", "WS2"  # another project's
STORE_AE = "STORE_WS"  # the workstation's own Storage SCP (the move destination)


@pytest.fixture
def pacs(hub, people, tmp_path: Path) -> dict[str, int]:
    """lung: 2 patients x 2 studies x 3 CT instances imported (published), a workstation WS1 allowed from
    loopback; heart: another project with its own destination and workstation WS2, no images."""
    people("alice")
    people("bob")
    ports = {"lung": free_port(), "heart": free_port()}
    make_project(hub, "lung", "alice", profile=MODIFIED, destination={"ae_title": AET, "port": ports["lung"]},
                 senders=[{"ae_title": WS, "address": "127.0.0.1", "query_retrieve": True}])
    make_project(hub, "heart", "bob", profile=MODIFIED, destination={"ae_title": OTHER_AET, "port": ports["heart"]},
                 senders=[{"ae_title": OTHER_WS, "address": "127.0.0.1", "query_retrieve": True}])
    write_corpus(tmp_path / "in", patients=2, studies=2, series=1, instances=3)
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "in", workers=1)
    assert (report.archived, report.quarantined, report.published_version) == (12, 0, 1)
    return ports


@contextmanager
def serving(settings, ports: dict[str, int]) -> Iterator[None]:
    with dicom_serve(settings, ports["lung"]) as proc:
        wait_listening(ports["heart"], proc)
        yield


def open_downloads(hub, slug: str) -> None:
    with transaction(hub.sessions) as s:  # written directly: the setting's API path has its own tests
        project = s.scalar(select(Project).where(Project.slug == slug))
        s.add(ProjectSetting(project_id=project.id, key="download_allowed", value=True, changed_by=project.pi_id))


def _keys(keys: list[str]) -> list[str]:
    return [arg for k in keys for arg in ("-k", k)]


def findscu(port: int, keys: list[str], out: Path, *, aet: str = WS, aec: str = AET, model: str = "-S"
            ) -> tuple[subprocess.CompletedProcess, list[pydicom.Dataset]]:
    out.mkdir(parents=True)
    r = subprocess.run(["findscu", "-v", model, "-aet", aet, "-aec", aec, "-X", "-od", str(out), "127.0.0.1",
                        str(port), *_keys(keys)], capture_output=True, text=True, timeout=120)
    return r, [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def getscu(port: int, keys: list[str], out: Path, *, aet: str = WS, aec: str = AET) -> subprocess.CompletedProcess:
    out.mkdir(parents=True)
    return subprocess.run(["getscu", "-v", "-S", "-aet", aet, "-aec", aec, "-od", str(out), "127.0.0.1", str(port),
                           *_keys(keys)], capture_output=True, text=True, timeout=120)


def movescu(port: int, keys: list[str], destination: str) -> subprocess.CompletedProcess:
    return subprocess.run(["movescu", "-v", "-S", "-aet", WS, "-aec", AET, "-aem", destination, "127.0.0.1",
                           str(port), *_keys(keys)], capture_output=True, text=True, timeout=120)


def body(data: bytes) -> tuple[str, bytes]:
    """A DICOM file's transfer syntax and its data set bytes (after the file meta information, which each
    receiver writes itself)."""
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    return str(meta.TransferSyntaxUID), data[fp.tell():]


def same_instance(received: bytes, archived: bytes) -> bool:
    """getscu writes what it received in dcmtk's own encoding (sequences of undefined length), so its file
    is compared element by element, pixels byte for byte (storescp +B, below, keeps the bytes as sent)."""
    got, expected = pydicom.dcmread(io.BytesIO(received)), pydicom.dcmread(io.BytesIO(archived))
    return got == expected and got.PixelData == expected.PixelData and \
        got.file_meta.TransferSyntaxUID == expected.file_meta.TransferSyntaxUID


def index(hub) -> list[ImportedInstance]:
    return [i for i in instances(hub, "published")]


def events(hub, action: str) -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def uids(results: list[pydicom.Dataset], keyword: str) -> set[str]:
    return {str(getattr(r, keyword)) for r in results}


def test_findscu_levels_matching_and_counts_then_getscu_once_downloads_open(hub, settings, pacs, tmp_path) -> None:
    rows = index(hub)
    studies = {r.study_uid for r in rows}
    first = min(rows, key=lambda r: (r.study_uid, r.instance_number))
    port = pacs["lung"]
    with serving(settings, pacs):
        # STUDY level, universal matching, counts asked for
        r, found = findscu(port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "StudyDate", "PatientID",
                                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy",
                                  "InstitutionName", "RetrieveAETitle"], tmp_path / "f1")
        assert r.returncode == 0, r.stderr
        assert uids(found, "StudyInstanceUID") == studies and len(found) == 4
        for ds in found:
            assert (ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances) == (1, 3)
            assert ds.ModalitiesInStudy == "CT" and ds.QueryRetrieveLevel == "STUDY" and ds.RetrieveAETitle == AET
            assert "InstitutionName" in ds and not ds.InstitutionName  # a key the index lacks: zero length
            assert "PatientName" not in ds  # only the keys asked for
        # wildcard on the patient pseudonym
        patient = first.patient_pseudonym
        r, found = findscu(port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", f"PatientID={patient[:4]}*"],
                           tmp_path / "f2")
        assert uids(found, "StudyInstanceUID") == {x.study_uid for x in rows if x.patient_pseudonym.startswith(
            patient[:4])} and len(found) >= 2
        # date range (one day, and open-ended) and UID list matching
        day = first.study_date
        r, found = findscu(port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", f"StudyDate={day}-{day}"],
                           tmp_path / "f3")
        assert uids(found, "StudyInstanceUID") == {x.study_uid for x in rows if x.study_date == day}
        r, found = findscu(port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                  f"StudyDate=-{max(x.study_date for x in rows)}"], tmp_path / "f4")
        assert len(found) == 4
        two = sorted(studies)[:2]
        r, found = findscu(port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=" + "\\".join(two)], tmp_path / "f5")
        assert uids(found, "StudyInstanceUID") == set(two)
        r, found = findscu(port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID=nobody*"],
                           tmp_path / "f6")
        assert r.returncode == 0 and found == []
        # SERIES level within a study, with its count
        r, found = findscu(port, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={first.study_uid}",
                                  "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances"], tmp_path / "f7")
        assert [(s.SeriesInstanceUID, s.Modality, s.NumberOfSeriesRelatedInstances) for s in found] == \
            [(first.series_uid, "CT", 3)]
        r, found = findscu(port, ["QueryRetrieveLevel=SERIES", "SeriesInstanceUID", "Modality=C?"], tmp_path / "f8")
        assert len(found) == 4
        # IMAGE level within a series
        r, found = findscu(port, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={first.study_uid}",
                                  f"SeriesInstanceUID={first.series_uid}", "SOPInstanceUID", "InstanceNumber",
                                  "Rows"], tmp_path / "f9")
        assert sorted((int(i.InstanceNumber), i.Rows) for i in found) == [(1, 64), (2, 64), (3, 64)]
        assert uids(found, "SOPInstanceUID") == {x.sop_instance_uid for x in rows if x.series_uid == first.series_uid}
        # Patient Root, STUDY level under a patient
        r, found = findscu(port, ["QueryRetrieveLevel=STUDY", f"PatientID={patient}", "StudyInstanceUID"],
                           tmp_path / "f10", model="-P")
        assert uids(found, "StudyInstanceUID") == {x.study_uid for x in rows if x.patient_pseudonym == patient}
        # Patient Root, PATIENT level: one result per patient pseudonym with its counts
        r, found = findscu(port, ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName",
                                  "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances"],
                           tmp_path / "f10b", model="-P")
        assert sorted((str(p.PatientID), p.NumberOfPatientRelatedStudies, p.NumberOfPatientRelatedInstances)
                      for p in found) == sorted((x, 2, 6) for x in {x.patient_pseudonym for x in rows})
        assert all(p.QueryRetrieveLevel == "PATIENT" and "PatientName" in p for p in found)
        # a malformed key value: a failure status, not a crash
        r, found = findscu(port, ["QueryRetrieveLevel=STUDY", "StudyDate=2020"], tmp_path / "f11")
        assert found == [] and re.search(r"0xa900|DataSetDoesNotMatchSOPClass", r.stdout + r.stderr, re.I)

        # Downloads are locked by default: retrieving is refused, searching still answers.
        r = getscu(port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={first.study_uid}"], tmp_path / "g1")
        assert list((tmp_path / "g1").iterdir()) == []
        assert re.search(r"Status: 0x0?124", r.stdout + r.stderr, re.I), r.stdout + r.stderr
        refused = events(hub, "dicom.retrieve.refused")
        assert len(refused) == 1 and refused[0].outcome == "denied" and "locked" in refused[0].details["reason"]
        assert refused[0].details["calling_ae"] == WS
        r, found = findscu(port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], tmp_path / "f12")
        assert len(found) == 4

        open_downloads(hub, "lung")
        r = getscu(port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={first.study_uid}"], tmp_path / "g2")
        assert r.returncode == 0, r.stderr
        received = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in (tmp_path / "g2").iterdir()}
        expected = {x.sop_instance_uid: archived_bytes(hub, x.file_id) for x in rows if x.study_uid == first.study_uid}
        assert received.keys() == expected.keys() and len(received) == 3
        for sop, data in received.items():
            assert same_instance(data, expected[sop]), sop
        # IMAGE level: one instance
        r = getscu(port, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={first.study_uid}",
                          f"SeriesInstanceUID={first.series_uid}", f"SOPInstanceUID={first.sop_instance_uid}"],
                   tmp_path / "g3")
        (only,) = list((tmp_path / "g3").iterdir())
        assert same_instance(only.read_bytes(), archived_bytes(hub, first.file_id))

    # audit: one event per C-FIND request, one per study and retrieve (never per instance)
    assert len(events(hub, "dicom.find")) == 12  # 13 requests, one refused before it ran
    retrieved = events(hub, "dicom.study.retrieved")
    assert [(e.target, e.details["instances"], e.details["operation"]) for e in retrieved] == \
        [(f"study:{first.study_uid}", 3, "get"), (f"study:{first.study_uid}", 1, "get")]
    assert all(e.actor == f"dicom:{WS}@127.0.0.1" for e in retrieved)


def test_movescu_to_the_registered_destination_only(hub, settings, pacs, tmp_path) -> None:
    rows = index(hub)
    first = min(rows, key=lambda r: r.study_uid)
    store_port = free_port()
    cli = [sys.executable, "-m", "strongroom.cli", "dicomweb", "move-destinations"]
    env = _env(settings)
    added = subprocess.run([*cli, "add", STORE_AE, "127.0.0.1", str(store_port), "-p", "lung"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    assert f"{STORE_AE}\t127.0.0.1:{store_port}" in added.stdout
    again = subprocess.run([*cli, "add", STORE_AE, "127.0.0.1", "104", "-p", "lung"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 2 and "registered already" in again.stderr
    bad = subprocess.run([*cli, "add", "WS\\X", "127.0.0.1", "104", "-p", "lung"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2
    listed = subprocess.run([*cli, "list", "-p", "lung"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.stdout.strip() == f"{STORE_AE}\t127.0.0.1:{store_port}\toperator"
    (opened,) = [e for e in events(hub, "project.setting.opened") if e.target == "setting:dicom_move_destinations"]
    assert opened.details["after"] == [{"ae_title": STORE_AE, "host": "127.0.0.1", "port": store_port,
                                        "operator": True}]  # the operator's: may name the hub host
    assert opened.actor.startswith("cli:")

    received = tmp_path / "received"
    received.mkdir()
    store = subprocess.Popen(["storescp", "-aet", STORE_AE, "+B", "-od", str(received), str(store_port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(store_port, store)
        with serving(settings, pacs):
            # downloads locked (the default): a move to the registered destination is refused too
            r = movescu(pacs["lung"], ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={first.study_uid}"], STORE_AE)
            assert re.search(r"Status: 0x0?124", r.stdout + r.stderr), r.stdout + r.stderr
            assert list(received.iterdir()) == []
            open_downloads(hub, "lung")
            r = movescu(pacs["lung"], ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={first.study_uid}",
                                       f"SeriesInstanceUID={first.series_uid}"], STORE_AE)
            assert r.returncode == 0, r.stderr
            files = list(received.iterdir())
            expected = {x.sop_instance_uid: archived_bytes(hub, x.file_id) for x in rows
                        if x.series_uid == first.series_uid}
            got = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in files}
            assert got.keys() == expected.keys() and len(got) == 3
            for sop, data in got.items():
                assert body(data) == body(expected[sop]), sop
            # a destination the project did not register: 0xA801, nothing sent anywhere
            r = movescu(pacs["lung"], ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={first.study_uid}"], "ELSEWHERE")
            assert re.search(r"Refused: MoveDestinationUnknown", r.stdout + r.stderr, re.I), r.stdout + r.stderr
            assert len(list(received.iterdir())) == 3
            # removed from the list: refused from then on
            removed = subprocess.run([*cli, "remove", STORE_AE, "-p", "lung"], env=env, capture_output=True,
                                     text=True, timeout=120)
            assert removed.returncode == 0 and "no move destinations" in removed.stdout
            r = movescu(pacs["lung"], ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={first.study_uid}"], STORE_AE)
            assert re.search(r"Refused: MoveDestinationUnknown", r.stdout + r.stderr, re.I)
            assert len(list(received.iterdir())) == 3
    finally:
        store.terminate()
        store.wait(30)
    refused = events(hub, "dicom.retrieve.refused")
    assert [(e.details["destination"], "locked" in e.details["reason"]) for e in refused] == \
        [(STORE_AE, True), ("ELSEWHERE", False), (STORE_AE, False)]
    (moved,) = events(hub, "dicom.study.retrieved")
    assert moved.details["destination"] == STORE_AE and moved.details["calling_ae"] == WS
    assert moved.details["instances"] == 3 and moved.details["operation"] == "move"


def test_another_projects_workstation_sees_nothing_and_quarantine_never_appears(hub, settings, pacs,
                                                                                tmp_path) -> None:
    (tmp_path / "us" / "").mkdir()
    (tmp_path / "us" / "us.dcm").write_bytes(ultrasound())
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "us", workers=1)
    assert report.quarantined == 1
    (held,) = instances(hub, "quarantined")
    rows = index(hub)
    open_downloads(hub, "lung")
    open_downloads(hub, "heart")
    with serving(settings, pacs):
        # heart's workstation calling lung's destination: the association is rejected
        r, found = findscu(pacs["lung"], ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], tmp_path / "x1",
                           aet=OTHER_WS)
        assert r.returncode != 0 and found == [] and "Rejected" in r.stderr
        # on its own project's destination it sees its own project only: nothing of lung's
        r, found = findscu(pacs["heart"], ["QueryRetrieveLevel=IMAGE", "SOPInstanceUID"], tmp_path / "x2",
                           aet=OTHER_WS, aec=OTHER_AET)
        assert r.returncode == 0 and found == []
        r = getscu(pacs["heart"], ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={rows[0].study_uid}"],
                   tmp_path / "x3", aet=OTHER_WS, aec=OTHER_AET)
        assert r.returncode == 0 and list((tmp_path / "x3").iterdir()) == []
        # lung's own workstation never sees the quarantined instance
        r, found = findscu(pacs["lung"], ["QueryRetrieveLevel=IMAGE", "SOPInstanceUID", "Modality"], tmp_path / "x4")
        assert len(found) == 12 and held.sop_instance_uid not in uids(found, "SOPInstanceUID")
        r, found = findscu(pacs["lung"], ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={held.study_uid}"],
                           tmp_path / "x5")
        assert found == []
        r = getscu(pacs["lung"], ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={held.study_uid}"], tmp_path / "x6")
        assert r.returncode == 0 and list((tmp_path / "x6").iterdir()) == []
    assert events(hub, "dicom.study.retrieved") == []
    assert os.listdir(tmp_path / "x3") == []


def test_move_destinations_through_the_api_are_validated_audited_and_per_project(app, hub, people) -> None:
    from fastapi.testclient import TestClient

    from conftest import bearer, token_for

    alice, bob = people("alice"), people("bob")
    make_project(hub, "lung", "alice")
    make_project(hub, "heart", "bob")
    url = "/api/v1/projects/lung/settings/dicom_move_destinations"
    entry = {"ae_title": "WS1_STORE", "host": "10.0.0.5", "port": 11112}
    with TestClient(app) as c:
        alice_h, bob_h = bearer(token_for(hub, alice)), bearer(token_for(hub, bob))
        listed = {s["key"]: s for s in c.get("/api/v1/projects/lung/settings", headers=alice_h).json()}
        assert listed["dicom_move_destinations"]["locked"] is True and listed["dicom_move_destinations"]["value"] == []
        for bad in ([entry, entry | {"host": "10.0.0.6"}],  # one AE title twice
                    [entry | {"ae_title": "A\\B"}], [entry | {"host": "10.0.0.5; rm -rf"}], [entry | {"port": 0}]):
            r = c.put(url, json={"value": bad}, headers=alice_h)
            assert r.status_code == 422, bad
        r = c.put(url, json={"value": [entry]}, headers=alice_h)
        assert r.status_code == 200 and r.json()["value"] == [entry] and r.json()["locked"] is False
        assert c.put(url, json={"value": []}, headers=bob_h).status_code == 404  # not bob's project
        heart = {s["key"]: s for s in c.get("/api/v1/projects/heart/settings", headers=bob_h).json()}
        assert heart["dicom_move_destinations"]["value"] == []
    (opened,) = [e for e in events(hub, "project.setting.opened") if e.target == "setting:dicom_move_destinations"]
    assert opened.details == {"before": [], "after": [entry]}


def test_a_scanner_stores_but_may_not_query_or_retrieve(hub, settings, pacs, tmp_path) -> None:
    """Deny by default: a sender registered without ``query_retrieve`` (a scanner) may store into the project,
    but its C-FIND and C-GET are refused with 0x0124, its C-MOVE with 0xA801 before any destination is looked
    up, all audited; nothing of the archive leaves."""
    rows = index(hub)
    open_downloads(hub, "lung")
    with transaction(hub.sessions) as s:
        lung = s.scalar(select(Project).where(Project.slug == "lung"))
        row = s.get(ProjectSetting, (lung.id, "dicom_senders"))
        row.value = [*row.value, {"ae_title": "CT01", "address": "127.0.0.1"}]  # no query_retrieve: a scanner
    write_corpus(tmp_path / "new", patients=1, studies=1, series=1, instances=1)
    with serving(settings, pacs):
        stored = subprocess.run(["storescu", "-aet", "CT01", "-aec", AET, "127.0.0.1", str(pacs["lung"]),
                                 *map(str, sorted((tmp_path / "new").rglob("*.dcm")))],
                                capture_output=True, text=True, timeout=120)
        assert stored.returncode == 0, stored.stderr
        r, found = findscu(pacs["lung"], ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], tmp_path / "f", aet="CT01")
        assert found == [] and "0x124" in (r.stdout + r.stderr), r.stderr
        r = getscu(pacs["lung"], ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={rows[0].study_uid}"],
                   tmp_path / "g", aet="CT01")
        assert list((tmp_path / "g").iterdir()) == []
        # C-MOVE is refused before its destination is looked up: the same 0xA801 as for an unknown one, so a
        # scanner learns nothing of the registered destinations
        moved = subprocess.run(["movescu", "-v", "-S", "-aet", "CT01", "-aec", AET, "-aem", "WS1_STORE",
                                "127.0.0.1", str(pacs["lung"]), *_keys(["QueryRetrieveLevel=STUDY",
                                                                        f"StudyInstanceUID={rows[0].study_uid}"])],
                               capture_output=True, text=True, timeout=120)
        assert "MoveDestinationUnknown" in moved.stdout + moved.stderr, moved.stderr
        # the workstation still may
        r, found = findscu(pacs["lung"], ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], tmp_path / "w")
        assert r.returncode == 0 and len(found) >= 4
    refused = events(hub, "dicom.query.refused")
    assert {e.details["operation"] for e in refused} == {"find", "get", "move"}
    assert all(e.details["calling_ae"] == "CT01" for e in refused)
    assert events(hub, "dicom.study.retrieved") == []
