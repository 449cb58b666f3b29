"""Object storage for the encrypted archive: one small protocol, two backends.

* :class:`LocalStorage` - the embedded default, a directory tree. Every write lands in a temp file in a
  hidden staging directory on the same filesystem, is fsynced, and is published with one ``os.replace``
  (then the directory is fsynced), so a key is either absent or complete.
* :class:`S3Storage` - any S3-compatible server (Ceph RGW, SeaweedFS, MinIO, AWS) through boto3. Objects up
  to one part are one ``PutObject``; larger ones are multipart uploads, which S3 only makes visible on
  ``CompleteMultipartUpload`` and which are aborted on failure.

Both backends have the same semantics, checked by the same tests:

* keys are ``/``-separated relative paths, validated identically on both (:func:`validate_key`);
* nothing written is visible before ``commit()`` / ``complete_multipart()``; an aborted, failed or crashed
  writer leaves no object (at most invisible garbage: see ``cleanup_incomplete``);
* writers stream with flat memory (the S3 writer holds at most one part), readers stream (ranged GET on S3);
* resumable multipart uploads (``begin_multipart`` ... ``complete_multipart``) survive the process that
  started them: the upload id is all a new process needs.

Integrity: checksums are NEVER taken from S3 ETags. An ETag is an opaque token (a multipart ETag is not an
MD5 at all, encrypted or compressed backends change it, and servers differ); the archive computes its own
content digests while streaming and stores them in its database. The only use of ETags here is as the
opaque part tokens ``CompleteMultipartUpload`` requires and as an ``If-Match`` guard when a read resumes.
Uploads do send ``Content-MD5`` so the *server* rejects a body corrupted in transit (``BadDigest``).

This module is framework free (no FastAPI/SQLAlchemy). Errors are :class:`StorageError` subclasses.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import errno
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, runtime_checkable

log = logging.getLogger(__name__)

MiB = 1024 * 1024
S3_MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
S3_MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PART_NUMBER = 10_000
DEFAULT_PART_SIZE = 16 * MiB
MAX_KEY_BYTES = 1024
_COPY_CHUNK = 4 * MiB
_STAGING = ".staging"  # LocalStorage's hidden top-level directory; keys may not start with it


# --------------------------------------------------------------------------------------------- errors
class StorageError(Exception):
    """Any storage failure. ``str()`` says what was being done, on which key, and why."""


class InvalidKey(StorageError, ValueError):
    """The key is not a safe relative object name (traversal, absolute, NUL, ...)."""


class ObjectNotFound(StorageError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "object not found"


class UploadNotFound(StorageError):
    """The multipart upload id is unknown: never begun, already completed, or aborted."""


class StorageUnavailable(StorageError):
    """The storage server could not be reached or kept failing after the retries; try again later."""


# --------------------------------------------------------------------------------------- value types
@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One uploaded part. ``etag`` is an opaque token for ``complete_multipart``, never a checksum."""

    part_number: int
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: float  # unix time


PartRef = PartInfo | tuple[int, str]
"""What ``complete_multipart`` takes per part: a :class:`PartInfo` or a ``(part_number, etag)`` pair."""


def _part_refs(key: str, parts: Sequence[PartRef]) -> list[tuple[int, str]]:
    refs = [(p.part_number, p.etag) if isinstance(p, PartInfo) else (int(p[0]), str(p[1])) for p in parts]
    if not refs:
        raise StorageError(f"complete {key!r}: no parts")
    numbers = [n for n, _ in refs]
    if numbers != sorted(set(numbers)):
        raise StorageError(f"complete {key!r}: part numbers must be ascending and unique")
    return refs


