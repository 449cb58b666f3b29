"""Where a workspace's JupyterLab runs: a ``Launcher`` protocol with a local process launcher (the embedded
default, optionally inside the workspace's network namespace) and a Slurm launcher (``sbatch`` into the
project's booking reservation, or onto free capacity). Pure: no database or web imports.

JupyterLab is started with ``base_url`` = the hub's proxy path, so the hub forwards paths unchanged, and with
its token in ``JUPYTER_TOKEN`` (never on a command line, never sent to the browser: the hub's proxy adds it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from ..config import NotOutside, internal_address, outside_addresses
from ..parsing import whole_number_in
from . import fuse
from . import limits as workspace_limits


class LaunchError(RuntimeError):
    pass


class AddressRefused(LaunchError):
    """Where a Slurm job would be reached is no place the hub may dial: the message names the node and the kind of
    address (loopback, link-local, ...), never an address."""

    def __init__(self, reason: str, *, job_id: str = "") -> None:
        super().__init__(reason)
        self.job_id = job_id


@dataclass(frozen=True)
class Spec:
    """What to start."""

    workspace_id: str
    base_url: str  # "/projects/<slug>/workspaces/<id>/"
    jupyter_token: str
    scratch: Path
    env: dict[str, str]  # STRONGROOM_URL, STRONGROOM_TOKEN
    python: str = ""
    netns: str = ""  # run inside this namespace (local launcher)
    listen_ip: str = "127.0.0.1"
    port: int = 0  # 0: a free port (without a namespace)
    reservation: str = ""  # Slurm: the booking's reservation
    gpus: int = 0
    partition: str = ""
    license: str = ""  # Slurm 22.05: the machine's GPUs as a cluster licence (-L name:gpus), see compute
    slurm_host: str = ""  # Slurm: the operator's address JupyterLab binds and the hub dials ("": the job's node's)
    subnet: str = ""  # Slurm: the workspaces' subnet (the hub machine's side of each workspace): no node is in it
    uid: int | None = None  # local, the hub runs as root: the workspace's own uid (and gid), no capabilities
    drop_caps: bool = False  # legacy (run_as = ""): root without any capability, one identity for all
    mount_data: bool = False  # mount strongroom:// read-only at <scratch>/data (FUSE, strongroom.workspaces.fuse)
    cluster_account: str = ""  # Slurm: the member's cluster account the job runs as
    tmp_max_bytes: int = 2**30  # local, own uid: the most its private /tmp (and /var/tmp) holds
    shm_max_bytes: int = 2**30  # local, own uid: the most its private /dev/shm (and System V shared memory) holds
    scratch_max_bytes: int = 0  # local, root, scratches on a tmpfs: the most its scratch's own tmpfs holds (0: none)
    hub_state: tuple[Path, ...] = ()  # local, own uid: the hub's state folders (var_dir, spool…), hidden from it
    limits: workspace_limits.Limits = field(default_factory=workspace_limits.Limits)  # local, own uid: its cgroup


@dataclass
class Handle:
    """Where it runs: enough to find it again from any hub process."""

    host: str
    port: int
    pid: int | None = None
    job_id: str = ""
    detail: dict[str, str] = field(default_factory=dict)
    scratch: str = ""  # its mount (<scratch>/data) is unmounted at stop
    uid: int | None = None  # its own uid: every process left under it is killed at stop, its temporary files removed


def jupyter_argv(spec: Spec, ip: str, port: int) -> list[str]:
    return [spec.python or sys.executable, "-m", "jupyterlab", "--no-browser", f"--ip={ip}", f"--port={port}",
            "--port-retries=0", f"--ServerApp.base_url={spec.base_url}", f"--ServerApp.root_dir={spec.scratch}",
            "--ServerApp.allow_remote_access=True", "--ServerApp.disable_check_xsrf=False",
            "--ServerApp.terminals_enabled=False", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
            "jupyterlab.NeverCheckForUpdate"]


def jupyter_env(spec: Spec) -> dict[str, str]:
    """A clean environment: no secret of the hub's leaks into the workspace."""
    home = spec.scratch
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
            "JUPYTER_TOKEN": spec.jupyter_token, "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
            "JUPYTER_DATA_DIR": str(home / ".local/share/jupyter"), "JUPYTER_RUNTIME_DIR": str(home / ".runtime"),
            "IPYTHONDIR": str(home / ".ipython"), "XDG_CACHE_HOME": str(home / ".cache"),
            "PYTHONUNBUFFERED": "1", **spec.env}


def wait_ready(host: str, port: int, spec: Spec, *, timeout: float, alive: object = None) -> None:
    """Poll Jupyter's ``/api/status`` until it answers (a readiness probe with a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}{spec.base_url}api/status"
    last = ""
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            raise LaunchError(f"JupyterLab exited while starting: {last}")
        try:
            r = httpx.get(url, headers={"Authorization": f"token {spec.jupyter_token}"}, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise LaunchError(f"JupyterLab did not answer within {timeout:g} s ({last})")


class Launcher(Protocol):
    kind: str

    def start(self, spec: Spec, *, timeout: float) -> Handle: ...
    def stop(self, handle: Handle) -> None: ...
    def alive(self, handle: Handle) -> bool: ...
    def resources(self, handle: Handle) -> dict[str, str]: ...


def _group_usage(pgid: int) -> tuple[int, int]:
    """(resident bytes, CPUs it may use) of a process group, from /proc."""
    rss, cpus = 0, 0
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # fields after the command: state ppid pgrp …
                continue
            rss += int((entry / "statm").read_text().split()[1]) * page
            cpus = max(cpus, len(os.sched_getaffinity(int(entry.name))))
        except (OSError, IndexError, ValueError):
            continue
    return rss, cpus


def group_name(uid: int) -> str:
    """A local workspace's control group: named by its uid, leased to one live workspace at a time."""
    return f"ws-{uid}"


