"""Dataset sync between two hubs on loopback (separate databases, separate SeaweedFS buckets, their own keys):
A pushes a released dataset to B (headers re-encrypted to B's archive key, bodies byte for byte, checked at B
against A's signed manifest); a researcher approved at A downloads the mirror's files at B with A's visa and
decrypts them with the reference crypt4gh tool; a tampered body or manifest is refused with its reason and
nothing is published; a push whose worker is SIGKILLed mid-way resumes without sending a body twice."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

import crypt4gh.lib
import httpx
import pytest
from sqlalchemy import func, select

from conftest import Person, bearer, token_for
from strongroom.access.models import Entitlement
from strongroom.app import create_app
from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.models import ArchiveFile, Dataset, DatasetVersion
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.config import Settings
from strongroom.db import transaction
from strongroom.errors import Conflict, Forbidden
from strongroom.federation import manifest, notices, service, sync
from strongroom.federation import web as federation_web
from strongroom.federation.models import Incoming, IncomingFile, Mirror, Notice, SyncFile, SyncRun
from strongroom.hub import Hub
from strongroom.identity import service as identity
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from support.live import free_port, serving
from support.seaweed import seaweedfs  # noqa: F401 - session fixture

pytestmark = pytest.mark.slow
SEG = 65536
END = dt.date.today() + dt.timedelta(days=365)
NOW = dt.datetime.now(dt.UTC)


def _storage(s3, name: str) -> dict:
    return {"kind": "s3", "endpoint_url": s3.endpoint_url, "bucket": name, "access_key": s3.access_key,
            "secret_key": s3.secret_key, "region": s3.region}


def _bucket(tag: str, tmp_path) -> str:
    return f"fed{tag}{os.getpid()}{tmp_path.name[-6:]}".lower().replace("_", "")


@pytest.fixture
def database_url(tmp_path, sqlite_template) -> str:  # SQLite for both hubs: the sync is storage and HTTP work
    shutil.copy(sqlite_template, tmp_path / "a.db")
    return f"sqlite:///{tmp_path / 'a.db'}"


@pytest.fixture
def settings(database_url, tmp_path, seaweedfs) -> Settings:  # noqa: F811
    port = free_port()
    s = Settings(var_dir=tmp_path / "a" / "var", database_url=database_url, secret_key="test-secret-" + "a" * 32,
                 base_url=f"http://127.0.0.1:{port}", site_name="Hub A", log_json=True, jobs={"embedded": False},
                 security={"cookie_secure": False},
                 archive={"part_size": 80 * SEG, "storage": _storage(seaweedfs, _bucket("a", tmp_path))})
    s._port = port  # test plumbing
    return s


@dataclass
class Hubs:
    a: object
    b: object
    app_b: object
    url_a: str
    url_b: str
    dataset: str
    files: dict  # A's file id → plaintext
    alice: httpx.Client


def _person(hub, username: str) -> Person:
    with transaction(hub.sessions) as s:
        user = identity.create_local_user(s, Actor.system("t"), username=username,
                                          password="correct horse battery staple", display_name=username.title(),
                                          email=f"{username}@example.org")
    return Person(user=user, username=username, seed=None)


def _identity(url: str) -> dict:
    r = httpx.get(f"{url}/api/v1/federation/hub", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _register(hub, name: str, url: str) -> None:
    me = _identity(url)
    with transaction(hub.sessions) as s:
        service.register_peer(s, hub.settings, Actor.system("cli:operator"), {
            "name": name, **{k: me[k] for k in ("base_url", "signing_key", "archive_key", "visa_issuer", "jwks_url")}})


@pytest.fixture
def hubs(app, hub, settings, people, sqlite_template, tmp_path, seaweedfs):  # noqa: F811
    shutil.copy(sqlite_template, tmp_path / "b.db")
    port_b = free_port()
    settings_b = Settings(var_dir=tmp_path / "b" / "var", database_url=f"sqlite:///{tmp_path / 'b.db'}",
                          secret_key="test-secret-" + "b" * 32, base_url=f"http://127.0.0.1:{port_b}",
                          site_name="Hub B", log_json=True, jobs={"embedded": False},
                          security={"cookie_secure": False},
                          archive={"part_size": 80 * SEG, "storage": _storage(seaweedfs, _bucket("b", tmp_path))})
    app_b = create_app(settings_b, run_jobs=False)
    alice = people("alice")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="alice", ethics_ref="E1",
                                end_date=END)
    with serving(app, settings._port) as url_a, serving(app_b, port_b) as url_b:
        a = httpx.Client(base_url=url_a, headers=bearer(token_for(hub, alice)), timeout=60)
        hub_public = c4gh.parse_public_key(a.get("/api/v1/archive/public-key").text)
        files, ids = {}, []
        for i, size in enumerate((3 * SEG + 123, 70_000, 5)):
            data = os.urandom(size)
            blob = b"".join(c4gh.encrypt_stream([data], hub_public))
            up = a.post("/api/v1/projects/lung/uploads", json={"path": f"scans/s{i}.dcm", "size": len(blob)}).json()
            assert a.put(f"/api/v1/uploads/{up['id']}/parts/1", content=blob).status_code == 200
            assert a.post(f"/api/v1/uploads/{up['id']}/complete").status_code == 200
            files[up["id"]] = data
            ids.append(up["id"])
        Runner(hub, lease_seconds=10, name="test").run_until_idle()
        ds = a.post("/api/v1/projects/lung/datasets", json={"title": "Chest CT", "description": "Lungs",
                                                             "files": ids}).json()
        assert a.post(f"/api/v1/datasets/{ds['id']}/versions/1/release").status_code == 200
        assert a.put(f"/api/v1/datasets/{ds['id']}/access-policy",
                     json={"applicant_download": True}).status_code == 204
        with transaction(hub.sessions) as s:  # only a dataset published in the catalogue is pushed
            s.add(CatalogEntry(dataset_id=ds["id"], slug="chest-ct", title="Chest CT", description="Lungs",
                               created_by=alice.user.id, published=True, published_at=NOW))
        _register(hub, "hub-b", url_b)
        _register(app_b.state.hub, "hub-a", url_a)
        yield Hubs(hub, app_b.state.hub, app_b, url_a, url_b, ds["id"], files, a)


def _events(hub, prefix: str) -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action.like(prefix + "%"))
                              .order_by(AuditEvent.seq)))


def _push(h: Hubs, version: int | None = None) -> dict:
    with transaction(h.a.sessions) as s:
        run_id = sync.start_sync(s, h.a.settings, Actor.system("cli:operator"), h.dataset, "hub-b", version).id
    seen = []
    result = sync.run_sync(h.a, run_id, lambda *p: seen.append(p))
    assert seen[-1][0] == seen[-1][1] == len(h.files)  # progress reached every file
    return result


def _release_version_2(h: Hubs, path: str) -> str:
    """A new file uploaded at A and released as version 2 of the dataset (beside version 1's files)."""
    data = os.urandom(40_000)
    public = c4gh.parse_public_key(h.alice.get("/api/v1/archive/public-key").text)
    blob = b"".join(c4gh.encrypt_stream([data], public))
    up = h.alice.post("/api/v1/projects/lung/uploads", json={"path": path, "size": len(blob)}).json()
    assert h.alice.put(f"/api/v1/uploads/{up['id']}/parts/1", content=blob).status_code == 200
    assert h.alice.post(f"/api/v1/uploads/{up['id']}/complete").status_code == 200
    Runner(h.a, lease_seconds=10, name="test").run_until_idle()
    assert h.alice.post(f"/api/v1/datasets/{h.dataset}/draft", json={"add": [up["id"]]}).status_code == 200
    assert h.alice.post(f"/api/v1/datasets/{h.dataset}/versions/2/release").status_code == 200
    h.files[up["id"]] = data
    return up["id"]


def _decrypt(data: bytes, secret: bytes) -> bytes:
    out = io.BytesIO()
    crypt4gh.lib.decrypt([(0, secret, None)], io.BytesIO(data), out)
    return out.getvalue()


def test_a_dataset_synced_to_b_is_downloaded_there_with_a_visa_from_a(hubs):
    h = hubs
    result = _push(h)
    assert result["state"] == "done" and result["files"] == 3
    with h.b.sessions() as s:
        mirror = s.scalar(select(Mirror))
        assert mirror.origin_dataset_id == h.dataset and mirror.origin_url == f"{h.url_a}/datasets/{h.dataset}"
        local = mirror.dataset_id
        ds = s.get(Dataset, local)
        assert ds.title == "Chest CT"
        [version] = s.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == local))
        assert (version.number, version.state, version.file_count) == (1, "released", 3)
        mirrored = {f.path: f for f in s.scalars(select(ArchiveFile).where(ArchiveFile.project_id == ds.project_id))}
    with h.a.sessions() as s:
        origin = {f.path: f for f in s.scalars(select(ArchiveFile).where(ArchiveFile.id.in_(list(h.files))))}
    assert set(mirrored) == set(origin)
    store_a, store_b = storage_for(h.a), storage_for(h.b)
    for path, f in mirrored.items():  # bodies byte for byte, headers re-encrypted to B's key
        o = origin[path]
        assert (f.body_sha256, f.plaintext_sha256, f.body_size) == (o.body_sha256, o.plaintext_sha256, o.body_size)
        with store_a.open_reader(o.body_key) as ra, store_b.open_reader(f.body_key) as rb:
            assert ra.read() == rb.read()
        assert f.header != o.header and f.header_key != o.header_key
    # the landing page at B names the origin and links to the dataset's page there
    page = httpx.get(f"{result['url']}")
    assert page.status_code == 200, page.text
    assert "Mirror of hub-a — access decided by hub-a" in page.text
    assert f'href="{h.url_a}/datasets/{h.dataset}"' in page.text

    # carol is approved at A (an entitlement there) and has an account at B, where she is in no project
    carol_a = _person(h.a, "carol")
    with transaction(h.a.sessions) as s:
        s.add(Entitlement(user_id=carol_a.user.id, dataset_id=h.dataset, version=None,
                          starts_at=NOW - dt.timedelta(days=1), ends_at=NOW + dt.timedelta(days=30)))
    visas = httpx.get(f"{h.url_a}/api/v1/me/passport", headers=bearer(token_for(h.a, carol_a))).json()
    passport = {"X-GA4GH-Passport": visas["passport"]}
    carol_b = _person(h.b, "carol")
    b = httpx.Client(base_url=h.url_b, headers=bearer(token_for(h.b, carol_b)), timeout=60)
    key = c4gh.generate_keypair()
    assert b.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(
        key.public).decode()}).status_code == 201
    some = next(iter(mirrored.values()))
    assert b.get(f"/api/v1/files/{some.id}/content").status_code == 404  # no visa: nothing there
    for path, f in mirrored.items():
        r = b.get(f"/api/v1/files/{f.id}/content", headers=passport)
        assert r.status_code == 200, r.text
        plain = _decrypt(r.content, key.secret)
        assert hashlib.sha256(plain).hexdigest() == origin[path].plaintext_sha256
        assert plain == h.files[origin[path].id]
    started = [e for e in _events(h.b, "archive.download.started")]
    assert {e.details["basis"] for e in started} == {"visa"}
    assert all(e.details["grant"].startswith(f"{h.url_a} {h.url_a}/datasets/{h.dataset}") for e in started)
    # A's visas open only what is mirrored from A: a dataset of B's own stays closed to them
    # (and a re-push is idempotent: nothing is sent again, nothing duplicated)
    again = _push(h)
    assert again["state"] == "done" and again["dataset"] == local
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ArchiveFile)) == 3
        assert s.scalar(select(func.count()).select_from(DatasetVersion)) == 1
    bodies = [e for e in _events(h.b, "federation.sync.received") if e.details["what"] == "body"]
    assert len(bodies) == 3
    # audited on both sides
    assert [e.action for e in _events(h.a, "federation.sync.")] == [
        "federation.sync.started", "federation.sync.completed"] * 2
    assert [e.action for e in _events(h.b, "federation.sync.published")] == ["federation.sync.published"] * 2


