"""The embedded backend: objects as files in a directory tree, published atomically."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from ...paths import private_dir
from .base import (
    STAGING,
    MultipartUpload,
    PartInfo,
    PartRef,
    StoredObject,
    check_part_number,
    clamp_range,
    part_refs,
    validate_key,
)
from .durable import COPY_CHUNK, BoundedFileReader, copy_file, fsync_dir, makedirs_durable
from .errors import InvalidKey, ObjectNotFound, StorageError, UploadNotFound

_SYNC_THREADS = 16  # concurrent fsyncs in commit_group: ext4 commits them in a few shared journal transactions


class LocalWriter:
    def __init__(self, storage: LocalStorage, key: str) -> None:
        self.key = key
        self._storage = storage
        fd, tmp = storage._mkstemp()
        self._tmp = Path(tmp)
        self._f: BinaryIO | None = os.fdopen(fd, "wb")
        self._size = 0
        self._state = "open"

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._state != "open" or self._f is None:
            raise StorageError(f"write to {self.key!r}: writer is {self._state}")
        try:
            n = self._f.write(data)
        except BaseException:
            self.abort()
            raise
        self._size += n
        return n

    def commit(self, *, sync_dir: bool = True) -> StoredObject:
        """Fsync the object, rename it into place and fsync its directory. ``sync_dir=False`` leaves the
        directory to the caller, who must call ``LocalStorage.sync_dirs`` before relying on the object
        (until then a power cut may lose the rename, never the object's content once it is there)."""
        self._sync()
        try:
            self._storage._publish(self._tmp, self.key, sync_dir=sync_dir)
        except BaseException:
            self.abort()
            raise
        return self._committed()

    def _sync(self) -> None:
        """Flush and fsync the temp file and close it (the first half of a commit)."""
        if self._state != "open" or self._f is None:
            raise StorageError(f"commit {self.key!r}: writer is {self._state}")
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None
        except BaseException:
            self.abort()
            raise

    def _committed(self) -> StoredObject:
        self._state = "committed"
        return StoredObject(self.key, self._size)

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        if self._f is not None:
            with contextlib.suppress(OSError):
                self._f.close()
            self._f = None
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> LocalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def __del__(self) -> None:  # a writer dropped without commit must not leak its temp file
        with contextlib.suppress(Exception):
            self.abort()


def _sync_all(writers: Sequence[LocalWriter]) -> None:
    for w in writers:
        w._sync()


class LocalStorage:
    """Objects as files under ``root``; key ``a/b/c`` is the file ``root/a/b/c``.

    Hidden ``root/.staging/`` holds temp files (``tmp/``) and multipart uploads (``uploads/<id>/``); it is
    never listed. A filesystem cannot hold both ``a`` and ``a/b`` as objects (S3 can): writing one when the
    other exists raises :class:`StorageError`. Key design should avoid it (e.g. fixed-depth keys)."""

    def __init__(self, root: str | os.PathLike[str], *, min_part_size: int = 0) -> None:
        """``min_part_size``: reject (like S3's ``EntityTooSmall``) multipart uploads whose parts other than
        the last are smaller; pass :data:`S3_MIN_PART_SIZE` to catch code that would fail on S3."""
        self.root = Path(root).resolve()
        self.min_part_size = min_part_size
        self._inside = os.path.join(self.root, "")  # every object's path starts with this
        self._tmpdir = self.root / STAGING / "tmp"
        self._uploads = self.root / STAGING / "uploads"
        for d in (self.root, self._tmpdir, self._uploads):
            private_dir(d)  # others read no object, not even its name (0700, whatever the umask)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    # -- paths
    def _path(self, key: str) -> Path:
        validate_key(key)
        path = self.root.joinpath(*key.split("/"))
        # belt and braces: validate_key already excludes everything that could escape root
        if not str(path).startswith(self._inside):
            raise InvalidKey(f"invalid object key {key!r}: escapes the storage root")
        return path

    def _mkstemp(self) -> tuple[int, str]:
        import tempfile

        return tempfile.mkstemp(prefix="w-", suffix=".part", dir=self._tmpdir)

    def _publish(self, tmp: Path, key: str, *, sync_dir: bool = True) -> None:
        """Atomically move a fully written, fsynced temp file to ``key`` and fsync the directory."""
        dest = self._path(key)
        self._place(tmp, dest, key)
        if sync_dir:
            with contextlib.suppress(FileNotFoundError):  # gone only if a concurrent delete() removed it again
                fsync_dir(dest.parent)

    def sync_dirs(self, keys: Sequence[str]) -> None:
        """Make the renames of objects committed with ``commit(sync_dir=False)`` durable: each distinct
        parent directory is fsynced once (e.g. a group of sealed bodies, all in one project's folder)."""
        for parent in dict.fromkeys(self._path(key).parent for key in keys):
            with contextlib.suppress(FileNotFoundError):  # removed again by a concurrent delete()
                fsync_dir(parent)

    def _place(self, tmp: Path, dest: Path, key: str) -> None:
        """Rename a durable temp file to ``dest`` (parents created durably); the caller fsyncs its directory."""
        for attempt in range(5):  # a concurrent delete() may prune the parent dir between mkdir and rename
            try:
                makedirs_durable(dest.parent, self.root)
                if dest.is_dir():
                    raise StorageError(f"write {key!r}: other objects exist under {key + '/'!r}")
                os.replace(tmp, dest)
                break
            except FileNotFoundError:
                if attempt == 4 or not tmp.exists():
                    raise
            except (NotADirectoryError, FileExistsError) as e:
                raise StorageError(f"write {key!r}: a parent path is itself an object ({e})") from e

    def commit_group(self, writers: Sequence[LocalWriter]) -> list[StoredObject]:
        """Commit several writers with one durability barrier instead of one per object: every temp file is
        fsynced (from a few threads at once, so the file system folds them into few journal commits), then
        all are renamed into place, then each distinct parent directory is fsynced once. When it returns,
        every object is durable, as after ``commit()`` on each; if it raises, none of them is committed
        (objects already renamed are then only ever replaced by a retry, never acknowledged)."""
        if len(writers) <= 1:
            return [w.commit() for w in writers]
        try:
            # Each thread syncs its own share of the writers (one task per thread, not one per writer).
            n = min(_SYNC_THREADS, len(writers))
            with ThreadPoolExecutor(n, thread_name_prefix="fsync") as pool:
                list(pool.map(_sync_all, [writers[i::n] for i in range(n)]))
            parents: dict[Path, None] = {}
            for w in writers:
                dest = self._path(w.key)
                self._place(w._tmp, dest, w.key)
                parents[dest.parent] = None
            for parent in parents:
                with contextlib.suppress(FileNotFoundError):  # removed again by a concurrent delete()
                    fsync_dir(parent)
        except BaseException:
            for w in writers:
                w.abort()
            raise
        return [w._committed() for w in writers]

    # -- objects
    def open_writer(self, key: str) -> LocalWriter:
        validate_key(key)
        return LocalWriter(self, key)

    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> StoredObject:
        with self.open_writer(key) as w:
            w.write(data)
            return w.commit()

    def open_reader(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - handed over to the reader
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r}") from None
        try:
            lo, hi = clamp_range(start, end, os.fstat(f.fileno()).st_size)
            raw = BoundedFileReader(f, lo, hi)
        except BaseException:
            f.close()
            raise
        return io.BufferedReader(raw, buffer_size=COPY_CHUNK)

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r}") from None
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r}")
        return st.st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # a "directory" is only a prefix, not an object
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(path.parent)
        # prune now-empty parent directories (best effort; a concurrent writer retries its rename)
        d = path.parent
        while d != self.root:
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        if "\x00" in prefix or prefix.startswith("/") or ".." in prefix.split("/"):
            raise InvalidKey(f"invalid prefix {prefix!r}")
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*base_rel.split("/")) if base_rel else self.root
        if not base.is_dir():
            return
        yield from self._walk(base, base_rel, prefix)

    def _walk(self, d: Path, rel: str, prefix: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            return
        # sort as S3 does (by full key): a directory "x" sorts as "x/"
        items = []
        for e in entries:
            is_dir = e.is_dir(follow_symlinks=False)
            if not rel and e.name == STAGING:
                continue
            is_file = e.is_file(follow_symlinks=False)
            items.append((e.name + "/" if is_dir else e.name, e.name, is_dir, is_file))
        items.sort()
        for _, name, is_dir, is_file in items:
            key = f"{rel}/{name}" if rel else name
            if is_dir:
                sub = key + "/"
                if sub.startswith(prefix) or prefix.startswith(sub):
                    yield from self._walk(d / name, key, prefix)
            elif is_file and key.startswith(prefix):
                yield key

    # -- multipart (same semantics as S3: parts are invisible until complete)
    def _upload_dir(self, key: str, upload_id: str) -> Path:
        validate_key(key)
        if not isinstance(upload_id, str) or len(upload_id) != 32 or not all(
            c in "0123456789abcdef" for c in upload_id
        ):
            raise UploadNotFound(f"no multipart upload {upload_id!r} for {key!r}")
        d = self._uploads / upload_id
        try:
            meta = json.loads((d / "upload.json").read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            raise UploadNotFound(f"no multipart upload {upload_id!r} for {key!r}") from None
        if meta.get("key") != key:
            raise UploadNotFound(f"no multipart upload {upload_id!r} for {key!r}")
        return d

    def begin_multipart(self, key: str) -> str:
        validate_key(key)
        upload_id = secrets.token_hex(16)
        d = self._uploads / upload_id
        d.mkdir(mode=0o700)
        meta = d / "upload.json"
        with os.fdopen(os.open(meta, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            json.dump({"key": key, "initiated": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(d)
        fsync_dir(self._uploads)
        return upload_id

    @staticmethod
    def _part_info(number: int, st: os.stat_result) -> PartInfo:
        # opaque token that changes whenever the part file is replaced (not a checksum)
        return PartInfo(number, st.st_size, f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}")

    def put_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray | memoryview
                 ) -> PartInfo:
        check_part_number(part_number)
        d = self._upload_dir(key, upload_id)
        fd, tmp = self._mkstemp()
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            dest = d / f"part-{part_number:05d}"
            os.replace(tmp, dest)  # re-uploading a part number replaces it, as in S3
            fsync_dir(d)
            return self._part_info(part_number, dest.stat())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        d = self._upload_dir(key, upload_id)
        parts = []
        for e in os.scandir(d):
            if e.name.startswith("part-") and e.name[5:].isdigit():
                parts.append(self._part_info(int(e.name[5:]), e.stat()))
        return sorted(parts, key=lambda p: p.part_number)

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartRef] | None = None
                           ) -> StoredObject:
        d = self._upload_dir(key, upload_id)
        current = {p.part_number: p for p in self.list_parts(key, upload_id)}
        chosen = part_refs(key, list(current.values()) if parts is None else parts)
        for i, (number, etag) in enumerate(chosen):
            have = current.get(number)
            if have is None or have.etag != etag:
                raise StorageError(f"complete {key!r}: part {number} is missing or was replaced")
            if i < len(chosen) - 1 and have.size < self.min_part_size:
                raise StorageError(f"complete {key!r}: part {number} has {have.size} bytes, below the "
                                   f"minimum part size of {self.min_part_size} (EntityTooSmall)")
        fd, tmp = self._mkstemp()
        total = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for number, _ in chosen:
                    with open(d / f"part-{number:05d}", "rb") as src:
                        total += copy_file(src, out)
                out.flush()
                os.fsync(out.fileno())
            self._publish(Path(tmp), key)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        shutil.rmtree(d, ignore_errors=True)
        return StoredObject(key, total)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            d = self._upload_dir(key, upload_id)
        except UploadNotFound:
            return  # idempotent
        shutil.rmtree(d, ignore_errors=True)

    def iter_multipart_uploads(self, prefix: str = "") -> Iterator[MultipartUpload]:
        found = []
        for e in os.scandir(self._uploads):
            try:
                meta = json.loads(Path(e.path, "upload.json").read_text())
            except (OSError, ValueError):
                continue
            if meta["key"].startswith(prefix):
                found.append(MultipartUpload(meta["key"], e.name, float(meta["initiated"])))
        yield from sorted(found, key=lambda u: (u.key, u.initiated))

    def cleanup_incomplete(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for e in os.scandir(self._tmpdir):
            with contextlib.suppress(FileNotFoundError):
                if e.stat().st_mtime < cutoff:
                    os.unlink(e.path)
                    removed += 1
        for e in os.scandir(self._uploads):
            try:
                initiated = json.loads(Path(e.path, "upload.json").read_text())["initiated"]
            except (OSError, ValueError, KeyError):
                initiated = e.stat().st_mtime
            if initiated < cutoff:
                shutil.rmtree(e.path, ignore_errors=True)
                removed += 1
        return removed

    def close(self) -> None:
        pass
