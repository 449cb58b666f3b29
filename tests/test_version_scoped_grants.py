"""A grant to one version of a dataset opens that version only.

alice's imaging project 'lung' publishes its import dataset twice: version 1 (one patient, three instances)
and version 2 (cumulative: those three plus a new patient's instance). A data request's release grants
"exactly that version" (``Entitlement.version``); so does a visa naming ``…/datasets/<id>/versions/<n>``.
Every route that lists or describes a version's contents — the REST file listing, the dataset's API object
and page, the ZIP download, DRS bundles and blobs, QIDO-RS and WADO-RS metadata, the viewer — must then show
version 1 to the holder of a version-1 grant, and nothing of version 2. An entitlement without a version opens
both; one to version 2 opens all of version 2 (its files carried over from version 1 included)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from imaging_support import make_project, write_corpus
from strongroom.access.models import Entitlement
from strongroom.archive.models import ArchiveFile, DatasetFile, DatasetVersion
from strongroom.config import AccessSettings
from strongroom.db import transaction
from strongroom.imaging import bulk, synthetic
from strongroom.imaging.models import ImagingProject, ImportedInstance

DICOM_JSON = {"Accept": "application/dicom+json"}


@pytest.fixture
def settings(settings, issuer):
    return settings.model_copy(update={
        "access": AccessSettings(trusted_visa_issuers=[{"issuer": issuer.url, "jku": issuer.jku}])})


@pytest.fixture
def world(app, hub, people, tmp_path: Path) -> dict:
    """Two released versions of lung's import dataset; rita is entitled to version 1 (as a data request's
    release entitles), uma to the dataset, ed to version 2; vic has no entitlement (visas only)."""
    alice = people("alice")
    rita, uma, ed, vic = (people(name) for name in ("rita", "uma", "ed", "vic"))
    make_project(hub, "lung", "alice", profile={"retain_longitudinal": "modified"})
    write_corpus(tmp_path / "in1", patients=1, studies=1, series=1, instances=3)
    assert bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "in1", workers=1).published_version == 1
    (tmp_path / "in2").mkdir()
    (tmp_path / "in2" / "new.dcm").write_bytes(synthetic.make_ct(9, 0, 1, 1, rows=32, columns=32))
    assert bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "in2", workers=1).published_version == 2
    now = dt.datetime.now(dt.UTC)
    with transaction(hub.sessions) as s:
        dataset = s.scalar(select(ImagingProject.dataset_id))
        for person, version in ((rita, 1), (uma, None), (ed, 2)):
            s.add(Entitlement(user_id=person.user.id, dataset_id=dataset, version=version, starts_at=now,
                              ends_at=now + dt.timedelta(days=9)))
        files = {n: set(s.scalars(select(DatasetFile.file_id).join(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset, DatasetVersion.number == n))) for n in (1, 2)}
        instances = {i.file_id: i for i in s.scalars(select(ImportedInstance))}
        paths = {f.id: f.path for f in s.scalars(select(ArchiveFile).where(ArchiveFile.id.in_(files[2])))}
    new = files[2] - files[1]
    assert len(files[1]) == 3 and len(new) == 1 and files[1] < files[2]  # cumulative
    return {"dataset": dataset, "files": files, "new": new.pop(), "instances": instances, "paths": paths,
            "people": {"alice": alice, "rita": rita, "uma": uma, "ed": ed, "vic": vic}}


def _sops(c: TestClient, headers: dict[str, str]) -> set[str]:
    r = c.get("/dicomweb/projects/lung/instances", headers=headers | DICOM_JSON)
    assert r.status_code == 200, r.text
    return {x["00080018"]["Value"][0] for x in r.json()}


def _metadata(c: TestClient, headers: dict[str, str], inst: ImportedInstance) -> int:
    return c.get(f"/dicomweb/projects/lung/studies/{inst.study_uid}/series/{inst.series_uid}/instances/"
                 f"{inst.sop_instance_uid}/metadata", headers=headers).status_code


def test_a_grant_to_version_1_shows_nothing_of_version_2(app, hub, world) -> None:
    ds, rita = world["dataset"], world["people"]["rita"]
    v1_file = sorted(world["files"][1])[0]
    new, new_inst, old_inst = world["new"], world["instances"][world["new"]], world["instances"][v1_file]
    t = bearer(token_for(hub, rita))
    c = TestClient(app, base_url="http://127.0.0.1:8000")

    # REST: version 2's listing does not exist for her; version 1's does
    assert c.get(f"/api/v1/datasets/{ds}/versions/2/files", headers=t).status_code == 404
    listed = c.get(f"/api/v1/datasets/{ds}/versions/1/files", headers=t)
    assert listed.status_code == 200 and {f["id"] for f in listed.json()["files"]} == world["files"][1]
    # the dataset's API object describes version 1 only (no count, size or marks of version 2)
    got = c.get(f"/api/v1/datasets/{ds}", headers=t)
    assert got.status_code == 200 and [v["number"] for v in got.json()["versions"]] == [1]

    # DRS: the bundle is the latest version she may see; version 2's new file is no object for her
    bundle = c.get(f"/ga4gh/drs/v1/objects/{ds}", headers=t)
    assert bundle.status_code == 200 and bundle.json()["version"] == "1"
    assert {m["id"] for m in bundle.json()["contents"]} == world["files"][1]
    assert c.get(f"/ga4gh/drs/v1/objects/{new}", headers=t).status_code == 404
    assert c.get(f"/ga4gh/drs/v1/objects/{v1_file}", headers=t).status_code == 200
    bulk_answer = c.post("/ga4gh/drs/v1/objects", headers=t, json={"bulk_object_ids": [ds]})
    assert bulk_answer.status_code == 200 and bulk_answer.json()["resolved_drs_object"][0]["version"] == "1"

    # DICOMweb: QIDO omits version 2's instance at every level; its metadata is 404; version 1's is there
    assert _sops(c, t) == {world["instances"][f].sop_instance_uid for f in world["files"][1]}
    studies = c.get("/dicomweb/projects/lung/studies", headers=t | DICOM_JSON).json()
    assert {s["0020000D"]["Value"][0] for s in studies} == {old_inst.study_uid} != {new_inst.study_uid}
    series = c.get("/dicomweb/projects/lung/series", headers=t | DICOM_JSON).json()
    assert new_inst.series_uid not in {s["0020000E"]["Value"][0] for s in series}
    by_uid = c.get(f"/dicomweb/projects/lung/studies/{new_inst.study_uid}/instances", headers=t | DICOM_JSON)
    assert by_uid.status_code == 200 and by_uid.json() == []
    assert _metadata(c, t, new_inst) == 404
    assert _metadata(c, t, old_inst) == 200

    # pages: the dataset page shows version 1 (asked for version 2 too), never version 2's file; ZIP is 404
    w = web_client(app, hub, rita)
    for query in ("", "?version=2"):
        page = w.get(f"/datasets/{ds}{query}")
        assert page.status_code == 200 and world["paths"][new] not in page.text, query
        assert world["paths"][v1_file] in page.text
    assert w.get(f"/datasets/{ds}/versions/2/download.zip").status_code == 404
    assert w.get("/projects/lung/viewer").status_code == 200


def test_an_entitlement_without_a_version_opens_every_version(app, hub, world) -> None:
    ds, t = world["dataset"], bearer(token_for(hub, world["people"]["uma"]))
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    for n in (1, 2):
        listed = c.get(f"/api/v1/datasets/{ds}/versions/{n}/files", headers=t)
        assert listed.status_code == 200 and {f["id"] for f in listed.json()["files"]} == world["files"][n]
    assert [v["number"] for v in c.get(f"/api/v1/datasets/{ds}", headers=t).json()["versions"]] == [1, 2]
    assert c.get(f"/ga4gh/drs/v1/objects/{ds}", headers=t).json()["version"] == "2"
    assert _sops(c, t) == {i.sop_instance_uid for i in world["instances"].values()}
    assert _metadata(c, t, world["instances"][world["new"]]) == 200


def test_a_grant_to_version_2_opens_all_of_version_2_and_not_version_1(app, hub, world) -> None:
    """Version 2 holds version 1's files too: its holder sees them there (QIDO included), but version 1
    itself is not theirs to list."""
    ds, t = world["dataset"], bearer(token_for(hub, world["people"]["ed"]))
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    assert c.get(f"/api/v1/datasets/{ds}/versions/1/files", headers=t).status_code == 404
    listed = c.get(f"/api/v1/datasets/{ds}/versions/2/files", headers=t)
    assert listed.status_code == 200 and {f["id"] for f in listed.json()["files"]} == world["files"][2]
    assert [v["number"] for v in c.get(f"/api/v1/datasets/{ds}", headers=t).json()["versions"]] == [2]
    assert _sops(c, t) == {i.sop_instance_uid for i in world["instances"].values()}


def test_a_visa_naming_version_1_opens_version_1_only(app, hub, settings, issuer, world) -> None:
    ds, person = world["dataset"], world["people"]["vic"]
    url = f"{settings.base_url}/datasets/{ds}"
    t = bearer(token_for(hub, person))
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    one = t | {"X-GA4GH-Passport": issuer.visa(person.user.subject, f"{url}/versions/1")}
    assert c.get(f"/api/v1/datasets/{ds}/versions/2/files", headers=one).status_code == 404
    assert c.get(f"/api/v1/datasets/{ds}/versions/1/files", headers=one).status_code == 200
    assert [v["number"] for v in c.get(f"/api/v1/datasets/{ds}", headers=one).json()["versions"]] == [1]
    assert c.get(f"/ga4gh/drs/v1/objects/{ds}", headers=one).json()["version"] == "1"
    assert _sops(c, one) == {world["instances"][f].sop_instance_uid for f in world["files"][1]}
    # a visa naming the dataset opens both versions; with no visa, nothing at all
    whole = t | {"X-GA4GH-Passport": issuer.visa(person.user.subject, url)}
    assert c.get(f"/api/v1/datasets/{ds}/versions/2/files", headers=whole).status_code == 200
    assert len(_sops(c, whole)) == 4
    assert c.get(f"/api/v1/datasets/{ds}", headers=t).status_code == 404
    assert c.get("/dicomweb/projects/lung/instances", headers=t | DICOM_JSON).status_code == 404


def test_without_mfa_only_a_grant_holder_learns_that_a_file_exists(app, hub, world) -> None:
    """A login without a second factor (an identity provider that did not assert MFA) opens no data. It is told
    "log in with MFA" only where a grant would open the file with one (rita's entitlement); to anyone else an
    existing file of another project answers exactly as a made-up id does, so the answer does not reveal it."""
    from conftest import browser_session
    from strongroom.deps import SESSION_COOKIE

    v1_file = sorted(world["files"][1])[0]
    answers = {}
    for name in ("rita", "vic"):
        c = TestClient(app, base_url="http://127.0.0.1:8000")
        c.cookies.set(SESSION_COOKIE, browser_session(hub, world["people"][name], mfa=False))
        answers[name] = [(r.status_code, "multi-factor" in r.text) for r in (
            c.get(f"/files/{v1_file}/download", follow_redirects=False),
            c.get("/files/SRF-MADEUPID00/download", follow_redirects=False))]
    assert answers["vic"][0] == answers["vic"][1] == (404, False), answers
    assert answers["rita"][0][1] and answers["rita"][1] == (404, False), answers
