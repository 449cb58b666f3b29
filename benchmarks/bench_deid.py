"""De-identification throughput: strongroom's engine (full Basic Profile) against a bare pydicom read + write,
dicognito, and Orthanc's C++ anonymizer (``POST /instances/{id}/anonymize``), on the same generated corpus
of 512x512 16-bit CT instances (several patients, studies and series); plus scaling with 2 processes.
The default corpus puts a real GE CT header (pydicom's CT_small, with its 180 private elements) on
512x512 pixels with varied identities, as in the reference figures; ``--corpus minimal`` uses
strongroom's synthetic header (~90 elements), where file I/O dominates every tool.

    python benchmarks/bench_deid.py [--files 2000] [--rounds 5] [--corpus ge|minimal] [--no-orthanc]
                                    [--no-tmpfs] [--baseline-src DIR]

Scaling (issue 16: "~linear on 2 processes"): every round also runs, through one harness (a fork pool of 1 and
of N workers, warmed, chunks of 4 items handed out as workers free up, each run writing into a new directory),
the engine and a raw copy on disk and on tmpfs (/dev/shm, input copied there; --no-tmpfs skips it), and two
kinds of pure CPU work that touch no file and share nothing: a Python loop (~0.5 ms an item, about one
de-identification's CPU time) and SHA-256 of a 0.5 MB in-memory buffer. Their N / 1 ratio in the same round is
the machine's own ceiling at that moment (2 shared vCPUs), printed beside the engine's ratio. Per item, each
worker reports what it spent (user and system CPU, page faults, voluntary and involuntary context switches):
equal CPU per item with 1 and N workers and no voluntary switches means the processes do not contend for a
lock; a low CPU share per worker means the machine did not give them the CPUs.

``--baseline-src DIR`` adds an older engine (e.g. ``git archive <commit> src | tar -x -C /tmp/old``, then
``--baseline-src /tmp/old/src``) in the same interleaved rounds, 1 and 2 processes: it and this engine each
run in a helper process (this script with ``--serve``, strongroom imported from that tree), so that both
are scheduled alike; "ours / baseline" compares the two helpers.

"de-identify + verify" is the import pipeline's work per file (the engine, then the independent leak scan
with its identity scan); its ratio to the engine alone shows what the verification costs.

Targets (issue 5): ours/pydicom >= 3, ours/dicognito >= 10, ours/Orthanc >= 1 (files/s per core).
Every figure is file to file (read the input, write the output) except Orthanc, which reads from its own
storage and returns the anonymized file over loopback HTTP. dicognito is not a project dependency:
``pip install dicognito`` into the venv to include it. Orthanc comes from Debian (``apt-get install
orthanc``) and is skipped when absent. The tools run interleaved, round after round, each on a slice of
the corpus, in an order rotated from round to round (a tool that writes 0.5 MB files leaves kernel writeback
work to whichever runs next), and ratios are medians of per-round ratios: this machine is shared and noisy. Not a test;
the corpus lives in a fresh /tmp directory, removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import http.client
import io
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from _support import free_port
from pydicom.data import get_testdata_file

from strongroom.imaging.deid import DeidProfile, Pseudonymizer, deidentify_file
from strongroom.imaging.synthetic import SyntheticPatient, make_ct, study_date
from strongroom.imaging.verify import leak_scan

PROFILE = DeidProfile()  # the full Basic Profile, no options
SECRET = b"benchmark project secret, 32 B!"


# --------------------------------------------------------------------------------------------- corpus


_TEMPLATE: list[pydicom.Dataset] = []


def make_ge_ct(p: int, st: int, se: int, i: int) -> bytes:
    """A real GE CT header (pydicom's CT_small: 100+ public and 180 private elements) with 512x512 pixels
    and the identity of patient ``p`` (the reference's corpus B)."""
    if not _TEMPLATE:
        _TEMPLATE.append(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    ds = _TEMPLATE[0]
    patient = SyntheticPatient(p)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient.name, patient.patient_id, patient.birth_date
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1234.1.{p}.{st}"
    ds.SeriesInstanceUID = f"{ds.StudyInstanceUID}.{se}"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SeriesInstanceUID}.{i}"
    ds.FrameOfReferenceUID = f"{ds.StudyInstanceUID}.0"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date(p, st)
    ds.AccessionNumber, ds.StudyID, ds.InstanceNumber = f"ACC{p}{st}", f"S{p}{st}", i
    ds.Rows = ds.Columns = 512
    ds.PixelData = random.Random(p * 1_000_003 + st * 10_007 + se * 101 + i).randbytes(512 * 512 * 2)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


MAKERS = {"ge": make_ge_ct, "minimal": make_ct}


def _write_one(args: tuple[Path, str, int, int, int, int]) -> Path:
    directory, kind, p, st, se, i = args
    path = directory / f"p{p:03d}_st{st}_se{se}_{i:04d}.dcm"
    path.write_bytes(MAKERS[kind](p, st, se, i))
    return path


def make_corpus(directory: Path, files: int, patients: int, kind: str) -> list[Path]:
    studies, series = 2, 2
    per_series = max(1, files // (patients * studies * series))
    directory.mkdir(parents=True, exist_ok=True)
    jobs = [(directory, kind, p, st, se, i) for p in range(patients) for st in range(studies)
            for se in range(1, series + 1) for i in range(1, per_series + 1)][:files]
    with mp.Pool(os.cpu_count() or 2) as pool:
        paths = pool.map(_write_one, jobs, chunksize=32)
    for path in paths:  # warm the page cache: every tool reads from memory
        path.read_bytes()
    return paths


# ----------------------------------------------------------------------------------------- the tools


def run_pydicom(paths: list[Path], out: Path) -> None:
    for path in paths:
        pydicom.dcmread(path).save_as(out / path.name)


def run_ours(paths: list[Path], out: Path) -> None:
    pseudo = Pseudonymizer(SECRET)
    for path in paths:
        deidentify_file(path, out / path.name, PROFILE, pseudo)


def run_pipeline(paths: list[Path], out: Path) -> None:
    """What an import worker does per file: de-identify, then the independent verification (leak scan with
    the identity scan) of the output against the original."""
    pseudo = Pseudonymizer(SECRET)
    for path in paths:
        deidentify_file(path, out / path.name, PROFILE, pseudo)
        if leak_scan(path, out / path.name, PROFILE):
            raise AssertionError(f"{path.name}: the verification found a leak")


def run_dicognito(paths: list[Path], out: Path) -> None:
    from dicognito.anonymizer import Anonymizer  # type: ignore[import-not-found,unused-ignore]

    anonymizer = Anonymizer(seed="benchmark")
    for path in paths:
        ds = pydicom.dcmread(path)
        anonymizer.anonymize(ds)
        ds.save_as(out / path.name)


_WORKER: dict[str, object] = {}


def _init_worker() -> None:
    _WORKER["pseudo"] = Pseudonymizer(SECRET)
    _WORKER["buffer"] = random.Random(os.getpid()).randbytes(_HASH_BYTES)


def _ours_one(args: tuple[Path, Path]) -> int:
    src, dst = args
    deidentify_file(src, dst, PROFILE, _WORKER["pseudo"])  # type: ignore[arg-type]
    return 1


def _copy_one(args: tuple[Path, Path]) -> int:
    src, dst = args
    dst.write_bytes(src.read_bytes())
    return 1


def run_copy(paths: list[Path], out: Path) -> None:
    for path in paths:
        _copy_one((path, out / path.name))


# The machine's own scaling, measured with the same pool, split and item count as the file tools: pure CPU work
# that touches no file and shares nothing between the processes. What 2 processes of *this* reach over 1 in the
# same round is the ceiling of any N-process ratio on this machine at that moment (2 shared vCPUs: another
# session's work takes them away from both alike).
_LOOP_N = 12_000  # ~0.5 ms of Python bytecode per item, about one de-identification's CPU time
_HASH_BYTES = 512 * 1024  # one CT's worth of bytes, in memory


def _cpu_loop_one(args: tuple[Path, Path]) -> int:
    del args
    total = 0
    for i in range(_LOOP_N):
        total += i * i
    return 1 if total else 0


def _cpu_hash_one(args: tuple[Path, Path]) -> int:
    del args
    hashlib.sha256(_WORKER["buffer"]).digest()  # type: ignore[arg-type]
    return 1


def _measured(args: tuple[str, Path, Path]) -> tuple[int, float, float, float, int, int, int]:
    """One item in a pool worker, with what it cost this process: (pid, wall, user, sys, minor faults,
    voluntary and involuntary context switches)."""
    name, src, dst = args
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    SCALING_FNS[name]((src, dst))
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    return (os.getpid(), t1 - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt,
            r1.ru_nvcsw - r0.ru_nvcsw, r1.ru_nivcsw - r0.ru_nivcsw)


SCALING_FNS: dict[str, Callable[[tuple[Path, Path]], int]] = {
    "strongroom": _ours_one, "raw copy": _copy_one, "CPU loop": _cpu_loop_one, "CPU sha256": _cpu_hash_one}


def run_parallel(paths: list[Path], out: Path, processes: int, fn: Callable[[tuple[Path, Path]], int] = _ours_one
                 ) -> float:
    with mp.get_context("fork").Pool(processes, initializer=_init_worker) as pool:
        pool.map(fn, [(paths[0], out / "warm.dcm")] * processes)  # workers started and warm
        start = time.perf_counter()
        done = sum(pool.imap_unordered(fn, [(p, out / p.name) for p in paths], chunksize=16))
        elapsed = time.perf_counter() - start
    assert done == len(paths)
    return elapsed


class PoolRun:
    """One timed run of ``processes`` pool workers over ``paths``: the same harness for 1 and N processes (a
    fork pool, warmed, chunks of ``_CHUNK`` items handed out as workers free up, so the split stays balanced),
    and what each worker spent."""

    def __init__(self, name: str, paths: list[Path], out: Path, processes: int) -> None:
        gc.collect()
        gc.freeze()  # the forked workers' collections do not copy the parent's heap page by page
        try:
            with mp.get_context("fork").Pool(processes, initializer=_init_worker) as pool:
                warm = [(name, paths[i % len(paths)], out / f"warm-{i}.dcm") for i in range(4 * processes)]
                pool.map(_measured, warm, chunksize=1)  # every worker started, imported and warm
                for i in range(4 * processes):
                    with contextlib.suppress(FileNotFoundError):
                        (out / f"warm-{i}.dcm").unlink()
                start = time.perf_counter()
                items = list(pool.imap_unordered(_measured, [(name, p, out / p.name) for p in paths], chunksize=_CHUNK))
                self.elapsed = time.perf_counter() - start
        finally:
            gc.unfreeze()
        assert len(items) == len(paths)
        self.rate = len(paths) / self.elapsed
        per_pid: dict[int, list[tuple[int, float, float, float, int, int, int]]] = {}
        for item in items:
            per_pid.setdefault(item[0], []).append(item)
        self.files_per_worker = sorted((len(v) for v in per_pid.values()), reverse=True)
        n = len(items)
        self.user_ms = sum(i[2] for i in items) / n * 1e3
        self.sys_ms = sum(i[3] for i in items) / n * 1e3
        self.minflt = sum(i[4] for i in items) / n
        self.nvcsw = sum(i[5] for i in items) / n
        self.nivcsw = sum(i[6] for i in items) / n
        # each worker's CPU time over the run's wall time: 1.0 = it had a CPU all along
        self.cpu_share = [sum(i[2] + i[3] for i in v) / self.elapsed for v in per_pid.values()]
        self.total_share = sum(self.cpu_share)


_CHUNK = 4


def timed(fn: Callable[[list[Path], Path], None], paths: list[Path], out: Path, repeat: int) -> float:
    """Median seconds over ``repeat`` runs (a fresh output directory each time)."""
    times = []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        start = time.perf_counter()
        fn(paths, out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Baseline:
    """An older engine (``--baseline-src``) in a helper process: this script with ``--serve``, strongroom
    imported from that source tree; it times the same work as ``run_ours`` / ``run_parallel``."""

    def __init__(self, src: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True)

    def _ask(self, paths: list[Path], out: Path, processes: int) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"paths": [str(p) for p in paths], "out": str(out),
                                          "processes": processes}) + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def run(self, paths: list[Path], out: Path) -> None:
        self._ask(paths, out, 1)

    def parallel(self, paths: list[Path], out: Path, processes: int) -> float:
        """Seconds the helper measured (1: sequential in the helper; more: its process pool)."""
        return self._ask(paths, out, processes)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def serve() -> int:
    """The baseline's side: one JSON request a line, the elapsed seconds back."""
    for line in sys.stdin:
        req = json.loads(line)
        paths, out = [Path(p) for p in req["paths"]], Path(req["out"])
        if req["processes"] == 1:
            start = time.perf_counter()
            run_ours(paths, out)
            elapsed = time.perf_counter() - start
        else:
            elapsed = run_parallel(paths, out, req["processes"])
        print(elapsed, flush=True)
    return 0


# -------------------------------------------------------------------------------------------- Orthanc


class Orthanc:
    """A throwaway Orthanc (Debian package) on loopback, holding the uploaded corpus."""

    def __init__(self, work: Path) -> None:
        self.binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else "")
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None
        self.ids: dict[Path, str] = {}
        self.version = _orthanc_version(self.binary) if self.binary else ""
        self.body = json.dumps({"Force": True}).encode()

    def start(self) -> str | None:
        """None when running, else the reason it cannot run."""
        if not self.binary:
            return "Orthanc not installed (apt-get install orthanc)"
        port = free_port()
        db = self.work / "orthanc-db"
        db.mkdir(parents=True, exist_ok=True)
        config = self.work / "orthanc.json"
        config.write_text(json.dumps({
            "Name": "bench", "StorageDirectory": str(db), "IndexDirectory": str(db), "HttpPort": port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomServerEnabled": False,
            "Plugins": [], "StorageCompression": False, "HttpCompressionEnabled": False,
            "SyncStorageArea": False, "KeepAlive": True,
        }))
        self.proc = subprocess.Popen([self.binary, str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.conn.request("GET", "/system")
                self.conn.getresponse().read()
                return None
            except OSError:
                self.conn.close()
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    return "Orthanc did not start"
                time.sleep(0.2)

    def _post(self, url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        for attempt in (1, 2):  # Orthanc closes idle keep-alive connections between rounds
            try:
                self.conn.request("POST", url, body=body, headers={"Content-Type": content_type})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def upload(self, paths: list[Path]) -> None:
        for path in paths:
            _, data = self._post("/instances", path.read_bytes(), "application/dicom")
            self.ids[path] = json.loads(data)["ID"]

    def anonymize(self, paths: list[Path], out: Path) -> None:
        """Orthanc's C++ anonymizer, one instance per request, sequentially (one core's worth)."""
        del out  # the anonymized file comes back over HTTP; Orthanc does not store it
        for path in paths:
            status, data = self._post(f"/instances/{self.ids[path]}/anonymize", self.body, "application/json")
            if status != 200 or data[128:132] != b"DICM":
                raise RuntimeError(f"Orthanc anonymize failed: HTTP {status}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _orthanc_version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()[1]
    except (OSError, IndexError):
        return "?"


# ----------------------------------------------------------------------------------------------- main


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds: every tool runs on a slice of the corpus in every round")
    parser.add_argument("--dicognito-share", type=float, default=0.25,
                        help="fraction of each round's slice given to dicognito (it is slow)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--no-tmpfs", action="store_true", help="do not measure the scaling on /dev/shm")
    parser.add_argument("--corpus", choices=sorted(MAKERS), default="ge",
                        help="ge: pydicom's CT_small GE header with 180 private elements (default; the header of the "
                             "reference figures); minimal: strongroom's synthetic header (~90 elements)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--baseline-src", default="",
                        help="also run the engine of an older source tree (its src directory) in the same rounds")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve()

    work = Path(tempfile.mkdtemp(prefix="bench-deid-"))
    cleanup: list[Path] = []
    orthanc = Orthanc(work / "orthanc")
    helpers: dict[str, Baseline] = {}
    try:
        t0 = time.perf_counter()
        paths = make_corpus(work / "in", args.files, args.patients, args.corpus)
        size = sum(p.stat().st_size for p in paths) / len(paths)
        header = {"ge": "real GE header (CT_small)", "minimal": "minimal synthetic header"}[args.corpus]
        print(f"corpus: {len(paths)} CT instances, 512x512 16-bit, {header}, "
              f"{args.patients} patients x 2 studies x 2 series, {size / 1e6:.2f} MB each "
              f"(generated in {time.perf_counter() - t0:.0f} s); {os.cpu_count()} CPUs, "
              f"Python {sys.version.split()[0]}, pydicom {pydicom.__version__}")

        tools: dict[str, Callable[[list[Path], Path], None]] = {
            "pydicom read+write": run_pydicom, "strongroom (Basic Profile)": run_ours,
            "strongroom de-identify + verify": run_pipeline, "raw file copy": run_copy}
        notes = []
        try:
            import dicognito  # type: ignore[import-not-found,unused-ignore]

            tools["dicognito"] = run_dicognito
            notes.append(f"dicognito {dicognito.__version__}")
        except ImportError:
            notes.append("dicognito not installed (pip install dicognito): skipped")
        if not args.no_orthanc:
            reason = orthanc.start()
            if reason is None:
                orthanc.upload(paths)
                tools["Orthanc anonymize (C++, REST)"] = orthanc.anonymize
                notes.append(f"Orthanc {orthanc.version}: sequential POST /instances/{{id}}/anonymize, "
                             "anonymized file returned over loopback HTTP")
            else:
                notes.append(f"Orthanc skipped: {reason}")
        # the N-process scaling: every kind through the same pool harness with 1 and with N workers
        places = {"disk": (work / "in", work)}
        shm = Path("/dev/shm")
        if not args.no_tmpfs and shm.is_dir() and os.access(shm, os.W_OK):
            shm_dir = Path(tempfile.mkdtemp(prefix="bench-deid-", dir=shm))
            cleanup.append(shm_dir)
            (shm_dir / "in").mkdir()
            for path in paths:
                shutil.copyfile(path, shm_dir / "in" / path.name)
            places["tmpfs"] = (shm_dir / "in", shm_dir)
        else:
            notes.append("tmpfs (/dev/shm) not used")
        scaling_kinds = [(tool, place) for tool in ("strongroom", "raw copy") for place in places]
        scaling_kinds += [("CPU loop", "memory"), ("CPU sha256", "memory")]
        scaling: dict[tuple[str, str, int], list[PoolRun]] = {
            (tool, place, n): [] for tool, place in scaling_kinds for n in (1, args.processes)}
        run_no = 0
        base_par = f"baseline strongroom, {args.processes} processes"
        helpers: dict[str, Baseline] = {}
        if args.baseline_src:
            # both engines in helper processes alike: a helper that sleeps between requests is scheduled
            # differently from this busy process on a loaded machine (measured: up to 1.4x either way)
            import strongroom

            helpers["baseline strongroom"] = baseline = Baseline(args.baseline_src)
            helpers["strongroom (helper process)"] = Baseline(str(Path(strongroom.__file__).parents[1]))
            tools.update({name: helper.run for name, helper in helpers.items()})
            notes.append(f"baseline: the engine of {args.baseline_src} against this one, each in a helper "
                         "process, same rounds")

        per_round: dict[str, list[float]] = {
            name: [] for name in [*tools, *([base_par] if args.baseline_src else [])]}
        slice_len = len(paths) // args.rounds
        out = work / "out"
        for r in range(args.rounds):
            chunk = paths[r * slice_len:(r + 1) * slice_len]
            order = list(tools.items())
            order = order[r % len(order):] + order[:r % len(order)]  # rotated: no tool always follows another
            for name, fn in order:
                files = chunk[: max(10, int(len(chunk) * args.dicognito_share))] if name == "dicognito" else chunk
                if name in helpers:
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    per_round[name].append(len(files) / helpers[name].parallel(files, out, 1))  # timed there
                else:
                    per_round[name].append(len(files) / timed(fn, files, out, 1))
            kinds = scaling_kinds[r % len(scaling_kinds):] + scaling_kinds[:r % len(scaling_kinds)]
            for tool, place in kinds:
                indir, base = places.get(place, (work / "in", work))
                files = [indir / p.name for p in chunk]
                for n in (1, args.processes) if r % 2 == 0 else (args.processes, 1):
                    run_no += 1
                    target = base / f"scaling-{run_no}"  # a new directory: no run writes over another's files
                    target.mkdir()
                    scaling[(tool, place, n)].append(PoolRun(tool, files, target, n))
                    shutil.rmtree(target)
            if args.baseline_src:
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                per_round[base_par].append(len(chunk) / baseline.parallel(chunk, out, args.processes))
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
                f"{name.split(' (')[0].split(',')[0]} {v[-1]:.0f}" for name, v in per_round.items())
                + "; scaling " + ", ".join(
                    f"{tool} {place} {last[args.processes].rate / last[1].rate:.2f}" for tool, place in scaling_kinds
                    if (last := {k: scaling[(tool, place, k)][-1] for k in (1, args.processes)}))
                + f" (load {_load()})", flush=True)

        sample = paths[:: max(1, len(paths) // 5)]
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        run_ours(sample, out)
        for p in sample:  # the measured output is the real thing
            assert leak_scan(p.read_bytes(), (out / p.name).read_bytes(), PROFILE) == [], p.name

        ours_name = "strongroom (Basic Profile)"
        print()
        width = max(map(len, per_round))
        for name, values in per_round.items():
            rate = statistics.median(values)
            print(f"  {name:<{width}}  {rate:8.1f} files/s  {rate * size / 1e6:7.1f} MB/s   "
                  f"(rounds: {min(values):.0f}..{max(values):.0f})")
        print("\n  ratios (median of per-round ratios, so that machine noise hits both sides):")

        def ratio(a: str, b: str) -> float:
            return statistics.median(x / y for x, y in zip(per_round[a], per_round[b], strict=True))

        print(f"    ours / pydicom read+write : {ratio(ours_name, 'pydicom read+write'):5.2f}   (target >= 3)")
        if "dicognito" in per_round:
            print(f"    ours / dicognito          : {ratio(ours_name, 'dicognito'):5.2f}   (target >= 10)")
        if "Orthanc anonymize (C++, REST)" in per_round:
            print(f"    ours / Orthanc            : {ratio(ours_name, 'Orthanc anonymize (C++, REST)'):5.2f}"
                  "   (target >= 1)")
        print(f"    ours / raw file copy      : {ratio(ours_name, 'raw file copy'):5.2f}   (the I/O ceiling)")
        print(f"    de-identify+verify / ours : {ratio('strongroom de-identify + verify', ours_name):5.2f}"
              "   (the pipeline per file: what the verification costs)")
        n = args.processes

        def scale(tool: str, place: str) -> float:
            return statistics.median(b.rate / a.rate for a, b in zip(
                scaling[(tool, place, 1)], scaling[(tool, place, n)], strict=True))

        ceiling = scale("CPU loop", "memory")
        deid = {place: scale("strongroom", place) for place in places}
        tmpfs = (f"; on tmpfs: ours {deid['tmpfs']:.2f}, a raw copy {scale('raw copy', 'tmpfs'):.2f}"
                 if "tmpfs" in deid else "")
        print(f"    {n} processes / 1        : {deid['disk']:5.2f}   (ideal {n}; the machine's ceiling in the same "
              f"rounds, pure CPU: {ceiling:.2f} (Python loop), {scale('CPU sha256', 'memory'):.2f} (SHA-256 in "
              f"memory); a raw file copy {scale('raw copy', 'disk'):.2f}{tmpfs})")
        print(f"    {n} processes / 1, ours / the machine's pure-CPU ceiling: {deid['disk'] / ceiling:.2f} (disk)"
              + (f", {deid['tmpfs'] / ceiling:.2f} (tmpfs)" if "tmpfs" in deid else ""))
        if args.baseline_src:
            ours_h, base = "strongroom (helper process)", "baseline strongroom"
            vs_dicognito = ratio(base, "dicognito") if "dicognito" in per_round else float("nan")
            vs_dicognito_h = ratio(ours_h, "dicognito") if "dicognito" in per_round else float("nan")
            print(f"    ours / baseline           : {ratio(ours_h, base):5.2f}   (both in helper processes; "
                  f"/ dicognito: ours {vs_dicognito_h:.2f}, baseline {vs_dicognito:.2f}; "
                  f"baseline {args.processes} processes / 1: {ratio(base_par, 'baseline strongroom'):.2f})")
        print(f"\n  scaling, {n} processes / 1: the same fork pool with 1 and {n} workers, chunks of {_CHUNK} files "
              "handed out as workers free up; per item, what its worker spent (getrusage); medians over the rounds")
        print(f"    {'kind':<22} {'ratio':>5}  {'items/s 1 -> ' + str(n):>16}  {'CPU ms/item 1 -> ' + str(n):>18}  "
              f"{'sys ms':>11}  {'faults':>11}  {'vol. cs':>11}  {'invol. cs':>11}  CPU share 1 -> {n} workers  "
              "items/worker")
        for tool, place in scaling_kinds:
            one, many = scaling[(tool, place, 1)], scaling[(tool, place, n)]

            def med(runs: list[PoolRun], attr: str) -> float:
                return statistics.median(getattr(run, attr) for run in runs)

            cpu1, cpun = (med(one, "user_ms") + med(one, "sys_ms")), (med(many, "user_ms") + med(many, "sys_ms"))
            share1 = med(one, "total_share")
            shares = [statistics.median(run.cpu_share[i] for run in many if len(run.cpu_share) > i) for i in range(n)]
            split = statistics.median(max(run.files_per_worker) / len(chunk) for run in many)
            print(f"    {tool + ', ' + place:<22} {scale(tool, place):5.2f}  {med(one, 'rate'):7.0f} -> "
                  f"{med(many, 'rate'):6.0f}  {cpu1:8.3f} -> {cpun:6.3f}  {med(one, 'sys_ms'):4.2f} -> "
                  f"{med(many, 'sys_ms'):4.2f}  {med(one, 'minflt'):4.1f} -> {med(many, 'minflt'):4.1f}  "
                  f"{med(one, 'nvcsw'):4.2f} -> {med(many, 'nvcsw'):4.2f}  "
                  f"{med(one, 'nivcsw'):4.2f} -> {med(many, 'nivcsw'):4.2f}  "
                  f"{share1:4.2f} -> {' + '.join(f'{x:.2f}' for x in shares):>11}   busiest {split:.0%}")
        print(f"  load average at the end: {_load()}")
        for note in notes:
            print(f"  note: {note}")
        return 0
    finally:
        orthanc.stop()
        for helper in helpers.values():
            helper.stop()
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
