"""The airlock (issue 20 §3): reviewed export out of a project and reviewed import into it.

Export to another project (two reviewers; the copy decrypted and compared byte for byte), export to a
recipient's crypt4gh key (decrypted with the reference library and the recipient's secret key, once),
import of staged uploads, and the refusals: no export right (403), self-review, an unlisted destination,
a leaking file (approval blocked until the PI overrides), expiry, and 404 outside the project.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import tempfile
from pathlib import Path

import crypt4gh.lib
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conftest import bearer, token_for
from strongroom.airlock import checks
from strongroom.airlock import service as airlock
from strongroom.airlock.models import AirlockRequest
from strongroom.archive import c4gh
from strongroom.archive import service as archive
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key, hub_keys
from strongroom.archive.models import ArchiveFile
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.identity.models import User
from strongroom.jobs.models import Job
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from strongroom.projects.models import Project

END = dt.date.today() + dt.timedelta(days=365)
CLEAN_CSV = b"id,age_band\nP001,40-49\nP002,50-59\n"
LEAKY_CSV = b"pin,age\n19121212-1212,41\n"  # a valid personnummer (Luhn)


def _drain(hub) -> None:
    Runner(hub, lease_seconds=10, name="test").run_until_idle()


def _put_file(hub, slug: str, uploader, name: str, data: bytes) -> str:
    """A file in the project's archive, sealed on the hub as imports are."""
    with tempfile.TemporaryDirectory() as tmp, transaction(hub.sessions) as s:
        src = Path(tmp) / "f"
        src.write_bytes(data)
        project = s.scalar(select(Project).where(Project.slug == slug))
        sealed = archive.seal_into_storage(hub_keys(hub, s), storage_for(hub), project.id,
                                           archive.new_accession("SRF"), str(src))
        return archive.add_sealed_file(s, project.id, uploader.user.id, name, sealed).id


def _plaintext(hub, file_id: str) -> bytes:
    with hub.sessions() as s:
        f = s.get(ArchiveFile, file_id)
        opened = c4gh.open_header(f.header, hub_keys(hub, s).secrets)
        with storage_for(hub).open_reader(f.body_key) as reader:
            return b"".join(c4gh.decrypt_segments(reader, opened.session_keys))


@pytest.fixture
def world(app, hub, people):
    ensure_key(hub)
    names = ("alice", "sam", "rita", "ron", "mia", "bob", "carl", "eve")
    p = {n: people(n) for n in names}
    with transaction(hub.sessions) as s:
        for slug, pi in (("lung", "alice"), ("other", "bob"), ("elsewhere", "eve")):
            projects.create_project(s, Actor.system("t"), slug=slug, name=slug.title(), pi=pi, ethics_ref="E1",
                                    end_date=END)
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    t = {n: token_for(hub, person) for n, person in p.items()}
    for user in ("sam", "rita", "ron", "mia"):
        assert c.post("/api/v1/projects/lung/members", json={"user": user, "role": "member"},
                      headers=bearer(t["alice"])).status_code == 201
    assert c.put(f"/api/v1/projects/lung/members/{p['sam'].user.id}/rights", json={"rights": ["export", "import"]},
                 headers=bearer(t["alice"])).status_code == 200
    # bob, PI of 'other', accepts exports from 'lung' (a receiving project must agree first)
    assert c.put("/api/v1/projects/other/settings/airlock_sources", json={"value": ["lung"]},
                 headers=bearer(t["bob"])).status_code == 200
    dests = [{"kind": "project", "name": "Other team", "project": "other"},
             {"kind": "recipient", "name": "Carl at the registry", "user": "carl"}]
    r = c.put("/api/v1/projects/lung/settings/egress_destinations", json={"value": dests}, headers=bearer(t["alice"]))
    assert r.status_code == 200, r.text
    r = c.put("/api/v1/projects/lung/airlock/reviewers", json={"users": ["rita", "ron", "sam"]},
              headers=bearer(t["alice"]))
    assert r.status_code == 200, r.text
    return {"c": c, "t": t, "p": p, "hub": hub}


def _export(w, who: str, files: list[str], destination: str = "Other team", **extra):
    return w["c"].post("/api/v1/projects/lung/airlock/exports", headers=bearer(w["t"][who]),
                       json={"files": files, "purpose": "Registry linkage", "destination": destination, **extra})


def _get(w, request_id: str, who: str = "sam") -> dict:
    r = w["c"].get(f"/api/v1/projects/lung/airlock/requests/{request_id}", headers=bearer(w["t"][who]))
    assert r.status_code == 200, r.text
    return r.json()


def _review(w, request_id: str, who: str, decision: str = "approve", reason: str = ""):
    return w["c"].post(f"/api/v1/projects/lung/airlock/requests/{request_id}/reviews", headers=bearer(w["t"][who]),
                       json={"decision": decision, "reason": reason})


def _actions(hub, request_id: str) -> list[str]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent.action).where(AuditEvent.target == f"airlock:{request_id}")
                              .order_by(AuditEvent.seq)))


def _mails(hub) -> list[dict]:
    with hub.sessions() as s:
        return [j.payload for j in s.scalars(select(Job).where(Job.kind == "notify.email"))]