def _mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def mount_data(spec: Spec, *, timeout: float) -> None:
    """Start the FUSE daemon (the hub's interpreter, root when the hub is; in the workspace's network namespace,
    so its reads come from the workspace's address) and wait until ``<scratch>/data`` is mounted: inside the
    workspace's own 0700 scratch, its files owned by the workspace's uid and readable by it alone (the kernel
    checks: ``default_permissions``), so no other workspace's uid reaches it."""
    mountpoint = spec.scratch / fuse.MOUNT_NAME
    mountpoint.mkdir(mode=0o700, exist_ok=True)
    uid, gid = (spec.uid, spec.uid) if spec.uid is not None else (os.getuid(), os.getgid())
    argv = fuse.argv(sys.executable, mountpoint, uid=uid, gid=gid, allow_other=uid != os.getuid())
    if spec.netns:  # only the network namespace: the mount stays in the hub's mount namespace
        argv = ["nsenter", f"--net=/run/netns/{spec.netns}", "--", *argv]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(spec.scratch), "LANG": "C.UTF-8",
           "STRONGROOM_URL": spec.env["STRONGROOM_URL"], "STRONGROOM_TOKEN": spec.env["STRONGROOM_TOKEN"],
           "STRONGROOM_ALLOW_HTTP": spec.env.get("STRONGROOM_ALLOW_HTTP", "")}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # the hub's own import path
    log = open(spec.scratch / ".fuse.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(argv, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while not fuse.mounted(mountpoint):  # readiness, polled with a deadline
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            fuse.unmount(mountpoint)
            tail = (spec.scratch / ".fuse.log").read_text(errors="replace")[-800:]
            raise LaunchError(f"the read-only data mount did not come up: {tail}")
        time.sleep(0.05)
    import threading

    # it exits when its mount goes (stop unmounts): reap it then
    threading.Thread(target=proc.wait, daemon=True, name=f"fuse-{spec.workspace_id[:8]}").start()


# World-writable places a workspace's uid could leave files in: what its uid owns anywhere beneath them is removed
# at stop, so the uid's next lease finds nothing of this one. (A local workspace has its own of each, private to its
# mount namespace — ``confine`` —, but what it needs from the machine's remains: its scratch, the hub's software.)
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue", "/run/lock")


def _process_uids() -> Iterator[tuple[int, set[int]]]:
    """Each process (from /proc) with its real, effective and saved uids; one that ends meanwhile is skipped."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    yield int(entry.name), {int(x) for x in line.split()[1:4]}
                    break
        except (OSError, ValueError):
            continue


def processes_of(uid: int) -> list[int]:
    """Every process whose real, effective or saved uid is ``uid``."""
    return [pid for pid, uids in _process_uids() if uid in uids]


def uids_in_use() -> set[int]:
    """The uids some process runs as (real, effective or saved): a uid still in use is never leased."""
    return {uid for _, uids in _process_uids() for uid in uids}


def end_uid(uid: int, *, timeout: float = 10.0) -> bool:
    """SIGKILL every process of ``uid`` (those that left the process group too: ``setsid``, double forks) until
    none is left; True when none is. Never for root or the hub's own uid."""
    if uid in (0, os.getuid(), os.geteuid()):
        raise ValueError(f"refusing to end every process of uid {uid}")
    deadline = time.monotonic() + timeout
    while pids := processes_of(uid):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:  # reap the ones this process started
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def remove_leftovers(uid: int, *, places: tuple[str, ...] = SHARED_TMP, keep_out: tuple[str, ...] = ()) -> list[str]:
    """Remove what ``uid`` owns anywhere beneath the machine's shared temporary places (files, folders, sockets,
    POSIX shared memory and message queues), except under ``keep_out`` (the scratch folders: each is wiped on its
    own); returns what was removed."""
    if uid in (0, os.getuid(), os.geteuid()):
        raise ValueError(f"refusing to remove the files of uid {uid}")
    return [path for place in places for path in _remove_owned(place, uid, frozenset(keep_out))]


@dataclass
class _Folder:
    fd: int
    path: str
    names: list[str]
    owned: tuple[int, str, int] | None  # when the uid owns it: (its parent's fd, its name there, its inode)


MAX_DEPTH = 128  # folders held open at once while walking down (each one a file descriptor)
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove_owned(place: str, uid: int, keep_out: frozenset[str]) -> list[str]:
    """Everything ``uid`` owns beneath ``place``, removed bottom-up, safely while other uids still run: every step
    is relative to an open folder and never follows a symbolic link (a name swapped for a link to elsewhere meanwhile
    leads nowhere), the walk never leaves ``place``'s file system (a mount beneath it, such as a workspace's data
    mount, is not entered), and a folder goes only once empty (what another uid put in it stays, and so does it)."""
    try:
        top = os.open(place, _FOLDER)
    except OSError:
        return []
    device = os.fstat(top).st_dev
    removed: list[str] = []
    stack: list[_Folder] = []
    try:
        stack.append(_Folder(top, place, os.listdir(top), None))
        while stack:
            folder = stack[-1]
            if not folder.names:
                stack.pop()
                os.close(folder.fd)
                if folder.owned is not None and _rmdir_same(*folder.owned):
                    removed.append(folder.path)
                continue
            name = folder.names.pop()
            path = os.path.join(folder.path, name)
            try:
                info = os.lstat(name, dir_fd=folder.fd)
            except OSError:
                continue
            if not stat.S_ISDIR(info.st_mode):
                if info.st_uid == uid:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=folder.fd)
                        removed.append(path)
                continue
            if info.st_dev != device or path in keep_out or len(stack) > MAX_DEPTH:
                continue
            if (inner := _open_same(folder.fd, name, info)) is not None:
                owned = (folder.fd, name, info.st_ino) if info.st_uid == uid else None
                stack.append(_Folder(inner[0], path, inner[1], owned))
    finally:
        for folder in stack:
            os.close(folder.fd)
    return removed


