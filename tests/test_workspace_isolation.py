"""Workspaces keep out of each other on the hub's machine: each local workspace runs under a uid (and gid) of its
own, leased from ``[workspaces] uid_range`` at start and released at stop, never held by two live workspaces, in
namespaces of its own (network, IPC, mount: /tmp, /var/tmp, /dev/shm and /run/lock its own size-limited tmpfs, /run
its own without the machine's UNIX sockets, a /proc listing its own processes only), its scratch (HOME) a tmpfs of
its own when the scratches are on one.

Through the real launcher (JupyterLab in its network namespace, the read-only data mount, the hub's proxy): two
members of two projects get two uids; code in workspace A's kernel cannot read B's scratch, list B's data mount,
see B's processes in /proc (let alone their environments: the Jupyter and hub tokens) or signal them — and still
reads its own; what A leaves in /dev/shm, /tmp, /var/tmp, /run/lock, abstract sockets, System V shared memory
and POSIX message queues B does not see; /dev/shm holds no more than ``shm_max_bytes``, HOME no more than
``scratch_max_bytes`` (the machine's /dev/shm untouched); not one of the machine's UNIX sockets under /run (the
hub's PostgreSQL's among them) is there to connect to. What A leaves behind (a process that left its process group,
its private places, its scratch's tmpfs) is gone at its stop; a dead hub's scratch tmpfs goes at the uid's next lease.
The namespace setup itself (``launcher.confine``, without JupyterLab) for every world-writable place and alias, /run,
a scratch on tmpfs or on disk, an interpreter under /tmp or /run; the stop's removal of a uid's files from the
machine's shared places (recursive, never through a link, never into a mount).
Concurrent starts never lease one uid twice (the partial unique index decides), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from imaging_support import make_project
from strongroom.config import Settings
from strongroom.db import transaction
from strongroom.projects import service as projects
from strongroom.workspaces import fuse, launcher, limits, service
from strongroom.workspaces.models import RUNNING, STOPPED, Workspace
from test_workspaces import (  # noqa: F401  (fixtures)
    NO_NETNS,
    SUBNET,
    WORKER,
    Kernel,
    _member_session,
    _start,
    _stop,
    hub_sock,
    live,
    scratch_dir,
    shared_python,
)

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None, reason="jupyterlab is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a workspace's own uid needs a hub running as root"),
]


@pytest.fixture
def hub_home(database_url: str) -> Iterator[tuple[Path, str]]:
    """Where this hub keeps its state, and its database URL: outside every place a workspace gets its own of (not
    /tmp, /dev/shm, /run, the scratch root), as /var/lib/strongroom is — ``var_dir`` (the SQLite database in it),
    the DICOM spool and the archive's storage —, each left as an older hub under umask 022 left them: folders
    0755, a sentinel file and the database 0644."""
    home = Path("/var/lib") / f"srtest-hub-{uuid.uuid4().hex[:8]}"
    try:
        for name in HUB_STATE:
            (home / name).mkdir(parents=True)
            (home / name / "sentinel").write_text("the hub's own")
        if database_url.startswith("sqlite"):
            database = home / "var" / "strongroom.db"
            shutil.copy(database_url.removeprefix("sqlite:///").split("?")[0], database)
            database_url = f"sqlite:///{database}?synchronous=normal"
        for path in [home, *(home / name for name in HUB_STATE)]:
            path.chmod(0o755)
        for path in home.glob("*/*"):
            path.chmod(0o644)
        yield home, database_url
    finally:
        shutil.rmtree(home, ignore_errors=True)


HUB_STATE = ("var", "spool", "objects")  # var_dir, [imaging] spool_dir, [archive.storage] root (local)


@pytest.fixture
def settings(hub_home: tuple[Path, str], hub_sock: socket.socket, scratch_dir: Path,  # noqa: F811
             shared_python: Path) -> Settings:  # noqa: F811
    """The defaults that matter here: no ``run_as`` (a uid per workspace), the data mount on; an interpreter
    every uid may run (this machine's lives under /root, 0700); the hub's state where the machine's users reach it
    but for the hub's own guard (``hub_home``)."""
    port = hub_sock.getsockname()[1]
    home, database_url = hub_home
    return Settings(var_dir=home / "var", database_url=database_url, secret_key="test-secret-" + "x" * 32,
                    log_json=True, jobs={"embedded": False}, base_url=f"http://127.0.0.1:{port}", port=port,
                    security={"cookie_secure": False}, imaging={"spool_dir": str(home / "spool")},
                    archive={"storage": {"kind": "local", "root": str(home / "objects")}},
                    workspaces={"scratch_dir": str(scratch_dir), "subnet": SUBNET, "python": str(shared_python),
                                "isolation": "namespace" if NO_NETNS is None else "none",
                                "allow_unisolated": NO_NETNS is not None, "start_timeout_seconds": 120,
                                "uid_range": UID_RANGE, "tmp_max_bytes": TMP_MAX, "shm_max_bytes": SHM_MAX,
                                "scratch_max_bytes": SCRATCH_MAX})


# each pytest-xdist worker's hub its own uids (hubs sharing a machine need disjoint ranges: see docs)
UID_RANGE = (2_000_000 + 10_000 * WORKER, 2_009_999 + 10_000 * WORKER)
TMP_MAX, SHM_MAX, SCRATCH_MAX = 24 * 2**20, 16 * 2**20, 32 * 2**20  # small, to see them hold
# the machine's world-writable places (an alias: the same folder) and where each workspace has its own
PLACES = ("/tmp", "/var/tmp", "/dev/shm", "/run/shm", "/run/lock", "/var/lock")
REAL_PLACES = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def _uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


# Run in workspace A's kernel: what it may reach of B's (paths and pid filled in) and of its own.
PROBE = """
import ctypes, errno, json, os, signal
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def owner(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        return None  # ended meanwhile
def size(place):
    info = os.statvfs(place)
    return info.f_blocks * info.f_frsize
home = os.path.expanduser("~")
pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
libc = ctypes.CDLL(None, use_errno=True)
too_much = libc.shmget(0, SHM_MAX + 4096, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "home": home,
    "b_scratch": attempt(lambda: os.listdir(B_SCRATCH)),
    "b_file": attempt(lambda: open(os.path.join(B_SCRATCH, "results.csv")).read()),
    "b_data": attempt(lambda: os.listdir(os.path.join(B_SCRATCH, "data"))),
    "b_environ": attempt(lambda: open(f"/proc/{B_PID}/environ", "rb").read()),
    "b_cmdline": attempt(lambda: open(f"/proc/{B_PID}/cmdline", "rb").read()),
    "b_signal": attempt(lambda: os.kill(B_PID, 0)),
    "b_listed": B_PID in pids, "own_listed": os.getpid() in pids,
    "others_listed": sorted({owner(p) for p in pids} - {os.getuid(), None}),
    "own_file": open(os.path.join(home, "mine.txt")).read(),
    "own_data": sorted(os.listdir(os.path.join(home, "data"))),
    "own_data_mode": oct(os.stat(os.path.join(home, "data")).st_mode & 0o777),
    "own_data_uid": os.stat(os.path.join(home, "data")).st_uid,
    "own_environ": b"STRONGROOM_TOKEN=" in open("/proc/self/environ", "rb").read(),
    "tmpdir": os.environ.get("TMPDIR", ""), "umask": oct(os.umask(0o077)),
    "host_tmp": os.path.exists(HOST_TMP), "tmp_listing": sorted(os.listdir("/tmp")),
    "sizes": {p: size(p) for p in PLACES},
    "fill_shm": attempt(lambda: open("/dev/shm/fill", "wb").write(bytes(SHM_MAX + 2**20))),
    "sysv_over_limit": errno.errorcode.get(ctypes.get_errno()) if too_much == -1 else "allowed",
    "shmmax": int(open("/proc/sys/kernel/shmmax").read()),
}))
os.unlink("/dev/shm/fill")
"""

# Run in workspace A's kernel: can it connect to the machine's UNIX sockets (SOCKETS: paths), what is its /run, and
# how much does its HOME hold (a file of FILL_MIB MiB is written there and left, for the hub to measure)?
MACHINE_PROBE = """
import errno, json, os, socket
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def reach(path):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
        with socket.socket(socket.AF_UNIX, kind) as s:
            try:
                s.connect(path)
                return "allowed"
            except OSError as e:
                if e.errno != errno.EPROTOTYPE:  # a socket of another type: try that
                    return errno.errorcode.get(e.errno, str(e.errno))
    return "EPROTOTYPE"
home = os.path.expanduser("~")
def fill():
    with open(os.path.join(home, "fill"), "wb") as f:
        for _ in range(FILL_MIB):
            f.write(bytes(2**20))
run = os.stat("/run")
info = os.statvfs(home)
print(json.dumps({
    "sockets": {path: reach(path) for path in SOCKETS},
    "run": sorted(os.listdir("/run")), "var_run": sorted(os.listdir("/var/run")),
    "run_owner": [run.st_uid, oct(run.st_mode & 0o7777)], "run_write": attempt(lambda: open("/run/x", "w")),
    "home_size": info.f_blocks * info.f_frsize, "fill_home": attempt(fill),
}))
"""

# Run in workspace A's kernel: what of the hub's state (FOLDERS, FILES: paths) can it list or read?
HUB_STATE_PROBE = """
import errno, json, os
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({
    "folders": {path: attempt(lambda path=path: os.listdir(path)) for path in FOLDERS},
    "files": {path: attempt(lambda path=path: open(path, "rb").read(16)) for path in FILES},
}))
"""

# Run in workspace A's kernel: leave a process outside Jupyter's process group, a file in each world-writable
# place, an abstract socket listening, a System V shared memory segment and a POSIX message queue (NAME, KEY)
LEAVE_BEHIND = """
import ctypes, os, socket, subprocess
p = subprocess.Popen(["sleep", "600"], start_new_session=True)
for place in REAL_PLACES:
    with open(os.path.join(place, NAME), "w") as f:
        f.write("left behind by A")
LISTENER = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
LISTENER.bind("\\0" + NAME)
LISTENER.listen(1)
libc = ctypes.CDLL(None, use_errno=True)
segment = libc.shmget(KEY, 4096, 0o1666)  # IPC_CREAT | 0666
queue = libc.mq_open(("/" + NAME).encode(), os.O_CREAT | os.O_RDWR, 0o666, None)
print(p.pid, os.getpgid(p.pid) != os.getpgid(0), segment != -1, queue != -1, os.getpid())
"""

# Run in workspace B's kernel: does anything of what A left reach it?
B_LOOKS = """
import ctypes, errno, json, os, socket
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
libc = ctypes.CDLL(None, use_errno=True)
def ipc(result):
    return "allowed" if result != -1 else errno.errorcode.get(ctypes.get_errno())
print(json.dumps({
    "files": {p: os.path.exists(os.path.join(p, NAME)) for p in PLACES},
    "abstract_socket": attempt(lambda: socket.socket(socket.AF_UNIX).connect("\\0" + NAME)),
    "sysv_shm": ipc(libc.shmget(KEY, 0, 0)),
    "posix_mq": ipc(libc.mq_open(("/" + NAME).encode(), os.O_RDONLY)),
    "a_listed": {str(pid): os.path.exists(f"/proc/{pid}") for pid in A_PIDS},
}))
"""


def test_each_workspace_runs_under_its_own_uid(hub, people, live: str) -> None:  # noqa: F811
    people("alice")
    people("bob")
    make_project(hub, "lung", pi="alice")
    make_project(hub, "heart", pi="bob")
    carol, carol_cookie = _member_session(hub, people, "carol", "lung")
    dave, dave_cookie = _member_session(hub, people, "dave", "heart")
    name = f"srtest-leftover-{uuid.uuid4().hex[:8]}"
    host_tmp = Path("/tmp") / f"srtest-host-{uuid.uuid4().hex[:8]}"
    host_tmp.write_text("the machine's /tmp")
    started: list[Workspace] = []
    sleepers: list[int] = []
    try:
        started.append(_start(hub, carol, "lung"))
        started.append(_start(hub, dave, "heart"))
        with host_service() as service_socket:
            _check_isolation(hub, live, (carol_cookie, dave_cookie), *started, name=name, host_tmp=host_tmp,
                             sleepers=sleepers, service_socket=service_socket)
    finally:
        for ws in started:  # idempotent: a failed assertion must not leave a workspace running
            _stop(hub, ws)
        host_tmp.unlink()
        for place in REAL_PLACES:  # the old code's shared places
            (Path(place) / name).unlink(missing_ok=True)
        for pid in sleepers:  # left running only where the stop does not end the uid's processes (old code)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _check_isolation(hub, live: str, cookies: tuple[str, str], a: Workspace, b: Workspace, *,  # noqa: F811
                     name: str, host_tmp: Path, sleepers: list[int], service_socket: Path) -> None:
    assert a.state == b.state == RUNNING and a.pid and b.pid
    a_scratch, b_scratch = Path(a.scratch), Path(b.scratch)
    # what B's notebook left in its scratch, as readable as a file can be: only the folder keeps others out
    (b_scratch / "results.csv").write_text("patient,finding\nPSN-1,nodule\n")
    (b_scratch / "results.csv").chmod(0o644)
    (a_scratch / "mine.txt").write_text("my own result")
    (a_scratch / "mine.txt").chmod(0o644)
    if NO_NETNS is None:  # B's Jupyter really holds the tokens A must not read
        assert b"STRONGROOM_TOKEN=" in Path(f"/proc/{b.pid}/environ").read_bytes()
    key = 0x5300_0000 + WORKER
    known = f"NAME = {name!r}\nKEY = {key}\nPLACES = {PLACES!r}\nREAL_PLACES = {REAL_PLACES!r}\nSHM_MAX = {SHM_MAX}\n"
    kernel = Kernel(live, service.base_path("lung", a.id), cookies[0])
    try:
        _, printed = kernel.run(f"B_SCRATCH = {str(b_scratch)!r}\nB_PID = {b.pid}\nHOST_TMP = {str(host_tmp)!r}\n"
                                + known + PROBE)
        seen = json.loads(printed)
        _check_the_machine_out_of_reach(hub, kernel, a, service_socket)
        _check_the_hubs_state_out_of_reach(hub, kernel, a)
        _, printed = kernel.run(known + LEAVE_BEHIND)  # the kernel keeps its socket listening meanwhile
        pid, escaped, segment, queue, a_kernel = printed.split()
        sleepers.append(int(pid))
        assert (escaped, segment, queue) == ("True", "True", "True"), printed
        b_kernel = Kernel(live, service.base_path("heart", b.id), cookies[1])
        try:
            _, printed = b_kernel.run(known + f"A_PIDS = {[a.pid, int(a_kernel), int(pid)]}\n" + B_LOOKS)
            b_saw = json.loads(printed)
        finally:
            b_kernel.close()
    finally:
        kernel.close()
    # as A: B's scratch, its results, its data mount, its processes (their environments with the tokens, their
    # command lines) are not even in A's world (its /dev/shm holds its own scratch alone, its /proc its own
    # processes), and signals to them are refused
    assert {k: seen[k] for k in ("b_scratch", "b_file", "b_data", "b_environ", "b_cmdline", "b_signal")} == {
        "b_scratch": "ENOENT", "b_file": "ENOENT", "b_data": "ENOENT", "b_environ": "ENOENT", "b_cmdline": "ENOENT",
        "b_signal": "EPERM"}, seen
    assert (seen["b_listed"], seen["own_listed"], seen["others_listed"]) == (False, True, []), seen
    # two workspaces, two uids: A's kernel runs as A's, B's Jupyter as B's, neither is the other's nor root
    uid_a, uid_b = seen["uid"], _uid_of(b.pid)
    assert uid_a != uid_b and 0 not in (uid_a, uid_b), (uid_a, uid_b)
    # A reads its own
    assert seen["own_file"] == "my own result" and seen["own_environ"] is True, seen
    assert seen["own_data"] == ["lung"], seen  # the project's data, through the mount
    assert (seen["own_data_uid"], seen["own_data_mode"]) == (uid_a, "0o500"), seen
    # its own gid (= its uid), no supplementary group; temporary files in its scratch; umask 077
    assert (seen["gid"], seen["groups"]) == (uid_a, []), seen
    assert seen["tmpdir"] == str(a_scratch / ".tmp") and seen["umask"] == "0o77", seen
    # /tmp of its own, not the machine's: empty — but for the folder holding the hub's interpreter or sources when
    # they live under /tmp (a checkout tested there), bound back from the machine's (``launcher.private_places``)
    python = hub.settings.workspaces.python
    assert seen["host_tmp"] is False and seen["tmp_listing"] == _software_under("/tmp", python=python), seen
    # each of its places is as large as configured, and no larger: /dev/shm fills up at its limit, System V
    # shared memory (the same limit) refuses a larger segment
    assert seen["sizes"] == {"/tmp": TMP_MAX, "/var/tmp": TMP_MAX, "/dev/shm": SHM_MAX, "/run/shm": SHM_MAX,
                             "/run/lock": launcher.LOCK_BYTES, "/var/lock": launcher.LOCK_BYTES}, seen
    assert (seen["fill_shm"], seen["sysv_over_limit"], seen["shmmax"]) == ("ENOSPC", "EINVAL", SHM_MAX), seen
    # what A left is in its own places, not the machine's, and B sees none of it: no file in any place (alias
    # or not), no abstract socket (its network namespace's), no System V segment or POSIX queue (its IPC
    # namespace's), none of A's processes
    for place in REAL_PLACES:
        assert not (Path(place) / name).exists(), place
        assert Path(f"/proc/{a.pid}/root{place}/{name}").stat().st_uid == uid_a, place
    assert b_saw == {"files": dict.fromkeys(PLACES, False),
                     "abstract_socket": "ECONNREFUSED" if NO_NETNS is None else "allowed",
                     "sysv_shm": "ENOENT", "posix_mq": "ENOENT",
                     "a_listed": {str(p): False for p in (a.pid, int(a_kernel), int(pid))}}, b_saw
    # the hub leased them and recorded them; the scratches and mounts are theirs, 0700
    lo, hi = hub.settings.workspaces.uid_range
    assert (a.uid, b.uid) == (uid_a, uid_b) and lo <= a.uid <= hi and lo <= b.uid <= hi
    for ws in (a, b):
        info = Path(ws.scratch).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (ws.uid, ws.uid, 0o700)
        assert fuse.mounted(Path(ws.scratch) / fuse.MOUNT_NAME)
    # outside any workspace's namespaces, a process as A's uid (setpriv) still reads nothing of B's: its uid
    for argv in (["ls", str(b_scratch)], ["cat", str(b_scratch / "results.csv")],
                 ["ls", str(b_scratch / "data")], ["cat", f"/proc/{b.pid}/environ"]):
        done = _as_uid(uid_a, argv)
        assert done.returncode != 0 and "Permission denied" in done.stderr, (argv, done)
    assert _as_uid(uid_a, ["cat", str(a_scratch / "mine.txt")]).stdout == "my own result"
    assert sleepers[0] in launcher.processes_of(uid_a)
    assert _holding(f"strongroom-{a.id}") and _holding(f"strongroom-{b.id}")
    assert _mounts_at(a_scratch)[0] == (str(a_scratch), f"strongroom-scratch-{a.id}")  # its own tmpfs, the hub's
    _stop(hub, a)
    # A's stop ended every process of its uid (the escaped one too), and with them its namespaces: its private
    # places (and what A left there) are gone, no process on the machine holds them; nothing is mounted at or
    # below its scratch (neither its tmpfs nor its data), which is gone
    assert launcher.processes_of(uid_a) == [] and _holding(f"strongroom-{a.id}") == []
    assert _mounts_at(a_scratch) == [] and _holding(f"strongroom-scratch-{a.id}") == []
    assert not Path(a.scratch).exists()
    with hub.sessions() as s:
        # B runs on, under its uid; A's row keeps its uid as history, no longer live
        row_a, row_b = s.get(Workspace, a.id), s.get(Workspace, b.id)
        assert (row_a.state, row_a.uid) == (STOPPED, uid_a) and (row_b.state, row_b.uid) == (RUNNING, uid_b)
    assert launcher.processes_of(uid_b) and _holding(f"strongroom-{b.id}")
    _stop(hub, b)
    assert launcher.processes_of(uid_b) == [] and _holding(f"strongroom-{b.id}") == []


