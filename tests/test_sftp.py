"""The SFTP front door (issue 13): the real OpenSSH ``sftp`` client (batch mode, pinned host key) and rclone
against ``strongroom.sftp.server`` started by the test on 127.0.0.1.

Uploads are crypt4gh-encrypted as they stream in (the test opens the archived body with the hub's keys);
downloads follow the project's download setting; other projects do not exist; a killed upload resumes with
``reput``; an upload over quota leaves nothing behind; registering a key needs a fresh second factor.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from conftest import bearer, token_for, web_client
from helpers import csrf_for
from imaging_support import make_project
from strongroom.archive import c4gh
from strongroom.archive import service as archive
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import hub_keys
from strongroom.archive.models import READY, ArchiveFile
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction, utcnow
from strongroom.identity.models import ApiToken, User, WebSession
from strongroom.identity.principal import SCOPES, Principal
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from strongroom.projects.models import Project, ProjectSetting
from strongroom.sftp import hostkeys as sftp_hostkeys
from strongroom.sftp import server as sftp_server
from strongroom.sftp import service as sftp
from strongroom.sftp.models import SftpUpload, SshKey
from support.live import free_port

pytestmark = pytest.mark.skipif(shutil.which("sftp") is None or shutil.which("rclone") is None,
                                reason="needs openssh-client and rclone (scripts/install-test-deps.sh)")


@dataclass
class Hubsftp:
    hub: Any
    port: int
    known_hosts: Path
    keys: dict[str, Path]
    tmp: Path

    def sftp(self, who: str, *commands: str, key: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``sftp -b`` with these commands as ``who``; a failing command fails the batch (exit 1)."""
        batch = self.tmp / f"batch-{uuid.uuid4().hex[:8]}"
        batch.write_text("\n".join(commands) + "\n")
        return subprocess.run(["sftp", *self.ssh_options(key or self.keys[who]), "-b", str(batch),
                               f"{who}@127.0.0.1"], capture_output=True, text=True, timeout=120)

    def ssh_options(self, key: Path) -> list[str]:
        return ["-P", str(self.port), "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "PasswordAuthentication=no", "-F", "/dev/null"]

    def rclone(self, who: str, *args: str) -> subprocess.CompletedProcess[str]:
        remote = (f":sftp,host=127.0.0.1,port={self.port},user={who},key_file={self.keys[who]},"
                  f"known_hosts_file={self.known_hosts},shell_type=none,disable_hashcheck=true:")
        argv = ["rclone", "--config", "/dev/null", "--low-level-retries", "1", "--retries", "1",
                *[a.replace("REMOTE:", remote) for a in args]]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def _ssh_key(tmp: Path, name: str) -> Path:
    path = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)],
                   check=True)
    return path


def _fresh(session, username: str) -> Principal:
    user = session.scalar(select(User).where(User.email == f"{username}@example.org"))
    return Principal(user=user, via="session", mfa_at=utcnow(), scopes=frozenset(SCOPES),
                     credential_id="test", ip="127.0.0.1")


@pytest.fixture
def world(hub, people, tmp_path: Path) -> Iterator[Hubsftp]:
    people("alice")
    people("bob")
    make_project(hub, "lung", "alice")
    make_project(hub, "heart", "bob")
    keys = {}
    for who in ("alice", "bob"):
        keys[who] = _ssh_key(tmp_path, f"{who}_key")
        with transaction(hub.sessions) as s:
            sftp.add_key(s, _fresh(s, who), (keys[who].with_suffix(".pub")).read_text(), comment=None,
                         fresh_minutes=15)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-strongroom-sftp", daemon=True)
    thread.start()
    acceptor = asyncio.run_coroutine_threadsafe(sftp_server.start(hub, "127.0.0.1", 0), loop).result(30)
    port = acceptor.sockets[0].getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {sftp_hostkeys.host_key(hub).export_public_key().decode().strip()}\n")
    try:
        yield Hubsftp(hub, port, known, keys, tmp_path)
    finally:
        async def stop() -> None:
            acceptor.close()
            await acceptor.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def _ingest(hub) -> None:
    Runner(hub, lease_seconds=10, name="test").run_until_idle()


