"""Files the hub itself derives from archived data (e.g. a strategy run's verified output and its
report), archived and gathered into a draft dataset without a person's request in the loop.

The bodies are sealed beforehand, outside any transaction (``service.seal_into_storage``); here their
rows and the dataset are written in the caller's transaction, and audited."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from ..audit import service as audit
from ..audit.service import Actor
from ..errors import Invalid
from .accession import new_accession
from .datasets import _add_files, _ready_files
from .files import add_sealed_files
from .models import ArchiveFile, Dataset, DatasetVersion
from .sealing import SealedBody


def archive_derived(session: Session, actor: Actor, project_id: uuid.UUID, created_by: uuid.UUID, *,
                    files: list[tuple[str, SealedBody]], title: str, description: str,
                    note: str = "") -> tuple[Dataset, list[ArchiveFile]]:
    """The sealed ``(path, body)`` pairs as READY files of the project (counted against its quota) and a
    new dataset whose version 1 is a draft holding them. Raises QuotaExceeded before writing anything
    when the quota does not allow them."""
    if not title.strip():
        raise Invalid("a dataset needs a title")
    rows = add_sealed_files(session, project_id, created_by, [(path, sealed, None) for path, sealed in files])
    session.flush()
    ds = Dataset(id=new_accession("SRD"), project_id=project_id, title=title.strip()[:300],
                 description=description.strip(), created_by=created_by)
    session.add(ds)
    session.flush()
    version = DatasetVersion(dataset_id=ds.id, number=1, state="draft", note=note)
    session.add(version)
    session.flush()
    _add_files(session, version, _ready_files(session, project_id, [f.id for f in rows]))
    audit.record(session, actor, "archive.dataset.created", project_id=project_id, target=f"dataset:{ds.id}",
                 details={"title": ds.title, "files": version.file_count, "derived": [f.id for f in rows]})
    return ds, rows