def _software_under(place: str, *, python: str = "", also: tuple[Path, ...] = ()) -> list[str]:
    """The top folders under ``place`` holding JupyterLab's interpreter and its installation, the hub's packages or
    its sources (or ``also``)."""
    software = (*launcher.software(python), *also)
    return sorted({p.relative_to(place).parts[0] for p in software if p.is_relative_to(place)})


def _run_listing(*, python: str = "", scratch: Path | None = None, also: tuple[Path, ...] = ()) -> list[str]:
    """What a workspace's own /run holds: its /run/lock, the machine's /run/shm link (to its own /dev/shm), the way
    to its scratch when it lies under /run, the top folders of its software there — nothing else of the machine's."""
    kept = {"lock"} | ({"shm"} if Path("/run/shm").is_symlink() else set())
    if scratch is not None and scratch.is_relative_to("/run"):
        kept.add(scratch.relative_to("/run").parts[0])
    return sorted(kept | set(_software_under("/run", python=python, also=also)))


@contextlib.contextmanager
def host_service() -> Iterator[Path]:
    """A service of the machine listening on a UNIX socket under /run that every uid may connect to (0777), as this
    machine's PostgreSQL does (its local authentication: trust): a stand-in, so the checks bite on any machine."""
    folder = Path("/run") / f"srtest-service-{uuid.uuid4().hex[:8]}"
    folder.mkdir(mode=0o755)
    path = folder / "service.sock"
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
            path.chmod(0o777)
            sock.listen(16)
            yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _machine_sockets() -> list[str]:
    """Every UNIX socket of the machine under /run — on the file system, and bound in the hub's network namespace
    (/proc/net/unix) — each as /run/… and, where /var/run is /run, as /var/run/…"""
    found: set[str] = set()
    for folder, folders, files in os.walk("/run"):
        folders[:] = [f for f in folders if not f.startswith("srtest-python-")]  # the tests' interpreter
        for name in files:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(os.path.join(folder, name)).st_mode):
                    found.add(os.path.join(folder, name))
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[7].startswith(("/run/", "/var/run/")):
            found.add("/run/" + fields[7].split("/run/", 1)[1])
    if Path("/var/run").resolve() == Path("/run"):
        found |= {"/var/run/" + path.removeprefix("/run/") for path in found}
    return sorted(found)


