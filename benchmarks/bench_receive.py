"""DICOM receive throughput: Strongroom's project destination (``strongroom dicom serve``, the real command
in its own process) against Orthanc and dcmtk's ``storescp`` writing to disk, all fed by dcmtk ``storescu``
(``TCP_NODELAY=1``, one association per send) with the same generated CT files, round after round.

    python benchmarks/bench_receive.py [--files 500] [--rounds 3] [--no-orthanc] [--no-bit-preserving]
                                       [--diag nofsync,scanfix,scanfix-nofsync,backlog,received,
                                              received-only,received-nofsync,idle,received-idle]
                                       [--baseline-src DIR] [--keep]

Targets (issue 16): acknowledged >= 1.0x Orthanc and >= 0.5x storescp writing to disk; end to end >= 0.8x Orthanc.

Receivers, each started once (storescp once per round, with a fresh output directory):

- **storescp**: ``storescp -od DIR PORT`` with plain defaults (16 KiB max PDU; decodes and re-encodes each
  data set; no fsync). ``storescp +B`` (bit-preserving: writes the bytes as received) is a second figure.
- **Orthanc** (Debian package; ``apt-get install orthanc``, skipped when absent): a throwaway instance on
  loopback with its own storage directory, ``DicomCheckCalledAet: false``, ``DicomAlwaysAllowStore: true``,
  no plugins and otherwise its defaults: ``SyncStorageArea: true`` (fsync per file), SQLite index,
  16 KiB max PDU, 4 DICOM threads. Orthanc has no DICOM TCP_NODELAY option of its own (its ``TcpNoDelay``
  is for HTTP); it links Debian's dcmtk, which turns Nagle off when ``TCP_NODELAY=1`` is in its
  environment, so Orthanc and storescp both get it, as the sender does. Its received instances are deleted
  over REST between rounds.
- **Strongroom**: ``python -m strongroom.cli dicom serve --workers 2`` with embedded SQLite, local object
  storage and its defaults (fsync on, 128 KiB max PDU). A project has a DICOM destination, one allowed
  sender (``BENCH`` from 127.0.0.1) and the profile ``retain_longitudinal: modified``. Two figures:
  *ack* = N / storescu's wall time (what the sender sees: every object de-identified and durable in the
  spool before its C-STORE response); *end-to-end* = N / time from the start of storescu until all N
  instances are rows of ``imaging_instances`` (verified, encrypted into the archive, committed).
  ``--diag`` adds diagnostic Strongroom hubs (each its own serve process and database): ``nofsync`` with
  ``STRONGROOM_IMAGING__FSYNC=false``; ``scanfix`` with the leak scan skipping the pixel data as
  ``verify._header_bytes`` intends (with pydicom 3 it does not: see VERIFY_FIX below; the patch lives in a
  temporary sitecustomize.py, src/ is untouched); ``scanfix-nofsync`` with both; ``backlog``
  (``RECEIVE_BACKLOG=1000``: a burst acknowledged first, verified once the sender leaves); ``received``
  (``ACKNOWLEDGE=received`` with that backlog: acknowledged once the original is durable, de-identified
  afterwards in the pool); ``received-only`` (``ACKNOWLEDGE=received`` without a backlog);
  ``received-nofsync`` (``received`` with ``FSYNC=false``, as storescp writes); ``idle`` (``POOL_PRIORITY=idle``:
  the verification pool in SCHED_IDLE instead of nice 10) and ``received-idle`` (with ``ACKNOWLEDGE=received``).
  Diagnostics get no verdict: all but the first two are a site's documented choices.

Every round gets its own corpus (new patients, so new SOP Instance UIDs: Strongroom recognises a resent
instance by its pseudonymized UID and does not store it twice), generated before anything is timed; every
receiver gets the same round's files, in a rotating order. Each receiver gets a small untimed warm-up
send first. Figures are medians over rounds and ratios are medians of per-round ratios: the machine is
shared and noisy. "CPU ms/file" is the receiver's CPU (all its processes) over the timed window, from
/proc. Not a test; everything lives in a fresh /tmp directory, removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _support import free_port

from strongroom.imaging.synthetic import make_ct

SENDER_AET = "BENCH"
NODELAY_ENV = {"TCP_NODELAY": "1"}  # Debian's dcmtk turns Nagle off only with this in the environment
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------- corpus


def _write_one(args: tuple[Path, int, int, int, int]) -> int:
    directory, p, st, se, i = args
    path = directory / f"p{p:06d}_st{st}_se{se}_{i:04d}.dcm"
    data = make_ct(p, st, se, i)
    path.write_bytes(data)
    return len(data)


def make_corpus(directory: Path, files: int, first_patient: int, patients: int) -> list[Path]:
    """``files`` 512x512 16-bit CT instances: ``patients`` patients x 2 studies x 2 series. Patient
    numbers start at ``first_patient``, so every corpus has its own UIDs."""
    studies, series = 2, 2
    per_series = max(1, -(-files // (patients * studies * series)))
    directory.mkdir(parents=True, exist_ok=True)
    jobs = [(directory, p, st, se, i) for p in range(first_patient, first_patient + patients)
            for st in range(studies) for se in range(1, series + 1) for i in range(1, per_series + 1)][:files]
    with mp.get_context("fork").Pool(os.cpu_count() or 2, initializer=signal.signal,
                                     initargs=(signal.SIGTERM, signal.SIG_DFL)) as pool:
        pool.map(_write_one, jobs, chunksize=16)
    paths = sorted(directory.iterdir())
    for path in paths:  # every receiver is fed from the page cache
        path.read_bytes()
    return paths


# ------------------------------------------------------------------------------------------- plumbing


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {port}")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and every live descendant, including their reaped children."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, wait: float = 30) -> None:
    """Stop a process this benchmark started, and then any of its descendants still alive."""
    if proc is None or proc.poll() is not None:
        return
    family = descendants(proc.pid)
    proc.send_signal(sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 10
    for pid in family:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


SENDER_CPU: list[float] = []  # storescu's CPU seconds, one per send


def storescu(port: int, aec: str, paths: list[Path]) -> float:
    """Send ``paths`` in one association; the wall time of storescu (its CPU goes to ``SENDER_CPU``)."""
    cmd = ["storescu", "-aet", SENDER_AET, "-aec", aec, "127.0.0.1", str(port), *map(str, paths)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run(cmd, env={**os.environ, **NODELAY_ENV}, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # (storescu, reaped by run(); nothing else ends here)
    SENDER_CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    problems = [line for line in r.stderr.splitlines() if line.startswith(("E:", "F:"))]
    if r.returncode != 0 or problems:
        raise RuntimeError(f"storescu to {aec} failed ({r.returncode}): " + "\n".join(problems or [r.stderr[-2000:]]))
    return elapsed


# ------------------------------------------------------------------------------------------ work floor


def _required_work(paths: list[str], scratch: str) -> float:
    """CPU seconds (user + system, this process) of the work Strongroom must do on each object beyond
    receiving it: de-identification (``pipeline.deidentify_stage``), then verification and sealing into
    local archive storage (``pipeline.verify_and_seal``: leak scan, risk check, DICOMweb index, SHA-256 and
    MD5, crypt4gh encryption, the body written and fsynced) — the engines the hub runs, called directly, one
    object after the other, with no spool, no process pool, no database. Runs in a fresh process."""
    from nacl.public import PrivateKey

    from strongroom.config import StorageSettings
    from strongroom.imaging import pipeline
    from strongroom.imaging.settings import to_engine

    profile = to_engine({"retain_longitudinal": "modified"})  # the benchmark project's profile
    secret = secrets.token_bytes(32)
    target = pipeline.SealTarget(StorageSettings(), Path(scratch), "bench", bytes(PrivateKey.generate().public_key),
                                 "bench", "")
    cpu0 = time.process_time()
    for i, raw in enumerate(paths):
        out = f"{scratch}/{i}.dcm"
        summary = pipeline.deidentify_stage(raw, out, profile, secret)
        verified, _ = pipeline.verify_and_seal(raw, out, profile, summary, dataclasses.replace(target, file_id=f"F{i}"))
        if verified["reasons"]:
            raise RuntimeError(f"the work floor's object {raw} did not verify: {verified['reasons']}")
        os.unlink(out)
    return time.process_time() - cpu0


def required_work_ms(paths: list[Path], scratch: Path) -> float:
    """``_required_work`` per object, in milliseconds, in a process of its own (spawned: a clean heap)."""
    scratch.mkdir(parents=True, exist_ok=True)
    with mp.get_context("spawn").Pool(1) as pool:
        seconds = pool.apply(_required_work, ([str(p) for p in paths], str(scratch)))
    shutil.rmtree(scratch, ignore_errors=True)
    return seconds / len(paths) * 1000


class Receiver:
    name = ""
    label = ""  # short, for the per-round line

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def warm(self, paths: list[Path]) -> None:
        self.receive(paths)

    def receive(self, paths: list[Path]) -> dict[str, float]:
        """Seconds of each figure this receiver reports, and ``cpu`` seconds."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------- storescp