def test_a_tampered_body_is_refused_with_a_reason_and_nothing_published(hubs):
    h = hubs
    with h.a.sessions() as s:
        victim = s.get(ArchiveFile, max(h.files, key=lambda k: len(h.files[k])))
    store = storage_for(h.a)
    with store.open_reader(victim.body_key) as r:
        body = bytearray(r.read())
    body[100] ^= 0x01
    store.put_bytes(victim.body_key, bytes(body))
    with pytest.raises(sync.SyncRefused, match="does not match the manifest"):
        _push(h)
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Mirror)) == 0
        assert s.scalar(select(func.count()).select_from(ArchiveFile)) == 0
        inc = s.scalar(select(Incoming))
        assert inc.state == "refused" and "SHA-256" in inc.reason and victim.id in inc.reason
    with h.a.sessions() as s:
        run = s.scalar(select(SyncRun))
        assert run.state == "refused" and "does not match the manifest" in run.error
    refused = _events(h.b, "federation.sync.refused")
    assert refused and refused[-1].details["what"] == "body" and refused[-1].actor == "peer:hub-a"


def test_a_tampered_manifest_is_refused(hubs):
    h = hubs
    with transaction(h.a.sessions) as s:
        run = sync.start_sync(s, h.a.settings, Actor.system("t"), h.dataset, "hub-b")
        peer = service.peer_by_name(s, "hub-b")
        doc, _ = sync.build_manifest(h.a, s, run, peer)
    signature = sync.signing.sign_document(service.hub_key(h.a.settings).private, manifest.canonical(doc))
    doc["dataset"]["title"] = "Something else"  # changed after signing
    r = sync._post(h.a, h.url_b, f"{sync.SYNC_PATH}/manifest", {"manifest": doc, "signature": signature})
    assert r.status_code == 422 and "signature does not verify" in r.json()["detail"]
    # a manifest signed properly but addressed to another hub is refused too
    doc["dataset"]["title"] = "Chest CT"
    doc["recipient_key_id"] = "0" * 32
    signature = sync.signing.sign_document(service.hub_key(h.a.settings).private, manifest.canonical(doc))
    r = sync._post(h.a, h.url_b, f"{sync.SYNC_PATH}/manifest", {"manifest": doc, "signature": signature})
    assert r.status_code == 422 and "addressed to another hub" in r.json()["detail"]
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Incoming)) == 0
    assert [e.details["what"] for e in _events(h.b, "federation.sync.refused")] == ["manifest", "manifest"]