def _mounts_at(path: Path) -> list[tuple[str, str]]:
    """(mount point, source) of every mount at or below ``path`` in the hub's mount namespace (/proc/self/mountinfo),
    outermost first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        point = before.split()[4].replace("\\040", " ")
        if point == str(path) or point.startswith(f"{path}/"):
            found.append((point, after.split()[1]))
    return sorted(found, key=lambda mount: len(mount[0]))


def _check_the_machine_out_of_reach(hub, kernel: Kernel, a: Workspace, service_socket: Path) -> None:
    """From A's kernel: none of the machine's UNIX sockets under /run and /var/run is there (ENOENT) — the hub's
    PostgreSQL's (trust), a service open to every uid —, its /run is its own; its HOME (on a tmpfs of its own)
    fills up at ``scratch_max_bytes`` (ENOSPC) and the machine's /dev/shm lost nothing to it."""
    sockets = _machine_sockets()
    assert str(service_socket) in sockets
    if hub.settings.database_url.startswith("postgresql") and Path("/run/postgresql").is_dir():
        assert any(path.startswith("/run/postgresql/.s.PGSQL.") for path in sockets), sockets
    fill_mib = SCRATCH_MAX // 2**20 + 128
    shm_before = _free("/dev/shm")
    _, printed = kernel.run(f"SOCKETS = {sockets!r}\nFILL_MIB = {fill_mib}\n" + MACHINE_PROBE)
    seen = json.loads(printed)
    shm_during, home = _free("/dev/shm"), os.statvfs(a.scratch)
    kernel.run("os.unlink(os.path.join(home, 'fill'))")
    assert seen["sockets"] == dict.fromkeys(sockets, "ENOENT"), seen["sockets"]
    expected_run = _run_listing(python=hub.settings.workspaces.python, scratch=Path(a.scratch))
    assert (seen["run"], seen["var_run"]) == (expected_run, expected_run), seen
    assert (seen["run_owner"], seen["run_write"]) == ([0, "0o755"], "EACCES"), seen
    # HOME holds SCRATCH_MAX and no more: full, as the hub sees it too; the machine's /dev/shm gave none of it
    assert (seen["home_size"], seen["fill_home"]) == (SCRATCH_MAX, "ENOSPC"), seen
    assert home.f_blocks * home.f_frsize == SCRATCH_MAX and home.f_bavail == 0, home
    assert shm_before - shm_during < SCRATCH_MAX, (shm_before, shm_during)


