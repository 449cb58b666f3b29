"""The encrypted archive end to end, on local disk and on a real S3 server (SeaweedFS):
client-side encrypted resumable upload → one-pass ingest → dataset release → download re-encrypted
to the researcher's key → decrypted with the reference crypt4gh library → identical bytes."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import random
import threading
import time
from pathlib import Path

import crypt4gh.lib
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.models import ArchiveFile
from strongroom.archive.transfer import SealedSource, UploadPlan, download_file, upload_file
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.hubclient import HubClient
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from strongroom.projects.models import Project
from support.live import free_port, serving
from support.seaweed import seaweedfs  # noqa: F401 - session fixture

END = dt.date.today() + dt.timedelta(days=365)
SEG = c4gh.CIPHER_SEGMENT_SIZE


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(settings, backend, request, tmp_path):
    """The root settings plus a live port and the storage backend under test."""
    port = free_port()
    update: dict = {"base_url": f"http://127.0.0.1:{port}"}
    if backend == "s3":
        s3 = request.getfixturevalue("seaweedfs")
        storage = {"kind": "s3", "endpoint_url": s3.endpoint_url, "bucket": f"t{os.getpid()}{tmp_path.name[-6:]}"
                   .lower().replace("_", ""), "access_key": s3.access_key, "secret_key": s3.secret_key,
                   "region": s3.region}
        part_size = 80 * SEG  # S3 wants ≥ 5 MiB parts
    else:
        storage = {"kind": "local", "root": str(tmp_path / "objects")}
        part_size = 3 * SEG  # small parts: many of them, to exercise resume
    archive = settings.archive.model_copy(update={"part_size": part_size,
                                                  "storage": settings.archive.storage.model_validate(storage)})
    s = settings.model_copy(update={**update, "archive": archive})
    s._port = port  # test plumbing
    return s


@pytest.fixture
def world(app, hub, people, settings):
    alice, bob = people("alice"), people("bob")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="alice", ethics_ref="E1",
                                end_date=END)
        projects.create_project(s, Actor.system("t"), slug="other", name="Other", pi="bob", ethics_ref="E2",
                                end_date=END)
    tokens = {"alice": token_for(hub, alice), "bob": token_for(hub, bob)}
    with serving(app, settings._port) as url:
        c = httpx.Client(base_url=url, headers=bearer(tokens["alice"]), timeout=60)
        r = c.put("/api/v1/projects/lung/settings/download_allowed", json={"value": True})
        assert r.status_code == 200, r.text
        user_key = c4gh.generate_keypair()
        assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(
            user_key.public).decode()}).status_code == 201
        yield {"url": url, "http": c, "tokens": tokens, "user_key": user_key, "hub": hub, "alice": alice,
               "bob": bob, "hub_public": c4gh.parse_public_key(c.get("/api/v1/archive/public-key").text)}


def _drain(hub) -> None:
    Runner(hub, lease_seconds=10, name="test").run_until_idle()


def _file(hub, file_id: str) -> ArchiveFile:
    with hub.sessions() as s:
        return s.get(ArchiveFile, file_id)


def _upload(world, path: Path, tmp_path: Path, **kw):
    client = HubClient(world["url"], world["tokens"]["alice"])
    plan = UploadPlan(path, kw.pop("name", path.name), path.stat().st_size)
    return upload_file(client, "lung", plan, world["hub_public"], state_dir=tmp_path / "state", **kw)


def _reference_decrypt(data: bytes, secret: bytes) -> bytes:
    out = io.BytesIO()
    crypt4gh.lib.decrypt([(0, secret, None)], io.BytesIO(data), out)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, 65536, 3 * 65536 + 7, 5 * 1024 * 1024 + 3])
def test_upload_ingest_release_download_roundtrip(world, tmp_path, size):
    hub, c = world["hub"], world["http"]
    data = os.urandom(size)
    src = tmp_path / f"scan-{size}.dcm"
    src.write_bytes(data)
    record = _upload(world, src, tmp_path)
    assert record["state"] == "uploaded"
    _drain(hub)
    f = _file(hub, record["id"])
    assert f.state == "ready", f.failure
    assert f.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert f.plaintext_md5 == hashlib.md5(data).hexdigest()
    assert f.plaintext_size == size and f.body_size == c4gh.body_size_for(size)
    with hub.sessions() as s:
        assert s.get(Project, f.project_id).used_bytes == f.body_size  # reservation settled

    ds = c.post("/api/v1/projects/lung/datasets", json={"title": "Scans", "files": [f.id]}).json()
    assert c.post(f"/api/v1/datasets/{ds['id']}/versions/1/release").json()["state"] == "released"

    client = HubClient(world["url"], world["tokens"]["alice"])
    target, meta = download_file(client, f.id, tmp_path / "out", key=None)
    plain = _reference_decrypt(target.read_bytes(), world["user_key"].secret)
    assert hashlib.sha256(plain).hexdigest() == meta["plaintext_sha256"] == hashlib.sha256(data).hexdigest()


def test_reference_library_upload_is_accepted_and_plaintext_ranges_work(world, tmp_path):
    """A file encrypted by the reference tool to the hub key ingests; ranges and resume work."""
    hub, c = world["hub"], world["http"]
    data = os.urandom(300_000)
    encrypted = io.BytesIO()
    sender = c4gh.generate_keypair()
    crypt4gh.lib.encrypt([(0, sender.secret, world["hub_public"])], io.BytesIO(data), encrypted)
    blob = encrypted.getvalue()
    file_id = _raw_upload(c, blob, "ref.bin", hashlib.sha256(data).hexdigest())
    up = {"id": file_id}
    _drain(hub)
    assert _file(hub, up["id"]).state == "ready"

    full = c.get(f"/api/v1/files/{up['id']}/content")
    assert full.status_code == 200 and full.headers["accept-ranges"] == "bytes"
    etag = full.headers["etag"]
    assert c.get(f"/api/v1/files/{up['id']}/content").headers["etag"] == etag  # stable → resumable
    assert full.content == c.get(f"/api/v1/files/{up['id']}/content").content
    # resume from byte 1000 with If-Range
    part = c.get(f"/api/v1/files/{up['id']}/content", headers={"Range": "bytes=1000-", "If-Range": etag})
    assert part.status_code == 206 and full.content[:1000] + part.content == full.content
    # a stale validator gets the whole file again, never a mismatched tail
    stale = c.get(f"/api/v1/files/{up['id']}/content", headers={"Range": "bytes=1000-", "If-Range": '"x"'})
    assert stale.status_code == 200 and len(stale.content) == len(full.content)
    assert c.get(f"/api/v1/files/{up['id']}/content", headers={"Range": "bytes=99999999-"}).status_code == 416
    # plaintext range: a header with an edit list + only the needed segments
    ranged = c.get(f"/api/v1/files/{up['id']}/content", params={"plaintext_range": "70000-200009"})
    assert ranged.status_code == 200 and len(ranged.content) < len(full.content)
    assert _reference_decrypt(ranged.content, world["user_key"].secret) == data[70000:200010]
    # in-platform plaintext with Range
    plain = c.get(f"/api/v1/files/{up['id']}/plaintext", headers={"Range": "bytes=65530-65545"})
    assert plain.status_code == 206 and plain.content == data[65530:65546]


def _raw_upload(c, blob: bytes, name: str, sha: str | None = None) -> str:
    body = {"path": name, "size": len(blob)} | ({"sha256": sha} if sha else {})
    up = c.post("/api/v1/projects/lung/uploads", json=body).json()
    size = up["part_size"]
    for number, start in enumerate(range(0, len(blob), size), start=1):
        r = c.put(f"/api/v1/uploads/{up['id']}/parts/{number}", content=blob[start:start + size])
        assert r.status_code == 200, r.text
    assert c.post(f"/api/v1/uploads/{up['id']}/complete").status_code == 200
    return up["id"]


def test_damaged_and_foreign_uploads_are_refused_with_a_reason(world, tmp_path):
    hub, c = world["hub"], world["http"]
    data = os.urandom(200_000)
    good = b"".join(c4gh.encrypt_stream([data], world["hub_public"]))
    header_len = len(c4gh.read_header(io.BytesIO(good)))
    tampered = bytearray(good)
    tampered[header_len + SEG + 100] ^= 0x01  # second segment
    truncated = good[:-10]
    foreign = b"".join(c4gh.encrypt_stream([data], c4gh.generate_keypair().public))
    ids = {"tampered": _raw_upload(c, bytes(tampered), "t.bin"), "truncated": _raw_upload(c, truncated, "c.bin"),
           "foreign": _raw_upload(c, foreign, "f.bin"), "garbage": _raw_upload(c, b"not crypt4gh at all", "g"),
           "mismatch": _raw_upload(c, good, "m.bin", sha="0" * 64)}
    _drain(hub)
    reasons = {k: _file(hub, v) for k, v in ids.items()}
    assert all(f.state == "failed" for f in reasons.values())
    assert "damaged" in reasons["tampered"].failure and "segment 1" in reasons["tampered"].failure
    assert "damaged" in reasons["truncated"].failure
    assert "archive key" in reasons["foreign"].failure
    assert "crypt4gh" in reasons["garbage"].failure
    assert "SHA-256" in reasons["mismatch"].failure
    with hub.sessions() as s:
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        assert project.reserved_bytes == 0 and project.used_bytes == 0  # nothing held, nothing counted
    listing = c.get("/api/v1/projects/lung/files", params={"state": "failed"}).json()
    assert {f["id"] for f in listing} == set(ids.values()) and all(f["failure"] for f in listing)


def test_interrupted_upload_resumes_without_resending_parts(world, tmp_path, backend):
    hub = world["hub"]
    part_size = hub.settings.archive.part_size
    data = os.urandom(int(part_size * 3.5))
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    sent: list[int] = []

    def crash_after_two(n: int) -> None:
        sent.append(n)
        if len(sent) == 2:
            raise KeyboardInterrupt  # the user hits ^C

    with pytest.raises(KeyboardInterrupt):
        _upload(world, src, tmp_path, workers=1, on_bytes=crash_after_two)
    status_files = list((tmp_path / "state").glob("*.json"))
    assert len(status_files) == 1  # resume state kept (0600)
    assert oct(status_files[0].stat().st_mode & 0o777) == "0o600"
    resumed: list[int] = []
    record = _upload(world, src, tmp_path, workers=2, on_bytes=resumed.append)
    assert resumed[0] > 0  # bytes already on the hub were counted, not re-sent
    assert sum(resumed[1:]) < SealedSource(src, b"x" * 124, b"k" * 32, b"s" * 32).size
    _drain(hub)
    f = _file(hub, record["id"])
    assert f.state == "ready" and f.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert not list((tmp_path / "state").glob("*.json"))


def test_concurrent_uploads_never_exceed_the_quota(world, hub):
    with transaction(hub.sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        project.quota_bytes = 10_000
    results: list[int] = []
    lock = threading.Lock()

    def attempt() -> None:
        # A busy database answers 503 + Retry-After (never a hang, never a wrong answer); clients retry,
        # as `strongroom upload` does. What may never happen is a fourth 201.
        with httpx.Client(base_url=world["url"], headers=bearer(world["tokens"]["alice"]), timeout=60) as c:
            for _ in range(20):
                r = c.post("/api/v1/projects/lung/uploads", json={"path": "q.bin", "size": 3_000})
                if r.status_code != 503:
                    break
                assert r.headers["Retry-After"].isdigit()
                time.sleep(min(int(r.headers["Retry-After"]), 2) * random.random())
        with lock:
            results.append(r.status_code)

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201] * 3 + [409] * 9
    with hub.sessions() as s:
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        assert project.reserved_bytes == 9_000 <= project.quota_bytes
    r = world["http"].post("/api/v1/projects/lung/uploads", json={"path": "q.bin", "size": 1_001})
    assert r.status_code == 409 and r.json()["code"] == "quota-exceeded" and r.json()["free_bytes"] == 1_000


def test_access_is_segmented_locked_and_audited(world, tmp_path):
    hub, c = world["hub"], world["http"]
    data = os.urandom(1000)
    file_id = _raw_upload(c, b"".join(c4gh.encrypt_stream([data], world["hub_public"])), "a.bin")
    _drain(hub)
    bob = httpx.Client(base_url=world["url"], headers=bearer(world["tokens"]["bob"]), timeout=30)
    for path in (f"/api/v1/files/{file_id}", f"/api/v1/files/{file_id}/content",
                 f"/api/v1/files/{file_id}/plaintext", f"/ga4gh/drs/v1/objects/{file_id}",
                 "/api/v1/projects/lung/files"):
        assert bob.get(path).status_code == 404, path
    # the download setting is per project and locked by default
    assert c.put("/api/v1/projects/lung/settings/download_allowed", json={"value": False}).status_code == 200
    locked = c.get(f"/api/v1/files/{file_id}/content")
    assert locked.status_code == 403 and "locked" in locked.json()["detail"]
    assert c.put("/api/v1/projects/lung/settings/download_allowed", json={"value": True}).status_code == 200
    assert c.get(f"/api/v1/files/{file_id}/content").status_code == 200
    events = c.get("/api/v1/projects/lung/audit", params={"limit": 200}).json()
    downloads = [e for e in events if e["action"] == "archive.download.started"]
    assert downloads and downloads[0]["target"] == f"file:{file_id}" and downloads[0]["details"]["basis"] == "owner"
    assert "dataset" not in downloads[0]["details"]  # a plain project file: in no dataset
    # shares: released dataset into bob's project, only once the owner opens external sharing
    ds = c.post("/api/v1/projects/lung/datasets", json={"title": "D", "files": [file_id]}).json()
    # a read of the project's own file names the project's dataset that holds it (as a share's read does)
    assert c.get(f"/api/v1/files/{file_id}/content").status_code == 200
    events = c.get("/api/v1/projects/lung/audit", params={"limit": 200}).json()
    named = [e["details"] for e in events if e["action"] == "archive.download.started" and "dataset" in e["details"]]
    assert [(d["basis"], d["dataset"]) for d in named] == [("owner", ds["id"])]
    c.post(f"/api/v1/datasets/{ds['id']}/versions/1/release")
    refused = c.post(f"/api/v1/datasets/{ds['id']}/shares", json={"project": "other"})
    assert refused.status_code == 403
    c.put("/api/v1/projects/lung/settings/external_sharing", json={"value": True})
    assert c.post(f"/api/v1/datasets/{ds['id']}/shares", json={"project": "other"}).status_code == 204
    assert bob.get(f"/api/v1/datasets/{ds['id']}").json()["shared_into_mine"] is True
    assert bob.get(f"/api/v1/files/{file_id}").status_code == 200
    assert bob.get(f"/api/v1/files/{file_id}/content").status_code == 403  # bob's project keeps downloads locked
    # plaintext is bytes leaving the hub too: bob's own token on his machine is refused while his project
    # keeps downloads locked (only a workspace's token, from the workspace, reads it; test_plaintext_rule.py)
    locked_plain = bob.get(f"/api/v1/files/{file_id}/plaintext")
    assert locked_plain.status_code == 403 and "read it in a workspace" in locked_plain.json()["detail"]
    # once bob (PI of "other") opens downloads there, the same read is a download, audited as one
    assert bob.put("/api/v1/projects/other/settings/download_allowed", json={"value": True}).status_code == 200
    assert bob.get(f"/api/v1/files/{file_id}/plaintext").content == data
    with hub.sessions() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.target == f"file:{file_id}",
                                                    AuditEvent.action.like("archive.download.%"))
                           .order_by(AuditEvent.seq)).all()
    assert [(e.action, e.outcome, e.details.get("allowed_as")) for e in events
            if e.details.get("mode") == "plaintext" and not e.action.endswith(("completed", "aborted"))] == [
        ("archive.download.refused", "denied", None), ("archive.download.started", "ok", "download")]
    # revocation takes effect on the next request
    assert c.delete(f"/api/v1/datasets/{ds['id']}/shares/other").status_code == 204
    assert bob.get(f"/api/v1/files/{file_id}/plaintext").status_code == 404
    with hub.sessions() as s:
        other = s.scalar(select(Project).where(Project.slug == "other"))
        assert other.used_bytes == 0  # sharing never counts against the receiving project


def _plaintext_routes(c: httpx.Client, url: str, token: str, file_id: str, name: str) -> dict[str, object]:
    """Every way a member's API token gets a file's plaintext out of the hub: the plaintext route, DRS (the
    method offered, its access URL, then that URL) and fsspec ``via="plaintext"``; what each answered."""
    from strongroom.fs import StrongroomFileSystem

    out: dict[str, object] = {"plaintext": c.get(f"/api/v1/files/{file_id}/plaintext").status_code}
    methods = c.get(f"/ga4gh/drs/v1/objects/{file_id}").json()["access_methods"]
    out["drs offers plaintext"] = "plaintext" in [m["access_id"] for m in methods]
    access = c.get(f"/ga4gh/drs/v1/objects/{file_id}/access/plaintext")
    out["drs access"] = access.status_code
    if access.status_code == 200:
        out["drs access"] = c.get(access.json()["url"]).status_code
    fs = StrongroomFileSystem(url=url, token=token, via="plaintext", skip_instance_cache=True)
    try:
        fs.cat(f"lung/files/{name}")
        out["fsspec"] = "read"
    except PermissionError as exc:
        assert "read it in a workspace" in str(exc)
        out["fsspec"] = "refused"
    return out


def test_plaintext_leaves_only_as_a_download_or_from_its_workspace(world):
    """The download lock covers plaintext: a member's own API token (from anywhere, here loopback) reads
    decrypted bytes only when the project allows downloads, and that read is audited as a download; a
    workspace's own token reads them from the workspace's address only — the same token used from any other
    address (copied onto a laptop) is refused, as is a stopped workspace's. DRS offers the plaintext method
    exactly when it would work."""
    from strongroom.identity import service as identity
    from strongroom.workspaces.models import RUNNING, STOPPED, Workspace

    hub, c, url = world["hub"], world["http"], world["url"]
    data = os.urandom(70_000)
    file_id = _raw_upload(c, b"".join(c4gh.encrypt_stream([data], world["hub_public"])), "p/scan.bin")
    _drain(hub)
    assert c.put("/api/v1/projects/lung/settings/download_allowed", json={"value": False}).status_code == 200
    refused = c.get(f"/api/v1/files/{file_id}/plaintext")
    assert refused.status_code == 403 and refused.json()["detail"] == (
        "downloads are locked for this project: read it in a workspace, or its PI can open "
        "'Download to researchers' own machines'")
    locked = {"plaintext": 403, "drs offers plaintext": False, "drs access": 403, "fsspec": "refused"}
    assert _plaintext_routes(c, url, world["tokens"]["alice"], file_id, "p/scan.bin") == locked
    assert c.put("/api/v1/projects/lung/settings/download_allowed", json={"value": True}).status_code == 200
    opened = {"plaintext": 200, "drs offers plaintext": True, "drs access": 200, "fsspec": "read"}
    assert _plaintext_routes(c, url, world["tokens"]["alice"], file_id, "p/scan.bin") == opened
    assert c.get(f"/api/v1/files/{file_id}/plaintext").content == data

    # a workspace's token: a live workspace of alice's in lung, unisolated (its kernel talks from loopback)
    with transaction(hub.sessions) as s:
        lung_id = s.scalar(select(Project.id).where(Project.slug == "lung"))
        token, secret = identity.create_project_token(s, Actor.system("t"), world["alice"].user, project_id=lung_id,
                                                      name="workspace", scopes=["data:read", "data:write",
                                                                                "projects:read"], minutes=5)
        ws = Workspace(project_id=lung_id, user_id=world["alice"].user.id, launcher="local", isolation="none",
                       state=RUNNING, token_prefix=token.prefix)
        s.add(ws)
        s.flush()
        ws_id = ws.id
    assert c.put("/api/v1/projects/lung/settings/download_allowed", json={"value": False}).status_code == 200
    w = httpx.Client(base_url=url, headers=bearer(secret), timeout=60)
    assert _plaintext_routes(w, url, secret, file_id, "p/scan.bin") == opened
    # the same token, the workspace now in a network namespace: loopback is not its address any more
    with transaction(hub.sessions) as s:
        s.get(Workspace, ws_id).isolation, s.get(Workspace, ws_id).slot = "namespace", 3
    assert _plaintext_routes(w, url, secret, file_id, "p/scan.bin") == locked
    with transaction(hub.sessions) as s:
        s.get(Workspace, ws_id).isolation, s.get(Workspace, ws_id).slot = "none", None
        s.get(Workspace, ws_id).state = STOPPED
    assert w.get(f"/api/v1/files/{file_id}/plaintext").status_code == 403
    with hub.sessions() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.target == f"file:{file_id}",
                                                    AuditEvent.action.in_(("archive.download.started",
                                                                           "archive.download.refused")))
                           .order_by(AuditEvent.seq)).all()
    plain = [(e.action, e.details.get("allowed_as"), e.details["credential"]) for e in events
             if e.details.get("mode") == "plaintext"]
    me, its = plain[0][2], f"token:{token.prefix}"
    assert set(plain) == {("archive.download.refused", None, me), ("archive.download.started", "download", me),
                          ("archive.download.started", f"workspace:{ws_id}", its),
                          ("archive.download.refused", None, its)}
    assert plain[-1] == ("archive.download.refused", None, its)  # the stopped workspace's


def test_workspace_token_uploads_but_manages_nothing(world):
    """A workspace's token saves results back as files; it cannot create, release or share datasets, publish,
    or change the project's settings."""
    from strongroom.identity import service as identity

    hub, c, url = world["hub"], world["http"], world["url"]
    file_id = _raw_upload(c, b"".join(c4gh.encrypt_stream([b"x" * 100], world["hub_public"])), "in.bin")
    _drain(hub)
    ds = c.post("/api/v1/projects/lung/datasets", json={"title": "D", "files": [file_id]}).json()
    with transaction(hub.sessions) as s:
        lung_id = s.scalar(select(Project.id).where(Project.slug == "lung"))
        _, secret = identity.create_project_token(s, Actor.system("t"), world["alice"].user, project_id=lung_id,
                                                  name="workspace", scopes=["data:read", "data:write",
                                                                            "projects:read"], minutes=5)
    w = httpx.Client(base_url=url, headers=bearer(secret), timeout=60)
    saved = _raw_upload(w, b"".join(c4gh.encrypt_stream([b"result"], world["hub_public"])), "results/r.csv")
    _drain(hub)
    assert _file(hub, saved).state == "ready"
    for method, path, body in (
            ("POST", "/api/v1/projects/lung/datasets", {"title": "E", "files": [file_id]}),
            ("POST", f"/api/v1/datasets/{ds['id']}/versions/1/release", None),
            ("POST", f"/api/v1/datasets/{ds['id']}/shares", {"project": "other"}),
            ("POST", f"/api/v1/datasets/{ds['id']}/catalog/publish", None),
            ("PUT", "/api/v1/projects/lung/settings/download_allowed", {"value": True})):
        r = w.request(method, path, json=body)
        assert r.status_code == 403, (path, r.status_code, r.text)
    assert w.post("/api/v1/projects/lung/datasets", json={"title": "E", "files": [file_id]}).json()["detail"] \
        .startswith("a workspace's token may upload files into its project, nothing more")
    assert c.get(f"/api/v1/datasets/{ds['id']}").json()["versions"][0]["state"] == "draft"