# ------------------------------------------------------------------------------------------ protocol
@runtime_checkable
class Writer(Protocol):
    """Streaming writer. Nothing is visible under ``key`` until :meth:`commit` returns.

    Used as a context manager, leaving the block without ``commit()`` (normally or by an exception)
    aborts: an object is only ever published explicitly."""

    key: str

    def write(self, data: bytes | bytearray | memoryview) -> int: ...
    def commit(self) -> StoredObject: ...
    def abort(self) -> None: ...
    def __enter__(self) -> Writer: ...
    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Storage(Protocol):
    def open_writer(self, key: str) -> Writer: ...
    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> StoredObject: ...
    def open_reader(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """Bytes ``[start, end)`` (``end=None``: to the end; clamped to the size). Close it when done."""
        ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing key is not an error."""
        ...
    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Every key starting with ``prefix`` (a plain string prefix, as in S3), once each. Order: sorted
        by code point on LocalStorage and AWS/MinIO/Ceph; SeaweedFS sorts per ``/`` level, so do not
        rely on the order across backends."""
        ...
    def begin_multipart(self, key: str) -> str: ...
    def put_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray | memoryview
                 ) -> PartInfo: ...
    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]: ...
    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartRef] | None = None
                           ) -> StoredObject:
        """Publish the parts (ascending part numbers; ``None``: every uploaded part) as one object."""
        ...
    def abort_multipart(self, key: str, upload_id: str) -> None: ...
    def iter_multipart_uploads(self, prefix: str = "") -> Iterator[MultipartUpload]: ...
    def cleanup_incomplete(self, older_than: float) -> int:
        """Remove leftovers of crashed writers / abandoned uploads older than ``older_than`` seconds."""
        ...
    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------- helpers
