"""What every storage backend shares: limits, value types, the protocol, and the key rules."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from .errors import InvalidKey, StorageError

MiB = 1024 * 1024
S3_MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
S3_MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PART_NUMBER = 10_000
DEFAULT_PART_SIZE = 16 * MiB
MAX_KEY_BYTES = 1024
STAGING = ".staging"  # LocalStorage's hidden top-level directory; keys may not start with it


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


def part_refs(key: str, parts: Sequence[PartRef]) -> list[tuple[int, str]]:
    refs = [(p.part_number, p.etag) if isinstance(p, PartInfo) else (int(p[0]), str(p[1])) for p in parts]
    if not refs:
        raise StorageError(f"complete {key!r}: no parts")
    numbers = [n for n, _ in refs]
    if numbers != sorted(set(numbers)):
        raise StorageError(f"complete {key!r}: part numbers must be ascending and unique")
    return refs


# ------------------------------------------------------------------------------------------ protocol
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
_CONTROL = re.compile("[\x00-\x1f\x7f]")


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
    if _CONTROL.search(key):
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
    if parts[0] == STAGING:
        raise InvalidKey(f"invalid object key {key!r}: {STAGING}/ is reserved")
    return key


def check_part_number(part_number: int) -> None:
    if not isinstance(part_number, int) or not 1 <= part_number <= MAX_PART_NUMBER:
        raise StorageError(f"part_number must be an integer in 1..{MAX_PART_NUMBER}, got {part_number!r}")


def clamp_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    if start < 0 or (end is not None and end < 0):
        raise ValueError("start and end must be >= 0")
    stop = size if end is None else min(end, size)
    start = min(start, size)
    return start, max(start, stop)


def content_md5(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def commit_all(storage: Storage, writers: Sequence[Writer]) -> list[StoredObject]:
    """Commit several writers: with one shared durability barrier where the backend offers one
    (``LocalStorage.commit_group``), else one by one. Either way every object is durable on return."""
    group = getattr(storage, "commit_group", None)
    if group is not None:
        committed: list[StoredObject] = group(writers)
        return committed
    return [w.commit() for w in writers]