def _check_the_hubs_state_out_of_reach(hub, kernel: Kernel, a: Workspace) -> None:
    """From A's kernel: the hub's ``var_dir`` (its SQLite database in it), DICOM spool and archive storage — outside
    every place the workspace gets its own of, each left 0755 with 0644 files as an older hub left them — are
    empty stand-ins: nothing listed (711, root's), every file ``ENOENT``. Outside the namespaces, a process as A's
    uid is refused ``var_dir`` (``EACCES``: the hub made it 0700 at start)."""
    folders = [hub.settings.var_dir, hub.settings.imaging.spool_dir, hub.settings.archive.storage.root]
    files = [folder / "sentinel" for folder in folders]
    if hub.settings.database_url.startswith("sqlite"):
        files.append(hub.settings.var_dir / "strongroom.db")
        assert (hub.settings.var_dir / "strongroom.db").stat().st_size > 0  # the hub's, in use
    assert all(path.exists() for path in files), files
    _, printed = kernel.run(f"FOLDERS = {[str(p) for p in folders]!r}\nFILES = {[str(p) for p in files]!r}\n"
                            + HUB_STATE_PROBE)
    seen = json.loads(printed)
    assert seen == {"folders": {str(p): "EACCES" for p in folders}, "files": {str(p): "ENOENT" for p in files}}, seen
    for folder in folders:  # empty but for what the workspace needs beneath (nothing here: its scratch is in /dev/shm)
        assert os.listdir(f"/proc/{a.pid}/root{folder}") == [], folder
    assert stat.S_IMODE(hub.settings.var_dir.stat().st_mode) == 0o700
    for argv in (["ls", str(hub.settings.var_dir)], ["cat", str(hub.settings.var_dir / "sentinel")]):
        done = _as_uid(a.uid, argv)
        assert done.returncode != 0 and "Permission denied" in done.stderr, (argv, done)


def _free(place: str) -> int:
    info = os.statvfs(place)
    return info.f_bavail * info.f_frsize


def _holding(source: str) -> list[int]:
    """The processes whose mount namespace holds a file system mounted as ``source`` (a workspace's tmpfs)."""
    holding = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and f" {source} " in (entry / "mountinfo").read_text():
                holding.append(int(entry.name))
    return holding


def _as_uid(uid: int, argv: list[str]):
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv],
                          capture_output=True, text=True, timeout=30, check=False)