def test_export_to_another_project_with_two_reviewers(world) -> None:
    w, hub, c = world, world["hub"], world["c"]
    data = CLEAN_CSV * 50 + b"P999,60-69\n"
    table = _put_file(hub, "lung", w["p"]["sam"], "out/ages.csv", data)
    notes = _put_file(hub, "lung", w["p"]["sam"], "out/notes.txt", b"Cohort summary, no identifiers.\n")
    r = _export(w, "sam", [table, notes])
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["state"] == "submitted" and req["approvals_needed"] == 2
    assert {f["file_id"]: (f["size"], f["sha256"]) for f in req["files"]} == {
        table: (len(data), hashlib.sha256(data).hexdigest()),
        notes: (32, hashlib.sha256(b"Cohort summary, no identifiers.\n").hexdigest())}
    # nobody reviews before the checks ran
    assert _review(w, req["id"], "rita").status_code == 409
    _drain(hub)
    req = _get(w, req["id"])
    assert req["state"] == "in_review" and req["checks_passed"] is True, req
    assert all(f["check_state"] == "passed" for f in req["files"])
    # a reviewer looks at the table in-platform (audited)
    look = c.get(f"/api/v1/projects/lung/airlock/requests/{req['id']}/files/{table}/preview",
                 headers=bearer(w["t"]["rita"]))
    assert look.status_code == 200 and look.json()["columns"] == ["id", "age_band"]
    assert look.json()["rows"][0] == ["P001", "40-49"]
    assert c.get(f"/api/v1/projects/lung/airlock/requests/{req['id']}/files/{table}/preview",
                 headers=bearer(w["t"]["mia"])).status_code == 403  # not a reviewer
    # the requester is a named reviewer too, but never of their own request
    assert _review(w, req["id"], "sam").status_code == 403
    assert _review(w, req["id"], "mia").status_code == 403  # not a reviewer
    assert _review(w, req["id"], "rita").json()["state"] == "in_review"
    assert _review(w, req["id"], "rita").status_code == 409  # once each
    assert _review(w, req["id"], "ron").json()["state"] == "approved"
    _drain(hub)
    req = _get(w, req["id"])
    assert req["state"] == "done", req
    receipt = {e["file_id"]: e for e in req["receipt"]["files"]}
    assert req["receipt"]["all_verified"] is True and set(receipt) == {table, notes}
    copy = receipt[table]["delivered_id"]
    assert _plaintext(hub, copy) == data and receipt[table]["sha256"] == hashlib.sha256(data).hexdigest()
    with hub.sessions() as s:
        copied = s.get(ArchiveFile, copy)
        other = s.scalar(select(Project).where(Project.slug == "other"))
        assert copied.project_id == other.id and copied.hold is None and copied.path == "out/ages.csv"
        assert other.used_bytes >= copied.body_size  # the receiving project's quota counts it
    assert _actions(hub, req["id"]) == ["airlock.export.submitted", "airlock.request.checking",
                                        "airlock.request.in_review", "airlock.review.approved",
                                        "airlock.review.approved", "airlock.request.approved",
                                        "airlock.request.transferring", "airlock.request.done"]
    mails = _mails(hub)
    assert {m["template"] for m in mails} >= {"airlock_review", "airlock_decided"}
    assert any(m["to"] == "sam@example.org" and m["context"]["state"] == "done" for m in mails)


def test_export_to_a_recipient_key_is_downloaded_once(world) -> None:
    w, hub, c = world, world["hub"], world["c"]
    key = c4gh.generate_keypair()
    assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(key.public).decode()},
                  headers=bearer(w["t"]["carl"])).status_code == 201
    data = b"summary statistics\n" * 5000
    fid = _put_file(hub, "lung", w["p"]["sam"], "stats.txt", data)
    req = _export(w, "sam", [fid], "Carl at the registry").json()
    _drain(hub)
    assert _review(w, req["id"], "rita").status_code == 200
    assert _review(w, req["id"], "ron").json()["state"] == "approved"
    _drain(hub)
    req = _get(w, req["id"])
    assert req["state"] == "done", req
    box = c.get("/api/v1/airlock/outbox", headers=bearer(w["t"]["carl"])).json()
    assert len(box) == 1 and box[0]["plaintext_sha256"] == hashlib.sha256(data).hexdigest()
    assert c.get("/api/v1/airlock/outbox", headers=bearer(w["t"]["sam"])).json() == []
    # only the recipient may take it
    assert c.get(f"/api/v1/airlock/outbox/{box[0]['id']}/content", headers=bearer(w["t"]["sam"])).status_code == 404
    got = c.get(f"/api/v1/airlock/outbox/{box[0]['id']}/content", headers=bearer(w["t"]["carl"]))
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == box[0]["stream_sha256"] == req["receipt"]["files"][0][
        "stream_sha256"]
    out = io.BytesIO()
    crypt4gh.lib.decrypt([(0, key.secret, None)], io.BytesIO(got.content), out)
    assert out.getvalue() == data
    again = c.get(f"/api/v1/airlock/outbox/{box[0]['id']}/content", headers=bearer(w["t"]["carl"]))
    assert again.status_code == 409
    with hub.sessions() as s:
        acts = set(s.scalars(select(AuditEvent.action)))
    assert {"airlock.file.delivered", "airlock.outbox.download.started", "airlock.outbox.download.completed"} <= acts
    assert any(m["template"] == "airlock_delivered" and m["to"] == "carl@example.org" for m in _mails(hub))