def _archived_plaintext(hub, path: str) -> bytes:
    """The archived file's plaintext, opened the way only the hub can: its header with the hub's keys."""
    with hub.sessions() as s:
        f = s.scalar(select(ArchiveFile).where(ArchiveFile.path == path, ArchiveFile.state == READY))
        assert f is not None, f"{path} is not archived"
        secrets = hub_keys(hub, s).secrets
        header, body_key = f.header, f.body_key
    body = storage_for(hub).open_reader(body_key).read()
    import io

    return b"".join(c4gh.decrypt_stream(io.BytesIO(header + body), secrets))


def _allow_downloads(hub, slug: str, allowed: bool = True) -> None:
    with transaction(hub.sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == slug))
        row = s.get(ProjectSetting, (project.id, "download_allowed"))
        if row is None:
            s.add(ProjectSetting(project_id=project.id, key="download_allowed", value=allowed,
                                 changed_by=project.pi_id))
        else:
            row.value = allowed


def _stored_bytes(hub) -> bytes:
    """Every byte the hub's storage holds (the local backend's directory), to look for plaintext in it."""
    root = hub.settings.var_dir
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file() and p.suffix not in (".db", ".key")
                    and "sftp" not in p.parts and p.stat().st_size < 64 * 1024 * 1024)


def _events(hub, *actions: str) -> list[tuple[str, dict]]:
    with hub.sessions() as s:
        return [(e.action, e.details) for e in s.scalars(select(AuditEvent).where(AuditEvent.action.in_(actions))
                                                         .order_by(AuditEvent.seq))]


def test_upload_encrypted_download_follows_policy(world: Hubsftp) -> None:
    hub = world.hub
    marker = b"PLAINTEXT-MARKER-" + uuid.uuid4().hex.encode()
    data = marker + os.urandom(300_000) + marker
    src = world.tmp / "scan.bin"
    src.write_bytes(data)
    r = world.sftp("alice", "ls /", f"put {src} /lung/uploads/scans/scan.bin", "ls -l /lung/uploads/scans")
    assert r.returncode == 0, r.stderr
    assert "lung" in r.stdout and "heart" not in r.stdout
    assert f"{len(data)}" in r.stdout  # the size is known at once, before the ingest
    with hub.sessions() as s:
        key = s.scalar(select(SshKey).join(User, User.id == SshKey.user_id).where(User.email == "alice@example.org"))
        assert key.last_used_at is not None
    assert [d for a, d in _events(hub, "sftp.login")] != []
    _ingest(hub)
    assert _archived_plaintext(hub, "scans/scan.bin") == data
    assert marker not in _stored_bytes(hub)  # nothing in plaintext anywhere in storage

    # downloads are locked by default: permission denied, with the reason
    out = world.tmp / "back.bin"
    r = world.sftp("alice", f"get /lung/uploads/scans/scan.bin {out}")
    assert r.returncode != 0 and not out.exists()
    assert "denied" in r.stderr.lower()
    _allow_downloads(hub, "lung")
    r = world.sftp("alice", f"get /lung/uploads/scans/scan.bin {out}")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    # a resumed get (reget) reads from an offset
    out.write_bytes(data[:100_000])
    r = world.sftp("alice", f"reget /lung/uploads/scans/scan.bin {out}")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data

    actions = [a for a, _ in _events(hub, "archive.upload.started", "archive.upload.completed",
                                     "archive.file.ingested", "archive.download.refused",
                                     "archive.download.started", "archive.download.completed")]
    assert actions == ["archive.upload.started", "archive.upload.completed", "archive.file.ingested",
                       "archive.download.refused", "archive.download.started", "archive.download.completed",
                       "archive.download.started", "archive.download.completed"]
    started = _events(hub, "archive.download.started")[0][1]
    assert started["via"] == "sftp" and started["basis"] == "owner"

    # a dataset version of that file, read-only under /lung/datasets/<id>/v1/
    with transaction(hub.sessions) as s:
        principal = _fresh(s, "alice")
        f = s.scalar(select(ArchiveFile).where(ArchiveFile.path == "scans/scan.bin"))
        ds = archive.create_dataset(s, principal, projects.open_project(s, principal, "lung"), title="Scans",
                                    files=[f.id])
        dataset_id = ds.id
    out2 = world.tmp / "from-dataset.bin"
    top = f"/lung/datasets/{dataset_id}/v1"
    r = world.sftp("alice", f"ls {top}/scans", f"get {top}/scans/scan.bin {out2}", f"put {src} {top}/scans/new.bin")
    assert "scan.bin" in r.stdout and out2.read_bytes() == data
    assert r.returncode != 0 and "denied" in r.stderr.lower()  # the last command: datasets are read-only


