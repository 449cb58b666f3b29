"""Upload and download throughput of the hub's SFTP server (``strongroom.sftp.server``: crypt4gh-encrypted as
the bytes arrive, decrypted in memory on the way out, every operation authorised against the database) against
a plain asyncssh SFTP server writing to and reading from a local directory — the same SSH stack and the same
client (OpenSSH ``sftp -b``), without the archive.

    python benchmarks/bench_sftp.py [--size-mib 256] [--repeat 3]

(a) baseline put / get: asyncssh.SFTPServer rooted in a temp directory (plaintext on disk);
(b) hub put: into /<project>/uploads/ (sealed part by part, quota, audit; the ingest job is not timed);
(c) hub get: the archived file, decrypted range by range in memory (download_allowed opened).
Setup (untimed): a fresh hub under /tmp (embedded SQLite), a user with a registered ed25519 key, a project.
Both servers run on their own event-loop thread in this process; the client is the OpenSSH process.

Not a test. Absolute numbers swing on a shared machine; read the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _support import MIB, build_hub, fresh_dir, person_with_project, principal_for


class Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def sftp(port: int, key: Path, known: Path, user: str, *commands: str) -> float:
    batch = key.parent / "batch"
    batch.write_text("\n".join(commands) + "\n")
    started = time.perf_counter()
    done = subprocess.run(["sftp", "-q", "-P", str(port), "-i", str(key), "-o", "IdentitiesOnly=yes", "-o",
                           "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                           "-F", "/dev/null", "-b", str(batch), f"{user}@127.0.0.1"], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"sftp failed: {done.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("sftp") is None:
        sys.exit("needs the OpenSSH sftp client (openssh-client)")
    import asyncssh

    from strongroom.db import transaction
    from strongroom.jobs.runner import Runner
    from strongroom.projects.models import Project, ProjectSetting
    from strongroom.sftp import server, service

    with fresh_dir("bench-sftp-") as tmp:
        bench = build_hub(tmp)
        hub = bench.hub
        token = person_with_project(hub, "alice", "lung")
        principal = principal_for(hub, token)
        key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        with transaction(hub.sessions) as s:
            service.add_key(s, principal, key.with_suffix(".pub").read_text(), comment=None, fresh_minutes=15)
            project = s.query(Project).filter_by(slug="lung").one()
            s.add(ProjectSetting(project_id=project.id, key="download_allowed", value=True, changed_by=project.pi_id))
        src = tmp / "data.bin"
        with src.open("wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(MIB))
        loop = Loop()
        hub_acceptor = loop.run(server.start(hub, "127.0.0.1", 0))
        root = tmp / "plain-root"
        root.mkdir()
        plain_key = asyncssh.generate_private_key("ssh-ed25519")

        async def plain() -> Any:
            return await asyncssh.create_server(
                asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[plain_key],
                authorized_client_keys=asyncssh.import_authorized_keys(key.with_suffix(".pub").read_text()),
                sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(root).encode()))
        plain_acceptor = loop.run(plain())
        ports = {"hub": hub_acceptor.sockets[0].getsockname()[1], "plain": plain_acceptor.sockets[0].getsockname()[1]}
        known = tmp / "known_hosts"
        known.write_text(
            f"[127.0.0.1]:{ports['hub']} {server.host_key(hub).export_public_key().decode().strip()}\n"
            f"[127.0.0.1]:{ports['plain']} {plain_key.export_public_key().decode().strip()}\n")
        times: dict[str, list[float]] = {k: [] for k in ("plain put", "hub put", "plain get", "hub get")}
        for i in range(args.repeat):
            times["plain put"].append(sftp(ports["plain"], key, known, "alice", f"put {src} /d{i}.bin"))
            times["hub put"].append(sftp(ports["hub"], key, known, "alice", f"put {src} /lung/uploads/d{i}.bin"))
            Runner(hub, lease_seconds=60, name="bench").run_until_idle()
            times["plain get"].append(sftp(ports["plain"], key, known, "alice", f"get /d{i}.bin {tmp / 'out'}"))
            times["hub get"].append(sftp(ports["hub"], key, known, "alice",
                                         f"get /lung/uploads/d{i}.bin {tmp / 'out'}"))
            assert (tmp / "out").stat().st_size == src.stat().st_size
        hub_acceptor.close()
        plain_acceptor.close()
        loop.stop()
        median = {k: statistics.median(v) for k, v in times.items()}
        print(f"{args.size_mib} MiB, median of {args.repeat}")
        for k, v in median.items():
            print(f"  {k:10s} {v:7.2f} s  {args.size_mib / v:7.1f} MiB/s")
        print(f"hub put / plain put: {median['hub put'] / median['plain put']:.2f}x the time")
        print(f"hub get / plain get: {median['hub get'] / median['plain get']:.2f}x the time")


if __name__ == "__main__":
    main()