def test_a_push_builds_the_same_manifest_after_a_rotation_of_the_hub_secret(hubs):
    """A push resumed after `strongroom admin rotate-secret` sends the manifest the peer already holds (the peer
    refuses a different one): the headers' seeds do not depend on the hub secret."""
    from pydantic import SecretStr

    h = hubs
    rotated = Hub.from_settings(h.a.settings.model_copy(update={"secret_key": SecretStr("another-" + "s" * 40)}))
    with transaction(h.a.sessions) as s:
        run = sync.start_sync(s, h.a.settings, Actor.system("t"), h.dataset, "hub-b")
        peer = service.peer_by_name(s, "hub-b")
        before, _ = sync.build_manifest(h.a, s, run, peer)
        after, _ = sync.build_manifest(rotated, s, run, peer)
    assert manifest.canonical(before) == manifest.canonical(after) and before["files"]


def test_a_peer_that_rotated_its_archive_key_is_repinned_and_pushes_reach_it_again(hubs, tmp_path):
    """B rotates its archive key: A, still pinning the old one, addresses new files to a key B no longer opens,
    and B refuses them. A's operator pins B's new identity (`strongroom federation repin`): B keeps its name,
    directions and mirror, and the next push arrives. Pinning the same identity again changes nothing."""
    from strongroom.archive import keys as archive_keys

    h = hubs
    assert _push(h)["state"] == "done"
    for _ in archive_keys.rotate(h.b, Actor.system("cli:operator")):
        pass
    _release_version_2(h, "scans/new.dcm")
    with pytest.raises(sync.SyncRefused, match="not encrypted to this hub's archive key"):
        _push(h, version=2)

    identity = tmp_path / "hub-b.json"
    identity.write_text(json.dumps(_identity(h.url_b)))
    repinned = _cli(h.a.settings, "repin", "hub-b", "--identity", str(identity))
    out, err = repinned.communicate(timeout=120)
    assert repinned.returncode == 0, err
    assert "now pinned" in out
    again = _cli(h.a.settings, "repin", "hub-b", "--identity", str(identity))
    out, err = again.communicate(timeout=120)
    assert again.returncode == 2 and "nothing changed" in err
    with h.a.sessions() as s:
        peer = service.peer_by_name(s, "hub-b")
        assert peer.outbound and peer.inbound and peer.active
    [event] = _events(h.a, "federation.peer.repinned")
    assert event.details["changed"] == ["archive_key"] and event.actor.startswith("cli:")
    assert event.details["archive_key"]["before"] != event.details["archive_key"]["after"]

    assert _push(h, version=2)["state"] == "done"
    with h.b.sessions() as s:
        [mirror] = s.scalars(select(Mirror)).all()  # the same mirror, now with version 2
        numbers = sorted(v.number for v in s.scalars(select(DatasetVersion).where(
            DatasetVersion.dataset_id == mirror.dataset_id)))
    assert numbers == [1, 2]


