"""Small files (1-4 KiB) uploaded and ingested for real: bundles over HTTP + group-commit ingest by worker
processes, against the per-file path (three requests' services per file + one ingest job per file) measured in
the same run.

    python benchmarks/bench_small_files.py [--files 100000] [--bundle 1000] [--workers 2] [--clients 2]
                                           [--baseline-files 2000] [--postgres]

Setup (not timed): a fresh hub under /tmp (embedded SQLite, or with --postgres a fresh schema in the PostgreSQL
database at 127.0.0.1:5432/test), a project, and every file encrypted client side to the hub key up front.

- **baseline, per-file path**: ``--baseline-files`` files through ``begin_upload`` → ``put_part`` →
  ``complete_upload`` (one transaction each, as three API requests run them), then their ``archive.ingest``
  jobs through the ``Runner`` (bench_scale.py (a)). Half is measured before the new path and half after
  (interleaved), so a change in the machine's load shows up as a difference between the halves.
- **new path**: ``--files`` files sent as bundles of ``--bundle`` files (``POST /api/v1/projects/{slug}/bundles``)
  by ``--clients`` concurrent httpx clients to the app served by uvicorn in its own process, while ``--workers``
  ``strongroom worker`` processes ingest them (one group-commit job per bundle). Timed from the first request
  to the moment the database shows every file ready. Nothing is extrapolated.

Then everything is checked: every file ready, one upload and one ingest audit event per file, the audit chain
intact, the inbox empty, the quota settled, and a sample of archived bodies decrypted back to the plaintext.
Not a test. Absolute numbers swing on a shared machine; read the ratios and the load averages printed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from _support import (
    BenchHub,
    build_hub,
    fresh_dir,
    logs_to,
    person_with_project,
    postgres_schema,
    principal_for,
    serving,
)
from bench_scale import engine_only, ingest_all, make_files, upload_all
from sqlalchemy import func, select

from strongroom.archive import c4gh


def load() -> str:
    return "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg())


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by this benchmark's own threads, its child processes (the server,
    the workers) and every PostgreSQL process on the machine (other sessions' included: read it as an upper
    bound). Linux /proc only; empty elsewhere."""
    out = {"bench": time.process_time(), "server": 0.0, "workers": 0.0, "postgres": 0.0}
    me = os.getpid()
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ppid, cpu = int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK
        if ppid == me and b"worker" in cmdline:
            out["workers"] += cpu
        elif ppid == me and b"serve" in cmdline:
            out["server"] += cpu
        elif stat[stat.index("(") + 1:stat.rindex(")")] == "postgres":
            out["postgres"] += cpu
    return out


def bundle_body(files: list[tuple[str, bytes, str]]) -> bytes:
    manifest = json.dumps({"files": [{"path": p, "size": len(b), "sha256": s} for p, b, s in files]}).encode()
    return len(manifest).to_bytes(4, "big") + manifest + b"".join(b for _, b, _ in files)


