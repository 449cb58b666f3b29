"""Bundles of small files: one request, one inbox object, one group-commit ingest job; every file still its own
upload (quota, audit, checksums, verification), a damaged file fails alone, and a crash anywhere in the group
is recovered by running the job again without counting anything twice."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os

import pytest
from sqlalchemy import func, select

from conftest import bearer, token_for
from strongroom.archive import c4gh
from strongroom.archive import ingest as ingest_module
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key, hub_keys
from strongroom.archive.models import ArchiveFile
from strongroom.archive.storage.errors import StorageError
from strongroom.archive.storage.local import LocalStorage
from strongroom.audit import service as audit
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.jobs.models import Job
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from strongroom.projects.models import Project

END = dt.date.today() + dt.timedelta(days=365)
MEDIA = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def lung(hub, people):
    alice = people("alice")
    people("bob")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="alice", ethics_ref="E1",
                                end_date=END)
        projects.create_project(s, Actor.system("t"), slug="other", name="Other", pi="bob", ethics_ref="E2",
                                end_date=END)
    ensure_key(hub)
    return alice


def _files(hub, n: int, seed: int = 0) -> list[tuple[str, bytes, bytes]]:
    """(path, plaintext, crypt4gh stream to the hub key)."""
    with hub.sessions() as s:
        public = hub_keys(hub, s).current[1].public
    out = []
    for i in range(n):
        plain = hashlib.sha256(f"{seed}-{i}".encode()).digest() * (30 + 7 * i)
        out.append((f"run/f{seed}-{i}.txt", plain, b"".join(c4gh.encrypt_stream([plain], public))))
    return out


def _bundle(entries: list[dict], streams: list[bytes]) -> bytes:
    manifest = json.dumps({"files": entries}).encode()
    return len(manifest).to_bytes(4, "big") + manifest + b"".join(streams)


def _body(files: list[tuple[str, bytes, bytes]]) -> bytes:
    return _bundle([{"path": p, "size": len(blob), "sha256": hashlib.sha256(plain).hexdigest()}
                    for p, plain, blob in files], [blob for _, _, blob in files])


def _project(hub) -> Project:
    with hub.sessions() as s:
        return s.scalar(select(Project).where(Project.slug == "lung"))


def _drain(hub) -> None:
    Runner(hub, lease_seconds=10, name="test").run_until_idle()


def _decrypt(hub, f: ArchiveFile) -> bytes:
    with hub.sessions() as s:
        secrets = hub_keys(hub, s).secrets
    with storage_for(hub).open_reader(f.body_key) as body:
        return b"".join(c4gh.decrypt_stream(io.BytesIO(f.header + body.read()), secrets))


def test_bundle_is_one_upload_per_file_and_one_group_ingest(client, hub, lung):
    files = _files(hub, 6)
    damaged = bytearray(files[2][2])
    damaged[-20] ^= 1  # a flipped bit in the last segment: only this file may fail
    files[2] = (files[2][0], files[2][1], bytes(damaged))
    body = _body(files)
    entries = json.loads(body[4:4 + int.from_bytes(body[:4], "big")])["files"]
    entries[4]["sha256"] = "0" * 64  # the uploader's checksum does not match: refused after ingest
    body = _bundle(entries, [blob for _, _, blob in files])
    token = token_for(hub, lung)
    r = client.post("/api/v1/projects/lung/bundles", content=body, headers=bearer(token) | MEDIA)
    assert r.status_code == 201, r.text
    ids = [f["id"] for f in r.json()]
    assert [f["path"] for f in r.json()] == [p for p, _, _ in files]
    assert {f["state"] for f in r.json()} == {"uploaded"}
    total = sum(len(blob) for _, _, blob in files)
    assert _project(hub).reserved_bytes == total  # quota held for every file, up front
    storage = storage_for(hub)
    project = _project(hub)
    assert len(list(storage.iter_keys(f"inbox/{project.id}/"))) == 1  # one object for the whole bundle
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "archive.ingest")) == 1
        uploaded = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "archive.upload.completed")
                                  .order_by(AuditEvent.seq)))
    assert [e.target for e in uploaded] == [f"file:{i}" for i in ids]

    _drain(hub)
    with hub.sessions() as s:
        rows = {f.id: f for f in s.scalars(select(ArchiveFile))}
        ingested = [e.target for e in s.scalars(select(AuditEvent).where(
            AuditEvent.action == "archive.file.ingested").order_by(AuditEvent.seq))]
        failed = {e.target: e.details["reason"] for e in s.scalars(select(AuditEvent).where(
            AuditEvent.action == "archive.file.failed").order_by(AuditEvent.seq))}
    with hub.sessions() as s:
        assert not audit.verify(s).problems
    for i, (_, plain, _) in enumerate(files):
        f = rows[ids[i]]
        if i == 2:
            assert f.state == "failed" and "damaged" in f.failure
        elif i == 4:
            assert f.state == "failed" and "SHA-256 differs" in f.failure
        else:
            assert f.state == "ready" and f.plaintext_sha256 == hashlib.sha256(plain).hexdigest()
            assert f.plaintext_md5 == hashlib.md5(plain).hexdigest()
            assert _decrypt(hub, f) == plain
    assert ingested == [f"file:{ids[i]}" for i in (0, 1, 3, 5)]
    assert set(failed) == {f"file:{ids[2]}", f"file:{ids[4]}"}
    project = _project(hub)
    assert project.reserved_bytes == 0
    assert project.used_bytes == sum(rows[ids[i]].body_size for i in (0, 1, 3, 5))
    # A failed file keeps the bundle in the inbox, as a failed single upload keeps its object.
    assert len(list(storage.iter_keys(f"inbox/{project.id}/"))) == 1

    good = _files(hub, 3, seed=1)
    r = client.post("/api/v1/projects/lung/bundles", content=_body(good), headers=bearer(token) | MEDIA)
    assert r.status_code == 201, r.text
    _drain(hub)
    with hub.sessions() as s:
        assert all(s.get(ArchiveFile, f["id"]).state == "ready" for f in r.json())
    assert len(list(storage.iter_keys(f"inbox/{project.id}/"))) == 1  # the all-good bundle is gone


def _keyed(files: list[tuple[str, bytes, bytes]], key: str) -> bytes:
    """A bundle whose manifest carries the client's key (a retry of it is safe)."""
    manifest = json.dumps({"key": key, "files": [{"path": p, "size": len(blob), "sha256": hashlib.sha256(plain)
                                                  .hexdigest()} for p, plain, blob in files]}).encode()
    return len(manifest).to_bytes(4, "big") + manifest + b"".join(blob for _, _, blob in files)


