"""Download throughput and time-to-first-byte of ``GET /api/v1/files/{id}/content`` (crypt4gh re-encrypted
to the researcher's key) from the app served by uvicorn on 127.0.0.1, against a raw sequential read of the
same stored body from local disk.

    python benchmarks/bench_download.py [--size-mib 512] [--repeat 3] [--ttfb-samples 30]

(a) baseline: read the stored body file in 1 MiB chunks (readinto one buffer), discarding;
(b) the download streamed with httpx to /dev/null (the whole response: re-encrypted header + body);
(c) time to first byte of (b): median of N requests that read only the first chunk. It includes token
    authentication, the read authorisation, re-encrypting the header and the committed audit events
    (token.used + archive.file.downloaded) that must be durable before the first byte leaves.
Setup (untimed): a fresh hub under /tmp (embedded SQLite, generated secret), a user, a project with
`download_allowed` opened, a registered user key, and one file of --size-mib MiB encrypted with
``c4gh.encrypt_stream`` to the hub key, uploaded part by part through the HTTP API and ingested by the
``archive.ingest`` job. The server runs in its own process (as `strongroom serve`), the client in this one.

Not a test. Absolute numbers swing on a shared machine; read the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from _support import (
    MIB,
    BenchHub,
    build_hub,
    free_port,
    fresh_dir,
    logs_to,
    person_with_project,
    sendfile_serving,
    serving,
)

from strongroom.archive import c4gh


def plaintext_chunks(size_mib: int, digest: hashlib._Hash) -> Iterator[bytes]:
    for _ in range(size_mib):
        block = os.urandom(MIB)
        digest.update(block)
        yield block


def upload(http: httpx.Client, slug: str, hub_public: bytes, size_mib: int) -> str:
    """Encrypt on the fly to the hub key and send it as upload parts, as the CLI does."""
    digest = hashlib.sha256()
    stream = c4gh.encrypt_stream(plaintext_chunks(size_mib, digest), hub_public)
    header = next(stream)
    total = len(header) + c4gh.body_size_for(size_mib * MIB)
    r = http.post(f"/api/v1/projects/{slug}/uploads", json={"path": "big/scan.bin", "size": total})
    r.raise_for_status()
    up = r.json()
    part_size, number, pending, sent = up["part_size"], 1, bytearray(header), 0

    def put(data: bytes | bytearray) -> None:
        nonlocal number, sent
        resp = http.put(f"/api/v1/uploads/{up['id']}/parts/{number}", content=bytes(data))
        resp.raise_for_status()
        number, sent = number + 1, sent + len(data)

    for item in stream:
        pending += item
        while len(pending) >= part_size:
            put(pending[:part_size])
            del pending[:part_size]
    if pending:
        put(pending)
    assert sent == total, (sent, total)
    r = http.post(f"/api/v1/uploads/{up['id']}/complete", json={"sha256": digest.hexdigest()})
    r.raise_for_status()
    return str(up["id"])


def read_baseline(path: Path) -> int:
    """(a) raw sequential read, 1 MiB at a time into one buffer, discarding."""
    buf = memoryview(bytearray(MIB))
    n = 0
    with path.open("rb", buffering=0) as f:
        while got := f.readinto(buf):
            n += got
    return n


def read_baseline_alloc(path: Path) -> int:
    """diag: the same with a new bytes object per 1 MiB read (as a Python server loop does)."""
    n = 0
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(MIB):
            n += len(chunk)
    return n


def download(http: httpx.Client, file_id: str, sink: io.RawIOBase) -> int:
    """(b) the whole download streamed to /dev/null."""
    n = 0
    with http.stream("GET", f"/api/v1/files/{file_id}/content") as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"download failed: {r.status_code} {r.text[:300]}")
        for chunk in r.iter_raw():
            sink.write(chunk)
            n += len(chunk)
        if n != int(r.headers["content-length"]):
            raise RuntimeError(f"short download: {n} of {r.headers['content-length']} bytes")
    return n


def download_curl(url: str, token: str, file_id: str) -> int:
    """diag: the same download with curl (a C client): how fast the server alone can send."""
    out = subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}",
                          "-H", f"Authorization: Bearer {token}", f"{url}/api/v1/files/{file_id}/content"],
                         check=True, capture_output=True, text=True)
    return int(float(out.stdout))


def first_byte(http: httpx.Client, path: str) -> float:
    """Seconds from sending the request to holding the first chunk of the body (connection included)."""
    t0 = time.perf_counter()
    with http.stream("GET", path) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code}")
        next(r.iter_raw())
        elapsed = time.perf_counter() - t0
    return elapsed


def verify(http: httpx.Client, file_id: str, user_key: c4gh.KeyPair, body_sha256: str) -> None:
    """Untimed, once: the download opens with the user's key and carries exactly the stored body."""
    with http.stream("GET", f"/api/v1/files/{file_id}/content") as r:
        r.raise_for_status()
        chunks = r.iter_raw()
        head = bytearray()
        for chunk in chunks:
            head += chunk
            if len(head) >= 4096:
                break
        header = c4gh.read_header(io.BytesIO(bytes(head)))
        c4gh.open_header(header, [user_key.secret])
        body = hashlib.sha256(head[len(header):])
        for chunk in chunks:
            body.update(chunk)
    if body.hexdigest() != body_sha256:
        raise SystemExit("the downloaded body differs from the stored one")