@contextlib.contextmanager
def workers(bench: BenchHub, n: int, directory: Path):
    env = {**os.environ, "STRONGROOM_DATABASE_URL": bench.settings.effective_database_url,
           "STRONGROOM_SECRET_KEY": bench.secret, "STRONGROOM_VAR_DIR": str(bench.settings.var_dir),
           "STRONGROOM_JOBS__POLL_SECONDS": "0.05", "STRONGROOM_LOG_JSON": "true", "PYTHONUNBUFFERED": "1"}
    procs, logs = [], []
    for i in range(n):
        log = (directory / f"worker-{i}.log").open("wb")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "strongroom.cli", "worker", "--name", f"w{i}"],
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
    def ready() -> None:
        deadline = time.monotonic() + 600  # a loaded shared machine can take minutes to import the app
        while not all(b"running" in (directory / f"worker-{i}.log").read_bytes() for i in range(n)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit("a worker did not start: see " + str(directory))
            time.sleep(0.1)

    try:
        yield ready
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()


def count_ready(bench: BenchHub) -> int:
    from strongroom.archive.models import ArchiveFile

    with bench.hub.sessions() as session:
        return session.scalar(select(func.count()).select_from(ArchiveFile).where(ArchiveFile.state == "ready")) or 0


def baseline(bench: BenchHub, token: str, files: list[tuple[str, bytes, str]]) -> float:
    """Seconds per file of the per-file path (upload services + one ingest job per file)."""
    principal = principal_for(bench.hub, token)
    already = count_ready(bench)
    t0 = time.perf_counter()
    upload_all(bench, principal, "bench", files)
    ingest_all(bench, already + len(files))
    return (time.perf_counter() - t0) / len(files)


def new_path(bench: BenchHub, token: str, files: list[tuple[str, bytes, str]], bundle: int, clients: int,
             n_workers: int, directory: Path) -> tuple[float, float, float, dict[str, float], dict[str, float]]:
    """(seconds until every bundle was acknowledged, until every file was ready, max ingest lag in files,
    CPU seconds per party during the run: see `cpu_seconds`, the ingest's phases: see `bundle_phases`)."""
    already = count_ready(bench)
    bodies = [bundle_body(files[i:i + bundle]) for i in range(0, len(files), bundle)]
    with workers(bench, n_workers, directory) as workers_ready, \
            serving(bench, directory / "server.log", timeout=600) as url:
        workers_ready()
        queue = list(reversed(bodies))
        lock, errors, retries = threading.Lock(), [], []

        def client() -> None:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as http:
                while True:
                    with lock:
                        if not queue:
                            return
                        body = queue.pop()
                    for attempt in range(20):  # 503 "database busy" asks the client to retry shortly
                        r = http.post("/api/v1/projects/bench/bundles", content=body,
                                      headers={"Content-Type": "application/octet-stream"})
                        if r.status_code != 503:
                            break
                        retries.append(1)
                        time.sleep(0.2 * (attempt + 1))
                    if r.status_code != 201:
                        errors.append(f"{r.status_code} {r.text[:300]}")
                        return

        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        lag = 0
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            with lock:
                sent = len(files) - sum(1 for _ in queue) * bundle
            lag = max(lag, sent - (count_ready(bench) - already))
        t_up = time.perf_counter() - t0
        ready_at_up = count_ready(bench) - already
        if retries:
            print(f"    ({len(retries)} bundle requests answered 503 database busy and were retried)", flush=True)
        if errors:
            raise SystemExit("bundle upload failed: " + errors[0])
        deadline = time.monotonic() + 3600
        while count_ready(bench) - already < len(files):
            if time.monotonic() > deadline:
                raise SystemExit("ingest did not finish within an hour")
            time.sleep(0.05)
        t_all = time.perf_counter() - t0
        cpu1 = cpu_seconds()
    phases = bundle_phases(directory, n_workers)
    if t_all > t_up and ready_at_up < len(files):
        phases["ingest alone after the last bundle was acknowledged (files/s)"] = \
            (len(files) - ready_at_up) / (t_all - t_up)
    return t_up, t_all, lag, {k: cpu1[k] - cpu0[k] for k in cpu1}, phases


def bundle_phases(directory: Path, n_workers: int) -> dict[str, float]:
    """Mean seconds per bundle of each phase of the group ingest, from the workers' ``ingest.bundle`` lines."""
    sums: dict[str, float] = {}
    count = 0
    for i in range(n_workers):
        for line in (directory / f"worker-{i}.log").read_text(errors="replace").splitlines():
            if '"ingest.bundle"' not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                count += 1
                for key, value in record.items():
                    if key.endswith("_s"):
                        sums[key] = sums.get(key, 0.0) + value
    return {f"mean {key[:-2]} s per bundle": value / count for key, value in sums.items()} if count else {}


def check(bench: BenchHub, files: list[tuple[str, bytes, str]], total: int, sample: int = 200) -> str:
    """Everything a correct ingest leaves behind, for all the files of the run."""
    from strongroom.archive.backend import storage_for
    from strongroom.archive.keys import hub_keys
    from strongroom.archive.models import ArchiveFile
    from strongroom.audit import service as audit
    from strongroom.audit.models import AuditEvent
    from strongroom.projects.models import Project

    storage = storage_for(bench.hub)
    with bench.hub.sessions() as session:
        states = dict(session.execute(select(ArchiveFile.state, func.count()).group_by(ArchiveFile.state)).all())
        if states != {"ready": total}:
            raise SystemExit(f"files not all ready: {states}")
        actions = dict(session.execute(select(AuditEvent.action, func.count())
                                       .where(AuditEvent.action.in_(("archive.upload.completed",
                                                                     "archive.file.ingested")))
                                       .group_by(AuditEvent.action)).all())
        if actions != {"archive.upload.completed": total, "archive.file.ingested": total}:
            raise SystemExit(f"audit events: {actions}")
        problems = audit.verify(session).problems
        project = session.scalar(select(Project).where(Project.slug == "bench"))
        used = session.scalar(select(func.sum(ArchiveFile.body_size))) or 0
        if project.reserved_bytes != 0 or project.used_bytes != used:
            raise SystemExit(f"quota: reserved {project.reserved_bytes}, used {project.used_bytes} vs {used}")
        secrets = hub_keys(bench.hub, session).secrets
        by_path = {p: s for p, _, s in files}
        rows = session.execute(select(ArchiveFile.path, ArchiveFile.header, ArchiveFile.body_key,
                                      ArchiveFile.plaintext_sha256)).all()
    inbox = list(storage.iter_keys("inbox/"))
    if inbox:
        raise SystemExit(f"{len(inbox)} objects left in the inbox")
    for path, header, body_key, sha in random.Random(3).sample(rows, min(sample, len(rows))):
        with storage.open_reader(body_key) as body:
            plain = c4gh.decrypt_stream(io.BytesIO(header + body.read()), secrets)
            digest = hashlib.sha256(b"".join(plain)).hexdigest()
        if digest != sha or (path in by_path and by_path[path] != sha):
            raise SystemExit(f"{path}: archived body does not decrypt to the uploaded plaintext")
    chain = "audit chain verified" if not problems else f"AUDIT CHAIN PROBLEMS: {problems[:3]}"
    return (f"all {total:,} files ready; {total:,} upload + {total:,} ingest audit events; {chain}; inbox empty; "
            f"quota settled ({used / 2**20:.0f} MiB used); {min(sample, len(rows))} bodies decrypted and match")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="files through the new path (measured)")
    parser.add_argument("--bundle", type=int, default=1000, help="files per bundle request")
    parser.add_argument("--workers", type=int, default=2, help="`strongroom worker` processes ingesting")
    parser.add_argument("--clients", type=int, default=2, help="concurrent HTTP clients sending bundles")
    parser.add_argument("--baseline-files", type=int, default=2000, help="files through the per-file path")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of the embedded SQLite")
    args = parser.parse_args()

    engine = "PostgreSQL" if args.postgres else "SQLite"
    with fresh_dir("strongroom-bench-small-") as directory, \
            (postgres_schema("bench_small") if args.postgres else contextlib.nullcontext("")) as database_url:
        bench = build_hub(directory, database_url)
        logs_to(directory / "hub.log", bench.settings)
        token = person_with_project(bench.hub, "alice", "bench")
        from strongroom.archive.keys import hub_keys

        with bench.hub.sessions() as session:
            keys = hub_keys(bench.hub, session)
            hub_public, secret = keys.current[1].public, keys.current[1].secret
        half = max(args.baseline_files // 2, 1)
        t0 = time.perf_counter()
        files = make_files(args.files + 2 * half, hub_public)
        base_a, new, base_b = files[:half], files[half:half + args.files], files[half + args.files:]
        print(f"hub: {directory} ({engine}, local storage); {os.cpu_count()} CPUs; {load()}", flush=True)
        print(f"client side (not timed): encrypted {len(files):,} files of 1-4 KiB in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)

        t0 = time.perf_counter()
        engine_only(new[:1000], secret, 0, 1)
        floor = (time.perf_counter() - t0) / min(1000, len(new))

        print(f"\nbaseline, first half ({half:,} files, per-file path) ... {load()}", flush=True)
        per_file_a = baseline(bench, token, base_a)
        print(f"    {1 / per_file_a:8.0f} files/s", flush=True)
        print(f"new path: {args.files:,} files in bundles of {args.bundle}, {args.clients} clients, "
              f"{args.workers} workers ... {load()}", flush=True)
        t_up, t_all, lag, cpu, phases = new_path(bench, token, new, args.bundle, args.clients, args.workers, directory)
        print(f"    done; {load()}", flush=True)
        print(f"baseline, second half ({half:,} files) ... {load()}", flush=True)
        per_file_b = baseline(bench, token, base_b)
        print(f"    {1 / per_file_b:8.0f} files/s; {load()}", flush=True)

        n = args.files
        base = 2 / (per_file_a + per_file_b)
        rate = n / t_all
        print(f"\nsmall files (1-4 KiB), upload + ingest, {engine}, {args.workers} workers, measured on {n:,} files")
        print(f"    baseline per-file path (before / after)          {1 / per_file_a:8.0f} / "
              f"{1 / per_file_b:.0f} files/s")
        print(f"    new: bundles acknowledged (upload, fsynced)      {n / t_up:8.0f} files/s  ({t_up:.1f} s)")
        print(f"    new: upload + ingest, every file ready           {rate:8.0f} files/s  ({t_all:.1f} s for {n:,};"
              f" ingest trailed uploads by at most {lag:,} files)")
        print(f"    bare engine floor (decrypt + hashes in memory)   {1 / floor:8.0f} files/s")
        print("    CPU during the new path (ms per file): " + ", ".join(
            f"{k} {1000 * v / n:.2f}" for k, v in cpu.items()) + f"; {2 * t_all * 1000 / n:.2f} available on 2 cores"
            " (postgres: every PostgreSQL process on the machine)")
        if phases:
            print("    ingest: " + "; ".join(f"{k} {v:.3f}" if v < 10 else f"{k} {v:.0f}" for k, v in phases.items()))
        print(f"\n    ratio new / baseline per-file path  = {rate / base:.1f}x")
        print(f"    ratio new / bare engine floor       = {rate * floor:.2f}")
        print("    check: " + check(bench, files, len(files)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
