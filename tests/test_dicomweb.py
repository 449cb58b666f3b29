"""DICOMweb per project (issue 13): a generated CT corpus imported, then read back through dicomweb-client
against a live hub — QIDO-RS counts and matching, WADO-RS instances byte-identical to the de-identified
archived plaintext, frames, metadata, rendered PNG — plus the index back-fill, the per-study aggregated
audit, and nothing at all for another project's user, on every DICOMweb route."""

from __future__ import annotations

import datetime as dt
import io
import re
import zlib
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from conftest import bearer, token_for
from imaging_support import archived_bytes, instances, make_project, write_corpus
from strongroom.access.models import Entitlement
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.dicomweb import backfill
from strongroom.imaging import bulk, dicomindex, synthetic
from strongroom.imaging.models import ImagingProject, ImportedInstance
from support.live import free_port, serving

MODIFIED = {"retain_longitudinal": "modified"}


@pytest.fixture
def corpus(hub, people, tmp_path: Path):
    """lung (alice's): 2 patients x 2 studies x 3 instances of 64x64, plus one 256x256 study (its pixels
    span three crypt4gh segments); heart (bob's): empty."""
    persons = {name: people(name) for name in ("alice", "bob", "rita")}
    make_project(hub, "lung", "alice", profile=MODIFIED)
    make_project(hub, "heart", "bob", profile=MODIFIED)
    write_corpus(tmp_path / "in", patients=2, studies=2, series=1, instances=3)
    (tmp_path / "in" / "big.dcm").write_bytes(synthetic.make_ct(5, 0, 1, 1, rows=256, columns=256))
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "in", workers=1)
    assert (report.archived, report.quarantined, report.published_version) == (13, 0, 1)
    return {"people": persons, "instances": {i.sop_instance_uid: i for i in instances(hub, "published")}}


def client_for(url: str, token: str, slug: str = "lung") -> DICOMwebClient:
    return DICOMwebClient(url=f"{url}/dicomweb/projects/{slug}", headers=bearer(token))


