"""The scenario run against a :class:`support.cluster.Cluster`: per-unit costs on the quiet cluster, then
uploads, a DICOM send, concurrent resumable downloads and a stream of API reads while the harness kills a
worker, a web server and a volume server, restarts PostgreSQL and partitions a worker from the database.
Then every promise is checked. Shared by tests/test_cluster.py (short) and benchmarks/bench_cluster.py
(full).

Clients retry: a transport error or a 5xx/429 is retried with a short backoff, a resumable download
continues from the byte it had with ``Range``; storescu resends whatever was not acknowledged (the
destination recognises a resent instance). Every request is recorded (time, kind, latency, status) for the
timeline chart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import random
import statistics
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from support.cluster import AET, DICOM_PORT, SENDER, Cluster

MIB = 1 << 20
SLUG = "lab"


@dataclass
class Plan:
    uploads: int = 200
    dicom_instances: int = 200
    downloads: int = 10
    download_mib: int = 4
    readers: int = 2
    fault_gap: float = 4.0  # seconds between a fault and its repair, and between faults
    partition_seconds: float = 10.0
    cost_uploads: int = 50
    cost_dicom: int = 40
    cost_reads: int = 300
    cost_ingest_mib: int = 16


@dataclass
class Sample:
    t: float
    kind: str
    latency: float
    status: int  # 0: transport error


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    quiet_samples: list[Sample] = field(default_factory=list)  # the cost phase: same cluster, no faults
    events: list[tuple[float, str]] = field(default_factory=list)
    t0: float = 0.0


# -- setup ---------------------------------------------------------------------------------------
def setup_project(cluster: Cluster) -> str:
    """Alice, PI of `lab` with a DICOM destination that accepts the operator host's modality; her token."""
    from strongroom.audit.service import Actor
    from strongroom.db import transaction
    from strongroom.identity import service as identity
    from strongroom.identity.models import User
    from strongroom.identity.principal import SCOPES
    from strongroom.projects import service as projects
    from strongroom.projects.models import ProjectSetting

    hub = cluster.hub
    with transaction(hub.sessions) as s:
        user = identity.create_local_user(s, Actor.system("cluster"), username="alice",
                                          password="correct horse battery staple", display_name="Alice",
                                          email="alice@example.org")
        user_id = user.id
    with transaction(hub.sessions) as s:
        project = projects.create_project(s, Actor.system("cluster"), slug=SLUG, name="Lab", pi="alice",
                                          ethics_ref="E1", end_date=dt.date.today() + dt.timedelta(days=365))
        for key, value in (("deid_profile", {"retain_longitudinal": "modified"}),
                           ("dicom_destination", {"ae_title": AET, "port": DICOM_PORT}),
                           ("dicom_senders", [{"ae_title": SENDER, "address": cluster.operator_ip}]),
                           ("download_allowed", True)):  # the downloads below go to the client's machine
            s.add(ProjectSetting(project_id=project.id, key=key, value=value, changed_by=project.pi_id))
    with transaction(hub.sessions) as s:
        user = s.get(User, user_id)
        fake = type("S", (), {"mfa_at": dt.datetime.now(dt.UTC), "id_hash": "cluster0"})()
        principal = identity.session_principal(fake, user, cluster.operator_ip)
        _, token = identity.create_token(s, principal, name="cluster", days=30, max_days=90,
                                         scopes=[x for x in SCOPES if x != "admin"])
    cluster.wait_listening("dicom", DICOM_PORT)
    return token


# -- a retrying client ---------------------------------------------------------------------------
class Client:
    def __init__(self, url: str, token: str, samples: list[Sample], stop: threading.Event) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.samples = samples
        self.stop = stop
        self.retries = 0
        # every download request: (file id, first byte asked for, received whole); a download is whole
        # once, after as many cut-off attempts (resumed with Range from the byte it had) as it took
        self.download_attempts: list[tuple[str, int, bool, float]] = []  # … and when it ended (monotonic)
        self._lock = threading.Lock()

    def attempted(self, file_id: str, start: int, whole: bool) -> None:
        with self._lock:
            self.download_attempts.append((file_id, start, whole, time.monotonic()))

    def call(self, kind: str, method: str, path: str, *, ok=(200, 201, 204, 206), give_up: float = 300,
             **kw: Any) -> httpx.Response:
        deadline, delay = time.monotonic() + give_up, 0.1
        while True:
            t = time.monotonic()
            try:
                r = self.http.request(method, path, **kw)
                status = r.status_code
            except httpx.HTTPError:
                r, status = None, 0
            self.samples.append(Sample(t, kind, time.monotonic() - t, status))
            if r is not None and status in ok:
                return r
            if r is not None and status < 500 and status != 429:
                raise AssertionError(f"{method} {path}: {status} {r.text[:300]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path}: still failing after {give_up} s (last {status})")
            self.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