def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe object name, else raise :class:`InvalidKey`.

    Rules (the same for every backend, so code that works on local storage works on S3): a non-empty
    ``str`` of at most 1024 UTF-8 bytes, ``/``-separated, not absolute, no empty, ``.`` or ``..``
    components, no trailing ``/``, no backslash, NUL or other control characters, components of at most
    255 bytes, and not under the reserved ``.staging/`` prefix."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid object key {key!r}: must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey(f"invalid object key {key[:40]!r}...: longer than {MAX_KEY_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidKey(f"invalid object key {key!r}: contains NUL or control characters")
    if "\\" in key:
        raise InvalidKey(f"invalid object key {key!r}: contains a backslash")
    if key.startswith("/"):
        raise InvalidKey(f"invalid object key {key!r}: absolute paths are not allowed")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKey(f"invalid object key {key!r}: empty, '.' or '..' path component")
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            raise InvalidKey(f"invalid object key {key!r}: a path component is longer than 255 bytes")
    if parts[0] == _STAGING:
        raise InvalidKey(f"invalid object key {key!r}: {_STAGING}/ is reserved")
    return key


def _check_part_number(part_number: int) -> None:
    if not isinstance(part_number, int) or not 1 <= part_number <= MAX_PART_NUMBER:
        raise StorageError(f"part_number must be an integer in 1..{MAX_PART_NUMBER}, got {part_number!r}")


def _range(start: int, end: int | None, size: int) -> tuple[int, int]:
    if start < 0 or (end is not None and end < 0):
        raise ValueError("start and end must be >= 0")
    stop = size if end is None else min(end, size)
    start = min(start, size)
    return start, max(start, stop)


def _content_md5(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: Path, stop: Path) -> None:
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
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise
        _fsync_dir(d.parent)


class _BoundedFileReader(io.RawIOBase):
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


# ------------------------------------------------------------------------------------- local backend
class _LocalWriter:
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

    def commit(self) -> StoredObject:
        if self._state != "open" or self._f is None:
            raise StorageError(f"commit {self.key!r}: writer is {self._state}")
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None
            self._storage._publish(self._tmp, self.key)
        except BaseException:
            self.abort()
            raise
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

    def __enter__(self) -> _LocalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def __del__(self) -> None:  # a writer dropped without commit must not leak its temp file
        with contextlib.suppress(Exception):
            self.abort()


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
        self._tmpdir = self.root / _STAGING / "tmp"
        self._uploads = self.root / _STAGING / "uploads"
        for d in (self.root, self._tmpdir, self._uploads):
            d.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    # -- paths
    def _path(self, key: str) -> Path:
        validate_key(key)
        path = self.root.joinpath(*key.split("/"))
        # belt and braces: validate_key already excludes everything that could escape root
        if os.path.commonpath([self.root, path]) != str(self.root):
            raise InvalidKey(f"invalid object key {key!r}: escapes the storage root")
        return path

    def _mkstemp(self) -> tuple[int, str]:
        import tempfile

        return tempfile.mkstemp(prefix="w-", suffix=".part", dir=self._tmpdir)

    def _publish(self, tmp: Path, key: str) -> None:
        """Atomically move a fully written, fsynced temp file to ``key`` and fsync the directory."""
        dest = self._path(key)
        for attempt in range(5):  # a concurrent delete() may prune the parent dir between mkdir and rename
            try:
                _makedirs_durable(dest.parent, self.root)
                if dest.is_dir():
                    raise StorageError(f"write {key!r}: other objects exist under {key + '/'!r}")
                os.replace(tmp, dest)
                break
            except FileNotFoundError:
                if attempt == 4 or not tmp.exists():
                    raise
            except (NotADirectoryError, FileExistsError) as e:
                raise StorageError(f"write {key!r}: a parent path is itself an object ({e})") from e
        with contextlib.suppress(FileNotFoundError):  # gone only if a concurrent delete() removed it again
            _fsync_dir(dest.parent)

    # -- objects
    def open_writer(self, key: str) -> _LocalWriter:
        validate_key(key)
        return _LocalWriter(self, key)

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
            lo, hi = _range(start, end, os.fstat(f.fileno()).st_size)
            raw = _BoundedFileReader(f, lo, hi)
        except BaseException:
            f.close()
            raise
        return io.BufferedReader(raw, buffer_size=_COPY_CHUNK)  # type: ignore[return-value]

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
            _fsync_dir(path.parent)
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
            if not rel and e.name == _STAGING:
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
        d.mkdir()
        meta = d / "upload.json"
        with open(meta, "w") as f:
            json.dump({"key": key, "initiated": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(d)
        _fsync_dir(self._uploads)
        return upload_id

    @staticmethod
    def _part_info(number: int, st: os.stat_result) -> PartInfo:
        # opaque token that changes whenever the part file is replaced (not a checksum)
        return PartInfo(number, st.st_size, f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}")

    def put_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray | memoryview
                 ) -> PartInfo:
        _check_part_number(part_number)
        d = self._upload_dir(key, upload_id)
        fd, tmp = self._mkstemp()
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            dest = d / f"part-{part_number:05d}"
            os.replace(tmp, dest)  # re-uploading a part number replaces it, as in S3
            _fsync_dir(d)
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
        chosen = _part_refs(key, list(current.values()) if parts is None else parts)
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
                        total += _copy_file(src, out)
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


def _copy_file(src: BinaryIO, dst: BinaryIO) -> int:
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
    while chunk := src.read(_COPY_CHUNK):
        dst.write(chunk)
        n += len(chunk)
    return n


# ---------------------------------------------------------------------------------------- S3 backend
def _client_error_code(e: BaseException | None) -> str:
    resp = getattr(e, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


class _S3Reader(io.RawIOBase):
    """Raw reader over a ranged GET. If the connection drops mid-stream it re-requests the remaining range
    (bounded times), pinned to the same object version with ``If-Match`` so bytes can never be mixed."""

    def __init__(self, storage: S3Storage, key: str, start: int, stop: int) -> None:
        self._s = storage
        self._key = key
        self._pos = start
        self._stop = stop
        self._body: Any = None
        self._etag: str | None = None
        self._resumes = 0

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        kwargs: dict[str, Any] = {"Range": f"bytes={self._pos}-{self._stop - 1}"}
        if self._etag:
            kwargs["IfMatch"] = self._etag
        resp = self._s._call("read", self._key, self._s._client.get_object,
                             Bucket=self._s.bucket, Key=self._key, **kwargs)
        self._etag = resp.get("ETag")
        self._body = resp["Body"]

    def readinto(self, b: Any) -> int:
        want = min(len(b), self._stop - self._pos)
        if want <= 0:
            return 0
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError

        while True:
            if self._body is None:
                self._open()
            try:
                data = self._body.read(want)
            except (BotoConnectionError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError,
                    OSError) as e:
                data, err = b"", e
            else:
                err = None
            if data:
                n = len(data)
                memoryview(b)[:n] = data
                self._pos += n
                return n
            self._close_body()
            if self._resumes >= self._s.max_attempts:
                raise StorageUnavailable(
                    f"read {self._key!r} from {self._s.endpoint_url}: stream ended at byte {self._pos} "
                    f"of {self._stop} ({err or 'premature end of body'})")
            self._resumes += 1
            time.sleep(min(0.2 * 2 ** self._resumes, 5))

    def _close_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()


class _S3Writer:
    """Buffers one part; the first full part turns the write into a multipart upload. Small objects are a
    single PutObject. Any failure aborts the upload (best effort), so no partial object ever appears."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.key = key
        self._s = storage
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[PartInfo] = []
        self._size = 0
        self._state = "open"

    def _part_size(self) -> int:
        # grow the part size every 2,000 parts so an object of any size fits in S3's 10,000 parts
        return min(self._s.part_size * 2 ** (len(self._parts) // 2000), S3_MAX_PART_SIZE)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._state != "open":
            raise StorageError(f"write to {self.key!r}: writer is {self._state}")
        try:
            mv = memoryview(data).cast("B")
            n = len(mv)
            while mv:
                room = self._part_size() - len(self._buf)
                self._buf += mv[:room]
                mv = mv[room:]
                if len(self._buf) >= self._part_size():
                    self._flush_part()
            self._size += n
            return n
        except BaseException:
            self.abort()
            raise

    def _flush_part(self) -> None:
        if self._upload_id is None:
            self._upload_id = self._s.begin_multipart(self.key)
        body = bytes(self._buf)
        self._buf = bytearray()
        self._parts.append(self._s.put_part(self.key, self._upload_id, len(self._parts) + 1, body))

    def commit(self) -> StoredObject:
        if self._state != "open":
            raise StorageError(f"commit {self.key!r}: writer is {self._state}")
        try:
            if self._upload_id is None:
                obj = self._s.put_bytes(self.key, bytes(self._buf))
                self._buf = bytearray()
            else:
                if self._buf:
                    self._flush_part()
                obj = self._s.complete_multipart(self.key, self._upload_id, self._parts)
                if obj.size != self._size:
                    raise StorageError(
                        f"commit {self.key!r}: server reports {obj.size} bytes, {self._size} were written")
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return StoredObject(self.key, self._size)

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._buf = bytearray()
        if self._upload_id is not None:
            self._s._abort_quietly(self.key, self._upload_id)

    def __enter__(self) -> _S3Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class S3Storage:
    """Objects in one S3 bucket (path-style addressing, SigV4).

    ``part_size`` (>= 5 MiB) is both the multipart threshold and the writer's memory bound. Requests retry
    with botocore's *standard* mode (exponential backoff with jitter on connection errors, throttling and
    5xx) up to ``max_attempts`` times, each bounded by ``connect_timeout`` / ``read_timeout``; after that the
    call raises :class:`StorageUnavailable`. The bucket is created on first write when missing (and
    ``create_bucket`` is true); without the permission the write fails with a clear error."""

    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        access_key: str | None,
        secret_key: str | None,
        region: str = "us-east-1",
        part_size: int = DEFAULT_PART_SIZE,
        *,
        create_bucket: bool = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        max_pool_connections: int = 16,
        verify: bool | str = True,
    ) -> None:
        import boto3
        from botocore.config import Config

        if not S3_MIN_PART_SIZE <= part_size <= S3_MAX_PART_SIZE:
            raise ValueError(f"part_size must be between 5 MiB and 5 GiB, got {part_size}")
        if not bucket:
            raise ValueError("bucket is required")
        self.endpoint_url = endpoint_url or "https://s3.amazonaws.com"
        self.bucket = bucket
        self.region = region or "us-east-1"
        self.part_size = part_size
        self.create_bucket = create_bucket
        self.max_attempts = max_attempts
        self._bucket_ready = False
        self._lock = threading.Lock()

        def make(attempts: int) -> Any:
            cfg = Config(
                region_name=self.region,
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": attempts},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=max_pool_connections,
                # no CRC "flexible checksum" headers: older Ceph RGW / S3 proxies reject them. Integrity
                # in transit is Content-MD5 (set explicitly below); content checksums are our own.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            return boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url or None, aws_access_key_id=access_key or None,
                aws_secret_access_key=secret_key or None, config=cfg, verify=verify)

        self._client = make(max_attempts)
        self._quick = make(1)  # best-effort cleanup (abort after a failure) must not add long retry waits

    def __repr__(self) -> str:
        return f"S3Storage({self.endpoint_url!r}, bucket={self.bucket!r})"

    # -- error translation
    def _call(self, op: str, key: str | None, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            EndpointConnectionError,
            NoCredentialsError,
        )
        from botocore.exceptions import (
            ConnectTimeoutError as BotoConnectTimeout,
        )
        from botocore.exceptions import (
            ReadTimeoutError as BotoReadTimeout,
        )

        what = f"{op} {key!r}" if key is not None else op
        where = f"{self.endpoint_url} bucket {self.bucket!r}"
        try:
            return fn(**kwargs)
        except ClientError as e:
            code = _client_error_code(e)
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchUpload",):
                raise UploadNotFound(f"{what}: no such multipart upload at {where}") from e
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(f"{what}: no such object at {where}") from e
            if code == "NoSuchBucket":
                raise ObjectNotFound(f"{what}: bucket {self.bucket!r} does not exist at {self.endpoint_url}"
                                     ) from e
            if status in (500, 502, 503, 504) or code in ("SlowDown", "ServiceUnavailable", "RequestTimeout"):
                raise StorageUnavailable(f"{what}: {where} keeps failing ({code or status}) after "
                                         f"{self.max_attempts} attempts") from e
            raise StorageError(f"{what}: {where} refused: {code or status}: "
                               f"{e.response.get('Error', {}).get('Message', '')}") from e
        except NoCredentialsError as e:
            raise StorageError(f"{what}: no S3 credentials configured for {where}") from e
        except (EndpointConnectionError, ConnectionError, BotoConnectTimeout, BotoReadTimeout) as e:
            raise StorageUnavailable(f"{what}: S3 endpoint {self.endpoint_url} is unreachable or not "
                                     f"answering after {self.max_attempts} attempts: {e}") from e
        except BotoCoreError as e:
            raise StorageError(f"{what} at {where}: {e}") from e

    # -- bucket
    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (idempotent; cached after the first success)."""
        if self._bucket_ready:
            return
        with self._lock:
            if self._bucket_ready:
                return
            try:
                self._call("check bucket", None, self._client.head_bucket, Bucket=self.bucket)
            except ObjectNotFound:
                if not self.create_bucket:
                    raise StorageError(f"bucket {self.bucket!r} does not exist at {self.endpoint_url} "
                                       "and creating it is disabled") from None
                kwargs: dict[str, Any] = {"Bucket": self.bucket}
                if self.region != "us-east-1":
                    kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
                try:
                    self._call("create bucket", None, self._client.create_bucket, **kwargs)
                except StorageUnavailable:
                    raise
                except StorageError as e:
                    # created meanwhile by a concurrent writer: fine (if it is someone else's, the write
                    # that follows fails with its own AccessDenied)
                    exists = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
                    if _client_error_code(e.__cause__) not in exists:
                        raise StorageError(f"bucket {self.bucket!r} is missing and could not be created "
                                           f"at {self.endpoint_url}: {e}") from e
            except StorageError as e:
                # a 403 on HEAD means "exists but HEAD not allowed" under some policies: let the real
                # operation succeed or fail with its own error
                if type(e) is not StorageError or _client_error_code(e.__cause__) not in ("403",
                                                                                          "AccessDenied"):
                    raise
            self._bucket_ready = True

    # -- objects
    def open_writer(self, key: str) -> _S3Writer:
        validate_key(key)
        return _S3Writer(self, key)

    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> StoredObject:
        validate_key(key)
        if len(data) > S3_MAX_PART_SIZE:  # over a single PUT's limit: go multipart
            with self.open_writer(key) as w:
                w.write(data)
                return w.commit()
        self.ensure_bucket()
        body = data if isinstance(data, bytes) else bytes(data)
        self._call("write", key, self._client.put_object, Bucket=self.bucket, Key=key, Body=body,
                   ContentMD5=_content_md5(body), ContentLength=len(body))
        return StoredObject(key, len(body))

    def put_retained(self, key: str, data: bytes, retain_until: dt.datetime) -> bool:
        """Write a small object that must not be rewritten (audit checkpoints): under COMPLIANCE
        Object Lock retention when the bucket has Object Lock enabled (True), else a plain write-once
        key (False). Never overwrites: an existing key raises FileExistsError."""
        validate_key(key)
        self.ensure_bucket()
        if self.exists(key):
            raise FileExistsError(key)
        try:
            config = self._client.get_object_lock_configuration(Bucket=self.bucket)
            locked = config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except Exception:  # noqa: BLE001 - servers without Object Lock (e.g. SeaweedFS) answer with an error
            locked = False
        extra: dict[str, Any] = ({"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": retain_until}
                                 if locked else {})
        self._call("write", key, self._client.put_object, Bucket=self.bucket, Key=key, Body=data,
                   ContentMD5=_content_md5(data), ContentLength=len(data), **extra)
        return locked

    def open_reader(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        lo, hi = _range(start, end, self.size(key))
        return io.BufferedReader(_S3Reader(self, key, lo, hi), buffer_size=1 * MiB)  # type: ignore[return-value]

    def _head(self, key: str) -> dict[str, Any]:
        validate_key(key)
        return self._call("stat", key, self._client.head_object, Bucket=self.bucket, Key=key)

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        validate_key(key)
        with contextlib.suppress(ObjectNotFound):
            self._call("delete", key, self._client.delete_object, Bucket=self.bucket, Key=key)

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        it = iter(pages)
        while True:
            try:
                page = self._call("list", prefix, lambda: next(it, None))
            except ObjectNotFound:
                return  # no bucket yet: nothing stored
            if page is None:
                return
            for obj in page.get("Contents", ()):
                yield obj["Key"]

    # -- multipart
    def begin_multipart(self, key: str) -> str:
        validate_key(key)
        self.ensure_bucket()
        resp = self._call("begin upload", key, self._client.create_multipart_upload,
                          Bucket=self.bucket, Key=key)
        return str(resp["UploadId"])

    def put_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray | memoryview
                 ) -> PartInfo:
        validate_key(key)
        _check_part_number(part_number)
        body = data if isinstance(data, bytes) else bytes(data)
        resp = self._call(f"upload part {part_number} of", key, self._client.upload_part,
                          Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=part_number,
                          Body=body, ContentMD5=_content_md5(body), ContentLength=len(body))
        return PartInfo(part_number, len(body), str(resp["ETag"]))

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        """One entry per part number. S3 replaces a re-uploaded part; SeaweedFS 4.x keeps every copy and
        lists them all (second-resolution LastModified), so the newest copy is chosen here, and copies
        with different content uploaded within the same second are refused as ambiguous. Callers that
        re-send parts should keep the ``etag`` each ``put_part`` returned and pass those to
        ``complete_multipart`` (which then needs no listing)."""
        validate_key(key)
        newest: dict[int, tuple[Any, PartInfo]] = {}
        ambiguous: set[int] = set()
        marker = 0
        while True:
            resp = self._call("list parts of", key, self._client.list_parts, Bucket=self.bucket, Key=key,
                              UploadId=upload_id, PartNumberMarker=marker)
            for p in resp.get("Parts", ()):
                info = PartInfo(int(p["PartNumber"]), int(p["Size"]), str(p["ETag"]))
                when = p.get("LastModified")
                seen = newest.get(info.part_number)
                if seen is None or (when is not None and seen[0] is not None and when > seen[0]):
                    newest[info.part_number] = (when, info)
                    ambiguous.discard(info.part_number)
                elif when == seen[0] and seen[1] != info:
                    ambiguous.add(info.part_number)
            if not resp.get("IsTruncated"):
                break
            marker = int(resp["NextPartNumberMarker"])
        if ambiguous:
            raise StorageError(f"list parts of {key!r}: the server keeps several copies of part(s) "
                               f"{sorted(ambiguous)} uploaded at the same time; complete with the etags "
                               "put_part returned")
        return [info for _, (_, info) in sorted(newest.items())]

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartRef] | None = None
                           ) -> StoredObject:
        validate_key(key)
        chosen = _part_refs(key, self.list_parts(key, upload_id) if parts is None else parts)
        self._call("complete upload", key, self._client.complete_multipart_upload,
                   Bucket=self.bucket, Key=key, UploadId=upload_id,
                   MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in chosen]})
        return StoredObject(key, self.size(key))

    def abort_multipart(self, key: str, upload_id: str) -> None:
        validate_key(key)
        with contextlib.suppress(UploadNotFound):
            self._call("abort upload", key, self._client.abort_multipart_upload,
                       Bucket=self.bucket, Key=key, UploadId=upload_id)

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            self._call("abort upload", key, self._quick.abort_multipart_upload,
                       Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as e:  # noqa: BLE001 - the upload stays invisible; cleanup_incomplete() sweeps it
            log.warning("could not abort multipart upload %s of %r: %s", upload_id, key, e)

    def iter_multipart_uploads(self, prefix: str = "") -> Iterator[MultipartUpload]:
        pages = iter(self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix))
        while True:
            try:
                page = self._call("list uploads", prefix, lambda: next(pages, None))
            except ObjectNotFound:
                return
            if page is None:
                return
            for u in page.get("Uploads", ()):
                yield MultipartUpload(u["Key"], u["UploadId"], u["Initiated"].timestamp())

    def cleanup_incomplete(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        stale = [u for u in self.iter_multipart_uploads() if u.initiated < cutoff]
        for u in stale:
            self.abort_multipart(u.key, u.upload_id)
        return len(stale)

    def close(self) -> None:
        for c in (self._client, self._quick):
            with contextlib.suppress(Exception):
                c.close()


# ------------------------------------------------------------------------------------------- factory
@dataclass(frozen=True)
class StorageConfig:
    """Plain storage settings. ``kind="local"`` needs ``root``; ``kind="s3"`` needs ``bucket`` (and
    usually ``endpoint_url`` and keys; ``None`` keys fall back to boto3's usual credential chain)."""

    kind: Literal["local", "s3"] = "local"
    root: str | os.PathLike[str] | None = None
    endpoint_url: str | None = None
    bucket: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    part_size: int = DEFAULT_PART_SIZE
    create_bucket: bool = True
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 5
    verify_tls: bool | str = True

    def __repr__(self) -> str:  # never print the secret
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if shown["secret_key"]:
            shown["secret_key"] = "***"
        return "StorageConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> StorageConfig:
        aliases = {"endpoint": "endpoint_url", "url": "endpoint_url", "access_key_id": "access_key",
                   "secret_access_key": "secret_key", "path": "root", "backend": "kind"}
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for k, v in data.items():
            name = aliases.get(k, k)
            if name not in known:
                raise ValueError(f"unknown storage setting {k!r}")
            values[name] = v
        return cls(**values)


def storage_from_settings(config: StorageConfig | Mapping[str, Any]) -> LocalStorage | S3Storage:
    """Build the configured backend (no network I/O happens here)."""
    cfg = config if isinstance(config, StorageConfig) else StorageConfig.from_mapping(config)
    if cfg.kind == "local":
        if not cfg.root:
            raise ValueError("storage kind 'local' needs a root directory")
        return LocalStorage(Path(cfg.root))
    if cfg.kind == "s3":
        if not cfg.bucket:
            raise ValueError("storage kind 's3' needs a bucket")
        return S3Storage(cfg.endpoint_url, cfg.bucket, cfg.access_key, cfg.secret_key, cfg.region,
                         part_size=cfg.part_size, create_bucket=cfg.create_bucket,
                         connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout,
                         max_attempts=cfg.max_attempts, verify=cfg.verify_tls)
    raise ValueError(f"unknown storage kind {cfg.kind!r} (expected 'local' or 's3')")


__all__ = [
    "InvalidKey", "LocalStorage", "MultipartUpload", "ObjectNotFound", "PartInfo", "PartRef", "S3Storage",
    "Storage", "StorageConfig", "StorageError", "StorageUnavailable", "StoredObject", "UploadNotFound",
    "Writer", "storage_from_settings", "validate_key",
]