def _open_same(parent: int, name: str, seen: os.stat_result) -> tuple[int, list[str]] | None:
    """The folder ``name`` of ``parent`` opened and listed — if it is still the one ``seen`` (not swapped)."""
    try:
        fd = os.open(name, _FOLDER, dir_fd=parent)
    except OSError:
        return None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) == (seen.st_dev, seen.st_ino):
            return fd, os.listdir(fd)
    except OSError:
        pass
    os.close(fd)
    return None


def _rmdir_same(parent: int, name: str, inode: int) -> bool:
    """Remove the (empty) folder ``name`` of ``parent`` if it is still the one walked through."""
    try:
        if os.lstat(name, dir_fd=parent).st_ino != inode:
            return False
        os.rmdir(name, dir_fd=parent)
    except OSError:
        return False
    return True


# What a workspace gets of the machine's shared places (aliases such as /var/run -> /run are the same folder): an
# empty tmpfs of its own over each, at most this large, in its mount namespace.
TMP_PLACES = ("/tmp", "/var/tmp")  # [workspaces] tmp_max_bytes each
SHM_PLACES = ("/dev/shm", "/run/shm")  # [workspaces] shm_max_bytes (System V shared memory: the same limit)
LOCK_PLACES = ("/run/lock", "/var/lock")
LOCK_BYTES = 5 * 2**20  # lock files are tiny: Debian's own /run/lock is 5 MiB
# Where the machine's services keep their UNIX sockets (PostgreSQL, MySQL, Docker, D-Bus, systemd, nscd, Redis…):
# a network namespace does not cover a socket bound to a path, so the workspace's /run is its own too — root's,
# 0755, holding only mount points and links: not one of the machine's sockets is there to connect to.
RUN_PLACES = ("/run", "/var/run")
RUN_BYTES = 2**20
SCRATCH_ROOT_BYTES = 2**20  # the scratch root's stand-in holds only the mount point of the workspace's own scratch
# The hub's state (``Spec.hub_state``: its database, keys, spool, archive storage) is not the workspace's to read,
# whatever the files' modes: each folder's stand-in holds only the way to what is kept beneath it (a scratch root
# under ``var_dir``, software), and others may only pass through it (711).
HUB_STATE_BYTES = 2**20


@dataclass(frozen=True)
class Private:
    """A place the workspace gets its own of: an empty tmpfs over it in its mount namespace, with only what the
    workspace needs bound back beneath it from the machine's (``keep``: its scratch, the hub's software, and the
    places inside it that are private too, each already its own tmpfs) and the machine's links to elsewhere made
    anew (``links``: /run/shm -> /dev/shm leads to the workspace's own /dev/shm)."""

    place: Path
    max_bytes: int
    mode: str  # 1777 for a temporary place; 755 for /run; 711 for the scratch root and the hub's state (the hub's)
    keep: tuple[Path, ...] = ()
    links: tuple[tuple[Path, str], ...] = ()  # (the link, what it points to)


def _outermost(paths: list[Path]) -> tuple[Path, ...]:
    kept: list[Path] = []
    for path in sorted(set(paths)):
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return tuple(kept)


def software(python: str) -> list[Path]:
    """Where what the workspace runs lives: JupyterLab's interpreter (its path, where its links lead, and the
    installation its virtual environment's ``pyvenv.cfg`` names, beside it or one folder up, where Python itself
    looks), the hub's own environment and the hub's sources."""
    interpreter = Path(os.path.abspath(python or sys.executable))
    found = [interpreter, interpreter.resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
             Path(__file__).resolve().parents[2]]
    for folder in (interpreter.parent, interpreter.parent.parent):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for line in (folder / "pyvenv.cfg").read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "home" and value.strip():
                    found.append(Path(value.strip()).resolve())
    return found


