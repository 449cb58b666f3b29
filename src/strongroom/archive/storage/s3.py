"""Any S3-compatible server (Ceph RGW, SeaweedFS, MinIO, AWS) through boto3."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from .base import (
    DEFAULT_PART_SIZE,
    S3_MAX_PART_SIZE,
    S3_MIN_PART_SIZE,
    MiB,
    MultipartUpload,
    PartInfo,
    PartRef,
    StoredObject,
    check_part_number,
    clamp_range,
    content_md5,
    part_refs,
    validate_key,
)
from .errors import ObjectNotFound, StorageError, StorageUnavailable, UploadNotFound
from .s3_streams import S3Reader, S3Writer

log = logging.getLogger(__name__)


def client_error_code(e: BaseException | None) -> str:
    resp = getattr(e, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


class S3Storage:
    """Objects in one S3 bucket (path-style addressing, SigV4).

    ``part_size`` (>= 5 MiB) is both the multipart threshold and the writer's memory bound. Requests retry
    with botocore's *standard* mode (exponential backoff with jitter on connection errors, throttling and
    5xx) up to ``max_attempts`` attempts in all, each bounded by ``connect_timeout`` / ``read_timeout``; after
    that the call raises :class:`StorageUnavailable`. ``verify`` is botocore's: TLS verification on or off, or
    the path of a CA bundle. The bucket is created on first write when missing (and
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
                retries={"mode": "standard", "total_max_attempts": attempts},  # botocore: max_attempts = retries
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=16,
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
            code = client_error_code(e)
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
                    if client_error_code(e.__cause__) not in exists:
                        raise StorageError(f"bucket {self.bucket!r} is missing and could not be created "
                                           f"at {self.endpoint_url}: {e}") from e
            except StorageError as e:
                # a 403 on HEAD means "exists but HEAD not allowed" under some policies: let the real
                # operation succeed or fail with its own error
                if type(e) is not StorageError or client_error_code(e.__cause__) not in ("403",
                                                                                          "AccessDenied"):
                    raise
            self._bucket_ready = True

    # -- objects
    def open_writer(self, key: str) -> S3Writer:
        validate_key(key)
        return S3Writer(self, key)

    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> StoredObject:
        validate_key(key)
        if len(data) > S3_MAX_PART_SIZE:  # over a single PUT's limit: go multipart
            with self.open_writer(key) as w:
                w.write(data)
                return w.commit()
        self.ensure_bucket()
        body = data if isinstance(data, bytes) else bytes(data)
        self._call("write", key, self._client.put_object, Bucket=self.bucket, Key=key, Body=body,
                   ContentMD5=content_md5(body), ContentLength=len(body))
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
        except Exception:  # servers without Object Lock (e.g. SeaweedFS) answer with an error
            locked = False
        extra: dict[str, Any] = ({"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": retain_until}
                                 if locked else {})
        self._call("write", key, self._client.put_object, Bucket=self.bucket, Key=key, Body=data,
                   ContentMD5=content_md5(data), ContentLength=len(data), **extra)
        return locked

    def presigned_get(self, key: str, expires_seconds: int) -> str:
        """A short-lived SigV4 GET URL for one object (federation: a peer fetches a body straight from here)."""
        url: str = self._client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                       ExpiresIn=expires_seconds)
        return url

    def open_reader(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        lo, hi = clamp_range(start, end, self.size(key))
        return io.BufferedReader(S3Reader(self, key, lo, hi), buffer_size=1 * MiB)

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

    def object_versions(self, key: str) -> list[str]:
        """Every stored version id of exactly ``key``, delete markers included ("null" on an unversioned
        bucket). Empty means nothing of the key is left, not even a hidden older version."""
        validate_key(key)
        pages = self._client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key)
        it = iter(pages)
        found: list[str] = []
        while True:
            try:
                page = self._call("list versions", key, lambda: next(it, None))
            except ObjectNotFound:
                return found  # no bucket: nothing stored
            if page is None:
                return found
            for entry in [*page.get("Versions", ()), *page.get("DeleteMarkers", ())]:
                if entry["Key"] == key:
                    found.append(str(entry.get("VersionId") or "null"))

    def delete_every_version(self, key: str) -> int:
        """Delete every version of ``key`` and its delete markers (a plain DELETE on a versioned bucket only
        hides the object behind a marker). Returns how many versions went."""
        deleted = 0
        for _ in range(3):  # a version written meanwhile is caught by the next round
            versions = self.object_versions(key)
            if not versions:
                return deleted
            for version in versions:
                with contextlib.suppress(ObjectNotFound):
                    self._call("delete version", key, self._client.delete_object, Bucket=self.bucket, Key=key,
                               VersionId=version)
                deleted += 1
        return deleted

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
        check_part_number(part_number)
        body = data if isinstance(data, bytes) else bytes(data)
        resp = self._call(f"upload part {part_number} of", key, self._client.upload_part,
                          Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=part_number,
                          Body=body, ContentMD5=content_md5(body), ContentLength=len(body))
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
        chosen = part_refs(key, self.list_parts(key, upload_id) if parts is None else parts)
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
        except Exception as e:  # the upload stays invisible; cleanup_incomplete() sweeps it
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
