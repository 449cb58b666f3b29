"""Quarantine holds (issue 9, point 2): a quarantined instance's archive file does not exist for any
ordinary read — file metadata, download, DRS, web download, dataset listings, shares, entitlements —
whoever asks (a member without the import right, the PI, an approved applicant, a share recipient, a
platform admin). Reviewers (import right) read it in-platform only, and each look is audited. Release
is the only way out; a discarded instance's body is deleted.

Fails on the old code: the quarantined file downloaded through the ordinary routes for every member.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from imaging_support import make_project, ultrasound, write_corpus
from strongroom.access.models import AccessPolicy, Entitlement
from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.models import ArchiveFile, DatasetShare
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.imaging import bulk
from strongroom.projects.models import Project, ProjectSetting

READERS = ("mia", "alice", "rita", "bob", "root")  # member without import, PI, applicant, share recipient, admin
MADE_UP = "SRF-0000000000000000"


@pytest.fixture
def world(app, hub, people, tmp_path: Path):
    persons = {name: people(name, admin=name == "root") for name in ("alice", "sam", "mia", "rita", "bob", "root")}
    make_project(hub, "lung", "alice")
    make_project(hub, "other", "bob")
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    tokens = {name: token_for(hub, p) for name, p in persons.items()}
    for user, role in (("sam", "steward"), ("mia", "member")):
        r = c.post("/api/v1/projects/lung/members", json={"user": user, "role": role},
                   headers=bearer(tokens["alice"]))
        assert r.status_code == 201, r.text
    write_corpus(tmp_path / "in", patients=1, studies=1, instances=2)
    (tmp_path / "in" / "us.dcm").write_bytes(ultrasound())
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "in", workers=1)
    assert (report.archived, report.quarantined) == (2, 1)
    held = c.get("/api/v1/projects/lung/imaging/quarantine", headers=bearer(tokens["sam"])).json()
    dataset = c.get("/api/v1/projects/lung/imaging", headers=bearer(tokens["alice"])).json()["dataset_id"]
    now = dt.datetime.now(dt.UTC)
    with transaction(hub.sessions) as s:
        lung = s.scalar(select(Project).where(Project.slug == "lung"))
        other = s.scalar(select(Project).where(Project.slug == "other"))
        # every other door is open, so only the hold can be what keeps the file in
        s.add(ProjectSetting(project_id=lung.id, key="download_allowed", value=True, changed_by=lung.pi_id))
        s.add(ProjectSetting(project_id=other.id, key="download_allowed", value=True, changed_by=other.pi_id))
        s.add(DatasetShare(dataset_id=dataset, project_id=other.id, shared_by=lung.pi_id))
        s.add(Entitlement(user_id=persons["rita"].user.id, dataset_id=dataset, version=None,
                          starts_at=now - dt.timedelta(days=1), ends_at=now + dt.timedelta(days=30)))
        s.add(AccessPolicy(dataset_id=dataset, form_name="imaging-request", terms_name="standard-dua",
                           applicant_download=True))
    for name in tokens:
        key = c4gh.generate_keypair()
        assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(
            key.public).decode()}, headers=bearer(tokens[name])).status_code == 201
    return {"c": c, "t": tokens, "people": persons, "file": held[0]["file_id"], "instance": held[0]["id"],
            "dataset": dataset, "app": app, "hub": hub}


def _api_reads(c: TestClient, token: str, file_id: str) -> dict[str, tuple[int, object]]:
    h = bearer(token)
    out = {}
    for name, url in (("metadata", f"/api/v1/files/{file_id}"), ("download", f"/api/v1/files/{file_id}/content"),
                      ("plaintext", f"/api/v1/files/{file_id}/plaintext"),
                      ("drs object", f"/ga4gh/drs/v1/objects/{file_id}"),
                      ("drs access", f"/ga4gh/drs/v1/objects/{file_id}/access/crypt4gh")):
        r = c.get(url, headers=h)
        out[name] = (r.status_code, r.json() if r.headers.get("content-type", "").endswith("json") else r.content)
    bulk_r = c.post("/ga4gh/drs/v1/objects", json={"bulk_object_ids": [file_id]}, headers=h).json()
    out["drs bulk"] = (bulk_r["summary"]["resolved"], bulk_r["unresolved_drs_objects"])
    return out


def _listed(c: TestClient, token: str, dataset: str) -> set[str]:
    """Every file id the caller sees in the dataset's versions and its DRS bundle."""
    h, ids = bearer(token), set()
    ds = c.get(f"/api/v1/datasets/{dataset}", headers=h)
    if ds.status_code != 200:
        return ids
    for v in ds.json()["versions"]:
        page = c.get(f"/api/v1/datasets/{dataset}/versions/{v['number']}/files", headers=h).json()
        ids |= {f["id"] for f in page["files"]}
    bundle = c.get(f"/ga4gh/drs/v1/objects/{dataset}", headers=h).json()
    return ids | {x["id"] for x in bundle.get("contents", [])}


