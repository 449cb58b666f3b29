"""Workspaces keep out of each other on the hub's machine: each local workspace runs under a uid (and gid) of its
own, leased from ``[workspaces] uid_range`` at start and released at stop, never held by two live workspaces.

Through the real launcher (JupyterLab in its network namespace, the read-only data mount, the hub's proxy): two
members of two projects get two uids; code in workspace A's kernel cannot read B's scratch, list B's data mount,
read B's ``/proc/<pid>/environ`` (its Jupyter and hub tokens) or signal B's processes — and still reads its own.
What A leaves behind (a process that left its process group, files in the shared /dev/shm) is gone at its stop.
Concurrent starts never lease one uid twice (the partial unique index decides), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from imaging_support import make_project
from strongroom.config import Settings
from strongroom.db import transaction
from strongroom.projects import service as projects
from strongroom.workspaces import fuse, launcher, service
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
def settings(database_url: str, tmp_path: Path, hub_sock: socket.socket, scratch_dir: Path,  # noqa: F811
             shared_python: Path) -> Settings:  # noqa: F811
    """The defaults that matter here: no ``run_as`` (a uid per workspace), the data mount on; an interpreter
    every uid may run (this machine's lives under /root, 0700)."""
    port = hub_sock.getsockname()[1]
    return Settings(var_dir=tmp_path / "var", database_url=database_url, secret_key="test-secret-" + "x" * 32,
                    log_json=True, jobs={"embedded": False}, base_url=f"http://127.0.0.1:{port}", port=port,
                    security={"cookie_secure": False},
                    workspaces={"scratch_dir": str(scratch_dir), "subnet": SUBNET, "python": str(shared_python),
                                "isolation": "namespace" if NO_NETNS is None else "none",
                                "allow_unisolated": NO_NETNS is not None, "start_timeout_seconds": 120,
                                "uid_range": UID_RANGE})


# each pytest-xdist worker's hub its own uids (hubs sharing a machine need disjoint ranges: see docs)
UID_RANGE = (2_000_000 + 10_000 * WORKER, 2_009_999 + 10_000 * WORKER)


def _uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


# Run in workspace A's kernel: what it may reach of B's (paths and pid filled in) and of its own.
PROBE = """
import errno, json, os, signal
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
home = os.path.expanduser("~")
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "home": home,
    "b_scratch": attempt(lambda: os.listdir(B_SCRATCH)),
    "b_file": attempt(lambda: open(os.path.join(B_SCRATCH, "results.csv")).read()),
    "b_data": attempt(lambda: os.listdir(os.path.join(B_SCRATCH, "data"))),
    "b_environ": attempt(lambda: open(f"/proc/{B_PID}/environ", "rb").read()),
    "b_signal": attempt(lambda: os.kill(B_PID, 0)),
    "own_file": open(os.path.join(home, "mine.txt")).read(),
    "own_data": sorted(os.listdir(os.path.join(home, "data"))),
    "own_data_mode": oct(os.stat(os.path.join(home, "data")).st_mode & 0o777),
    "own_data_uid": os.stat(os.path.join(home, "data")).st_uid,
    "own_environ": b"STRONGROOM_TOKEN=" in open("/proc/self/environ", "rb").read(),
    "tmpdir": os.environ.get("TMPDIR", ""), "umask": oct(os.umask(0o077)),
    "host_tmp": os.path.exists(HOST_TMP), "tmp_empty": os.listdir("/tmp") == [],
}))
"""

# Run in workspace A's kernel: leave a process outside Jupyter's process group and a file in the shared /dev/shm.
LEAVE_BEHIND = """
import os, subprocess
p = subprocess.Popen(["sleep", "600"], start_new_session=True)
open(LEFTOVER, "w").write("left behind")
print(p.pid, os.getpgid(p.pid) != os.getpgid(0))
"""


def test_each_workspace_runs_under_its_own_uid(hub, people, live: str) -> None:  # noqa: F811
    people("alice")
    people("bob")
    make_project(hub, "lung", pi="alice")
    make_project(hub, "heart", pi="bob")
    carol, carol_cookie = _member_session(hub, people, "carol", "lung")
    dave, _ = _member_session(hub, people, "dave", "heart")
    leftover = Path("/dev/shm") / f"srtest-leftover-{uuid.uuid4().hex[:8]}"
    host_tmp = Path("/tmp") / f"srtest-host-{uuid.uuid4().hex[:8]}"
    host_tmp.write_text("the machine's /tmp")
    started: list[Workspace] = []
    sleepers: list[int] = []
    try:
        started.append(_start(hub, carol, "lung"))
        started.append(_start(hub, dave, "heart"))
        _check_isolation(hub, live, carol_cookie, *started, leftover=leftover, host_tmp=host_tmp, sleepers=sleepers)
    finally:
        for ws in started:  # idempotent: a failed assertion must not leave a workspace running
            _stop(hub, ws)
        host_tmp.unlink()
        leftover.unlink(missing_ok=True)
        for pid in sleepers:  # left running only where the stop does not end the uid's processes (old code)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _check_isolation(hub, live: str, carol_cookie: str, a: Workspace, b: Workspace, *, leftover: Path,  # noqa: F811
                     host_tmp: Path, sleepers: list[int]) -> None:
    assert a.state == b.state == RUNNING and a.pid and b.pid
    a_scratch, b_scratch = Path(a.scratch), Path(b.scratch)
    # what B's notebook left in its scratch, as readable as a file can be: only the folder keeps others out
    (b_scratch / "results.csv").write_text("patient,finding\nPSN-1,nodule\n")
    (b_scratch / "results.csv").chmod(0o644)
    (a_scratch / "mine.txt").write_text("my own result")
    (a_scratch / "mine.txt").chmod(0o644)
    if NO_NETNS is None:  # B's Jupyter really holds the tokens A must not read
        assert b"STRONGROOM_TOKEN=" in Path(f"/proc/{b.pid}/environ").read_bytes()
    kernel = Kernel(live, service.base_path("lung", a.id), carol_cookie)
    try:
        _, printed = kernel.run(f"B_SCRATCH = {str(b_scratch)!r}\nB_PID = {b.pid}\nHOST_TMP = {str(host_tmp)!r}\n"
                                + PROBE)
        seen = json.loads(printed)
        _, printed = kernel.run(f"LEFTOVER = {str(leftover)!r}\n" + LEAVE_BEHIND)
        pid, escaped = printed.split()
        sleepers.append(int(pid))
        assert escaped == "True", printed
    finally:
        kernel.close()
    # as A: B's scratch, its results, its data mount, its tokens, its processes — all refused
    assert {k: seen[k] for k in ("b_scratch", "b_file", "b_data", "b_environ", "b_signal")} == {
        "b_scratch": "EACCES", "b_file": "EACCES", "b_data": "EACCES", "b_environ": "EACCES",
        "b_signal": "EPERM"}, seen
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
    # /tmp (and /var/tmp) of its own: empty tmpfs, not the machine's — unless the hub's interpreter or sources
    # live under /tmp (a checkout tested there), which a tmpfs would hide: then the machine's (``launcher.confine``)
    import sys

    hub_under_tmp = any(str(p).startswith("/tmp/") for p in (
        Path(sys.prefix).resolve(), Path(launcher.__file__).resolve().parents[2]))
    assert (seen["host_tmp"], seen["tmp_empty"]) == ((False, True) if not hub_under_tmp else (True, False)), seen
    # the hub leased them and recorded them; the scratches and mounts are theirs, 0700
    lo, hi = hub.settings.workspaces.uid_range
    assert (a.uid, b.uid) == (uid_a, uid_b) and lo <= a.uid <= hi and lo <= b.uid <= hi
    for ws in (a, b):
        info = Path(ws.scratch).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (ws.uid, ws.uid, 0o700)
        assert fuse.mounted(Path(ws.scratch) / fuse.MOUNT_NAME)
    # the same, from outside any workspace: a process as A's uid (setpriv) reads nothing of B's
    for argv in (["ls", str(b_scratch)], ["cat", str(b_scratch / "results.csv")],
                 ["ls", str(b_scratch / "data")], ["cat", f"/proc/{b.pid}/environ"]):
        done = _as_uid(uid_a, argv)
        assert done.returncode != 0 and "Permission denied" in done.stderr, (argv, done)
    assert _as_uid(uid_a, ["cat", str(a_scratch / "mine.txt")]).stdout == "my own result"
    assert leftover.exists() and leftover.stat().st_uid == uid_a
    assert sleepers[0] in launcher.processes_of(uid_a)
    _stop(hub, a)
    # A's stop ended every process of its uid (the escaped one too) and removed its files in /dev/shm
    assert launcher.processes_of(uid_a) == [] and not leftover.exists()
    assert not Path(a.scratch).exists()
    with hub.sessions() as s:
        # B runs on, under its uid; A's row keeps its uid as history, no longer live
        row_a, row_b = s.get(Workspace, a.id), s.get(Workspace, b.id)
        assert (row_a.state, row_a.uid) == (STOPPED, uid_a) and (row_b.state, row_b.uid) == (RUNNING, uid_b)
    assert launcher.processes_of(uid_b)
    _stop(hub, b)
    assert launcher.processes_of(uid_b) == []


def _as_uid(uid: int, argv: list[str]):
    import subprocess

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
