"""The scheduler behind the calendar: a small `Scheduler` protocol and its Slurm adapter (``scontrol``).

Each booking is one reservation named ``sr-<booking id>`` from its start to its end for the cluster accounts of
the project's members (``Users=``: POSIX user names only, checked here before scontrol sees them). How the GPUs
are held depends on the Slurm version: Slurm 22.05 (Debian 12's slurm-wlm) cannot put GRES into a reservation
(``TRES`` there takes CPU, Node, License and BB only), so a machine with ``slurm_license`` holds them as a
cluster licence counting its GPUs (``Licenses=dgx2_gpu:16`` in slurm.conf, ``Licenses=dgx2_gpu:N
Flags=LICENSE_ONLY``; jobs ask ``-L dgx2_gpu:N --gres=gpu:N``); otherwise the reservation asks
``TRES=gres/gpu=N`` on the machine's nodes (Slurm ≥ 23.02). Pure: no database or web imports.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PREFIX = "sr-"  # reservations this hub owns; others on the cluster are never touched

# A cluster account as Slurm is given one: a POSIX user name (the strict rule of shadow's useradd and systemd).
# Nothing else reaches scontrol: "alice,root" would add root to Users=, "-alice" means everyone but alice.
ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def is_account(name: str) -> bool:
    return ACCOUNT.fullmatch(name) is not None


class SchedulerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Reservation:
    name: str
    start: dt.datetime  # aware UTC
    end: dt.datetime
    users: tuple[str, ...]
    gpus: int
    machine: str


class Scheduler(Protocol):
    configured: bool

    def create(self, r: Reservation) -> None: ...
    def update(self, r: Reservation) -> None: ...
    def delete(self, name: str) -> None: ...
    def list(self) -> list[Reservation]: ...


class NoScheduler:
    """No scheduler configured: bookings live on the hub only."""

    configured = False

    def create(self, r: Reservation) -> None:
        raise SchedulerError("no scheduler configured")

    update = create

    def delete(self, name: str) -> None:
        raise SchedulerError("no scheduler configured")

    def list(self) -> list[Reservation]:
        return []


@dataclass(frozen=True)
class SlurmMachine:
    name: str
    nodes: str  # Slurm node list
    license: str  # "": ask TRES=gres/gpu


def _stamp(value: dt.datetime) -> str:
    """Slurm reads times in the controller's local zone: we hand it UTC explicitly converted to that zone."""
    return value.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


class SlurmScheduler:
    configured = True

    def __init__(self, machines: dict[str, SlurmMachine], *, scontrol: str = "scontrol",
                 slurm_conf: Path | None = None, timeout: float = 30.0) -> None:
        self.machines, self.scontrol, self.slurm_conf, self.timeout = machines, scontrol, slurm_conf, timeout

    # -- command construction (tested on its own) ----------------------------------------------------
    def resources(self, r: Reservation) -> list[str]:
        m = self.machines.get(r.machine)
        if m is None:
            raise SchedulerError(f"machine {r.machine!r} is not in the Slurm configuration")
        if m.license:
            return [f"Licenses={m.license}:{r.gpus}", "Flags=LICENSE_ONLY"]
        return [f"Nodes={m.nodes}", f"TRES=gres/gpu={r.gpus}"]

    @staticmethod
    def users(r: Reservation) -> str:
        """``Users=``'s value: every name a POSIX user name, else nothing is run (the hub's mapping refuses other
        names; this holds should one reach here anyway)."""
        if not r.users:
            raise SchedulerError("a reservation needs at least one user known to the cluster")
        if bad := [u for u in r.users if not is_account(u)]:
            raise SchedulerError(f"not a cluster account (a POSIX user name): {', '.join(map(repr, bad))}")
        return "Users=" + ",".join(r.users)

    def create_args(self, r: Reservation) -> list[str]:
        return ["create", "reservation", f"ReservationName={r.name}", f"StartTime={_stamp(r.start)}",
                f"EndTime={_stamp(r.end)}", self.users(r), *self.resources(r)]

    def update_args(self, r: Reservation, *, move_start: bool = True) -> list[str]:
        """``move_start=False`` for a reservation already running (Slurm keeps its start)."""
        args = ["update", f"ReservationName={r.name}"]
        if move_start:
            args.append(f"StartTime={_stamp(r.start)}")
        args += [f"EndTime={_stamp(r.end)}", self.users(r)]
        return args + [a for a in self.resources(r) if not a.startswith("Flags=")]  # flags are fixed at creation

    # -- running --------------------------------------------------------------------------------------
    def _run(self, args: list[str]) -> str:
        env = dict(os.environ)
        if self.slurm_conf:
            env["SLURM_CONF"] = str(self.slurm_conf)
        try:
            done = subprocess.run([self.scontrol, *args], capture_output=True, text=True, timeout=self.timeout,
                                  env=env, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SchedulerError(f"scontrol {args[0]}: {exc}") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise SchedulerError(f"scontrol {shlex.join(args[:3])}: {said[-1] if said else done.returncode}")
        return done.stdout

    def create(self, r: Reservation) -> None:
        self._run(self.create_args(r))

    def update(self, r: Reservation) -> None:
        self._run(self.update_args(r, move_start=r.start > dt.datetime.now(dt.UTC)))

    def delete(self, name: str) -> None:
        self._run(["delete", f"ReservationName={name}"])

    def list(self) -> list[Reservation]:
        out = self._run(["-o", "show", "reservation"])
        return [r for line in out.splitlines() if (r := self.parse(line)) is not None]

    def parse(self, line: str) -> Reservation | None:
        """One line of ``scontrol -o show reservation``; None for reservations this hub does not own."""
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        name = fields.get("ReservationName", "")
        if not name.startswith(PREFIX):
            return None
        machine, gpus = "", 0
        for m in self.machines.values():
            if m.license:
                found = re.search(rf"(?:^|,){re.escape(m.license)}[:*=](\d+)", fields.get("Licenses", ""))
                if found:
                    machine, gpus = m.name, int(found.group(1))
            elif fields.get("Nodes") == m.nodes:
                found = re.search(r"gres/gpu[:=](\d+)", fields.get("TRES", ""))
                machine, gpus = m.name, int(found.group(1)) if found else 0
        users = tuple(u for u in fields.get("Users", "").split(",") if u and u != "(null)")
        return Reservation(name=name, start=_read_time(fields["StartTime"]), end=_read_time(fields["EndTime"]),
                           users=users, gpus=gpus, machine=machine)


def _read_time(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").astimezone().astimezone(dt.UTC)
