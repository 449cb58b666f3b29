"""Where the hub dials a Slurm workspace comes from Slurm, not from a file the member can write.

The job's scratch belongs to the member's cluster account, so the member may write ``.where`` (the job's port) before
the job runs, naming a service of the hub's own machine. The hub takes the node from Slurm and refuses one that is
the hub's machine or its internals unless the operator pinned it (``[workspaces] slurm_host``); on the hub's own
machine it dials only a port the job's account itself listens on. Real Slurm, real JupyterLab, a real loopback
service standing for the hub's own (it records every request that reaches it).
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from imaging_support import make_project
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.workspaces import launcher, service
from strongroom.workspaces.models import Workspace
from support.slurm import slurm  # noqa: F401  (the session fixture)
from test_workspaces import (  # noqa: F401  (fixtures: the workspaces' hub, a cluster account, a shared Python)
    _member_session,
    _start,
    _stop,
    cluster_user,
    hub_sock,
    live,
    opened,
    scratch_dir,
    settings,
    shared_python,
)
from test_workspaces import pytestmark as needs_jupyterlab

pytestmark = needs_jupyterlab
SUBNET = "10.213.0.0/16"
NODE = "localhost"  # the test cluster's one node (tests/support/slurm.py): this machine


# -- the address checks -----------------------------------------------------------------------------
@pytest.mark.parametrize(("node_address", "kind"), [
    ("localhost", "loopback"), ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"), ("0.0.0.0", "unspecified"), ("224.0.0.251", "multicast"),
    ("10.213.0.6", "subnet")])
def test_a_node_on_the_hubs_machine_or_its_internals_is_refused(node_address: str, kind: str) -> None:
    with pytest.raises(launcher.AddressRefused) as refused:
        launcher.dial_address(node_address, node="gpu07", pinned="", subnet=SUBNET)
    message = str(refused.value)
    assert "gpu07" in message and kind in message, message
    assert node_address not in message and "127.0.0.1" not in message  # the node's name, never an address


def test_a_node_of_its_own_is_dialled_by_its_address() -> None:
    """Compute nodes on a private network (RFC 1918) are fine: they are machines of their own."""
    assert launcher.dial_address("10.1.2.3", node="gpu07", pinned="", subnet=SUBNET) == "10.1.2.3"
    assert launcher.dial_address("192.168.7.9", node="gpu07", pinned="", subnet=SUBNET) == "192.168.7.9"
    with pytest.raises(launcher.AddressRefused, match="gpu07 does not resolve"):
        launcher.dial_address("no-such-node.invalid", node="gpu07", pinned="", subnet=SUBNET)


def test_a_pinned_address_may_be_the_hubs_own_machine_only() -> None:
    """``slurm_host`` (the operator's) may name this machine (the cluster's node is the hub's, as here): dialled as
    an address, and only at a port the job's account listens on; never the cloud's metadata or another internal."""
    assert launcher.dial_address(NODE, node=NODE, pinned="127.0.0.1", subnet=SUBNET) == "127.0.0.1"
    assert launcher.dial_address("10.1.2.3", node="gpu07", pinned="localhost", subnet=SUBNET) == "127.0.0.1"
    assert launcher.on_this_machine("127.0.0.1") and not launcher.on_this_machine("192.0.2.1")
    for pinned in ("169.254.169.254", "224.0.0.251", "10.213.0.6"):
        with pytest.raises(launcher.AddressRefused, match="slurm_host"):
            launcher.dial_address(NODE, node=NODE, pinned=pinned, subnet=SUBNET)


def test_the_listeners_owner_is_read_from_the_kernel(cluster_user: tuple[str, int]) -> None:  # noqa: F811
    """Who listens at an address of this machine: the socket's owner as the kernel lists it (0.0.0.0 counts for
    every address), so a port the member names leads only to the member's own listener."""
    _, uid = cluster_user
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        port = mine.getsockname()[1]
        assert launcher.listener_uids("127.0.0.1", port) == set()  # bound, not listening
        mine.listen()
        assert launcher.listener_uids("127.0.0.1", port) == {os.geteuid()}
    listening = subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c",
         "import socket, sys; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen()\n"
         "print(s.getsockname()[1], flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert listening.stdout is not None
        port = int(listening.stdout.readline())
        assert launcher.listener_uids("127.0.0.1", port) == {uid}
    finally:
        listening.kill()
        listening.wait()


