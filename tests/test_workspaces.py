"""Notebook workspaces (issue 19): a real JupyterLab started for a member, reached through the hub's reverse
proxy only (HTTP and the kernel websocket), its token never sent to the browser, 404 for everyone else; code
run in its kernel reaches the hub and the project's allow-listed destination (a server in its own network
namespace) and nothing else — not an unlisted port, not another workspace; stop wipes the scratch space and
revokes the workspace's project-bound token."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from conftest import browser_session
from imaging_support import make_project
from strongroom.archive.c4gh import public_key_file
from strongroom.archive.c4gh.keys import generate_keypair
from strongroom.audit.models import AuditEvent
from strongroom.config import Settings
from strongroom.db import transaction
from strongroom.deps import SESSION_COOKIE
from strongroom.identity.models import ApiToken
from strongroom.projects import service as projects
from strongroom.projects.models import ProjectSetting
from strongroom.workspaces import fuse, launcher, netns, origin, service
from strongroom.workspaces.models import RUNNING, STOPPED, Workspace
from support.live import free_port, serving
from support.slurm import LICENSE, slurm  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None,
                                reason="jupyterlab is not installed (pip install -e '.[test]')")

NO_NETNS = netns.missing()
# Namespaces, links and addresses are global to the machine: each pytest-xdist worker takes its own.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
SUBNET = f"10.213.{2 * WORKER}.0/24"
DEST_NS, DEST_HOST_IP, DEST_IP = f"srtest-dest{WORKER}", f"10.214.{WORKER}.1", f"10.214.{WORKER}.2"
DEST_HOST_IF, DEST_NS_IF = f"srtdh{WORKER}", f"srtdn{WORKER}"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def hub_sock() -> Iterator[socket.socket]:
    """The hub's listening socket, on every address of this machine: the workspaces' namespaces reach it
    through their veth's host side (a loopback-only hub is out of their reach)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    yield sock
    sock.close()


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """On tmpfs, where the workspaces' user can reach it (pytest's own temporary folders are root's only)."""
    path = Path("/dev/shm") / f"srtest-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


# Each worker's hub leases its workspaces' uids from a range of its own (hubs sharing a machine need disjoint ones).
UID_RANGE = (2_100_000 + 10_000 * WORKER, 2_109_999 + 10_000 * WORKER)


@pytest.fixture
def settings(database_url: str, tmp_path: Path, hub_sock: socket.socket, scratch_dir: Path,
             shared_python: Path) -> Settings:
    """Each workspace under its own uid (the default): JupyterLab runs an interpreter every uid may run."""
    port = hub_sock.getsockname()[1]
    return Settings(var_dir=tmp_path / "var", database_url=database_url, secret_key="test-secret-" + "x" * 32,
                    log_json=True, jobs={"embedded": False}, base_url=f"http://127.0.0.1:{port}", port=port,
                    security={"cookie_secure": False},
                    workspaces={"scratch_dir": str(scratch_dir), "subnet": SUBNET,
                                "isolation": "namespace" if NO_NETNS is None else "none",
                                "allow_unisolated": NO_NETNS is not None, "start_timeout_seconds": 120,
                                # this machine's Python lives under /root (0700): no other user can run it
                                "python": str(shared_python), "uid_range": UID_RANGE,
                                # the operator's package mirror for "lung" (the mirror fixture serves it)
                                "package_mirrors": {"site": {"url": f"http://{MIRROR_IP}:{MIRROR_PORT}/simple/",
                                                             "projects": ["lung"]}}})


@pytest.fixture
def live(app, hub_sock: socket.socket) -> Iterator[str]:
    with serving(app, sock=hub_sock) as url:
        yield url


def _member_session(hub, people, name: str, project: str) -> tuple[object, str]:
    person = people(name)
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(projects.Project.id).where(projects.Project.slug == project))
        s.add(projects.Membership(project_id=pid, user_id=person.user.id, role="member", delegated_rights=[]))
    return person, browser_session(hub, person)


def _start(hub, person, slug: str) -> Workspace:
    from strongroom.identity import service as identity
    from strongroom.identity.models import User

    with transaction(hub.sessions) as s:
        user = s.get(User, person.user.id)
        principal = identity.session_principal(type("S", (), {"mfa_at": dt.datetime.now(dt.UTC),
                                                               "id_hash": "test0000"})(), user, "127.0.0.1")
        access = projects.open_project(s, principal, slug)
        ws = service.start(s, hub.settings, hub.secret, principal, access)
        s.expunge(ws)
    return ws


def _stop(hub, ws: Workspace) -> None:
    from strongroom.audit.service import Actor

    with transaction(hub.sessions) as s:
        service.stop(s, hub.settings, s.get(Workspace, ws.id), Actor.system("test"), reason="user")


def opened(base: str, path: str, cookie: str) -> tuple[str, dict[str, str]]:
    """Open a workspace as a browser does: the hub's origin (``base``, with the hub session ``cookie``) hands over to
    the workspaces' own origin with a one-time code. (That origin, the workspace's cookie there.)"""
    r = httpx.get(f"{base}{path}lab", cookies={SESSION_COOKIE: cookie}, timeout=30)
    assert r.status_code == 303, r.text
    where = r.headers["location"].partition("/_strongroom/")[0]
    handed = httpx.get(r.headers["location"], timeout=30)
    assert handed.status_code == 303 and handed.headers["location"] == f"{path}lab", handed.text
    return where, {origin.WORKSPACE_COOKIE: handed.cookies[origin.WORKSPACE_COOKIE]}


