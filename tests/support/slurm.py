"""A real Slurm for tests: Debian's slurm-wlm (``slurmctld`` + ``slurmd``) and ``munged``, started as root in a
temporary directory with their own munge key, socket, state, ports and a minimal slurm.conf.

One node (``localhost``) with 16 GPUs as GRES backed by character devices made with mknod (Slurm 22.05 drops
file-less GPUs), and a cluster licence ``dgx2_gpu:16`` counting them: Slurm 22.05 cannot put GRES into a
reservation, so the hub's reservations hold the machine's GPUs as that licence (see compute/scheduler.py).
Accounting is off (no slurmdbd). The daemons die with the test process (PR_SET_PDEATHSIG) and are stopped
at the end of the session. Without the binaries, or not as root, the fixture skips and says why.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.live import free_port

BINARIES = ("slurmctld", "slurmd", "scontrol", "munged")
LICENSE = "dgx2_gpu"
GPUS = 16
STARTUP_TIMEOUT = 60.0


@dataclass
class Slurm:
    dir: Path
    conf: Path

    def scontrol(self, *args: str) -> str:
        done = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30, check=False,
                              env={**os.environ, "SLURM_CONF": str(self.conf)})
        if done.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout


def missing() -> str | None:
    """Why a real Slurm cannot run here, or None."""
    absent = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if absent:
        return f"Slurm binaries absent ({', '.join(absent)}): apt-get install slurmctld slurmd slurm-client munge"
    if os.geteuid() != 0:
        return "the test Slurm runs its daemons as root (SlurmUser=root) and makes GPU device nodes with mknod"
    return None


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _config(d: Path) -> Path:
    devices = d / "dev"
    devices.mkdir()
    for i in range(GPUS):  # character devices (1,3 = /dev/null's numbers): what slurmd insists a GPU file is
        os.mknod(devices / f"gpu{i}", 0o600 | 0o020000, os.makedev(1, 3))
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=strongroomtest
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
Licenses={LICENSE}:{GPUS}
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeHostname=localhost Gres=gpu:{GPUS} CPUs=1 RealMemory=500 State=UNKNOWN
PartitionName=gpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    (d / "gres.conf").write_text(f"AutoDetect=off\nNodeName=localhost Name=gpu File={devices}/gpu[0-{GPUS - 1}]\n")
    return conf


@contextlib.contextmanager
def running_slurm(d: Path) -> Iterator[Slurm]:
    munge = d / "munge"
    munge.mkdir(mode=0o711)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = _config(d)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [_which("munged"), "--foreground", "--force", f"--socket={munge}/munge.socket", f"--key-file={key}",
             f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent))
        slurm = Slurm(d, conf)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (munge / "munge.socket").exists():  # readiness, polled
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError(f"munged did not start: {(munge / 'munged.log').read_text(errors='replace')}")
            time.sleep(0.05)
        for argv in ([_which("slurmctld"), "-D", "-c"], [_which("slurmd"), "-D", "-N", "localhost"]):
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          preexec_fn=_die_with_parent))
        while True:  # the node registered with its 16 GPUs and is idle
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                node = slurm.scontrol("-o", "show", "node", "localhost")
                if "State=IDLE" in node and f"Gres=gpu:{GPUS}" in node:
                    break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = "\n".join((d / "log" / f).read_text(errors="replace")[-2000:]
                                 for f in ("slurmctld.log", "slurmd.log") if (d / "log" / f).exists())
                raise RuntimeError(f"Slurm did not come up:\n{logs}")
            time.sleep(0.2)
        yield slurm
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="session")
def slurm() -> Iterator[Slurm]:
    why = missing()
    if why:
        pytest.skip(why)
    # not under pytest's root-only temporary folders: jobs run as other users too (a workspace as the member's
    # cluster account), and slurmstepd executes their script from the spool directory as that user
    d = Path(tempfile.mkdtemp(prefix="srtest-slurm-", dir="/var/tmp"))
    d.chmod(0o711)
    try:
        with running_slurm(d) as s:
            yield s
    finally:
        shutil.rmtree(d, ignore_errors=True)