def test_a_recipient_is_the_account_chosen_when_the_request_was_made(world) -> None:
    """A recipient destination names a person by username or e-mail; the request pins the account that name
    meant when it was made, so a later change of addresses (or a name re-used) cannot redirect the files."""
    w, hub, c = world, world["hub"], world["c"]
    for who in ("carl", "eve"):
        public = c4gh.public_key_file(c4gh.generate_keypair().public).decode()
        assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": public},
                      headers=bearer(w["t"][who])).status_code == 201
    dests = [{"kind": "recipient", "name": "Registry inbox", "user": "carl@example.org"}]
    assert c.put("/api/v1/projects/lung/settings/egress_destinations", json={"value": dests},
                 headers=bearer(w["t"]["alice"])).status_code == 200
    req = _export(w, "sam", [_put_file(hub, "lung", w["p"]["sam"], "stats.txt", b"counts\n")],
                  "Registry inbox").json()
    with transaction(hub.sessions) as s:  # addresses change hands while the request waits
        s.get(User, w["p"]["carl"].user.id).email = "carl@elsewhere.example.org"
        s.flush()
        s.get(User, w["p"]["eve"].user.id).email = "carl@example.org"
    _drain(hub)
    assert _review(w, req["id"], "rita").status_code == 200
    assert _review(w, req["id"], "ron").json()["state"] == "approved"
    _drain(hub)
    assert _get(w, req["id"])["state"] == "done"
    assert len(c.get("/api/v1/airlock/outbox", headers=bearer(w["t"]["carl"])).json()) == 1
    assert c.get("/api/v1/airlock/outbox", headers=bearer(w["t"]["eve"])).json() == []


def test_refusals(world) -> None:
    w, hub, c = world, world["hub"], world["c"]
    fid = _put_file(hub, "lung", w["p"]["sam"], "a.txt", b"hello\n")
    # no export right: 403 (mia is a member)
    assert _export(w, "mia", [fid]).status_code == 403
    # an unlisted destination
    r = _export(w, "sam", [fid], "Somewhere else")
    assert r.status_code == 422 and "approved export destinations" in r.json()["detail"]
    # outside the project: 404 for the request and its routes
    req = _export(w, "sam", [fid]).json()
    for who in ("bob", "carl"):
        url = f"/api/v1/projects/lung/airlock/requests/{req['id']}"
        assert c.get(url, headers=bearer(w["t"][who])).status_code == 404
        assert _export(w, who, [fid]).status_code == 404
    # a file of another project cannot be named
    theirs = _put_file(hub, "other", w["p"]["bob"], "b.txt", b"x\n")
    assert _export(w, "sam", [theirs]).status_code == 422
    # a request of another project is not found through this one
    with transaction(hub.sessions) as s:
        s.add(projects.Membership(project_id=s.scalar(select(Project.id).where(Project.slug == "other")),
                                  user_id=w["p"]["alice"].user.id, role="member"))
    url = f"/api/v1/projects/other/airlock/requests/{req['id']}"
    assert c.get(url, headers=bearer(w["t"]["alice"])).status_code == 404
    # the allow-list is a locked setting: a member without manage-settings cannot add to it
    assert c.put("/api/v1/projects/lung/settings/egress_destinations", headers=bearer(w["t"]["sam"]),
                 json={"value": [{"kind": "project", "name": "x", "project": "elsewhere"}]}).status_code == 403
    bad = c.put("/api/v1/projects/lung/settings/egress_destinations", headers=bearer(w["t"]["alice"]),
                json={"value": [{"kind": "ftp", "name": "x", "url": "ftp://insecure"}]})
    assert bad.status_code == 422


def test_a_leaking_file_blocks_approval_until_the_pi_overrides(world) -> None:
    w, hub, c = world, world["hub"], world["c"]
    fid = _put_file(hub, "lung", w["p"]["sam"], "lab.csv", LEAKY_CSV)
    req = _export(w, "sam", [fid]).json()
    _drain(hub)
    req = _get(w, req["id"])
    assert req["state"] == "in_review" and req["checks_passed"] is False
    [f] = req["files"]
    failed = [x for x in f["checks"] if not x["passed"]]
    assert f["check_state"] == "failed" and failed and "personnummer" in failed[0]["detail"]
    assert "19121212" not in str(req)  # results name kinds and counts, never values
    r = _review(w, req["id"], "rita")
    assert r.status_code == 409 and "blocked" in r.json()["detail"]
    # only the PI overrides, with a reason
    assert c.post(f"/api/v1/projects/lung/airlock/requests/{req['id']}/override", json={"reason": "ok"},
                  headers=bearer(w["t"]["rita"])).status_code == 403
    r = c.post(f"/api/v1/projects/lung/airlock/requests/{req['id']}/override",
               json={"reason": "The number is the registry's synthetic test person"}, headers=bearer(w["t"]["alice"]))
    assert r.status_code == 200 and r.json()["override_reason"]
    assert _review(w, req["id"], "rita").status_code == 200
    assert "airlock.checks.overridden" in _actions(hub, req["id"])


