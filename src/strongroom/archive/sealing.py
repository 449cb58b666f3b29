"""Encrypt a file produced on the hub (e.g. a de-identified DICOM instance) straight into the archive.

Pure (crypt4gh + object storage, no database): it runs in worker processes too. The archive row is
written afterwards by the caller (``service.add_sealed_file``).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from . import c4gh
from .storage.base import Storage
from .storage.errors import StorageError


@dataclass(frozen=True)
class SealedBody:
    """A plaintext file encrypted to the archive key and stored; the row is written by the caller."""

    file_id: str
    header: bytes
    header_key: str
    body_key: str
    body_size: int
    body_sha256: str
    plaintext_size: int
    plaintext_sha256: str
    plaintext_md5: str
    # False: the body's content is durable but its rename is not yet (``seal_file(defer_dir_sync=True)``):
    # ``sync_sealed`` must run before the row commits
    dir_synced: bool = True


def seal_file(key_fingerprint: str, archive_public_key: bytes, storage: Storage, project_id: uuid.UUID | str,
              file_id: str, source_path: str, *, data: bytes | None = None, defer_dir_sync: bool = False
              ) -> SealedBody:
    """One pass over the plaintext: hash (SHA-256, MD5), encrypt (fresh session key), hash and store the
    body. Never stored in plaintext. Each attempt writes its own object (a random suffix), so two
    concurrent attempts for the same file can never overwrite each other's body; the loser's body is
    deleted by whoever finds the row already there.

    ``data``: the plaintext itself, already read by the caller (e.g. the bytes it verified), sealed instead
    of reading ``source_path``.

    ``defer_dir_sync``: on storage that fsyncs a directory per object (local), the body is fsynced and
    renamed into place but its directory is not: whoever writes the rows calls ``sync_sealed`` for the
    whole group first (one directory fsync per group instead of one per body)."""
    deferred = defer_dir_sync and hasattr(storage, "sync_dirs")
    enc = c4gh.Encryptor(archive_public_key)
    plain_sha, plain_md5, body_sha = hashlib.sha256(), hashlib.md5(usedforsecurity=False), hashlib.sha256()
    body_key = f"archive/{project_id}/{file_id}.{secrets.token_hex(4)}"
    size = 0
    writer = storage.open_writer(body_key)
    try:
        # bytes in memory (a verified DICOM instance) go through in one piece: no chunk is copied
        for chunk in [data] if data is not None else _chunks(source_path):
            size += len(chunk)
            plain_sha.update(chunk)
            plain_md5.update(chunk)
            out = enc.update(chunk)
            if out:
                body_sha.update(out)
                writer.write(out)
        out = enc.finalize()
        if out:
            body_sha.update(out)
            writer.write(out)
        stored = writer.commit(sync_dir=False) if deferred else writer.commit()  # type: ignore[call-arg]
    except BaseException:
        writer.abort()
        raise
    return SealedBody(file_id, enc.header, key_fingerprint, body_key, stored.size, body_sha.hexdigest(), size,
                      plain_sha.hexdigest(), plain_md5.hexdigest(), dir_synced=not deferred)


def _chunks(source_path: str) -> Iterator[bytes]:
    step = c4gh.BATCH_SEGMENTS * c4gh.SEGMENT_SIZE
    with open(source_path, "rb") as src:
        while chunk := src.read(step):
            yield chunk


def sync_sealed(storage: Storage, bodies: Iterable[SealedBody]) -> None:
    """Make the bodies sealed with ``defer_dir_sync`` durable where they are (before their rows commit)."""
    keys = [b.body_key for b in bodies if not b.dir_synced]
    if not keys:
        return
    sync_dirs = getattr(storage, "sync_dirs", None)
    if sync_dirs is None:  # sealed on other storage than this one: never commit rows for unsynced bodies
        raise StorageError(f"{storage!r} cannot make deferred bodies durable")
    sync_dirs(keys)
