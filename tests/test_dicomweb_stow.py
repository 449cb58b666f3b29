"""STOW-RS (issue 13): instances stored over DICOMweb with dicomweb-client against a live hub go through the
DICOM destination's pipeline — de-identified, verified, quarantined or archived and indexed — and read back
through QIDO/WADO; the same file held by verification via STOW is held via C-STORE; wrong study (A900),
garbage (C000), the quota and the body limit leave nothing behind; outsiders get 404."""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from requests.exceptions import HTTPError
from sqlalchemy import func, select, update

from conftest import bearer, token_for, web_client
from imaging_support import archived_bytes, instances, make_project, ultrasound
from strongroom.access.models import Entitlement
from strongroom.archive.models import ArchiveFile
from strongroom.audit.models import AuditEvent
from strongroom.config import DicomwebSettings
from strongroom.db import transaction
from strongroom.deps import SESSION_COOKIE, csrf_token_for
from strongroom.dicomweb import multipart
from strongroom.imaging import pipeline, service, synthetic
from strongroom.imaging.models import ImagingProject, ImportBatch
from strongroom.imaging.settings import to_engine
from strongroom.projects.models import Membership, Project, ProjectSetting
from support.live import free_port, serving

MODIFIED = {"retain_longitudinal": "modified"}
STOW_LIMIT = 6 * 1024 * 1024  # small for the test (default 2 GiB); [security] max_body_bytes stays 1 MiB
DICOM_PARTS = 'multipart/related; type="application/dicom"; boundary=b0und4ry'


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"dicomweb": DicomwebSettings(stow_max_bytes=STOW_LIMIT)})


@pytest.fixture
def world(hub, people):
    """lung (alice's, with a DICOM destination for the C-STORE comparison); heart (bob's)."""
    persons = {name: people(name) for name in ("alice", "bob", "rita", "mo")}
    make_project(hub, "lung", "alice", profile=MODIFIED)
    make_project(hub, "heart", "bob", profile=MODIFIED)
    with transaction(hub.sessions) as s:
        lung = s.scalar(select(Project.id).where(Project.slug == "lung"))
        # mo: a plain member (read-data, write-data) without the import right
        s.add(Membership(project_id=lung, user_id=persons["mo"].user.id, role="member", delegated_rights=[]))
    return persons


def client_for(url: str, token: str, slug: str = "lung", **kw) -> DICOMwebClient:
    return DICOMwebClient(url=f"{url}/dicomweb/projects/{slug}", headers=bearer(token), **kw)


def cts(patient: int = 0, study: int = 0, n: int = 3, series: int = 1, **kw) -> list[bytes]:
    return [synthetic.make_ct(patient, study, series, i, rows=64, columns=64, **kw) for i in range(1, n + 1)]


def datasets(blobs: list[bytes]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(io.BytesIO(b)) for b in blobs]


def body(parts: list[bytes], boundary: str = "b0und4ry") -> bytes:
    out = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                   for p in parts)
    return out + b"--" + boundary.encode() + b"--\r\n"


def items(answer: pydicom.Dataset | dict, keyword: str) -> list:
    ds = answer if isinstance(answer, pydicom.Dataset) else pydicom.Dataset.from_json(answer)
    return list(getattr(ds, keyword, []))


def stow_events(hub) -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "dicomweb.stow").order_by(AuditEvent.seq)))


def objects(settings) -> set[Path]:
    root = settings.var_dir / "objects"
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def open_downloads(url: str, token: str) -> None:
    r = httpx.put(f"{url}/api/v1/projects/lung/settings/download_allowed", json={"value": True}, headers=bearer(token))
    assert r.status_code == 200, r.text


