"""A workspace's control group holds it to its limits on the machine's real cgroups: memory (the kernel kills
inside the group, nothing outside it), processes (a fork bomb stops at the ceiling), and removing the group ends
whatever was left in it. The launcher's use of it is tested with real JupyterLab in test_workspace_isolation."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from strongroom.workspaces import limits

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="control groups need a hub running as root")


@pytest.fixture
def group_name() -> str:
    return f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _run(group: limits.Group, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(limits.joining_argv(group, list(argv)), capture_output=True, text=True, timeout=120,
                          check=False)


def test_memory_beyond_the_limit_is_killed_inside_the_group_only(group_name: str) -> None:
    group = limits.create(group_name, limits.Limits(memory_bytes=64 * 2**20))
    try:
        hog = _run(group, sys.executable, "-c", "a = bytearray(256 << 20); print('allocated', len(a))")
        assert hog.returncode in (-9, 137), (hog.returncode, hog.stdout, hog.stderr)
        assert "allocated" not in hog.stdout
        assert group.out_of_memory_kills() >= 1
        modest = _run(group, sys.executable, "-c", "a = bytearray(16 << 20); print('allocated', len(a))")
        assert modest.returncode == 0 and "allocated 16777216" in modest.stdout, modest.stderr
        # this process (the hub's stand-in) stayed where it was, unlimited
        assert os.getpid() not in group.pids()
    finally:
        assert group.remove()


FORKS = """
import os, time
forked = refused = 0
for _ in range(60):
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        os.close(1)  # (so the parent's reader is not kept waiting)
        os.close(2)
        time.sleep(60)
        os._exit(0)
    forked += 1
print("forked", forked, "refused", refused)
"""


def test_a_fork_bomb_stops_at_the_process_ceiling(group_name: str) -> None:
    group = limits.create(group_name, limits.Limits(pids=16))
    try:
        bomb = _run(group, sys.executable, "-c", FORKS)
        forked, refused = (int(n) for n in bomb.stdout.split()[1::2])
        assert forked <= 15 and refused >= 45, bomb.stdout  # 60 asked for: the group holds 16 processes at most
        assert len(group.pids()) <= 16
    finally:
        assert group.remove()  # the children left behind end with it
    assert not any(d.exists() for d in group.dirs)


def test_removing_a_group_ends_what_is_left_in_it(group_name: str) -> None:
    group = limits.create(group_name, limits.Limits(memory_bytes=2**30, pids=64, cpus=0.5))
    daemon = subprocess.Popen(limits.joining_argv(group, ["/bin/sh", "-c", "sleep 600 & sleep 600 & wait"]),
                              start_new_session=True)
    try:
        inside: set[int] = set()
        for _ in range(600):
            inside = group.pids()
            if len(inside) >= 3:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert len(inside) >= 3, inside  # the shell and its two sleeps, all in the group
        assert group.remove(), group.pids()
        assert daemon.wait(timeout=30) != 0
        for pid in inside:
            stat = Path(f"/proc/{pid}/stat")
            assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", pid
    finally:
        if daemon.poll() is None:
            daemon.kill()


def test_the_limits_are_where_the_kernel_reads_them(group_name: str) -> None:
    group = limits.create(group_name, limits.Limits(memory_bytes=512 * 2**20, pids=100, cpus=1.5))
    try:
        files = {p.name: p.read_text().strip() for d in group.dirs for p in d.iterdir()
                 if p.name in ("memory.limit_in_bytes", "memory.max", "pids.max", "cpu.cfs_quota_us", "cpu.max")}
        memory = files.get("memory.limit_in_bytes") or files["memory.max"]
        assert int(memory) == 512 * 2**20
        assert files["pids.max"] == "100"
        assert files.get("cpu.cfs_quota_us") == "150000" or files.get("cpu.max") == "150000 100000"
        # below this process's own group (v1), so the machine's limits on the hub bind its workspaces too
        own = limits.own_groups(Path("/proc/self/cgroup").read_text())
        if not group.unified:
            memory_dir = next(d for d in group.dirs if (d / "memory.limit_in_bytes").exists())
            assert str(memory_dir).startswith(str(limits.ROOT / "memory" / own["memory"].lstrip("/")))
    finally:
        assert group.remove()


def test_own_groups_reads_both_layouts() -> None:
    v1 = "12:pids:/a\n4:memory:/process_api/x\n3:cpu,cpuacct:/c\n1:name=systemd:/s\n0::/"
    assert limits.own_groups(v1) == {"pids": "/a", "memory": "/process_api/x", "cpu": "/c", "cpuacct": "/c",
                                     "systemd": "/s", "": "/"}
    assert limits.own_groups("0::/system.slice/strongroom.service\n") == {"": "/system.slice/strongroom.service"}


@pytest.mark.parametrize("name", ["", "..", "a/b", "x" * 65, "ws 1"])
def test_a_group_name_is_one_plain_word(name: str) -> None:
    with pytest.raises(ValueError, match="not a control group name"):
        limits.create(name, limits.Limits(pids=10))
