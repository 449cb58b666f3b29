"""Files of a request, decrypted on the hub into a private temporary directory for the checks, the
reviewers' look and the transfer; deleted as soon as the reader is done."""

from __future__ import annotations

import hashlib
import hmac
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from ..archive import c4gh
from ..archive.backend import storage_for
from ..archive.keys import hub_keys
from ..archive.models import READY, ArchiveFile
from ..db import open_session
from ..hub import Hub
from . import checks


class TransferRefused(Exception):
    """The destination cannot take the files (no such project, no key, quota): no retry helps."""


class NotAsSent(RuntimeError):
    """What was read back from a destination is not what was sent (retried). Its text is the hub's own, so
    members may read it; every other error of a delivery goes to the hub's log only."""


# -- decrypting on the hub ---------------------------------------------------------------------
@dataclass(frozen=True)
class FileRef:
    """What decrypting an archived file needs, read in a short transaction: no database session (and on
    SQLite no lock) is held while its bytes are read, decrypted and checked."""

    id: str
    path: str
    header: bytes
    body_key: str
    sha256: str
    secrets: tuple[bytes, ...]


def file_ref(hub: Hub, session: Session, f: ArchiveFile) -> FileRef:
    assert f.header is not None and f.body_key is not None
    return FileRef(f.id, f.path, f.header, f.body_key, f.plaintext_sha256 or "",
                   tuple(hub_keys(hub, session).secrets))


@contextmanager
def plaintext_copy(hub: Hub, ref: FileRef, *, limit: int | None = None) -> Iterator[Path]:
    """The file decrypted into a private temp dir (removed afterwards), its name's suffix kept.
    Without ``limit`` its SHA-256 is checked against the archive's record."""
    opened = c4gh.open_header(ref.header, list(ref.secrets))
    storage = storage_for(hub)
    with tempfile.TemporaryDirectory(prefix="strongroom-airlock-") as tmp:
        path = Path(tmp) / ("file" + checks.suffix_of(ref.path))
        digest, written = hashlib.sha256(), 0
        with storage.open_reader(ref.body_key) as reader, path.open("wb") as out:
            for segment in c4gh.decrypt_segments(reader, opened.session_keys):
                digest.update(segment)
                out.write(segment)
                written += len(segment)
                if limit is not None and written >= limit:
                    break
        if limit is None and not hmac.compare_digest(digest.hexdigest(), ref.sha256):
            raise TransferRefused(f"{ref.id}: the stored file does not match its recorded SHA-256")
        yield path


def refs(hub: Hub, file_ids: list[str]) -> dict[str, FileRef | None]:
    """FileRefs of ready files (None for a file no longer ready), in one short read."""
    with open_session(hub.sessions, deferred=True) as session:
        out: dict[str, FileRef | None] = {}
        for file_id in file_ids:
            f = session.get(ArchiveFile, file_id)
            out[file_id] = file_ref(hub, session, f) if f is not None and f.state == READY else None
        return out


