"""One user with a million files on PostgreSQL: listing (every page), download, quota. NeIC SDA broke at
~80 k files per user; this measures Strongroom's per-user paths at 1,000 files (the baseline, same run)
and at --files (default 1,000,000).

    python benchmarks/bench_user_files.py [--files 1000000] [--samples 7]

A fresh schema in the PostgreSQL at STRONGROOM_BENCH_PG_URL (default: the tests' 127.0.0.1:5432/test), local
object storage under a fresh /tmp directory, the app served by uvicorn in its own process. Alice, PI of
`bench` (downloads allowed), uploads three real files through the API (ingested by the job runner); the
rest of her files are rows bulk-inserted into ``archive_files`` (state ready, uploader alice, the
project's used bytes raised to match): this measures what a user with that many files does, not ingest.

Measured at both sizes, medians of --samples: ``GET /projects/bench/files?limit=1000`` first, middle and
last page (keyset pagination, ``after``); a walk over every page (total time, files seen); ``GET
/files/{id}``; a download of a real 1 MiB file (plaintext, checksum compared); the quota: starting an
upload that fits (the conditional UPDATE on the project row) and one that does not (refused). Printed:
each figure at both sizes and the ratio; the database size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

import httpx
from _support import MIB, build_hub, fresh_dir, logs_to, person_with_project, postgres_schema, principal_for, serving
from sqlalchemy import insert, select, text, update

from strongroom.archive import c4gh
from strongroom.db import transaction

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PAGE = 1000


def timed(fn: Callable[[], object], samples: int) -> float:
    fn()
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def upload_real(http: httpx.Client, hub_public: bytes, n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        data = os.urandom(MIB)
        sha = hashlib.sha256(data).hexdigest()
        blob = b"".join(c4gh.encrypt_stream([data], hub_public))
        r = http.post("/api/v1/projects/bench/uploads", json={"path": f"real/{i}.bin", "size": len(blob),
                                                              "sha256": sha})
        r.raise_for_status()
        fid = r.json()["id"]
        http.put(f"/api/v1/uploads/{fid}/parts/1", content=blob).raise_for_status()
        http.post(f"/api/v1/uploads/{fid}/complete", json={"sha256": sha}).raise_for_status()
        out.append((fid, sha))
    return out


def bulk_files(bench, principal, project_id, n: int, seed: int) -> int:
    """n ready files of alice's, in batches; returns their plaintext bytes (added to the project's usage)."""
    from strongroom.archive.models import ArchiveFile
    from strongroom.projects.models import Project

    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    header = os.urandom(124)
    total, batch = 0, 20_000
    for lo in range(0, n, batch):
        rows = []
        for i in range(lo, min(lo + batch, n)):
            fid = "SRF-" + "".join(rng.choices(CROCKFORD, k=10))
            size = 1024 + i % 3072
            total += size
            rows.append({
                "id": fid, "project_id": project_id, "uploader_id": principal.user.id,
                "path": f"bulk-{seed}/batch-{i // 1000:04d}/scan-{i:07d}.dcm", "state": "ready", "failure": None,
                "upload_size": size + 152, "reserved_bytes": 0, "inbox_key": f"inbox/{project_id}/{fid}",
                "multipart_id": None, "declared_sha256": None, "header": header, "header_key": None,
                "body_key": f"archive/{project_id}/{fid}", "body_size": size + 28,
                "body_sha256": hashlib.sha256(fid.encode()).hexdigest(), "plaintext_size": size,
                "plaintext_sha256": hashlib.sha256(fid.encode() + b"p").hexdigest(),
                "plaintext_md5": hashlib.md5(fid.encode()).hexdigest(), "created_at": now, "ingested_at": now,
            })
        with transaction(bench.hub.sessions) as session:
            session.execute(insert(ArchiveFile.__table__), rows)
            session.execute(update(Project).where(Project.id == project_id)
                            .values(used_bytes=Project.used_bytes + sum(r["plaintext_size"] for r in rows)))
        if (lo // batch) % 10 == 9:
            print(f"    ... {lo + batch:,} rows", flush=True)
    with bench.hub.sessions() as session:
        session.execute(text("ANALYZE archive_files"))
        session.commit()
    return total


def count_files(bench, project_id) -> int:
    """Every row the listing shows (the quota probes leave their cancelled uploads behind)."""
    from sqlalchemy import func

    from strongroom.archive.models import ArchiveFile

    with bench.hub.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(ArchiveFile)
                                  .where(ArchiveFile.project_id == project_id)) or 0)


def measure(http: httpx.Client, real: list[tuple[str, str]], samples: int, expected: int) -> dict[str, float]:
    out: dict[str, float] = {}

    def page(after: str | None) -> list[dict]:
        params: dict[str, object] = {"limit": PAGE} | ({"after": after} if after else {})
        r = http.get("/api/v1/projects/bench/files", params=params)
        r.raise_for_status()
        return r.json()

    t0 = time.perf_counter()
    seen, after, ids = 0, None, []
    while True:
        got = page(after)
        if not got:
            break
        seen += len(got)
        ids.append(got[-1]["id"])
        after = got[-1]["id"]
    out["walk every page (s)"] = time.perf_counter() - t0
    out["files seen in the walk"] = seen
    if seen != expected:
        raise SystemExit(f"the walk saw {seen} files, expected {expected}")
    out["list: first page (ms)"] = timed(lambda: page(None), samples) * 1000
    mid, last = ids[len(ids) // 2 - 1] if len(ids) > 1 else None, ids[-2] if len(ids) > 1 else None
    out["list: middle page (ms)"] = timed(lambda: page(mid), samples) * 1000
    out["list: last page (ms)"] = timed(lambda: page(last), samples) * 1000
    fid, sha = real[0]
    out["GET /files/{id} (ms)"] = timed(lambda: http.get(f"/api/v1/files/{fid}").raise_for_status(), samples) * 1000

    def download() -> None:
        r = http.get(f"/api/v1/files/{fid}/plaintext")
        r.raise_for_status()
        if hashlib.sha256(r.content).hexdigest() != sha:
            raise SystemExit("download: checksum differs")
    out["download 1 MiB (ms)"] = timed(download, samples) * 1000

    def start_and_cancel() -> None:
        r = http.post("/api/v1/projects/bench/uploads", json={"path": "quota/probe.bin", "size": MIB})
        r.raise_for_status()
        http.delete(f"/api/v1/uploads/{r.json()['id']}").raise_for_status()
    out["quota: start+cancel an upload that fits (ms)"] = timed(start_and_cancel, samples) * 1000
    r = http.post("/api/v1/projects/bench/uploads", json={"path": "quota/too-big.bin", "size": 10**15})
    if r.status_code < 400:
        raise SystemExit("an upload beyond the quota was accepted")
    out["quota: refusal status"] = r.status_code
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=7)
    args = parser.parse_args()
    from strongroom.archive.keys import hub_keys
    from strongroom.jobs.runner import Runner
    from strongroom.projects.models import Project, ProjectSetting

    with fresh_dir("strongroom-bench-userfiles-") as directory, postgres_schema("bench_userfiles") as url:
        bench = build_hub(directory, url)
        logs_to(directory / "hub.log", bench.settings)
        token = person_with_project(bench.hub, "alice", "bench")
        principal = principal_for(bench.hub, token)
        with transaction(bench.hub.sessions) as s:
            project = s.scalar(select(Project).where(Project.slug == "bench"))
            project_id = project.id
            s.add(ProjectSetting(project_id=project_id, key="download_allowed", value=True,
                                 changed_by=project.pi_id))
        with bench.hub.sessions() as s:
            hub_public = hub_keys(bench.hub, s).current[1].public
        print(f"hub: {directory}; PostgreSQL {url.split('?')[0]}; {os.cpu_count()} CPUs", flush=True)
        with serving(bench, directory / "server.log") as base, \
                httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            real = upload_real(http, hub_public, 3)
            Runner(bench.hub, name="bench").run_until_idle()
            bulk_files(bench, principal, project_id, 1000 - len(real), seed=1)
            small = measure(http, real, args.samples, count_files(bench, project_id))
            print(f"\nbaseline: 1,000 files of alice's: walk {small['walk every page (s)']:.2f} s", flush=True)
            t0 = time.perf_counter()
            bulk_files(bench, principal, project_id, args.files - 1000, seed=2)
            with bench.hub.sessions() as s:
                db_mib = s.execute(text("SELECT pg_total_relation_size('archive_files')")).scalar() / MIB
            print(f"filled to {args.files:,} files in {time.perf_counter() - t0:.0f} s (archive_files with its "
                  f"indexes: {db_mib:.0f} MiB)", flush=True)
            big = measure(http, real, args.samples, count_files(bench, project_id))
        print(f"\n{'':48s} {'1,000 files':>12s} {args.files:>12,} files   ratio")
        for key in small:
            ratio = big[key] / small[key] if small[key] else float("nan")
            print(f"{key:48s} {small[key]:12.1f} {big[key]:12.1f}   {ratio:6.2f}x")
        walk = big["walk every page (s)"]
        print(f"\nwalk: {args.files / walk:,.0f} files/s listed ({args.files // PAGE:,} pages of {PAGE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
