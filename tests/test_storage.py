"""Object storage: the same tests against LocalStorage (tmp_path) and S3Storage (a real SeaweedFS).

S3 tests start one SeaweedFS for the session (tests/support/seaweed.py); each test gets its own bucket,
created by the storage on first write. Outage tests kill and restart that server."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from strongroom.archive.storage.base import S3_MIN_PART_SIZE, PartInfo, Storage, StoredObject, validate_key
from strongroom.archive.storage.config import StorageSettings, storage_from_settings
from strongroom.archive.storage.errors import (
    InvalidKey,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
    UploadNotFound,
)
from strongroom.archive.storage.local import LocalStorage
from strongroom.archive.storage.s3 import S3Storage
from support.live import free_port
from support.seaweed import SeaweedS3, seaweedfs  # noqa: F401 - session fixture

MiB = 1024 * 1024
PART = 5 * MiB  # the S3 minimum, so multipart paths are exercised with little data


def _random(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _s3_config(sw: SeaweedS3, bucket: str, **over: object) -> dict:
    cfg = {"kind": "s3", "endpoint_url": sw.endpoint_url, "bucket": bucket, "access_key": sw.access_key,
           "secret_key": sw.secret_key, "region": sw.region, "part_size": PART, "connect_timeout": 1.0,
           "read_timeout": 10.0, "max_attempts": 3}
    cfg.update(over)
    return cfg


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict]]:
    """(kind, plain config) for a fresh, empty store."""
    if request.param == "local":
        yield "local", {"kind": "local", "root": str(tmp_path / "objects")}
    else:
        sw: SeaweedS3 = request.getfixturevalue("seaweedfs")
        if not sw.running:  # a failed outage test must not cascade
            sw.start()
        yield "s3", _s3_config(sw, f"t-{uuid.uuid4().hex[:16]}")


@pytest.fixture
def store(backend: tuple[str, dict]) -> Iterator[Storage]:
    kind, cfg = backend
    s = storage_from_settings(cfg)
    if kind == "local":  # hold local uploads to S3's part rules so both behave the same
        s = LocalStorage(cfg["root"], min_part_size=S3_MIN_PART_SIZE)
    yield s
    s.close()


def _leftovers(store: Storage) -> list[str]:
    """Anything a failed write could have left: visible keys or pending multipart uploads."""
    return list(store.iter_keys()) + [u.upload_id for u in store.iter_multipart_uploads()]


# ------------------------------------------------------------------------------------- round trips
def test_small_round_trip(store: Storage) -> None:
    assert not store.exists("a/b/c.bin")
    assert store.put_bytes("a/b/c.bin", b"hello world") == StoredObject("a/b/c.bin", 11)
    assert store.exists("a/b/c.bin")
    assert store.size("a/b/c.bin") == 11
    with store.open_reader("a/b/c.bin") as r:
        assert r.read() == b"hello world"
    store.put_bytes("a/b/c.bin", b"replaced")  # overwrite
    with store.open_reader("a/b/c.bin") as r:
        assert r.read() == b"replaced"
    store.put_bytes("empty", b"")
    assert store.size("empty") == 0
    with store.open_reader("empty") as r:
        assert r.read() == b""
    assert list(store.iter_keys()) == ["a/b/c.bin", "empty"]
    store.delete("a/b/c.bin")
    store.delete("a/b/c.bin")  # idempotent
    assert not store.exists("a/b/c.bin")
    with pytest.raises(ObjectNotFound):
        store.size("a/b/c.bin")
    with pytest.raises(ObjectNotFound):
        store.open_reader("a/b/c.bin")
    assert list(store.iter_keys()) == ["empty"]


def test_large_multipart_round_trip_with_flat_memory(store: Storage, backend: tuple[str, dict]) -> None:
    size = 20 * MiB + 12345  # 5 parts of 5 MiB on S3, the last one short
    data = _random(size, seed=1)
    chunks = [1 * MiB - 1, 3 * MiB + 7, 64 * 1024, 7 * MiB]  # sizes that straddle part boundaries
    tracemalloc.start()
    try:
        with store.open_writer("big/object") as w:
            pos, i = 0, 0
            while pos < size:
                n = chunks[i % len(chunks)]
                assert w.write(memoryview(data)[pos:pos + n]) == min(n, size - pos)
                pos, i = pos + n, i + 1
            assert not store.exists("big/object")  # nothing visible before commit
            assert w.commit() == StoredObject("big/object", size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one part buffered (+ one copy while it is sent) plus the largest chunk we wrote: never the object
    assert peak < 2 * PART + 7 * MiB + 4 * MiB, f"writer peak memory {peak / MiB:.1f} MiB"
    assert store.size("big/object") == size
    digest = hashlib.sha256()
    with store.open_reader("big/object") as r:
        while chunk := r.read(3 * MiB + 1):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    # a range across part boundaries (5 MiB and 10 MiB on S3)
    with store.open_reader("big/object", PART - 100, 2 * PART + 100) as r:
        assert r.read() == data[PART - 100:2 * PART + 100]
    if backend[0] == "s3":
        # test-only peek: the write really was a multipart upload (the object's ETag ends in -<parts>).
        # The storage itself never reads ETags as checksums.
        s3 = store  # type: ignore[assignment]
        etag = s3._client.head_object(Bucket=s3.bucket, Key="big/object")["ETag"]  # type: ignore[attr-defined]
        assert etag.strip('"').endswith("-5")
    assert _leftovers(store) == ["big/object"]


def test_ranged_reads(store: Storage) -> None:
    data = _random(MiB + 13, seed=2)
    n = len(data)
    store.put_bytes("r", data)
    cases = [(0, None), (0, 1), (5, 100), (n - 10, None), (100, 100), (n, None), (n + 5, None),
             (0, n + 100), (MiB, n), (12345, 54321)]
    for start, end in cases:
        with store.open_reader("r", start, end) as r:
            assert r.read() == data[start:end], (start, end)
    with store.open_reader("r", 10, 10 + 1000) as r:  # small reads, then readinto
        got = r.read(7) + r.read(0) + r.read(93)
        buf = bytearray(400)
        k = r.readinto(buf)
        got += bytes(buf[:k]) + r.read()
        assert got == data[10:1010]
        assert r.read(10) == b""
    with pytest.raises(ValueError):
        store.open_reader("r", -1)


# ------------------------------------------------------------------------------------- atomicity
def test_aborted_writer_leaves_nothing(store: Storage) -> None:
    w = store.open_writer("x/aborted")
    w.write(_random(PART + 1000))  # past one part: S3 has begun a multipart upload
    w.abort()
    w.abort()  # idempotent
    with pytest.raises(StorageError):
        w.write(b"more")
    with pytest.raises(StorageError):
        w.commit()
    assert not store.exists("x/aborted")
    assert _leftovers(store) == []


def test_writer_raising_midway_leaves_no_object(store: Storage) -> None:
    with pytest.raises(RuntimeError, match="source failed"), store.open_writer("x/failed") as w:
        w.write(_random(2 * PART + 17))
        raise RuntimeError("source failed")
    with store.open_writer("x/uncommitted") as w:  # leaving the block without commit() publishes nothing
        w.write(b"data")
    assert not store.exists("x/failed") and not store.exists("x/uncommitted")
    assert _leftovers(store) == []


def test_overwrite_is_atomic(store: Storage) -> None:
    old, new = _random(PART + 99, seed=3), _random(2 * PART + 5, seed=4)
    store.put_bytes("obj", old)
    with store.open_writer("obj") as w:
        w.write(new)
        assert store.size("obj") == len(old)  # readers keep seeing the old version until commit
        with store.open_reader("obj") as r:
            assert r.read() == old
        w.commit()
    with store.open_reader("obj") as r:
        assert r.read() == new


_CHILD = r"""
import json, os, signal, sys
from strongroom.archive.storage.config import storage_from_settings
cfg, key, mode = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
s = storage_from_settings(cfg)
payload = bytes(range(256)) * (4096 * 22)  # 22 MiB... cut to what each mode needs
if mode == "writer":
    w = s.open_writer(key)
    w.write(payload[: 2 * 5 * 1024 * 1024 + 100])  # two parts sent (S3), temp file written (local)