def test_a_bundle_sent_again_with_its_key_returns_its_files_and_stores_nothing_twice(client, hub, lung, people):
    token = token_for(hub, lung)
    key = os.urandom(16).hex()
    files = _files(hub, 4)
    first = client.post("/api/v1/projects/lung/bundles", content=_keyed(files, key), headers=bearer(token) | MEDIA)
    assert first.status_code == 201, first.text
    again = client.post("/api/v1/projects/lung/bundles", content=_keyed(files, key), headers=bearer(token) | MEDIA)
    assert again.status_code == 201 and again.json() == first.json()  # the same files, not new ones
    project = _project(hub)
    assert project.reserved_bytes == sum(len(blob) for _, _, blob in files)  # quota held once
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ArchiveFile)) == 4
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "archive.upload.completed")) == 4
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "archive.ingest")) == 1
    # the key named these files: other files (or the same key from another member) are refused
    other = client.post("/api/v1/projects/lung/bundles", content=_keyed(_files(hub, 2, seed=3), key),
                        headers=bearer(token) | MEDIA)
    assert other.status_code == 409 and "key" in other.json()["detail"]
    carol = people("carol")
    r = client.post("/api/v1/projects/lung/members", json={"user": "carol", "role": "member"},
                    headers=bearer(token))
    assert r.status_code == 201, r.text
    theirs = client.post("/api/v1/projects/lung/bundles", content=_keyed(files, key),
                         headers=bearer(token_for(hub, carol)) | MEDIA)
    assert theirs.status_code == 409
    _drain(hub)
    with hub.sessions() as s:
        assert {f.state for f in s.scalars(select(ArchiveFile))} == {"ready"}
    assert client.post("/api/v1/projects/lung/bundles", content=_keyed(files, key),
                       headers=bearer(token) | MEDIA).json() == [{**f, "state": "ready"} for f in first.json()]


def test_bundle_refusals_leave_nothing_behind(client, hub, lung):
    token = token_for(hub, lung)
    files = _files(hub, 2)
    storage = storage_for(hub)

    def nothing_stored() -> None:
        with hub.sessions() as s:
            assert s.scalar(select(func.count()).select_from(ArchiveFile)) == 0
        assert list(storage.iter_keys("inbox/")) == []
        assert _project(hub).reserved_bytes == 0

    body = _body(files)
    cases = [
        body[:-1],  # one byte short of the declared sizes
        body + b"x",  # one byte too many
        b"\x00\x00",  # no manifest length
        (10**6).to_bytes(4, "big") + b"{}",  # a manifest longer than the body
        _bundle([{"path": "../escape", "size": len(files[0][2])}], [files[0][2]]),
        _bundle([{"path": "a", "size": 0}], []),
        _bundle([], []),
        _bundle([{"path": "a", "size": len(files[0][2]), "extra": 1}], [files[0][2]]),
    ]
    for case in cases:
        r = client.post("/api/v1/projects/lung/bundles", content=case, headers=bearer(token) | MEDIA)
        assert r.status_code == 422, (case[:60], r.text)
        nothing_stored()
    # Someone else's project is not there at all; no token is not allowed.
    r = client.post("/api/v1/projects/other/bundles", content=body, headers=bearer(token) | MEDIA)
    assert r.status_code == 404
    assert client.post("/api/v1/projects/lung/bundles", content=body, headers=MEDIA).status_code == 401
    nothing_stored()
    # Over quota: refused as a whole, and the stored bundle is removed again.
    with transaction(hub.sessions) as s:
        s.scalar(select(Project).where(Project.slug == "lung")).quota_bytes = len(files[0][2])
    r = client.post("/api/v1/projects/lung/bundles", content=body, headers=bearer(token) | MEDIA)
    assert r.status_code == 409, r.text
    nothing_stored()