def test_store_generated_ct_and_pydicom_files_then_read_back(app, hub, world, settings) -> None:
    """The generated CT corpus and pydicom's test files stored with dicomweb-client: QIDO finds the stored
    ones with the expected counts, WADO returns bytes identical to the pipeline's de-identified output, the
    answer names only de-identified UIDs, one audit event per request."""
    from pydicom.data import get_testdata_file

    alice = token_for(hub, world["alice"])
    ct_a, ct_b = cts(0, 0, 3), cts(1, 0, 2)
    names = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm", "rtdose.dcm", "liver_1frame.dcm",
             "examples_ybr_color.dcm"]  # CT, MR, OT, NM, RTDOSE, SEG and an ultrasound
    files = {name: Path(get_testdata_file(name)).read_bytes() for name in names}
    originals = [pydicom.dcmread(io.BytesIO(b)) for b in (*ct_a, *ct_b, *files.values())]
    original_uids = {str(d.SOPInstanceUID) for d in originals} | {str(d.StudyInstanceUID) for d in originals}
    with serving(app, free_port()) as url:
        dw = client_for(url, alice)
        first = dw.store_instances(datasets(ct_a + ct_b))
        stored = items(first, "ReferencedSOPSequence")
        assert len(stored) == 5 and not items(first, "FailedSOPSequence")
        assert all("WarningReason" not in i for i in stored)
        # chunked transfer (no Content-Length): the body is parsed as it streams
        dw_chunked = client_for(url, alice, chunk_size=4096)
        second = dw_chunked.store_instances(datasets(list(files.values())))
        stored2, failed2 = items(second, "ReferencedSOPSequence"), items(second, "FailedSOPSequence")
        assert len(stored2) + len(failed2) == len(files)
        answers = [*stored, *stored2, *failed2]
        # never an original identifier in an answer; every UID the one the hub serves
        assert not {str(getattr(i, "ReferencedSOPInstanceUID", "")) for i in answers} & original_uids
        assert not any(u in str(first.to_json_dict()) + str(second.to_json_dict()) for u in original_uids)
        rows = {i.sop_instance_uid: i for i in instances(hub)}
        for item in [*stored, *stored2]:
            inst = rows[item.ReferencedSOPInstanceUID]
            assert inst.state in ("published", "quarantined")
            if inst.state == "quarantined":
                assert item.WarningReason == 0xB000 and "RetrieveURL" not in item
            else:
                assert "WarningReason" not in item
                # (dicomweb-client sends a Host header without the port: the URL is built from what it sent)
                assert item.RetrieveURL.startswith("http://127.0.0.1") and item.RetrieveURL.endswith(
                    f"/dicomweb/projects/lung/studies/{inst.study_uid}/series/{inst.series_uid}/instances/"
                    f"{inst.sop_instance_uid}")
        visible = [i for i in rows.values() if i.state == "published"]
        # the CTs, CT_small, MR_small, rtdose and the SEG are released at once; the secondary capture, the NM and
        # the ultrasound are held for review (burned-in text risk), as the DICOM destination holds them
        assert len(visible) == 5 + 4 and not failed2
        assert sorted(i.modality for i in rows.values() if i.state == "quarantined") == ["NM", "OT", "US"]
        # QIDO: counts
        assert len(dw.search_for_instances()) == len(visible)
        assert len(dw.search_for_studies()) == len({i.study_uid for i in visible})
        study_a = rows[stored[0].ReferencedSOPInstanceUID].study_uid
        (found,) = dw.search_for_studies(search_filters={"StudyInstanceUID": study_a})
        assert found["00201208"]["Value"] == [3] and found["00080061"]["Value"] == ["CT"]
        # WADO: bytes identical to the pipeline's de-identified output of the original file
        open_downloads(url, alice)
        with hub.sessions() as s:
            lung = s.scalar(select(Project.id).where(Project.slug == "lung"))
        secret = service.load_context(hub, lung).secret
        profile = to_engine(MODIFIED)
        scratch = settings.var_dir / "scratch"
        scratch.mkdir()
        for original in [ct_a[0], files["CT_small.dcm"], files["MR_small.dcm"], files["liver_1frame.dcm"]]:
            (scratch / "in.dcm").write_bytes(original)
            summary = pipeline.deidentify_stage(str(scratch / "in.dcm"), str(scratch / "out.dcm"), profile, secret)
            inst = rows[summary["sop_instance_uid"]]
            got = httpx.get(f"{url}/dicomweb/projects/lung/studies/{inst.study_uid}/series/{inst.series_uid}/"
                            f"instances/{inst.sop_instance_uid}",
                            headers=bearer(alice) | {"Accept": "application/dicom"})
            assert got.status_code == 200
            assert got.content == (scratch / "out.dcm").read_bytes() == archived_bytes(hub, inst.file_id)
            assert dw.retrieve_instance(inst.study_uid, inst.series_uid, inst.sop_instance_uid).SOPInstanceUID == \
                inst.sop_instance_uid
        # the same instances again: stored (duplicates change nothing), the answer the same
        again = dw.store_instances(datasets(ct_a))
        assert sorted(i.ReferencedSOPInstanceUID for i in items(again, "ReferencedSOPSequence")) == sorted(
            i.ReferencedSOPInstanceUID for i in stored[:3])
    assert len(instances(hub)) == len(rows)
    # the spool holds nothing afterwards: plaintext lives only as long as its part is processed
    spool = settings.var_dir / "dicom-spool" / "stow"
    assert not any(p.is_file() for p in spool.rglob("*"))
    # one event per request: counts and the study pseudonyms; no batch opened/closed pair for STOW
    events = stow_events(hub)
    assert len(events) == 3
    assert events[0].details["stored"] == 5 and events[0].details["failed"] == 0
    assert sorted(events[0].details["studies"]) == sorted({rows[i.ReferencedSOPInstanceUID].study_uid for i in stored})
    assert events[0].actor_id == world["alice"].user.id
    with hub.sessions() as s:
        batches = list(s.scalars(select(ImportBatch).order_by(ImportBatch.created_at)))
        opened = s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action.in_(("imaging.batch.opened", "imaging.batch.closed"))))
    assert [(b.source, b.state) for b in batches] == [("stow", "closed")] * 3 and opened == 0
    assert (batches[0].received, batches[0].archived) == (5, 5) and batches[2].duplicates == 3


