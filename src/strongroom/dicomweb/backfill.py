"""Index instances archived before the DICOMweb index existed (or by an older ``INDEX_VERSION``).

Resumable: each batch is committed with its rows marked ``index_version = INDEX_VERSION``; a run that is
stopped and started again goes on with the rows still unmarked. An instance that cannot be indexed is
left unmarked (and counted): the next run tries it again. Each archived file is decrypted in memory
(never on disk) with the hub's keys.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO

from sqlalchemy import func, select

from ..archive import c4gh
from ..archive.backend import storage_for
from ..archive.keys import hub_keys
from ..archive.models import ArchiveFile
from ..archive.storage.base import Storage
from ..db import transaction
from ..hub import Hub
from ..imaging import dicomindex
from ..imaging.models import ImportedInstance
from ..imaging.service import index_columns


def _reader(storage: Storage, key: str, start: int, end: int) -> BinaryIO:
    return storage.open_reader(key, start, end)


@dataclass
class Backfill:
    indexed: int = 0
    failed: int = 0
    remaining: int = 0


def pending(hub: Hub) -> int:
    with hub.sessions() as session:
        return session.scalar(select(func.count()).where(
            ImportedInstance.index_version < dicomindex.INDEX_VERSION, ImportedInstance.file_id.is_not(None))) or 0


def run(hub: Hub, *, batch: int = 200, limit: int | None = None,
        progress: Callable[[int, int], None] | None = None) -> Backfill:
    """Index up to ``limit`` instances (all by default), ``batch`` per transaction."""
    storage = storage_for(hub)
    result, after = Backfill(), 0
    while limit is None or result.indexed + result.failed < limit:
        size = batch if limit is None else min(batch, limit - result.indexed - result.failed)
        with transaction(hub.sessions) as session:
            rows = list(session.execute(
                select(ImportedInstance, ArchiveFile).join(ArchiveFile, ArchiveFile.id == ImportedInstance.file_id)
                .where(ImportedInstance.index_version < dicomindex.INDEX_VERSION, ImportedInstance.id > after)
                .order_by(ImportedInstance.id).limit(size)).tuples())
            if not rows:
                break
            secrets = hub_keys(hub, session).secrets
            for inst, f in rows:
                after = inst.id
                try:
                    assert f.header is not None and f.body_key is not None
                    keys = c4gh.open_header(f.header, secrets).session_keys
                    plain = b"".join(c4gh.decrypt_range(partial(_reader, storage, f.body_key), keys, 0,
                                                        f.plaintext_size or 0, f.body_size))
                    index = dicomindex.index_stream(io.BytesIO(plain))
                except (dicomindex.NotIndexable, c4gh.C4ghError, OSError, AssertionError):
                    result.failed += 1
                    continue
                for column, value in index_columns(index).items():
                    setattr(inst, column, value)
                result.indexed += 1
        if progress is not None:
            progress(result.indexed, result.failed)
    result.remaining = pending(hub)
    return result