def _cli(settings: Settings, *args: str) -> subprocess.Popen:
    st = settings.archive.storage

    def plain(value) -> str:
        return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)

    env = {**os.environ, "STRONGROOM_DATABASE_URL": settings.effective_database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(), "STRONGROOM_VAR_DIR": str(settings.var_dir),
           "STRONGROOM_BASE_URL": settings.base_url, "STRONGROOM_SITE_NAME": settings.site_name, "COLUMNS": "200",
           "STRONGROOM_ARCHIVE__STORAGE__KIND": "s3", "STRONGROOM_ARCHIVE__STORAGE__ENDPOINT_URL": st.endpoint_url,
           "STRONGROOM_ARCHIVE__STORAGE__BUCKET": st.bucket, "STRONGROOM_ARCHIVE__STORAGE__REGION": st.region,
           "STRONGROOM_ARCHIVE__STORAGE__ACCESS_KEY": plain(st.access_key),
           "STRONGROOM_ARCHIVE__STORAGE__SECRET_KEY": plain(st.secret_key),
           "STRONGROOM_FEDERATION__SYNC_LEASE_SECONDS": "3"}  # a killed worker's lease lapses soon
    return subprocess.Popen([sys.executable, "-m", "strongroom.cli", "federation", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_push_resumes_without_sending_a_body_twice(hubs, monkeypatch):
    h = hubs
    order = sorted(h.files)
    entered, release = threading.Event(), threading.Event()
    real = sync.store_body

    def held(hub, peer_id, sync_id, file_id, *args, **kw):  # B holds the second body until the worker is killed
        if file_id == order[1] and not release.is_set():
            entered.set()
            release.wait(120)
            raise RuntimeError("the sender is gone")
        return real(hub, peer_id, sync_id, file_id, *args, **kw)

    monkeypatch.setattr(sync, "store_body", held)
    worker = _cli(h.a.settings, "sync", h.dataset, "--peer", "hub-b")
    try:
        assert entered.wait(120), worker.communicate(timeout=5)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
    finally:
        release.set()
    assert worker.returncode == -signal.SIGKILL
    with h.a.sessions() as s:
        run = s.scalar(select(SyncRun))
        assert run.state == "running"
        assert list(s.scalars(select(SyncFile.file_id))) == [order[0]]  # the checkpoint of the first body
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Mirror)) == 0  # nothing published yet
    again = _cli(h.a.settings, "sync", h.dataset, "--peer", "hub-b")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, out + err
    assert "pushed 3 files" in out
    with h.a.sessions() as s:
        assert [r.state for r in s.scalars(select(SyncRun))] == ["done"]  # the same push, resumed
        assert sorted(s.scalars(select(SyncFile.file_id))) == order
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(IncomingFile)) == 3
        assert s.scalar(select(func.count()).select_from(ArchiveFile)) == 3
    bodies = [e.details["file"] for e in _events(h.b, "federation.sync.received") if e.details["what"] == "body"]
    assert sorted(bodies) == order  # each body stored once


