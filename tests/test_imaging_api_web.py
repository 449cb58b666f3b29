"""Imaging over HTTP: profile and destination settings (locked, fresh MFA, audited), import status,
quarantine review, re-identification (explicit right, reason, audited), pages, and 404 outside."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from helpers import form_post
from imaging_support import instances, make_project, ultrasound, write_corpus
from strongroom.audit.models import AuditEvent
from strongroom.imaging import bulk


@pytest.fixture
def world(app, hub, people, tmp_path: Path):
    alice, bob, sam = people("alice"), people("bob"), people("sam")
    make_project(hub, "lung", "alice", profile={"retain_longitudinal": "modified"})
    make_project(hub, "other", "bob")
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    tokens = {p.username: token_for(hub, p) for p in (alice, bob, sam)}
    r = c.post("/api/v1/projects/lung/members", json={"user": "sam", "role": "steward"},
               headers=bearer(tokens["alice"]))
    assert r.status_code == 201, r.text
    write_corpus(tmp_path / "in", patients=1, studies=1, instances=2)
    (tmp_path / "in" / "us.dcm").write_bytes(ultrasound())
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "in", workers=1)
    assert (report.archived, report.quarantined) == (2, 1)
    return {"client": c, "tokens": tokens, "alice": alice, "bob": bob, "sam": sam, "app": app}


def test_status_quarantine_review_and_isolation(world, hub) -> None:
    c, t = world["client"], world["tokens"]
    r = c.get("/api/v1/projects/lung/imaging", headers=bearer(t["sam"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["counts"] == {"archived": 0, "quarantined": 1, "published": 2, "discarded": 0}
    assert body["destination"] is None and body["profile"]["retain_longitudinal"] == "modified"
    imports = c.get("/api/v1/projects/lung/imaging/imports", headers=bearer(t["sam"])).json()
    assert imports[0]["source"] == "bulk" and imports[0]["quarantined"] == 1
    held = c.get("/api/v1/projects/lung/imaging/quarantine", headers=bearer(t["sam"])).json()
    assert len(held) == 1 and held[0]["modality"] == "US" and any("ultrasound" in x for x in held[0]["reasons"])

    # another customer sees nothing of it
    for url in ("/api/v1/projects/lung/imaging", "/api/v1/projects/lung/imaging/quarantine",
                f"/api/v1/projects/lung/imaging/imports/{imports[0]['id']}"):
        assert c.get(url, headers=bearer(t["bob"])).status_code == 404
    assert c.post("/api/v1/projects/lung/imaging/quarantine/review", headers=bearer(t["bob"]),
                  json={"instance_ids": [held[0]["id"]], "decision": "discard"}).status_code == 404
    # bob's own project cannot reach lung's instance either
    r = c.post("/api/v1/projects/other/imaging/quarantine/review", headers=bearer(t["bob"]),
               json={"instance_ids": [held[0]["id"]], "decision": "approve", "note": "looks fine to me"})
    assert r.status_code == 404

    # releasing needs a note; then it is published at once as version 2
    review = {"instance_ids": [held[0]["id"]], "decision": "approve"}
    r = c.post("/api/v1/projects/lung/imaging/quarantine/review", json=review, headers=bearer(t["sam"]))
    assert r.status_code == 422
    r = c.post("/api/v1/projects/lung/imaging/quarantine/review", headers=bearer(t["sam"]),
               json=review | {"note": "checked every frame: no burned-in text"})
    assert r.status_code == 200 and r.json() == {"reviewed": 1, "published_version": 2}
    r = c.post("/api/v1/projects/lung/imaging/quarantine/review", headers=bearer(t["sam"]),
               json=review | {"note": "again"})
    assert r.status_code == 409
    assert len(instances(hub, "published")) == 3
    with hub.sessions() as s:
        event = s.scalar(select(AuditEvent).where(AuditEvent.action == "imaging.quarantine.released"))
    assert event is not None and event.details["note"].startswith("checked")


def test_discard_removes_the_file_from_the_archive(world, hub) -> None:
    c, t = world["client"], world["tokens"]
    held = c.get("/api/v1/projects/lung/imaging/quarantine", headers=bearer(t["alice"])).json()
    file_id = held[0]["file_id"]
    r = c.post("/api/v1/projects/lung/imaging/quarantine/review", headers=bearer(t["alice"]),
               json={"instance_ids": [held[0]["id"]], "decision": "discard", "note": "burned-in name"})
    assert r.status_code == 200 and r.json()["published_version"] is None
    assert c.get(f"/api/v1/files/{file_id}", headers=bearer(t["alice"])).status_code == 404
    assert instances(hub, "discarded")[0].file_id is None


def test_a_discard_deletes_the_body_only_once_it_has_committed(world, hub) -> None:
    """A discard whose transaction rolls back (a later step failed) leaves the held file's row and its body as they
    were, so the image can still be reviewed; the body goes when a discard commits."""
    from strongroom.archive import service as archive
    from strongroom.archive.backend import storage_for
    from strongroom.archive.models import ArchiveFile
    from strongroom.db import transaction
    from strongroom.imaging.models import ImportedInstance

    c, t = world["client"], world["tokens"]
    [held] = c.get("/api/v1/projects/lung/imaging/quarantine", headers=bearer(t["alice"])).json()
    storage = storage_for(hub)
    with hub.sessions() as s:
        body_key = s.get(ArchiveFile, held["file_id"]).body_key
    with pytest.raises(RuntimeError, match="a later step"), transaction(hub.sessions) as s:
        s.scalar(select(ImportedInstance).where(ImportedInstance.file_id == held["file_id"])).file_id = None
        archive.delete_unpublished_file(s, storage, held["file_id"])  # what a discard does per image
        s.flush()
        raise RuntimeError("a later step failed")
    with hub.sessions() as s:
        assert s.get(ArchiveFile, held["file_id"]) is not None
    assert storage.exists(body_key)
    r = c.post("/api/v1/projects/lung/imaging/quarantine/review", headers=bearer(t["alice"]),
               json={"instance_ids": [held["id"]], "decision": "discard", "note": "burned-in name"})
    assert r.status_code == 200, r.text
    assert not storage.exists(body_key)


def test_reidentification_needs_an_explicit_right_a_reason_and_is_audited(world, hub) -> None:
    c, t = world["client"], world["tokens"]
    pseudonym = instances(hub, "published")[0].patient_pseudonym
    ask = {"pseudonym": pseudonym, "reason": "incidental finding: the hospital must contact the patient"}
    # not even the PI holds it by role; the PI cannot hand it to themself
    r = c.post("/api/v1/projects/lung/imaging/reidentify", json=ask, headers=bearer(t["alice"]))
    assert r.status_code == 403 and "reidentify" in r.json()["detail"]
    sam_id = str(world["sam"].user.id)
    r = c.put(f"/api/v1/projects/lung/members/{sam_id}/rights", json={"rights": ["reidentify"]},
              headers=bearer(t["alice"]))
    assert r.status_code == 200, r.text
    assert c.post("/api/v1/projects/lung/imaging/reidentify", json=ask | {"reason": "curious"},
                  headers=bearer(t["sam"])).status_code == 422
    r = c.post("/api/v1/projects/lung/imaging/reidentify", json=ask, headers=bearer(t["sam"]))
    assert r.status_code == 200, r.text
    from strongroom.imaging.synthetic import SyntheticPatient

    assert r.json() == [{"kind": "PatientID", "original": SyntheticPatient(0).patient_id}]
    r = c.post("/api/v1/projects/lung/imaging/reidentify", json=ask | {"pseudonym": "NOPE"}, headers=bearer(t["sam"]))
    assert r.status_code == 404
    # bob (another project) cannot ask, whatever the pseudonym
    assert c.post("/api/v1/projects/lung/imaging/reidentify", json=ask, headers=bearer(t["bob"])).status_code == 404
    with hub.sessions() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "imaging.reidentified")
                                .order_by(AuditEvent.seq)))
    assert [e.outcome for e in events] == ["ok", "not-found"]
    assert events[0].details["reason"].startswith("incidental") and events[0].target == f"pseudonym:{pseudonym}"
    assert all(SyntheticPatient(0).patient_id not in str(e.details) for e in events)  # never the original


def test_pages_profile_and_destination_forms(world, hub) -> None:
    alice = web_client(world["app"], hub, world["alice"])
    page = alice.get("/projects/lung/imaging")
    assert page.status_code == 200
    assert "Quarantine" in page.text and "ultrasound" in page.text and "Modified Dates" in page.text
    batch_id = instances(hub)[0].batch_id
    detail = alice.get(f"/projects/lung/imaging/imports/{batch_id}")
    assert detail.status_code == 200 and "Duplicates" in detail.text
    # the profile: options audited with before/after; a bad pixel rule is refused with a readable error
    r = form_post(alice, "/projects/lung/imaging/profile", {"retain_longitudinal": "full", "clean_descriptors": "on",
                                                            "pixel_rules": "[]"})
    assert r.status_code == 303, r.text
    r = form_post(alice, "/projects/lung/imaging/profile", {"retain_longitudinal": "full", "pixel_rules":
                                                            '[{"name": "x", "rectangles": [[0, 0, 0, 5]]}]'})
    assert r.status_code == 422 and "width" in r.text
    r = form_post(alice, "/projects/lung/imaging/profile", {"pixel_rules": "[not json"})
    assert r.status_code == 422 and "not valid JSON" in r.text
    # the destination: opened, validated, closed
    r = form_post(alice, "/projects/lung/imaging/destination", {"ae_title": "LUNG_AE", "port": "11112"})
    assert r.status_code == 303
    r = form_post(alice, "/projects/lung/imaging/destination", {"ae_title": "BAD\\AE", "port": "80"})
    assert r.status_code == 422
    page = alice.get("/projects/lung/imaging").text
    assert "LUNG_AE" in page and "once de-identified and stored durably" in page  # when the sender gets its status
    hub.settings.imaging.acknowledge = "received"  # a hub that acknowledges on receipt says so where senders are set
    try:
        assert "is <strong>not</strong> refused to the sender" in alice.get("/projects/lung/imaging").text
    finally:
        hub.settings.imaging.acknowledge = "deidentified"
    r = form_post(alice, "/projects/lung/imaging/destination", {"close": "1"})
    assert r.status_code == 303
    with hub.sessions() as s:
        actions = [(e.action, e.target) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert ("project.setting.opened", "setting:deid_profile") in actions
    assert ("project.setting.opened", "setting:dicom_destination") in actions
    assert ("project.setting.locked", "setting:dicom_destination") in actions
    # a member without the import right, and an outsider, get nothing
    bob = web_client(world["app"], hub, world["bob"])
    assert bob.get("/projects/lung/imaging").status_code == 404
    assert form_post(bob, "/projects/lung/imaging/destination", {"ae_title": "X", "port": "2000"}).status_code == 404


def test_settings_api_needs_fresh_mfa(world, hub, people) -> None:
    c = world["client"]
    # a token minted long ago is not a fresh second factor
    import datetime as dt

    from strongroom.db import transaction
    from strongroom.identity.models import ApiToken

    stale = token_for(hub, world["alice"])
    with transaction(hub.sessions) as s:
        for tok in s.scalars(select(ApiToken)):
            tok.created_at = tok.created_at - dt.timedelta(days=1)
    r = c.put("/api/v1/projects/lung/settings/dicom_destination", json={"value": {"ae_title": "A", "port": 4242}},
              headers=bearer(stale))
    assert r.status_code in (401, 403) and "multi-factor" in r.json()["detail"]


def test_catalogue_entry_of_the_import_dataset_carries_measured_facts(world, hub, tmp_path: Path) -> None:
    c, t = world["client"], world["tokens"]
    dataset_id = c.get("/api/v1/projects/lung/imaging", headers=bearer(t["alice"])).json()["dataset_id"]
    r = c.put(f"/api/v1/datasets/{dataset_id}/catalog", headers=bearer(t["alice"]),
              json={"slug": "lung-imports", "title": "Lung CT imports"})
    assert r.status_code == 200, r.text
    entry = r.json()
    # filled in from what was imported (the quarantined ultrasound is not published, so not counted)
    assert (entry["subjects"], entry["studies"], entry["series"], entry["instances"]) == (1, 1, 1, 2)
    assert entry["modalities"] == ["CT"] and entry["manufacturers"] == ["GE MEDICAL SYSTEMS"]
    assert entry["organs"] == ["chest"]
    # a later import updates the counts with the new version
    write_corpus(tmp_path / "more", patients=3, studies=2, instances=1)
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "more", workers=1)
    assert report.published_version == 2
    entry = c.get(f"/api/v1/datasets/{dataset_id}/catalog", headers=bearer(t["alice"])).json()
    assert (entry["subjects"], entry["studies"], entry["instances"]) == (3, 6, 7)


def test_action_log_per_instance_without_values(world, hub) -> None:
    c, t = world["client"], world["tokens"]
    inst = instances(hub, "published")[0]
    r = c.get(f"/api/v1/projects/lung/imaging/instances/{inst.id}/actions", headers=bearer(t["sam"]))
    assert r.status_code == 200, r.text
    actions = r.json()["actions"]
    by_keyword = {a["keyword"]: a for a in actions}
    assert by_keyword["PatientName"]["action"] in ("Z", "D") and by_keyword["PatientID"]["action"] == "D"
    assert by_keyword["StudyDate"]["action"] == "C" and "E.1-1" in by_keyword["StudyDate"]["rule"]
    from strongroom.imaging.synthetic import SyntheticPatient

    assert SyntheticPatient(0).patient_id not in r.text and SyntheticPatient(0).name not in r.text
    from strongroom.imaging.models import ActionLog

    with hub.sessions() as s:  # instances of one series share one stored log
        logs = len(list(s.scalars(select(ActionLog))))
    assert logs < len(instances(hub))
    assert c.get(f"/api/v1/projects/other/imaging/instances/{inst.id}/actions",
                 headers=bearer(t["bob"])).status_code == 404
    page = web_client(world["app"], hub, world["alice"]).get(f"/projects/lung/imaging/instances/{inst.id}")
    assert page.status_code == 200 and "PatientID" in page.text


def _with_name_in_descriptors(instance: int) -> bytes:
    """A CT whose kept descriptors carry the patient's name and personal identity number."""
    import io

    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from strongroom.imaging import synthetic

    ds = pydicom.dcmread(io.BytesIO(synthetic.make_ct(0, 0, 0, instance, rows=16, columns=16)))
    family = str(ds.PatientName).split("^")[0]
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "T-D3000", "SRT", f"Chest {family}"
    ds.AnatomicRegionSequence = Sequence([region])
    ds.WindowCenterWidthExplanation = f"lung window for {family}"
    ds.add_new(0x00080108, "LT", "pnr 19121212-1212")  # Extended Code Meaning, a kept LT
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_allow_list_profile_is_selectable_per_project_and_cleans_kept_descriptors(world, hub,
                                                                                  tmp_path: Path) -> None:
    import io

    import pydicom

    from imaging_support import archived_bytes
    from strongroom.imaging.synthetic import SyntheticPatient

    c, t = world["client"], world["tokens"]
    family = SyntheticPatient(0).name.split("^")[0]
    lung = bulk.project_by_slug(hub, "lung")
    # the standard profile keeps these descriptors: the verification holds the instance back
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "named.dcm").write_bytes(_with_name_in_descriptors(11))
    report = bulk.run_import(hub, lung, tmp_path / "a", workers=1)
    assert report.quarantined == 1, report.as_dict()
    assert "leak: patient name component in (0008,2218)[0]>(0008,0104)" in report.reasons
    assert "leak: personnummer in (0008,0108)" in report.reasons
    # the project chooses the allow-list mode through the settings API (fresh MFA, audited)
    r = c.put("/api/v1/projects/lung/settings/deid_profile", headers=bearer(t["alice"]),
              json={"value": {"retain_longitudinal": "modified", "text_allow_list": True}})
    assert r.status_code == 200, r.text
    assert r.json()["value"]["text_allow_list"] is True
    listed = {x["key"]: x for x in c.get("/api/v1/projects/lung/settings", headers=bearer(t["alice"])).json()}
    assert listed["deid_profile"]["value"]["text_allow_list"] is True
    assert c.put("/api/v1/projects/lung/settings/deid_profile", headers=bearer(t["bob"]),
                 json={"value": {"text_allow_list": True}}).status_code == 404  # bob is outside the project
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "named.dcm").write_bytes(_with_name_in_descriptors(12))
    report = bulk.run_import(hub, lung, tmp_path / "b", workers=1)
    assert (report.archived, report.quarantined) == (1, 0), report.as_dict()
    inst = max(instances(hub, "published"), key=lambda i: i.id)
    out = archived_bytes(hub, inst.file_id)
    assert family.encode() not in out and b"19121212" not in out
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.Manufacturer == "GE MEDICAL SYSTEMS"  # on the keep-list
    assert ds.AnatomicRegionSequence[0].CodeValue == "T-D3000"  # codes stay, their meaning is scrubbed
    assert "ExtendedCodeMeaning" not in ds  # long free text outside the keep-list is removed
    assert "113105" in {str(i.CodeValue) for i in ds.DeidentificationMethodCodeSequence}
    with hub.sessions() as s:
        changes = [e.details for e in s.scalars(select(AuditEvent).where(AuditEvent.target == "setting:deid_profile"))]
    assert any("text_allow_list" in str(d) for d in changes)
    # the Imaging page offers it and its form sets it
    alice = web_client(world["app"], hub, world["alice"])
    assert 'name="text_allow_list" checked' in alice.get("/projects/lung/imaging").text
    r = form_post(alice, "/projects/lung/imaging/profile", {"retain_longitudinal": "remove", "pixel_rules": "[]"})
    assert r.status_code == 303, r.text
    assert 'name="text_allow_list" checked' not in alice.get("/projects/lung/imaging").text
    r = form_post(alice, "/projects/lung/imaging/profile", {"retain_longitudinal": "remove", "pixel_rules": "[]",
                                                            "text_allow_list": "on"})
    assert r.status_code == 303, r.text
    assert 'name="text_allow_list" checked' in alice.get("/projects/lung/imaging").text