def test_versions_are_immutable_once_released(world):
    hub, c = world["hub"], world["http"]
    ids = [_raw_upload(c, b"".join(c4gh.encrypt_stream([os.urandom(10 + i)], world["hub_public"])), f"{i}.bin")
           for i in range(4)]
    _drain(hub)
    ds = c.post("/api/v1/projects/lung/datasets", json={"title": "V", "files": ids[:2]}).json()
    assert c.post(f"/api/v1/datasets/{ds['id']}/versions/1/release").status_code == 200
    assert c.post(f"/api/v1/datasets/{ds['id']}/versions/1/release").status_code == 409
    v2 = c.post(f"/api/v1/datasets/{ds['id']}/draft", json={"add": ids[2:], "remove": ids[:1]}).json()
    assert v2["number"] == 2 and v2["state"] == "draft" and v2["file_count"] == 3
    v1_files = c.get(f"/api/v1/datasets/{ds['id']}/versions/1/files").json()["files"]
    assert sorted(f["id"] for f in v1_files) == sorted(ids[:2])  # v1 untouched
    page1 = c.get(f"/api/v1/datasets/{ds['id']}/versions/2/files", params={"limit": 2}).json()
    page2 = c.get(f"/api/v1/datasets/{ds['id']}/versions/2/files",
                  params={"limit": 2, "after": page1["next_after"]}).json()
    assert [f["id"] for f in page1["files"] + page2["files"]] == sorted(ids[1:])
    assert c.post(f"/api/v1/datasets/{ds['id']}/draft", json={"add": ["SRF-NOPE"]}).status_code == 422
    assert c.post(f"/api/v1/datasets/{ds['id']}/versions/2/release").json()["state"] == "released"
    assert c.post(f"/api/v1/datasets/{ds['id']}/versions/1/deprecate").json()["state"] == "deprecated"


