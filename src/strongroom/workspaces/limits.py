"""Per-workspace resource limits: each local workspace in a control group of its own, with a ceiling on its
memory (swap included), its processes and, when set, its CPUs — so a notebook that allocates without end or forks
without end is stopped inside its own group (the kernel's OOM killer there, "cannot fork" there), never the hub's
machine and the other projects' workspaces on it.

Both cgroup layouts are handled: v1 (one hierarchy per controller: ``memory``, ``pids``, ``cpu``) and v2 (one
unified hierarchy). The groups are made *below the hub's own* (v1), or beside it (v2, whose groups holding processes
may not have children with controllers), under ``strongroom-workspaces/``, so whatever limits the machine or
container puts on the hub still bind its workspaces too. A process joins its group before it runs anything of the
workspace (``joining_argv``), and every process it starts stays in it.

No web or database imports: the launcher calls it, and the tests run it against the machine's real cgroups."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PARENT = "strongroom-workspaces"
CPU_PERIOD_US = 100_000


class CgroupError(Exception):
    """The machine gives this process no control groups it can make (not root, or no writable cgroup fs)."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 0  # 0: none
    pids: int = 0  # 0: none
    cpus: float = 0.0  # 0: none (the group still gets its fair share of the CPUs beside the others)

    @property
    def any(self) -> bool:
        return bool(self.memory_bytes or self.pids or self.cpus)


@dataclass(frozen=True)
class Group:
    """One workspace's control group: its directory in each hierarchy it was made in."""

    dirs: tuple[Path, ...]
    unified: bool

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for f in self.procs_files:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in f.read_text().split()}
        return found

    def memory_in_use(self) -> int | None:
        """Bytes its processes use now (page cache included, as the limit counts it); None if not measured."""
        for d in self.dirs:
            for name in ("memory.current", "memory.usage_in_bytes"):
                with contextlib.suppress(OSError, ValueError):
                    return int((d / name).read_text())
        return None

    def memory_limit(self) -> int | None:
        """The group's memory ceiling in bytes; None when it has none."""
        for d in self.dirs:
            for name in ("memory.max", "memory.limit_in_bytes"):
                with contextlib.suppress(OSError, ValueError):
                    value = int((d / name).read_text())
                    return value if value < 2**62 else None  # v1 says "no limit" with a huge number
        return None

    def cpu_limit(self) -> float | None:
        """How many CPUs' worth of time the group may use; None when unlimited."""
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                if self.unified:
                    quota, period = (d / "cpu.max").read_text().split()
                else:
                    quota = (d / "cpu.cfs_quota_us").read_text().strip()
                    period = (d / "cpu.cfs_period_us").read_text().strip()
                return None if quota in ("max", "-1") else int(quota) / int(period)
        return None

    def out_of_memory_kills(self) -> int:
        """How many times the kernel killed a process of the group for its memory limit (0 where not counted)."""
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                if self.unified:
                    events = dict(line.split() for line in (d / "memory.events").read_text().splitlines())
                    return int(events.get("oom_kill", 0))
                control = dict(line.split() for line in (d / "memory.oom_control").read_text().splitlines())
                return int(control.get("oom_kill", 0))
        return 0

    def remove(self, *, timeout: float = 10.0) -> bool:
        """End every process still in the group, then remove it; False when some directory stayed."""
        for d in self.dirs:
            with contextlib.suppress(OSError):
                (d / "cgroup.kill").write_text("1")  # v2 (Linux 5.14+): the whole group at once
        deadline = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        removed = True
        for d in self.dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed


def unified(root: Path = ROOT) -> bool:
    """Whether the machine mounts cgroup v2 at ``root`` (one hierarchy, ``cgroup.controllers`` at its top)."""
    return (root / "cgroup.controllers").is_file()


def own_groups(text: str) -> dict[str, str]:
    """The groups a process is in, from its ``/proc/<pid>/cgroup``: controller → path (v2's under ``""``)."""
    groups: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            groups[controller.removeprefix("name=")] = path
    return groups


def _name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name in (".", ".."):
        raise ValueError(f"not a control group name: {name!r}")
    return name


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(f"cannot set {path}: {exc.strerror or exc}") from None