class Kernel:
    """The Jupyter kernel protocol over the workspace proxy's websocket (JSON messages, channel in the message), on
    the workspaces' origin, opened from the hub's origin ``base`` with the hub session ``cookie``."""

    def __init__(self, base: str, path: str, cookie: str) -> None:
        where, self.cookies = opened(base, path, cookie)
        r = httpx.post(f"{where}{path}api/kernels", json={"name": "python3"}, cookies=self.cookies,
                       headers={"Origin": where}, timeout=60)
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]
        self.session = uuid.uuid4().hex
        url = f"{where.replace('http://', 'ws://')}{path}api/kernels/{self.id}/channels?session_id={self.session}"
        self.ws = ws_connect(url, additional_headers={"Cookie": f"{origin.WORKSPACE_COOKIE}="
                                                                f"{self.cookies[origin.WORKSPACE_COOKIE]}"},
                             origin=where, open_timeout=30, max_size=None)  # type: ignore[arg-type]

    def run(self, code: str) -> tuple[str, str]:
        """(the result's text/plain, everything printed)."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": self.session, "msg_type": "execute_request",
                       "version": "5.3", "date": dt.datetime.now(dt.UTC).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        result, printed = "", ""
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "execute_result":
                result = msg["content"]["data"]["text/plain"]
            elif kind == "stream":
                printed += msg["content"]["text"]
            elif kind == "error":
                printed += "\n".join(msg["content"]["traceback"])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return result, printed

    def close(self) -> None:
        self.ws.close()


def test_workspace_through_the_hub_proxy_only(hub, people, live: str) -> None:
    people("alice")
    people("bob")
    make_project(hub, "lung", pi="alice")
    make_project(hub, "heart", pi="bob")
    carol, carol_cookie = _member_session(hub, people, "carol", "lung")
    _, dave_cookie = _member_session(hub, people, "dave", "heart")
    ws = _start(hub, carol, "lung")
    path = service.base_path("lung", ws.id)
    token = service.jupyter_token(hub.secret, ws.id)
    scratch = Path(ws.scratch)
    try:
        assert ws.state == RUNNING and scratch.is_dir()
        (scratch / "result.txt").write_text("plaintext that must not outlive the workspace")
        # the owner's page session opens it on the workspaces' own origin (never the hub's: there it only hands
        # over); the token is nowhere in what comes back
        where, cookies = opened(live, path, carol_cookie)
        assert where == service.browser_origin(hub.settings) and where != live
        r = httpx.get(f"{where}{path}api/status", cookies=cookies, timeout=30)
        assert r.status_code == 200 and "last_activity" in r.json()
        assert token not in r.text and not any(token in v for v in r.headers.values())
        lab = httpx.get(f"{where}{path}lab", cookies=cookies, timeout=30)
        assert lab.status_code == 200 and "JupyterLab" in lab.text
        assert token not in lab.text and not any(token in v for v in lab.headers.values())
        # whatever cookies Jupyter sets reach the browser on the workspace's path and host only
        assert all(f"Path={path}" in c and "domain=" not in c.lower() for c in lab.headers.get_list("set-cookie"))
        hub_copy = httpx.get(f"{live}{path}api/status", cookies={SESSION_COOKIE: carol_cookie})
        assert hub_copy.status_code == 303 and hub_copy.headers["location"].startswith(f"{where}/_strongroom/")
        # another project's member, anonymous, a made-up id, another slug: 404 (anonymous: the login page first)
        assert httpx.get(f"{live}{path}api/status", cookies={SESSION_COOKIE: dave_cookie}).status_code == 404
        assert httpx.get(f"{where}{path}api/status").status_code == 404
        assert httpx.get(f"{live}{path}api/status").headers["location"].startswith("/login?next=")
        assert httpx.get(f"{live}/projects/lung/workspaces/{uuid.uuid4()}/api/status",
                         cookies={SESSION_COOKIE: carol_cookie}).status_code == 404
        assert httpx.get(f"{live}/projects/heart/workspaces/{ws.id}/api/status",
                         cookies={SESSION_COOKIE: carol_cookie}).status_code == 404
        assert httpx.get(f"{where}/projects/heart/workspaces/{ws.id}/api/status", cookies=cookies).status_code == 404
        # a cross-site POST (another site's form or script with the owner's cookie) is refused too, and on the hub's
        # origin nothing but opening it
        assert httpx.post(f"{where}{path}api/kernels", json={}, cookies=cookies,
                          headers={"Origin": "https://evil.example"}).status_code == 404
        assert httpx.post(f"{live}{path}api/kernels", json={}, cookies={SESSION_COOKIE: carol_cookie},
                          headers={"Origin": live}).status_code == 404
        # the kernel websocket: refused to others (and to the hub's cookie alone), works for the owner
        for cookie in (f"{SESSION_COOKIE}={dave_cookie}", f"{SESSION_COOKIE}={carol_cookie}", None):
            with pytest.raises(InvalidStatus) as refused:
                ws_connect(f"{where.replace('http://', 'ws://')}{path}api/kernels/x/channels", origin=where,  # type: ignore[arg-type]
                           additional_headers={"Cookie": cookie} if cookie else {})
            assert refused.value.response.status_code == 404
        kernel = Kernel(live, path, carol_cookie)
        try:
            assert kernel.run("1 + 1")[0] == "2"
            _, printed = kernel.run("import os; print(sorted(k for k in os.environ if k.startswith('STRONGROOM')))")
            assert "STRONGROOM_TOKEN" in printed and "STRONGROOM_URL" in printed
            # the workspace's token reads this project through the hub, and nothing else
            _, printed = kernel.run(
                "import os, urllib.request, urllib.error\n"
                "def get(p):\n"
                "    req = urllib.request.Request(os.environ['STRONGROOM_URL'] + p, headers={'Authorization': "
                "'Bearer ' + os.environ['STRONGROOM_TOKEN']})\n"
                "    try:\n"
                "        return urllib.request.urlopen(req, timeout=30).status\n"
                "    except urllib.error.HTTPError as e:\n"
                "        return e.code\n"
                "print(get('/api/v1/projects/lung'), get('/api/v1/projects/heart'))")
            assert printed.split() == ["200", "404"], printed
        finally:
            kernel.close()
    finally:
        _stop(hub, ws)
    assert not scratch.exists()
    assert httpx.get(f"{live}{path}api/status", cookies={SESSION_COOKIE: carol_cookie}).status_code == 404
    assert httpx.get(f"{where}{path}api/status", cookies=cookies).status_code == 404
    with transaction(hub.sessions) as s:
        row = s.get(Workspace, ws.id)
        assert row.state == STOPPED and row.stop_reason == "user"
        assert s.scalar(select(ApiToken).where(ApiToken.prefix == row.token_prefix)).revoked_at is not None
        actions = [e.action for e in s.scalars(select(AuditEvent).where(AuditEvent.target == f"workspace:{ws.id}")
                                               .order_by(AuditEvent.seq))]
        assert actions == ["workspace.started", "workspace.stopped"]
    if NO_NETNS is None:
        assert not netns.exists(service.plan_of(hub.settings, row).name)


@pytest.fixture
def destination() -> Iterator[tuple[int, int]]:
    """Two HTTP servers in their own network namespace (one port to allow-list, one not)."""
    ns = ["ip", "netns", "exec", DEST_NS]
    _test_host(DEST_NS, DEST_HOST_IF, DEST_NS_IF, DEST_HOST_IP, DEST_IP)
    servers = []
    ports = (18081, 18082)  # inside the destination's own namespace: nothing else listens there
    try:
        for port in ports:
            servers.append(subprocess.Popen(
                [*ns, sys.executable, "-m", "http.server", str(port), "--bind", DEST_IP],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp"))
        for port in ports:  # ready when it accepts (a probe with a deadline)
            _wait_port(DEST_NS, DEST_IP, port)
        yield ports
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", DEST_HOST_IF], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", DEST_NS], capture_output=True, check=False)


def _test_host(namespace: str, host_if: str, ns_if: str, host_ip: str, ip: str) -> None:
    """A test host: its own network namespace at ``ip``, a /30 veth link to the hub's side at ``host_ip``
    (anything left from an earlier run removed first)."""
    ns = ["ip", "netns", "exec", namespace]
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
    for cmd in (["ip", "netns", "add", namespace],
                ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
                ["ip", "link", "set", ns_if, "netns", namespace],
                ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
                ["ip", "link", "set", host_if, "up"],
                [*ns, "ip", "addr", "add", f"{ip}/30", "dev", ns_if],
                [*ns, "ip", "link", "set", ns_if, "up"], [*ns, "ip", "link", "set", "lo", "up"],
                [*ns, "ip", "route", "add", "default", "via", host_ip]):
        subprocess.run(cmd, check=True, capture_output=True)


def _wait_port(namespace: str, ip: str, port: int) -> None:
    code = ("import socket, time\nend = time.monotonic() + 30\nwhile True:\n    try:\n"
            f"        socket.create_connection(('{ip}', {port}), timeout=1).close(); break\n"
            "    except OSError:\n        if time.monotonic() > end: raise\n        time.sleep(0.1)\n")
    subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", code], check=True, timeout=60)


PROBE = ("import socket\n"
         "def probe(host, port):\n"
         "    try:\n"
         "        socket.create_connection((host, port), timeout=5).close()\n"
         "        return 'open'\n"
         "    except ConnectionRefusedError:\n"
         "        return 'refused'\n"
         "    except OSError as e:\n"
         "        return type(e).__name__\n")


@pytest.mark.skipif(NO_NETNS is not None, reason=f"network namespaces need root with ip and nft: {NO_NETNS}")
def test_egress_only_to_the_hub_and_allow_listed(hub, people, live: str, destination: tuple[int, int]) -> None:
    allowed_port, other_port = destination
    people("alice")
    make_project(hub, "lung", pi="alice")
    pem = public_key_file(generate_keypair().public).decode()
    from strongroom.config import AirlockSftpCredential

    # the SFTP server's address is its credential's (the operator's), for the projects it serves
    hub.settings.airlock.sftp["partner"] = AirlockSftpCredential(
        host=DEST_IP, port=allowed_port, username="strongroom", private_key_file=Path("/nonexistent"),
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk2bm90YXJlYWxrZXlidXRhZm9ybWF0b2suLi4u", projects=["lung"])
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(projects.Project.id).where(projects.Project.slug == "lung"))
        s.add(ProjectSetting(project_id=pid, key="egress_destinations", value=[{
            "kind": "sftp", "name": "Partner", "credential": "partner", "public_key": pem}],
            changed_by=s.scalar(select(projects.Project.pi_id).where(projects.Project.id == pid))))
    with transaction(hub.sessions) as s:
        assert service.allowed_destinations(s, hub.settings, pid) == [(DEST_IP, allowed_port)]
    carol, carol_cookie = _member_session(hub, people, "carol", "lung")
    erin, _ = _member_session(hub, people, "erin", "lung")
    first, second = _start(hub, carol, "lung"), _start(hub, erin, "lung")
    try:
        plan, other = service.plan_of(hub.settings, first), service.plan_of(hub.settings, second)
        kernel = Kernel(live, service.base_path("lung", first.id), carol_cookie)
        try:
            port = hub.settings.port
            _, printed = kernel.run(PROBE + (
                f"print(probe('{plan.host_ip}', {port}), probe('{DEST_IP}', {allowed_port}), "
                f"probe('{DEST_IP}', {other_port}), probe('{other.ns_ip}', {other.jupyter_port}), "
                f"probe('{plan.host_ip}', 22))"))
            hub_ok, allowed, unlisted, neighbour, host_other = printed.split()
            assert (hub_ok, allowed) == ("open", "open"), printed
            assert unlisted in ("refused", "TimeoutError"), printed
            assert neighbour in ("refused", "TimeoutError"), printed
            assert host_other in ("refused", "TimeoutError"), printed
            # the PI closes the destination: the running workspaces lose it as soon as the queued job runs
            from strongroom.airlock import service as airlock
            from strongroom.identity import service as identity
            from strongroom.jobs.runner import Runner

            with transaction(hub.sessions) as s:
                alice = identity.session_principal(type("S", (), {"mfa_at": dt.datetime.now(dt.UTC),
                                                                  "id_hash": "test0000"})(),
                                                   identity.find_user(s, "alice"), "127.0.0.1")
                airlock.remove_destination(s, alice, projects.open_project(s, alice, "lung"), "Partner",
                                           fresh_minutes=10)
            Runner(hub, lease_seconds=30, name="test").run_until_idle()
            _, printed = kernel.run(f"print(probe('{plan.host_ip}', {port}), probe('{DEST_IP}', {allowed_port}))")
            hub_ok, closed = printed.split()
            assert hub_ok == "open" and closed in ("refused", "TimeoutError"), printed
            with hub.sessions() as s:
                assert s.scalar(select(AuditEvent.details).where(
                    AuditEvent.action == "workspace.egress_reapplied")) == {"workspaces": 2, "destinations": 0}
        finally:
            kernel.close()
        # the hub itself reaches the other workspace (its proxy does); the workspace cannot
        assert httpx.get(f"http://{other.ns_ip}:{other.jupyter_port}/").status_code in (200, 302, 404)
    finally:
        _stop(hub, first)
        _stop(hub, second)
    assert not netns.exists(plan.name) and not netns.exists(other.name)
    assert not Path(first.scratch).exists() and not Path(second.scratch).exists()


def test_refused_without_isolation_unless_allowed(hub, people, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback without a namespace is labelled and refused unless an operator allows it."""
    from strongroom.errors import Conflict

    monkeypatch.setattr(netns, "missing", lambda: "the hub does not run as root")
    strict = hub.settings.model_copy(update={"workspaces": hub.settings.workspaces.model_copy(
        update={"isolation": "namespace", "allow_unisolated": False})})
    with pytest.raises(Conflict, match="does not run as root"):
        service.isolation_for(strict)
    lenient = hub.settings.model_copy(update={"workspaces": hub.settings.workspaces.model_copy(
        update={"isolation": "namespace", "allow_unisolated": True})})
    assert service.isolation_for(lenient) == ("none", "NO EGRESS CONTROL: the hub does not run as root")