def test_held_by_verification_as_via_the_dicom_port(app, hub, world, settings, tmp_path: Path) -> None:
    """An ultrasound (burned-in annotation risk) is stored with a warning and held in quarantine, invisible to
    QIDO until released — exactly what a C-STORE of the same file to a DICOM destination does."""
    if not Path("/usr/bin/storescu").exists():
        pytest.skip("dcmtk (storescu) not installed")
    from test_imaging_destination import dicom_serve, storescu, wait_for

    us = ultrasound()
    port = free_port()
    with transaction(hub.sessions) as s:  # heart gets a destination: the same file through the DICOM port
        heart = s.scalar(select(Project.id).where(Project.slug == "heart"))
        s.add(ProjectSetting(project_id=heart, key="dicom_destination", value={"ae_title": "HEART_AE", "port": port},
                             changed_by=world["bob"].user.id))
        s.add(ProjectSetting(project_id=heart, key="dicom_senders",
                             value=[{"ae_title": "SCANNER1", "address": "127.0.0.1"}], changed_by=world["bob"].user.id))
    alice = token_for(hub, world["alice"])
    with serving(app, free_port()) as url:
        dw = client_for(url, alice)
        answer = dw.store_instances(datasets([us, *cts(2, 0, 1)]))
        stored = items(answer, "ReferencedSOPSequence")
        assert len(stored) == 2 and not items(answer, "FailedSOPSequence")
        held = [i for i in stored if "WarningReason" in i]
        assert len(held) == 1 and held[0].WarningReason == 0xB000 and "RetrieveURL" not in held[0]
        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=body([us]),
                       headers=bearer(alice) | {"Content-Type": DICOM_PARTS})
        assert r.status_code == 202 and "quarantine" in r.headers["warning"]
        assert r.headers["content-type"] == "application/dicom+json"
        assert len(dw.search_for_instances()) == 1  # the CT only
        assert dw.search_for_instances(search_filters={"SOPInstanceUID": held[0].ReferencedSOPInstanceUID}) == []
    (via_stow,) = [i for i in instances(hub, "quarantined")]
    (tmp_path / "us.dcm").write_bytes(us)
    with dicom_serve(settings, port):
        sent = storescu(port, [tmp_path / "us.dcm"], aec="HEART_AE")
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(instances(hub, "quarantined")) == 2, what="the C-STORE to be archived")
    via_port = next(i for i in instances(hub, "quarantined") if i.id != via_stow.id)
    assert via_stow.reasons == via_port.reasons and any("ultrasound" in r for r in via_stow.reasons)
    assert (via_stow.modality, via_stow.sop_class_uid, via_stow.action_log_sha256) == (
        via_port.modality, via_port.sop_class_uid, via_port.action_log_sha256)
    # released, it is served like any other
    with serving(app, free_port()) as url:
        r = httpx.post(f"{url}/api/v1/projects/lung/imaging/quarantine/review", headers=bearer(alice), json={
            "instance_ids": [via_stow.id], "decision": "approve", "note": "checked: no burned-in text"})
        assert r.status_code == 200, r.text
        assert len(client_for(url, alice).search_for_instances()) == 2


