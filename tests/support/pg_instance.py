"""A throwaway PostgreSQL server of a test's own, for tests that stop and start the database (an outage
the suite's shared server at 127.0.0.1:5432 must never suffer).

    with PgInstance.create(tmp_dir) as pg:    # initdb + start on a free loopback port
        pg.url                                  # postgresql://postgres@127.0.0.1:<port>/strongroom
        pg.stop()                               # immediate: as a crash, recovery from the WAL at start
        pg.start()

Runs the server as the ``postgres`` user when the tests run as root (initdb refuses root), else as the
current user. Needs the PostgreSQL server binaries (``missing()`` says why not).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from support.live import free_port

BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14)]


def _bin_dir() -> Path | None:
    return next((d for d in BIN_DIRS if (d / "initdb").exists()), None)


def missing() -> str | None:
    if _bin_dir() is None:
        return "no PostgreSQL server binaries (/usr/lib/postgresql/<version>/bin)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runuser is needed to run PostgreSQL as the postgres user"
    return None


class PgInstance:
    def __init__(self, base: Path) -> None:
        bindir = _bin_dir()
        assert bindir is not None, missing()
        self.bin = bindir
        self.base = base
        self.data = base / "pgdata"
        self.port = free_port()
        self.url = (f"postgresql://postgres@127.0.0.1:{self.port}/strongroom?connect_timeout=3")

    def _as_owner(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def _run(self, *argv: str) -> None:
        done = subprocess.run(self._as_owner(*argv), capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip()}")

    def _ctl(self, *args: str) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), *args)

    def start(self) -> None:
        self._ctl("start", "-w", "-t", "60", "-l", str(self.base / "pg.log"))

    def stop(self) -> None:
        self._ctl("stop", "-m", "immediate", "-w")

    @classmethod
    @contextlib.contextmanager
    def create(cls, parent: Path | None = None) -> Iterator[PgInstance]:
        # not under pytest's basetemp (mode 0700): the postgres user must reach its data directory
        base = Path(tempfile.mkdtemp(prefix="srpg-", dir=parent))
        base.chmod(0o755)
        pg = cls(base)
        try:
            pg.data.mkdir()
            if os.geteuid() == 0:
                shutil.chown(pg.data, "postgres", "postgres")
                shutil.chown(base, "postgres", "postgres")
            pg.data.chmod(0o700)
            pg._run(str(pg.bin / "initdb"), "-D", str(pg.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--locale=C", "--no-sync")
            with open(pg.data / "postgresql.conf", "a") as conf:
                conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {pg.port}\n"
                           f"unix_socket_directories = '{pg.data}'\nfsync = on\n")
            pg.start()
            pg._run(str(pg.bin / "createdb"), "-h", str(pg.data), "-p", str(pg.port), "strongroom")
            yield pg
        finally:
            with contextlib.suppress(Exception):
                pg.stop()
            shutil.rmtree(base, ignore_errors=True)