def test_qido_and_wado_through_dicomweb_client(app, hub, corpus) -> None:
    with hub.sessions() as s:
        rows = list(s.scalars(select(ImportedInstance).order_by(ImportedInstance.id)))
    alice_token = token_for(hub, corpus["people"]["alice"])
    assert all(r.index_version == dicomindex.INDEX_VERSION and r.pixel_offset for r in rows)  # indexed at archive
    studies = {r.study_uid for r in rows}
    big = next(r for r in rows if r.rows == 256)
    rows = sorted((r for r in rows if r is not big), key=lambda r: (r.series_uid, r.instance_number))
    with serving(app, free_port()) as url:
        dw = client_for(url, alice_token)
        inst = rows[0]
        # Downloads are locked by default: the instance's bytes (instances, frames) do not leave the platform,
        # while searches, metadata and rendered views (viewing) answer; the PI opens downloads.
        where = f"{url}/dicomweb/projects/lung/studies/{inst.study_uid}/series/{inst.series_uid}/instances/" \
                f"{inst.sop_instance_uid}"
        for leaves in ("", "/frames/1"):
            assert httpx.get(where + leaves, headers=bearer(alice_token)).status_code == 403, leaves
        for viewing in ("/metadata", "/rendered", "/thumbnail"):
            assert httpx.get(where + viewing, headers=bearer(alice_token)).status_code == 200, viewing
        assert httpx.put(f"{url}/api/v1/projects/lung/settings/download_allowed", json={"value": True},
                         headers=bearer(alice_token)).status_code == 200
        found = dw.search_for_studies()
        assert len(found) == len(studies) == 5
        counts = {s["0020000D"]["Value"][0]: (s["00201206"]["Value"][0], s["00201208"]["Value"][0],
                                              s["00080061"]["Value"]) for s in found}
        assert counts[big.study_uid] == (1, 1, ["CT"])
        assert sorted(n for _, n, _ in counts.values()) == [1, 3, 3, 3, 3]
        # matching: UID lists, wildcards, date ranges, paging, includefield
        two = sorted(studies)[:2]
        assert len(dw.search_for_studies(search_filters={"StudyInstanceUID": ",".join(two)})) == 2
        patient = rows[0].patient_pseudonym
        assert len(dw.search_for_studies(search_filters={"PatientID": patient})) == 2
        assert len(dw.search_for_studies(search_filters={"PatientID": patient[:3] + "*"})) >= 2
        assert dw.search_for_studies(search_filters={"PatientID": "nobody*"}) == []
        dates = sorted({r.study_date for r in (*rows, big)})
        assert len(dw.search_for_studies(search_filters={"StudyDate": f"{dates[0]}-{dates[0]}"})) == \
            len({r.study_uid for r in (*rows, big) if r.study_date == dates[0]})
        assert len(dw.search_for_studies(search_filters={"StudyDate": f"-{dates[-1]}"})) == 5
        assert len(dw.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})) == 5
        assert len(dw.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == 0
        page1, page2 = dw.search_for_studies(limit=3), dw.search_for_studies(limit=3, offset=3)
        assert len(page1) == 3 and len(page2) == 2
        assert not {s["0020000D"]["Value"][0] for s in page1} & {s["0020000D"]["Value"][0] for s in page2}
        with_fields = dw.search_for_studies(limit=1, fields=["all"])
        assert "00080060" not in with_fields[0] and "0020000D" in with_fields[0]
        series = dw.search_for_series(study_instance_uid=rows[0].study_uid)
        assert len(series) == 1 and series[0]["00201209"]["Value"] == [3]
        assert len(dw.search_for_series()) == 5
        assert len(dw.search_for_instances()) == 13 == len(dw.search_for_instances(limit=5)) + len(
            dw.search_for_instances(offset=5))
        assert len(dw.search_for_instances(search_filters={"SeriesInstanceUID": rows[0].series_uid})) == 3
        listed = dw.search_for_instances(study_instance_uid=rows[0].study_uid, series_instance_uid=rows[0].series_uid)
        assert [i["00200013"]["Value"][0] for i in listed] == [1, 2, 3]  # in instance number order
        assert listed[0]["0020000D"]["Value"] == [rows[0].study_uid]
        assert listed[0]["00280010"]["Value"] == [64] and listed[0]["00083002"]["Value"] == ["1.2.840.10008.1.2.1"]
        r = httpx.get(f"{url}/dicomweb/projects/lung/studies", params={"NoSuchThing": "x"}, headers=bearer(alice_token))
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")

        # WADO-RS: the instance, byte for byte the de-identified plaintext in the archive
        for inst in (rows[0], big):
            expected = archived_bytes(hub, inst.file_id)
            ds = dw.retrieve_instance(inst.study_uid, inst.series_uid, inst.sop_instance_uid)
            assert ds.SOPInstanceUID == inst.sop_instance_uid and ds.PixelData == \
                pydicom.dcmread(io.BytesIO(expected)).PixelData
            single = httpx.get(f"{url}/dicomweb/projects/lung/studies/{inst.study_uid}/series/{inst.series_uid}"
                               f"/instances/{inst.sop_instance_uid}",
                               headers=bearer(alice_token) | {"Accept": "application/dicom"})
            assert single.status_code == 200 and single.content == expected
            etag = single.headers["etag"]
            part = httpx.get(single.url, headers=bearer(alice_token) | {"Accept": "application/dicom",
                                                                         "Range": "bytes=100-70000", "If-Range": etag})
            assert part.status_code == 206 and part.content == expected[100:70001]
            same = httpx.get(single.url, headers=bearer(alice_token) | {"Accept": "application/dicom",
                                                                         "If-None-Match": etag})
            assert same.status_code == 304
            # frames: only the segments holding the pixels are decrypted
            (frame,) = dw.retrieve_instance_frames(inst.study_uid, inst.series_uid, inst.sop_instance_uid, [1])
            assert frame == pydicom.dcmread(io.BytesIO(expected)).PixelData
            # metadata: the header, pixels as a bulk data reference
            meta = dw.retrieve_instance_metadata(inst.study_uid, inst.series_uid, inst.sop_instance_uid)
            assert meta["00080018"]["Value"] == [inst.sop_instance_uid]
            assert "BulkDataURI" in meta["7FE00010"] and "InlineBinary" not in meta["7FE00010"]
            header = pydicom.Dataset.from_json(meta)
            assert header.PatientID == inst.patient_pseudonym and header.Rows == inst.rows
            # rendered: a PNG of the frame's size
            png = dw.retrieve_instance_rendered(inst.study_uid, inst.series_uid, inst.sop_instance_uid,
                                                media_types=("image/png",))
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and _png_size(png) == (inst.columns, inst.rows)
            _png_pixels(png)  # decodes
        series_files = dw.retrieve_series(rows[0].study_uid, rows[0].series_uid)
        assert sorted(d.SOPInstanceUID for d in series_files) == sorted(
            r.sop_instance_uid for r in rows if r.series_uid == rows[0].series_uid)
        assert len(dw.retrieve_study(big.study_uid)) == 1
        assert len(dw.retrieve_series_metadata(rows[0].study_uid, rows[0].series_uid)) == 3
        thumb = httpx.get(f"{url}/dicomweb/projects/lung/studies/{big.study_uid}/thumbnail",
                          headers=bearer(alice_token))
        assert thumb.status_code == 200 and max(_png_size(thumb.content)) <= 128
        assert httpx.get(f"{url}/dicomweb/projects/lung/studies/{big.study_uid}/series/{big.series_uid}/instances/"
                         f"{big.sop_instance_uid}/frames/2", headers=bearer(alice_token)).status_code == 404
        # no CORS: a foreign origin is never allowed to read
        r = httpx.get(f"{url}/dicomweb/projects/lung/studies", headers=bearer(alice_token) | {
            "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers

    # one audit event per study and caller in the window, however many reads; the pictures rendered while
    # downloads were locked are counted one by one (tests/test_dicomweb_rendered_disclosure.py)
    with hub.sessions() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "dicomweb.study.read")))
    per_study: dict[str, int] = {}
    for e in events:
        if "first" in e.details:
            per_study[e.target] = per_study.get(e.target, 0) + 1
    assert per_study == {f"study:{rows[0].study_uid}": 1, f"study:{big.study_uid}": 1}
    assert sorted(e.details["read"] for e in events if "first" not in e.details) == ["rendered", "thumbnail"]