class StoreSCP(Receiver):
    def __init__(self, work: Path, bit_preserving: bool) -> None:
        self.work = work
        self.extra = ["+B"] if bit_preserving else []
        self.name = "dcmtk storescp" + (" +B (bit-preserving)" if bit_preserving else " (defaults)")
        self.label = "storescp+B" if bit_preserving else "storescp"
        self.proc: subprocess.Popen[bytes] | None = None

    def receive(self, paths: list[Path]) -> dict[str, float]:
        out = self.work / "storescp-out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        port = free_port()
        self.proc = subprocess.Popen(["storescp", *self.extra, "-od", str(out), str(port)],
                                     env={**os.environ, **NODELAY_ENV}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, self.proc, "storescp")
            cpu0 = cpu_seconds(self.proc.pid)
            elapsed = storescu(port, "STORESCP", paths)
            cpu = cpu_seconds(self.proc.pid) - cpu0
        finally:
            stop_process(self.proc)
            self.proc = None
        stored = sum(1 for _ in out.iterdir())
        shutil.rmtree(out, ignore_errors=True)
        if stored != len(paths):
            raise RuntimeError(f"storescp stored {stored} of {len(paths)} files")
        return {"ack": elapsed, "cpu": cpu}

    def stop(self) -> None:
        stop_process(self.proc)