def test_rejection_and_expiry(world) -> None:
    w, hub = world, world["hub"]
    fid = _put_file(hub, "lung", w["p"]["sam"], "a.txt", b"hello\n")
    first, second = _export(w, "sam", [fid]).json(), _export(w, "sam", [fid]).json()
    _drain(hub)
    assert _review(w, first["id"], "rita", "reject").status_code == 422  # a reason is needed
    r = _review(w, first["id"], "rita", "reject", "Aggregate first")
    assert r.json()["state"] == "rejected" and r.json()["reason"] == "Aggregate first"
    with transaction(hub.sessions) as s:
        s.get(AirlockRequest, second["id"]).expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    with transaction(hub.sessions) as s:
        assert airlock.expire_due(s) == 1
    assert _get(w, second["id"])["state"] == "expired"
    assert _review(w, second["id"], "ron").status_code == 409


def test_import_of_staged_uploads_lands_after_review(world) -> None:
    w, hub, c = world, world["hub"], world["c"]
    data = b"sample_id,value\nS1,4.2\n"
    with hub.sessions() as s:
        hub_public = hub_keys(hub, s).current[1].public
    blob = b"".join(c4gh.encrypt_stream([data], hub_public))
    h = bearer(w["t"]["sam"])
    up = c.post("/api/v1/projects/lung/airlock/staging", json={"path": "in/lab.csv", "size": len(blob)}, headers=h)
    assert up.status_code == 201, up.text
    fid = up.json()["id"]
    assert c.put(f"/api/v1/uploads/{fid}/parts/1", content=blob, headers=h).status_code == 200
    assert c.post(f"/api/v1/uploads/{fid}/complete", headers=h).status_code == 200
    _drain(hub)
    # held: absent for ordinary reads, even for the uploader
    assert c.get(f"/api/v1/files/{fid}", headers=h).status_code == 404
    r = c.post("/api/v1/projects/lung/airlock/imports", json={"files": [fid], "purpose": "Lab values"},
               headers=bearer(w["t"]["mia"]))
    assert r.status_code == 403  # no import right
    req = c.post("/api/v1/projects/lung/airlock/imports", json={"files": [fid], "purpose": "Lab values"}, headers=h)
    assert req.status_code == 201, req.text
    rid = req.json()["id"]
    _drain(hub)
    assert _get(w, rid)["checks_passed"] is True
    _review(w, rid, "rita")
    assert _review(w, rid, "ron").json()["state"] == "approved"
    _drain(hub)
    assert _get(w, rid)["state"] == "done"
    meta = c.get(f"/api/v1/files/{fid}", headers=h)
    assert meta.status_code == 200 and _plaintext(hub, fid) == data


def test_checks_engine(tmp_path) -> None:
    """The pure checks: type sniffing against the extension, archives listed, text scanned."""
    import zipfile

    exe = tmp_path / "x.csv"
    exe.write_bytes(b"\x7fELF" + bytes(100))
    report = checks.check_file(exe, "x.csv", max_bytes=1000)
    assert not report.passed and report.content_type == "executable"
    png = tmp_path / "y.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(10))
    assert "says text but the content is png" in checks.check_file(png, "y.txt", max_bytes=1000).as_json()[1]["detail"]
    z = tmp_path / "z.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.txt", "x")
        zf.writestr("inner.zip", "y")
    listed = checks.check_file(z, "z.zip", max_bytes=10**6)
    assert not listed.passed and listed.checks[-1].items == [{"name": "a.txt", "size": 1}, {"name": "inner.zip",
                                                                                             "size": 1}]
    text = tmp_path / "t.txt"
    text.write_bytes(b"x" * (1 << 20) + b" mail anna@example.org\n" + b"ok " * 10)
    found = checks.check_file(text, "t.txt", max_bytes=10**9)
    assert not found.passed and "1 e-mail" in found.checks[-1].detail
    big = checks.check_file(text, "t.txt", max_bytes=10)
    assert not big.checks[0].passed