def test_a_quarantined_file_is_absent_for_every_reader_on_every_route(world) -> None:
    c, t, f = world["c"], world["t"], world["file"]
    for who in READERS:
        held, made_up = _api_reads(c, t[who], f), _api_reads(c, t[who], MADE_UP)
        for route, (status, body) in held.items():
            if route == "drs bulk":
                assert status == 0 and body[0]["object_ids"] == [f], (who, route)
                continue
            if route == "plaintext" and who == "alice":
                continue  # the PI holds the import right: the in-platform review read (next test)
            # exactly a made-up id: same status, same body
            assert (status, body) == made_up[route], (who, route, status, body)
            assert status == 404, (who, route)
        web = web_client(world["app"], world["hub"], world["people"][who])
        assert web.get(f"/files/{f}/download").status_code == 404, who
        assert f not in _listed(c, t[who], world["dataset"]), who
    # the reviewer (import right) may not download it either, nor get it over DRS
    reads = _api_reads(c, t["sam"], f)
    assert {k: v[0] for k, v in reads.items() if k not in ("plaintext", "drs bulk")} == dict.fromkeys(
        ("metadata", "download", "drs object", "drs access"), 404)
    # the project's file list shows it to reviewers only
    listing = {who: {x["id"] for x in c.get("/api/v1/projects/lung/files", headers=bearer(t[who])).json()}
               for who in ("mia", "sam")}
    assert f not in listing["mia"] and f in listing["sam"]
    # nobody can put it in a dataset (and so share, grant or publish it)
    r = c.post("/api/v1/projects/lung/datasets", json={"title": "sneaky", "files": [f]}, headers=bearer(t["alice"]))
    assert r.status_code == 422 and "quarantine" in r.json()["detail"]


def test_reviewers_read_in_platform_only_and_each_look_is_audited(world) -> None:
    c, t, f, hub = world["c"], world["t"], world["file"], world["hub"]
    # the review read is its own basis (archive.authz.plaintext_basis): locked downloads do not stop it
    assert c.put("/api/v1/projects/lung/settings/download_allowed", json={"value": False},
                 headers=bearer(t["alice"])).status_code == 200
    for who in ("sam", "alice"):  # steward and PI hold the import right
        r = c.get(f"/api/v1/files/{f}/plaintext", headers=bearer(t[who]))
        assert r.status_code == 200 and r.content[128:132] == b"DICM", who
    assert c.get(f"/api/v1/files/{f}/plaintext", headers=bearer(t["mia"])).status_code == 404
    with hub.sessions() as s:
        viewed = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "imaging.quarantine.viewed")))
        downloaded = s.scalar(select(AuditEvent).where(AuditEvent.action == "archive.file.downloaded",
                                                       AuditEvent.target == f"file:{f}"))
    assert len(viewed) == 2 and {e.target for e in viewed} == {f"file:{f}"}
    assert {e.details["mode"] for e in viewed} == {"in-platform"} and downloaded is None


def test_release_is_the_only_way_out(world) -> None:
    c, t, f = world["c"], world["t"], world["file"]
    r = c.post("/api/v1/projects/lung/imaging/quarantine/review", headers=bearer(t["sam"]),
               json={"instance_ids": [world["instance"]], "decision": "approve", "note": "checked every frame"})
    assert r.status_code == 200, r.text
    # readable as normal: members, the PI, the entitled applicant, the share recipient
    for who in ("mia", "alice", "rita", "bob"):
        assert c.get(f"/api/v1/files/{f}", headers=bearer(t[who])).status_code == 200, who
        assert c.get(f"/api/v1/files/{f}/content", headers=bearer(t[who])).status_code == 200, who
        assert c.get(f"/ga4gh/drs/v1/objects/{f}", headers=bearer(t[who])).status_code == 200, who
        assert f in _listed(c, t[who], world["dataset"]), who
    assert c.get(f"/api/v1/files/{f}/plaintext", headers=bearer(t["mia"])).status_code == 200
    # a platform admin is no member: as for any project's file
    assert c.get(f"/api/v1/files/{f}", headers=bearer(t["root"])).status_code == 404
    with world["hub"].sessions() as s:
        assert s.get(ArchiveFile, f).hold is None


def test_a_discarded_file_is_gone_for_everyone(world) -> None:
    c, t, f, hub = world["c"], world["t"], world["file"], world["hub"]
    with hub.sessions() as s:
        body_key = s.get(ArchiveFile, f).body_key
    assert storage_for(hub).exists(body_key)
    r = c.post("/api/v1/projects/lung/imaging/quarantine/review", headers=bearer(t["sam"]),
               json={"instance_ids": [world["instance"]], "decision": "discard", "note": "burned-in name"})
    assert r.status_code == 200, r.text
    assert not storage_for(hub).exists(body_key)
    for who in (*READERS, "sam"):
        reads = _api_reads(c, t[who], f)
        assert {k: v[0] for k, v in reads.items() if k != "drs bulk"} == dict.fromkeys(
            ("metadata", "download", "plaintext", "drs object", "drs access"), 404), who
