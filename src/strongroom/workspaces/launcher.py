"""Where a workspace's JupyterLab runs: a ``Launcher`` protocol with a local process launcher (the embedded
default, optionally inside the workspace's network namespace) and a Slurm launcher (``sbatch`` into the
project's booking reservation, or onto free capacity). Pure: no database or web imports.

JupyterLab is started with ``base_url`` = the hub's proxy path, so the hub forwards paths unchanged, and with
its token in ``JUPYTER_TOKEN`` (never on a command line, never sent to the browser: the hub's proxy adds it).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx


class LaunchError(RuntimeError):
    pass


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
    slurm_host: str = ""  # Slurm: the address JupyterLab binds and the hub dials ("": the node's first address)
    run_as: str = ""  # the hub runs as root: JupyterLab runs as this user, with no capabilities
    drop_caps: bool = False  # the hub runs as root and run_as is empty: root without any capability


@dataclass
class Handle:
    """Where it runs: enough to find it again from any hub process."""

    host: str
    port: int
    pid: int | None = None
    job_id: str = ""
    detail: dict[str, str] = field(default_factory=dict)


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
    url = f"http://{host}:{port}{spec.base_url}api/status"
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


def _group_of(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


class LocalLauncher:
    """A JupyterLab process on the hub's machine, in its own process group (stopped as a whole)."""

    kind = "local"

    def start(self, spec: Spec, *, timeout: float) -> Handle:
        port = spec.port or _free_port(spec.listen_ip)
        argv = jupyter_argv(spec, spec.listen_ip, port)
        if spec.run_as:
            # never root inside the workspace: no CAP_NET_ADMIN to change its namespace's rules
            argv = ["setpriv", f"--reuid={spec.run_as}", f"--regid={_group_of(spec.run_as)}", "--clear-groups",
                    "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *argv]
        elif spec.drop_caps:
            argv = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *argv,
                    "--allow-root"]
        if spec.netns:
            argv = ["ip", "netns", "exec", spec.netns, *argv]
        log = open(spec.scratch / ".jupyter.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(argv, env=jupyter_env(spec), cwd=spec.scratch, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        handle = Handle(host=spec.listen_ip, port=port, pid=proc.pid)
        try:
            wait_ready(spec.listen_ip, port, spec, timeout=timeout, alive=lambda: proc.poll() is None)
        except LaunchError as exc:
            self.stop(handle)
            tail = (spec.scratch / ".jupyter.log").read_text(errors="replace")[-400:]
            raise LaunchError(f"{exc}; {tail}") from None
        return handle

    def stop(self, handle: Handle) -> None:
        if handle.pid is None:
            return
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


class SlurmLauncher:
    """A batch job running JupyterLab: in the booking's reservation (``--reservation=sr-<id>``) with its GPUs,
    or on free capacity. The job writes ``host port`` into the scratch directory (shared with the hub) once
    JupyterLab listens; the hub then probes it like a local one."""

    kind = "slurm"

    def __init__(self, *, sbatch: str = "sbatch", scancel: str = "scancel", squeue: str = "squeue",
                 slurm_conf: Path | None = None) -> None:
        self.sbatch, self.scancel, self.squeue, self.slurm_conf = sbatch, scancel, squeue, slurm_conf

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
        host = shlex.quote(spec.slurm_host) if spec.slurm_host else '$(hostname -I | cut -d" " -f1)'
        free_port = f"import socket; s=socket.socket(); s.bind(('{bind}', 0)); print(s.getsockname()[1])"
        return "\n".join([
            "#!/bin/sh",
            "set -eu",
            f"PORT=$({python} -c {shlex.quote(free_port)})",
            f'echo "{host} $PORT" > {shlex.quote(str(spec.scratch / ".where"))}',
            f'exec {shlex.join(argv)} --port="$PORT" --port-retries=0',
            ""])

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

    def start(self, spec: Spec, *, timeout: float) -> Handle:
        script = spec.scratch / ".job.sh"
        script.write_text(self.script(spec))
        env = {**self._env(), **jupyter_env(spec)}
        done = subprocess.run([*self.sbatch_args(spec), str(script)], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        if done.returncode != 0:
            raise LaunchError(f"sbatch: {(done.stderr or done.stdout).strip()}")
        job_id = done.stdout.strip().split(";")[0]
        where = spec.scratch / ".where"
        deadline = time.monotonic() + timeout
        handle = Handle(host="", port=0, job_id=job_id)
        while time.monotonic() < deadline and not where.exists():
            if not self.alive(handle):
                raise LaunchError(f"Slurm job {job_id} ended before JupyterLab listened")
            time.sleep(0.5)
        if not where.exists():
            self.stop(handle)
            raise LaunchError(f"Slurm job {job_id} did not start within {timeout:g} s (queued?)")
        host, port = where.read_text().split()
        handle = Handle(host=host, port=int(port), job_id=job_id)
        try:
            wait_ready(host, int(port), spec, timeout=max(5.0, deadline - time.monotonic()),
                       alive=lambda: self.alive(handle))
        except LaunchError as exc:
            self.stop(handle)
            log = spec.scratch / ".jupyter.log"
            tail = log.read_text(errors="replace")[-1200:] if log.exists() else ""
            raise LaunchError(f"{exc}; {tail}") from None
        return handle

    def stop(self, handle: Handle) -> None:
        if handle.job_id:
            subprocess.run([self.scancel, handle.job_id], capture_output=True, env=self._env(), timeout=60,
                           check=False)

    def alive(self, handle: Handle) -> bool:
        if not handle.job_id:
            return False
        done = subprocess.run([self.squeue, "-h", "-j", handle.job_id, "-o", "%T"], capture_output=True, text=True,
                              env=self._env(), timeout=60, check=False)
        return done.returncode == 0 and done.stdout.strip() in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