def test_pages_show_requests_checks_preview_and_the_outbox(world, app) -> None:
    from conftest import web_client

    w, hub = world, world["hub"]
    key = c4gh.generate_keypair()
    w["c"].post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(key.public).decode()},
                headers=bearer(w["t"]["carl"]))
    leaky = _put_file(hub, "lung", w["p"]["sam"], "lab.csv", LEAKY_CSV)
    req = _export(w, "sam", [leaky], "Carl at the registry").json()
    _drain(hub)
    rita = web_client(app, hub, w["p"]["rita"])
    listing = rita.get("/projects/lung/airlock")
    assert listing.status_code == 200 and req["id"] in listing.text
    page = rita.get(f"/projects/lung/airlock/{req['id']}")
    assert page.status_code == 200 and "FAILED" in page.text and "personnummer" in page.text
    assert 'value="approve"' in page.text  # a reviewer sees the review form
    look = rita.get(f"/projects/lung/airlock/{req['id']}/files/{leaky}")
    assert look.status_code == 200 and "<th>pin</th>" in look.text
    assert web_client(app, hub, w["p"]["mia"]).get(f"/projects/lung/airlock/{req['id']}/files/{leaky}"
                                                   ).status_code == 403
    settings = web_client(app, hub, w["p"]["alice"]).get("/projects/lung/airlock/settings")
    assert settings.status_code == 200 and "Carl at the registry" in settings.text
    assert "Add destination" in settings.text
    assert web_client(app, hub, w["p"]["bob"]).get("/projects/lung/airlock").status_code == 404
    # approved after the PI's override: the recipient downloads it once from the outbox page
    w["c"].post(f"/api/v1/projects/lung/airlock/requests/{req['id']}/override", json={"reason": "synthetic person"},
                headers=bearer(w["t"]["alice"]))
    _review(w, req["id"], "rita")
    _review(w, req["id"], "ron")
    _drain(hub)
    carl = web_client(app, hub, w["p"]["carl"])
    box = carl.get("/airlock/outbox")
    link = box.text.split('href="/airlock/outbox/')[1].split('"')[0]
    got = carl.get(f"/airlock/outbox/{link}")
    out = io.BytesIO()
    crypt4gh.lib.decrypt([(0, key.secret, None)], io.BytesIO(got.content), out)
    assert out.getvalue() == LEAKY_CSV
    assert carl.get(f"/airlock/outbox/{link}").status_code == 409
    assert "downloaded" in carl.get("/airlock/outbox").text


def test_dicom_check_finds_identity_numbers_and_direct_identifiers(tmp_path) -> None:
    import pydicom

    from strongroom.imaging import synthetic

    (_, raw), = list(synthetic.corpus(1, 1, 1, 1, rows=16, columns=16))
    original = tmp_path / "raw.dcm"
    original.write_bytes(raw)
    report = checks.check_file(original, "raw.dcm", max_bytes=10**7)
    assert report.content_type == "dicom" and not report.passed
    ds = pydicom.dcmread(original)
    for keyword in ("PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PatientID, ds.PatientName = "PSEUDO-0001", "PSEUDO-0001"
    clean = tmp_path / "clean.dcm"
    ds.save_as(clean)
    assert checks.check_file(clean, "clean.dcm", max_bytes=10**7).passed
    ds.ImageComments = "patient 19121212-1212 came back"
    ds.save_as(clean)
    again = checks.check_file(clean, "clean.dcm", max_bytes=10**7)
    assert not again.passed and "personnummer" in again.checks[-1].detail


def test_a_table_is_verified_against_the_projects_strategy(world) -> None:
    w, hub = world, world["hub"]
    text = ('name = "Lab"\nperson = "pin"\n[columns.pin]\naction = "pseudonymize"\n'
            '[columns.age]\naction = "stratify"\nwidth = 5\n')
    r = w["c"].put("/api/v1/projects/lung/strategy", json={"text": text}, headers=bearer(w["t"]["alice"]))
    assert r.status_code == 201, r.text
    raw = _put_file(hub, "lung", w["p"]["sam"], "extract.csv", b"pin,age\nP-77,41\n")
    req = _export(w, "sam", [raw]).json()
    _drain(hub)
    [f] = _get(w, req["id"])["files"]
    assert f["check_state"] == "failed"
    assert [c["name"] for c in f["checks"] if not c["passed"]] == ["strategy verification"]


def test_the_strategy_verifies_a_table_whatever_the_requester_may_read(world) -> None:
    """The checks read the project's strategy as the hub: a requester who left the project before the checks
    ran (or who may not read the strategy) does not get the weaker identifier scan instead of its verification."""
    w, hub, c = world, world["hub"], world["c"]
    text = ('name = "Lab"\nperson = "pin"\n[columns.pin]\naction = "pseudonymize"\n'
            '[columns.age]\naction = "stratify"\nwidth = 5\n')
    assert c.put("/api/v1/projects/lung/strategy", json={"text": text},
                 headers=bearer(w["t"]["alice"])).status_code == 201
    raw = _put_file(hub, "lung", w["p"]["sam"], "extract.csv", b"pin,age\nP-77,41\n")
    req = _export(w, "sam", [raw]).json()
    assert c.delete(f"/api/v1/projects/lung/members/{w['p']['sam'].user.id}",
                    headers=bearer(w["t"]["alice"])).status_code == 204
    _drain(hub)
    with hub.sessions() as s:
        r = s.get(AirlockRequest, req["id"])
        assert r.checks_passed is False
        [f] = airlock.request_files(s, r)
        assert [x["name"] for x in f.checks if not x["passed"]] == ["strategy verification"]


def test_a_destination_the_pi_took_off_the_list_receives_nothing(world) -> None:
    """A request keeps the destination it was made for; if the PI removes (or changes) that destination while
    the request waits, the next approval is refused, and a transfer already approved fails before sending."""
    w, hub, c = world, world["hub"], world["c"]
    alice = bearer(w["t"]["alice"])
    carl_only = [{"kind": "recipient", "name": "Carl at the registry", "user": "carl"}]
    first = _export(w, "sam", [_put_file(hub, "lung", w["p"]["sam"], "a.csv", CLEAN_CSV)]).json()
    second = _export(w, "sam", [_put_file(hub, "lung", w["p"]["sam"], "b.csv", CLEAN_CSV)]).json()
    _drain(hub)
    assert _review(w, first["id"], "rita").status_code == 200
    for who in ("rita", "ron"):
        assert _review(w, second["id"], who).status_code == 200
    assert _get(w, second["id"])["state"] == "approved"  # its transfer job is queued, not run yet
    assert c.put("/api/v1/projects/lung/settings/egress_destinations", json={"value": carl_only},
                 headers=alice).status_code == 200
    refused = _review(w, first["id"], "ron")
    assert refused.status_code == 409 and "no longer one of this project's approved" in refused.text
    with hub.sessions() as s:
        other = s.scalar(select(Project).where(Project.slug == "other"))
        before = s.scalar(select(func.count()).select_from(ArchiveFile).where(ArchiveFile.project_id == other.id))
    _drain(hub)
    done = _get(w, second["id"])
    assert done["state"] == "failed" and "no longer one of the project's approved" in done["receipt"]["failed"]
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ArchiveFile)
                        .where(ArchiveFile.project_id == other.id)) == before