def test_drs_objects_bundles_and_bulk(world):
    hub, c = world["hub"], world["http"]
    data = os.urandom(5000)
    file_id = _raw_upload(c, b"".join(c4gh.encrypt_stream([data], world["hub_public"])), "x/y.dcm")
    _drain(hub)
    info = c.get("/ga4gh/drs/v1/service-info").json()
    assert info["type"] == {"group": "org.ga4gh", "artifact": "drs", "version": "1.5.0"}
    obj = c.get(f"/ga4gh/drs/v1/objects/{file_id}").json()
    assert obj["id"] == file_id and obj["size"] == 5000 and obj["self_uri"].startswith("drs://")
    assert {"type": "sha-256", "checksum": hashlib.sha256(data).hexdigest()} in obj["checksums"]
    access = c.get(f"/ga4gh/drs/v1/objects/{file_id}/access/crypt4gh").json()
    # the URL pins the key the crypt4gh method's declared size is for, and carries no placeholder headers
    assert f"/api/v1/files/{file_id}/content?key=" in access["url"] and "headers" not in access
    assert c.get(access["url"]).status_code == 200
    ds = c.post("/api/v1/projects/lung/datasets", json={"title": "B", "files": [file_id]}).json()
    c.post(f"/api/v1/datasets/{ds['id']}/versions/1/release")
    bundle = c.get(f"/ga4gh/drs/v1/objects/{ds['id']}").json()
    assert [x["id"] for x in bundle["contents"]] == [file_id]
    bulk = c.post("/ga4gh/drs/v1/objects", json={"bulk_object_ids": [file_id, "SRF-MISSING"]}).json()
    assert bulk["summary"] == {"requested": 2, "resolved": 1, "unresolved": 1}
    assert c.get("/ga4gh/drs/v1/objects/SRF-MISSING").status_code == 404


