"""The hub's state on disk is the hub's alone: its folders are made 0700 and its database 0600, whatever the umask.

A local workspace runs under a uid of its own on the hub's machine (docs/workspaces.md), and that uid reads what
"others" may read: a folder made with ``mkdir(parents=True)`` under the usual umask 022 is 0755, a SQLite database
0644. So every folder of the hub's state (``var_dir``, its keys, spool, archive storage, temporary files) is made
through ``private_dir``, the SQLite database through ``private_file``, and at start ``secure_var_dir`` tightens a
``var_dir`` an older hub left open and ``check_config_file`` warns of a configuration file others may read.

Standard library and structlog only: ``keyfiles``, which ``config`` imports, uses it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from .config import Settings

log = structlog.get_logger("strongroom.paths")

PRIVATE = 0o700  # a folder of the hub's state: its uid alone lists, enters and writes it
OPEN_TO_OTHERS = 0o077  # any right of the group or of others

# Folders of the machine, never the hub's to tighten or to hide (a hub started in / with the default var_dir,
# "var", would otherwise close /var to every other user of the machine).
SYSTEM_FOLDERS = frozenset(map(Path, ("/", "/var", "/var/lib", "/var/cache", "/var/log", "/var/spool", "/var/tmp",
                                      "/tmp", "/srv", "/opt", "/home", "/root", "/usr", "/usr/local", "/etc", "/run",
                                      "/dev", "/dev/shm", "/mnt", "/media")))


def private_dir(path: Path) -> Path:
    """``path`` as a folder, made — with every missing folder above it — mode 0700 exactly, whatever the umask.
    A folder that exists already is left as it is."""
    path = Path(path)
    missing: list[Path] = []
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # another process made it meanwhile: theirs to have made right
        os.chmod(folder, PRIVATE)  # a umask such as 0277 takes the owner's rights too
    return path


def private_file(path: Path) -> None:
    """Make ``path`` empty, mode 0600, unless it exists; one that exists and others may read is tightened
    (``tighten``). For files another program fills (SQLite: its -wal and -shm take the database's mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        tighten(path)


def tighten(path: Path) -> bool:
    """Take every right of the group and of others from ``path`` when it is the hub's own (its uid), saying so in a
    warning; one that is not the hub's is only warned of. True when changed."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    mode = stat.S_IMODE(info.st_mode)
    if not mode & OPEN_TO_OTHERS:
        return False
    if info.st_uid != os.geteuid():
        log.warning("state.open_to_others", path=str(path), mode=f"{mode:04o}", owner_uid=info.st_uid,
                    advice=f"not the hub's to change: its owner should run chmod go-rwx {path}")
        return False
    if os.statvfs(path).f_flag & os.ST_RDONLY:  # a container's state mounted read-only: nothing to write here
        log.warning("state.open_to_others", path=str(path), mode=f"{mode:04o}", owner_uid=info.st_uid,
                    advice=f"mounted read-only: make it 0700 (chmod go-rwx {path}) where it is written")
        return False
    try:
        os.chmod(path, mode & ~OPEN_TO_OTHERS)
    except OSError as exc:  # a read-only file system (a container's mounted state), or not ours to change after all
        log.warning("state.open_to_others", path=str(path), mode=f"{mode:04o}", owner_uid=info.st_uid,
                    error=exc.strerror, advice=f"could not be tightened here: run chmod go-rwx {path} where it is "
                                               "writable")
        return False
    log.warning("state.tightened", path=str(path), was=f"{mode:04o}", now=f"{mode & ~OPEN_TO_OTHERS:04o}",
                why="the hub's state is for the hub alone: workspaces and other users of the machine read what "
                    "others may read")
    return True


def is_system_folder(path: Path) -> bool:
    return Path(os.path.abspath(path)) in SYSTEM_FOLDERS


def secure_var_dir(var_dir: Path) -> None:
    """At start: ``var_dir`` made 0700 when missing, tightened when an older hub (or an operator) left it open to
    the group or others. A folder of the machine (``SYSTEM_FOLDERS``) is never changed: a warning says to set
    ``var_dir`` to a folder of the hub's own."""
    if is_system_folder(var_dir):
        log.warning("state.var_dir_is_a_system_folder", path=os.path.abspath(var_dir),
                    advice="set var_dir (STRONGROOM_VAR_DIR) to a folder of the hub's own, e.g. /var/lib/strongroom")
        return
    if Path(var_dir).exists():
        tighten(var_dir)
    else:
        private_dir(var_dir)


def config_file() -> Path:
    """The TOML file the settings are read from (as ``config.Settings`` finds it), whether or not it exists."""
    return Path(os.environ.get("STRONGROOM_CONFIG", "strongroom.toml"))


def check_config_file(path: Path | None = None) -> bool:
    """Warn when the configuration file (it holds secrets: database password, storage keys, …) may be read by
    every user of the machine; True when it may. Not refused: development machines and tests."""
    path = config_file() if path is None else path
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not mode & stat.S_IROTH:
        return False
    log.warning("config.readable_by_others", path=os.path.abspath(path), mode=f"{mode:04o}",
                advice=f"it holds the hub's secrets and every user of the machine may read it: chmod 600 {path}")
    return True


def state_folders(settings: Settings) -> list[Path]:
    """The folders holding the hub's state, absolute: ``var_dir`` and, where configured elsewhere, the DICOM spool,
    the local archive storage and the archive's keys (a folder of the machine excepted)."""
    storage = settings.archive.storage
    found = [settings.var_dir, settings.imaging.spool_dir, settings.archive.keys_dir,
             storage.root if storage.kind == "local" else None]
    folders: list[Path] = []
    for folder in found:
        if folder is not None and not is_system_folder(folder):
            absolute = Path(os.path.abspath(folder))
            if absolute not in folders:
                folders.append(absolute)
    return folders