def test_wrong_study_garbage_and_bad_bodies(app, hub, world) -> None:
    alice = token_for(hub, world["alice"])
    a, other = cts(3, 0, 2), cts(3, 1, 1)
    study_a = str(pydicom.dcmread(io.BytesIO(a[0])).StudyInstanceUID)
    with serving(app, free_port()) as url:
        dw = client_for(url, alice)
        answer = dw.store_instances(datasets(a + other), study_instance_uid=study_a)
        stored, failed = items(answer, "ReferencedSOPSequence"), items(answer, "FailedSOPSequence")
        assert len(stored) == 2 and [f.FailureReason for f in failed] == [0xA900]
        # the failed one is named by its de-identified UID, never the original
        assert failed[0].ReferencedSOPInstanceUID != str(pydicom.dcmread(io.BytesIO(other[0])).SOPInstanceUID)
        assert failed[0].ReferencedSOPInstanceUID not in {i.sop_instance_uid for i in instances(hub)}
        # the study as the hub serves it (its de-identified UID) is accepted too
        pseudo = instances(hub)[0].study_uid
        more = dw.store_instances(datasets(cts(3, 0, 3)[2:]), study_instance_uid=pseudo)
        assert len(items(more, "ReferencedSOPSequence")) == 1
        # every instance of another study: 409, nothing stored
        with pytest.raises(HTTPError) as err:
            dw.store_instances(datasets(other), study_instance_uid=study_a)
        assert err.value.response.status_code == 409
        assert [f.FailureReason for f in items(err.value.response.json(), "FailedSOPSequence")] == [0xA900]
        before = len(instances(hub))
        h = bearer(alice) | {"Content-Type": DICOM_PARTS}
        # a garbage part: C000, nothing stored; beside a good one: 202
        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=body([os.urandom(3000)]), headers=h)
        assert r.status_code == 409 and r.headers["content-type"] == "application/dicom+json"
        assert [f["00081197"]["Value"] for f in r.json()["00081198"]["Value"]] == [[0xC000]]
        assert "00081155" not in r.json()["00081198"]["Value"][0]
        assert len(instances(hub)) == before
        truncated = cts(4, 0, 1)[0][:700]
        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=body([truncated, cts(4, 0, 1)[0]]), headers=h)
        assert r.status_code == 202
        assert [f["00081197"]["Value"] for f in r.json()["00081198"]["Value"]] == [[0xC000]]
        assert len(r.json()["00081199"]["Value"]) == 1 and len(instances(hub)) == before + 1
        # malformed requests: clear errors, nothing stored
        for content, ctype, status in (
                (body([a[0]])[:-20], DICOM_PARTS, 400),  # no closing boundary
                (b"", DICOM_PARTS, 400),
                (body([]), DICOM_PARTS, 400),  # no instance
                (body([a[0]]), "multipart/related; type=\"application/dicom\"", 400),  # no boundary
                (body([a[0]]), "multipart/related; type=\"application/dicom+json\"; boundary=b0und4ry", 415),
                (a[0], "application/dicom", 415)):
            r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=content,
                           headers=bearer(alice) | {"Content-Type": ctype})
            assert r.status_code == status, (ctype, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        assert len(instances(hub)) == before + 1
        # a part whose own type is not application/dicom fails alone
        mixed = body([a[0]]).replace(b"Content-Type: application/dicom", b"Content-Type: text/plain")
        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=mixed, headers=h)
        assert r.status_code == 409
    with hub.sessions() as s:
        assert all(b.state == "closed" for b in s.scalars(select(ImportBatch)))
    assert not any(p.is_file() for p in (hub.settings.var_dir / "dicom-spool" / "stow").rglob("*"))