def private_places(spec: Spec) -> list[Private]:
    """The places ``confine`` makes the workspace's own, in the order they are mounted (the inner ones first, so
    the one around keeps them): the world-writable ones, /run (and /var/run), the hub's state folders
    (``Spec.hub_state``: hidden wherever they are, even inside a folder kept for the software) and, when it is not
    inside one of them (a scratch on disk, or under ``var_dir``), the scratch root, where every other workspace's
    scratch is. Beneath each, only the workspace's own scratch, the top folder holding its software (``software``:
    a hub installed, or a checkout tested, under /tmp), the private places inside it and the links of the
    machine's aliases stay; a place the workspace needs as a whole (one of those *is* it, or lies above it) stays
    the machine's."""
    scratch = spec.scratch.resolve()
    programs = software(spec.python)
    needed = [scratch, *programs]
    sizes: dict[Path, tuple[int, str]] = {}
    kinds = ((TMP_PLACES, spec.tmp_max_bytes, "1777"), (SHM_PLACES, spec.shm_max_bytes, "1777"),
             (LOCK_PLACES, LOCK_BYTES, "1777"), (RUN_PLACES, RUN_BYTES, "755"))
    for aliases, max_bytes, mode in kinds:
        for alias in aliases:
            real = Path(alias).resolve()
            if Path(alias).is_dir() and real not in sizes and not any(real.is_relative_to(p) for p in needed):
                sizes[real] = (max_bytes, mode)
    programs_at = {p.resolve() for p in programs}
    for folder in spec.hub_state:
        real = folder.resolve()
        if real.is_dir() and real not in sizes and real not in programs_at and not real.is_relative_to(scratch):
            sizes[real] = (HUB_STATE_BYTES, "711")
    root = scratch.parent
    if not any(root.is_relative_to(p) for p in (*sizes, *needed)):
        sizes[root] = (SCRATCH_ROOT_BYTES, "711")
    links = [Path(alias) for aliases, _, _ in kinds for alias in aliases if Path(alias).is_symlink()]
    places = []
    for place, (max_bytes, mode) in sizes.items():
        keep = [scratch] if scratch.is_relative_to(place) else []
        keep += [place / p.relative_to(place).parts[0] for p in programs if p.is_relative_to(place)]
        keep += [inner for inner in sizes if inner != place and inner.is_relative_to(place)]
        kept = _outermost(keep)
        made = tuple((link, os.readlink(link)) for link in links
                     if link.is_relative_to(place) and not any(link.is_relative_to(k) for k in kept))
        places.append(Private(place, max_bytes, mode, kept, made))
    return sorted(places, key=lambda p: len(p.place.parts), reverse=True)


def namespace_setup(spec: Spec) -> list[str]:
    """The shell steps (root, inside the workspace's new mount and IPC namespaces, before the identity drops) that
    make it a world of its own: its private places (``private_places``), System V shared memory limited like
    /dev/shm, POSIX message queues of its own namespace at /dev/mqueue, and a /proc showing its own processes only
    (``hidepid=invisible``: another workspace's names, command lines and environments are not even listed; a kernel
    older than 5.8 refuses the option, and the workspace does not start)."""
    steps = []
    for private in private_places(spec):
        # the machine's folder stays reachable through descriptor 3 while the tmpfs hides it, for the binds back
        # (a private place inside it, mounted before, is reached there too: its tmpfs is bound, not the machine's)
        place = shlex.quote(str(private.place))
        options = (f"nosuid,nodev,mode={private.mode},size={private.max_bytes},"
                   f"nr_inodes={max(1024, private.max_bytes // 4096)}")
        steps += [f"exec 3< {place}", f"mount -n -t tmpfs -o {options} strongroom-{spec.workspace_id} {place}"]
        for kept in private.keep:
            target = shlex.quote(str(kept))
            steps.append(f"mkdir -p {target}" if kept.is_dir()
                         else f"mkdir -p {shlex.quote(str(kept.parent))} && : > {target}")
            source = shlex.quote(f"/proc/self/fd/3/{kept.relative_to(private.place)}")
            steps.append(f"mount -n --no-canonicalize --rbind {source} {target}")
        for link, points_to in private.links:
            made = f"ln -s {shlex.quote(points_to)} {shlex.quote(str(link))}"
            folder = shlex.quote(str(link.parent))
            steps.append(made if link.parent == private.place else f"mkdir -p {folder} && {made}")
        steps.append("exec 3<&-")
    page = os.sysconf("SC_PAGE_SIZE")
    steps += [f"echo {spec.shm_max_bytes} > /proc/sys/kernel/shmmax",
              f"echo {max(1, spec.shm_max_bytes // page)} > /proc/sys/kernel/shmall"]
    if Path("/dev/mqueue").is_dir():  # else the machine has no mqueue mount a workspace could reach anyway
        steps.append("mount -n -t mqueue -o nosuid,nodev,noexec strongroom-mqueue /dev/mqueue")
    steps.append("mount -n -t proc -o nosuid,nodev,noexec,hidepid=invisible strongroom-proc /proc")
    return steps


