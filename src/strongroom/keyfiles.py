"""Secret files the hub creates on first use (the hub secret, the visa signing key, the key-store key).

Standard library and ``paths`` only: ``config`` imports it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .paths import private_dir

T = TypeVar("T")
_LOADED: dict[Path, tuple[tuple[int, int], Any]] = {}  # key file -> ((inode, mtime), parsed key)


def read_or_create(path: Path, make: Callable[[], str]) -> str:
    """The file's text, created with ``make()`` if it does not exist yet (mode 0600, fsynced).

    Concurrent first uses are safe: the file appears atomically (a hard link to a complete temporary
    file), and whoever loses the race reads the winner's content — nobody ever reads a half-written key."""
    if not path.exists():
        private_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text()


def replace(path: Path, text: str) -> None:
    """Put ``text`` in ``path`` atomically (mode 0600): readers see the old file or the new one, never a
    half-written key; once this returns the new content and its name are on disk."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path, make: Callable[[], str], parse: Callable[[str], T]) -> T:
    """The key in ``path`` (created with ``make()`` on first use, as ``read_or_create``), parsed once and read
    again only when the file changes: after a rotation on any host sharing the folder, every process uses the new
    key from its next use, without a restart. Costs one ``stat`` per use."""
    if not path.exists():
        read_or_create(path, make)
    st = path.stat()  # taken before the read: a file replaced in between is read again next time
    stamp = (st.st_ino, st.st_mtime_ns)
    cached = _LOADED.get(path)
    if cached is not None and cached[0] == stamp:
        value: T = cached[1]
        return value
    value = parse(path.read_text())
    _LOADED[path] = (stamp, value)
    return value