def test_the_port_file_is_read_safely(tmp_path: Path) -> None:
    """The member may put anything at ``.where``: a FIFO (the hub must not block on it), a link to a file of the
    hub's, a folder, garbage. Only a regular file holding a port is read."""
    where = tmp_path / ".where"
    os.mkfifo(where)
    assert launcher.read_port(where) is None
    where.unlink()
    (tmp_path / "secret").write_text("4711\n")
    where.symlink_to(tmp_path / "secret")
    assert launcher.read_port(where) is None
    where.unlink()
    where.mkdir()
    assert launcher.read_port(where) is None
    where.rmdir()
    for text, port in (("8888\n", 8888), ("127.0.0.1 8888\n", 8888), ("nonsense", None), ("99999", None),
                       ("0", None), ("", None)):
        where.write_text(text)
        assert launcher.read_port(where) == port, text


# -- with the real cluster --------------------------------------------------------------------------
@dataclass
class Trap:
    """A service of the hub's machine (on loopback): it answers every request as JupyterLab would, and records it."""

    port: int
    requests: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def trap() -> Iterator[Trap]:
    seen: list[tuple[str, str]] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization", "")))
            body = b'{"started": "now"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="trap")
    thread.start()
    try:
        yield Trap(server.server_address[1], seen)
    finally:
        server.shutdown()
        server.server_close()


def _slurm_settings(hub, slurm, shared_python: Path, *, slurm_host: str):  # noqa: F811
    return hub.settings.model_copy(update={
        "workspaces": hub.settings.workspaces.model_copy(update={
            "launcher": "slurm", "slurm_host": slurm_host, "start_timeout_seconds": 120, "mount_data": False,
            "python": str(shared_python)}),
        "compute": hub.settings.compute.model_validate({"slurm": {"enabled": True, "slurm_conf": slurm.conf}})})


def _carol_with_account(hub, people, account: str):
    from strongroom.audit.service import Actor
    from strongroom.identity.models import User

    people("alice")
    make_project(hub, "lung", pi="alice")
    carol, cookie = _member_session(hub, people, "carol", "lung")
    with transaction(hub.sessions) as s:
        service.set_cluster_account(s, Actor.system("test"), s.get(User, carol.user.id), account)
    return carol, cookie


def _jobs_of(slurm, account: str) -> list[str]:  # noqa: F811
    done = subprocess.run(["squeue", "-h", "-u", account, "-o", "%i %T"], capture_output=True, text=True,
                          env={**os.environ, "SLURM_CONF": str(slurm.conf)}, timeout=30, check=False)
    return done.stdout.split("\n") if done.stdout.strip() else []


def _until(what: str, ready, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (found := ready()):  # readiness, polled with a deadline
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.1)
    return found


@pytest.fixture
def gated_python(shared_python: Path) -> Iterator[tuple[Path, Path]]:  # noqa: F811
    """The job's interpreter, held at a gate until the test opens it (creates the gate file): the job runs (Slurm
    says RUNNING) but writes nothing yet, so what the hub reads meanwhile is the member's alone."""
    gate = Path(f"/dev/shm/srtest-gate-{uuid.uuid4().hex[:8]}")
    wrapper = shared_python.parent / "gated-python.sh"
    wrapper.write_text(f'#!/bin/sh\nuntil [ -e {gate} ]; do sleep 0.05; done\nexec {shared_python} "$@"\n')
    wrapper.chmod(0o755)
    try:
        yield wrapper, gate
    finally:
        gate.unlink(missing_ok=True)