def test_slurm_job_asks_for_the_reservation(tmp_path: Path) -> None:
    spec = launcher.Spec(workspace_id=str(uuid.uuid4()), base_url="/projects/lung/workspaces/x/",
                         jupyter_token="t" * 64, scratch=tmp_path, env={"STRONGROOM_TOKEN": "sr_secret"},
                         reservation="sr-12", gpus=4)
    slurm_launcher = launcher.SlurmLauncher()
    args = slurm_launcher.sbatch_args(spec)
    assert "--reservation=sr-12" in args and "--gres=gpu:4" in args
    script = slurm_launcher.script(spec)
    assert "sr_secret" not in script and "t" * 64 not in script and "sr_secret" not in " ".join(args)
    assert "--ServerApp.base_url=/projects/lung/workspaces/x/" in script


def test_netns_rules_name_only_the_hub_and_the_list() -> None:
    plan = netns.plan_for(3, "10.213.0.0/24", hub_port=8000, allowed=[("192.0.2.10", 22)])
    assert (plan.host_ip, plan.ns_ip) == ("10.213.0.13", "10.213.0.14")
    # names follow the address (host-global names never clash between hubs or test workers with other subnets)
    assert (plan.name, plan.host_if) == ("srws-0ad5000c", "srwh0ad5000c")
    assert netns.plan_for(3, "10.213.2.0/24", hub_port=8000, allowed=[]).name == "srws-0ad5020c"
    rules = netns.nft_rules(plan)
    assert "policy drop" in rules and "ip daddr 10.213.0.13 tcp dport 8000 accept" in rules
    assert "ip daddr 192.0.2.10 tcp dport 22 accept" in rules
    assert os.path.basename(netns.wrap(plan, ["true"])[0]) == "ip"