def create(name: str, limits: Limits, *, root: Path = ROOT, self_cgroup: str | None = None) -> Group:
    """Make (or take again, after a crash) the group ``name`` with ``limits``. ``self_cgroup``: the text of this
    process's ``/proc/self/cgroup`` (read when not given)."""
    name = _name(name)
    mine = own_groups(Path("/proc/self/cgroup").read_text() if self_cgroup is None else self_cgroup)
    try:
        if unified(root):
            return _create_v2(root, name, limits, mine.get("", "/"))
        return _create_v1(root, name, limits, mine)
    except PermissionError as exc:
        raise CgroupError(f"no control group can be made here ({exc.strerror}): the hub must run as root with "
                          "a writable cgroup file system") from None


def existing(name: str, *, root: Path = ROOT, self_cgroup: str | None = None) -> Group:
    """The group ``name`` as ``create`` made it (by this or an earlier hub process), in every hierarchy where its
    directory is; an empty group when there is none."""
    name = _name(name)
    mine = own_groups(Path("/proc/self/cgroup").read_text() if self_cgroup is None else self_cgroup)
    if unified(root):
        own = mine.get("", "/")
        base = root / str(Path(own).parent).lstrip("/") if own not in ("", "/") else root
        candidates = [base / PARENT / name]
    else:
        candidates = [root / m / mine.get(c, "/").lstrip("/") / PARENT / name
                      for c, m in (("memory", "memory"), ("pids", "pids"), ("cpu", "cpu"), ("cpu", "cpu,cpuacct"))]
    return Group(tuple(d for d in dict.fromkeys(candidates) if d.is_dir()), unified=unified(root))


def _create_v1(root: Path, name: str, limits: Limits, mine: dict[str, str]) -> Group:
    wanted = [c for c, on in (("memory", limits.memory_bytes), ("pids", limits.pids), ("cpu", limits.cpus)) if on]
    dirs: list[Path] = []
    for controller in wanted:
        hierarchy = next((root / m for m in (controller, "cpu,cpuacct" if controller == "cpu" else controller)
                          if (root / m / "cgroup.procs").is_file()), None)
        if hierarchy is None:
            raise CgroupError(f"the machine has no cgroup v1 '{controller}' hierarchy under {root}")
        d = hierarchy / mine.get(controller, "/").lstrip("/") / PARENT / name
        d.mkdir(parents=True, exist_ok=True)
        dirs.append(d)
        if controller == "memory":
            _write(d / "memory.limit_in_bytes", str(limits.memory_bytes))
            if (d / "memory.memsw.limit_in_bytes").exists():  # swap counted too: no escape into swap
                _write(d / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        elif controller == "pids":
            _write(d / "pids.max", str(limits.pids))
        else:
            _write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(d / "cpu.cfs_quota_us", str(max(1000, int(limits.cpus * CPU_PERIOD_US))))
    return Group(tuple(dirs), unified=False)


def _create_v2(root: Path, name: str, limits: Limits, own: str) -> Group:
    # v2 lets only a group without processes of its own hand controllers to children, so the workspaces' parent
    # sits beside the hub's group (or at the top when the hub is there)
    base = root / str(Path(own).parent).lstrip("/") if own not in ("", "/") else root
    parent = base / PARENT
    parent.mkdir(exist_ok=True)
    wanted = [c for c, on in (("memory", limits.memory_bytes), ("pids", limits.pids), ("cpu", limits.cpus)) if on]
    if wanted:
        available = set((base / "cgroup.controllers").read_text().split())
        missing = [c for c in wanted if c not in available]
        if missing:
            raise CgroupError(f"the cgroup v2 controllers {', '.join(missing)} are not delegated to {base}")
        _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
    d = parent / name
    d.mkdir(exist_ok=True)
    if limits.memory_bytes:
        _write(d / "memory.max", str(limits.memory_bytes))
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0")
    if limits.pids:
        _write(d / "pids.max", str(limits.pids))
    if limits.cpus:
        _write(d / "cpu.max", f"{max(1000, int(limits.cpus * CPU_PERIOD_US))} {CPU_PERIOD_US}")
    return Group((d,), unified=True)


def joining_argv(group: Group, argv: list[str]) -> list[str]:
    """``argv`` run by a shell that first moves itself into ``group`` (every hierarchy), then becomes ``argv``:
    nothing of the workspace runs, not even its namespace set-up, outside its limits."""
    moves = " && ".join(f"echo $$ > {shlex.quote(str(f))}" for f in group.procs_files)
    return ["/bin/sh", "-c", f'{moves} && exec "$@"', "strongroom-workspace", *argv] if moves else argv