def setup(bench: BenchHub, http: httpx.Client, size_mib: int) -> tuple[str, c4gh.KeyPair]:
    from strongroom.jobs.runner import Runner

    r = http.put("/api/v1/projects/bench/settings/download_allowed", json={"value": True})
    r.raise_for_status()
    user_key = c4gh.generate_keypair()
    r = http.post("/api/v1/me/keys", json={"name": "laptop",
                                           "public_key": c4gh.public_key_file(user_key.public).decode()})
    r.raise_for_status()
    hub_public = c4gh.parse_public_key(http.get("/api/v1/archive/public-key").text)
    t0 = time.perf_counter()
    file_id = upload(http, "bench", hub_public, size_mib)
    t1 = time.perf_counter()
    Runner(bench.hub, name="bench").run_until_idle()
    t2 = time.perf_counter()
    meta = http.get(f"/api/v1/files/{file_id}").json()
    if meta["state"] != "ready":
        raise SystemExit(f"ingest failed: {meta}")
    print(f"setup: uploaded {size_mib} MiB in {t1 - t0:.1f} s, ingested in {t2 - t1:.1f} s "
          f"({meta['body_size'] / MIB:.1f} MiB stored body)", flush=True)
    return file_id, user_key


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (no root needed), so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold(fn: Callable[[], int], path: Path) -> Callable[[], int]:
    def run() -> int:
        evict(path)
        return fn()
    return run