def test_other_projects_do_not_exist_and_nothing_but_uploads(world: Hubsftp) -> None:
    hub = world.hub
    src = world.tmp / "a.txt"
    src.write_bytes(b"hello from alice\n")
    assert world.sftp("alice", f"put {src} /lung/uploads/a.txt").returncode == 0
    _ingest(hub)
    r = world.sftp("bob", "ls /")
    assert r.returncode == 0 and "heart" in r.stdout and "lung" not in r.stdout
    for command in ("ls /lung", "ls /lung/uploads", f"get /lung/uploads/a.txt {world.tmp / 'x'}"):
        r = world.sftp("bob", command)
        assert r.returncode != 0 and ("not found" in r.stderr.lower() or "no such file" in r.stderr.lower()), \
            (command, r.stderr)
    r = world.sftp("bob", f"put {src} /lung/uploads/b.txt")
    assert r.returncode != 0
    for command in (f"put {src} /a.txt", f"put {src} /lung/a.txt", f"put {src} /lung/datasets/a.txt",
                    "mkdir /lung/datasets/x", "rm /lung/uploads/a.txt", "symlink /lung/uploads/a.txt /lung/uploads/l",
                    "rename /lung/uploads/a.txt /lung/datasets/b.txt",
                    "rename /lung/uploads/a.txt /heart/uploads/b.txt", f"put {src} /lung/uploads/a.txt"):
        r = world.sftp("alice", command)
        assert r.returncode != 0, command
    assert world.sftp("bob", "rename /lung/uploads/a.txt /lung/uploads/b.txt").returncode != 0
    # chmod is accepted and has no effect
    r = world.sftp("alice", "chmod 777 /lung/uploads/a.txt", "ls -l /lung/uploads/a.txt")
    assert r.returncode == 0 and "-r--r-----" in r.stdout
    with hub.sessions() as s:
        assert s.scalar(select(ArchiveFile.path).where(ArchiveFile.state != "failed")) == "a.txt"
    # one's own upload can be renamed (rclone's .partial files), and folders made before files go in them
    r = world.sftp("alice", "rename /lung/uploads/a.txt /lung/uploads/notes/a.txt", "mkdir /lung/uploads/new",
                   "cd /lung/uploads/new", f"put {src} b.txt", "ls /lung/uploads/notes", "ls /lung/uploads/new")
    assert r.returncode == 0, r.stderr
    assert "/lung/uploads/notes/a.txt" in r.stdout and "/lung/uploads/new/b.txt" in r.stdout
    # no shell, no exec: the SFTP subsystem only
    r = subprocess.run(["ssh", *[o if o != "-P" else "-p" for o in world.ssh_options(world.keys["alice"])],
                        "alice@127.0.0.1", "echo", "shell-ran"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "shell-ran" not in r.stdout
    # an unregistered key is not let in
    stranger = _ssh_key(world.tmp, "stranger")
    r = world.sftp("alice", "ls /", key=stranger)
    assert r.returncode != 0 and "lung" not in r.stdout


def test_rclone_copy_listing_pages(world: Hubsftp) -> None:
    hub = world.hub
    folder = world.tmp / "batch"
    folder.mkdir()
    files = {f"f{i}.bin": os.urandom(1000 + i) for i in range(3)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    r = world.rclone("alice", "copy", str(folder), "REMOTE:lung/uploads/batch")
    assert r.returncode == 0, r.stderr
    _ingest(hub)
    for name, data in files.items():
        assert _archived_plaintext(hub, f"batch/{name}") == data
    # a large folder: 1 300 archived files list completely (pages of the database, 128 names per READDIR)
    with transaction(hub.sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        for i in range(1300):
            s.add(ArchiveFile(id=f"SRF-BIG{i:06d}", project_id=project.id, uploader_id=project.pi_id,
                              path=f"big/{i:05d}.dcm", state=READY, upload_size=1, plaintext_size=10 + i,
                              ingested_at=utcnow()))
    r = world.rclone("alice", "lsf", "REMOTE:lung/uploads/big")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == [f"{i:05d}.dcm" for i in range(1300)]
    r = world.sftp("alice", "ls -1 /lung/uploads/big")
    assert r.returncode == 0 and len([n for n in r.stdout.split() if n.endswith(".dcm")]) == 1300
    # rclone download, allowed
    _allow_downloads(hub, "lung")
    back = world.tmp / "back"
    r = world.rclone("alice", "copy", "REMOTE:lung/uploads/batch", str(back))
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in back.iterdir()} == files


def _kill_mid_upload(world: Hubsftp, argv: list[str]) -> None:
    """Start a client uploading; once the server has stored a part, hold it there, kill the client, let the
    server go on and wait until it has let go of the upload (events, no sleeps)."""
    stored, go_on, released = threading.Event(), threading.Event(), threading.Event()
    interrupted: list[bool] = []

    def part_stored(file_id: str, received: int) -> None:
        if not stored.is_set():
            stored.set()
            go_on.wait(60)  # hold the server here while the client is killed

    def handle_released(file_id: str, was_interrupted: bool) -> None:
        interrupted.append(was_interrupted)
        released.set()

    sftp.PART_STORED.append(part_stored)
    sftp.HANDLE_RELEASED.append(handle_released)
    try:
        client = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert stored.wait(60), "no part arrived"
        client.kill()
        client.wait(30)
        go_on.set()
        assert released.wait(60)
        assert interrupted == [True]
    finally:
        go_on.set()
        sftp.PART_STORED.remove(part_stored)
        sftp.HANDLE_RELEASED.remove(handle_released)


def test_killed_upload_resumes(world: Hubsftp) -> None:
    hub = world.hub
    data = os.urandom(20 * 1024 * 1024 + 12345)
    src = world.tmp / "big.bin"
    src.write_bytes(data)
    batch = world.tmp / "put-batch"
    batch.write_text(f"put {src} /lung/uploads/big.bin\n")
    _kill_mid_upload(world, ["sftp", *world.ssh_options(world.keys["alice"]), "-b", str(batch), "alice@127.0.0.1"])
    with hub.sessions() as s:
        up = s.scalar(select(SftpUpload))
        assert up is not None and up.completed_at is None
        stored_size = up.received  # whole parts that arrived before the client died
        assert 0 < stored_size < len(data) and stored_size % sftp.PART_PLAIN == 0
    r = world.sftp("alice", "ls -l /lung/uploads/big.bin")
    assert str(stored_size) in r.stdout  # stat reports what is stored: where to resume
    r = world.sftp("alice", f"reput {src} /lung/uploads/big.bin")
    assert r.returncode == 0, r.stderr
    _ingest(hub)
    assert hashlib.sha256(_archived_plaintext(hub, "big.bin")).digest() == hashlib.sha256(data).digest()
    resumed = _events(hub, "sftp.upload.resumed")
    assert [d["at"] for _, d in resumed] == [stored_size]
    assert [d["stored"] for _, d in _events(hub, "sftp.upload.interrupted")] == [stored_size]
    with hub.sessions() as s:
        assert s.scalar(select(Project.reserved_bytes).where(Project.slug == "lung")) == 0


def test_over_quota_refused_nothing_kept(world: Hubsftp) -> None:
    hub = world.hub
    with transaction(hub.sessions) as s:
        s.execute(update(Project).where(Project.slug == "lung").values(quota_bytes=2 * 1024 * 1024))
    small, large = world.tmp / "small.bin", world.tmp / "large.bin"
    small.write_bytes(os.urandom(3 * 1024 * 1024))  # refused when the file is closed
    large.write_bytes(os.urandom(12 * 1024 * 1024))  # refused at its first stored part
    for src in (small, large):
        r = world.sftp("alice", f"put {src} /lung/uploads/{src.name}")
        assert r.returncode != 0, r.stdout
    r = world.rclone("alice", "copyto", str(small), "REMOTE:lung/uploads/via-rclone.bin")
    assert r.returncode != 0
    assert "quota" in r.stderr.lower()
    _ingest(hub)
    with hub.sessions() as s:
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        assert (project.used_bytes, project.reserved_bytes) == (0, 0)
        assert s.scalar(select(ArchiveFile.id).where(ArchiveFile.state != "failed")) is None
        assert s.scalar(select(SftpUpload.file_id)) is None
    storage = storage_for(hub)
    assert list(storage.iter_keys("inbox/")) == [] and list(storage.iter_keys("archive/")) == []
    assert list(storage.iter_multipart_uploads()) == []
    r = world.sftp("alice", "ls /lung/uploads")
    assert "small.bin" not in r.stdout and "large.bin" not in r.stdout


def test_key_registration_needs_fresh_mfa(app, hub, people, tmp_path: Path) -> None:
    person = people("carol")
    pub = _ssh_key(tmp_path, "carol_key").with_suffix(".pub").read_text()
    c = web_client(app, hub, person)
    # an MFA older than the fresh window: refused with a re-authentication
    with transaction(hub.sessions) as s:
        s.execute(update(WebSession).where(WebSession.user_id == person.user.id)
                  .values(mfa_at=utcnow() - dt.timedelta(hours=2)))
    r = c.post("/account/ssh-keys", data={"public_key": pub, "csrf_token": csrf_for(c)}, follow_redirects=True)
    assert "/login/reauth" in str(r.url) or r.status_code in (401, 403)
    with hub.sessions() as s:
        assert s.scalar(select(SshKey.id)) is None
    # fresh: registered, listed with fingerprint and comment
    with transaction(hub.sessions) as s:
        s.execute(update(WebSession).where(WebSession.user_id == person.user.id).values(mfa_at=utcnow()))
    r = c.post("/account/ssh-keys", data={"public_key": pub, "csrf_token": csrf_for(c)}, follow_redirects=True)
    assert r.status_code == 200 and "SSH key SHA256:" in r.text
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "carol_key.pub")], capture_output=True,
                                 text=True, check=True).stdout.split()[1]
    assert fingerprint in r.text and "carol_key@test" in r.text
    assert "/account/ssh-keys" in c.get("/account").text
    # the API: a token minted long ago is not fresh; a fresh one is; the key cannot be registered twice
    token = token_for(hub, person, scopes=["data:read", "data:write"])
    other = _ssh_key(tmp_path, "carol_2").with_suffix(".pub").read_text()
    with transaction(hub.sessions) as s:
        s.execute(update(ApiToken).values(created_at=utcnow() - dt.timedelta(hours=2)))
    r = c.post("/api/v1/me/ssh-keys", json={"public_key": other}, headers=bearer(token))
    assert r.status_code in (401, 403), r.text
    token = token_for(hub, person, scopes=["data:read", "data:write"])
    assert c.post("/api/v1/me/ssh-keys", json={"public_key": pub}, headers=bearer(token)).status_code == 409
    r = c.post("/api/v1/me/ssh-keys", json={"public_key": other, "comment": "second"}, headers=bearer(token))
    assert r.status_code == 201, r.text
    listed = c.get("/api/v1/me/ssh-keys", headers=bearer(token)).json()
    assert sorted(k["comment"] for k in listed) == ["carol_key@test", "second"]
    assert c.post("/api/v1/me/ssh-keys", json={"public_key": "not a key"}, headers=bearer(token)).status_code == 422
    assert c.delete(f"/api/v1/me/ssh-keys/{r.json()['id']}", headers=bearer(token)).status_code == 204
    assert c.delete(f"/api/v1/me/ssh-keys/{uuid.uuid4()}", headers=bearer(token)).status_code == 404
    assert [a for a, _ in _events(hub, "sftp.key.added", "sftp.key.removed")] == \
        ["sftp.key.added", "sftp.key.added", "sftp.key.removed"]


