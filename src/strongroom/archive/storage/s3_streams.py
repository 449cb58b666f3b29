"""Streaming reader and writer over S3 requests (ranged GETs; PutObject or a multipart upload)."""

from __future__ import annotations

import contextlib
import io
import time
from typing import TYPE_CHECKING, Any

from .base import S3_MAX_PART_SIZE, PartInfo, StoredObject
from .errors import StorageError, StorageUnavailable

if TYPE_CHECKING:
    from .s3 import S3Storage


class S3Reader(io.RawIOBase):
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


class S3Writer:
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

    def __enter__(self) -> S3Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()
