"""Scale: (a) many small files through the real upload + ingest pipeline, against the bare per-file engine
cost; (b) listing a dataset version of a million files through the HTTP API, page by page.

    python benchmarks/bench_scale.py [--files 2000] [--dataset-files 1000000] [--samples 7]

(a) N files of 1-4 KiB, each its own crypt4gh stream encrypted to the hub key (client work, done up front
    and not timed), go through the services an API request calls, one transaction per request as the API
    has it: ``begin_upload`` → ``put_part`` → ``complete_upload``; then the ``archive.ingest`` jobs run via
    ``Runner(hub).run_until_idle()``. Reported: files/s for upload, ingest and both, against the bare engine
    on the same bytes in memory (``read_header`` + ``open_header`` + ``c4gh.ingest``), which gives the ratio
    and the per-file overhead of the pipeline (database rows, audit events, job claims, storage writes).
(b) A dataset whose version 1 holds --dataset-files files: rows bulk-inserted into ``archive_files`` (state
    ready) and ``dataset_files`` with SQLAlchemy core (this measures listing, not ingest). Then
    ``GET /api/v1/datasets/{id}/versions/1/files?limit=1000`` for the first page, a middle page and the
    last page from the app served by uvicorn in its own process; median of --samples requests each
    (target < 100 ms), beside the same query run directly through the service (no HTTP) and its plan.

Everything lives in a fresh directory under /tmp (embedded SQLite, local object storage, generated secret)
that is removed at the end. Not a test. Absolute numbers swing on a shared machine; read the ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

import httpx
from _support import BenchHub, build_hub, fresh_dir, logs_to, person_with_project, principal_for, serving
from sqlalchemy import func, insert, select, text, update

from strongroom.archive import c4gh
from strongroom.db import transaction

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PAGE = 1000


# ---------------------------------------------------------------------------------------------- (a)
def make_files(n: int, hub_public: bytes, seed: int = 1) -> list[tuple[str, bytes, str]]:
    """(path, crypt4gh stream, plaintext SHA-256) for n files of 1-4 KiB, as a client would send them."""
    rng = random.Random(seed)
    files = []
    for i in range(n):
        data = rng.randbytes(rng.randint(1024, 4096))
        blob = b"".join(c4gh.encrypt_stream([data], hub_public))
        files.append((f"run-{i // 1000:03d}/file-{i:06d}.txt", blob, hashlib.sha256(data).hexdigest()))
    return files


def engine_only(files: list[tuple[str, bytes, str]], secret: bytes, workers: int,
                batch_segments: int) -> None:
    """The bare per-file engine: open the header with the hub key, one-pass verify/decrypt/hash, body kept in
    memory (no database, no storage, no job)."""
    for _, blob, sha in files:
        reader = io.BytesIO(blob)
        opened = c4gh.open_header(c4gh.read_header(reader), [secret])
        sink = io.BytesIO()
        result = c4gh.ingest(reader, opened.session_keys, sink.write, workers=workers,
                             batch_segments=batch_segments)
        if result.plaintext_sha256 != sha:
            raise SystemExit("engine: wrong plaintext SHA-256")


def upload_all(bench: BenchHub, principal, slug: str,
               files: list[tuple[str, bytes, str]]) -> list[float]:
    """What three API requests per file do (start, one part, complete), each in its own transaction.
    Returns the time at which each file was done."""
    from strongroom.archive import service
    from strongroom.archive.backend import storage_for
    from strongroom.projects import service as projects

    hub, storage, done = bench.hub, storage_for(bench.hub), []
    for path, blob, sha in files:
        with transaction(hub.sessions) as session:
            access = projects.open_project(session, principal, slug)
            file_id = service.begin_upload(session, principal, access, storage, path=path, size=len(blob),
                                           sha256=sha).id
        with transaction(hub.sessions) as session:
            service.put_part(session, principal, storage, file_id, 1, blob)
        with transaction(hub.sessions) as session:
            service.complete_upload(session, principal, storage, file_id)
        done.append(time.perf_counter())
    return done


def ingest_all(bench: BenchHub, expected: int) -> list[float]:
    """``Runner.run_until_idle`` one job at a time (the same loop), noting when each job was done."""
    from strongroom.archive.models import ArchiveFile
    from strongroom.jobs.runner import Runner

    runner, done = Runner(bench.hub, name="bench"), []
    while len(done) < expected + 100 and runner.run_one():
        done.append(time.perf_counter())
    with bench.hub.sessions() as session:
        states = dict(session.execute(select(ArchiveFile.state, func.count())
                                      .group_by(ArchiveFile.state)).all())
    if states.get("ready", 0) < expected:
        raise SystemExit(f"ingest left files behind: {states}")
    return done


def quarters(start: float, done: list[float]) -> tuple[float, float]:
    """Seconds per file over the first and the last quarter of the run (is the cost flat in N?)."""
    q = max(len(done) // 4, 1)
    first = (done[q - 1] - start) / q
    last = (done[-1] - done[-q - 1]) / q if len(done) > q else first
    return first, last


def part_a(bench: BenchHub, token: str, n: int, engine_repeat: int) -> None:
    from strongroom.archive.keys import hub_keys

    with bench.hub.sessions() as session:
        keys = hub_keys(bench.hub, session)
        hub_public, secret = keys.current[1].public, keys.current[1].secret
    print(f"\n(a) {n:,} small files (1-4 KiB), upload + ingest through the services and the job runner",
          flush=True)
    t0 = time.perf_counter()
    files = make_files(n, hub_public)
    print(f"    client side (not timed below): encrypted {n:,} files in {time.perf_counter() - t0:.1f} s",
          flush=True)

    workers = bench.settings.archive.ingest_workers
    variants = {  # name: (workers, batch_segments)
        f"engine as the ingest job calls it (workers={workers}, {c4gh.BATCH_SEGMENTS}-segment batches)":
            (workers, c4gh.BATCH_SEGMENTS),
        f"engine inline (workers=0, {c4gh.BATCH_SEGMENTS}-segment batches)": (0, c4gh.BATCH_SEGMENTS),
        "engine inline, batch sized to the file (1 segment): the floor": (0, 1),
        f"engine workers={workers}, batch sized to the file (1 segment)": (workers, 1),
    }
    sample = files[:min(n, 1000)]
    engine: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(engine_repeat):  # best of N, interleaved
        for name, (w, batch) in variants.items():
            t0 = time.perf_counter()
            engine_only(sample, secret, w, batch)
            engine[name].append((time.perf_counter() - t0) / len(sample))

    principal = principal_for(bench.hub, token)
    t0 = time.perf_counter()
    uploaded = upload_all(bench, principal, "bench", files)
    t1 = time.perf_counter()
    ingested = ingest_all(bench, n)
    t2 = time.perf_counter()

    up, ing, total = (t1 - t0) / n, (t2 - t1) / n, (t2 - t0) / n
    cost = {name: min(t) for name, t in engine.items()}
    as_called, floor = cost[list(variants)[0]], cost[list(variants)[2]]

    def line(name: str, per_file: float, extra: str = "") -> None:
        print(f"    {name:76s} {1 / per_file:8.0f} files/s  {per_file * 1e3:8.2f} ms/file{extra}")

    for name, per_file in cost.items():
        line(name, per_file, f"  (best of {engine_repeat}, {len(sample)} files)" if name == list(variants)[0]
             else "")
    uq, iq = quarters(t0, uploaded), quarters(t1, ingested)
    line("pipeline: upload (begin_upload + put_part + complete_upload)", up,
         f"  (first/last quarter {uq[0] * 1e3:.1f}/{uq[1] * 1e3:.1f} ms)")
    line("pipeline: ingest jobs (Runner)", ing,
         f"  (first/last quarter {iq[0] * 1e3:.1f}/{iq[1] * 1e3:.1f} ms)")
    line("pipeline: upload + ingest", total, f"  ({t2 - t0:.1f} s for {n:,})")
    print(f"\n    ratio pipeline / engine as the job calls it = {as_called / total:.3f}   "
          f"ingest job / engine as called = {as_called / ing:.2f}")
    print(f"    ratio pipeline / engine floor             = {floor / total:.4f}  "
          f"(overhead over the floor: {(total - floor) * 1e3:.1f} ms/file)")
    print("    the engine's fixed per-call cost (4 MiB pipeline buffers) is "
          f"{(as_called - floor) / ing:.0%} of "
          "an ingest job for these files")
    if n < 100_000:
        print(f"    linear extrapolation to 100,000 files: {total * 100_000 / 60:.0f} min for upload + ingest "
              f"(measured {n:,}). A lower bound: claiming a job sorts every queued job, so with 100,000 "
              "queued each claim costs more (see README)")


# ---------------------------------------------------------------------------------------------- (b)
def accessions(n: int, seed: int = 2) -> list[str]:
    rng, seen = random.Random(seed), set()
    while len(seen) < n:
        seen.add("SRF-" + "".join(rng.choices(CROCKFORD, k=10)))
    return sorted(seen)


def build_dataset(bench: BenchHub, token: str, n: int) -> tuple[str, list[str]]:
    """A dataset with one released version of n ready files, the rows written in bulk."""
    from strongroom.archive import service
    from strongroom.archive.models import ArchiveFile, DatasetFile, DatasetVersion
    from strongroom.projects import service as projects

    hub = bench.hub
    principal = principal_for(hub, token)
    with transaction(hub.sessions) as session:
        access = projects.open_project(session, principal, "bench")
        project_id = access.project.id
        ds = service.create_dataset(session, principal, access, title="A million files", files=[])
        dataset_id = ds.id
        version_id = session.scalar(select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset_id))
    ids = accessions(n)
    now = dt.datetime.now(dt.UTC)
    header = os.urandom(124)
    batch = 20_000
    with transaction(hub.sessions) as session:
        for lo in range(0, n, batch):
            rows = []
            for i in range(lo, min(lo + batch, n)):
                fid = ids[i]
                size = 1024 + i % 3072
                rows.append({
                    "id": fid, "project_id": project_id, "uploader_id": principal.user.id,
                    "path": f"cohort/batch-{i // 1000:04d}/scan-{i:07d}.dcm", "state": "ready",
                    "failure": None,
                    "upload_size": size + 152, "reserved_bytes": 0, "inbox_key": f"inbox/{project_id}/{fid}",
                    "multipart_id": None, "declared_sha256": None, "header": header, "header_key": None,
                    "body_key": f"archive/{project_id}/{fid}", "body_size": size + 28,
                    "body_sha256": hashlib.sha256(fid.encode()).hexdigest(), "plaintext_size": size,
                    "plaintext_sha256": hashlib.sha256(fid.encode() + b"p").hexdigest(),
                    "plaintext_md5": hashlib.md5(fid.encode()).hexdigest(), "created_at": now,
                    "ingested_at": now,
                })
            session.execute(insert(ArchiveFile.__table__), rows)
            session.execute(insert(DatasetFile.__table__),
                            [{"version_id": version_id, "file_id": r["id"]} for r in rows])
        session.execute(update(DatasetVersion).where(DatasetVersion.id == version_id).values(
            file_count=n, total_bytes=sum(1024 + i % 3072 for i in range(n))))
    with transaction(hub.sessions) as session:
        service.release_version(session, principal, dataset_id, 1)
    return dataset_id, ids


def query_plan(bench: BenchHub, dataset_id: str, after: str | None) -> list[str]:
    from strongroom.archive.models import ArchiveFile, DatasetFile, DatasetVersion

    with bench.hub.sessions() as session:
        version_id = session.scalar(select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset_id))
        stmt = (select(ArchiveFile).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
                .where(DatasetFile.version_id == version_id).order_by(DatasetFile.file_id).limit(PAGE))
        if after:
            stmt = stmt.where(DatasetFile.file_id > after)
        sql = str(stmt.compile(bind=session.get_bind(), compile_kwargs={"literal_binds": True}))
        return [row[-1] for row in session.execute(text("EXPLAIN QUERY PLAN " + sql))]


def timed(fn: Callable[[], object], samples: int) -> tuple[float, list[float]]:
    fn()  # warm
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def part_b(bench: BenchHub, token: str, n: int, samples: int) -> None:
    from strongroom.archive import service

    print(f"\n(b) listing a dataset version of {n:,} files, {PAGE} per page", flush=True)
    t0 = time.perf_counter()
    dataset_id, ids = build_dataset(bench, token, n)
    db_path = bench.settings.effective_database_url.removeprefix("sqlite:///")
    size_mib = os.path.getsize(db_path) / 2**20
    print(f"    built in {time.perf_counter() - t0:.1f} s (bulk rows; database {size_mib:.0f} MiB)",
          flush=True)
    pages = {"first page": None, "middle page": ids[n // 2 - 1], "last page": ids[max(n - PAGE - 1, 0)]}
    expect = {"first page": ids[:PAGE], "middle page": ids[n // 2:n // 2 + PAGE],
              "last page": ids[max(n - PAGE, 0):]}
    print("    query plan (SQLite): " + " | ".join(query_plan(bench, dataset_id, pages["middle page"])))

    principal = principal_for(bench.hub, token)

    def direct(after: str | None) -> Callable[[], object]:
        def run() -> object:
            with bench.hub.sessions() as session:
                return service.version_files(session, principal, dataset_id, 1, after=after, limit=PAGE)
        return run

    from strongroom.archive.models import ArchiveFile, DatasetFile, DatasetVersion

    with bench.hub.sessions() as session:
        version_id = session.scalar(select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset_id))

    def sql_only(after: str | None) -> Callable[[], object]:
        """diag: the page's SQL through SQLAlchemy core: rows fetched, no ORM objects."""
        table = ArchiveFile.__table__
        stmt = (select(table).join(DatasetFile, DatasetFile.file_id == table.c.id)
                .where(DatasetFile.version_id == version_id).order_by(DatasetFile.file_id).limit(PAGE))
        if after:
            stmt = stmt.where(DatasetFile.file_id > after)

        def run() -> object:
            with bench.hub.sessions() as session:
                return session.execute(stmt).all()
        return run

    with serving(bench, bench.settings.var_dir.parent / "server.log") as url, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        def api(after: str | None) -> Callable[[], object]:
            params = {"limit": PAGE} | ({"after": after} if after else {})

            def run() -> object:
                r = http.get(f"/api/v1/datasets/{dataset_id}/versions/1/files", params=params)
                r.raise_for_status()
                return r.json()
            return run

        meta, _ = timed(lambda: http.get(f"/api/v1/datasets/{dataset_id}").raise_for_status(), samples)
        for name, after in pages.items():
            body = api(after)()
            got = [f["id"] for f in body["files"]]
            if got != expect[name]:
                raise SystemExit(f"{name}: wrong files")
            http_med, http_all = timed(api(after), samples)
            db_med, _ = timed(direct(after), samples)
            sql_med, _ = timed(sql_only(after), samples)
            print(f"    {name:12s} HTTP median {http_med * 1000:6.1f} ms (min {min(http_all) * 1000:.1f}, "
                  f"max {max(http_all) * 1000:.1f}; {len(got)} files)   (target < 100 ms)")
            print(f"    {'':12s} without HTTP: service.version_files {db_med * 1000:5.1f} ms, "
                  f"its SQL alone (core rows) {sql_med * 1000:5.1f} ms")
        print(f"    diag: GET /datasets/{{id}} (small JSON, same auth path): median {meta * 1000:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2_000,
                        help="small files for (a); 0 skips (a). 100,000 take hours here: see the README")
    parser.add_argument("--dataset-files", type=int, default=1_000_000, help="rows for (b); 0 skips (b)")
    parser.add_argument("--samples", type=int, default=7, help="requests per page for the median")
    parser.add_argument("--engine-repeat", type=int, default=3, help="best-of-N for the bare engine")
    args = parser.parse_args()

    with fresh_dir("strongroom-bench-scale-") as directory:
        bench = build_hub(directory)
        logs_to(directory / "hub.log", bench.settings)
        token = person_with_project(bench.hub, "alice", "bench")
        print(f"hub: {directory} (SQLite, local storage); {os.cpu_count()} CPUs", flush=True)
        if args.files:
            part_a(bench, token, args.files, max(1, args.engine_repeat))
        if args.dataset_files:
            part_b(bench, token, args.dataset_files, max(3, args.samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