def test_booking_end_warns_then_stops_and_idle_stops(hub, app, people) -> None:
    """A workspace started during the project's GPU booking runs until the booking ends: its owner is warned
    before (an e-mail), it stops at the end; another stops when idle. The pages show them."""
    from aiosmtpd.controller import Controller
    from fastapi.testclient import TestClient

    from conftest import web_client
    from strongroom.compute.models import Booking
    from strongroom.config import NotifySettings
    from strongroom.jobs.models import Job
    from strongroom.jobs.runner import Runner
    from test_notify import Mailbox

    people("alice")
    make_project(hub, "lung", pi="alice")
    carol, _ = _member_session(hub, people, "carol", "lung")
    admin = people("olga", admin=True)
    now = dt.datetime.now(dt.UTC)
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(projects.Project.id).where(projects.Project.slug == "lung"))
        booking = Booking(project_id=pid, machine="dgx2", gpus=2, gpu_indices="0,1",
                          start_at=now - dt.timedelta(hours=1),
                          end_at=now + dt.timedelta(minutes=20), booked_by=carol.user.id)
        s.add(booking)
        s.flush()
        booking_id, end = booking.id, booking.end_at
    first, second = _start(hub, carol, "lung"), _start(hub, carol, "lung")
    try:
        assert first.booking_id == booking_id and first.ends_at == end
        page = web_client(app, hub, carol).get("/projects/lung/workspaces")
        assert page.status_code == 200 and f"GPU booking {booking_id}" in page.text and "h left" in page.text
        assert f"/projects/lung/workspaces/{first.id}/lab" in page.text
        # its resources (a local process: the CPUs it may use, its memory, no GPU) and the booking's time left
        assert "MiB in use" in page.text and "min left" in page.text
        # the booking ends within warn_minutes: a banner says when and why
        assert f"Workspace {str(first.id)[:8]} stops at {end.strftime('%H:%M')} UTC" in page.text
        assert "because the GPU booking ends" in page.text
        assert web_client(app, hub, carol).get("/admin/workspaces").status_code == 404
        operators = web_client(app, hub, admin).get("/admin/workspaces")
        assert operators.status_code == 200 and str(first.id)[:8] in operators.text
        assert "MiB in use" in operators.text and "stops soon: the GPU booking ends" in operators.text
        assert TestClient(app).get("/api/v1/workspaces/projects/lung").status_code == 401
        with transaction(hub.sessions) as s:
            assert service.check_bookings(s, hub.settings, now=now) == {"warned": 2, "stopped": 0}
            assert service.check_bookings(s, hub.settings, now=now) == {"warned": 0, "stopped": 0}  # once
            mails = [j.payload for j in s.scalars(select(Job).where(Job.kind == "notify.email").order_by(Job.id))]
            assert [m["template"] for m in mails] == ["workspace_ending", "workspace_ending"]
            unbooked = s.get(Workspace, second.id)  # the second one runs on: only idle time stops it
            unbooked.booking_id, unbooked.ends_at = None, None
        with transaction(hub.sessions) as s:
            assert service.check_bookings(s, hub.settings, now=end) == {"warned": 0, "stopped": 1}
        w = hub.settings.workspaces
        idle_at = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=w.idle_minutes + 1)
        with transaction(hub.sessions) as s:
            assert service.check_idle(s, hub.settings, hub.secret, now=dt.datetime.now(dt.UTC)) == {
                "idle": 0, "exited": 0, "warned": 0}
            # warn_minutes before the idle stop: the owner is e-mailed once, and the page says so
            soon = idle_at - dt.timedelta(minutes=w.warn_minutes)
            assert service.check_idle(s, hub.settings, hub.secret, now=soon) == {"idle": 0, "exited": 0, "warned": 1}
            assert service.check_idle(s, hub.settings, hub.secret, now=soon) == {"idle": 0, "exited": 0, "warned": 0}
            mails = [j.payload for j in s.scalars(select(Job).where(Job.kind == "notify.email").order_by(Job.id))]
            assert [m["context"].get("reason") for m in mails] == ["booking", "booking", "idle"]
        # the e-mails go out through a real SMTP server
        box = Mailbox(port=free_port())
        controller = Controller(box, hostname="127.0.0.1", port=box.port)
        controller.start()
        try:
            hub.settings = hub.settings.model_copy(update={"notify": NotifySettings(
                host="127.0.0.1", port=box.port, starttls=False, from_address="hub@strongroom.test")})
            Runner(hub, lease_seconds=10, name="test").run_until_idle()
        finally:
            controller.stop()
        sent = box.to(carol.user.email)
        assert len(sent) == 3 and all("Your workspace in lung stops in" in m["Subject"] for m in sent)
        assert sum("has been idle" in m.get_content() for m in sent) == 1
        page = web_client(app, hub, carol).get("/projects/lung/workspaces")
        assert f"Workspace {str(second.id)[:8]} stops at" in page.text and "because it has been idle" in page.text
        with transaction(hub.sessions) as s:
            assert service.check_idle(s, hub.settings, hub.secret, now=idle_at) == {
                "idle": 1, "exited": 0, "warned": 0}
        with transaction(hub.sessions) as s:
            assert [(w.state, w.stop_reason) for w in (s.get(Workspace, first.id), s.get(Workspace, second.id))] == [
                (STOPPED, "booking-end"), (STOPPED, "idle")]
        assert not Path(first.scratch).exists() and not Path(second.scratch).exists()
    finally:
        _stop(hub, first)
        _stop(hub, second)


def test_a_member_who_loses_access_loses_their_workspace_at_once(hub, app, people) -> None:
    """A workspace reads its project's data, so it ends with its owner's right to read it: removed by the PI
    (the web form), it stops as soon as the job the removal queued runs — not at the next idle check; a
    deactivated owner's and a closed project's stop at the periodic access check. Another member's runs on."""
    from conftest import web_client
    from helpers import csrf_for
    from strongroom.audit.service import Actor
    from strongroom.identity import service as identity
    from strongroom.identity.models import User
    from strongroom.jobs.models import Job
    from strongroom.jobs.runner import Runner

    alice = people("alice")
    make_project(hub, "lung", pi="alice")
    make_project(hub, "heart", pi="alice")
    carol, _ = _member_session(hub, people, "carol", "lung")
    dave, _ = _member_session(hub, people, "dave", "lung")
    erin, _ = _member_session(hub, people, "erin", "lung")
    frank, _ = _member_session(hub, people, "frank", "heart")
    spaces = {name: _start(hub, person, slug) for name, person, slug in (
        ("carol", carol, "lung"), ("dave", dave, "lung"), ("erin", erin, "lung"), ("frank", frank, "heart"))}
    runner = Runner(hub, lease_seconds=30, name="test")
    try:
        def states() -> dict[str, tuple[str, str]]:
            with hub.sessions() as s:
                rows = {n: s.get(Workspace, w.id) for n, w in spaces.items()}
                return {n: (row.state, row.stop_reason) for n, row in rows.items()}

        pi = web_client(app, hub, alice)
        r = pi.post(f"/projects/lung/members/{carol.user.id}/remove", data={"csrf_token": csrf_for(pi)},
                    follow_redirects=True)
        assert r.status_code == 200 and 'class="flash flash-ok"' in r.text
        with hub.sessions() as s:  # the removal queued the check for that project
            assert s.scalar(select(Job.payload).where(Job.kind == "workspaces.access")) == {
                "project_id": str(s.scalar(select(projects.Project.id).where(projects.Project.slug == "lung")))}
        runner.run_until_idle()
        assert states() == {"carol": (STOPPED, "left-project"), "dave": (RUNNING, ""),
                            "erin": (RUNNING, ""), "frank": (RUNNING, "")}
        assert not Path(spaces["carol"].scratch).exists()
        with hub.sessions() as s:  # its project-bound token is revoked with it
            assert s.scalar(select(ApiToken.revoked_at).where(
                ApiToken.prefix == s.get(Workspace, spaces["carol"].id).token_prefix)) is not None
        # an operator deactivates erin, and heart is closed: the periodic check stops theirs
        with transaction(hub.sessions) as s:
            identity.deactivate_user(s, Actor.system("test"), s.get(User, erin.user.id))
            s.scalar(select(projects.Project).where(projects.Project.slug == "heart")).status = "closed"
            s.add(Job(kind="workspaces.access", payload={}))
        runner.run_until_idle()
        assert states() == {"carol": (STOPPED, "left-project"), "dave": (RUNNING, ""),
                            "erin": (STOPPED, "owner-deactivated"), "frank": (STOPPED, "project-ended")}
    finally:
        for ws in spaces.values():
            _stop(hub, ws)