# ------------------------------------------------------------------------------------- pynetdicom floor


class PynetdicomFloor(Receiver):
    """``benchmarks/_floor_scp.py``: pynetdicom with Strongroom's network settings and nothing else to do
    (``bare``), or only an fsync of each object and its directory before the status (``fsync``), or only an
    ``fdatasync`` of a pre-zeroed journal segment (``journal``) — how fast a Python receiver on this network
    layer can acknowledge at all, and what the form of the fsync costs."""

    def __init__(self, work: Path, fsync: bool, journal: bool = False) -> None:
        self.work = work
        self.fsync = fsync
        self.journal = journal
        self.label = "floor-journal" if journal else "floor-fsync" if fsync else "floor-bare"
        self.name = "pynetdicom floor: " + ("journal segment fdatasync per object" if journal else
                                            "fsync per object, nothing else" if fsync else "nothing done per object")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        script = Path(__file__).with_name("_floor_scp.py")
        self.proc = subprocess.Popen([sys.executable, str(script), str(self.port), str(self.work / "spool"),
                                      *(["--fsync"] if self.fsync else []), *(["--journal"] if self.journal else [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, self.name)

    def receive(self, paths: list[Path]) -> dict[str, float]:
        assert self.proc is not None
        cpu0 = cpu_seconds(self.proc.pid)
        elapsed = storescu(self.port, "FLOOR", paths)
        return {"ack": elapsed, "cpu": cpu_seconds(self.proc.pid) - cpu0}

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


# -------------------------------------------------------------------------------------------- Orthanc


def _orthanc_binary() -> str:
    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else "")


def _orthanc_version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()[1]
    except (OSError, IndexError):
        return "?"


class Orthanc(Receiver):
    """A throwaway Orthanc (Debian package) on loopback: its C-STORE response comes after the file is
    written (fsync) and indexed, so its ack is also its end-to-end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.binary = _orthanc_binary()
        self.version = _orthanc_version(self.binary) if self.binary else ""
        self.name = f"Orthanc {self.version} (defaults: fsync, SQLite index)"
        self.label = "orthanc"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        db = self.work / "storage"
        config = self.work / "orthanc.json"
        config.write_text(json.dumps({
            "Name": "bench-receive", "StorageDirectory": str(db), "IndexDirectory": str(db),
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomServerEnabled": True, "DicomAet": "ORTHANC", "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "Plugins": [],
            # everything else (SyncStorageArea true, StorageCompression false, MaximumPduLength 16384,
            # DicomThreadsCount 4, OverwriteInstances false) stays at Orthanc's defaults
        }))
        self.log = (self.work / "orthanc.log").open("wb")
        self.proc = subprocess.Popen([self.binary, str(config)], env={**os.environ, **NODELAY_ENV},
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                self._rest("GET", "/system")
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"Orthanc did not start (see {self.work / 'orthanc.log'})") from None
                time.sleep(0.2)
        wait_listening(self.dicom_port, self.proc, "Orthanc")

    def _rest(self, method: str, url: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=120)
        try:
            conn.request(method, url)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"Orthanc {method} {url}: HTTP {resp.status}")
            return json.loads(body) if body else None
        finally:
            conn.close()

    def _count(self) -> int:
        return int(self._rest("GET", "/statistics")["CountInstances"])

    def _clear(self) -> None:
        for patient in self._rest("GET", "/patients"):
            self._rest("DELETE", f"/patients/{patient}")
        if self._count():
            raise RuntimeError("Orthanc still holds instances after deleting every patient")

    def receive(self, paths: list[Path]) -> dict[str, float]:
        assert self.proc is not None
        self._clear()  # every round stores new data into an empty Orthanc
        cpu0 = cpu_seconds(self.proc.pid)
        elapsed = storescu(self.dicom_port, "ORTHANC", paths)
        cpu = cpu_seconds(self.proc.pid) - cpu0
        stored = self._count()
        if stored != len(paths):
            raise RuntimeError(f"Orthanc stored {stored} of {len(paths)} instances")
        self._clear()
        return {"ack": elapsed, "cpu": cpu}

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


# ----------------------------------------------------------------------------------------- Strongroom


# --diag scanfix: a sitecustomize.py put on PYTHONPATH of that one diagnostic `dicom serve` (and so of its
# spawned workers). It changes nothing in src/: it makes the pydicom call in verify._header_bytes keep the
# deferred pixel data unread, as that function expects (with pydicom 3, get_item() reads a deferred value and
# returns a DataElement without value_tell, so the pixel data is never cut out of the scanned bytes).
VERIFY_FIX = '''"""bench_receive.py --diag scanfix only: not part of Strongroom."""
import sys

try:
    import pydicom.dataset as _dataset
except ImportError:
    pass
else:
    _get_item = _dataset.Dataset.get_item

    def _patched_get_item(self, key, *, keep_deferred=False):
        if sys._getframe(1).f_code.co_name == "_header_bytes":
            keep_deferred = True
        return _get_item(self, key, keep_deferred=keep_deferred)

    _dataset.Dataset.get_item = _patched_get_item
'''

NOFSYNC = {"STRONGROOM_IMAGING__FSYNC": "false"}
IDLE = {"STRONGROOM_IMAGING__POOL_PRIORITY": "idle"}
VARIANTS: dict[str, tuple[str, dict[str, str], bool]] = {  # label: (title suffix, environment, VERIFY_FIX)
    "strongroom": ("", {}, False),
    "sr-nofsync": (" [diag: FSYNC=false]", NOFSYNC, False),
    "sr-scanfix": (" [diag: scan fix]", {}, True),
    "sr-scanfix-nofsync": (" [diag: scan fix, FSYNC=false]", NOFSYNC, True),
    # imaging.receive_backlog, a site's choice (off by default): a burst acknowledged first, verified after
    "sr-backlog": (" [diag: RECEIVE_BACKLOG=1000]", {"STRONGROOM_IMAGING__RECEIVE_BACKLOG": "1000"}, False),
    # imaging.acknowledge = "received" with that backlog, a site's choice: acknowledged once the original is
    # durable, de-identified after (a sender learns of an unprocessable object from the import report)
    "sr-received": (" [diag: ACKNOWLEDGE=received, RECEIVE_BACKLOG=1000]",
                    {"STRONGROOM_IMAGING__ACKNOWLEDGE": "received", "STRONGROOM_IMAGING__RECEIVE_BACKLOG": "1000"},
                    False),
    "sr-received-only": (" [diag: ACKNOWLEDGE=received]", {"STRONGROOM_IMAGING__ACKNOWLEDGE": "received"}, False),
    # ... and without fsync (the site's other documented choice): what storescp, which does not fsync, is compared with
    "sr-received-nofsync": (" [diag: ACKNOWLEDGE=received, RECEIVE_BACKLOG=1000, FSYNC=false]",
                            {"STRONGROOM_IMAGING__ACKNOWLEDGE": "received",
                             "STRONGROOM_IMAGING__RECEIVE_BACKLOG": "1000", **NOFSYNC}, False),
    # imaging.pool_priority = "idle", a site's choice: the verification pool in SCHED_IDLE instead of nice 10
    "sr-idle": (" [diag: POOL_PRIORITY=idle]", IDLE, False),
    "sr-received-idle": (" [diag: ACKNOWLEDGE=received, POOL_PRIORITY=idle]",
                         {"STRONGROOM_IMAGING__ACKNOWLEDGE": "received", **IDLE}, False),
}
DIAGNOSTICS = {"nofsync": "sr-nofsync", "scanfix": "sr-scanfix", "scanfix-nofsync": "sr-scanfix-nofsync",
               "backlog": "sr-backlog", "received": "sr-received",
               "received-only": "sr-received-only", "received-nofsync": "sr-received-nofsync",
               "idle": "sr-idle", "received-idle": "sr-received-idle"}


class Strongroom(Receiver):
    """``strongroom dicom serve`` in its own process, on a fresh hub (embedded SQLite, local storage)."""

    AET = "BENCH_AE"

    def __init__(self, work: Path, label: str = "strongroom") -> None:
        self.work = work
        self.var = work / "var"
        self.label = label
        self.diagnostic = label != "strongroom"
        self.name = "Strongroom dicom serve" + VARIANTS[label][0]
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected = 0  # instances the table should hold once everything sent so far is archived
        self.db: sqlite3.Connection | None = None
        self.publish_waits: list[float] = []

    def setup(self) -> None:
        """The hub database and a project with a DICOM destination, set up the way the tests do
        (``tests/imaging_support.py::make_project``), before ``dicom serve`` starts."""
        from strongroom.archive.keys import ensure_key
        from strongroom.audit.service import Actor
        from strongroom.config import Settings
        from strongroom.db import engine_for, transaction
        from strongroom.hub import Hub
        from strongroom.identity.service import create_local_user
        from strongroom.migrate import upgrade
        from strongroom.projects import service as projects
        from strongroom.projects.models import ProjectSetting

        self.var.mkdir(parents=True)
        self.secret = secrets.token_hex(32)  # 64 characters
        self.port = free_port()
        settings = Settings(var_dir=self.var, database_url="", secret_key=self.secret)
        url = settings.effective_database_url
        upgrade(url)
        hub = Hub.from_settings(settings)
        ensure_key(hub)
        actor = Actor.system("bench")
        with transaction(hub.sessions) as s:
            create_local_user(s, actor, username="alice", password="correct horse battery staple",
                              display_name="Alice", email="alice@example.org")
        with transaction(hub.sessions) as s:
            project = projects.create_project(s, actor, slug="bench", name="Bench", pi="alice", ethics_ref="E1",
                                              quota_bytes=1 << 40, end_date=dt.date.today() + dt.timedelta(days=365))
            for key, value in (("deid_profile", {"retain_longitudinal": "modified"}),
                               ("dicom_destination", {"ae_title": self.AET, "port": self.port}),
                               ("dicom_senders", [{"ae_title": SENDER_AET, "address": "127.0.0.1"}])):
                s.add(ProjectSetting(project_id=project.id, key=key, value=value, changed_by=project.pi_id))
        engine_for(url).dispose()
        self.db_path = self.var / "strongroom.db"

    def start(self) -> None:
        self.setup()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
        env |= {"STRONGROOM_VAR_DIR": str(self.var), "STRONGROOM_SECRET_KEY": self.secret,
                "STRONGROOM_IMAGING__PUBLISH_IDLE_SECONDS": "0.5", "STRONGROOM_IMAGING__REFRESH_SECONDS": "0.5",
                "STRONGROOM_LOG_LEVEL": "INFO"}
        env |= VARIANTS[self.label][1]
        if VARIANTS[self.label][2]:
            patch = self.work / "diag-patch"
            patch.mkdir()
            (patch / "sitecustomize.py").write_text(VERIFY_FIX)
            env["PYTHONPATH"] = str(patch)
        self.log_path = self.work / "dicom-serve.log"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "strongroom.cli", "dicom", "serve", "--workers", "2"],
                                     env=env, cwd=self.work, stdout=subprocess.DEVNULL, stderr=self.log)
        wait_listening(self.port, self.proc, "strongroom dicom serve", timeout=300)  # slow starts on a loaded machine
        self.db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, isolation_level=None, timeout=30)

    def _scalar(self, sql: str) -> int:
        assert self.db is not None
        return int(self.db.execute(sql).fetchone()[0])

    def _wait(self, sql: str, target: int, what: str, timeout: float = 600) -> float:
        """perf_counter() when ``sql`` first returns at least ``target``."""
        deadline = time.monotonic() + timeout
        while True:
            if self._scalar(sql) >= target:
                return time.perf_counter()
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"dicom serve exited ({self.proc.returncode}); see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what} ({self._scalar(sql)} of {target}); "
                                   f"see {self.log_path}")
            time.sleep(0.02)

    def receive(self, paths: list[Path]) -> dict[str, float]:
        assert self.proc is not None
        cpu0 = cpu_seconds(self.proc.pid)
        start = time.perf_counter()
        elapsed = storescu(self.port, self.AET, paths)
        self.expected += len(paths)
        done = self._wait("SELECT count(*) FROM imaging_instances", self.expected, "the instances to be archived",
                          timeout=300 + 5 * len(paths))
        cpu = cpu_seconds(self.proc.pid) - cpu0
        # untimed: let the publication (0.5 s after the sender goes quiet) finish before anyone else runs
        # (quarantined instances are not published: they wait for review)
        published = self._wait("SELECT count(*) FROM imaging_instances WHERE state != 'archived'", self.expected,
                               "the instances to be published", timeout=300 + 5 * len(paths))
        self.publish_waits.append(published - done)
        return {"ack": elapsed, "end-to-end": done - start, "cpu": cpu}

    def summary(self) -> dict[str, Any]:
        assert self.db is not None
        states = dict(self.db.execute("SELECT state, count(*) FROM imaging_instances GROUP BY state").fetchall())
        batches = self.db.execute("SELECT count(*), sum(received), sum(archived), sum(quarantined), sum(rejected), "
                                  "sum(duplicates), sum(state = 'closed') FROM imaging_batches").fetchone()
        spool = self.var / "dicom-spool"
        leftovers = [p for p in spool.rglob("*") if p.is_file()] if spool.exists() else []
        return {"states": states, "batches": dict(zip(
            ("batches", "received", "archived", "quarantined", "rejected", "duplicates", "closed"), batches,
            strict=True)), "spool_leftovers": len(leftovers)}

    def stop(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        stop_process(self.proc, wait=60)
        self.proc = None

    def log_problems(self) -> tuple[int, list[str], list[str], int]:
        """The serve process's log (JSON lines on stderr): (lines, those at warning level or above, the
        lines that are not JSON other than the startup banner, publications)."""
        if not getattr(self, "log_path", None) or not self.log_path.exists():
            return 0, [], [], 0
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        bad, other, published = [], [], 0
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                if not line.startswith("DICOM destinations on "):
                    other.append(line[:400])
                continue
            published += record.get("event") == "dicom.published"
            if str(record.get("level", "")).lower() not in ("info", "debug"):
                bad.append(line[:400])
        return len(lines), bad, other, published


# ----------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=500, help="instances per round (default 500)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--patients", type=int, default=10, help="patients per round (x 2 studies x 2 series)")
    parser.add_argument("--warmup", type=int, default=16, help="untimed instances sent to each receiver first")
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--no-bit-preserving", action="store_true", help="skip the storescp +B figure")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the three pynetdicom floor receivers (benchmarks/_floor_scp.py)")
    parser.add_argument("--diag", default="",
                        help="comma-separated diagnostic Strongroom hubs to run as well: nofsync "
                             "(STRONGROOM_IMAGING__FSYNC=false), scanfix (the leak scan skips the pixel data, as "
                             "verify._header_bytes intends: a sitecustomize patch of that one pydicom call, in a temp "
                             "dir; src/ is untouched), scanfix-nofsync (both), backlog (RECEIVE_BACKLOG=1000), "
                             "received (ACKNOWLEDGE=received with RECEIVE_BACKLOG=1000), received-only "
                             "(ACKNOWLEDGE=received), received-nofsync (received with FSYNC=false), idle "
                             "(POOL_PRIORITY=idle), received-idle (ACKNOWLEDGE=received, POOL_PRIORITY=idle)")
    parser.add_argument("--baseline-src", default="",
                        help="also run `dicom serve` from this src/ directory (e.g. an older revision: `git archive "
                             "<rev> src | tar -x -C /tmp/old`, then /tmp/old/src), as a diagnostic hub measured in the "
                             "same rounds: before/after in the same conditions")
    parser.add_argument("--no-work-floor", action="store_true",
                        help="skip measuring the required work's CPU per object (the end-to-end ceiling)")
    parser.add_argument("--keep", action="store_true", help="keep the /tmp directory (logs, databases)")
    args = parser.parse_args()
    unknown = {d.strip() for d in args.diag.split(",") if d.strip()} - set(DIAGNOSTICS)
    if unknown:
        parser.error(f"unknown --diag {', '.join(sorted(unknown))}; choose from {', '.join(DIAGNOSTICS)}")
    if not shutil.which("storescu") or not shutil.which("storescp"):
        print("dcmtk (storescu, storescp) is not installed: apt-get install dcmtk", file=sys.stderr)
        return 2

    def _terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)  # clean up as on Ctrl-C
    work = Path(tempfile.mkdtemp(prefix="bench-receive-", dir="/tmp"))
    receivers: list[Receiver] = []
    notes: list[str] = []
    strongrooms: list[Strongroom] = []
    try:
        t0 = time.perf_counter()
        warm = make_corpus(work / "corpus" / "warm", args.warmup, 0, 2)
        corpora = [make_corpus(work / "corpus" / f"round{r + 1}", args.files, 10 + r * args.patients,
                               args.patients)
                   for r in range(args.rounds)]
        size = statistics.mean(p.stat().st_size for c in corpora for p in c)
        load = os.getloadavg()
        print(f"corpus: {args.rounds} rounds x {args.files} CT instances (512x512 16-bit, {size / 1e6:.2f} MB each, "
              f"{args.patients} patients x 2 studies x 2 series per round, new UIDs every round), generated in "
              f"{time.perf_counter() - t0:.0f} s")
        print(f"machine: {os.cpu_count()} CPUs, shared with other work (load average {load[0]:.2f} "
              f"{load[1]:.2f} {load[2]:.2f} at start); Python {sys.version.split()[0]}; "
              f"sender: dcmtk storescu, TCP_NODELAY=1, one association per send")

        receivers.append(StoreSCP(work / "storescp", bit_preserving=False))
        if not args.no_bit_preserving:
            receivers.append(StoreSCP(work / "storescp", bit_preserving=True))
        if not args.no_orthanc:
            orthanc = Orthanc(work / "orthanc")
            if not orthanc.binary:
                notes.append("Orthanc skipped: not installed (apt-get install orthanc)")
            else:
                receivers.append(orthanc)
        if not args.no_floor:
            receivers += [PynetdicomFloor(work / "floor-bare", fsync=False),
                          PynetdicomFloor(work / "floor-fsync", fsync=True),
                          PynetdicomFloor(work / "floor-journal", fsync=True, journal=True)]
        strongrooms.append(Strongroom(work / "strongroom"))
        for diag in dict.fromkeys(d.strip() for d in args.diag.split(",") if d.strip()):
            strongrooms.append(Strongroom(work / f"strongroom-{diag}", DIAGNOSTICS[diag]))
        if args.baseline_src:
            VARIANTS["sr-baseline"] = (f" [baseline: {args.baseline_src}]",
                                       {"PYTHONPATH": str(Path(args.baseline_src).resolve())}, False)
            strongrooms.append(Strongroom(work / "strongroom-baseline", "sr-baseline"))
        receivers.extend(strongrooms)

        for rc in list(receivers):
            try:
                rc.start()
                rc.warm(warm)
            except Exception as exc:
                if not isinstance(rc, Orthanc):
                    raise
                notes.append(f"Orthanc skipped: {exc}")
                rc.stop()
                receivers.remove(rc)

        # seconds per (receiver label, figure), one value per round
        times: dict[tuple[str, str], list[float]] = {}
        cpu: dict[str, list[float]] = {}
        sender_cpu: dict[str, list[float]] = {}  # storescu's CPU ms per file, by receiver
        work_ms: list[float] = []  # the required work's CPU ms per file (``required_work_ms``), by round
        for r, paths in enumerate(corpora):
            order = receivers[r % len(receivers):] + receivers[: r % len(receivers)]
            parts = []
            for rc in order:
                result = rc.receive(paths)
                cpu.setdefault(rc.label, []).append(result.pop("cpu") / len(paths) * 1000)
                sender_cpu.setdefault(rc.label, []).append(SENDER_CPU[-1] / len(paths) * 1000)
                for figure, seconds in result.items():
                    times.setdefault((rc.label, figure), []).append(seconds)
                    parts.append(f"{rc.label} {figure} {len(paths) / seconds:.0f}")
            if not args.no_work_floor:  # after the receivers, so that it never competes with them
                work_ms.append(required_work_ms(paths, work / "work-floor"))
                parts.append(f"required work {work_ms[-1]:.1f} ms CPU/file")
            print(f"  round {r + 1}/{args.rounds} (files/s): " + ", ".join(parts), flush=True)

        n = args.files
        names = {rc.label: rc.name for rc in receivers}
        rate = {key: [n / s for s in values] for key, values in times.items()}
        print()
        titles = {key: names[key[0]] + ("" if key[0].startswith(("storescp", "orthanc", "floor")) else f": {key[1]}")
                  for key in rate}
        width = max(map(len, titles.values()))
        print(f"  {'receiver':<{width}} {'files/s':>8} {'MB/s':>7}  {'rounds':>11}  {'CPU ms/file':>11}")
        for (label, figure), values in rate.items():
            med = statistics.median(values)
            plain = label.startswith(("storescp", "orthanc", "floor"))
            title = titles[label, figure]
            # CPU: over storescu's run for the others; for Strongroom until its end-to-end point
            cpu_col = f"{statistics.median(cpu[label]):11.1f}" if figure == ("ack" if plain else "end-to-end") else ""
            print(f"  {title:<{width}} {med:8.1f} {med * size / 1e6:7.1f}  {min(values):5.0f}..{max(values):<5.0f}"
                  f"  {cpu_col}")

        def per_round(a: list[float], b: list[float]) -> float:
            return statistics.median(x / y for x, y in zip(a, b, strict=True))

        def ratio(a: tuple[str, str], b: tuple[str, str]) -> float:
            return per_round(rate[a], rate[b])

        def verdict(value: float, target: float, diagnostic: bool) -> str:
            if diagnostic:
                return "diagnostic"
            return "met" if value >= target else f"MISSED by {(1 - value / target) * 100:.0f}%"

        print("\n  ratios (median of per-round ratios):")
        for sr in strongrooms:
            for figure in ("ack", "end-to-end"):
                a = (sr.label, figure)
                tag = f"{sr.label} {figure}"
                goal = 1.0 if figure == "ack" else 0.8  # the targets
                if ("orthanc", "ack") in rate:
                    v = ratio(a, ("orthanc", "ack"))
                    print(f"    {tag:<30} / Orthanc         = {v:6.3f}   "
                          f"(target >= {goal}: {verdict(v, goal, sr.diagnostic)})")
                v = ratio(a, ("storescp", "ack"))
                target = (f"target >= 0.5: {verdict(v, 0.5, sr.diagnostic)}" if figure == "ack" else "information")
                print(f"    {tag:<30} / storescp        = {v:6.3f}   ({target})")
                if ("storescp+B", "ack") in rate:
                    print(f"    {tag:<30} / storescp +B     = {ratio(a, ('storescp+B', 'ack')):6.3f}   (information)")
        for floor in ("floor-bare", "floor-fsync", "floor-journal"):
            if (floor, "ack") in rate:
                versus = [f"/ {peer} = {ratio((floor, 'ack'), (peer, 'ack')):6.3f}" for peer in ("orthanc", "storescp")
                          if (peer, "ack") in rate]
                print(f"    {floor:<30} " + ", ".join(versus) + "   (information: the network layer's ceiling)")
                print(f"    {'strongroom ack':<30} / {floor:<14} = {ratio(('strongroom', 'ack'), (floor, 'ack')):6.3f}"
                      "   (information: how close to that ceiling)")
        if ("orthanc", "ack") in rate:
            print(f"    {'Orthanc':<30} / storescp        = {ratio(('orthanc', 'ack'), ('storescp', 'ack')):6.3f}"
                  "   (information)")
        if work_ms and "floor-fsync" in cpu:
            # The end-to-end ceiling: every CPU of the machine busy with nothing but the required work — the
            # network floor with an fsync per object, the engines, and the sender, which shares the machine.
            cores = os.cpu_count() or 1
            sender = sender_cpu["strongroom"]
            required = [f + w + c for f, w, c in zip(cpu["floor-fsync"], work_ms, sender, strict=True)]
            ceiling = [cores * 1000 / ms for ms in required]
            print(f"\n  end-to-end ceiling (CPU per object, medians over rounds): receiving with an fsync "
                  f"{statistics.median(cpu['floor-fsync']):.1f} ms (the pynetdicom floor) + de-identification, "
                  f"verification and sealing {statistics.median(work_ms):.1f} ms (the engines in one process) + the "
                  f"sender {statistics.median(sender):.1f} ms = {statistics.median(required):.1f} ms; Strongroom "
                  f"end to end {statistics.median(cpu['strongroom']):.1f} ms (all its processes)")
            line = f"    {'end-to-end ceiling':<30} = {statistics.median(ceiling):6.1f} files/s on {cores} CPUs"
            if ("orthanc", "ack") in rate:
                line += f", / Orthanc = {per_round(ceiling, rate['orthanc', 'ack']):6.3f}"
            print(line + "   (information: no receiver with these engines can pass it on this machine)")
            closeness = per_round(rate["strongroom", "end-to-end"], ceiling)
            print(f"    {'strongroom end-to-end':<30} / ceiling = {closeness:6.3f}   (information: how close to it)")

        load = os.getloadavg()
        print(f"\n  load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        for sr in strongrooms:
            s = sr.summary()
            lines, bad, other, published = sr.log_problems()
            print(f"  {sr.name}: instances by state {s['states']}; batches {s['batches']}; "
                  f"files left in the spool {s['spool_leftovers']}; publication "
                  f"{statistics.median(sr.publish_waits):.2f} s after the last archive (median, untimed)")
            print(f"    its log: {lines} lines, {len(bad)} at warning level or above, {len(other)} other non-JSON; "
                  f"{published} versions published for {1 + args.rounds} sends")
            for line in (bad + other)[:10]:
                print(f"      {line}")
        for note in notes:
            print(f"  note: {note}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        for rc in receivers:
            try:
                rc.stop()
            except Exception as exc:
                print(f"stopping {rc.name}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