def test_outsiders_get_nothing_on_every_route(app, hub, corpus) -> None:
    """bob (another project's PI, MFA, all scopes) and rita (no grant yet) get 404 or an empty answer on
    every DICOMweb route of the OpenAPI document; rita with an entitlement to the published dataset reads."""
    inst = next(iter(corpus["instances"].values()))
    values = {"slug": "lung", "study": inst.study_uid, "series": inst.series_uid, "sop": inst.sop_instance_uid,
              "frames": "1", "frame": "1"}
    routes = [path for path in app.openapi()["paths"] if path.startswith("/dicomweb/")]
    assert len(routes) == 18
    bob, rita = token_for(hub, corpus["people"]["bob"]), token_for(hub, corpus["people"]["rita"])
    with serving(app, free_port()) as url:
        for token in (bob, rita):
            for path in routes:
                r = httpx.get(url + re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path), headers=bearer(token))
                assert r.status_code == 404, (path, r.status_code)
        # without credentials: 401
        assert httpx.get(f"{url}/dicomweb/projects/lung/studies").status_code == 401
        # an approved applicant of the published dataset reads it (through the archive's grant providers)
        with transaction(hub.sessions) as s:
            dataset = s.scalar(select(ImagingProject.dataset_id))
            now = dt.datetime.now(dt.UTC)
            s.add(Entitlement(user_id=corpus["people"]["rita"].user.id, dataset_id=dataset, version=None, starts_at=now,
                              ends_at=now + dt.timedelta(days=9)))
        dw = client_for(url, rita)
        assert len(dw.search_for_instances()) == 13 == len(dw.search_for_instances(limit=5)) + len(
            dw.search_for_instances(offset=5))
        # the dataset is for in-platform use only (its access policy's default): she views, the bytes stay
        where = f"{url}/dicomweb/projects/lung/studies/{inst.study_uid}/series/{inst.series_uid}/instances/" \
                f"{inst.sop_instance_uid}"
        assert httpx.get(where + "/rendered", headers=bearer(rita)).status_code == 200
        series = f"{url}/dicomweb/projects/lung/studies/{inst.study_uid}/series/{inst.series_uid}"
        for leaves in (where, where + "/frames/1", series, series.rsplit("/series/", 1)[0]):
            r = httpx.get(leaves, headers=bearer(rita))
            assert r.status_code == 403 and "in-platform use only" in r.text, leaves
        alice = token_for(hub, corpus["people"]["alice"])
        assert httpx.put(f"{url}/api/v1/datasets/{dataset}/access-policy", json={"applicant_download": True},
                         headers=bearer(alice)).status_code == 204
        ds = dw.retrieve_instance(inst.study_uid, inst.series_uid, inst.sop_instance_uid)
        assert ds.SOPInstanceUID == inst.sop_instance_uid
        # bob's own project has nothing: empty, not an error
        assert client_for(url, bob, "heart").search_for_studies() == []