class _SlowLauncher:
    """Stands in for JupyterLab: holds the start's transaction open a while, as a real start does — on
    PostgreSQL until every other start has picked its uid too (they all race for the same one)."""

    kind = "local"

    def __init__(self, picked: threading.Event) -> None:
        self.picked = picked

    def start(self, spec, *, timeout):
        self.picked.wait(timeout=10)
        time.sleep(0.2)
        return launcher.Handle(host="127.0.0.1", port=1, pid=None, scratch=str(spec.scratch), uid=spec.uid)


def test_concurrent_starts_never_lease_one_uid(hub, people, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every start looks at the same uids in the same order (the worst case): each still gets its own — the
    losers of the race hit the partial unique index and pick again (PostgreSQL: concurrent transactions), or
    wait for the write lock and see the winner's (SQLite: one writer at a time)."""
    hub.settings = hub.settings.model_copy(update={"workspaces": hub.settings.workspaces.model_copy(
        update={"isolation": "none", "allow_unisolated": True, "mount_data": False})})
    n = 4
    postgresql = hub.settings.database_url.startswith("postgresql")
    picked, calls = threading.Event(), []
    if not postgresql:
        picked.set()  # SQLite serialises the starts: nobody else picks while one holds the write lock
    monkeypatch.setattr(service, "launcher_for", lambda settings: _SlowLauncher(picked))
    lo, hi = hub.settings.workspaces.uid_range
    monkeypatch.setattr(service, "_candidates", lambda lo, hi: iter(range(lo, hi + 1)))
    free_uid = service.free_uid

    def counted(session, settings):
        uid = free_uid(session, settings)
        calls.append(uid)
        if len(calls) >= n:
            picked.set()
        return uid

    monkeypatch.setattr(service, "free_uid", counted)
    people("alice")
    make_project(hub, "lung", pi="alice")
    members = [_member_session(hub, people, f"m{i}", "lung")[0] for i in range(n)]
    started: list[Workspace] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(person) -> None:
        try:
            barrier.wait(timeout=30)
            started.append(_start(hub, person, "lung"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    try:
        assert not errors, errors
        uids = sorted(ws.uid for ws in started)
        assert uids == list(range(lo, lo + n)), uids  # four starts, four uids
        if postgresql:  # they did race: all picked the first uid, the losers were refused by the index
            assert calls[:n] == [lo] * n and len(calls) > n, calls
        # stopped, a uid is free again: the next start may lease it
        _stop(hub, started[0])
        again = _start(hub, members[0], "lung")
        started.append(again)
        assert again.uid == started[0].uid  # the lowest free one again (the others are still live)
    finally:
        for ws in started:
            _stop(hub, ws)


def test_a_dead_hubs_scratch_goes_at_its_uids_next_lease(hub, people, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub that died while a workspace started (its row never committed) left that workspace's scratch under the
    uid it had leased, with its own tmpfs and a mount inside still mounted: the next start that leases the uid
    unmounts and removes them before making its own scratch (a tmpfs of its own); another uid's stays."""
    hub.settings = hub.settings.model_copy(update={"workspaces": hub.settings.workspaces.model_copy(
        update={"isolation": "none", "allow_unisolated": True, "mount_data": False})})
    lo = hub.settings.workspaces.uid_range[0]
    monkeypatch.setattr(service, "_candidates", lambda lo, hi: iter(range(lo, hi + 1)))  # the first free: lo
    root = service.scratch_root(hub.settings)
    root.mkdir(mode=0o711, parents=True)
    leftover, others = root / str(uuid.uuid4()), root / str(uuid.uuid4())
    for path, uid in ((leftover, lo), (others, lo + 1)):
        path.mkdir(mode=0o700)
        os.chown(path, uid, uid)
    mounts = [(leftover, f"mode=0700,uid={lo},gid={lo}"), (leftover / "data", "mode=0500")]
    ws = None
    try:
        for path, options in mounts:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=4m,{options}", "srtest-dead-hub", str(path)],
                           check=True)
            if path == leftover:
                (path / "results.csv").write_text("a dead hub's workspace wrote this")
                (path / "data").mkdir()
        assert [point for point, _ in _mounts_at(leftover)] == [str(leftover), str(leftover / "data")]
        people("alice")
        make_project(hub, "lung", pi="alice")
        carol, _ = _member_session(hub, people, "carol", "lung")
        ws = _start(hub, carol, "lung")
        assert ws.uid == lo and ws.state == RUNNING
        assert _mounts_at(leftover) == [] and not leftover.exists() and others.exists()
        assert _mounts_at(Path(ws.scratch)) == [(ws.scratch, f"strongroom-scratch-{ws.id}")]
    finally:
        if ws is not None:
            _stop(hub, ws)
        for path, _ in reversed(mounts):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(others, ignore_errors=True)


@pytest.mark.parametrize("held", ["uid", "slot"])
def test_the_database_refuses_one_uid_for_two_live_workspaces(hub, people, held: str) -> None:
    """The constraint itself: two live workspaces on one uid (or one network slot: a namespace the second one's
    teardown would remove under the first) cannot be stored; stopped ones keep theirs."""
    people("alice")
    make_project(hub, "lung", pi="alice")
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(projects.Project.id).where(projects.Project.slug == "lung"))
        uid = s.scalar(select(projects.Project.pi_id).where(projects.Project.id == pid))

    def row(state: str) -> Workspace:
        return Workspace(id=uuid.uuid4(), project_id=pid, user_id=uid, launcher="local", isolation="none",
                         state=state, **{held: 2_000_001})

    with transaction(hub.sessions) as s:
        s.add_all([row(STOPPED), row(STOPPED), row(RUNNING)])
    with pytest.raises(IntegrityError), transaction(hub.sessions) as s:
        s.add(row("starting"))
        s.flush()


def test_a_shared_account_is_refused() -> None:
    """The former ``run_as = "nobody"`` (one account for every workspace) is a clear configuration error; the
    uid range must lie above the machine's users; the legacy ``run_as = ""`` (test machines) still loads."""
    with pytest.raises(ValueError, match="run_as = 'nobody' is no longer supported"):
        Settings(workspaces={"run_as": "nobody"})
    with pytest.raises(ValueError, match="uid_range"):
        Settings(workspaces={"uid_range": [1000, 60000]})
    with pytest.raises(ValueError, match="uid_range"):
        Settings(workspaces={"uid_range": [2_000_010, 2_000_000]})
    assert Settings().workspaces.uid_range == (2_000_000, 2_099_999) and Settings().workspaces.run_as is None
    assert Settings(workspaces={"run_as": ""}).workspaces.run_as == ""


def test_uids_in_use_and_known_accounts_are_never_leased(hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A uid some process still runs as, or that an account or group of the machine has, is skipped."""
    lo = hub.settings.workspaces.uid_range[0]
    monkeypatch.setattr(service, "_candidates", lambda lo, hi: iter(range(lo, hi + 1)))
    monkeypatch.setattr(launcher, "uids_in_use", lambda: {lo})
    monkeypatch.setattr(service, "_known_id", lambda uid: uid == lo + 1)
    with hub.sessions() as s:
        assert service.free_uid(s, hub.settings) == lo + 2


def test_a_cluster_account_is_one_members(hub, people) -> None:
    """Slurm: the hub does not pick the account, an operator does — and may not give one to two members."""
    from strongroom.audit.service import Actor
    from strongroom.errors import Conflict
    from strongroom.identity.models import User

    carol, dave = people("carol"), people("dave")
    with transaction(hub.sessions) as s:
        service.set_cluster_account(s, Actor.system("test"), s.get(User, carol.user.id), "cjones")
    with pytest.raises(Conflict, match="already another member's"), transaction(hub.sessions) as s:
        service.set_cluster_account(s, Actor.system("test"), s.get(User, dave.user.id), "cjones")
    with transaction(hub.sessions) as s:
        assert service.cluster_account_of(s, dave.user.id) == ""
        service.set_cluster_account(s, Actor.system("test"), s.get(User, carol.user.id), "")
        assert service.set_cluster_account(s, Actor.system("test"), s.get(User, dave.user.id), "cjones") == "cjones"


# -- the namespace setup itself (``launcher.confine``), without JupyterLab --------------------------------------
A_UID, B_UID = UID_RANGE[1], UID_RANGE[1] - 1  # two workspaces' uids (nothing else here runs as them)


@pytest.fixture(params=["in /dev/shm", "elsewhere"])
def scratch_root(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where the workspaces' scratches are: /dev/shm (the default), or a folder outside every world-writable
    place (``scratch_dir`` on disk), which the hub's own 0711 keeps unlisted but not untraversable."""
    root = Path("/dev/shm" if request.param == "in /dev/shm" else "/run") / f"srtest-scratches-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


class Confined:
    """A shell script run as a local workspace's JupyterLab is (``launcher.confine``): under its own uid, in its
    own IPC and mount namespaces, its scratch under ``root`` (``{scratch}`` in the script)."""

    def __init__(self, root: Path, uid: int, script: str, **spec: object) -> None:
        self.id, self.uid = str(uuid.uuid4()), uid
        self.scratch = root / self.id
        self.scratch.mkdir(mode=0o700)
        os.chown(self.scratch, uid, uid)
        made = launcher.Spec(workspace_id=self.id, base_url="/", jupyter_token="-", scratch=self.scratch, env={},
                             uid=uid, **spec)
        self.own_tmpfs = launcher.mount_scratch(made)  # as the local launcher does (scratch_max_bytes given)
        argv = launcher.confine(made, ["/bin/sh", "-c", script.replace("{scratch}", str(self.scratch))])
        self.proc = subprocess.Popen(argv, cwd=self.scratch,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)

    def ready(self) -> None:
        """Wait for the script's first line: what it had to do first is done."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", (line, self.proc.stderr.read() if self.proc.stderr else "")

    def output(self) -> str:
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, (out, err)
        return out

    def end(self) -> None:
        launcher.end_uid(self.uid)
        self.proc.wait(timeout=30)
        fuse.unmount(self.scratch)  # as the local launcher's stop does


@contextlib.contextmanager
def confined(root: Path, uid: int, script: str, **spec: object) -> Iterator[Confined]:
    run = Confined(root, uid, script, **spec)
    try:
        yield run
    finally:
        run.end()


@pytest.mark.parametrize("place", PLACES)
def test_each_world_writable_place_is_a_workspaces_own(scratch_root: Path, place: str) -> None:
    """What A writes to /tmp, /var/tmp, /dev/shm, /run/lock (and their aliases /run/shm, /var/lock) is in A's own
    tmpfs: not in the machine's, not in B's; and gone with A's last process (no namespace keeps it)."""
    name = f"srtest-{uuid.uuid4().hex[:8]}"
    host = Path(place) / name
    try:
        with confined(scratch_root, A_UID, f"echo 'from A' > {place}/{name} && echo ready && exec sleep 120") as a:
            a.ready()
            real = Path(place).resolve()  # (an alias's link, read from here, would lead to the machine's)
            assert Path(f"/proc/{a.proc.pid}/root{real}/{name}").read_text() == "from A\n"
            assert not host.exists()
            with confined(scratch_root, B_UID, f"test -e {place}/{name} && echo seen || echo unseen") as b:
                assert b.output() == "unseen\n"
            assert _holding(f"strongroom-{a.id}")
        assert _holding(f"strongroom-{a.id}") == [] and not host.exists()
    finally:
        host.unlink(missing_ok=True)


def test_another_workspaces_scratch_is_out_of_reach(scratch_root: Path) -> None:
    """Even opened wide by its owner (two workspaces colluding to pass data around the airlock), A's scratch is
    not in B's world: B's mount namespace shows its own scratch alone, wherever the scratches are."""
    script = "chmod 777 . && echo 'from A' > shared && chmod 666 shared && echo ready && exec sleep 120"
    with confined(scratch_root, A_UID, script) as a:
        a.ready()
        looks = (f"cat {a.scratch}/shared 2>&1; echo 'from B' > {a.scratch}/from-b 2>/dev/null || echo refused; "
                 f"ls -a {a.scratch.parent} 2>&1; test -w {{scratch}} && echo own-scratch")
        with confined(scratch_root, B_UID, looks) as b:
            seen = b.output()
        assert "from A" not in seen and "refused" in seen and "own-scratch" in seen, seen
        assert a.id not in seen.replace(str(a.scratch), ""), seen  # not listed either
        assert not (a.scratch / "from-b").exists()


def test_a_workspace_sees_its_own_processes_only(scratch_root: Path) -> None:
    """/proc with ``hidepid=invisible``: B lists no process but its own — not A's, not the hub's (root) — and
    A's command line and environment are not there to read."""
    with confined(scratch_root, A_UID, "echo ready && exec sleep 120") as a:
        a.ready()
        looks = ("for p in /proc/[0-9]*; do stat -c %u $p 2>/dev/null; done | sort -u; "
                 f"test -e /proc/{a.proc.pid} && echo A-listed; cat /proc/{a.proc.pid}/cmdline 2>&1 | tr '\\0' ' ';"
                 f" cat /proc/{a.proc.pid}/environ 2>&1 | tr '\\0' ' '; test -e /proc/1 && echo init-listed; :")
        with confined(scratch_root, B_UID, looks) as b:
            seen = b.output().splitlines()
    assert seen[0] == str(B_UID) and "A-listed" not in seen and "init-listed" not in seen, seen
    assert [line for line in seen[1:] if "sleep" in line or "PATH=" in line] == [], seen
    assert all("No such file or directory" in line for line in seen[1:]), seen


def test_temporary_places_and_shared_memory_are_size_limited(scratch_root: Path) -> None:
    """/tmp and /var/tmp hold ``tmp_max_bytes`` each, /dev/shm ``shm_max_bytes`` — writing more fails with
    ENOSPC there, the machine's is untouched — and System V shared memory has the same limit."""
    tmp_max, shm_max = 8 * 2**20, 4 * 2**20
    script = ("for p in /tmp /var/tmp /dev/shm /run/shm /run/lock /var/lock; do stat -f -c '%b %S' $p; done; "
              "head -c 5M /dev/zero > /dev/shm/fill 2>/dev/null && echo filled || echo full; "
              "head -c 9M /dev/zero > /tmp/fill 2>/dev/null && echo filled || echo full; "
              "cat /proc/sys/kernel/shmmax /proc/sys/kernel/shmall")
    with confined(scratch_root, A_UID, script, tmp_max_bytes=tmp_max, shm_max_bytes=shm_max) as a:
        lines = a.output().splitlines()
    sizes = [int(blocks) * int(size) for blocks, size in (line.split() for line in lines[:6])]
    page = os.sysconf("SC_PAGE_SIZE")
    assert sizes == [tmp_max, tmp_max, shm_max, shm_max, launcher.LOCK_BYTES, launcher.LOCK_BYTES], lines
    assert lines[6:] == ["full", "full", str(shm_max), str(shm_max // page)], lines
    assert not Path("/dev/shm/fill").exists()


@pytest.mark.parametrize("place", ["/tmp", "/run"])
def test_an_interpreter_under_tmp_or_run_still_runs(scratch_root: Path, place: str) -> None:
    """A hub installed, or a checkout tested, under /tmp (CI) or /run: its folder is bound back into the
    workspace's own /tmp or /run — the interpreter runs — and nothing else of the machine's is there."""
    checkout = Path(place) / f"srtest-checkout-{uuid.uuid4().hex[:8]}"
    host_file = Path(place) / f"srtest-host-{uuid.uuid4().hex[:8]}"
    try:
        (checkout / "bin").mkdir(parents=True)
        python = checkout / "bin" / "python"
        python.write_text("#!/bin/sh\necho 'the interpreter runs'\n")
        for path in (checkout, checkout / "bin", python):
            path.chmod(0o755)
        host_file.write_text("the machine's")
        script = f"{python}; ls -A {place}; test -e {host_file} && echo host-visible; :"
        with confined(scratch_root, A_UID, script, python=str(python)) as a:
            seen = a.output().splitlines()
        listing = (_software_under("/tmp", python=str(python)) if place == "/tmp"
                   else _run_listing(python=str(python), scratch=a.scratch))
        assert checkout.name in listing and seen == ["the interpreter runs", *listing], seen
    finally:
        shutil.rmtree(checkout, ignore_errors=True)
        host_file.unlink(missing_ok=True)


def test_the_machines_unix_sockets_are_out_of_reach(scratch_root: Path) -> None:
    """A network namespace does not cover a socket bound to a path: /run (and /var/run) are the workspace's own —
    root's, 0755 — holding its /run/lock, the /run/shm link and the way to its scratch (when under /run), and not
    one of the machine's sockets there (PostgreSQL's, MySQL's, a service's open to every uid)."""
    with host_service() as service_socket:
        sockets = _machine_sockets()
        assert str(service_socket) in sockets
        script = "".join(f"test -e {shlex.quote(p)} && echo reachable {shlex.quote(p)}; " for p in sockets)
        script += "ls -A /run; echo; ls -A /var/run; echo; stat -c '%u %a' /run; touch /run/x 2>&1; :"
        with confined(scratch_root, A_UID, script) as a:
            seen = a.output()
    run = "\n".join(_run_listing(scratch=a.scratch))
    assert seen.startswith(f"{run}\n\n{run}\n\n0 755\n") and "reachable" not in seen, seen
    assert "Permission denied" in seen, seen


def test_a_scratch_on_tmpfs_gets_a_tmpfs_of_its_own(scratch_root: Path) -> None:
    """Scratches on a tmpfs (/dev/shm, the default: half the machine's memory, everyone's): each gets its own,
    at most ``scratch_max_bytes`` — filling HOME fails there (ENOSPC) and the machine's /dev/shm gives nothing —,
    gone at the stop's unmount. On disk nothing is mounted (the site's quotas limit a scratch there)."""
    limit = 16 * 2**20
    on_tmpfs = subprocess.run(["stat", "-f", "-c", "%T", str(scratch_root)], capture_output=True, text=True,
                              check=True).stdout.strip() == "tmpfs"
    shm_before = _free("/dev/shm")
    script = (f"head -c {limit + 8 * 2**20} /dev/zero > {{scratch}}/fill 2>/dev/null && echo filled || echo full; "
              "echo ready; exec sleep 120")
    with confined(scratch_root, A_UID, script, scratch_max_bytes=limit) as a:
        assert a.proc.stdout is not None
        wrote = a.proc.stdout.readline().strip()
        a.ready()
        home, filled = os.statvfs(a.scratch), (a.scratch / "fill").stat().st_size
        if on_tmpfs:  # its own, full at the limit, the hub's to see; the machine's /dev/shm gave none of it
            assert (a.own_tmpfs, wrote, home.f_blocks * home.f_frsize, home.f_bavail) == (True, "full", limit, 0)
            assert filled <= limit and _mounts_at(a.scratch) == [(str(a.scratch), f"strongroom-scratch-{a.id}")]
            assert shm_before - _free("/dev/shm") < limit
        else:
            assert (a.own_tmpfs, wrote, filled, _mounts_at(a.scratch)) == (False, "filled", limit + 8 * 2**20, [])
    assert _mounts_at(a.scratch) == [] and _holding(f"strongroom-scratch-{a.id}") == []


@pytest.mark.parametrize("scratches", ["in /dev/shm", "under var_dir"])
def test_the_hubs_state_is_not_in_a_workspaces_world(scratches: str) -> None:
    """The hub's state folders (``Spec.hub_state``: ``var_dir``, the spool, the archive storage), wherever they are
    — here /var/lib, which no other private place covers — are empty stand-ins in the workspace's world, whatever
    their modes (0755 folders, a 0644 database, as an older hub left them): nothing listed, every file ``ENOENT``,
    the machine's untouched. With the scratches under ``var_dir`` (the default without /dev/shm) the way to the
    workspace's own scratch stays, and no other workspace's scratch is there."""
    home = Path("/var/lib") / f"srtest-hub-{uuid.uuid4().hex[:8]}"
    state = [home / name for name in HUB_STATE]
    root = state[0] / "workspaces" if scratches == "under var_dir" else Path("/dev/shm") / f"srtest-{home.name}"
    files = [state[0] / "strongroom.db", *(folder / "sentinel" for folder in state)]
    try:
        for folder in state:
            folder.mkdir(mode=0o755, parents=True)
        for path in files:
            path.write_text("the hub's own")
            path.chmod(0o644)
        root.mkdir(mode=0o711)
        other = root / str(uuid.uuid4())  # another workspace's scratch
        other.mkdir(mode=0o700)
        os.chown(other, B_UID, B_UID)
        script = ("".join(f"cat {path} 2>&1; " for path in files)
                  + "".join(f"ls -A {folder} 2>&1; " for folder in state)
                  + f"ls -A {root} 2>&1; echo mine > {{scratch}}/mine && cat {{scratch}}/mine; "
                  + "echo ready; exec sleep 120")
        with confined(root, A_UID, script, hub_state=tuple(state)) as a:
            assert a.proc.stdout is not None
            seen = [a.proc.stdout.readline().rstrip("\n") for _ in range(len(files) + len(state) + 2)]
            a.ready()
            inside = {str(folder): sorted(os.listdir(f"/proc/{a.proc.pid}/root{folder}")) for folder in state}
        cats, listings, (scratch_root, mine) = seen[:len(files)], seen[len(files):-2], seen[-2:]
        assert cats == [f"cat: {path}: No such file or directory" for path in files], seen
        assert all(str(folder) in line and line.endswith("Permission denied")
                   for folder, line in zip(state, listings, strict=True)), seen
        assert (scratch_root, mine) == (a.id, "mine"), seen  # its own scratch alone, reached and written
        assert inside == {str(folder): ["workspaces"] if scratches == "under var_dir" and folder == state[0] else []
                          for folder in state}, inside
        assert all(path.read_text() == "the hub's own" for path in files)  # the machine's, untouched
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


# -- what the stop removes from the machine's shared places ------------------------------------------------------
U, V = 2_999_001, 2_999_002  # the stopped workspace's uid, another's

# each case: the entries (path, kind, owner) under a shared place, and which of them the stop removes for U
LEFTOVERS = {
    "own file": ([("f", "file", U), ("g", "file", V)], {"f"}),
    "own file deep in others' folders": (
        [("a", "dir", 0), ("a/b", "dir", V), ("a/b/f", "file", U), ("a/b/g", "file", V)], {"a/b/f"}),
    "own folders, whole": ([("d", "dir", U), ("d/e", "dir", U), ("d/e/f", "file", U)], {"d", "d/e", "d/e/f"}),
    "own folder holding another's file": ([("d", "dir", U), ("d/f", "file", U), ("d/g", "file", V)], {"d/f"}),
    "links are removed, never followed": (
        [("l", "link", U), ("m", "link", V), ("d", "dir", V), ("d/l", "link", U)], {"l", "d/l"}),
    "sockets and pipes": ([("s", "socket", U), ("p", "fifo", U)], {"s", "p"}),
    "a mount beneath is not entered": ([("mnt", "mount", 0), ("mnt/f", "file", U)], set()),
    "the scratch root is left to the wipe": (
        [("scratches", "dir", 0), ("scratches/x", "dir", U), ("scratches/x/f", "file", U)], set()),
}


@pytest.mark.parametrize("case", LEFTOVERS)
def test_the_stop_removes_a_uids_leftovers_recursively_and_safely(tmp_path: Path, case: str) -> None:
    """Beneath a shared place, everything the uid owns goes — however deep, in anyone's folders — and nothing
    else: another uid's files (in the uid's own folders too) stay, a link is removed but never followed (the
    file it points to, the uid's, stays), a mount is not entered, the scratch root is left to the wipe."""
    entries, expected = LEFTOVERS[case]
    place, outside = tmp_path / "place", tmp_path / "outside"
    place.mkdir(mode=0o1777)
    outside.mkdir()
    (outside / "f").write_text("the uid's, elsewhere")
    os.chown(outside / "f", U, U)
    mounts = []
    try:
        for rel, kind, owner in entries:
            path = place / rel
            if kind in ("dir", "mount"):
                path.mkdir(mode=0o1777 if owner == 0 else 0o777)
                if kind == "mount":
                    subprocess.run(["mount", "-t", "tmpfs", "srtest", str(path)], check=True)
                    mounts.append(path)
            elif kind == "file":
                path.write_text(rel)
            elif kind == "link":
                path.symlink_to(outside)
            elif kind == "socket":
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.bind(str(path))
            else:
                os.mkfifo(path)
            os.lchown(path, owner, owner)
        keep_out = {"keep_out": (str(place / "scratches"),)} if (place / "scratches").exists() else {}
        removed = launcher.remove_leftovers(U, places=(str(place),), **keep_out)
        assert sorted(os.path.relpath(p, place) for p in removed) == sorted(expected)
        left = {rel for rel, _, _ in entries if os.path.lexists(place / rel)}
        assert left == {rel for rel, _, _ in entries} - expected
        assert (outside / "f").read_text() == "the uid's, elsewhere"
    finally:
        for path in mounts:
            subprocess.run(["umount", "-l", str(path)], check=False)


# -- resource limits: a control group of its own ---------------------------------------------------------------------
HOGS = """
import subprocess, sys
hog = subprocess.run([sys.executable, "-c", "a = bytearray(1 << 30)"], capture_output=True)
bomb = subprocess.run([sys.executable, "-c", BOMB], capture_output=True, text=True)
print(hog.returncode, bomb.stdout.strip())
"""
# a fork bomb in a process of its own (not the kernel): 400 sleeping children asked for, then all ended at once
BOMB = """
import os, time
children, refused = [], 0
for _ in range(400):
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, 9)
for pid in children:
    os.waitpid(pid, 0)
print(len(children), refused)
"""


def test_a_workspace_is_held_to_its_memory_and_processes(hub, people, live: str) -> None:  # noqa: F811
    """A notebook that allocates a GiB, and forks 400 processes, in a workspace limited to 512 MiB and 256 processes:
    the kernel stops the allocating process inside the workspace's control group, the forks beyond the ceiling are
    refused, and the notebook goes on; the page reports the memory against its limit and the stopped process; at the
    stop the group goes."""
    hub.settings.workspaces.memory_max_bytes, hub.settings.workspaces.pids_max = 512 * 2**20, 256
    people("alice")
    make_project(hub, "lung", pi="alice")
    carol, cookie = _member_session(hub, people, "carol", "lung")
    ws = _start(hub, carol, "lung")
    try:
        assert ws.uid is not None and ws.pid is not None
        group = limits.existing(launcher.group_name(ws.uid))
        assert group.dirs and ws.pid in group.pids()  # JupyterLab (and all it starts) is in it
        assert group.memory_limit() == 512 * 2**20
        kernel = Kernel(live, service.base_path("lung", ws.id), cookie)
        try:
            _, printed = kernel.run(f"BOMB = {BOMB!r}\n" + HOGS)
            hog, forked, refused = (int(n) for n in printed.split())
            assert hog == -signal.SIGKILL  # the kernel's OOM killer, inside the group
            assert refused > 0 and forked + refused == 400 and forked < 256
            _, printed = kernel.run("print(6 * 7)")  # the notebook itself goes on
            assert printed.strip() == "42"
        finally:
            kernel.close()
        assert group.out_of_memory_kills() >= 1
        shown = service.resources(hub.settings, ws)
        assert shown["memory"].endswith("of 512 MiB; 1 process(es) stopped at the limit") or \
            "of 512 MiB;" in shown["memory"], shown
    finally:
        _stop(hub, ws)
    assert not any(d.exists() for d in group.dirs)
