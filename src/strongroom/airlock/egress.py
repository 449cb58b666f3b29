"""Transports of the airlock's external destinations (``s3``, ``sftp``): a crypt4gh stream out, the same
bytes read back. No database here; ``transfer`` decides what is sent and writes the receipt.

Credentials, and where they connect, come from the hub's configuration (``[airlock.s3.<name>]``,
``[airlock.sftp.<name>]``), never from the project's destination. An SFTP server must present the host key the
credential pins (a known_hosts line): there is no trust on first use.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import re
import threading
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ..archive import c4gh
from ..archive.storage.s3 import S3Storage
from ..config import AirlockS3Credential, AirlockSftpCredential
from .plaintext import NotAsSent, TransferRefused

CHUNK = 4 * 1024 * 1024
SFTP_OP_SECONDS = 300.0  # one SFTP request (open, a 4 MiB write or read, close) may take this long
_KEY_TYPE = re.compile(r"^(ssh-|ecdsa-|sk-)")
_T = TypeVar("_T")


@dataclass(frozen=True)
class ReadBack:
    """What came back from the destination: the crypt4gh stream's size and SHA-256, and the SHA-256 of
    its body decrypted with the session key(s) (the plaintext the partner will get)."""

    size: int
    stream_sha256: str
    plaintext_sha256: str


def read_back(chunks: Iterable[bytes], header_size: int, session_keys: list[bytes]) -> ReadBack:
    """Hash a delivered stream and decrypt its body (after the ``header_size`` bytes of header)."""
    stream, size = hashlib.sha256(), 0

    def body() -> Iterator[bytes]:
        nonlocal size
        skip = header_size
        for chunk in chunks:
            stream.update(chunk)
            size += len(chunk)
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            yield chunk[skip:]
            skip = 0

    plain = hashlib.sha256()
    for segment in c4gh.decrypt_segments(body(), session_keys):
        plain.update(segment)
    return ReadBack(size, stream.hexdigest(), plain.hexdigest())


def safe_name(path: str) -> str:
    """A file name for the destination from an archive path: its last part, nothing but [A-Za-z0-9._-]."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", posixpath.basename(path)).lstrip(".")
    return name or "file"


# -- s3 ----------------------------------------------------------------------------------------------
def s3_storage(cred: AirlockS3Credential) -> S3Storage:
    """The partner bucket with the archive's client settings (timeouts, bounded retries); never created."""
    return S3Storage(cred.endpoint_url, cred.bucket, cred.access_key.get_secret_value() or None,
                     cred.secret_key.get_secret_value() or None, cred.region, create_bucket=False,
                     connect_timeout=cred.connect_timeout, read_timeout=cred.read_timeout,
                     max_attempts=cred.max_attempts, verify=cred.verify_tls)


def s3_put(storage: S3Storage, key: str, chunks: Iterable[bytes]) -> int:
    writer = storage.open_writer(key)
    try:
        for chunk in chunks:
            writer.write(chunk)
        return writer.commit().size
    except BaseException:
        writer.abort()
        raise


def s3_chunks(storage: S3Storage, key: str) -> Iterator[bytes]:
    """The object as stored (HEAD for its size, then GET)."""
    size, got = storage.size(key), 0
    with storage.open_reader(key) as reader:
        while chunk := reader.read(CHUNK):
            got += len(chunk)
            yield chunk
    if got != size:
        raise NotAsSent(f"{key}: read {got} bytes of {size}")


# -- sftp --------------------------------------------------------------------------------------------
def pinned_host_key(line: str) -> Any:
    """The public key of a known_hosts line (or of a bare ``type base64`` key)."""
    import asyncssh

    tokens = line.split()
    for i, token in enumerate(tokens[:2]):
        if _KEY_TYPE.match(token) and i + 1 < len(tokens):
            try:
                return asyncssh.import_public_key(f"{token} {tokens[i + 1]}")
            except (asyncssh.KeyImportError, ValueError):
                break
    raise TransferRefused("the credential's host_key is not a known_hosts line with a public key")


class SftpSession:
    """A synchronous face on one asyncssh connection and SFTP session: its event loop runs in a thread of
    its own, so the (synchronous) transfer job streams into it chunk by chunk."""

    def __init__(self, cred: AirlockSftpCredential) -> None:
        self.where = f"{cred.username}@{cred.host}:{cred.port}"
        host_key = pinned_host_key(cred.host_key)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="airlock-sftp", daemon=True)
        self._thread.start()
        self._conn: Any = None
        try:
            self._sftp = self._run(self._open(cred, host_key), cred.connect_timeout * 3)
        except BaseException:
            self.close()
            raise

    def _run(self, step: Awaitable[_T], timeout: float = SFTP_OP_SECONDS) -> _T:
        async def run() -> _T:  # asyncssh's open() is awaitable, not a coroutine
            return await step

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    async def _open(self, cred: AirlockSftpCredential, host_key: Any) -> Any:
        import asyncssh

        try:
            client_key = asyncssh.read_private_key(cred.private_key_file,
                                                   cred.passphrase.get_secret_value() or None)
        except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            raise TransferRefused(f"the hub's SFTP key for {self.where} cannot be read: "
                                  f"{type(exc).__name__}") from None
        try:
            self._conn = await asyncssh.connect(
                cred.host, port=cred.port, username=cred.username,
                known_hosts=([host_key], [], []), client_keys=[client_key], agent_path=None, password=None,
                kbdint_auth=False, gss_auth=False, host_based_auth=False, config=[],
                connect_timeout=cred.connect_timeout, login_timeout=cred.connect_timeout)
        except asyncssh.HostKeyNotVerifiable:
            raise TransferRefused(f"{self.where}: the server's host key does not match the credential's "
                                  "host_key (refused; nothing was sent)") from None
        except asyncssh.PermissionDenied:
            raise TransferRefused(f"{self.where}: the server refused the hub's key") from None
        return await self._conn.start_sftp_client()

    def makedirs(self, path: str) -> None:
        self._run(self._sftp.makedirs(path, exist_ok=True))

    def put(self, path: str, chunks: Iterable[bytes]) -> int:
        """Write ``chunks`` to ``path`` (replacing it); the number of bytes written."""
        f = self._run(self._sftp.open(path, "wb"))
        written = 0
        try:
            for chunk in chunks:
                self._run(f.write(chunk))
                written += len(chunk)
        finally:
            self._run(f.close())
        return written

    def size(self, path: str) -> int:
        return int(self._run(self._sftp.stat(path)).size)

    def chunks(self, path: str) -> Iterator[bytes]:
        f = self._run(self._sftp.open(path, "rb"))
        try:
            while chunk := self._run(f.read(CHUNK)):
                yield chunk
        finally:
            self._run(f.close())

    def remove(self, path: str) -> None:
        self._run(self._sftp.remove(path))

    def close(self) -> None:
        async def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                await self._conn.wait_closed()

        try:
            if self._thread.is_alive():
                self._run(shut(), 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            if not self._thread.is_alive():
                self._loop.close()