def _squeue(slurm, job_id: str) -> str:  # noqa: F811
    done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %R"], capture_output=True, text=True,
                          env={**os.environ, "SLURM_CONF": str(slurm.conf)}, timeout=30, check=False)
    return done.stdout.strip()


@pytest.fixture
def cluster_user() -> Iterator[tuple[str, int]]:
    """A local Linux account standing for a member's cluster account (the one node is this machine)."""
    import pwd

    name = f"srt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                    "/usr/sbin/nologin", "--user-group", name], check=True, capture_output=True)
    try:
        yield name, pwd.getpwnam(name).pw_uid
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.fixture
def shared_python(scratch_dir: Path) -> Iterator[Path]:
    """An interpreter any user may run: this machine's Python lives under /root (0700), so its installation is
    bind-mounted read-only elsewhere and a venv-like folder points at it and at the shared venv's packages; a
    wrapper runs it with this checkout's sources (as an installed hub's nodes run the hub's environment)."""
    base = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    tag = uuid.uuid4().hex[:8]
    root, venv = Path(f"/run/srtest-python-{tag}"), Path(f"/dev/shm/srtest-venv-{tag}")
    root.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(base), str(root)], check=True, capture_output=True)
    try:
        (venv / "bin").mkdir(parents=True)
        (venv / "lib" / version).mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(root / "bin" / version)
        (venv / "pyvenv.cfg").write_text(f"home = {root}/bin\ninclude-system-site-packages = false\n")
        (venv / "lib" / version / "site-packages").symlink_to(Path(sys.prefix) / "lib" / version / "site-packages")
        wrapper = venv / "python.sh"
        wrapper.write_text(f"#!/bin/sh\nexport PYTHONPATH={SRC} LD_LIBRARY_PATH={root}/lib\n"
                           f'exec {venv}/bin/python "$@"\n')
        wrapper.chmod(0o755)
        for path in (venv, venv / "bin", venv / "lib", venv / "lib" / version):
            path.chmod(0o755)
        yield wrapper
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True, check=False)
        root.rmdir()
        shutil.rmtree(venv, ignore_errors=True)


def test_slurm_job_runs_as_the_members_cluster_account(hub, people, live: str, slurm,  # noqa: F811
                                                       cluster_user: tuple[str, int], shared_python: Path) -> None:
    """The Slurm launcher: refused without the member's cluster account; with one (set by an operator, audited)
    sbatch runs as it into the booking's reservation (sr-<id>) with its GPUs: the job's processes — JupyterLab,
    its kernel, the read-only data mount — run as that uid, reached through the proxy like a local one; the
    booking's end stops it (scancel), unmounts the data and wipes the scratch."""
    import time

    from strongroom.audit.service import Actor
    from strongroom.compute.models import Booking
    from strongroom.errors import Conflict
    from strongroom.identity.models import User

    account, uid = cluster_user
    settings = hub.settings.model_copy(update={
        "workspaces": hub.settings.workspaces.model_copy(update={
            "launcher": "slurm", "slurm_host": "127.0.0.1", "start_timeout_seconds": 120,
            "python": str(shared_python)}),
        "compute": hub.settings.compute.model_validate({
            "machines": {"dgx2": {"gpus": 16, "slurm_license": LICENSE}},
            "slurm": {"enabled": True, "slurm_conf": slurm.conf}})})
    hub.settings = settings
    people("alice")
    make_project(hub, "lung", pi="alice")
    make_project(hub, "heart", pi="alice")
    carol, carol_cookie = _member_session(hub, people, "carol", "lung")
    now = dt.datetime.now(dt.UTC)
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(projects.Project.id).where(projects.Project.slug == "lung"))
        booking = Booking(project_id=pid, machine="dgx2", gpus=2, gpu_indices="0,1",
                          start_at=now - dt.timedelta(minutes=5), end_at=now + dt.timedelta(hours=1),
                          booked_by=carol.user.id)
        s.add(booking)
        s.flush()
        name, end = booking.reservation_name, booking.end_at
    # no cluster account: a clear refusal, nothing left behind
    with pytest.raises(Conflict, match="cluster account"):
        _start(hub, carol, "lung")
    with transaction(hub.sessions) as s:
        assert service.set_cluster_account(s, Actor.system("test"), s.get(User, carol.user.id), account) == account
    slurm.scontrol("create", "reservation", f"ReservationName={name}", "StartTime=now", "Duration=60",
                   f"Users=root,{account}", f"Licenses={LICENSE}:2", "Flags=LICENSE_ONLY")
    try:
        ws = _start(hub, carol, "lung")
        try:
            assert ws.launcher == "slurm" and ws.job_id and ws.isolation == "none"
            job = slurm.scontrol("-o", "show", "job", ws.job_id)
            assert f"Reservation={name}" in job and "JobState=RUNNING" in job, job
            assert f"{LICENSE}:2" in job and "gpu:2" in job, job
            assert f"UserId={account}({uid})" in job, job
            path = service.base_path("lung", ws.id)
            where, cookies = opened(live, path, carol_cookie)
            assert httpx.get(f"{where}{path}api/status", cookies=cookies, timeout=30).status_code == 200
            assert service.jupyter_token(hub.secret, ws.id) not in (Path(ws.scratch) / ".job.sh").read_text()
            # inside: the kernel and the data mount's daemon run as the member's account; the mount shows lung only
            kernel = Kernel(live, path, carol_cookie)
            try:
                _, printed = kernel.run(
                    "import json, os\n"
                    "home = os.path.expanduser('~/data')\n"
                    "line = next(m for m in open('/proc/self/mounts') if m.split()[1] == home)\n"
                    "print(json.dumps({'uid': os.getuid(), 'data': sorted(os.listdir(home)),\n"
                    "    'files': sorted(os.listdir(home + '/lung')), 'mount_uid': os.stat(home).st_uid,\n"
                    "    'mounted_by': line.split()[3].split('user_id=')[1].split(',')[0]}))")
            finally:
                kernel.close()
            inside = json.loads(printed)
            # the mount was made by the account too (FUSE's user_id), not by root
            assert inside == {"uid": uid, "data": ["lung"], "files": ["files"], "mount_uid": uid,
                              "mounted_by": str(uid)}, printed
            mount = Path(ws.scratch) / fuse.MOUNT_NAME
            assert fuse.mounted(mount)
            with transaction(hub.sessions) as s:
                assert service.check_bookings(s, hub.settings, now=end) == {"warned": 0, "stopped": 1}
            deadline = time.monotonic() + 60
            while _squeue(slurm, ws.job_id) and time.monotonic() < deadline:  # scancel is asynchronous
                time.sleep(0.2)
            assert _squeue(slurm, ws.job_id) == ""
            assert not fuse.mounts_under(Path(ws.scratch)) and not Path(ws.scratch).exists()
        finally:
            _stop(hub, ws)
    finally:
        slurm.scontrol("delete", f"ReservationName={name}")
    with transaction(hub.sessions) as s:
        started = s.scalar(select(AuditEvent).where(AuditEvent.target == f"workspace:{ws.id}",
                                                    AuditEvent.action == "workspace.started"))
        assert started.details["cluster_account"] == account
        assert s.scalar(select(AuditEvent).where(AuditEvent.action == "workspace.cluster_account.set")
                        ).details == {"account": account, "before": ""}