@pytest.mark.parametrize("crash", ["publishing", "before-commit"])
def test_group_crash_is_recovered_once(client, hub, lung, monkeypatch, crash):
    """The worker dies half-way through the group commit (some bodies renamed into place, or all of them
    durable but the transaction not committed): nothing is ready, and the retried job archives every file
    exactly once (quota and audit counted once, one body per file)."""
    token = token_for(hub, lung)
    files = _files(hub, 5)
    r = client.post("/api/v1/projects/lung/bundles", content=_body(files), headers=bearer(token) | MEDIA)
    assert r.status_code == 201
    ids = [f["id"] for f in r.json()]
    if crash == "publishing":
        place, placed = LocalStorage._place, []

        def dying_place(self, tmp, dest, key):
            if len(placed) == 2:
                raise OSError("killed")
            placed.append(key)
            place(self, tmp, dest, key)

        monkeypatch.setattr(LocalStorage, "_place", dying_place)
    else:
        def dying_verify(*args, **kwargs):
            raise RuntimeError("killed")

        monkeypatch.setattr(ingest_module, "_verify", dying_verify)
    _drain(hub)  # the job fails its first attempt
    with hub.sessions() as s:
        assert {s.get(ArchiveFile, i).state for i in ids} == {"uploaded"}
        job = s.scalar(select(Job).where(Job.kind == "archive.ingest"))
        assert job.status == "queued" and job.attempts == 1
        job.run_after = dt.datetime.now(dt.UTC)
        s.commit()
    assert _project(hub).used_bytes == 0
    monkeypatch.undo()
    _drain(hub)
    project = _project(hub)
    storage = storage_for(hub)
    with hub.sessions() as s:
        rows = [s.get(ArchiveFile, i) for i in ids]
        assert s.scalar(select(func.count()).select_from(AuditEvent)
                        .where(AuditEvent.action == "archive.file.ingested")) == 5
    with hub.sessions() as s:
        assert not audit.verify(s).problems
    assert [f.state for f in rows] == ["ready"] * 5
    assert [_decrypt(hub, f) for f in rows] == [plain for _, plain, _ in files]
    assert project.used_bytes == sum(f.body_size for f in rows) and project.reserved_bytes == 0
    assert sorted(storage.iter_keys(f"archive/{project.id}/")) == sorted(f.body_key for f in rows)
    assert list(storage.iter_keys("inbox/")) == []
    assert not any(storage._tmpdir.iterdir())  # no temp file of the crashed attempt is left


def test_bundled_file_through_the_single_file_entry(client, hub, lung):
    """A per-file ingest of a bundled file (e.g. an operator retrying one file) reads its range of the bundle
    and leaves the bundle for the others."""
    token = token_for(hub, lung)
    files = _files(hub, 3)
    r = client.post("/api/v1/projects/lung/bundles", content=_body(files), headers=bearer(token) | MEDIA)
    ids = [f["id"] for f in r.json()]
    storage = storage_for(hub)
    assert ingest_module.ingest(hub, storage, ids[1]) == "ready"
    with hub.sessions() as s:
        assert [s.get(ArchiveFile, i).state for i in ids] == ["uploaded", "ready", "uploaded"]
        one = s.get(ArchiveFile, ids[1])
    assert _decrypt(hub, one) == files[1][1]
    assert len(list(storage.iter_keys("inbox/"))) == 1
    _drain(hub)
    with hub.sessions() as s:
        assert [s.get(ArchiveFile, i).state for i in ids] == ["ready"] * 3
    assert list(storage.iter_keys("inbox/")) == []


def test_commit_group_publishes_all_or_nothing_acknowledged(tmp_path):
    storage = LocalStorage(tmp_path / "objects")
    writers = [storage.open_writer(f"a/b/{i}") for i in range(20)]
    for i, w in enumerate(writers):
        w.write(os.urandom(100 + i))
    stored = storage.commit_group(writers)
    assert [s.size for s in stored] == [100 + i for i in range(20)]
    assert sorted(storage.iter_keys("a/")) == sorted(f"a/b/{i}" for i in range(20))
    assert not any(storage._tmpdir.iterdir())
    with pytest.raises(StorageError):
        writers[0].write(b"x")  # committed writers are closed
    # A key that cannot be published (a "directory" is in the way) fails the group; no temp file stays.
    writers = [storage.open_writer("c/1"), storage.open_writer("a/b")]
    for w in writers:
        w.write(b"data")
    with pytest.raises(StorageError):
        storage.commit_group(writers)
    assert not any(storage._tmpdir.iterdir())
    assert all(w._state == "aborted" for w in writers)
