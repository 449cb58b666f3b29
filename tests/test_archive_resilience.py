"""Crashes and outages: a worker killed mid-ingest, the CLI killed mid-upload and mid-download,
the S3 server stopped mid-upload. Nothing acknowledged is lost; nothing is duplicated or corrupt."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from conftest import bearer, token_for
from helpers import wait_until
from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key, hub_keys
from strongroom.archive.models import UPLOADED, ArchiveFile
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.jobs import service as jobs
from strongroom.jobs.models import Job
from strongroom.projects import service as projects
from strongroom.projects.models import Project
from support.live import free_port, serving
from support.seaweed import seaweedfs  # noqa: F401

END = dt.date.today() + dt.timedelta(days=365)
SEG = c4gh.CIPHER_SEGMENT_SIZE


def _env(settings, tmp_path: Path, token: str | None = None, url: str | None = None) -> dict[str, str]:
    env = {**os.environ, "STRONGROOM_DATABASE_URL": settings.effective_database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(),
           "STRONGROOM_VAR_DIR": str(settings.var_dir), "STRONGROOM_JOBS__LEASE_SECONDS": "2",
           "STRONGROOM_JOBS__POLL_SECONDS": "0.05", "STRONGROOM_ARCHIVE__STORAGE__ROOT": str(tmp_path / "objects"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "120"}
    if token:
        env |= {"STRONGROOM_TOKEN": token, "STRONGROOM_URL": url or settings.base_url,
                "STRONGROOM_CLI_CONFIG": str(tmp_path / "cli.json")}
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "strongroom.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(predicate, timeout: float = 60.0, step: float = 0.005):
    return wait_until(predicate, timeout, step)


@pytest.fixture
def settings(settings, tmp_path):
    port = free_port()
    archive = settings.archive.model_copy(update={
        "part_size": 3 * SEG,
        "storage": settings.archive.storage.model_validate({"kind": "local", "root": str(tmp_path / "objects")})})
    s = settings.model_copy(update={"base_url": f"http://127.0.0.1:{port}", "archive": archive})
    s._port = port
    return s


@pytest.fixture
def lung(hub, people):
    alice = people("alice")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="alice", ethics_ref="E1",
                                end_date=END)
    ensure_key(hub)
    return alice


def test_worker_killed_mid_ingest_loses_nothing(hub, settings, lung, tmp_path):
    """A 256 MiB file lands in the inbox; the worker ingesting it is SIGKILLed while it writes the body;
    another worker takes the job over and the file ends archived once, with the right checksums."""
    storage = storage_for(hub)
    plaintext_digest = hashlib.sha256()
    size = 256 * 1024 * 1024
    with hub.sessions() as s:
        hub_public = hub_keys(hub, s).current[1].public
        project = s.scalar(select(Project).where(Project.slug == "lung"))
    chunk = os.urandom(1024 * 1024)

    def chunks():
        for _ in range(size // len(chunk)):
            plaintext_digest.update(chunk)
            yield chunk

    inbox_key = f"inbox/{project.id}/SRF-KILLTEST01"
    with storage.open_writer(inbox_key) as writer:
        total = 0
        for piece in c4gh.encrypt_stream(chunks(), hub_public):
            writer.write(piece)
            total += len(piece)
        writer.commit()
    with transaction(hub.sessions) as s:
        s.add(ArchiveFile(id="SRF-KILLTEST01", project_id=project.id, uploader_id=lung.user.id, path="big.bin",
                          state=UPLOADED, upload_size=total, reserved_bytes=total, inbox_key=inbox_key,
                          declared_sha256=plaintext_digest.hexdigest()))
        s.get(Project, project.id).reserved_bytes = total
        job_id = jobs.enqueue(s, "archive.ingest", {"file_id": "SRF-KILLTEST01"}).id
    staging = Path(tmp_path / "objects" / ".staging")
    env = _env(settings, tmp_path)
    first = _cli("worker", "--name", "first", env=env)
    try:
        _wait(lambda: staging.exists() and any(p.stat().st_size > 10_000_000 for p in staging.rglob("*")
                                                if p.is_file()))
        first.send_signal(signal.SIGKILL)  # mid-way through writing the archived body
        first.wait(10)
        with hub.sessions() as s:
            assert s.get(ArchiveFile, "SRF-KILLTEST01").state == UPLOADED
            assert not storage.exists(f"archive/{project.id}/SRF-KILLTEST01")  # no half-written object
        second = _cli("worker", "--name", "second", env=env)
        try:
            _wait(lambda: _job_status(hub, job_id) == "done", timeout=120, step=0.2)
        finally:  # no worker left running: it would schedule jobs into the next test's tables
            second.terminate()
            try:
                second.wait(60)
            except subprocess.TimeoutExpired:
                second.kill()
                second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    with hub.sessions() as s:
        f = s.get(ArchiveFile, "SRF-KILLTEST01")
        project = s.get(Project, project.id)
        job = s.get(Job, job_id)
        assert f.state == "ready" and f.plaintext_sha256 == plaintext_digest.hexdigest()
        assert job.attempts == 2 and job.locked_by == "second"
        assert project.used_bytes == f.body_size and project.reserved_bytes == 0  # counted once
    assert storage.size(f.body_key) == f.body_size and not storage.exists(inbox_key)
    assert list(storage.iter_keys(f"archive/{project.id}/")) == [f.body_key]


def _job_status(hub, job_id: int) -> str:
    with hub.sessions() as s:
        return s.get(Job, job_id).status


def test_cli_killed_mid_upload_and_mid_download_resumes(app, hub, settings, lung, tmp_path):
    token = token_for(hub, lung)
    data = os.urandom(24 * 1024 * 1024)
    src = tmp_path / "series" / "ct.bin"
    src.parent.mkdir()
    src.write_bytes(data)
    with serving(app, settings._port) as url:
        env = _env(settings, tmp_path, token, url)
        c = httpx.Client(base_url=url, headers=bearer(token), timeout=60)
        assert c.put("/api/v1/projects/lung/settings/download_allowed", json={"value": True}).status_code == 200
        wrong = _cli("upload", str(src.parent), "--project", "nope", env=env)  # a typo, not a transfer to resume
        out, err = wrong.communicate(timeout=120)
        assert wrong.returncode == 1 and "cannot upload into 'nope'" in err and "resume" not in err, err
        assert c.get("/api/v1/projects/lung/files").json() == []

        upload = _cli("upload", str(src.parent), "--project", "lung", "--parallel", "1", env=env)

        def parts_received() -> int:
            uploads = c.get("/api/v1/projects/lung/files", params={"state": "receiving"}).json()
            return len(c.get(f"/api/v1/uploads/{uploads[0]['id']}").json()["parts"]) if uploads else 0

        _wait(lambda: parts_received() >= 15, step=0.02)
        upload.send_signal(signal.SIGKILL)
        upload.wait(10)
        have = parts_received()
        assert 15 <= have < -(-len(data) // (3 * SEG))  # really interrupted
        again = _cli("upload", str(src.parent), "--project", "lung", env=env)
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, out + err
        files = c.get("/api/v1/projects/lung/files").json()
        assert len(files) == 1 and files[0]["path"] == "series/ct.bin"  # resumed, not duplicated
        Runner_drain(hub)
        record = c.get(f"/api/v1/files/{files[0]['id']}").json()
        assert record["state"] == "ready" and record["plaintext_sha256"] == hashlib.sha256(data).hexdigest()

        # download: register a key, start, kill mid-file, resume with --decrypt (verifies the checksum)
        keypair = c4gh.generate_keypair()
        c4gh.write_private_key(tmp_path / "me.sec", keypair, "pass phrase")
        c.post("/api/v1/me/keys", json={"name": "me", "public_key": c4gh.public_key_file(keypair.public).decode()})
        out_dir = tmp_path / "dl"
        down = _cli("download", record["id"], "-o", str(out_dir), env=env)
        partial = out_dir / "series" / "ct.bin.c4gh.part"
        _wait(lambda: partial.exists() and partial.stat().st_size > 0, step=0.001)
        down.send_signal(signal.SIGKILL)
        down.wait(10)
        kept = partial.stat().st_size if partial.exists() else 0
        resumed = _cli("download", record["id"], "-o", str(out_dir), "--decrypt", "--secret-key",
                       str(tmp_path / "me.sec"), env=env | {"STRONGROOM_KEY_PASSPHRASE": "pass phrase"})
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, out + err
        assert (out_dir / "series" / "ct.bin").read_bytes() == data
        events = c.get("/api/v1/projects/lung/audit", params={"limit": 50}).json()
        downloads = [e for e in events if e["action"] == "archive.download.started"]
        if 0 < kept < len(data):  # the second request asked only for the rest
            assert downloads[0]["details"].get("bytes", "").startswith(f"{kept}-")


def Runner_drain(hub) -> None:
    from strongroom.jobs.runner import Runner

    Runner(hub, lease_seconds=10, name="test").run_until_idle()


@pytest.mark.slow
def test_s3_outage_mid_upload_is_a_clear_error_and_a_retry_succeeds(app, hub, settings, lung, seaweedfs, tmp_path):  # noqa: F811
    s3 = seaweedfs
    storage = {"kind": "s3", "endpoint_url": s3.endpoint_url, "bucket": f"outage{os.getpid()}",
               "access_key": s3.access_key, "secret_key": s3.secret_key, "region": s3.region}
    from strongroom.app import create_app

    archive = settings.archive.model_copy(update={"part_size": 80 * SEG,
                                                  "storage": settings.archive.storage.model_validate(storage)})
    app = create_app(settings.model_copy(update={"archive": archive}), run_jobs=False)
    hub = app.state.hub
    token = token_for(hub, lung)
    data = os.urandom(12 * 1024 * 1024)
    with hub.sessions() as s:
        hub_public = hub_keys(hub, s).current[1].public
    blob = b"".join(c4gh.encrypt_stream([data], hub_public))
    part = 80 * SEG
    assert storage_for(hub).__class__.__name__ == "S3Storage"
    with serving(app, settings._port) as url:
        c = httpx.Client(base_url=url, headers=bearer(token), timeout=120)
        up = c.post("/api/v1/projects/lung/uploads", json={"path": "o.bin", "size": len(blob)}).json()
        assert c.put(f"/api/v1/uploads/{up['id']}/parts/1", content=blob[:part]).status_code == 200
        with s3.outage():
            r = c.put(f"/api/v1/uploads/{up['id']}/parts/2", content=blob[part:2 * part])
            assert r.status_code == 503 and r.json()["code"] == "storage-unavailable"
        for number, start in ((2, part), (3, 2 * part)):
            assert c.put(f"/api/v1/uploads/{up['id']}/parts/{number}",
                         content=blob[start:start + part]).status_code == 200
        assert c.post(f"/api/v1/uploads/{up['id']}/complete",
                      json={"sha256": hashlib.sha256(data).hexdigest()}).status_code == 200
        Runner_drain(hub)
        f = c.get(f"/api/v1/files/{up['id']}").json()
        assert f["state"] == "ready" and f["plaintext_sha256"] == hashlib.sha256(data).hexdigest()
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ArchiveFile)) == 1
    assert json.dumps(f)  # the record is well-formed


def _small_tree(root: Path, count: int, size: int) -> dict[str, bytes]:
    root.mkdir(parents=True)
    files = {}
    for i in range(count):
        data = os.urandom(size + 97 * i)
        (root / f"s{i:03d}.txt").write_bytes(data)
        files[f"{root.name}/s{i:03d}.txt"] = data
    return files


def _project_files(c: httpx.Client) -> list[dict]:
    return c.get("/api/v1/projects/lung/files", params={"limit": 1000}).json()


def test_cli_sends_small_files_in_bundles_and_a_lost_answer_makes_no_duplicate(app, hub, settings, lung,
                                                                               tmp_path):
    from strongroom.archive import transfer
    from strongroom.hubclient import HubClient

    token = token_for(hub, lung)
    small = _small_tree(tmp_path / "run", 30, 2048)
    big = os.urandom(2 * 1024 * 1024 + 5)  # over 1 MiB: sent in parts, beside the bundles
    (tmp_path / "run" / "big.bin").write_bytes(big)
    with serving(app, settings._port) as url:
        env = _env(settings, tmp_path, token, url)
        c = httpx.Client(base_url=url, headers=bearer(token), timeout=60)
        # A first attempt that reached the hub, whose answer was lost: the client died before it could forget the
        # bundle's key, so the key waits in its resume file for the next run.
        client = HubClient(url, token)
        hub_public = c4gh.parse_public_key(c.get("/api/v1/archive/public-key").text)
        plans = [p for p in transfer.plan_uploads([tmp_path / "run"]) if p.size <= transfer.SMALL_FILE_BYTES]
        header_size = len(c4gh.make_header([b"\0" * 32], hub_public, None))
        [group] = transfer.bundle_groups(plans, header_size)
        state_dir = tmp_path / "cache" / "strongroom" / "uploads"
        state_path = transfer.bundle_state_path(state_dir, client, "lung", group)
        first = transfer.upload_bundle(client, "lung", group, hub_public, state_dir=state_dir)
        assert len(first) == 30 and not state_path.exists()
        transfer._write_private_json(state_path, {"key": _key_of(hub, first)})

        run = _cli("upload", str(tmp_path / "run"), "--project", "lung", env=env)
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, out + err
        assert "30 small file(s) in 1 bundle(s)" in out, out
        files = _project_files(c)
        assert sorted(f["path"] for f in files) == sorted([*small, "run/big.bin"])  # each once
        assert {f["id"] for f in files} >= {f["id"] for f in first}  # the bundle's files are the first attempt's
        assert not any(state_dir.glob("bundle-*.json"))
        Runner_drain(hub)
        for f in files:
            record = c.get(f"/api/v1/files/{f['id']}").json()
            plain = big if f["path"] == "run/big.bin" else small[f["path"]]
            assert record["state"] == "ready" and record["plaintext_sha256"] == hashlib.sha256(plain).hexdigest()
        events = c.get("/api/v1/projects/lung/audit", params={"limit": 200}).json()
        assert sum(e["action"] == "archive.upload.completed" for e in events) == 31  # nothing counted twice


def _key_of(hub, records: list[dict]) -> str:
    """The client key a bundle was stored under (its inbox object is named by it)."""
    with hub.sessions() as s:
        inbox_key = s.get(ArchiveFile, records[0]["id"]).inbox_key
    return inbox_key.rsplit("/SRB-", 1)[1]


def test_cli_splits_a_bundle_the_hub_finds_too_large(app, hub, settings, lung, tmp_path):
    token = token_for(hub, lung)
    # 12 files of ~300 KiB: one 3.6 MB bundle by the client's rule, more than this hub's limit (a part of
    # 192 KiB + 2 MiB), so it is refused before anything is stored and sent again as two halves
    small = _small_tree(tmp_path / "scans", 12, 300 * 1024)
    with serving(app, settings._port) as url:
        env = _env(settings, tmp_path, token, url)
        c = httpx.Client(base_url=url, headers=bearer(token), timeout=60)
        run = _cli("upload", str(tmp_path / "scans"), "--project", "lung", env=env)
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, out + err
        files = _project_files(c)
        assert sorted(f["path"] for f in files) == sorted(small)
        with hub.sessions() as s:
            assert len({s.get(ArchiveFile, f["id"]).inbox_key for f in files}) == 2  # two bundles
        Runner_drain(hub)
        assert all(c.get(f"/api/v1/files/{f['id']}").json()["state"] == "ready" for f in files)