def _carol_with_a_visa(h: Hubs):
    """carol, approved at A (an entitlement there), with an account and a key at B: a client and her passport."""
    carol_a = _person(h.a, "carol")
    with transaction(h.a.sessions) as s:
        s.add(Entitlement(user_id=carol_a.user.id, dataset_id=h.dataset, version=None,
                          starts_at=NOW - dt.timedelta(days=1), ends_at=NOW + dt.timedelta(days=30)))
    visas = httpx.get(f"{h.url_a}/api/v1/me/passport", headers=bearer(token_for(h.a, carol_a))).json()
    b = httpx.Client(base_url=h.url_b, headers=bearer(token_for(h.b, _person(h.b, "carol"))), timeout=60)
    key = c4gh.generate_keypair()
    assert b.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(
        key.public).decode()}).status_code == 201
    return b, {"X-GA4GH-Passport": visas["passport"]}


def _run_notices_job(hub) -> dict:
    from strongroom.jobs import service as jobs
    from strongroom.jobs.models import Job

    with transaction(hub.sessions) as s:
        job_id = jobs.enqueue(s, "federation.notices", {}).id
    Runner(hub, lease_seconds=10, name="test").run_until_idle()
    with hub.sessions() as s:
        job = s.get(Job, job_id)
        assert job.status == "done", job.error
        return job.result


def test_a_withdrawal_at_the_origin_reaches_the_mirror_and_closes_it(hubs):
    """A deprecates version 1, then withdraws the dataset: signed notices pushed by the jobs mechanism (re-sent
    while B does not answer) mark B's mirror version deprecated, then the mirror withdrawn: its page is a
    tombstone naming A, and A's visas no longer open its files."""
    from strongroom.catalog import entries

    h = hubs
    result = _push(h)
    with h.b.sessions() as s:
        mirror = s.scalar(select(Mirror))
        some = s.scalar(select(ArchiveFile).where(ArchiveFile.body_key.like("mirrors/%")).limit(1))
    b, passport = _carol_with_a_visa(h)
    assert b.get(f"/api/v1/files/{some.id}/content", headers=passport).status_code == 200

    assert h.alice.post(f"/api/v1/datasets/{h.dataset}/versions/1/deprecate").status_code == 200
    assert _run_notices_job(h.a) == {"queued": 1, "sent": 1, "failed": 0}
    with h.b.sessions() as s:
        assert s.scalar(select(DatasetVersion.state).where(DatasetVersion.dataset_id == mirror.dataset_id)) \
            == "deprecated"
    assert b.get(f"/api/v1/files/{some.id}/content", headers=passport).status_code == 200  # deprecated, not gone

    # the origin withdraws its (published) catalogue entry while B does not answer: the notice waits
    with transaction(h.a.sessions) as s:
        ds = s.get(Dataset, h.dataset)
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == ds.id))
        assert entries.withdraw(s, Actor.system("t"), ds, entry, "consent was withdrawn")
        peer = service.peer_by_name(s, "hub-b")
        peer.base_url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    assert _run_notices_job(h.a) == {"queued": 1, "sent": 0, "failed": 1}
    with transaction(h.a.sessions) as s:
        pending = s.scalar(select(Notice).where(Notice.kind == "withdrawn"))
        assert pending.acked_at is None and pending.attempts == 1 and "no answer" in pending.last_error
        service.peer_by_name(s, "hub-b").base_url = h.url_b
    assert _run_notices_job(h.a) == {"queued": 0, "sent": 1, "failed": 0}  # re-sent, acknowledged
    assert _run_notices_job(h.a) == {"queued": 0, "sent": 0, "failed": 0}  # nothing left to tell

    with h.b.sessions() as s:
        mirror = s.scalar(select(Mirror))
        assert mirror.withdrawn_at is not None and mirror.withdrawn_reason == "consent was withdrawn"
        assert not s.scalar(select(CatalogEntry.published).where(CatalogEntry.dataset_id == mirror.dataset_id))
    page = httpx.get(result["url"])
    assert page.status_code == 410, page.text
    assert "Withdrawn at its origin, Hub A: consent was withdrawn" in page.text
    assert "mirror of a dataset of the hub hub-a" in page.text and f'href="{h.url_a}/datasets/{h.dataset}"' in page.text
    refused = b.get(f"/api/v1/files/{some.id}/content", headers=passport)
    assert refused.status_code in (403, 404), refused.text  # A's visas open nothing here any more
    assert [e.action for e in _events(h.b, "federation.mirror.")] == ["federation.mirror.deprecated",
                                                                       "federation.mirror.withdrawn"]
    notices_sent = [(e.outcome, e.details["what"]) for e in _events(h.a, "federation.exchange.sent")
                    if e.details.get("what", "").startswith("notice:")]
    assert notices_sent == [("ok", "notice:deprecated"), ("failed", "notice:withdrawn"), ("ok", "notice:withdrawn")]
    # the notice is signed like every hub-to-hub call: one addressed to another hub is refused
    other = {"format": notices.FORMAT, "origin": h.url_a, "recipient_key_id": "0" * 32, "dataset": h.dataset,
             "kind": "withdrawn", "version": 0, "reason": ""}
    r = sync._post(h.a, h.url_b, notices.NOTICE_PATH, other)
    assert r.status_code == 422 and "addressed to another hub" in r.json()["detail"]