def confine(spec: Spec, argv: list[str]) -> list[str]:
    """``argv`` under the workspace's own uid and gid, no supplementary group, no capability, no new privileges,
    with ``umask 077``, in an IPC namespace of its own (System V IPC, POSIX message queues) and a mount namespace
    of its own (``namespace_setup``: /tmp, /var/tmp, /dev/shm and /run/lock its own size-limited tmpfs, /run its
    own without the machine's sockets, the hub's state folders empty, all gone with it; its own processes alone in
    /proc)."""
    assert spec.uid is not None and spec.uid > 0
    dropped = ["setpriv", f"--reuid={spec.uid}", f"--regid={spec.uid}", "--clear-groups", "--inh-caps=-all",
               "--bounding-set=-all", "--no-new-privs", "--", *argv]
    script = " && ".join([*namespace_setup(spec), "umask 077", 'exec "$@"'])
    return ["unshare", "--ipc", "--mount", "--propagation", "slave", "--", "/bin/sh", "-c", script,
            "strongroom-workspace", *dropped]


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline and backslash as octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def file_system_type(path: Path) -> str:
    """The type of the file system ``path`` is on: the last mount (the one on top) of the deepest mount point
    above it, in /proc/self/mountinfo."""
    path = path.resolve()
    deepest, kind = -1, ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        point = Path(_unescape(before.split()[4]))
        if path.is_relative_to(point) and len(point.parts) >= deepest:
            deepest, kind = len(point.parts), after.split()[0]
    return kind


def mount_scratch(spec: Spec) -> bool:
    """Give the scratch (the workspace's HOME) a tmpfs of its own holding at most ``scratch_max_bytes`` when the
    scratches are on a tmpfs (the machine's /dev/shm: half its memory, everyone's), so filling it fills nothing
    else; True when mounted. Mounted by the hub, in its own mount namespace, before the workspace starts: the hub
    sees and wipes it, mounts the data inside it, and the workspace's namespace gets it bound like a plain folder.
    (A scratch on disk is limited by the site's file-system quotas; a hub that is not root cannot mount.)"""
    if not spec.scratch_max_bytes or os.geteuid() != 0 or file_system_type(spec.scratch) != "tmpfs":
        return False
    owner = spec.uid if spec.uid is not None else os.getuid()
    options = (f"nosuid,nodev,mode=0700,uid={owner},gid={owner},size={spec.scratch_max_bytes},"
               f"nr_inodes={max(1024, spec.scratch_max_bytes // 4096)}")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"strongroom-scratch-{spec.workspace_id}",
                           str(spec.scratch)], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise LaunchError(f"the scratch's own tmpfs could not be mounted: {(done.stderr or done.stdout).strip()}")
    return True