@dataclass
class Upload:
    path: str
    sha256: str
    size: int
    file_id: str | None = None


def make_uploads(n: int, hub_public: bytes, prefix: str, *, size: tuple[int, int] = (2048, 32768),
                 seed: int = 7) -> list[tuple[Upload, bytes]]:
    from strongroom.archive import c4gh

    rng = random.Random(seed)
    out = []
    for i in range(n):
        data = rng.randbytes(rng.randint(*size))
        blob = b"".join(c4gh.encrypt_stream([data], hub_public))
        out.append((Upload(f"{prefix}/f{i:06d}.bin", hashlib.sha256(data).hexdigest(), len(data)), blob))
    return out


def upload_one(c: Client, up: Upload, blob: bytes, part_size: int) -> None:
    r = c.call("upload", "POST", f"/api/v1/projects/{SLUG}/uploads",
               json={"path": up.path, "size": len(blob), "sha256": up.sha256})
    up.file_id = r.json()["id"]
    for number, start in enumerate(range(0, len(blob), part_size), start=1):
        c.call("upload", "PUT", f"/api/v1/uploads/{up.file_id}/parts/{number}",
               content=blob[start:start + part_size], headers={"Content-Type": "application/octet-stream"})
    c.call("upload", "POST", f"/api/v1/uploads/{up.file_id}/complete", json={"sha256": up.sha256})


def upload_all(c: Client, items: list[tuple[Upload, bytes]], part_size: int, threads: int = 4,
               spread: float = 0.0) -> None:
    """Upload with ``threads`` clients; with ``spread`` the i-th upload starts no earlier than
    i × spread / n seconds from now (a load profile that lasts as long as the fault schedule)."""
    lock, queue = threading.Lock(), list(reversed(list(enumerate(items))))
    errors: list[BaseException] = []
    start = time.monotonic()

    def run() -> None:
        while True:
            with lock:
                if not queue:
                    return
                i, (up, blob) = queue.pop()
            if spread:
                time.sleep(max(0.0, start + i * spread / len(items) - time.monotonic()))
            try:
                upload_one(c, up, blob, part_size)
            except BaseException as e:
                errors.append(e)
                return
    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]


def download(c: Client, file_id: str, chunk: int = 256 * 1024) -> tuple[str, int]:
    """The whole plaintext, resuming with Range after any failure; returns (sha256, resumes)."""
    digest, got, resumes = hashlib.sha256(), 0, 0
    deadline = time.monotonic() + 600
    while True:
        t = time.monotonic()
        headers = {"Range": f"bytes={got}-"} if got else {}
        status, start = 0, got
        try:
            with c.http.stream("GET", f"/api/v1/files/{file_id}/plaintext", headers=headers) as r:
                status = r.status_code
                if status in (200, 206):
                    if got and status != 206:
                        raise AssertionError("a resumed download did not get 206")
                    for piece in r.iter_bytes(chunk):
                        digest.update(piece)
                        got += len(piece)
                    c.samples.append(Sample(t, "download", time.monotonic() - t, status))
                    c.attempted(file_id, start, True)
                    return digest.hexdigest(), resumes
                if status < 500 and status != 429:
                    raise AssertionError(f"download {file_id}: {status}")
        except httpx.HTTPError:
            pass
        c.attempted(file_id, start, False)
        c.samples.append(Sample(t, "download", time.monotonic() - t, 0 if status in (200, 206) else status))
        if time.monotonic() > deadline:
            raise AssertionError(f"download {file_id} still failing")
        resumes += 1
        time.sleep(0.2)