def test_a_port_written_while_the_job_is_queued_leads_nowhere(hub, people, live: str, slurm,  # noqa: F811
                                                              cluster_user: tuple[str, int],  # noqa: F811
                                                              gated_python: tuple[Path, Path],
                                                              scratch_dir: Path, trap: Trap) -> None:  # noqa: F811
    """The member, as their cluster account, writes ``.where`` while the job waits in the queue, naming a loopback
    service of the hub's machine. The hub never connects to it: it waits for Slurm to run the job, reads the file
    (still the member's: the job is held before it writes), finds no listener of the job's account at that port,
    and dials the operator's ``slurm_host`` only at the port JupyterLab then listens on, as the job's account."""
    account, uid = cluster_user
    python, gate = gated_python
    hub.settings = _slurm_settings(hub, slurm, python, slurm_host="127.0.0.1")
    carol, cookie = _carol_with_account(hub, people, account)
    outcome: dict[str, object] = {}

    def start() -> None:
        try:
            outcome["ws"] = _start(hub, carol, "lung")
        except Exception as exc:  # reported by the test below
            outcome["error"] = exc

    slurm.scontrol("update", f"NodeName={NODE}", "State=DRAIN", "Reason=strongroom-test-queued")
    resumed = False
    starting = threading.Thread(target=start, name="workspace-start")
    try:
        starting.start()
        _until("the job is queued", lambda: any(j.endswith("PENDING") for j in _jobs_of(slurm, account)))
        scratch = _until("its scratch", lambda: next((p for p in scratch_dir.iterdir() if (p / ".job.sh").exists()),
                                                     None))
        subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sh", "-c",
                        f"echo '127.0.0.1 {trap.port}' > .where"], cwd=scratch, check=True, capture_output=True)
        forged = scratch / ".where"
        assert forged.stat().st_uid == uid  # the member could write it: the defect's premise
        slurm.scontrol("update", f"NodeName={NODE}", "State=RESUME")
        resumed = True
        _until("the job runs", lambda: any(j.endswith("RUNNING") for j in _jobs_of(slurm, account)))
        # read (its access time moves past its change) while the job is held at the gate
        _until("the hub reads the member's .where", lambda: forged.stat().st_atime_ns > forged.stat().st_mtime_ns)
    finally:
        if not resumed:
            slurm.scontrol("update", f"NodeName={NODE}", "State=RESUME")
        gate.touch()
        starting.join(timeout=300)
    assert not starting.is_alive()
    ws = outcome.get("ws")
    try:
        assert trap.requests == [], trap.requests  # not probed, the Jupyter token never sent there
        assert isinstance(ws, Workspace), outcome.get("error")
        assert (ws.host, ws.launcher) == ("127.0.0.1", "slurm") and ws.port != trap.port
        path = service.base_path("lung", ws.id)
        where, cookies = opened(live, path, cookie)
        status = httpx.get(f"{where}{path}api/status", cookies=cookies, timeout=30)
        assert status.status_code == 200 and "started" in status.json() and status.json() != {"started": "now"}
        assert trap.requests == []
    finally:
        if isinstance(ws, Workspace):
            _stop(hub, ws)


def test_a_node_that_is_the_hubs_loopback_is_refused_and_audited(hub, people, slurm,  # noqa: F811
                                                                  cluster_user: tuple[str, int],  # noqa: F811
                                                                  shared_python: Path,  # noqa: F811
                                                                  scratch_dir: Path, trap: Trap) -> None:  # noqa: F811
    """Without ``slurm_host`` the hub dials the node Slurm ran the job on; this cluster's node is ``localhost``,
    the hub's own loopback: refused, the job cancelled, the scratch gone, and the refusal audited with the node's
    name and the kind of address only."""
    account, _ = cluster_user
    hub.settings = _slurm_settings(hub, slurm, shared_python, slurm_host="")
    carol, _ = _carol_with_account(hub, people, account)
    from strongroom.errors import Conflict

    with pytest.raises(Conflict, match=f"the Slurm node {NODE} is loopback") as refused:
        _start(hub, carol, "lung")
    assert "127.0.0.1" not in str(refused.value)
    _until("the job is cancelled", lambda: not _jobs_of(slurm, account))
    assert list(scratch_dir.iterdir()) == [] and trap.requests == []
    with transaction(hub.sessions) as s:
        assert s.scalar(select(Workspace.id)) is None  # nothing left of it (its token neither)
        event = s.scalar(select(AuditEvent).where(AuditEvent.action == "workspace.start"))
        assert event is not None and event.outcome == "denied" and event.subject_user_id == carol.user.id
        assert event.details["reason"] == f"the Slurm node {NODE} is loopback"
        assert event.details["launcher"] == "slurm" and event.details["job"]
        assert "127.0.0.1" not in str(event.details)