def test_an_approval_counts_only_while_its_reviewer_is_named(world) -> None:
    """A reviewer taken off the list (or who left the project) after approving no longer vouches for the
    request: the approvals needed come from the reviewers named now."""
    w, hub, c = world, world["hub"], world["c"]
    req = _export(w, "sam", [_put_file(hub, "lung", w["p"]["sam"], "a.csv", CLEAN_CSV)]).json()
    _drain(hub)
    assert _review(w, req["id"], "rita").status_code == 200
    assert c.put("/api/v1/projects/lung/airlock/reviewers", json={"users": ["ron", "sam", "mia"]},
                 headers=bearer(w["t"]["alice"])).status_code == 200
    assert _review(w, req["id"], "ron").json()["state"] == "in_review"  # rita's approval no longer counts
    assert _get(w, req["id"])["approvals"] == 1
    assert _review(w, req["id"], "mia").json()["state"] == "approved"


def test_a_reviewer_sees_a_dicom_file_as_an_image(tmp_path: Path) -> None:
    """The in-platform look shows DICOM as a picture (a PNG data URI, no file leaves), and says why when the
    pixels cannot be decoded."""
    import base64

    from strongroom.imaging.synthetic import make_ct

    ct = tmp_path / "slice.dcm"
    ct.write_bytes(make_ct(1, 1, 1, 1, rows=64, columns=48))
    shown = checks.preview(ct, "scans/slice.dcm")
    assert shown["kind"] == "dicom" and shown["attributes"]["Modality"] == "CT"
    png = base64.b64decode(shown["image"].removeprefix("data:image/png;base64,"))
    assert png.startswith(b"\x89PNG") and int.from_bytes(png[16:20], "big") == 48  # the width, from IHDR
    broken = tmp_path / "empty.dcm"
    broken.write_bytes(b"\x00" * 128 + b"DICM" + bytes.fromhex("0200100055490000"))
    assert checks.preview(broken, "empty.dcm").get("image") is None
    (tmp_path / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    assert checks.preview(tmp_path / "garbage.dcm", "garbage.dcm")["why"].startswith("no image")


def test_approvals_never_exceed_the_reviewers_and_the_pi_hears_of_a_shortfall(world, app) -> None:
    """The PI cannot ask for more approvals than there are named reviewers (API and page); when a reviewer
    leaves so that an open request can no longer get its approvals, the PI is told and the page says so."""
    from conftest import web_client
    from helpers import csrf_for

    w, hub, c = world, world["hub"], world["c"]
    alice = bearer(w["t"]["alice"])

    def put(key: str, value):
        return c.put(f"/api/v1/projects/lung/settings/{key}", json={"value": value}, headers=alice)

    refused = put("airlock_approvals", 4)  # rita, ron and sam are named
    assert refused.status_code == 422 and "this project names 3" in refused.json()["detail"]
    assert put("airlock_approvals", 3).status_code == 200 and put("airlock_approvals", 2).status_code == 200
    fewer = c.put("/api/v1/projects/lung/airlock/reviewers", json={"users": ["rita"]}, headers=alice)
    assert fewer.status_code == 422 and "lower the approvals first" in fewer.json()["detail"]
    page = web_client(app, hub, w["p"]["alice"])
    form = page.post("/projects/lung/airlock/settings/reviewers", data={
        "csrf_token": csrf_for(page), "reviewers": "rita, ron", "approvals": "3", "expiry_days": "14"})
    assert form.status_code == 422 and "3 approvals need at least 3 named reviewers" in form.text
    with hub.sessions() as s:
        lung = s.scalar(select(Project).where(Project.slug == "lung"))
        assert projects.get_setting(s, lung.id, "airlock_approvals") == 2  # nothing half-applied
        assert len(airlock.reviewer_ids(s, lung.id)) == 3

    fid = _put_file(hub, "lung", w["p"]["sam"], "a.txt", b"hello\n")
    rid = _export(w, "sam", [fid]).json()["id"]
    _drain(hub)
    assert _get(w, rid)["short_of_reviewers_at"] is None  # rita and ron may approve (sam never his own)
    # ron leaves the project: one eligible reviewer for two approvals
    assert c.delete(f"/api/v1/projects/lung/members/{w['p']['ron'].user.id}", headers=alice).status_code == 204
    assert _get(w, rid)["short_of_reviewers_at"] is not None
    assert "airlock.request.short_of_reviewers" in _actions(hub, rid)
    told = [m for m in _mails(hub) if m["template"] == "airlock_short_of_reviewers"]
    assert [m["to"] for m in told] == ["alice@example.org"] and told[0]["context"]["possible"] == 1
    shown = web_client(app, hub, w["p"]["sam"]).get(f"/projects/lung/airlock/{rid}").text
    assert 'id="short-of-reviewers"' in shown and "at most 1 possible" in shown
    # the PI names mia: covered again, and the request can be approved
    assert c.put("/api/v1/projects/lung/airlock/reviewers", json={"users": ["rita", "sam", "mia"]},
                 headers=alice).status_code == 200
    assert _get(w, rid)["short_of_reviewers_at"] is None
    _review(w, rid, "rita")
    assert _review(w, rid, "mia").json()["state"] == "approved"
    # a request whose requester is one of too few reviewers is short from the start (the PI told once)
    assert c.put("/api/v1/projects/lung/airlock/reviewers", json={"users": ["rita", "sam"]},
                 headers=alice).status_code == 200
    second = _export(w, "sam", [fid]).json()["id"]
    assert _get(w, second)["short_of_reviewers_at"] is not None
    assert len([m for m in _mails(hub) if m["template"] == "airlock_short_of_reviewers"]) == 2


def test_reviews_waiting_show_in_the_navigation_with_one_query(world, app) -> None:
    from sqlalchemy import event

    from conftest import web_client

    w, hub, c = world, world["hub"], world["c"]
    fid = _put_file(hub, "lung", w["p"]["sam"], "a.txt", b"hello\n")
    rid = _export(w, "sam", [fid]).json()["id"]
    pages = {who: web_client(app, hub, w["p"][who]) for who in ("rita", "ron", "sam", "bob")}
    assert 'id="nav-reviews"' not in pages["rita"].get("/projects").text  # still being checked
    _drain(hub)
    nav = pages["rita"].get("/projects").text
    assert 'id="nav-reviews"' in nav and 'aria-label="1 waiting for your review"' in nav
    assert 'id="nav-reviews"' not in pages["sam"].get("/projects").text  # his own request
    assert 'id="nav-reviews"' not in pages["bob"].get("/projects").text  # not a member
    listed = pages["rita"].get("/airlock/reviews")
    assert listed.status_code == 200 and f"/projects/lung/airlock/{rid}" in listed.text
    api = c.get("/api/v1/airlock/reviews", headers=bearer(w["t"]["rita"])).json()
    assert [(x["id"], x["project"]) for x in api] == [(rid, "lung")]
    assert c.get("/api/v1/airlock/reviews", headers=bearer(w["t"]["sam"])).json() == []
    _review(w, rid, "rita")
    assert 'id="nav-reviews"' not in pages["rita"].get("/projects").text
    assert 'id="nav-reviews"' in pages["ron"].get("/projects").text
    # the count is one statement
    statements: list[str] = []

    def seen(conn, cursor, statement, *rest) -> None:
        statements.append(statement)

    with hub.sessions() as s:
        engine = s.get_bind()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            assert airlock.waiting_count(s, w["p"]["ron"].user.id) == 1
        finally:
            event.remove(engine, "before_cursor_execute", seen)
    assert len([q for q in statements if q.lstrip().upper().startswith("SELECT")]) == 1


def test_every_airlock_route_refuses_outsiders_and_members_without_the_right(world, app) -> None:
    """Enumerated from the app: every airlock route (API, pages, outbox) answers 404 to a non-member (bob, PI
    of another project) and 403 (or 404 for someone else's outbox file) to a member without the right (mia:
    no export/import right, not a reviewer, not the PI); a user-wide list shows an outsider nothing. And the
    requester never reviews their own request, through the API or the page."""
    from fastapi.routing import APIRoute, iter_route_contexts

    from conftest import web_client
    from helpers import csrf_for

    w, hub, c = world, world["hub"], world["c"]
    key = c4gh.generate_keypair()
    c.post("/api/v1/me/keys", json={"name": "k", "public_key": c4gh.public_key_file(key.public).decode()},
           headers=bearer(w["t"]["carl"]))
    fid = _put_file(hub, "lung", w["p"]["sam"], "a.txt", b"hello\n")
    rid = _export(w, "sam", [fid], "Carl at the registry").json()["id"]
    _drain(hub)
    _review(w, rid, "rita")
    _review(w, rid, "ron")
    _drain(hub)
    [item] = c.get("/api/v1/airlock/outbox", headers=bearer(w["t"]["carl"])).json()
    staged = _put_file(hub, "lung", w["p"]["sam"], "s.csv", b"id\n1\n")
    ids = {"slug": "lung", "request_id": rid, "file_id": fid, "item_id": item["id"]}
    pem = c4gh.public_key_file(key.public).decode()
    # (method, path) → (JSON body or form, status for mia, status for bob); None body: a GET
    api = "/api/v1/projects/{slug}/airlock"
    routes: dict[tuple[str, str], tuple[dict | None, int, int]] = {
        ("GET", f"{api}/requests"): (None, 200, 404),
        ("GET", f"{api}/requests/{{request_id}}"): (None, 200, 404),
        ("POST", f"{api}/exports"): ({"files": [fid], "purpose": "x", "destination": "Other team"}, 403, 404),
        ("POST", f"{api}/staging"): ({"path": "x.csv", "size": 100}, 403, 404),
        ("POST", f"{api}/imports"): ({"files": [staged], "purpose": "x"}, 403, 404),
        ("POST", f"{api}/requests/{{request_id}}/reviews"): ({"decision": "approve"}, 403, 404),
        ("POST", f"{api}/requests/{{request_id}}/override"): ({"reason": "x"}, 403, 404),
        ("GET", f"{api}/requests/{{request_id}}/files/{{file_id}}/preview"): (None, 403, 404),
        ("PUT", f"{api}/reviewers"): ({"users": ["rita"]}, 403, 404),
        ("GET", "/api/v1/airlock/outbox"): (None, 200, 200),  # one's own: empty for both
        ("GET", "/api/v1/airlock/outbox/{item_id}/content"): (None, 404, 404),
        ("GET", "/api/v1/airlock/reviews"): (None, 200, 200),  # one's own: empty for both
        ("GET", "/projects/{slug}/airlock"): (None, 200, 404),
        ("POST", "/projects/{slug}/airlock/exports"): ({"files": fid, "purpose": "x", "destination": "Other team"},
                                                       403, 404),
        ("POST", "/projects/{slug}/airlock/staging"): ({"file": ("x.csv", b"id\n1\n")}, 403, 404),
        ("POST", "/projects/{slug}/airlock/imports"): ({"files": staged, "purpose": "x"}, 403, 404),
        ("GET", "/projects/{slug}/airlock/settings"): (None, 200, 404),
        ("POST", "/projects/{slug}/airlock/settings/destinations"): (
            {"kind": "project", "name": "Elsewhere", "target": "elsewhere"}, 403, 404),
        ("POST", "/projects/{slug}/airlock/settings/destinations/external"): (
            {"kind": "s3", "name": "B", "credential": "b", "public_key": pem}, 403, 404),
        ("POST", "/projects/{slug}/airlock/settings/reviewers"): (
            {"reviewers": "mia", "approvals": "1", "expiry_days": "14"}, 403, 404),
        ("POST", "/projects/{slug}/airlock/settings/sources"): ({"sources": "elsewhere"}, 403, 404),
        ("GET", "/projects/{slug}/airlock/{request_id}"): (None, 200, 404),
        ("GET", "/projects/{slug}/airlock/{request_id}/files/{file_id}"): (None, 403, 404),
        ("POST", "/projects/{slug}/airlock/{request_id}/review"): ({"decision": "approve"}, 403, 404),
        ("POST", "/projects/{slug}/airlock/{request_id}/override"): ({"reason": "x"}, 403, 404),
        ("GET", "/airlock/reviews"): (None, 200, 200),
        ("GET", "/airlock/outbox"): (None, 200, 200),
        ("GET", "/airlock/outbox/{item_id}/download"): (None, 404, 404),
    }
    found = {(m, r.path_format) for r in iter_route_contexts(app.routes) if isinstance(r.original_route, APIRoute)
             for m in r.methods if "airlock" in r.path_format and m != "HEAD"}
    assert found == set(routes), "a new airlock route needs its row here"
    tokens = {who: bearer(w["t"][who]) for who in ("mia", "bob")}
    pages = {who: web_client(app, hub, w["p"][who]) for who in ("mia", "bob")}
    for (method, path), (body, as_mia, as_bob) in routes.items():
        url = path.format(**ids)
        for who, expected in (("mia", as_mia), ("bob", as_bob)):
            if path.startswith("/api/"):
                r = c.request(method, url, json=body, headers=tokens[who])
            elif method == "GET":
                r = pages[who].get(url)
            else:
                files = {k: v for k, v in body.items() if isinstance(v, tuple)}
                form = {k: v for k, v in body.items() if not isinstance(v, tuple)}
                r = pages[who].post(url, data={**form, "csrf_token": csrf_for(pages[who])}, files=files or None)
            assert r.status_code == expected, (who, method, path, r.status_code, r.text[:300])
            if expected == 200 and path in ("/api/v1/airlock/outbox", "/api/v1/airlock/reviews"):
                assert r.json() == []
    # nobody reviews their own request, on the page either (sam is a named reviewer)
    fresh = _export(w, "sam", [fid]).json()["id"]
    _drain(hub)
    sam = web_client(app, hub, w["p"]["sam"])
    own = sam.post(f"/projects/lung/airlock/{fresh}/review", data={"decision": "approve", "csrf_token": csrf_for(sam)})
    assert own.status_code == 403 and "own request" in own.text
    assert _review(w, fresh, "sam").status_code == 403