def test_a_retention_deletion_at_the_origin_deletes_the_mirrors_copies(hubs):
    """A deletes version 1 at the end of its retention period (shredded, purged, certified): the certificate
    names B as holding a copy; the notices job tells B, which destroys its copies' headers and purges their
    bodies from its own storage (checked gone) before acknowledging, closes the mirror (a tombstone, A's visas
    open nothing) and audits it; the certificate signed afterwards shows B's confirmation."""
    from strongroom.retention import deletion
    from strongroom.retention.models import APPROVED, Deletion

    h = hubs
    pushed = _push(h)
    with transaction(h.a.sessions) as s:  # a draft again (no withdrawal notice): this test is about deletion
        s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == h.dataset)).published = False
    with h.b.sessions() as s:
        mirror = s.scalar(select(Mirror))
        copies = {f.id: f.body_key
                  for f in s.scalars(select(ArchiveFile).where(ArchiveFile.body_key.like("mirrors/%")))}
    assert len(copies) == len(h.files)
    storage_b = storage_for(h.b)
    assert all(storage_b.exists(key) for key in copies.values())
    b, passport = _carol_with_a_visa(h)
    assert b.get(f"/api/v1/files/{next(iter(copies))}/content", headers=passport).status_code == 200

    def delete_version_1() -> str:
        ops = _person(h.a, "ops").user.id
        with transaction(h.a.sessions) as s:
            version = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == h.dataset,
                                                            DatasetVersion.number == 1))
            d = Deletion(version_id=version.id, dataset_id=h.dataset, number=1, state=APPROVED, reason="retention",
                         requested_by=ops, approved_by=ops, approved_at=NOW)
            s.add(d)
            s.flush()
            deletion_id = d.id
        assert deletion.run(h.a, deletion_id) == "certified"
        with h.a.sessions() as s:
            return s.get(Deletion, deletion_id).certificate

    certificate = json.loads(delete_version_1())["certificate"]
    assert certificate["mirrored_to"] == [{"peer": "hub-b", "hub": h.url_b, "deletion_confirmed_at": None}]
    assert _run_notices_job(h.a) == {"queued": 1, "sent": 1, "failed": 0}
    assert _run_notices_job(h.a) == {"queued": 0, "sent": 0, "failed": 0}  # told once

    with h.b.sessions() as s:
        assert s.scalar(select(DatasetVersion.state).where(DatasetVersion.dataset_id == mirror.dataset_id)) \
            == "deleted"
        for file_id in copies:
            f = s.get(ArchiveFile, file_id)
            assert (f.state, f.header, f.body_key) == ("deleted", None, None)
        assert s.scalar(select(Mirror)).withdrawn_at is not None
    assert not any(storage_b.exists(key) for key in copies.values())  # purged from B's bucket
    refused = b.get(f"/api/v1/files/{next(iter(copies))}/content", headers=passport)
    assert refused.status_code in (403, 404, 410), refused.text
    page = httpx.get(pushed["url"])
    assert page.status_code == 410 and "Deleted at its origin, Hub A" in page.text
    [event] = _events(h.b, "federation.mirror.deleted")
    assert event.details["files_deleted"] == len(h.files) and event.details["closed"] is True
    # A's record of the confirmation: a certificate signed now names it
    with h.a.sessions() as s:
        d = s.scalar(select(Deletion))
        confirmed = deletion.certificate_document(s, h.a.settings, d, NOW)["mirrored_to"]
    assert confirmed[0]["deletion_confirmed_at"] is not None
    # applying the notice again changes nothing
    again = {"format": notices.FORMAT, "origin": h.url_a, "origin_name": "Hub A", "dataset": h.dataset,
             "recipient_key_id": service.hub_key(h.b.settings).key_id, "kind": "deleted", "version": 1, "reason": ""}
    r = sync._post(h.a, h.url_b, notices.NOTICE_PATH, again)
    assert r.status_code == 200, r.text
    assert len(_events(h.b, "federation.mirror.deleted")) == 1


