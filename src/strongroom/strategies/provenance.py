"""Nothing unverified is published (issue 20): a table (``tables.TABLE_SUFFIXES``) may leave its project in a
released dataset version only as the output of a **passing strategy run of that project** — the run that
wrote it verified it, and the file written, from scratch (`runs.py`). Deny by default: a table without such a
run is refused, whoever added it and however (upload, share of an older draft, import).

The check is by provenance, at release time, in the database (no decryption in a request): the file's id is
the ``output_file_id`` of a ``passed`` run of the same project. A table in a form no run writes (compressed,
or a spreadsheet/statistics format the hub does not read: ``RELEASE_TABLE_SUFFIXES``) therefore never passes.
The airlock verifies a table's *content* afresh against the project's strategy before reviewers see it
(`airlock/checks.py`).

Registered by ``strategies.includeme`` into the archive's ``RELEASE_CHECKS`` (every way to release:
``release_version`` — API, page, CLI — and ``publish_version``) and ``VERSION_MARKS`` (pages and the API show
what a version was made with)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from ..archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..errors import Conflict
from .models import PASSED, StrategyRun, StrategyVersion
from .tables import TABLE_SUFFIXES

SHOWN = 10  # unverified tables named in a refusal


# Tables in forms no strategy run writes (compressed, or formats the hub does not read): only a raw extract
# can be one, so a version holding one is refused like any unverified table — gzipping a table must not be a
# way round the rule. A run writes its output in one of TABLE_SUFFIXES, uncompressed.
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_OTHER_TABLES = (".xls", ".xlsm", ".xlsb", ".ods", ".sav", ".zsav", ".dta", ".sas7bdat", ".xpt", ".rds", ".rdata",
                 ".feather", ".arrow", ".avro", ".orc", ".jsonl", ".ndjson")
RELEASE_TABLE_SUFFIXES = (*TABLE_SUFFIXES, *_OTHER_TABLES,
                          *(t + c for t in (*TABLE_SUFFIXES, ".txt", *_OTHER_TABLES) for c in _COMPRESSED))


def _is_table_sql() -> Any:
    return or_(*[func.lower(ArchiveFile.path).like(f"%{suffix}") for suffix in RELEASE_TABLE_SUFFIXES])


def unverified_tables(session: Session, project_id: uuid.UUID, version_id: int, *, limit: int = SHOWN
                      ) -> tuple[int, list[ArchiveFile]]:
    """The tables of a version that no passing run of ``project_id`` wrote: how many, and the first few."""
    verified = (select(StrategyRun.id)
                .where(StrategyRun.output_file_id == ArchiveFile.id, StrategyRun.state == PASSED,
                       StrategyRun.project_id == project_id).exists())
    where = and_(DatasetFile.version_id == version_id, _is_table_sql(), ~verified)
    base = select(ArchiveFile).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id).where(where)
    count = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    return count, list(session.scalars(base.order_by(ArchiveFile.path).limit(limit))) if count else []


def release_check(session: Session, ds: Dataset, version: DatasetVersion) -> None:
    """``archive.datasets.RELEASE_CHECKS``: refuse a version holding a table no passing run of the project made."""
    count, shown = unverified_tables(session, ds.project_id, version.id)
    if count:
        names = ", ".join(f"{f.path} ({f.id})" for f in shown) + (f" and {count - len(shown)} more"
                                                                   if count > len(shown) else "")
        raise Conflict(f"version {version.number} cannot be released: {count} table(s) in it were not made by a "
                       f"passing strategy run of this project: {names}. Nothing unverified is published: run "
                       f"the project's strategy on the extract and release the run's dataset.",
                       unverified=[f.id for f in shown])


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