def test_killed_rclone_upload_copied_again(world: Hubsftp) -> None:
    """rclone (1.60) does not append: copying again truncates, which replaces the unfinished upload."""
    hub = world.hub
    data = os.urandom(20 * 1024 * 1024 + 777)
    src = world.tmp / "run.bin"
    src.write_bytes(data)
    argv = ["rclone", "--config", "/dev/null", "copyto", str(src),
            f":sftp,host=127.0.0.1,port={world.port},user=alice,key_file={world.keys['alice']},"
            f"known_hosts_file={world.known_hosts},shell_type=none,disable_hashcheck=true:lung/uploads/run.bin"]
    _kill_mid_upload(world, argv)
    r = world.rclone("alice", "copyto", str(src), "REMOTE:lung/uploads/run.bin")
    assert r.returncode == 0, r.stderr
    _ingest(hub)
    assert hashlib.sha256(_archived_plaintext(hub, "run.bin")).digest() == hashlib.sha256(data).digest()
    with hub.sessions() as s:
        states = sorted(s.scalars(select(ArchiveFile.state)))
        assert states == ["failed", "ready"]  # the cut-off attempt, its parts deleted; the new upload
        assert s.scalar(select(Project.reserved_bytes).where(Project.slug == "lung")) == 0
    assert list(storage_for(hub).iter_multipart_uploads()) == []