def test_project_bound_token_sees_one_project(hub, app, people) -> None:
    """The workspace's token kind: bound to one project, the caller's other projects do not exist for it."""
    from fastapi.testclient import TestClient

    from conftest import bearer
    from strongroom.audit.service import Actor
    from strongroom.identity import service as identity
    from strongroom.identity.models import User

    alice_id = people("alice").user.id
    make_project(hub, "lung", pi="alice")
    make_project(hub, "heart", pi="alice")
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(projects.Project.id).where(projects.Project.slug == "lung"))
        alice = s.get(User, alice_id)
        token, plaintext = identity.create_project_token(s, Actor.system("test"), alice, project_id=pid,
                                                         name="workspace", scopes=service.TOKEN_SCOPES, minutes=5)
        prefix = token.prefix
    c = TestClient(app)
    assert [p["slug"] for p in c.get("/api/v1/projects", headers=bearer(plaintext)).json()] == ["lung"]
    assert c.get("/api/v1/projects/lung", headers=bearer(plaintext)).status_code == 200
    assert c.get("/api/v1/projects/heart", headers=bearer(plaintext)).status_code == 404
    with transaction(hub.sessions) as s:
        identity.revoke_token_by_prefix(s, Actor.system("test"), prefix)
    assert c.get("/api/v1/projects/lung", headers=bearer(plaintext)).status_code == 401