def test_backfill_indexes_what_was_archived_before(app, hub, corpus) -> None:
    """Rows archived before the index existed are indexed by the resumable back-fill, and then match."""
    with transaction(hub.sessions) as s:
        s.execute(update(ImportedInstance).values(index_version=0, pixel_offset=None, frames=[], rows=None,
                                                  accession_number="", study_time=""))
    assert backfill.pending(hub) == 13
    first = backfill.run(hub, batch=5, limit=5)
    assert (first.indexed, first.failed, first.remaining) == (5, 0, 8)
    rest = backfill.run(hub, batch=5)
    assert (rest.indexed, rest.failed, rest.remaining) == (8, 0, 0)
    with hub.sessions() as s:
        rows = list(s.scalars(select(ImportedInstance)))
    for inst in rows:
        plain = archived_bytes(hub, inst.file_id)
        assert inst.frames == dicomindex.index_stream(io.BytesIO(plain))["frames"]
        assert plain[inst.pixel_offset:][:4] == b"\xe0\x7f\x10\x00"  # the Pixel Data tag
        assert inst.rows in (64, 256) and inst.study_time


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _png_pixels(data: bytes) -> bytes:
    pos, idat = 8, b""
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    return zlib.decompress(idat)


def test_the_hubs_own_pages_read_with_their_session_and_csrf_header(app, hub, corpus) -> None:
    """The viewer's way in: alice's session cookie plus the page's X-CSRF-Token; deny by default without it."""
    from conftest import web_client
    from strongroom.deps import SESSION_COOKIE, csrf_token_for

    inst = next(iter(corpus["instances"].values()))
    web = web_client(app, hub, corpus["people"]["alice"])
    csrf = csrf_token_for(hub.secret, session_cookie=web.cookies.get(SESSION_COOKIE))
    assert web.get("/dicomweb/projects/lung/studies").status_code == 403
    assert web.get("/dicomweb/projects/lung/studies", headers={"X-CSRF-Token": "x" * 64}).status_code == 403
    found = web.get("/dicomweb/projects/lung/studies", headers={"X-CSRF-Token": csrf})
    assert found.status_code == 200 and len(found.json()) == 5
    assert found.headers["content-type"] == "application/dicom+json"
    thumb = web.get(f"/dicomweb/projects/lung/studies/{inst.study_uid}/series/{inst.series_uid}/instances/"
                    f"{inst.sop_instance_uid}/thumbnail", headers={"X-CSRF-Token": csrf})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"


def test_bad_queries_and_unacceptable_types_are_clear_errors(app, hub, corpus) -> None:
    from fastapi.testclient import TestClient

    inst = next(iter(corpus["instances"].values()))
    api = TestClient(app)
    h = bearer(token_for(hub, corpus["people"]["alice"]))
    opened = api.put("/api/v1/projects/lung/settings/download_allowed", json={"value": True}, headers=h)
    assert opened.status_code == 200
    base = "/dicomweb/projects/lung"
    for params in ({"limit": "0"}, {"limit": "x"}, {"StudyDate": "2020-01-01"}, {"StudyDate": "-"},
                   {"StudyInstanceUID": "1.2.abc"}, {"SeriesNumber": "two"}, {"offset": "-1"},
                   {"fuzzymatching": "maybe"}, {"NumberOfStudyRelatedSeries": "3"}):
        r = api.get(f"{base}/studies", params=params, headers=h)
        assert r.status_code == 400 and r.json()["detail"], params
    assert len(api.get(f"{base}/studies", params={"00080020": f"{inst.study_date}"}, headers=h).json()) >= 1
    assert len(api.get(f"{base}/studies", params={"StudyDate": ""}, headers=h).json()) == 5  # universal
    # an attribute the index does not hold is left out of the answer, not refused (viewers ask for many)
    assert "00100030" not in api.get(f"{base}/studies", params={"includefield": "00100030,PatientBirthDate"},
                                     headers=h).json()[0]
    fuzzy = api.get(f"{base}/studies", params={"fuzzymatching": "true"}, headers=h)
    assert fuzzy.status_code == 200 and fuzzy.headers["warning"].startswith("299")
    url = f"{base}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/{inst.sop_instance_uid}"
    assert api.get(url, headers=h | {"Accept": "text/html"}).status_code == 406
    assert api.get(url, headers=h | {"Accept": 'multipart/related; type="application/dicom"; '
                                               "transfer-syntax=1.2.840.10008.1.2.4.50"}).status_code == 406
    assert api.get(f"{url}/frames/1", headers=h | {"Accept": 'multipart/related; type="image/jpeg"'}).status_code \
        == 406
    assert api.get(f"{url}/rendered", headers=h | {"Accept": "image/jpeg"}).status_code == 406
    assert api.get(f"{url}/rendered", params={"window": "40"}, headers=h).status_code == 400
    windowed = api.get(f"{url}/rendered", params={"window": "40,400"}, headers=h)
    assert windowed.status_code == 200 and windowed.content[:4] == b"\x89PNG"
    assert api.get(f"{url}/frames/0", headers=h).status_code == 422  # frames count from 1 (the path schema says so)
    assert api.get(f"{url}", headers=h | {"Accept": "application/dicom", "Range": "bytes=999999999-"}
                   ).status_code == 416