class LocalLauncher:
    """A JupyterLab process on the hub's machine, in its own process group (stopped as a whole)."""

    kind = "local"

    def start(self, spec: Spec, *, timeout: float) -> Handle:
        mount_scratch(spec)
        try:
            return self._start(spec, timeout=timeout)
        except BaseException:
            fuse.unmount(spec.scratch)  # what was mounted for it (its scratch's tmpfs, its data) goes with it
            raise

    def _start(self, spec: Spec, *, timeout: float) -> Handle:
        port = spec.port or _free_port(spec.listen_ip)
        argv = jupyter_argv(spec, spec.listen_ip, port)
        env = jupyter_env(spec)
        if spec.uid is not None:
            # never root inside the workspace (no CAP_NET_ADMIN to change its namespace's rules), and never an
            # identity another workspace has: its own uid, leased for it alone
            argv = confine(spec, argv)
            tmp = spec.scratch / ".tmp"
            tmp.mkdir(mode=0o700, exist_ok=True)
            os.chown(tmp, spec.uid, spec.uid)
            env |= {"TMPDIR": str(tmp), "USER": f"workspace-{spec.uid}", "LOGNAME": f"workspace-{spec.uid}"}
        elif spec.drop_caps:
            argv = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *argv,
                    "--allow-root"]
        if spec.netns:
            argv = ["ip", "netns", "exec", spec.netns, *argv]
        if spec.uid is not None and spec.limits.any:
            # outermost: the namespace's set-up, JupyterLab and whatever the notebook starts are all held to the limits
            try:
                group = workspace_limits.create(group_name(spec.uid), spec.limits)
            except workspace_limits.CgroupError as exc:
                raise LaunchError(f"{exc} (or set [workspaces] memory_max_bytes, pids_max and cpus_max to 0 to run "
                                  "workspaces without limits)") from None
            argv = workspace_limits.joining_argv(group, argv)
        if spec.mount_data:
            mount_data(spec, timeout=timeout)
        log = open(spec.scratch / ".jupyter.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(argv, env=env, cwd=spec.scratch, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        handle = Handle(host=spec.listen_ip, port=port, pid=proc.pid, scratch=str(spec.scratch), uid=spec.uid)
        try:
            wait_ready(spec.listen_ip, port, spec, timeout=timeout, alive=lambda: proc.poll() is None)
        except LaunchError as exc:
            tail = (spec.scratch / ".jupyter.log").read_text(errors="replace")[-400:]  # before its tmpfs goes
            self.stop(handle)
            raise LaunchError(f"{exc}; {tail}") from None
        return handle

    def stop(self, handle: Handle) -> None:
        if handle.scratch:
            fuse.unmount(Path(handle.scratch) / fuse.MOUNT_NAME)  # the FUSE daemon exits once its mount is gone
        if handle.pid is not None:
            self._end_group(handle)
        if handle.uid is not None:
            # what escaped the process group (setsid, a daemonised child) ends too, and nothing of this
            # workspace is left under its uid for the next workspace that leases it
            end_uid(handle.uid)
            workspace_limits.existing(group_name(handle.uid)).remove()
            remove_leftovers(handle.uid, keep_out=(str(Path(handle.scratch).resolve().parent),) if handle.scratch
                             else ())
        if handle.scratch:
            fuse.unmount(handle.scratch)  # its scratch's own tmpfs (lazily, should anything still hold it)

    def _end_group(self, handle: Handle) -> None:
        assert handle.pid is not None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(handle.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.alive(handle):
                time.sleep(0.1)
            if not self.alive(handle):
                break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(handle.pid, os.WNOHANG)  # reap it when this process started it

    def resources(self, handle: Handle) -> dict[str, str]:
        """What it uses on the hub's machine: CPUs it may run on, memory (its control group's, page cache and
        private tmpfs included, against its limit; else the process group's resident memory); no GPU."""
        if handle.pid is None:
            return {}
        rss, cpus = _group_usage(handle.pid)
        memory, cpus_shown = f"{_mib(rss)} in use", str(cpus or os.cpu_count() or 1)
        if handle.uid is not None:
            group = workspace_limits.existing(group_name(handle.uid))
            used, limit, kills = group.memory_in_use(), group.memory_limit(), group.out_of_memory_kills()
            if used is not None:
                memory = f"{_mib(used)} in use" + (f" of {_mib(limit)}" if limit else "")
            if kills:
                memory += f"; {kills} process(es) stopped at the limit"
            if (share := group.cpu_limit()) is not None:
                cpus_shown = f"{min(share, cpus or share):g}"
        return {"cpus": cpus_shown, "memory": memory, "gpus": "0"}

    def alive(self, handle: Handle) -> bool:
        if handle.pid is None:
            return False
        try:
            os.killpg(handle.pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie child of this process is not alive
            pid, _ = os.waitpid(handle.pid, os.WNOHANG)
            return pid == 0
        except ChildProcessError:
            return True


# -- where the hub reaches a Slurm job -------------------------------------------------------------------------
# The job runs as the member's cluster account, in a scratch that account owns: whatever the job writes there, the
# member can write too (before the job runs, or while it does). So the hub takes the node from Slurm, never from a
# file, and believes the job's port only where it cannot lead anywhere else (``SlurmLauncher._port``).
def dial_address(node_address: str, *, node: str, pinned: str, subnet: str) -> str:
    """The IP address the hub dials for a job Slurm runs on ``node`` (``node_address``: Slurm's NodeAddr for it).

    The operator's ``pinned`` address ([workspaces] slurm_host) when set: it may be loopback (the cluster's node is the
    hub's own machine, as on a test machine), never another internal address. Else the node's: any machine of its own
    (compute nodes are often on a private network) but never the hub's machine or its internals — loopback,
    link-local (the cloud's metadata service), unspecified, multicast, the workspaces' ``subnet``. Resolved once: the
    hub stores and dials the address, never the name again. A refusal names the node and the kind, never an address.
    """
    if pinned:
        found = _resolve(pinned)
        if not found:
            raise AddressRefused("[workspaces] slurm_host does not resolve")
        for address in found:
            if (why := internal_address(address, subnet)) not in (None, "loopback"):
                raise AddressRefused(f"[workspaces] slurm_host is {why}: only a loopback address or a node's")
        return _preferred(found)
    try:
        found = outside_addresses(node_address, 0, subnet)
    except NotOutside as exc:
        raise AddressRefused(f"the Slurm node {node} {exc}") from None
    if not found:
        raise AddressRefused(f"the Slurm node {node} does not resolve")
    return _preferred(found)


def _resolve(host: str) -> list[str]:
    try:
        found = socket.getaddrinfo(host.strip().strip("[]"), None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def _preferred(addresses: list[str]) -> str:
    """IPv4 first: the proxy writes the address into its URLs as it is."""
    return next((a for a in addresses if ":" not in a), addresses[0])


def on_this_machine(ip: str) -> bool:
    """Does this machine hold the unicast address ``ip`` (loopback, an interface's): may the hub bind it?"""
    if ipaddress.ip_address(ip).is_multicast:
        return False
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


_TCP_LISTEN = "0A"


def listener_uids(ip: str, port: int) -> set[int]:
    """The owners of the sockets a connection to ``ip``:``port`` on this machine (in the hub's network namespace)
    would reach, from the kernel's own tables (/proc/net/tcp, tcp6): those listening on ``ip`` itself, else those
    listening on every address. Empty: no one listens there."""
    wanted = ipaddress.ip_address(ip)
    exact: set[int] = set()
    wildcard: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
            if len(fields) < 8 or fields[3] != _TCP_LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            local = _kernel_address(address)
            if local == wanted:
                exact.add(int(fields[7]))
            elif local.is_unspecified and local.version in (wanted.version, 6):  # "::" takes IPv4 too
                wildcard.add(int(fields[7]))
    return exact or wildcard


def _kernel_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp* print it: 32-bit words in hex, each in the machine's byte order."""
    raw = bytes.fromhex(text)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _open_members_file(path: Path) -> int | None:
    """A file in the member's scratch opened to read it: only a regular file with one name (not a link, a FIFO that
    would block the hub, a device or another hard link to a file of someone else's), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
        return fd
    os.close(fd)
    return None


def read_port(path: Path) -> int | None:
    """The port a job wrote at ``path`` (the file's last word: anything else it says is ignored, the address is
    Slurm's), or None."""
    if (fd := _open_members_file(path)) is None:
        return None
    try:
        words = os.read(fd, 64).decode("ascii", "replace").split()
    except OSError:
        return None
    finally:
        os.close(fd)
    return whole_number_in(words[-1], 1, 65535) if words else None


def log_tail(path: Path, size: int = 1200) -> str:
    """The end of a log in the member's scratch (never read through a link the member put there)."""
    if (fd := _open_members_file(path)) is None:
        return ""
    try:
        os.lseek(fd, max(0, os.fstat(fd).st_size - size), os.SEEK_SET)
        return os.read(fd, size).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` afresh: never through a link or over what is already there (the folder is the member's)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, mode)
        out.write(text)


class SlurmLauncher:
    """A batch job running JupyterLab: in the booking's reservation (``--reservation=sr-<id>``) with its GPUs,
    or on free capacity. The hub dials the node Slurm runs it on (or the operator's ``slurm_host``), at the port
    the job writes into the scratch directory (shared with the hub), and probes it like a local one."""

    kind = "slurm"

    def __init__(self, *, sbatch: str = "sbatch", scancel: str = "scancel", squeue: str = "squeue",
                 scontrol: str = "scontrol", slurm_conf: Path | None = None) -> None:
        self.sbatch, self.scancel, self.squeue, self.scontrol = sbatch, scancel, squeue, scontrol
        self.slurm_conf = slurm_conf

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.slurm_conf:
            env["SLURM_CONF"] = str(self.slurm_conf)
        return env

    def script(self, spec: Spec) -> str:
        """The batch script. Secrets come from the job's exported environment, never from this text."""
        bind = spec.slurm_host or "0.0.0.0"
        argv = [a for a in jupyter_argv(spec, bind, 0) if not a.startswith("--port")]
        if spec.drop_caps:
            argv.append("--allow-root")
        python = shlex.quote(spec.python or sys.executable)
        free_port = f"import socket; s=socket.socket(); s.bind(('{bind}', 0)); print(s.getsockname()[1])"
        lines = ["#!/bin/sh", "set -eu"]
        if spec.mount_data:
            # the read-only strongroom:// mount, as the job's user (fusermount3); unmounted when the job ends
            mnt = shlex.quote(str(spec.scratch / fuse.MOUNT_NAME))
            daemon = shlex.join([spec.python or sys.executable, "-m", "strongroom.workspaces.fuse"])
            lines += [
                f"MNT={mnt}",
                'mkdir -p "$MNT"',
                f'{daemon} "$MNT" --uid "$(id -u)" --gid "$(id -g)" > .fuse.log 2>&1 &',
                "FUSE=$!",
                "N=0",
                'until mountpoint -q "$MNT"; do',
                '  kill -0 "$FUSE" 2>/dev/null || { echo "the data mount failed" >&2; cat .fuse.log >&2; exit 1; }',
                '  N=$((N + 1)); [ "$N" -lt 1200 ] || { echo "the data mount timed out" >&2; exit 1; }',
                "  sleep 0.05",
                "done",
                "trap 'fusermount3 -u -z \"$MNT\" 2>/dev/null || true' EXIT",
                "trap 'kill -TERM \"$LAB\" 2>/dev/null; exit 143' TERM INT"]
        # the port only: the hub takes the node from Slurm
        lines += [f"PORT=$({python} -c {shlex.quote(free_port)})",
                  f'echo "$PORT" > {shlex.quote(str(spec.scratch / ".where"))}']
        if spec.mount_data:
            lines += [f'{shlex.join(argv)} --port="$PORT" --port-retries=0 &', "LAB=$!", 'wait "$LAB"']
        else:
            lines.append(f'exec {shlex.join(argv)} --port="$PORT" --port-retries=0')
        return "\n".join([*lines, ""])

    def sbatch_args(self, spec: Spec) -> list[str]:
        args = [self.sbatch, "--parsable", f"--job-name=sr-ws-{spec.workspace_id[:8]}",
                f"--chdir={spec.scratch}", f"--output={spec.scratch / '.jupyter.log'}",
                "--export=" + ",".join(sorted(jupyter_env(spec)))]
        if spec.reservation:
            args.append(f"--reservation={spec.reservation}")
        if spec.gpus:
            args.append(f"--gres=gpu:{spec.gpus}")
            if spec.license:
                args.append(f"--licenses={spec.license}:{spec.gpus}")
        if spec.partition:
            args.append(f"--partition={spec.partition}")
        return args

    @staticmethod
    def submit_as(account: str) -> list[str]:
        """The sbatch options that run the job as the member's cluster account: ``--uid``/``--gid`` (root only:
        the hub submits as root, Slurm runs the job as the account, with its primary group)."""
        if not account:
            return []
        import grp
        import pwd

        try:
            entry = pwd.getpwnam(account)
        except KeyError:
            raise LaunchError(f"the cluster account {account!r} is unknown on the hub's machine (its user "
                              "directory must list the cluster's accounts)") from None
        if os.geteuid() == entry.pw_uid:
            return []
        if os.geteuid() != 0:
            raise LaunchError(f"the hub does not run as root: it cannot submit as the cluster account {account!r}")
        return [f"--uid={entry.pw_uid}", f"--gid={grp.getgrgid(entry.pw_gid).gr_name}"]

    def start(self, spec: Spec, *, timeout: float) -> Handle:
        script = spec.scratch / ".job.sh"
        _write_new(script, self.script(spec), 0o644)
        env = {**self._env(), **jupyter_env(spec)}
        args = self.sbatch_args(spec)
        done = subprocess.run([*args[:1], *self.submit_as(spec.cluster_account), *args[1:], str(script)],
                              capture_output=True, text=True, env=env, timeout=60, check=False)
        if done.returncode != 0:
            raise LaunchError(f"sbatch: {(done.stderr or done.stdout).strip()}")
        handle = Handle(host="", port=0, job_id=done.stdout.strip().split(";")[0], scratch=str(spec.scratch))
        deadline = time.monotonic() + timeout
        try:
            node, uid = self._running(handle, deadline, timeout)
            handle.host = dial_address("" if spec.slurm_host else self._node_address(node), node=node,
                                       pinned=spec.slurm_host, subnet=spec.subnet)
            handle.port = self._port(spec, handle, uid, deadline)
            wait_ready(handle.host, handle.port, spec, timeout=max(5.0, deadline - time.monotonic()),
                       alive=lambda: self.alive(handle))
        except AddressRefused as refused:
            self.stop(handle)
            raise AddressRefused(str(refused), job_id=handle.job_id) from None
        except LaunchError as exc:
            self.stop(handle)
            raise LaunchError(f"{exc}; {log_tail(spec.scratch / '.jupyter.log')}") from None
        return handle

    def _running(self, handle: Handle, deadline: float, timeout: float) -> tuple[str, int]:
        """Wait until Slurm runs the job; then, as Slurm says: the node that runs its script (JupyterLab) and the
        uid it runs as."""
        while True:
            done = subprocess.run([self.squeue, "-h", "-j", handle.job_id, "-o", "%T|%B|%U"], capture_output=True,
                                  text=True, env=self._env(), timeout=60, check=False)
            state, _, rest = done.stdout.strip().partition("|")
            node, _, uid = rest.partition("|")
            if done.returncode == 0 and state == "RUNNING" and node and uid.isdigit():
                return node, int(uid)
            if done.returncode != 0 or state not in ("PENDING", "CONFIGURING", "RUNNING"):
                raise LaunchError(f"Slurm job {handle.job_id} ended before JupyterLab listened")
            if time.monotonic() > deadline:
                raise LaunchError(f"Slurm job {handle.job_id} did not start within {timeout:g} s (queued?)")
            time.sleep(0.5)

    def _node_address(self, node: str) -> str:
        """Where Slurm itself reaches ``node``: its NodeAddr (the name when Slurm has none)."""
        done = subprocess.run([self.scontrol, "-o", "show", "node", node], capture_output=True, text=True,
                              env=self._env(), timeout=60, check=False)
        found = re.search(r"(?:^|\s)NodeAddr=(\S+)", done.stdout) if done.returncode == 0 else None
        return found.group(1) if found else node

    def _port(self, spec: Spec, handle: Handle, uid: int, deadline: float) -> int:
        """The port the job wrote at ``.where``, read once Slurm runs the job. The member can write that file too,
        so the port is believed only where it leads to nothing but the member's own: on a node of its own it is
        one of that node's ports (the member's job reaches them all anyway); at an address of this machine it must
        be a socket the job's account listens on, as the kernel says — never the hub's or anyone else's."""
        where = spec.scratch / ".where"
        here = on_this_machine(handle.host)
        while time.monotonic() < deadline:
            port = read_port(where)
            if port is not None and (not here or listener_uids(handle.host, port) == {uid}):
                return port
            if not self.alive(handle):
                raise LaunchError(f"Slurm job {handle.job_id} ended before JupyterLab listened")
            time.sleep(0.2)
        raise LaunchError(f"Slurm job {handle.job_id} started, but JupyterLab did not listen in time")

    def stop(self, handle: Handle) -> None:
        if handle.job_id:
            subprocess.run([self.scancel, handle.job_id], capture_output=True, env=self._env(), timeout=60,
                           check=False)
        if handle.scratch:
            fuse.unmount(handle.scratch)  # when the node's mount is visible here (the job's trap unmounts too)

    def resources(self, handle: Handle) -> dict[str, str]:
        """What Slurm allocated to the job: CPUs, memory, GPUs (its GRES or the reservation's licence)."""
        if not handle.job_id:
            return {}
        done = subprocess.run([self.squeue, "-h", "-j", handle.job_id, "-o", "%C|%m|%b|%W|%N"], capture_output=True,
                              text=True, env=self._env(), timeout=60, check=False)
        parts = done.stdout.strip().split("|")
        if done.returncode != 0 or len(parts) != 5:
            return {}
        cpus, memory, gres, licenses, node = parts
        gpus = next((g.rsplit(":", 1)[-1] for g in gres.split(",") if "gpu" in g), "0")
        out = {"cpus": cpus, "memory": memory if memory not in ("0", "") else "node's", "gpus": gpus}
        if node:
            out["node"] = node
        if licenses not in ("", "(null)"):
            out["licenses"] = licenses
        return out

    def alive(self, handle: Handle) -> bool:
        if not handle.job_id:
            return False
        done = subprocess.run([self.squeue, "-h", "-j", handle.job_id, "-o", "%T"], capture_output=True, text=True,
                              env=self._env(), timeout=60, check=False)
        return done.returncode == 0 and done.stdout.strip() in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