def test_kernel_reads_a_shared_dicom_and_saves_a_result(hub, people, live: str, tmp_path: Path) -> None:
    """The data path inside a workspace: code in the kernel (over the proxied websocket) opens a DICOM instance
    of a dataset shared into the project through ``strongroom://`` with pydicom — with the workspace's
    project-bound token and no secret key, so the plaintext route, which the project's locked download setting
    does not stop for a workspace's own token from the workspace's address (the same token from elsewhere is
    refused) — and saves a result back with ``fs.put``: it is archived encrypted in the
    project. The hub audits each read naming the member, the workspace's token and the dataset."""
    from imaging_support import archived_bytes, write_corpus
    from strongroom.archive.backend import storage_for
    from strongroom.archive.models import READY, ArchiveFile, Dataset, DatasetShare
    from strongroom.imaging import bulk
    from strongroom.jobs.runner import Runner

    # The kernel runs the strongroom client under test (this checkout), as an installed hub's would its own: the
    # settings' interpreter (``shared_python``) puts this checkout's sources first.
    people("alice")
    people("bob")
    make_project(hub, "lung", pi="alice", profile={"retain_longitudinal": "modified"})
    make_project(hub, "heart", pi="bob")
    write_corpus(tmp_path / "dicom", patients=1, studies=1, series=1, instances=2)
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "dicom", workers=1)
    assert report.archived == 2 and report.published_version == 1
    carol, carol_cookie = _member_session(hub, people, "carol", "heart")
    with transaction(hub.sessions) as s:
        lung = s.scalar(select(projects.Project).where(projects.Project.slug == "lung"))
        heart = s.scalar(select(projects.Project).where(projects.Project.slug == "heart"))
        dataset = s.scalar(select(Dataset.id).where(Dataset.project_id == lung.id))
        s.add(DatasetShare(dataset_id=dataset, project_id=heart.id, shared_by=lung.pi_id))
        assert not projects.get_setting(s, heart.id, "download_allowed")  # locked: the point of in-platform work
        heart_id = heart.id
    ws = _start(hub, carol, "heart")
    try:
        kernel = Kernel(live, service.base_path("heart", ws.id), carol_cookie)
        try:
            _, printed = kernel.run(
                "import fsspec, pydicom\n"
                # an installed hub publishes strongroom:// through its `fsspec.specs` entry point (test_fsspec
                # checks it); an editable install older than the entry point lacks it, so register it the same way
                "if 'strongroom' not in fsspec.available_protocols():\n"
                "    fsspec.register_implementation('strongroom', 'strongroom.fs.StrongroomFileSystem')\n"
                "fs = fsspec.filesystem('strongroom')\n"
                f"names = sorted(fs.find('strongroom://heart/{dataset}'))\n"
                "with fsspec.open('strongroom://' + names[0]).open() as fh:\n"
                "    ds = pydicom.dcmread(fh)\n"
                "print(fs.via, fs.info(names[0])['id'], ds.PatientID, ds.Rows)\n"
                "with open('summary.csv', 'w') as out:\n"
                "    out.write(f'patient,rows\\n{ds.PatientID},{ds.Rows}\\n')\n"
                "fs.put('summary.csv', 'strongroom://heart/files/results/summary.csv')\n"
                "print('saved')")
            assert printed.split()[-1] == "saved", printed
            via, file_id, patient_id, rows = printed.split()[:4]
            # from inside: DRS offers the plaintext method to the workspace's token; datasets are not its business
            _, printed = kernel.run(
                "import httpx, os\n"
                "u, h = os.environ['STRONGROOM_URL'], {'Authorization': 'Bearer ' + os.environ['STRONGROOM_TOKEN']}\n"
                f"m = httpx.get(f'{{u}}/ga4gh/drs/v1/objects/{file_id}', headers=h).json()['access_methods']\n"
                "d = httpx.post(f'{u}/api/v1/projects/heart/datasets', headers=h, json={'title': 'x'})\n"
                "print(','.join(x['access_id'] for x in m), d.status_code, os.environ['STRONGROOM_TOKEN'])")
            methods, created, token = printed.split()
            assert methods.split(",")[0] == "plaintext" and created == "403", printed
            # the same data as files: the read-only FUSE mount at ~/data (strongroom://, through the hub's API)
            _, printed = kernel.run(
                "import errno, hashlib, json, os, pydicom\n"
                "home = os.path.expanduser('~/data')\n"
                f"folder = os.path.join(home, 'heart', '{dataset}')\n"
                "names = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)\n"
                "raw = open(names[0], 'rb').read()\n"
                "ds = pydicom.dcmread(names[0])\n"
                "def refused(fn):\n"
                "    try:\n"
                "        fn()\n"
                "        return 'allowed'\n"
                "    except OSError as e:\n"
                "        return errno.errorcode.get(e.errno, str(e.errno))\n"
                "print(json.dumps({'top': sorted(os.listdir(home)), 'project': sorted(os.listdir(home + '/heart')),\n"
                "    'other': refused(lambda: os.listdir(home + '/lung')), 'sha': hashlib.sha256(raw).hexdigest(),\n"
                "    'rows': int(ds.Rows), 'count': len(names),\n"
                "    'append': refused(lambda: open(names[0], 'ab')),\n"
                "    'create': refused(lambda: open(os.path.join(folder, 'new.txt'), 'w')),\n"
                "    'unlink': refused(lambda: os.unlink(names[0])),\n"
                "    'mkdir': refused(lambda: os.mkdir(os.path.join(home, 'heart', 'x'))),\n"
                "    'rename': refused(lambda: os.rename(names[0], names[0] + '.x'))}))")
            mounted = json.loads(printed)
        finally:
            kernel.close()
        assert mounted["top"] == ["heart"] and mounted["other"] == "ENOENT", mounted  # another project: not there
        assert dataset in mounted["project"] and "files" in mounted["project"], mounted
        assert mounted["count"] == 2 and mounted["rows"] == 64
        assert mounted["sha"] == hashlib.sha256(archived_bytes(hub, file_id)).hexdigest()  # the plaintext, exactly
        assert {mounted[k] for k in ("append", "create", "unlink", "mkdir", "rename")} <= {"EROFS", "EACCES"}, mounted
        expected = pydicom_dataset(archived_bytes(hub, file_id))
        assert via == "plaintext"
        # the same token copied out of the notebook, used from this machine's loopback (not the workspace's
        # address): the plaintext route refuses, and DRS does not offer the method
        outside = httpx.Client(base_url=live, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        refused = outside.get(f"/api/v1/files/{file_id}/plaintext")
        expect = 403 if ws.isolation == "namespace" else 200  # unisolated, loopback *is* the workspace's address
        assert refused.status_code == expect, refused.text
        if expect == 403:
            assert "read it in a workspace" in refused.json()["detail"]
            offered = outside.get(f"/ga4gh/drs/v1/objects/{file_id}").json()["access_methods"]
            assert "plaintext" not in [m["access_id"] for m in offered]
        assert (patient_id, rows) == (str(expected.PatientID), str(expected.Rows)) and rows == "64"
        # the result: uploaded encrypted to the hub's key, ingested into heart's archive
        Runner(hub, lease_seconds=10, name="test").run_until_idle()
        with transaction(hub.sessions) as s:
            saved = s.scalar(select(ArchiveFile).where(ArchiveFile.project_id == heart_id,
                                                       ArchiveFile.path == "results/summary.csv"))
            assert saved is not None and saved.state == READY and saved.uploader_id == carol.user.id
            saved_id, body_key = saved.id, saved.body_key
        plain = f"patient,rows\n{patient_id},{rows}\n".encode()
        assert archived_bytes(hub, saved_id) == plain
        with storage_for(hub).open_reader(body_key) as body:
            assert patient_id.encode() not in body.read()  # the stored body is ciphertext
        with transaction(hub.sessions) as s:
            reads = list(s.scalars(select(AuditEvent).where(AuditEvent.target == f"file:{file_id}",
                                                            AuditEvent.action == "archive.download.started")
                                   .order_by(AuditEvent.seq)))
            assert reads and all(e.actor_id == carol.user.id for e in reads)
            assert {(e.details["mode"], e.details["basis"], e.details["dataset"], e.details["credential"],
                     e.details["allowed_as"]) for e in reads} == {
                ("plaintext", "share", dataset, f"token:{ws.token_prefix}", f"workspace:{ws.id}")}
            assert len(reads) >= 2  # the fsspec read and the mount's (every read through the hub's API, audited)
            uploads = list(s.scalars(select(AuditEvent).where(AuditEvent.target == f"file:{saved_id}")
                                     .order_by(AuditEvent.seq)))
            by_carol = [e.action for e in uploads if e.actor_id == carol.user.id]
            assert by_carol[:2] == ["archive.upload.started", "archive.upload.completed"], by_carol
    finally:
        _stop(hub, ws)
    # stopped: the mount is gone with the scratch space (nothing of the plaintext is left there)
    assert not fuse.mounts_under(Path(ws.scratch)) and not Path(ws.scratch).exists()


def pydicom_dataset(data: bytes):
    import io

    import pydicom

    return pydicom.dcmread(io.BytesIO(data))


def test_operators_set_cluster_accounts(hub, app, people) -> None:
    """A member's cluster account: set by an operator over the API (fresh MFA, audited), listed, removed;
    others get 404; a name that is no POSIX user name, or root, is refused."""
    from fastapi.testclient import TestClient

    from conftest import bearer, token_for

    carol = people("carol")
    olga = people("olga", admin=True)
    c = TestClient(app)
    admin, member = bearer(token_for(hub, olga, ["admin"])), bearer(token_for(hub, carol))
    url = f"/api/v1/workspaces/cluster-accounts/{carol.user.id}"
    assert c.put(url, json={"account": "carol"}, headers=member).status_code == 404
    assert c.get("/api/v1/workspaces/cluster-accounts", headers=member).status_code == 404
    for bad in ("root", "Carol Smith", "x;rm"):
        assert c.put(url, json={"account": bad}, headers=admin).status_code == 422, bad
    r = c.put(url, json={"account": "cjones"}, headers=admin)
    assert r.status_code == 200 and r.json()["account"] == "cjones"
    assert [a["account"] for a in c.get("/api/v1/workspaces/cluster-accounts", headers=admin).json()] == ["cjones"]
    assert c.put(url, json={"account": ""}, headers=admin).json()["account"] == ""
    assert c.get("/api/v1/workspaces/cluster-accounts", headers=admin).json() == []
    with transaction(hub.sessions) as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "workspace.cluster_account.set")
                                .order_by(AuditEvent.seq)))
        assert [(e.actor_id, e.subject_user_id, e.details) for e in events] == [
            (olga.user.id, carol.user.id, {"account": "cjones", "before": ""}),
            (olga.user.id, carol.user.id, {"account": "", "before": "cjones"})]
# -- the package mirror (a locked project setting) ---------------------------------------------------------
MIRROR_NS, MIRROR_HOST_IP, MIRROR_IP = f"srtest-mirr{WORKER}", f"10.215.{WORKER}.1", f"10.215.{WORKER}.2"
MIRROR_HOST_IF, MIRROR_NS_IF = f"srtmh{WORKER}", f"srtmn{WORKER}"
MIRROR_PORT, UNLISTED_PORT = 18091, 18092  # the project's mirror; another index on the same host, not listed
WHEEL_NAME = "srmirrortest"


def _wheel(directory: Path) -> Path:
    """A minimal pure-Python wheel (``srmirrortest`` 1.0: ``ANSWER = 42``), built by hand."""
    import base64
    import hashlib
    import zipfile

    info = f"{WHEEL_NAME}-1.0.dist-info"
    files = {f"{WHEEL_NAME}/__init__.py": b"ANSWER = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {WHEEL_NAME}\nVersion: 1.0\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: strongroom-test\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},{digest(data)},{len(data)}\n" for name, data in files.items()) + f"{info}/RECORD,,\n"
    path = directory / f"{WHEEL_NAME}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record)
    return path