def test_a_dicomweb_read_moves_the_retention_clock(app, hub, corpus) -> None:
    """DICOMweb reads are uses of the data (issue 12's last-use clock): the per-study audit event moves the
    clock of every live version holding the study, and only those."""
    from strongroom.retention import clock
    from strongroom.retention.models import VersionClock

    inst = next(iter(corpus["instances"].values()))
    with transaction(hub.sessions) as s:  # catch the clock up with the import's own events first
        clock.advance(s, hub.settings.retention)
        (before,) = s.scalars(select(VersionClock)).all()
        assert before.last_use != "dicomweb"
    api = TestClient(app)
    h = bearer(token_for(hub, corpus["people"]["alice"]))
    where = f"/dicomweb/projects/lung/studies/{inst.study_uid}/series/{inst.series_uid}/instances/" \
            f"{inst.sop_instance_uid}/metadata"
    assert api.get(where, headers=h).status_code == 200
    with transaction(hub.sessions) as s:
        read = s.scalar(select(AuditEvent).where(AuditEvent.action == "dicomweb.study.read"))
        assert read is not None and read.target == f"study:{inst.study_uid}"
        clock.advance(s, hub.settings.retention)
        (after,) = s.scalars(select(VersionClock)).all()
        assert (after.last_use, after.last_used_at) == ("dicomweb", read.at)
        assert after.keep_until > before.keep_until


def test_a_member_without_read_data_gets_nothing(app, hub, corpus) -> None:
    """Membership alone does not open the project's images: a role without the read-data right gets 404 on
    search and retrieve, exactly like an outsider; the same member with read-data reads."""
    from strongroom.projects.models import Membership, Project, Role

    inst = next(iter(corpus["instances"].values()))
    bob = corpus["people"]["bob"]
    with transaction(hub.sessions) as s:
        s.add(Role(name="auditor", description="audit only", rights=["view-audit"]))
        s.flush()
        lung = s.scalar(select(Project.id).where(Project.slug == "lung"))
        s.add(Membership(project_id=lung, user_id=bob.user.id, role="auditor", delegated_rights=[]))
    api = TestClient(app)
    token = bearer(token_for(hub, bob))
    where = f"/dicomweb/projects/lung/studies/{inst.study_uid}/series/{inst.series_uid}/instances/" \
            f"{inst.sop_instance_uid}"
    for path in ("/dicomweb/projects/lung/studies", where + "/metadata", where):
        assert api.get(path, headers=token).status_code == 404, path
    with transaction(hub.sessions) as s:
        s.execute(update(Membership).where(Membership.user_id == bob.user.id, Membership.project_id == lung)
                  .values(role="member"))
    assert api.get("/dicomweb/projects/lung/studies", headers=token).status_code == 200
    assert api.get(where + "/metadata", headers=token).status_code == 200


def test_coalesce_keeps_every_byte_in_order() -> None:
    """WADO-RS bodies are handed to the server in chunks of at least STREAM_CHUNK (one worker-thread hop each),
    not segment by segment; the bytes are the same."""
    from strongroom.dicomweb.retrieve import coalesce

    pieces = [bytes([i]) * n for i, n in enumerate((3, 0, 5, 1, 7, 2))]
    assert list(coalesce(pieces, 6)) == [b"\0\0\0\2\2\2\2\2", b"\3\4\4\4\4\4\4\4", b"\5\5"]
    assert list(coalesce(pieces, 100)) == [b"".join(pieces)]
    assert list(coalesce([], 6)) == [] == list(coalesce([b""], 6))
