"""A read-only FUSE mount of ``strongroom://`` inside a workspace: ``<workspace home>/data/<project>/files/…``
and ``…/<project>/SRD-…/…``, i.e. exactly what the workspace's project-bound token may read, through the
hub's API (every read is the hub's ``/files/{id}/plaintext`` route, audited there). Nothing is written: the
kernel mount is ``ro`` (writes, creates, unlinks: EROFS) and every writing operation answers EROFS as well.

Run as ``python -m strongroom.workspaces.fuse MOUNTPOINT [--uid N --gid N] [--allow-other]`` with
``STRONGROOM_URL`` / ``STRONGROOM_TOKEN`` in the environment; it serves in the foreground until the mount
point is unmounted (``unmount``) or it gets SIGTERM/SIGINT (libfuse then unmounts). Built on mfusepy (ctypes
bindings of libfuse 3, Debian's ``fuse3``). Pure: no web or database imports; the launchers start it.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MOUNT_NAME = "data"  # <workspace home>/data
ATTR_SECONDS = 10.0  # how long a getattr answer is reused here (the hub's listings have their own caching)


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, FileNotFoundError):
        return errno.ENOENT
    if isinstance(exc, PermissionError):
        return errno.EACCES
    if isinstance(exc, IsADirectoryError):
        return errno.EISDIR
    return errno.EIO


def operations(fs: Any, *, uid: int, gid: int) -> Any:
    """The mfusepy operations over a ``StrongroomFileSystem``: read-only, files 0400 and folders 0500 owned by
    the workspace's user — for it alone: the mount is ``default_permissions``, so the kernel refuses every other
    uid (the hub's root daemon mounts ``allow_other`` for the workspace's uid, not for everyone's)."""
    import mfusepy

    class ReadOnly(mfusepy.Operations):
        use_ns = True

        def __init__(self) -> None:
            self._handles: dict[int, tuple[threading.Lock, Any]] = {}
            self._next_fh = 1
            self._mutex = threading.Lock()
            self._attrs: dict[str, tuple[float, dict[str, Any]]] = {}
            self._started = int(time.time() * 1e9)

        def _call(self, fn: Any, *args: Any) -> Any:
            try:
                return fn(*args)
            except OSError as exc:
                raise mfusepy.FuseOSError(_errno_of(exc)) from None

        @staticmethod
        def _path(path: str) -> str:
            return path.strip("/")

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            name = self._path(path)
            now = time.monotonic()
            with self._mutex:
                held = self._attrs.get(name)
            if held is not None and now - held[0] < ATTR_SECONDS:
                return held[1]
            info = {"name": "", "type": "directory"} if not name else self._call(fs.info, name)
            when = self._started
            if info.get("created"):
                try:
                    import datetime as dt

                    when = int(dt.datetime.fromisoformat(str(info["created"]).replace("Z", "+00:00"))
                               .timestamp() * 1e9)
                except ValueError:
                    pass
            if info["type"] == "file":
                attrs = {"st_mode": stat.S_IFREG | 0o400, "st_nlink": 1, "st_size": int(info["size"])}
            else:
                attrs = {"st_mode": stat.S_IFDIR | 0o500, "st_nlink": 2, "st_size": 0}
            attrs.update(st_uid=uid, st_gid=gid, st_mtime=when, st_ctime=when, st_atime=when)
            with self._mutex:
                self._attrs[name] = (now, attrs)
            return attrs

        def readdir(self, path: str, fh: int) -> list[str]:
            name = self._path(path)
            entries = self._call(fs.ls, name, True)
            return [".", "..", *(e["name"].rsplit("/", 1)[-1] for e in entries)]

        def open(self, path: str, flags: int) -> int:
            if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_CREAT):
                raise mfusepy.FuseOSError(errno.EROFS)
            handle = self._call(fs.open, self._path(path), "rb")
            with self._mutex:
                fh = self._next_fh
                self._next_fh += 1
                self._handles[fh] = (threading.Lock(), handle)
            return fh

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            with self._mutex:
                held = self._handles.get(fh)
            if held is None:
                raise mfusepy.FuseOSError(errno.EBADF)
            lock, handle = held
            with lock:
                handle.seek(offset)
                return bytes(self._call(handle.read, size))

        def release(self, path: str, fh: int) -> int:
            with self._mutex:
                held = self._handles.pop(fh, None)
            if held is not None:
                held[1].close()
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

        def _refused(self, *args: Any, **kwargs: Any) -> Any:
            raise mfusepy.FuseOSError(errno.EROFS)

        create = mkdir = mknod = unlink = rmdir = rename = link = symlink = _refused
        write = truncate = chmod = chown = utimens = setxattr = removexattr = _refused

    return ReadOnly()


def serve(mountpoint: str, *, uid: int, gid: int, allow_other: bool) -> None:
    """Mount and serve until unmounted (foreground)."""
    import mfusepy

    from ..fs import StrongroomFileSystem

    fs = StrongroomFileSystem(os.environ["STRONGROOM_URL"], os.environ["STRONGROOM_TOKEN"], via="plaintext",
                              skip_instance_cache=True)
    options: dict[str, Any] = {"foreground": True, "ro": True, "default_permissions": True,
                               "fsname": "strongroom", "subtype": "strongroom"}
    if allow_other:
        # the daemon is root and the workspace's uid reads; default_permissions (above) and the owner-only
        # modes keep every other uid out (the mount point, in the workspace's 0700 scratch, too)
        options["allow_other"] = True
    mfusepy.FUSE(operations(fs, uid=uid, gid=gid), mountpoint, **options)


# -- for the launchers (the hub's side) ----------------------------------------------------------
def missing() -> str | None:
    """Why this machine cannot mount a workspace's data, or None."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is absent"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian: apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401  (finds libfuse when imported)
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse ({exc})"
    return None


def mounted(path: str | os.PathLike[str]) -> bool:
    """Is something mounted at ``path``? From /proc/self/mounts (stat would hang on a dead FUSE daemon)."""
    return str(Path(path)) in mounts_under(Path(path))


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    root = str(path).rstrip("/")
    found = []
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) > 1:
            point = fields[1].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def unmount(path: str | os.PathLike[str]) -> None:
    """Unmount every mount at or below ``path`` (lazily: a busy or dead mount goes as well). Idempotent."""
    for point in mounts_under(Path(path)):
        for argv in (["fusermount3", "-u", "-z", point], ["umount", "-l", point]):
            if shutil.which(argv[0]) is None:
                continue
            done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
            if done.returncode == 0:
                break


def argv(python: str, mountpoint: Path, *, uid: int, gid: int, allow_other: bool) -> list[str]:
    out = [python or sys.executable, "-m", "strongroom.workspaces.fuse", str(mountpoint), "--uid", str(uid),
           "--gid", str(gid)]
    return [*out, "--allow-other"] if allow_other else out


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strongroom.workspaces.fuse",
                                     description="mount strongroom:// read-only (STRONGROOM_URL, STRONGROOM_TOKEN)")
    parser.add_argument("mountpoint")
    parser.add_argument("--uid", type=int, default=os.getuid())
    parser.add_argument("--gid", type=int, default=os.getgid())
    parser.add_argument("--allow-other", action="store_true")
    ns = parser.parse_args(args)
    serve(ns.mountpoint, uid=ns.uid, gid=ns.gid, allow_other=ns.allow_other)
    return 0


if __name__ == "__main__":
    sys.exit(main())