def _poll(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_the_host_key_rotates_in_two_steps_that_pinned_clients_follow(world: Hubsftp) -> None:
    """`sftp rotate-host-key` makes the next key, which the running `sftp serve` announces after login within
    seconds (no restart): an OpenSSH client with UpdateHostKeys adds it to known_hosts. `--finish` makes the server
    prove it: that client goes on without a warning, one that never connected in between sees a changed host key.
    The old key's private half is gone, its public half kept; both steps are audited."""
    from test_cli_and_ops import run_cli

    hub, settings = world.hub, world.hub.settings
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "strongroom.cli", "sftp", "serve", "--port", str(port)],
                            env={**os.environ, "STRONGROOM_DATABASE_URL": settings.effective_database_url,
                                 "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(),
                                 "STRONGROOM_VAR_DIR": str(settings.var_dir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            assert proc.poll() is None, "sftp serve exited"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        _poll(listening, "sftp serve to listen")
        old = sftp_hostkeys.host_key(hub)
        pinned = f"[127.0.0.1]:{port} {old.export_public_key().decode().strip()}\n"
        learner, absent = world.tmp / "learner_known_hosts", world.tmp / "absent_known_hosts"
        learner.write_text(pinned)
        absent.write_text(pinned)
        batch = world.tmp / "pwd-batch"
        batch.write_text("pwd\n")

        def connect(known: Path, *, update: bool) -> subprocess.CompletedProcess[str]:
            options = ["-P", str(port), "-i", str(world.keys["alice"]), "-o", "IdentitiesOnly=yes",
                       "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                       "-o", f"UpdateHostKeys={'yes' if update else 'no'}", "-F", "/dev/null"]
            return subprocess.run(["sftp", *options, "-b", str(batch), "alice@127.0.0.1"], capture_output=True,
                                  text=True, timeout=60)

        assert connect(learner, update=True).returncode == 0
        begun = run_cli(settings, "sftp", "rotate-host-key")
        assert begun.returncode == 0, begun.stderr
        upcoming = sftp_hostkeys.next_key(hub)
        assert upcoming is not None and sftp_hostkeys.fingerprint(upcoming) in begun.stdout
        twice = run_cli(settings, "sftp", "rotate-host-key")
        assert twice.returncode == 2 and "already under way" in twice.stderr
        new_blob = upcoming.export_public_key().decode().split()[1]
        _poll(lambda: connect(learner, update=True).returncode == 0 and new_blob in learner.read_text(),
              "a client to learn the announced key")
        shown = run_cli(settings, "sftp", "host-key")
        assert f"next (announced, not yet in use): {sftp_hostkeys.fingerprint(upcoming)}" in shown.stdout

        finished = run_cli(settings, "sftp", "rotate-host-key", "--finish")
        assert finished.returncode == 0, finished.stderr

        def proving_new_key() -> bool:
            scan = subprocess.run(["ssh-keyscan", "-p", str(port), "-t", "ed25519", "127.0.0.1"],
                                  capture_output=True, text=True, timeout=30)
            return new_blob in scan.stdout
        _poll(proving_new_key, "the server to prove the new key")
        assert connect(learner, update=True).returncode == 0  # it learned the key in time: no warning
        stranger = connect(absent, update=False)
        assert stranger.returncode != 0 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in stranger.stderr
    finally:
        proc.terminate()
        proc.wait(60)
    old_private = old.export_private_key().decode()
    assert not any(old_private in p.read_text() for p in (settings.var_dir / "sftp").rglob("*") if p.is_file())
    shown = run_cli(settings, "sftp", "host-key")
    assert f"retired: {sftp_hostkeys.fingerprint(old)}" in shown.stdout and "next" not in shown.stdout
    assert run_cli(settings, "sftp", "rotate-host-key", "--finish").returncode == 2  # nothing under way
    assert [action for action, _ in _events(hub, "sftp.host_key.announced", "sftp.host_key.rotated")] == [
        "sftp.host_key.announced", "sftp.host_key.rotated"]