# -- DICOM ---------------------------------------------------------------------------------------
def write_dicom(folder: Path, n: int, first_patient: int = 0) -> list[Path]:
    """n synthetic 64x64 CT instances of 2 or more patients (numbered from ``first_patient``: each call its
    own, at most 50 apart), 2 studies each, up to 10 series of 10 per study (synthetic.make_ct's series
    times are 08:00 + the series number in hours: more series than that would not be valid DICOM times)."""
    from strongroom.imaging import synthetic

    folder.mkdir(parents=True, exist_ok=True)
    per_series, files = 10, []
    patients = max(2, -(-n // (per_series * 10 * 2)))
    series = max(1, -(-n // (per_series * 2 * patients)))
    for p in range(first_patient, first_patient + patients):
        for st in range(2):
            for se in range(1, series + 1):
                for i in range(1, per_series + 1):
                    if len(files) < n:
                        path = folder / f"p{p}-st{st}-se{se}-{i}.dcm"
                        path.write_bytes(synthetic.make_ct(p, st, se, i, rows=64, columns=64))
                        files.append(path)
    return files


def send_dicom(cluster: Cluster, files: list[Path], samples: list[Sample], give_up: float = 900) -> dict[str, int]:
    """storescu until every file was acknowledged; returns file name -> acknowledgements."""
    acked: Counter[str] = Counter()
    deadline = time.monotonic() + give_up
    pending = list(files)
    while pending:
        t = time.monotonic()
        run = subprocess.run(["storescu", "-v", "--no-halt", "-aet", SENDER, "-aec", AET, cluster.ip("dicom"),
                              str(DICOM_PORT), *map(str, pending)], capture_output=True, text=True, timeout=600,
                             env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
        current = None
        for line in (run.stdout + run.stderr).splitlines():
            if "Sending file:" in line:
                current = Path(line.split("Sending file:", 1)[1].strip()).name
            elif "Received Store Response (Success)" in line and current:
                acked[current] += 1
                current = None
        samples.append(Sample(t, "dicom", time.monotonic() - t, 200 if run.returncode == 0 else 0))
        pending = [f for f in pending if not acked[f.name]]
        if pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pending)} DICOM files never acknowledged")
            time.sleep(0.5)
    return dict(acked)


# -- waiting and checking --------------------------------------------------------------------------
def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def files_by_state(cluster: Cluster) -> Counter[str]:
    from sqlalchemy import func, select

    from strongroom.archive.models import ArchiveFile

    with cluster.hub.sessions() as s:
        return Counter(dict(s.execute(select(ArchiveFile.state, func.count()).group_by(ArchiveFile.state)).all()))


def ingest_done(cluster: Cluster, expected_ready: int) -> bool:
    states = files_by_state(cluster)
    return states.get("ready", 0) >= expected_ready and not states.get("uploaded") and not states.get("ingested") \
        and not states.get("verified")


def instances_archived(cluster: Cluster) -> int:
    from sqlalchemy import func, select

    from strongroom.imaging.models import ImportedInstance

    with cluster.hub.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(ImportedInstance)
                            .where(ImportedInstance.state.in_(("archived", "published")))) or 0)


# -- costs -------------------------------------------------------------------------------------------
ROLES = {"web": ("web1", "web2", "lb"), "worker": ("worker1", "worker2", "worker3"), "dicom": ("dicom",),
         "database": ("pg",), "object store": ("master", "vol1", "vol2", "s3")}


def _snapshot(cluster: Cluster) -> dict[str, Any]:
    from sqlalchemy import text

    with cluster.hub.sessions() as s:
        db_bytes = int(s.execute(text("SELECT pg_database_size(current_database())")).scalar() or 0)
        # commits (each a WAL flush: the write IOPS that matter) and rows written, all databases' sessions
        commits, rows = s.execute(text("SELECT xact_commit, tup_inserted + tup_updated + tup_deleted "
                                       "FROM pg_stat_database WHERE datname = current_database()")).one()
    sw = cluster.base / "seaweed"
    store = sum(p.stat().st_size for vol in ("vol1", "vol2") for p in (sw / vol).rglob("*") if p.is_file())
    return {"t": time.monotonic(), "cpu": cluster.cpu_seconds(), "net": cluster.net_bytes(), "db": db_bytes,
            "store": store, "commits": int(commits), "rows": int(rows)}


def _cost(before: dict[str, Any], after: dict[str, Any], units: float, idle_rate: dict[str, float]
          ) -> dict[str, float]:
    seconds = after["t"] - before["t"]
    out: dict[str, float] = {}
    total = 0.0
    for role, hosts in ROLES.items():
        cpu = sum(after["cpu"][h] - before["cpu"][h] - idle_rate[h] * seconds for h in hosts)
        out[f"cpu_ms {role}"] = max(cpu, 0.0) * 1000 / units
        total += max(cpu, 0.0)
    out["cpu_ms total"] = total * 1000 / units
    # every byte crosses two veths (sender's and receiver's): half the sum is what went over the wire
    out["net_bytes"] = sum(after["net"][h] - before["net"][h] for h in after["net"]) / 2 / units
    out["db_bytes"] = (after["db"] - before["db"]) / units
    out["store_bytes"] = (after["store"] - before["store"]) / units
    out["db_commits"] = (after["commits"] - before["commits"]) / units
    out["db_rows_written"] = (after["rows"] - before["rows"]) / units
    return out


def measure_costs(cluster: Cluster, c: Client, token: str, plan: Plan, work: Path, report: Report,
                  hub_public: bytes, part_size: int) -> list[str]:
    """Each unit of work on its own, on the quiet cluster; idle CPU (polling workers) subtracted."""
    log = cluster.log
    a = _snapshot(cluster)
    time.sleep(3.0)  # a measurement window, not a synchronisation
    b = _snapshot(cluster)
    idle = {h: (b["cpu"][h] - a["cpu"][h]) / (b["t"] - a["t"]) for h in b["cpu"]}

    small = make_uploads(plan.cost_uploads, hub_public, "cost-small", seed=11)
    ready0 = files_by_state(cluster).get("ready", 0)
    a = _snapshot(cluster)
    upload_all(c, small, part_size)
    wait_for(lambda: ingest_done(cluster, ready0 + len(small)), 300, "cost uploads ingested")
    report.costs["upload (2-32 KiB file, upload + ingest)"] = _cost(a, _snapshot(cluster), len(small), idle)

    big = make_uploads(max(1, plan.cost_ingest_mib // 8), hub_public, "cost-big", size=(8 * MIB, 8 * MIB), seed=12)
    mib = sum(u.size for u, _ in big) / MIB
    ready0 = files_by_state(cluster).get("ready", 0)
    a = _snapshot(cluster)
    upload_all(c, big, part_size, threads=2)
    wait_for(lambda: ingest_done(cluster, ready0 + len(big)), 300, "cost big uploads ingested")
    report.costs["ingest MiB (8 MiB files, upload + ingest)"] = _cost(a, _snapshot(cluster), mib, idle)

    files = write_dicom(work / "cost-dicom", plan.cost_dicom, first_patient=50)
    n0 = instances_archived(cluster)
    a = _snapshot(cluster)
    send_dicom(cluster, files, [])
    wait_for(lambda: instances_archived(cluster) >= n0 + len(files), 300, "cost DICOM archived")
    report.costs["DICOM instance (64x64 CT, received + de-identified + archived)"] = _cost(
        a, _snapshot(cluster), len(files), idle)

    a = _snapshot(cluster)
    rounds = 2
    for _ in range(rounds):
        for up, _blob in big:
            assert up.file_id is not None
            sha, _ = download(c, up.file_id)
            assert sha == up.sha256
    report.costs["download MiB (plaintext stream)"] = _cost(a, _snapshot(cluster), mib * rounds, idle)

    ids = [u.file_id for u, _ in small if u.file_id]
    a = _snapshot(cluster)
    for i in range(plan.cost_reads):
        c.call("read", "GET", f"/api/v1/files/{ids[i % len(ids)]}")
    report.costs["API read (GET /files/{id})"] = _cost(a, _snapshot(cluster), plan.cost_reads, idle)
    log("[costs] " + "; ".join(f"{k}: {v['cpu_ms total']:.1f} CPU-ms" for k, v in report.costs.items()))
    return [u.path for u, _ in small + big]


# -- the scenario ------------------------------------------------------------------------------------
def faults(cluster: Cluster, plan: Plan, stop: threading.Event) -> None:
    gap = plan.fault_gap

    def pause(seconds: float) -> None:
        stop.wait(seconds)  # pacing of the fault schedule, not a synchronisation

    pause(gap)
    cluster.kill("worker1")
    pause(gap)
    cluster.start("worker1")
    pause(gap)
    cluster.kill("web1")
    pause(gap)
    cluster.start("web1")
    cluster.wait_http(f"http://{cluster.ip('web1')}:8000/healthz", "web1")
    pause(gap)
    cluster.kill("vol1")
    pause(gap * 2)
    cluster.start("vol1")
    pause(gap)
    cluster.restart_pg()
    pause(gap)
    with cluster.partition("worker2", "pg"):
        pause(plan.partition_seconds)
    pause(gap)


def fault_seconds(plan: Plan) -> float:
    """How long `faults` paces itself (its waits for restarts come on top)."""
    return plan.fault_gap * 10 + plan.partition_seconds


def run(cluster: Cluster, plan: Plan, work: Path) -> Report:
    from strongroom.archive.keys import hub_keys

    report = Report()
    token = setup_project(cluster)
    with cluster.hub.sessions() as s:
        hub_public = hub_keys(cluster.hub, s).current[1].public
    part_size = cluster.hub.settings.archive.part_size
    stop = threading.Event()
    setup_client = Client(cluster.lb_url, token, report.quiet_samples, stop)

    cost_paths = measure_costs(cluster, setup_client, token, plan, work, report, hub_public, part_size)

    # the files the downloaders fetch, uploaded before the faults
    bigs = make_uploads(plan.downloads, hub_public, "download", size=(plan.download_mib * MIB,) * 2, seed=13)
    upload_all(setup_client, bigs, part_size, threads=2)
    ready0 = files_by_state(cluster).get("ready", 0)
    items = make_uploads(plan.uploads, hub_public, "scenario", seed=14)
    dicom_files = write_dicom(work / "scenario-dicom", plan.dicom_instances, first_patient=100)
    wait_for(lambda: ingest_done(cluster, ready0), 300, "download files ingested")
    n_dicom0 = instances_archived(cluster)
    cluster.log(f"[scenario] {len(items)} uploads, {len(dicom_files)} DICOM, {len(bigs)} downloads, "
                f"{plan.readers} readers, faults every {plan.fault_gap} s")

    samples = report.samples
    report.t0 = t0 = time.monotonic()
    client = Client(cluster.lb_url, token, samples, stop)
    done_uploading, results = threading.Event(), {}
    download_count: Counter[str] = Counter()
    resumes: list[int] = []
    errors: list[str] = []

    window = fault_seconds(plan)

    def uploads() -> None:
        try:
            upload_all(client, items, part_size, threads=4, spread=window)
        except BaseException as e:
            errors.append(f"uploads: {e}")
        done_uploading.set()

    def dicom() -> None:
        try:  # one association per batch of 20, spread over the fault schedule like the uploads
            acked: dict[str, int] = {}
            batches = [dicom_files[i:i + 20] for i in range(0, len(dicom_files), 20)]
            for j, batch in enumerate(batches):
                time.sleep(max(0.0, t0 + j * window / len(batches) - time.monotonic()))
                acked.update(send_dicom(cluster, batch, samples))
            results["dicom"] = acked
        except BaseException as e:
            errors.append(f"dicom: {e}")

    def downloader(up: Upload) -> None:
        try:
            while True:
                assert up.file_id is not None
                sha, n = download(client, up.file_id)
                resumes.append(n)
                if sha != up.sha256:
                    errors.append(f"download {up.file_id}: checksum differs")
                download_count[up.file_id] += 1
                if stop.is_set():
                    return
        except BaseException as e:
            errors.append(f"download: {e}")

    ids = [u.file_id for u, _ in bigs if u.file_id]

    def reader(k: int) -> None:
        rng = random.Random(k)
        try:
            while not stop.is_set():
                if rng.random() < 0.8:
                    client.call("read", "GET", f"/api/v1/files/{rng.choice(ids)}")
                else:
                    client.call("read", "GET", f"/api/v1/projects/{SLUG}/files", params={"limit": 50})
        except BaseException as e:
            errors.append(f"reader: {e}")

    fault_stop = threading.Event()
    threads = [threading.Thread(target=uploads, daemon=True), threading.Thread(target=dicom, daemon=True)]
    threads += [threading.Thread(target=downloader, args=(u,), daemon=True) for u, _ in bigs]
    threads += [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(plan.readers)]
    fault_error: list[BaseException] = []

    def guarded_faults() -> None:
        try:
            faults(cluster, plan, fault_stop)
        except BaseException as e:
            fault_error.append(e)
    fault_thread = threading.Thread(target=guarded_faults, daemon=True)
    for th in threads:
        th.start()
    fault_thread.start()
    fault_thread.join()
    threads[0].join()
    threads[1].join()
    stop.set()
    for th in threads:
        th.join(900)
    report.figures["scenario seconds"] = time.monotonic() - t0
    report.events = [(t - t0, what) for t, what in cluster.events if t >= t0]
    if fault_error:
        report.problems.append(f"fault injection failed: {fault_error[0]!r}")
    report.problems += errors

    # -- afterwards: let the workers finish, then check every promise
    expected_ready = ready0 + len(items)
    try:
        wait_for(lambda: ingest_done(cluster, expected_ready), 600, "all uploads ingested")
    except AssertionError as e:
        report.problems.append(f"{e}: {dict(files_by_state(cluster))}")
    acked = results.get("dicom", {})
    try:
        wait_for(lambda: instances_archived(cluster) >= n_dicom0 + len(acked), 600, "DICOM archived")
    except AssertionError as e:
        report.problems.append(str(e))
    check(cluster, client, report, items, bigs, cost_paths, acked, n_dicom0)
    check_download_audit(cluster, report, setup_client.download_attempts + client.download_attempts)
    report.figures.update({
        "uploads": len(items), "DICOM instances acknowledged": len(acked), "downloads completed":
            sum(download_count.values()), "download resumes": sum(resumes), "client retries": client.retries,
        "requests": len(samples), "failed attempts (retried)": sum(1 for s in samples if s.status == 0
                                                                    or s.status >= 500),
    })
    return report


def _each(fn, items, threads: int = 4) -> list[Any]:
    """``fn(*item)`` for every item, ``threads`` clients side by side (the read-backs: independent requests,
    each checked as before); results in order, the first exception raised."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="check") as pool:
        return [f.result() for f in [pool.submit(fn, *item) for item in items]]


def check(cluster: Cluster, c: Client, report: Report, items: list[tuple[Upload, bytes]],
          bigs: list[tuple[Upload, bytes]], cost_paths: list[str], acked: dict[str, int], n_dicom0: int) -> None:
    from sqlalchemy import func, select

    from strongroom.archive.models import ArchiveFile
    from strongroom.audit import service as audit
    from strongroom.imaging.models import ImportedInstance
    from strongroom.jobs.models import Job

    p = report.problems
    with cluster.hub.sessions() as s:
        rows = s.execute(select(ArchiveFile.id, ArchiveFile.path, ArchiveFile.state, ArchiveFile.plaintext_sha256,
                                ArchiveFile.body_key)).all()
    by_path: dict[str, list[Any]] = {}
    for row in rows:
        by_path.setdefault(row.path, []).append(row)
    expected = {u.path: u for u, _ in items + bigs}
    orphans = [r for r in rows if r.state == "receiving"]
    lost = duplicated = 0
    for path, up in expected.items():
        ready = [r for r in by_path.get(path, []) if r.state == "ready"]
        if not ready:
            lost += 1
            p.append(f"lost: {path} ({[r.state for r in by_path.get(path, [])]})")
        elif len(ready) > 1:
            duplicated += 1
            p.append(f"duplicated: {path} ({len(ready)} ready)")
        elif ready[0].plaintext_sha256 != up.sha256:
            p.append(f"checksum: {path}")
    failed = [r for r in rows if r.state == "failed"]
    if failed:
        p.append(f"{len(failed)} files failed ingest: {[r.path for r in failed[:5]]}")
    # orphans: uploads whose start was retried after an unanswered first attempt; the client cancels them
    for r in orphans:
        c.call("cleanup", "DELETE", f"/api/v1/uploads/{r.id}")
    report.figures.update({"files lost": lost, "files duplicated": duplicated,
                           "orphan uploads cancelled": len(orphans)})

    # every file's bytes, read back end to end through the load balancer and compared
    ready_rows = {r.path: r for r in rows if r.state == "ready"}
    s3 = cluster.s3_client()

    def read_back(path: str, up: Upload) -> bool:
        r = ready_rows.get(path)
        if r is None:
            return False
        sha, _ = download(c, r.id)
        if sha != up.sha256:
            p.append(f"read back differs: {path}")
        s3.head_object(Bucket="strongroom", Key=r.body_key)  # the archived body exists in the object store
        return True
    report.figures["checksums verified (read back)"] = sum(_each(read_back, expected.items()))

    # DICOM: every acknowledged instance archived exactly once, its archived file readable and intact
    with cluster.hub.sessions() as s:
        inst = s.execute(select(ImportedInstance.sop_instance_uid, ImportedInstance.file_id, ImportedInstance.state)
                         .order_by(ImportedInstance.id)).all()
        dup = s.execute(select(ImportedInstance.sop_instance_uid).group_by(ImportedInstance.sop_instance_uid)
                        .having(func.count() > 1)).all()
        jobs_failed = s.scalar(select(func.count()).select_from(Job).where(Job.status == "failed")) or 0
    scenario_instances = len(inst) - n_dicom0
    if scenario_instances != len(acked):
        p.append(f"DICOM: {len(acked)} acknowledged, {scenario_instances} archived")
    if dup:
        p.append(f"DICOM: {len(dup)} instances archived twice")
    sha_of = {r.id: r.plaintext_sha256 for r in rows}

    def read_back_dicom(_uid: str, file_id: str | None, _state: str) -> bool:
        if file_id is None or file_id not in sha_of:
            p.append(f"DICOM instance without an archived file: {file_id}")
            return False
        sha, _ = download(c, file_id)
        if sha != sha_of[file_id]:
            p.append(f"DICOM file {file_id}: checksum differs")
        return True
    dicom_checked = sum(_each(read_back_dicom, inst[n_dicom0:]))
    report.figures.update({"DICOM instances archived": scenario_instances, "DICOM duplicates": len(dup),
                           "DICOM files verified (read back)": dicom_checked, "failed jobs": jobs_failed})
    if jobs_failed:
        p.append(f"{jobs_failed} failed jobs")

    with cluster.hub.sessions() as s:
        verdict = audit.verify(s)
    report.figures["audit events verified"] = verdict.checked
    if not verdict.ok:
        p.append(f"audit chain: {verdict.problems[:3]}")


def check_download_audit(cluster: Cluster, report: Report, attempts: list[tuple[str, int, bool, float]]) -> None:
    """Every download a client received whole has its "archive.download.completed" event in the chain, the
    ones whose end fell into the database's outage included (written through the audit outbox, replayed
    by the web server once the database answered), and none twice: as many completed events as completed
    downloads, matched request by request (file and first byte).

    Two exceptions, each tied to a killed web server and counted apart. A server records "completed" once
    it has handed every byte to the network: if it is then killed, the tail may be lost on the way, the
    client resumes and that second request completes too (an extra event, which must match one of the
    client's cut-off requests). And a server SIGKILLed after its last byte left but before it wrote the end
    leaves a "started" event with no end at all (no outbox can save what a killed process had not written
    yet): a completed download without its event is accepted only if the client got its last byte within
    10 s of a web server's kill and the server's "started" event of that request has no end event."""
    from sqlalchemy import select

    from strongroom.audit.models import AuditEvent
    from strongroom.audit.outbox import KEY, outbox_path

    whole = Counter((f, start) for f, start, ok, _ in attempts if ok)
    cut = Counter((f, start) for f, start, ok, _ in attempts if not ok)
    web_kills = [t for t, what in cluster.events if what in ("kill web1", "kill web2")]

    def start_of(details: dict[str, Any]) -> int:
        return int((details.get("bytes") or "0-").split("-")[0])

    def completed_events() -> Counter[tuple[str, int]]:
        with cluster.hub.sessions() as s:
            rows = s.execute(select(AuditEvent.target, AuditEvent.details)
                             .where(AuditEvent.action == "archive.download.completed")).all()
        return Counter((target.removeprefix("file:"), start_of(details)) for target, details in rows)

    # the hosts share one var dir, so one outbox file: wait until every waiting event has been replayed
    # (each process retries within 15 s of the database answering)
    path = outbox_path(cluster.hub)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not path.exists() or not path.stat().st_size, 120, "the audit outbox to be replayed")
    events = completed_events()
    missing, extra = whole - events, events - whole
    unexplained = extra - cut
    with cluster.hub.sessions() as s:
        keys = Counter(s.scalars(select(AuditEvent.details[KEY].as_string())
                                 .where(AuditEvent.details[KEY].as_string().is_not(None))))
        ends = s.execute(select(AuditEvent.details).where(AuditEvent.action.in_(
            ("archive.download.completed", "archive.download.failed", "archive.download.aborted")))).scalars()
        ended = {d.get("started_seq") for d in ends}
        started = s.execute(select(AuditEvent.seq, AuditEvent.target, AuditEvent.details)
                            .where(AuditEvent.action == "archive.download.started")).all()
    never_ended = Counter((t.removeprefix("file:"), start_of(d)) for seq, t, d in started if seq not in ended)
    near_kill = Counter((f, start) for f, start, ok, at in attempts
                        if ok and any(-10 <= at - k <= 10 for k in web_kills))
    killed_mid_record = missing & never_ended & near_kill
    missing -= killed_mid_record
    report.figures.update({
        "downloads completed (all phases)": sum(whole.values()),
        "download completed events": sum(events.values()),
        "download completed events missing": sum(missing.values()),
        "completed events of responses cut on the way (client resumed)": sum((extra & cut).values()),
        "downloads whose server was killed before it wrote the end": sum(killed_mid_record.values()),
        "download completed events unexplained": sum(unexplained.values()),
        "audit events replayed from the outbox": len(keys),
        "outbox events written twice": sum(1 for n in keys.values() if n > 1)})
    if missing:
        report.problems.append(f"audit: {sum(missing.values())} of {sum(whole.values())} completed downloads "
                               f"have no archive.download.completed event: {list(missing)[:5]}")
    if unexplained:
        report.problems.append(f"audit: {sum(unexplained.values())} archive.download.completed events match no "
                               f"download request: {list(unexplained)[:5]}")
    if report.figures["outbox events written twice"]:
        report.problems.append("audit: an outbox entry was replayed twice")


# -- the chart -----------------------------------------------------------------------------------------
def timeline(report: Report, bucket: float = 2.0) -> dict[str, list[tuple[float, float, float]]]:
    """kind -> [(bucket start s, successful requests/s, median latency ms)]."""
    end = max((s.t - report.t0 for s in report.samples), default=0.0)
    n = int(end // bucket) + 1
    out: dict[str, list[tuple[float, float, float]]] = {}
    for kind in sorted({s.kind for s in report.samples}):
        rows = []
        for i in range(n):
            lat = [s.latency for s in report.samples if s.kind == kind and s.status and s.status < 500
                   and i * bucket <= s.t - report.t0 < (i + 1) * bucket]
            rows.append((i * bucket, len(lat) / bucket, statistics.median(lat) * 1000 if lat else 0.0))
        out[kind] = rows
    return out


COLOURS = {"upload": "#1f77b4", "download": "#2ca02c", "read": "#ff7f0e", "dicom": "#9467bd", "cleanup": "#7f7f7f"}


def svg_chart(report: Report, title: str) -> str:
    """Two panels (throughput, median latency) over time, the faults as labelled vertical lines; plain SVG."""
    series = timeline(report)
    w, h, left, right, top, panel, gapy = 960, 560, 70, 150, 40, 200, 60
    end = max((r[-1][0] for r in series.values() if r), default=1.0) + 2
    xs = (w - left - right) / max(end, 1)

    def panel_svg(y0: float, index: int, label: str, log_scale: bool) -> list[str]:
        vals = [row[index] for rows in series.values() for row in rows if row[index] > 0]
        top_val = max(vals, default=1.0) * 1.1
        import math

        def y(v: float) -> float:
            if log_scale:
                lo = max(min(vals, default=1.0) / 2, 0.1)
                v = max(v, lo)
                return y0 + panel - panel * (math.log10(v / lo) / max(math.log10(top_val / lo), 1e-9))
            return y0 + panel - panel * v / top_val
        out = [f'<rect x="{left}" y="{y0}" width="{w - left - right}" height="{panel}" fill="none" stroke="#999"/>',
               f'<text x="{left - 8}" y="{y0 + 10}" text-anchor="end" font-size="11">{top_val:.0f}</text>',
               f'<text x="{left - 8}" y="{y0 + panel}" text-anchor="end" font-size="11">'
               f'{"" if log_scale else "0"}</text>',
               f'<text x="14" y="{y0 + panel / 2}" font-size="12" transform="rotate(-90 14 {y0 + panel / 2})" '
               f'text-anchor="middle">{label}</text>']
        for kind, rows in series.items():
            pts = " ".join(f"{left + t * xs:.1f},{y(v[index - 1] if False else row[index]):.1f}"
                           for row in rows for t, v in [(row[0], row)] if not log_scale or row[index] > 0)
            if pts:
                out.append(f'<polyline fill="none" stroke="{COLOURS.get(kind, "#000")}" stroke-width="1.5" '
                           f'points="{pts}"/>')
        return out

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="22" font-size="15">{title}</text>']
    parts += panel_svg(top, 1, "successful requests/s", False)
    parts += panel_svg(top + panel + gapy, 2, "median latency ms (log)", True)
    for t, what in report.events:
        x = left + t * xs
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + 2 * panel + gapy}" stroke="#d62728" '
                     'stroke-dasharray="3,3"/>')
        parts.append(f'<text x="{x + 2:.1f}" y="{top + panel + 14 + (hash(what) % 3) * 12}" font-size="9" '
                     f'fill="#d62728">{what}</text>')
    for i, kind in enumerate(series):
        parts.append(f'<rect x="{w - right + 15}" y="{top + i * 18}" width="12" height="12" '
                     f'fill="{COLOURS.get(kind, "#000")}"/>')
        parts.append(f'<text x="{w - right + 32}" y="{top + i * 18 + 10}" font-size="12">{kind}</text>')
    parts.append(f'<text x="{left}" y="{h - 8}" font-size="11">seconds since the scenario started '
                 f'(0 .. {end:.0f}); red: what the harness did</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def summary(report: Report) -> str:
    lines = ["figures:"] + [f"  {k}: {v:.1f}" if isinstance(v, float) else f"  {k}: {v}"
                            for k, v in report.figures.items()]
    lines.append("per-unit costs (CPU-ms per unit by role; bytes per unit):")
    for unit, cost in report.costs.items():
        roles = ", ".join(f"{k.removeprefix('cpu_ms ')} {v:.1f}" for k, v in cost.items()
                          if k.startswith("cpu_ms ") and k != "cpu_ms total")
        lines.append(f"  {unit}: {cost['cpu_ms total']:.1f} CPU-ms ({roles}); network {cost['net_bytes']:,.0f} B, "
                     f"database {cost['db_bytes']:,.0f} B, object store {cost['store_bytes']:,.0f} B; "
                     f"{cost.get('db_commits', 0):.1f} commits, {cost.get('db_rows_written', 0):.1f} rows written")
    lines.append("median latency per request kind, quiet cluster (cost phase) vs under faults (ratio):")
    for kind in ("upload", "read", "download"):
        quiet = [x.latency for x in report.quiet_samples if x.kind == kind and 0 < x.status < 500]
        loud = [x.latency for x in report.samples if x.kind == kind and 0 < x.status < 500]
        if quiet and loud:
            q, f = statistics.median(quiet) * 1000, statistics.median(loud) * 1000
            lines.append(f"  {kind}: {q:.1f} ms quiet, {f:.1f} ms under faults and load ({f / q:.2f}x)")
    lines.append("harness events: " + "; ".join(f"{t:.0f}s {what}" for t, what in report.events))
    if report.problems:
        lines.append("PROBLEMS:\n  " + "\n  ".join(report.problems[:50]))
    return "\n".join(lines)