elif mode == "multipart":
    upload_id = s.begin_multipart(key)
    for n in (1, 2):
        s.put_part(key, upload_id, n, payload[(n - 1) * 5242880 : n * 5242880])
    print(upload_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # die without any cleanup
"""


def _run_child(cfg: dict, key: str, mode: str) -> str:
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg), key, mode],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    return proc.stdout.strip()


def test_crashed_writer_leaves_nothing_visible(store: Storage, backend: tuple[str, dict]) -> None:
    _run_child(backend[1], "crash/victim", "writer")
    assert not store.exists("crash/victim")
    assert list(store.iter_keys()) == []
    # the garbage is invisible, and the sweeper removes it
    assert store.cleanup_incomplete(older_than=3600) == 0
    assert store.cleanup_incomplete(older_than=-10) >= 1
    assert _leftovers(store) == []
    if backend[0] == "local":
        assert list((Path(backend[1]["root"]) / ".staging" / "tmp").iterdir()) == []


# ------------------------------------------------------------------------------------- multipart
def test_resumable_multipart_survives_the_uploader(store: Storage, backend: tuple[str, dict]) -> None:
    payload = bytes(range(256)) * (4096 * 22)  # what the child sends
    upload_id = _run_child(backend[1], "inbox/upload", "multipart")  # uploads parts 1, 2 then dies
    assert upload_id
    assert not store.exists("inbox/upload")  # parts are never visible as an object
    assert [u.upload_id for u in store.iter_multipart_uploads("inbox/")] == [upload_id]
    store.put_part("inbox/upload", upload_id, 1, payload[:PART])  # a plain retry: same bytes again
    parts = store.list_parts("inbox/upload", upload_id)
    assert [(p.part_number, p.size) for p in parts] == [(1, PART), (2, PART)]
    # the next process goes on: re-sends part 2 (a retried part replaces the first attempt), adds part 3
    second = _random(PART, seed=7)
    p2 = store.put_part("inbox/upload", upload_id, 2, second)
    p3 = store.put_part("inbox/upload", upload_id, 3, b"the end")
    assert isinstance(p3, PartInfo) and p3.size == 7
    if backend[0] == "local":  # a stale part token is refused, as AWS does (InvalidPart). SeaweedFS
        # keeps superseded parts and would assemble the old one: always complete with put_part's etags
        with pytest.raises(StorageError, match="replaced"):
            store.complete_multipart("inbox/upload", upload_id, [parts[0], parts[1], p3])
    refs = [(parts[0].part_number, parts[0].etag), (2, p2.etag), (3, p3.etag)]  # (number, etag) pairs work
    done = store.complete_multipart("inbox/upload", upload_id, refs)
    assert done == StoredObject("inbox/upload", 2 * PART + 7)
    with store.open_reader("inbox/upload") as r:
        assert r.read() == payload[:PART] + second + b"the end"
    with pytest.raises(UploadNotFound):
        store.list_parts("inbox/upload", upload_id)
    with pytest.raises(UploadNotFound):
        store.complete_multipart("inbox/upload", upload_id)
    store.abort_multipart("inbox/upload", upload_id)  # after completion: harmless, object stays
    assert store.exists("inbox/upload")
    assert list(store.iter_multipart_uploads()) == []


def test_multipart_complete_all_parts_abort_and_rules(store: Storage) -> None:
    key = "inbox/two"
    up = store.begin_multipart(key)
    store.put_part(key, up, 2, b"B" * 10)
    store.put_part(key, up, 1, b"A" * PART)
    assert store.complete_multipart(key, up).size == PART + 10  # None = every uploaded part, in order
    with store.open_reader(key, PART - 2) as r:
        assert r.read() == b"AA" + b"B" * 10

    up = store.begin_multipart("inbox/small")
    store.put_part("inbox/small", up, 1, b"tiny")
    store.put_part("inbox/small", up, 2, b"tiny")
    with pytest.raises(StorageError, match="EntityTooSmall"):  # only the last part may be under 5 MiB
        store.complete_multipart("inbox/small", up)
    with pytest.raises(StorageError):
        store.put_part("inbox/small", up, 0, b"x")
    with pytest.raises(StorageError):
        store.complete_multipart("inbox/small", up, [])
    with pytest.raises(UploadNotFound):
        store.list_parts("inbox/other-key", up)  # an upload id belongs to its key
    store.abort_multipart("inbox/small", up)
    store.abort_multipart("inbox/small", up)  # idempotent
    with pytest.raises(UploadNotFound):
        store.put_part("inbox/small", up, 1, b"late")
    assert not store.exists("inbox/small")
    assert _leftovers(store) == [key]


# ------------------------------------------------------------------------------------- keys, listing
def test_iter_keys_prefixed(store: Storage, backend: tuple[str, dict]) -> None:
    keys = ["a/b", "a-c", "a/b2/x", "b", "a/c/d/e", "ab", "z/é"]
    for k in keys:
        store.put_bytes(k, k.encode())

    def listed(prefix: str = "") -> list[str]:
        got = list(store.iter_keys(prefix))
        assert len(got) == len(set(got))
        if backend[0] == "local":  # local lists in S3's (AWS) order; SeaweedFS sorts per directory level
            assert got == sorted(got)
        return sorted(got)

    assert listed() == sorted(keys)
    assert listed("a/") == ["a/b", "a/b2/x", "a/c/d/e"]
    assert listed("a/b") == ["a/b", "a/b2/x"]
    assert listed("a") == ["a-c", "a/b", "a/b2/x", "a/c/d/e", "ab"]
    assert listed("a/c/d/e") == ["a/c/d/e"]
    assert listed("nothing") == []


BAD_KEYS = ["", "/abs", "../escape", "a/../../escape", "a/./b", "a//b", "a/", "nul\x00byte", "tab\tx",
            "back\\slash", ".staging/tmp/x", "..", "x" * 256, "a/" * 600]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)


def test_unsafe_keys_refused_by_every_operation(store: Storage, tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    for key in ["../escape", "/etc/passwd", "a/../../../escape", "nul\x00", ".staging/x"]:
        for op in (lambda k: store.put_bytes(k, b"x"), store.open_writer, store.open_reader, store.size,
                   store.exists, store.delete, store.begin_multipart):
            with pytest.raises(InvalidKey):
                op(key)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written beside the root
    assert _leftovers(store) == []
    assert validate_key("ok/ünïcode key (1).c4gh") == "ok/ünïcode key (1).c4gh"


def test_local_layout_and_conflicts(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path / "root")
    s.put_bytes("p/q/r", b"1")
    assert (tmp_path / "root" / "p" / "q" / "r").read_bytes() == b"1"
    with pytest.raises(StorageError):  # "p/q/r" is a file: it cannot also be a prefix on a filesystem
        s.put_bytes("p/q/r/s", b"2")
    with pytest.raises(StorageError):
        s.put_bytes("p/q", b"3")
    s.delete("p/q/r")
    assert not (tmp_path / "root" / "p").exists()  # empty directories are pruned
    s.put_bytes("p/q", b"4")  # and the name is free again
    assert list(s.iter_keys()) == ["p/q"]
    assert [p.name for p in (tmp_path / "root").iterdir() if p.name != "p"] == [".staging"]


def test_local_concurrent_writers_last_commit_wins(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path / "root")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                s.put_bytes(f"k/{j % 3}", bytes([i]) * 1000)
                s.delete(f"k/{(j + 1) % 3}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in s.iter_keys():
        with s.open_reader(k) as r:
            data = r.read()
        assert len(data) == 1000 and len(set(data)) == 1  # never a mix of two writers


# ------------------------------------------------------------------------------------- settings
def test_storage_from_settings(tmp_path: Path) -> None:
    local = storage_from_settings(StorageSettings(kind="local", root=tmp_path / "o"))
    assert isinstance(local, LocalStorage) and local.root == (tmp_path / "o").resolve()
    assert storage_from_settings({}, default_root=tmp_path / "d").root == (tmp_path / "d").resolve()
    s3 = storage_from_settings({"kind": "s3", "endpoint_url": "http://127.0.0.1:1", "bucket": "bkt",
                                "access_key": "ak", "secret_key": "very-secret", "part_size": 8 * MiB})
    assert isinstance(s3, S3Storage) and s3.part_size == 8 * MiB and s3.bucket == "bkt"
    s3.close()
    assert "very-secret" not in repr(StorageSettings(kind="s3", bucket="b", secret_key="very-secret"))
    with pytest.raises(ValueError, match="unknown storage setting.*colour"):
        storage_from_settings({"kind": "local", "root": str(tmp_path), "colour": "blue"})
    with pytest.raises(ValueError, match="root"):
        storage_from_settings({"kind": "local"})
    with pytest.raises(ValueError, match="kind"):
        storage_from_settings({"kind": "tape"})
    with pytest.raises(ValueError, match="part_size"):
        storage_from_settings({"kind": "s3", "bucket": "b", "part_size": MiB})
    with pytest.raises(ValueError, match="read_timeout"):
        StorageSettings(read_timeout=0)


def test_storage_settings_reach_the_s3_client(tmp_path: Path) -> None:
    """Timeouts, retries and TLS verification are applied to the boto3 client, not just stored."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("placeholder")
    cfg = StorageSettings(kind="s3", endpoint_url="https://127.0.0.1:1", bucket="bkt", connect_timeout=2.5,
                          read_timeout=7, max_attempts=4, verify_tls=str(bundle))
    s3 = storage_from_settings(cfg)
    try:
        client_cfg = s3._client.meta.config
        assert (client_cfg.connect_timeout, client_cfg.read_timeout) == (2.5, 7)
        assert client_cfg.retries == {"mode": "standard", "total_max_attempts": 4}  # attempts, not retries
        assert s3._client._endpoint.http_session._verify == str(bundle)
    finally:
        s3.close()
    assert StorageSettings(verify_tls="false").verify_tls is False  # env vars arrive as strings
    assert StorageSettings(verify_tls="TRUE").verify_tls is True
    assert StorageSettings(verify_tls=str(bundle)).verify_tls == str(bundle)


def test_hub_settings_take_storage_options_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from strongroom.config import Settings

    monkeypatch.setenv("STRONGROOM_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("STRONGROOM_ARCHIVE__STORAGE__KIND", "s3")
    monkeypatch.setenv("STRONGROOM_ARCHIVE__STORAGE__READ_TIMEOUT", "12.5")
    monkeypatch.setenv("STRONGROOM_ARCHIVE__STORAGE__VERIFY_TLS", "false")
    monkeypatch.setenv("STRONGROOM_ARCHIVE__STORAGE__PART_SIZE", str(32 * MiB))
    storage = Settings(var_dir=tmp_path).archive.storage
    assert isinstance(storage, StorageSettings)
    assert (storage.kind, storage.read_timeout, storage.verify_tls, storage.part_size) == ("s3", 12.5, False,
                                                                                            32 * MiB)


# ------------------------------------------------------------------------------------- S3 specifics
@pytest.mark.slow
def test_s3_bucket_creation_needs_permission(seaweedfs: SeaweedS3) -> None:  # noqa: F811
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    reader = S3Storage(seaweedfs.endpoint_url, bucket, seaweedfs.readonly_access_key,
                       seaweedfs.readonly_secret_key, max_attempts=2)
    with pytest.raises(StorageError, match="could not be created"):
        reader.put_bytes("k", b"x")
    admin = S3Storage(seaweedfs.endpoint_url, bucket, seaweedfs.access_key, seaweedfs.secret_key)
    admin.put_bytes("k", b"x")  # creates the bucket
    assert reader.size("k") == 1  # read-only identity can read
    with pytest.raises(StorageError, match="SignatureDoesNotMatch|AccessDenied|403"):
        S3Storage(seaweedfs.endpoint_url, bucket, seaweedfs.access_key, "wrong-secret",
                  max_attempts=1).put_bytes("k2", b"x")
    no_create = S3Storage(seaweedfs.endpoint_url, f"t-{uuid.uuid4().hex[:16]}", seaweedfs.access_key,
                          seaweedfs.secret_key, create_bucket=False)
    with pytest.raises(StorageError, match="creating it is disabled"):
        no_create.put_bytes("k", b"x")


@pytest.mark.slow
def test_s3_unreachable_endpoint_fails_fast_and_clearly() -> None:
    port = free_port()  # nothing listens here
    s = S3Storage(f"http://127.0.0.1:{port}", "bkt", "ak", "sk", connect_timeout=1, max_attempts=3)
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{port}.*unreachable"):
        s.put_bytes("k", b"x")
    with pytest.raises(StorageUnavailable):
        s.exists("k")
    assert time.monotonic() - t0 < 20


@pytest.mark.slow
def test_s3_server_stops_mid_upload_then_retry_succeeds(seaweedfs: SeaweedS3) -> None:  # noqa: F811
    cfg = _s3_config(seaweedfs, f"t-{uuid.uuid4().hex[:16]}")
    s = storage_from_settings(cfg)
    data = _random(3 * PART + 777, seed=5)
    w = s.open_writer("outage/obj")
    w.write(data[:PART + 10])  # part 1 is on the server: a multipart upload is in progress
    seaweedfs.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageUnavailable) as info:
            w.write(data[PART + 10:])  # the next part cannot be sent
        elapsed = time.monotonic() - t0
        assert elapsed < 30, f"took {elapsed:.1f}s to give up"
        assert seaweedfs.endpoint_url in str(info.value) and "outage/obj" in str(info.value)
        with pytest.raises(StorageError):
            w.commit()  # the failed writer is aborted
        with pytest.raises(StorageUnavailable):
            s.exists("outage/obj")
    finally:
        seaweedfs.start()
    assert not s.exists("outage/obj")  # no partial object ever appeared
    # the dangling upload (its abort could not reach the server) is invisible; the retry writes anew
    with s.open_writer("outage/obj") as w:
        w.write(data)
        assert w.commit().size == len(data)
    with s.open_reader("outage/obj") as r:
        assert hashlib.sha256(r.read()).digest() == hashlib.sha256(data).digest()
    assert s.cleanup_incomplete(older_than=-10) == 1  # sweeps the upload the dead server kept
    assert _leftovers(s) == ["outage/obj"]


@pytest.mark.slow
def test_s3_server_stops_mid_download_raises_not_hangs(seaweedfs: SeaweedS3) -> None:  # noqa: F811
    s = storage_from_settings(_s3_config(seaweedfs, f"t-{uuid.uuid4().hex[:16]}", max_attempts=2))
    data = _random(4 * PART, seed=6)
    s.put_bytes("dl/obj", data)  # one PutObject up to 5 GiB
    r = s.open_reader("dl/obj")
    assert r.read(MiB) == data[:MiB]
    seaweedfs.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageUnavailable):
            while r.read(MiB):  # what the socket already holds may still arrive, then a clear error
                pass
        assert time.monotonic() - t0 < 30
        r.close()
    finally:
        seaweedfs.start()
    with s.open_reader("dl/obj", 3 * MiB, 4 * MiB) as r2:
        assert r2.read() == data[3 * MiB:4 * MiB]
