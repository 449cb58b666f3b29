"""Nothing unverified is published (issue 20): a table may leave its project in a released dataset version only
as the output of a **passing strategy run of that project** — the run that wrote it verified it, and the file
written, from scratch (`runs.py`). Deny by default, by content: every other file of the version is read and
judged by its bytes (`content.judge`: a table in any form — delimited text by any name, JSON or XML records,
a spreadsheet, Parquet, an archive or compressed stream holding one, text holding an identifier — or not),
whoever added it and however (upload, share of an older draft, import).

What is not read: the passing runs' outputs and reports (their provenance is in the database), and the
DICOM instances the project's imaging imports archived (their own verification: de-identified and checked
before they were archived, `imaging/`), so publishing an import does not decrypt the import dataset. Every
other file is decrypted on the hub, only as far as its verdict needs (the magic bytes of a binary; a text to
its end, up to ``content.TEXT_LIMIT``), in the releasing request. The airlock verifies a table's content
afresh against the project's strategy before reviewers see it (`airlock/checks.py`).

Registered by ``strategies.includeme`` into the archive's ``RELEASE_CHECKS`` (every way to release:
``release_version`` — API, page, CLI, a data request's release — and ``publish_version``) and
``VERSION_MARKS`` (pages and the API show what a version was made with)."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from ..archive import c4gh
from ..archive.backend import storage_for
from ..archive.c4gh.format import CIPHER_SEGMENT_SIZE
from ..archive.keys import hub_keys
from ..archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..archive.storage.errors import ObjectNotFound
from ..errors import Conflict
from ..hub import HUB_INFO, Hub
from ..imaging.models import ARCHIVED, PUBLISHED, ImportedInstance
from . import content
from .models import PASSED, StrategyRun, StrategyVersion

SHOWN = 10  # unverified tables named in a refusal


@dataclass(frozen=True)
class Unverified:
    file: ArchiveFile
    kind: str  # what its content is (`content.Verdict.kind`), or why it could not be read


def _verified_elsewhere(project_id: uuid.UUID) -> Any:
    """Files whose content is known without reading it: a passing run's output or report, an imaging import's
    verified instance, of this project."""
    run = (select(StrategyRun.id)
           .where(StrategyRun.project_id == project_id, StrategyRun.state == PASSED,
                  or_(StrategyRun.output_file_id == ArchiveFile.id, StrategyRun.report_file_id == ArchiveFile.id))
           .exists())
    imported = (select(ImportedInstance.id)
                .where(ImportedInstance.file_id == ArchiveFile.id, ImportedInstance.project_id == project_id,
                       ImportedInstance.state.in_((ARCHIVED, PUBLISHED)))
                .exists())
    return or_(run, imported)


def _plaintext(hub: Hub, keys: list[bytes], f: ArchiveFile) -> Generator[bytes, None, None]:
    """The file's plaintext, segment by segment, as far as the reader goes (ciphertext read one segment at a time)."""
    if f.header is None or f.body_key is None:
        raise c4gh.C4ghError("the file has no archived body")
    opened = c4gh.open_header(f.header, keys)
    with storage_for(hub).open_reader(f.body_key) as reader:
        yield from c4gh.decrypt_segments(iter(lambda: reader.read(CIPHER_SEGMENT_SIZE), b""), opened.session_keys)


def _judged(hub: Hub | None, keys: list[bytes], f: ArchiveFile) -> content.Verdict:
    if hub is None:  # a session not made by a hub: nothing can be read, so nothing is shown not to be a table
        return content.Verdict(True, "its content cannot be read here")
    chunks = _plaintext(hub, keys, f)
    try:
        return content.judge(chunks)
    except (c4gh.C4ghError, ObjectNotFound, OSError) as exc:  # storage that is down is a 503, not a verdict
        return content.Verdict(True, f"its content cannot be read ({type(exc).__name__})")
    finally:
        chunks.close()  # the storage reader with it


def unverified_tables(session: Session, project_id: uuid.UUID, version_id: int) -> list[Unverified]:
    """The files of a version that are tables (or may hold one) and that no passing run of ``project_id``
    made, in path order: every file not verified elsewhere is read and judged by its content."""
    candidates = session.scalars(
        select(ArchiveFile).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
        .where(and_(DatasetFile.version_id == version_id, ~_verified_elsewhere(project_id)))
        .order_by(ArchiveFile.path))
    hub: Hub | None = session.info.get(HUB_INFO)
    keys: list[bytes] | None = None
    found = []
    for f in candidates.all():
        if keys is None:  # only a version with something to read needs the keys
            keys = list(hub_keys(hub, session).secrets) if hub is not None else []
        verdict = _judged(hub, keys, f)
        if verdict.table:
            found.append(Unverified(f, verdict.kind))
    return found


def release_check(session: Session, ds: Dataset, version: DatasetVersion) -> None:
    """``archive.datasets.RELEASE_CHECKS``: refuse a version holding a table no passing run of the project made.
    The version's row is locked first: no edit of the draft (`edit_draft` locks it too) lands between this
    check and the release."""
    session.execute(select(DatasetVersion.id).where(DatasetVersion.id == version.id).with_for_update())
    unverified = unverified_tables(session, ds.project_id, version.id)
    if unverified:
        shown, count = unverified[:SHOWN], len(unverified)
        names = ", ".join(f"{u.file.path} ({u.file.id}: {u.kind})" for u in shown) + (
            f" and {count - len(shown)} more" if count > len(shown) else "")
        raise Conflict(f"version {version.number} cannot be released: {count} table(s) in it were not made by a "
                       f"passing strategy run of this project: {names}. Nothing unverified is published: a table "
                       f"in any form (whatever its name; compressed, archived or as text) goes out only as the "
                       f"output of a passing run: run the project's strategy on the extract and release the run's "
                       f"dataset.", unverified=[u.file.id for u in shown])


def version_runs(session: Session, project_id: uuid.UUID, version_id: int) -> list[tuple[StrategyRun,
                                                                                          StrategyVersion]]:
    """The passing runs whose output is in the version (the structural mark: run → output file → version)."""
    files = select(DatasetFile.file_id).where(DatasetFile.version_id == version_id)
    rows = session.execute(
        select(StrategyRun, StrategyVersion)
        .join(StrategyVersion, StrategyVersion.id == StrategyRun.strategy_version_id)
        .where(StrategyRun.project_id == project_id, StrategyRun.state == PASSED,
               StrategyRun.output_file_id.in_(files)).order_by(StrategyRun.created_at).limit(50))
    return [(run, sv) for run, sv in rows]


def mark(run: StrategyRun, sv: StrategyVersion, slug: str) -> dict[str, str]:
    return {"text": f"made with strategy {sv.name} v{sv.version} (sha256 {sv.sha256[:12]}…), run {run.id}",
            "strategy": sv.name, "strategy_version": str(sv.version), "strategy_sha256": sv.sha256,
            "run": str(run.id), "report_file": run.report_file_id or "",
            "href": f"/projects/{slug}/strategy/runs/{run.id}/report.html", "link": "verification report"}


def version_marks(session: Session, ds: Dataset, version: DatasetVersion) -> list[dict[str, str]]:
    """``archive.datasets.VERSION_MARKS``."""
    from ..projects.models import Project

    project = session.get(Project, ds.project_id)
    assert project is not None
    return [mark(run, sv, project.slug) for run, sv in version_runs(session, ds.project_id, version.id)]