def test_key_rotation_rewrites_headers_only(world, tmp_path):
    from strongroom.archive.backend import storage_for
    from strongroom.archive.keys import rotate

    hub, c = world["hub"], world["http"]
    data = os.urandom(150_000)
    file_id = _raw_upload(c, b"".join(c4gh.encrypt_stream([data], world["hub_public"])), "r.bin")
    _drain(hub)
    before = _file(hub, file_id)
    storage = storage_for(hub)
    body_before = storage.open_reader(before.body_key).read()
    list(rotate(hub, Actor.system("test")))
    after = _file(hub, file_id)
    assert after.header != before.header and after.header_key != before.header_key
    assert storage.open_reader(after.body_key).read() == body_before  # body never touched
    new_public = c4gh.parse_public_key(c.get("/api/v1/archive/public-key").text)
    assert new_public != world["hub_public"]
    got = c.get(f"/api/v1/files/{file_id}/content")
    assert _reference_decrypt(got.content, world["user_key"].secret) == data


def _download_events(hub, file_id: str) -> list:
    from strongroom.audit import service as audit

    with hub.sessions() as s:
        return [e for e in reversed(audit.query(s, action_prefix="archive.download.", limit=500))
                if e.target == f"file:{file_id}"]


def _wait_for(predicate, timeout: float = 30.0):
    """Poll until the server has written the end-of-download event (it does so after the last byte)."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return found


def test_download_events_say_completed_failed_or_aborted(world, tmp_path, backend):
    """A download is "started" before its first byte and "completed", "failed" (with the reason) or
    "aborted" once its body ends; a storage failure mid-response is no longer logged as a download."""
    hub, c = world["hub"], world["http"]
    data = os.urandom(24 * 1024 * 1024)  # larger than the socket buffers: a disconnect is noticed mid-body
    file_id = _raw_upload(c, b"".join(c4gh.encrypt_stream([data], world["hub_public"])), "big.bin")
    _drain(hub)

    got = c.get(f"/api/v1/files/{file_id}/content")
    assert got.status_code == 200
    done = _wait_for(lambda: [e for e in _download_events(hub, file_id) if e.action != "archive.download.started"])
    assert [e.action for e in done] == ["archive.download.completed"] and done[0].outcome == "ok"
    assert done[0].details["bytes_sent"] == len(got.content) and done[0].details["started_seq"] > 0

    # the client goes away after the first chunk
    with c.stream("GET", f"/api/v1/files/{file_id}/plaintext") as r:
        assert r.status_code == 200
        next(r.iter_bytes())
    ended = _wait_for(lambda: [e for e in _download_events(hub, file_id)[2:]
                               if e.action != "archive.download.started"])
    assert ended[0].action == "archive.download.aborted" and ended[0].details["mode"] == "plaintext"
    assert 0 < ended[0].details["bytes_sent"] < len(data)

    # the stored body breaks: gone from storage after the response was authorised
    storage_for(hub).delete(_file(hub, file_id).body_key)
    with pytest.raises(httpx.HTTPError), c.stream("GET", f"/api/v1/files/{file_id}/content") as r:
        assert r.status_code == 200  # the headers left before the storage was read
        for _ in r.iter_bytes():
            pass
    failed = _wait_for(lambda: [e for e in _download_events(hub, file_id)[4:]
                                if e.action != "archive.download.started"])
    assert failed[0].action == "archive.download.failed" and failed[0].outcome == "failed"
    assert failed[0].details["reason"] and failed[0].details["bytes_sent"] < failed[0].details["bytes_expected"]
    actions = [e.action for e in _download_events(hub, file_id)]
    assert actions.count("archive.download.started") == 3 and "archive.file.downloaded" not in actions
    # the owner's access report counts completed downloads only
    ds = c.post("/api/v1/projects/lung/datasets", json={"title": "Big", "files": [file_id]}).json()
    report = c.get(f"/api/v1/datasets/{ds['id']}/access-report")
    assert report.status_code == 200, report.text
    assert report.json()["downloads"] == {"events": 1, "users": 1}


def test_browser_download_is_audited_to_its_end(app, world):
    """The web route serves the same audited stream as the API."""
    hub, c = world["hub"], world["http"]
    data = os.urandom(5000)
    file_id = _raw_upload(c, b"".join(c4gh.encrypt_stream([data], world["hub_public"])), "w.bin")
    _drain(hub)
    page = web_client(app, hub, world["alice"]).get(f"/files/{file_id}/download")
    assert page.status_code == 200
    assert [e.action for e in _download_events(hub, file_id)] == ["archive.download.started",
                                                                  "archive.download.completed"]


# -- the data page's API calls and the web downloads (issue 10) ------------------------------------
def _page_client(world):
    """alice's browser: her session cookie, and the CSRF token her pages carry."""
    from strongroom.deps import SESSION_COOKIE, csrf_token_for

    web = web_client(world["app"], world["hub"], world["alice"])
    csrf = csrf_token_for(world["hub"].secret, session_cookie=web.cookies.get(SESSION_COOKIE))
    return web, csrf