def test_who_may_store(app, hub, world) -> None:
    """Another project's PI, an approved applicant of the published dataset and a member without the import
    right may not store; the page session with its CSRF header may."""
    alice = token_for(hub, world["alice"])
    with serving(app, free_port()) as url:
        client_for(url, alice).store_instances(datasets(cts(5, 0, 1)))  # publishes lung's dataset
        with transaction(hub.sessions) as s:
            dataset = s.scalar(select(ImagingProject.dataset_id).where(ImagingProject.dataset_id.is_not(None)))
            now = dt.datetime.now(dt.UTC)
            s.add(Entitlement(user_id=world["rita"].user.id, dataset_id=dataset, version=None, starts_at=now,
                              ends_at=now + dt.timedelta(days=9)))
        before = len(instances(hub))
        bob, rita, mo = (token_for(hub, world[n]) for n in ("bob", "rita", "mo"))
        assert len(client_for(url, rita).search_for_instances()) == 1  # rita reads lung, and may not write
        study = instances(hub)[0].study_uid
        for path in ("/studies", f"/studies/{study}"):
            for token in (bob, rita):
                r = httpx.post(f"{url}/dicomweb/projects/lung{path}", content=body(cts(6, 0, 1)),
                               headers=bearer(token) | {"Content-Type": DICOM_PARTS})
                assert r.status_code == 404, (path, r.text)
            r = httpx.post(f"{url}/dicomweb/projects/lung{path}", content=body(cts(6, 0, 1)),
                           headers={"Content-Type": DICOM_PARTS})
            assert r.status_code == 401  # no credentials: as every DICOMweb route
            r = httpx.post(f"{url}/dicomweb/projects/lung{path}", content=body(cts(6, 0, 1)),
                           headers=bearer(mo) | {"Content-Type": DICOM_PARTS})
            assert r.status_code == 403 and "import" in r.json()["detail"]
            r = httpx.post(f"{url}/dicomweb/projects/nowhere{path}", content=body(cts(6, 0, 1)),
                           headers=bearer(alice) | {"Content-Type": DICOM_PARTS})
            assert r.status_code == 404
        read_only = token_for(hub, world["alice"], scopes=["data:read"])
        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=body(cts(6, 0, 1)),
                       headers=bearer(read_only) | {"Content-Type": DICOM_PARTS})
        assert r.status_code == 403
        assert len(instances(hub)) == before
    # the hub's own pages: session cookie plus X-CSRF-Token
    web = web_client(app, hub, world["alice"])
    csrf = csrf_token_for(hub.secret, session_cookie=web.cookies.get(SESSION_COOKIE))
    r = web.post("/dicomweb/projects/lung/studies", content=body(cts(6, 0, 1)), headers={"Content-Type": DICOM_PARTS})
    assert r.status_code == 403
    r = web.post("/dicomweb/projects/lung/studies", content=body(cts(6, 0, 1)),
                 headers={"Content-Type": DICOM_PARTS, "X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert len(instances(hub)) == before + 1


def _quota_left(hub, nbytes: int) -> None:
    with transaction(hub.sessions) as s:
        s.execute(update(Project).where(Project.slug == "lung").values(
            quota_bytes=Project.used_bytes + Project.reserved_bytes + nbytes))


def test_over_quota_stores_nothing(app, hub, world, settings) -> None:
    alice = token_for(hub, world["alice"])
    big = [synthetic.make_ct(7, 0, 1, i, rows=128, columns=128) for i in range(1, 5)]  # ~33 KiB each
    with serving(app, free_port()) as url:
        client_for(url, alice).store_instances(datasets(cts(7, 1, 1)))
        with hub.sessions() as s:
            used = s.scalar(select(Project.used_bytes).where(Project.slug == "lung"))
        stored_objects, before = objects(settings), len(instances(hub))
        _quota_left(hub, 80_000)  # room for two of the four
        # declared size over the quota: refused before the body is read
        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=body(big),
                       headers=bearer(alice) | {"Content-Type": DICOM_PARTS})
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "quota-exceeded" and "quota" in r.json()["detail"]

        # streamed without a Content-Length: found while reading; every instance A700, nothing kept
        def chunks() -> Iterator[bytes]:
            data = body(big)
            for n in range(0, len(data), 5000):
                yield data[n:n + 5000]

        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=chunks(),
                       headers=bearer(alice) | {"Content-Type": DICOM_PARTS})
        assert r.status_code == 409 and r.headers["content-type"] == "application/dicom+json"
        assert "quota" in r.headers["warning"]
        assert [f["00081197"]["Value"] for f in r.json()["00081198"]["Value"]] == [[0xA700]] * 4
        # the database's check at the write (the quota shrank after the request began): nothing kept either
        fits = big[:1]
        _quota_left(hub, 40_000)
        from strongroom.dicomweb import store

        real_begin = store.begin

        def begin_then_shrink(*args, **kw):
            stow = real_begin(*args, **kw)
            _quota_left(hub, 100)
            return stow

        store.begin = begin_then_shrink
        try:
            r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=body(fits),
                           headers=bearer(alice) | {"Content-Type": DICOM_PARTS})
        finally:
            store.begin = real_begin
        assert r.status_code == 409 and [f["00081197"]["Value"] for f in r.json()["00081198"]["Value"]] == [[0xA700]]
    assert len(instances(hub)) == before and objects(settings) == stored_objects
    with hub.sessions() as s:
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        assert (project.used_bytes, project.reserved_bytes) == (used, 0)
        assert s.scalar(select(func.count()).select_from(ArchiveFile)) == before
    refused = [e for e in stow_events(hub) if e.details.get("refused")]
    assert len(refused) == 2 and all(e.outcome == "failed" and e.details["stored"] == 0 for e in refused)