def test_a_mirror_is_never_pushed_on_to_another_hub(hubs):
    """B holds A's dataset as a mirror. Neither B's operators (the API with fresh MFA, the CLI's system actor) nor
    anyone else can push it to another hub: A's data owner chose which hubs hold a copy, and only A's withdrawal and
    deletion notices reach them. B's page for the mirror offers no push."""
    h = hubs
    _push(h)
    with h.b.sessions() as s:
        local = s.scalar(select(Mirror)).dataset_id
    with transaction(h.b.sessions) as s:
        ops = identity.create_local_user(s, Actor.system("t"), username="ops", password="correct horse battery staple",
                                         display_name="Ops", email="ops@example.org", is_admin=True)
    token = token_for(h.b, Person(user=ops, username="ops", seed=None))
    r = httpx.post(f"{h.url_b}/api/v1/federation/syncs", json={"dataset": local, "peer": "hub-a"},
                   headers=bearer(token), timeout=30)
    assert r.status_code == 403 and "only its origin pushes it" in r.text, r.text
    with transaction(h.b.sessions) as s, pytest.raises(Forbidden, match="a mirror of a dataset at hub-a"):
        sync.start_sync(s, h.b.settings, Actor.system("cli:operator"), local, "hub-a")
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(SyncRun)) == 0
        user = s.get(type(ops), ops.id)
        principal = identity.session_principal(
            type("S", (), {"mfa_at": dt.datetime.now(dt.UTC), "id_hash": "test0000"})(), user, "127.0.0.1")
        assert sync.may_push(s, principal, s.get(Dataset, local))  # an operator...
        assert federation_web.dataset_push_link(s, principal, s.get(Dataset, local)) == []  # ...offered no push
        with pytest.raises(Forbidden):
            federation_web._pushable(s, principal, local)
    # still a mirror once B forgets the peer (its mirror rows go with it): the dataset is never B's own
    with transaction(h.b.sessions) as s:
        service.remove_peer(s, h.b.settings, Actor.system("cli:operator"), "hub-a")
    with transaction(h.b.sessions) as s, pytest.raises(Forbidden, match="a mirror of a dataset at hub-a"):
        sync.start_sync(s, h.b.settings, Actor.system("cli:operator"), local, "hub-a")


def test_two_pushes_of_the_same_dataset_to_the_same_peer_do_not_race(hubs, monkeypatch):
    """Started at the same moment: one push (the database's unique active key). Run by two workers at once: the
    second finds the lease held and stops; every body is stored once."""
    h = hubs
    barrier, ids = threading.Barrier(2), []

    def start() -> None:
        barrier.wait(30)
        with transaction(h.a.sessions) as s:
            ids.append(sync.start_sync(s, h.a.settings, Actor.system("t"), h.dataset, "hub-b").id)

    starters = [threading.Thread(target=start) for _ in range(2)]
    for t in starters:
        t.start()
    for t in starters:
        t.join(60)
    assert len(ids) == 2 and ids[0] == ids[1]
    with h.a.sessions() as s:
        assert s.scalar(select(func.count()).select_from(SyncRun)) == 1
    with transaction(h.a.sessions) as s, pytest.raises(Conflict, match="not finished yet"):
        sync.start_sync(s, h.a.settings, Actor.system("t"), h.dataset, "hub-b", 1)  # another version meanwhile

    order = sorted(h.files)
    entered, release = threading.Event(), threading.Event()
    real = sync.store_body

    def held(hub, peer_id, sync_id, file_id, *args, **kw):  # B holds the first body until told
        if file_id == order[0]:
            entered.set()
            release.wait(120)
        return real(hub, peer_id, sync_id, file_id, *args, **kw)

    monkeypatch.setattr(sync, "store_body", held)
    first: list[dict] = []
    worker = threading.Thread(target=lambda: first.append(sync.run_sync(h.a, ids[0])))
    worker.start()
    try:
        assert entered.wait(120)
        with pytest.raises(sync.SyncBusy):
            sync.run_sync(h.a, ids[0])  # a second worker on the same push
    finally:
        release.set()
        worker.join(300)
    assert first and first[0]["state"] == "done"
    with h.a.sessions() as s:
        run = s.get(SyncRun, ids[0])
        assert (run.state, run.active_key, run.lease_owner) == ("done", None, None)
    bodies = [e.details["file"] for e in _events(h.b, "federation.sync.received") if e.details["what"] == "body"]
    assert sorted(bodies) == order  # each body stored once
    with transaction(h.a.sessions) as s:  # finished: a new push may start
        assert sync.start_sync(s, h.a.settings, Actor.system("t"), h.dataset, "hub-b", 1).id != ids[0]