@pytest.fixture
def mirror() -> Iterator[str]:
    """A PEP 503 simple index holding one small wheel, served over HTTP from its own network namespace on two
    ports: ``MIRROR_PORT`` (the project's mirror) and ``UNLISTED_PORT`` (an index nobody listed)."""
    import hashlib

    root = Path("/dev/shm") / f"srtest-mirror-{uuid.uuid4().hex[:8]}"
    (root / "packages").mkdir(parents=True)
    wheel = _wheel(root / "packages")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (root / "simple" / WHEEL_NAME).mkdir(parents=True)
    (root / "simple" / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{WHEEL_NAME}/">{WHEEL_NAME}</a></body></html>\n')
    (root / "simple" / WHEEL_NAME / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="../../packages/{wheel.name}#sha256={sha}">{wheel.name}</a>'
        "</body></html>\n")
    ns = ["ip", "netns", "exec", MIRROR_NS]
    _test_host(MIRROR_NS, MIRROR_HOST_IF, MIRROR_NS_IF, MIRROR_HOST_IP, MIRROR_IP)
    servers = []
    try:
        for port in (MIRROR_PORT, UNLISTED_PORT):
            servers.append(subprocess.Popen(
                [*ns, sys.executable, "-m", "http.server", str(port), "--bind", MIRROR_IP, "--directory", str(root)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in (MIRROR_PORT, UNLISTED_PORT):
            _wait_port(MIRROR_NS, MIRROR_IP, port)
        yield f"http://{MIRROR_IP}:{MIRROR_PORT}/simple/"
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", MIRROR_HOST_IF], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", MIRROR_NS], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


PIP = ("import os, subprocess, sys\n"
       "def pip(*args):\n"
       "    done = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-cache-dir', '--retries', '0',\n"
       "                           '--timeout', '10', '--target', os.path.expanduser('~/pkgs-' + str(len(args))),\n"
       "                           *args], capture_output=True, text=True, timeout=300)\n"
       "    return 'installed' if done.returncode == 0 else 'failed:' + ' '.join(done.stdout.split()[-12:] +\n"
       "                                                                       done.stderr.split()[-12:])\n")


def test_settings_reject_a_bad_mirror_url() -> None:
    from pydantic import ValidationError

    from strongroom.workspaces import settings as ws_settings

    adapter = ws_settings.PACKAGE_MIRROR_SETTING.adapter
    assert adapter.validate_python(" ") == ""
    assert adapter.validate_python("site") == "site"  # a project names an operator's mirror, never a URL
    for bad in ("https://pypi.example.org/simple", "http://x:99999/", "not a name", "-x"):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)
    assert ws_settings.endpoint("https://pypi.example.org/simple/") == ("pypi.example.org", 443)
    assert ws_settings.endpoint("http://10.0.0.5:3141/root/pypi/+simple/") == ("10.0.0.5", 3141)
    assert ws_settings.pip_env("")["PIP_NO_INDEX"] == "1"
    env = ws_settings.pip_env("http://10.0.0.5:3141/simple/")
    assert env["PIP_INDEX_URL"] == "http://10.0.0.5:3141/simple/" and env["PIP_TRUSTED_HOST"] == "10.0.0.5:3141"
    assert "PIP_TRUSTED_HOST" not in ws_settings.pip_env("https://pypi.example.org/simple/")


@pytest.mark.skipif(NO_NETNS is not None, reason=f"network namespaces need root with ip and nft: {NO_NETNS}")
def test_pip_installs_from_the_project_mirror_only(hub, app, people, live: str, mirror: str) -> None:
    """The locked ``workspace_package_mirror`` setting: the PI sets it (fresh MFA, audited); a workspace started
    then has pip pointed at it and its namespace may reach exactly that host and port — ``pip install`` of the
    mirror's wheel succeeds from the kernel, an unlisted index on the same host is unreachable. Locked again
    (none): a new workspace's pip uses no index, and the mirror itself is unreachable."""
    from conftest import web_client
    from helpers import form_post

    alice = people("alice")
    make_project(hub, "lung", pi="alice")
    carol, carol_cookie = _member_session(hub, people, "carol", "lung")
    pi = web_client(app, hub, alice)
    page = pi.get("/projects/lung")
    assert page.status_code == 200 and "Package mirror for notebook workspaces" in page.text
    set_it = form_post(pi, "/projects/lung/settings/workspace_package_mirror", {"value": "site"})
    assert set_it.status_code == 303, set_it.text
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(projects.Project.id).where(projects.Project.slug == "lung"))
        assert service.package_mirror(s, pid) == "site"
        assert service.allowed_destinations(s, hub.settings, pid) == [(MIRROR_IP, MIRROR_PORT)]
        opened = s.scalars(select(AuditEvent).where(AuditEvent.target == "setting:workspace_package_mirror")
                           .order_by(AuditEvent.seq)).all()
        assert [(e.action, e.details["before"], e.details["after"]) for e in opened] == [
            ("project.setting.opened", "", "site")]
    unlisted = mirror.replace(f":{MIRROR_PORT}/", f":{UNLISTED_PORT}/")
    ws = _start(hub, carol, "lung")
    try:
        kernel = Kernel(live, service.base_path("lung", ws.id), carol_cookie)
        try:
            _, printed = kernel.run(PIP + PROBE + (
                "import os\n"
                f"print(os.environ.get('PIP_INDEX_URL'), pip('{WHEEL_NAME}').replace(' ', '_'), "
                f"pip('--index-url', '{unlisted}', '--force-reinstall', '{WHEEL_NAME}').split(':')[0], "
                f"probe('{MIRROR_IP}', {UNLISTED_PORT}))\n"
                "sys.path.insert(0, os.path.expanduser('~/pkgs-1'))\n"
                f"import {WHEEL_NAME}; print('ANSWER', {WHEEL_NAME}.ANSWER)"))
            index, installed, from_unlisted, unlisted_probe = printed.split()[:4]
            assert (index, installed) == (mirror, "installed"), printed
            assert from_unlisted == "failed" and unlisted_probe in ("refused", "TimeoutError"), printed
            assert "ANSWER 42" in printed, printed
        finally:
            kernel.close()
    finally:
        _stop(hub, ws)
    with transaction(hub.sessions) as s:
        started = s.scalar(select(AuditEvent).where(AuditEvent.target == f"workspace:{ws.id}",
                                                    AuditEvent.action == "workspace.started"))
        assert started.details["package_mirror"] == mirror
        assert started.details["allowed"] == [f"{MIRROR_IP}:{MIRROR_PORT}"]
    # locked again (none): pip is told to use no index, and the mirror is out of reach too
    lock = form_post(pi, "/projects/lung/settings/workspace_package_mirror", {"value": ""})
    assert lock.status_code == 303, lock.text
    with transaction(hub.sessions) as s:
        assert service.package_mirror(s, pid) == "" and service.allowed_destinations(s, hub.settings, pid) == []
    ws = _start(hub, carol, "lung")
    try:
        kernel = Kernel(live, service.base_path("lung", ws.id), carol_cookie)
        try:
            _, printed = kernel.run(PIP + PROBE + (
                "import os\n"
                f"print(os.environ.get('PIP_NO_INDEX'), pip('{WHEEL_NAME}').split(':')[0], "
                f"pip('--index-url', '{mirror}', '{WHEEL_NAME}').split(':')[0], probe('{MIRROR_IP}', {MIRROR_PORT}))"))
            no_index, default, explicit, probed = printed.split()[:4]
            assert (no_index, default, explicit) == ("1", "failed", "failed"), printed
            assert probed in ("refused", "TimeoutError"), printed
        finally:
            kernel.close()
    finally:
        _stop(hub, ws)