def test_stow_bodies_may_be_larger_other_routes_keep_their_limit(app, hub, world, settings) -> None:
    """[dicomweb] stow_max_bytes applies to the two STOW routes only (POST); everything else keeps
    [security] max_body_bytes (1 MiB) and answers 413."""
    alice = token_for(hub, world["alice"])
    size = 2 * 1024 * 1024  # over the general limit, under the STOW one
    pixels = bytes(range(256)) * (size // 256)
    large = synthetic.make_ct(8, 0, 1, 1, rows=1024, columns=1024, pixel_bytes=pixels)
    assert len(large) > 1024 * 1024
    h = bearer(alice) | {"Content-Type": DICOM_PARTS}
    with serving(app, free_port()) as url:
        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=body([large]), headers=h, timeout=120)
        assert r.status_code == 200, r.text
        study = instances(hub)[0].study_uid
        filler = b"x" * size
        for method, path in (("POST", "/api/v1/projects/lung/datasets"),
                             ("POST", f"/dicomweb/projects/lung/studies/{study}/series"),
                             ("PUT", "/dicomweb/projects/lung/studies"),
                             ("POST", "/api/v1/projects/lung/imaging/publish")):
            r = httpx.request(method, url + path, content=filler, headers=h)
            assert r.status_code == 413, (method, path, r.status_code)
        # over the STOW limit: 413, declared or streamed, and nothing stored
        too_big = body([large, large, large])
        assert len(too_big) > STOW_LIMIT
        before = len(instances(hub))
        r = httpx.post(f"{url}/dicomweb/projects/lung/studies/{study}", content=too_big, headers=h)
        assert r.status_code == 413

        def chunks() -> Iterator[bytes]:
            for n in range(0, len(too_big), 65536):
                yield too_big[n:n + 65536]

        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=chunks(), headers=h, timeout=120)
        assert r.status_code == 413
        assert len(instances(hub)) == before
    assert not any(p.is_file() for p in (settings.var_dir / "dicom-spool" / "stow").rglob("*"))
    with hub.sessions() as s:
        assert all(b.state == "closed" for b in s.scalars(select(ImportBatch)))


def test_the_openapi_document_describes_both_stow_routes(app) -> None:
    paths = app.openapi()["paths"]
    for path in ("/dicomweb/projects/{slug}/studies", "/dicomweb/projects/{slug}/studies/{study}"):
        op = paths[path]["post"]
        assert "multipart/related" in op["requestBody"]["content"]
        assert {"200", "202", "409", "413", "415"} <= set(op["responses"])
        assert "application/dicom+json" in op["responses"]["202"]["content"]
        assert op["security"]
    study = next(p for p in paths["/dicomweb/projects/{slug}/studies/{study}"]["post"]["parameters"]
                 if p["name"] == "study")
    assert study["schema"]["pattern"] == r"^[0-9.]{1,64}$"


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 100_000])
def test_the_multipart_reader_in_any_chunking(step: int) -> None:
    parts = [b"", b"\r\n--b0und4r", os.urandom(5000), b"x--b0und4ry\r\n" * 3]  # never CRLF + the delimiter
    data = b"preamble\r\n" + body(parts) + b"epilogue"
    reader = multipart.MultipartReader("b0und4ry")
    got: list[bytes] = []
    for n in range(0, len(data), step):
        for event in reader.feed(data[n:n + step]):
            if isinstance(event, multipart.Part):
                assert event.content_type == "application/dicom"
                got.append(b"")
            elif isinstance(event, bytes):
                got[-1] += event
    reader.close()
    assert got == parts
    cut = multipart.MultipartReader("b0und4ry")
    list(cut.feed(body(parts)[:-10]))
    with pytest.raises(multipart.MultipartError):
        cut.close()
    assert multipart.boundary_of('multipart/related; type="application/dicom"; boundary="a b"') == "a b"
    assert multipart.boundary_of("multipart/related; boundary=") is None