def server_path_alone(app, path: str, token: str) -> int:
    """diag: the app's whole download path called in this process as uvicorn would call it (same ASGI
    scope), the body discarded: everything the server does except the socket."""

    async def call() -> int:
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": [(b"host", b"127.0.0.1"),
                                              (b"authorization", f"Bearer {token}".encode())],
                 "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80), "state": {}}
        n, status, done = 0, 0, asyncio.Event()

        async def receive() -> dict:
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            nonlocal n, status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                n += len(message.get("body", b""))
                if not message.get("more_body"):
                    done.set()

        await app(scope, receive, send)
        if status != 200:
            raise RuntimeError(f"in-process download: status {status}")
        return n

    return asyncio.run(call())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3, help="best-of-N for throughput (N >= 2)")
    parser.add_argument("--ttfb-samples", type=int, default=30)
    args = parser.parse_args()
    repeat = max(2, args.repeat)

    from strongroom.archive import downloads

    with fresh_dir("strongroom-bench-download-") as directory:
        bench = build_hub(directory)
        logs_to(directory / "hub.log", bench.settings)
        token = person_with_project(bench.hub, "alice", "bench")
        with serving(bench, directory / "server.log") as url, \
                httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            file_id, user_key = setup(bench, http, args.size_mib)
            meta = http.get(f"/api/v1/files/{file_id}").json()
            body_path = next((Path(bench.settings.var_dir) / "objects" / "archive").rglob(file_id))
            assert body_path.stat().st_size == meta["body_size"]
            verify(http, file_id, user_key, meta["body_sha256"])  # also warms the page cache and the server
            content = f"/api/v1/files/{file_id}/content"

            def server_alone(chunk: int) -> Callable[[], int]:
                def run() -> int:
                    saved, downloads.STREAM_CHUNK = downloads.STREAM_CHUNK, chunk
                    try:
                        return server_path_alone(bench.app, content, token)
                    finally:
                        downloads.STREAM_CHUNK = saved
                return run

            sink = open(os.devnull, "wb", buffering=0)  # noqa: SIM115
            with sendfile_serving(body_path, free_port()) as ceiling_url, \
                    httpx.Client(base_url=ceiling_url, timeout=120) as plain_http:
                warm: dict[str, Callable[[], int]] = {
                    A: lambda: read_baseline(body_path),
                    B: lambda: download(http, file_id, sink),
                    T: lambda: download(plain_http, "", sink),
                    S: server_alone(downloads.STREAM_CHUNK),
                    S1: server_alone(1 * MIB),
                    ALLOC: lambda: read_baseline_alloc(body_path),
                }
                if shutil.which("curl"):
                    warm[C] = lambda: download_curl(url, token, file_id)
                runs = {**warm, A_COLD: cold(warm[A], body_path), B_COLD: cold(warm[B], body_path)}
                times: dict[str, list[float]] = {name: [] for name in runs}
                sizes: dict[str, int] = {}
                for _ in range(repeat):  # interleaved: load drifts hit every variant alike
                    for name, fn in runs.items():
                        t0 = time.perf_counter()
                        sizes[name] = fn()
                        times[name].append(time.perf_counter() - t0)
            sink.close()

            # (c) time to first byte; beside it the same for a small authenticated JSON read (token check +
            # its audit event) so the download's own share is visible.
            meta_path = f"/api/v1/files/{file_id}"
            ttfb: dict[str, list[float]] = {content: [], meta_path: []}
            for _ in range(args.ttfb_samples):
                for path in ttfb:
                    ttfb[path].append(first_byte(http, path))
                    time.sleep(0.02)  # let the server notice the closed connection

        rate = {name: sizes[name] / MIB / min(t) for name, t in times.items()}
        print(f"\nfile: {meta['plaintext_size'] / MIB:.0f} MiB plaintext, download {sizes[B] / MIB:.1f} MiB; "
              f"{os.cpu_count()} CPUs; server: uvicorn in its own process; STREAM_CHUNK "
              f"{downloads.STREAM_CHUNK // MIB} MiB")
        for name, value in rate.items():
            print(f"{name:58s} {value:7.0f} MiB/s  (best of {repeat}: {min(times[name]):.3f} s; all: "
                  + " ".join(f"{t:.3f}" for t in times[name]) + ")")
        print(f"\nratio b/a   (download / raw read, page cache)         = {rate[B] / rate[A]:.2f}"
              "   (target >= 0.9)")
        print(f"ratio b'/a' (the same, page cache evicted: from disk) = {rate[B_COLD] / rate[A_COLD]:.2f}")
        print(f"ratio b/t   (download / sendfile server, same client) = {rate[B] / rate[T]:.2f}")
        print(f"ratio s/a   (server path without sockets / raw read)  = {rate[S] / rate[A]:.2f};  "
              f"{downloads.STREAM_CHUNK // MIB} MiB chunks vs 1 MiB: {rate[S] / rate[S1]:.2f}x")
        if C in rate:
            print(f"diag: curl / raw read = {rate[C] / rate[A]:.2f};  httpx / curl = {rate[B] / rate[C]:.2f}")
        med = {p: statistics.median(v) * 1000 for p, v in ttfb.items()}
        p90 = {p: sorted(v)[int(0.9 * (len(v) - 1))] * 1000 for p, v in ttfb.items()}
        print(f"\n(c) TTFB of the download: median {med[content]:.1f} ms, p90 {p90[content]:.1f} ms "
              f"over {args.ttfb_samples} requests   (target < 20 ms)")
        print(f"    diag: GET /files/{{id}} (JSON; token check + its audit event): "
              f"median {med[meta_path]:.1f} ms, p90 {p90[meta_path]:.1f} ms -> download TTFB / it = "
              f"{med[content] / med[meta_path]:.2f}")
    return 0


A = "(a) raw read of the stored body, 1 MiB chunks"
B = "(b) GET /files/{id}/content, httpx -> /dev/null"
A_COLD = "(a') raw read, page cache evicted (from disk)"
B_COLD = "(b') download, page cache evicted"
T = "(t) sendfile HTTP server -> the same httpx client"
S = "(s) server path alone (ASGI in-process, no socket)"
S1 = "    diag: (s) with the previous 1 MiB STREAM_CHUNK"
C = "    diag: (b) with curl as the client"
ALLOC = "    diag: raw read, a new bytes object per 1 MiB"


if __name__ == "__main__":
    sys.exit(main())
