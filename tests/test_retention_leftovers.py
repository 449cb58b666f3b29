"""Retention deletes what was derived from a deleted file, not only the file (audit of issue 12): the
airlock outbox copies sealed to a recipient, the DICOMweb index rows QIDO-RS answers from, and the
catalogue's sample images; the certificate lists them and `retention verify` checks the outbox objects too."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from imaging_support import make_project, write_corpus
from strongroom.airlock.models import OutboxItem
from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key
from strongroom.archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from strongroom.audit.models import AuditEvent
from strongroom.catalog import png
from strongroom.catalog.models import CatalogEntry, CatalogImage
from strongroom.db import transaction, utcnow
from strongroom.imaging import bulk
from strongroom.imaging.models import ImagingProject, ImportedInstance
from strongroom.projects.models import Project
from strongroom.retention import clock, deletion
from strongroom.retention.models import VersionClock
from support.seaweed import seaweedfs  # noqa: F401 - session fixture
from test_airlock import _drain, _export, _get, _put_file, _review
from test_airlock import world as airlock_world  # noqa: F401 - fixture
from test_retention import _age, _cli, _h, backend, settings  # noqa: F401 - fixtures
from test_retention import world as retention_world  # noqa: F401 - fixture


def _age_version(hub, dataset_id: str, years: int = 11) -> None:
    with transaction(hub.sessions) as s:
        clock.catch_up(s, hub.settings.retention)
        v = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id))
        c = s.get(VersionClock, v.id)
        c.last_used_at = utcnow() - dt.timedelta(days=366 * years)
        clock.recompute(s, hub.settings.retention, c)


def _approved_deletion(c, dataset_id: str, owner: dict, operator: dict) -> str:
    r = c.post(f"/api/v1/datasets/{dataset_id}/versions/1/deletion", json={"reason": "Ten years unused"},
               headers=owner)
    assert r.status_code == 201, r.text
    assert c.post(f"/api/v1/retention/deletions/{r.json()['id']}/approve", headers=operator).status_code == 200
    return r.json()["id"]


def _outbox_world(w, people):
    """Carl holds an outbox copy (sealed to his key) of stats.txt, the only file of SRD-LUNG version 1."""
    hub, c = w["hub"], w["c"]
    key = c4gh.generate_keypair()
    assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(key.public).decode()},
                  headers=bearer(w["t"]["carl"])).status_code == 201
    fid = _put_file(hub, "lung", w["p"]["sam"], "stats.txt", b"summary statistics\n" * 5000)
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(Project.id).where(Project.slug == "lung"))
        s.add(Dataset(id="SRD-LUNG", project_id=pid, title="Lung", created_by=w["p"]["alice"].user.id))
        s.flush()
        v = DatasetVersion(dataset_id="SRD-LUNG", number=1, state="released", released_at=utcnow(), file_count=1)
        s.add(v)
        s.flush()
        s.add(DatasetFile(version_id=v.id, file_id=fid))
    req = _export(w, "sam", [fid], "Carl at the registry").json()
    _drain(hub)
    _review(w, req["id"], "rita")
    _review(w, req["id"], "ron")
    _drain(hub)
    assert _get(w, req["id"])["state"] == "done"
    with hub.sessions() as s:
        item = s.scalar(select(OutboxItem))
        item_id, key_name = item.id, item.body_key
    assert storage_for(hub).exists(key_name)
    return fid, item_id, key_name, bearer(token_for(hub, w["p"]["alice"])), bearer(token_for(hub, people("ops",
                                                                                                      admin=True)))


def test_the_recipients_outbox_copy_goes_with_the_file(airlock_world, people, tmp_path) -> None:  # noqa: F811
    w, hub, c = airlock_world, airlock_world["hub"], airlock_world["c"]
    fid, item_id, key_name, owner, operator = _outbox_world(w, people)
    with transaction(hub.sessions) as s:  # an export is a use: results built on it stay checkable
        clock.catch_up(s, hub.settings.retention)
        assert s.scalar(select(VersionClock.last_use)) == "airlock export"
    _age_version(hub, "SRD-LUNG")
    d = _approved_deletion(c, "SRD-LUNG", owner, operator)
    carl = bearer(w["t"]["carl"])

    # marked only (as if the run died right after): the copy is already out of reach
    deletion.mark(hub, uuid.UUID(d))
    assert c.get(f"/api/v1/airlock/outbox/{item_id}/content", headers=carl).status_code == 404
    _drain(hub)  # the job carries on to the certificate

    assert c.get(f"/api/v1/retention/deletions/{d}", headers=owner).json()["state"] == "certified"
    assert c.get(f"/api/v1/airlock/outbox/{item_id}/content", headers=carl).status_code == 404
    assert deletion.remaining(storage_for(hub), key_name) == []
    with hub.sessions() as s:
        item = s.get(OutboxItem, item_id)
        assert item.removed_at is not None and item.body_key is None and item.header == b""
    r = c.get(f"/api/v1/retention/deletions/{d}/certificate", headers=owner)
    cert = r.json()["certificate"]
    assert cert["derived"]["outbox"] == [{"item": str(item_id), "request": cert["derived"]["outbox"][0]["request"],
                                          "file": fid, "object": key_name}]
    path = tmp_path / "cert.json"
    path.write_text(r.text)
    ok = _cli(hub, "verify", str(path))
    assert ok.exit_code == 0 and "none of the 2 object(s)" in ok.output, ok.output
    storage_for(hub).put_bytes(key_name, b"restored from a backup")  # verify looks at the outbox copy too
    back = _cli(hub, "verify", str(path))
    assert back.exit_code == 1 and key_name in back.output, back.output


def test_an_outbox_copy_made_after_the_mark_is_caught(airlock_world, people) -> None:  # noqa: F811
    """A transfer that read the file before the mark and committed its outbox row after it: the check finds
    the late copy, the deletion goes back a step and removes it, and the certificate lists it."""
    w, hub, c = airlock_world, airlock_world["hub"], airlock_world["c"]
    fid, item_id, key_name, owner, operator = _outbox_world(w, people)
    _age_version(hub, "SRD-LUNG")
    d = _approved_deletion(c, "SRD-LUNG", owner, operator)
    deletion.mark(hub, uuid.UUID(d))
    deletion.shred(hub, uuid.UUID(d))
    late_key = f"outbox/late/{fid}.0000"
    storage_for(hub).put_bytes(late_key, b"a copy written by a transfer under way")
    with transaction(hub.sessions) as s:
        first = s.get(OutboxItem, item_id)
        late = OutboxItem(request_id=first.request_id, recipient_id=first.recipient_id, source_file_id=fid,
                          path="stats.txt", key_fingerprint=first.key_fingerprint, header=b"sealed to carl",
                          body_key=late_key, body_size=38, plaintext_sha256="0" * 64, stream_sha256="0" * 64)
        s.add(late)
        s.flush()
        late_id = late.id
    _drain(hub)  # the first check fails on it; the retry finishes
    assert c.get(f"/api/v1/retention/deletions/{d}", headers=owner).json()["state"] == "certified"
    assert deletion.remaining(storage_for(hub), late_key) == []
    with hub.sessions() as s:
        row = s.get(OutboxItem, late_id)
        assert row.removed_at is not None and row.header == b"" and row.body_key is None
    cert = c.get(f"/api/v1/retention/deletions/{d}/certificate", headers=owner).json()["certificate"]
    assert {o["object"] for o in cert["derived"]["outbox"]} == {key_name, late_key}
    assert c.get(f"/api/v1/airlock/outbox/{late_id}/content", headers=bearer(w["t"]["carl"])).status_code == 404


def test_qido_forgets_deleted_instances(app, hub, people, tmp_path: Path) -> None:
    ensure_key(hub)
    alice, ops = people("alice"), people("ops", admin=True)
    make_project(hub, "lung", "alice", profile={"retain_longitudinal": "modified"})
    write_corpus(tmp_path / "in", patients=1, studies=1, series=1, instances=2)
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "in", workers=1)
    assert report.published_version == 1
    with hub.sessions() as s:
        ds_id = s.get(ImagingProject, s.scalar(select(ImagingProject.project_id))).dataset_id
        file_ids = list(s.scalars(select(ImportedInstance.file_id)))
    api = TestClient(app)
    ha, ho = bearer(token_for(hub, alice)), bearer(token_for(hub, ops))
    assert len(api.get("/dicomweb/projects/lung/instances", headers=ha).json()) == 2

    # defence in depth: an index row whose archive file is not ready is not answered
    with transaction(hub.sessions) as s:
        s.get(ArchiveFile, file_ids[0]).state = "failed"
    assert len(api.get("/dicomweb/projects/lung/instances", headers=ha).json()) == 1
    with transaction(hub.sessions) as s:
        s.get(ArchiveFile, file_ids[0]).state = "ready"

    _age_version(hub, ds_id)
    d = _approved_deletion(api, ds_id, ha, ho)
    _drain(hub)
    assert api.get(f"/api/v1/retention/deletions/{d}", headers=ha).json()["state"] == "certified"
    with hub.sessions() as s:
        assert s.scalars(select(ImportedInstance)).all() == []
    for level in ("instances", "series", "studies"):
        got = api.get(f"/dicomweb/projects/lung/{level}", headers=ha)
        assert got.status_code in (200, 204) and (got.status_code == 204 or got.json() == []), (level, got.text)
    cert = api.get(f"/api/v1/retention/deletions/{d}/certificate", headers=ha).json()["certificate"]
    assert cert["derived"]["dicomweb_index_rows"] == 2 and len(cert["files"]) == 2


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_sample_images_go_with_the_last_version(retention_world) -> None:  # noqa: F811
    w, hub, c = retention_world, retention_world["hub"], retention_world["c"]
    thumb = png.share_card()
    with transaction(hub.sessions) as s:
        entry = s.scalar(select(CatalogEntry))
        s.add(CatalogImage(entry_id=entry.id, position=1, png=thumb, width=1, height=1, alt="a slice", sha256="x"))
    certs = []
    for n in (1, 2):
        _age(hub, n, 11)
        d = c.post(f"/api/v1/datasets/SRD-LUNG/versions/{n}/deletion", json={"reason": "Unused"},
                   headers=_h(w, "pia")).json()["id"]
        assert c.post(f"/api/v1/retention/deletions/{d}/approve", headers=_h(w, "ops1")).status_code == 200
        _drain(hub)
        certs.append(c.get(f"/api/v1/retention/deletions/{d}/certificate", headers=_h(w, "pia")).json()["certificate"])
        if n == 1:  # version 2 is still released: the images stay
            assert web_client(w["app"], hub, w["p"]["pia"]).get(
                "/datasets/SRD-LUNG/catalog/images/1.png").status_code == 200
    with hub.sessions() as s:
        assert s.scalars(select(CatalogImage)).all() == []
        removed = s.scalar(select(AuditEvent).where(AuditEvent.action == "catalog.image.removed"))
        assert removed.details["images"] == [{"position": 1, "sha256": "x"}]
    assert web_client(w["app"], hub, w["p"]["pia"]).get("/datasets/SRD-LUNG/catalog/images/1.png").status_code == 404
    assert certs[0]["derived"]["catalog_images"] == []
    assert certs[1]["derived"]["catalog_images"] == [{"position": 1, "sha256": "x"}]
