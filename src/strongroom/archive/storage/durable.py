"""Crash-safe file system steps for :class:`~.local.LocalStorage`: fsynced directories, bounded readers,
kernel copies."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any, BinaryIO

COPY_CHUNK = 4 * 1024 * 1024


def fsync_path(path: Path, flags: int = 0) -> None:
    """fsync a file or a directory by its path."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_path(path, getattr(os, "O_DIRECTORY", 0))


def makedirs_durable(path: Path, stop: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of every directory it creates (down from ``stop``)."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        if p == stop or p.parent == p:
            break
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)  # the hub's alone, as the root above (``paths.private_dir``)
        except FileExistsError:
            if not d.is_dir():
                raise
        fsync_dir(d.parent)


class BoundedFileReader(io.RawIOBase):
    """Raw reader over ``[start, stop)`` of an open file."""

    def __init__(self, f: BinaryIO, start: int, stop: int) -> None:
        self._f = f
        self._pos = start
        self._stop = stop
        f.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._stop - self._pos)
        if n <= 0:
            return 0
        got = self._f.readinto(memoryview(b)[:n])  # type: ignore[attr-defined]
        self._pos += got or 0
        return got or 0

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def copy_file(src: BinaryIO, dst: BinaryIO) -> int:
    """Copy with the kernel where possible (copy_file_range / sendfile), else in 4 MiB chunks."""
    n = 0
    try:
        size = os.fstat(src.fileno()).st_size
        dst.flush()
        out_fd, in_fd = dst.fileno(), src.fileno()
        while n < size:
            sent = os.copy_file_range(in_fd, out_fd, min(size - n, 1 << 30))
            if sent == 0:
                break
            n += sent
        return n
    except (AttributeError, OSError) as e:
        fallback = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)
        if isinstance(e, OSError) and e.errno not in fallback:
            raise
    src.seek(n)
    while chunk := src.read(COPY_CHUNK):
        dst.write(chunk)
        n += len(chunk)
    return n