@pytest.fixture
def page_world(world, app):
    return {**world, "app": app}


def test_upload_api_takes_a_page_session_only_with_its_csrf_token(page_world, tmp_path):
    world, hub = page_world, page_world["hub"]
    web, csrf = _page_client(world)
    data = os.urandom(4 * SEG + 11)
    header_source = tmp_path / "scan.dcm"
    header_source.write_bytes(data)
    session_key, seed = os.urandom(32), os.urandom(32)
    source = SealedSource(header_source, c4gh.make_header([session_key], world["hub_public"], None, seed=seed),
                          session_key, seed)
    new = {"path": "a/scan.dcm", "size": source.size}
    # deny by default: no CSRF header, a wrong one, another site, or no session at all
    assert web.post("/api/v1/projects/lung/uploads", json=new).status_code == 403
    assert web.post("/api/v1/projects/lung/uploads", json=new, headers={"X-CSRF-Token": "x" * 64}).status_code == 403
    assert web.post("/api/v1/projects/lung/uploads", json=new, headers={
        "X-CSRF-Token": csrf, "Origin": "https://evil.example"}).status_code == 403
    with TestClient(world["app"], base_url="http://127.0.0.1:8000") as anonymous:
        assert anonymous.post("/api/v1/projects/lung/uploads", json=new,
                              headers={"X-CSRF-Token": csrf}).status_code == 401
    # only the upload routes take a session: the rest of the API still wants a token
    assert web.get("/api/v1/projects/lung/files", headers={"X-CSRF-Token": csrf}).status_code == 401
    with hub.sessions() as s:
        assert s.scalar(select(ArchiveFile).where(ArchiveFile.path == "a/scan.dcm")) is None

    headers = {"X-CSRF-Token": csrf}
    r = web.post("/api/v1/projects/lung/uploads", json=new, headers=headers)
    assert r.status_code == 201, r.text
    upload = r.json()
    part_size = upload["part_size"]
    for n in range(1, -(-source.size // part_size) + 1):
        start = (n - 1) * part_size
        r = web.put(f"/api/v1/uploads/{upload['id']}/parts/{n}", content=source.read(start, min(start + part_size,
                    source.size)), headers={**headers, "Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text
    assert len(web.get(f"/api/v1/uploads/{upload['id']}", headers=headers).json()["parts"]) == n
    r = web.post(f"/api/v1/uploads/{upload['id']}/complete", json={}, headers=headers)
    assert r.status_code == 200 and r.json()["state"] == "uploaded", r.text
    _drain(hub)
    f = _file(hub, upload["id"])
    assert f.state == "ready" and f.plaintext_sha256 == hashlib.sha256(data).hexdigest(), f.failure


def _archived(world, tmp_path, paths: dict[str, bytes]) -> dict[str, str]:
    ids = {}
    for path, data in paths.items():
        src = tmp_path / f"src-{len(ids)}"
        src.write_bytes(data)
        ids[path] = _upload(world, src, tmp_path, name=path)["id"]
    _drain(world["hub"])
    return ids


def test_web_downloads_keep_folders_and_download_all_streams_a_zip(page_world, tmp_path):
    import zipfile

    from strongroom.audit import service as audit

    world, hub, c = page_world, page_world["hub"], page_world["http"]
    contents = {"a/slice-001.png": os.urandom(70_000), "b/slice-001.png": os.urandom(5),
                "c/held.png": os.urandom(100)}
    ids = _archived(world, tmp_path, contents)
    ds = c.post("/api/v1/projects/lung/datasets", json={"title": "Slices", "files": list(ids.values())}).json()
    assert c.post(f"/api/v1/datasets/{ds['id']}/versions/1/release").status_code == 200
    with transaction(hub.sessions) as s:  # quarantined after release: it must vanish from every download
        s.get(ArchiveFile, ids["c/held.png"]).hold = "quarantine"
    web, _ = _page_client(world)

    r = web.get(f"/files/{ids['a/slice-001.png']}/download")
    assert r.status_code == 200 and "filename=\"a__slice-001.png.c4gh\"" in r.headers["content-disposition"]
    assert web.get(f"/files/{ids['c/held.png']}/download").status_code == 404
    page = web.get(f"/datasets/{ds['id']}")
    assert "Download all (ZIP)" in page.text and "crypt4gh decrypt --sk" in page.text
    assert "strongroom download " + ds["id"] + " --decrypt" in page.text

    with web.stream("GET", f"/datasets/{ds['id']}/versions/1/download.zip") as r:
        assert r.status_code == 200, r.read()
        assert "content-length" not in r.headers  # streamed as it is made
        assert r.headers["content-type"] == "application/zip"
        body = b"".join(r.iter_bytes())
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == ["a/slice-001.png.c4gh", "b/slice-001.png.c4gh"]
    for info in archive.infolist():
        assert info.compress_type == zipfile.ZIP_STORED
        plain = _reference_decrypt(archive.read(info), world["user_key"].secret)
        assert plain == contents[info.filename.removesuffix(".c4gh")]
    with hub.sessions() as s:
        started = audit.query(s, action_prefix="archive.download.started")
        completed = audit.query(s, action_prefix="archive.download.completed")
    zipped = [e for e in started if e.details.get("archive") == f"{ds['id']}-v1.zip"]
    assert sorted(e.target for e in zipped) == sorted(f"file:{ids[p]}" for p in ("a/slice-001.png",
                                                                                   "b/slice-001.png"))
    done = [e for e in completed if e.details.get("archive")]
    assert sorted(e.target for e in done) == sorted(e.target for e in zipped)
    assert all(e.details["bytes_sent"] == e.details["bytes_expected"] for e in done)
    assert f"file:{ids['c/held.png']}" not in {e.target for e in started}

    # a project whose downloads are closed gives no ZIP either
    assert c.put("/api/v1/projects/lung/settings/download_allowed", json={"value": False}).status_code == 200
    assert web.get(f"/datasets/{ds['id']}/versions/1/download.zip").status_code == 403