def test_bodies_go_s3_to_s3_when_both_hubs_allow_it(hubs, seaweedfs):  # noqa: F811
    """A offers presigned GET URLs of its bodies, B fetches them from A's object store (never through A's API
    server), verifying each SHA-256 as it streams; with B not allowing it, the same push falls back to PUT."""
    from urllib.parse import urlsplit

    h = hubs
    h.a.settings.federation.presign_bodies = True
    h.b.settings.federation.fetch_from_origin_storage = True
    h.b.settings.federation.fetch_hosts = []  # not yet allowed: pushed as before
    with transaction(h.a.sessions) as s:
        first = sync.start_sync(s, h.a.settings, Actor.system("t"), h.dataset, "hub-b", 1).id
    assert sync.run_sync(h.a, first)["state"] == "done"
    via = [e.details["via"] for e in _events(h.b, "federation.sync.received") if e.details["what"] == "body"]
    assert via == ["push"] * 3
    # a second dataset, B now allowing A's object store: straight from there
    with transaction(h.b.sessions) as s:
        s.execute(Mirror.__table__.delete())
    with transaction(h.b.sessions) as s:
        from strongroom.federation.models import MirrorFile

        s.execute(MirrorFile.__table__.delete())  # B forgets it mirrored them: every body travels again
    h.b.settings.federation.fetch_hosts = [urlsplit(seaweedfs.endpoint_url).netloc]
    with transaction(h.a.sessions) as s:
        second = sync.start_sync(s, h.a.settings, Actor.system("t"), h.dataset, "hub-b").id
    assert sync.run_sync(h.a, second)["state"] == "done"
    fetched = [e for e in _events(h.b, "federation.sync.received") if e.details["what"] == "body"][3:]
    assert [e.details["via"] for e in fetched] == ["origin-storage"] * 3
    assert sorted(e.details["file"] for e in fetched) == sorted(h.files)
    with h.b.sessions() as s:
        mirror = s.scalar(select(Mirror))
        files = list(s.scalars(select(ArchiveFile).where(ArchiveFile.body_key.like(f"mirrors/hub-a/{second}/%"))))
    assert mirror is not None and len(files) == 3
    store_a, store_b = storage_for(h.a), storage_for(h.b)
    with h.a.sessions() as s:
        origin = {f.body_sha256: f for f in s.scalars(select(ArchiveFile).where(ArchiveFile.id.in_(list(h.files))))}
    for f in files:
        with store_a.open_reader(origin[f.body_sha256].body_key) as ra, store_b.open_reader(f.body_key) as rb:
            assert ra.read() == rb.read()


def test_a_visa_for_one_version_opens_only_that_versions_files_of_a_mirror(hubs):
    """A's visa naming version 1 (carol's entitlement at A is to version 1 only) opens, at B, the mirror's
    version-1 files, and not the file that arrived with version 2: a mirror's version alias is read as a local
    version URL is."""
    h = hubs
    assert _push(h)["state"] == "done"
    _release_version_2(h, "scans/later.dcm")
    assert _push(h, version=2)["state"] == "done"

    carol_a = _person(h.a, "carol")
    with transaction(h.a.sessions) as s:
        s.add(Entitlement(user_id=carol_a.user.id, dataset_id=h.dataset, version=1,
                          starts_at=NOW - dt.timedelta(days=1), ends_at=NOW + dt.timedelta(days=30)))
    visas = httpx.get(f"{h.url_a}/api/v1/me/passport", headers=bearer(token_for(h.a, carol_a))).json()
    passport = {"X-GA4GH-Passport": visas["passport"]}
    b = httpx.Client(base_url=h.url_b, headers=bearer(token_for(h.b, _person(h.b, "carol"))), timeout=60)
    key = c4gh.generate_keypair()
    assert b.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(
        key.public).decode()}).status_code == 201
    with h.b.sessions() as s:
        mirror = s.scalar(select(Mirror))
        paths = {f.id: f.path for f in s.scalars(select(ArchiveFile).where(
            ArchiveFile.project_id == s.get(Dataset, mirror.dataset_id).project_id))}
    later = [i for i, p in paths.items() if p == "scans/later.dcm"]
    assert len(later) == 1 and len(paths) == 4
    for file_id in paths:
        r = b.get(f"/api/v1/files/{file_id}/content", headers=passport)
        assert r.status_code == (404 if file_id in later else 200), (paths[file_id], r.status_code, r.text[:200])
