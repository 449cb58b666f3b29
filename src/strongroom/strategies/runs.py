"""Strategy runs on extracts in the project's archive (issue 20 §2: data requests follow the eight steps).

A steward picks an archived extract and a saved strategy version; `start` records the run and queues the
job `strategy.run`, which (`execute`):

1. decrypts the extract server-side into a private temporary directory (deleted afterwards, whatever happens);
2. applies the strategy with the project's own key (pseudonyms and date shifts match its DICOM);
3. verifies — and, when the verification passes, writes the output as Parquet, verifies *that file* again
   from scratch, encrypts it and the report (JSON) into the project's archive and makes a draft dataset of
   both, whose description names the strategy (name, version, SHA-256) and the run;
4. when it fails, keeps only the report, in the run's row. Nothing unverified becomes a file.

The job is idempotent: a finished run is never redone; an attempt that finds the run finished by another one
deletes the bodies it sealed. Each database step is its own short transaction.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive import c4gh
from ..archive.accession import new_accession
from ..archive.backend import storage_for
from ..archive.derived import archive_derived
from ..archive.files import seal_into_storage
from ..archive.keys import HubKeys, hub_keys
from ..archive.models import READY, ArchiveFile
from ..archive.sealing import SealedBody
from ..archive.storage.base import Storage
from ..audit import service as audit
from ..audit.service import Actor
from ..config import Settings
from ..db import transaction, utcnow
from ..errors import Conflict, Invalid, NotFound
from ..hub import Hub
from ..identity.principal import Principal
from ..imaging.keystore import project_secret
from ..jobs import service as jobs
from ..projects.service import ProjectAccess
from . import engine, service
from . import report as reports
from .models import (
    ERROR,
    FAILED,
    FINISHED,
    OPEN,
    PASSED,
    QUEUED,
    RUNNING,
    DataRequest,
    StrategyRun,
    StrategyVersion,
)
from .tables import SUFFIXES, TableError, read_table, suffix_of, write_table

JOB = "strategy.run"
ACTOR = Actor.system("strategy-run")
log = structlog.get_logger("strongroom.strategies")


class RunError(Exception):
    """The run cannot be made (unreadable extract, a strategy that does not fit it, a damaged body):
    the run ends in state `error` with this text."""


# -- the hub's side: start, list, read ----------------------------------------------------------------
def start(session: Session, settings: Settings, principal: Principal, access: ProjectAccess, *, file_id: str,
          version: int | None = None) -> StrategyRun:
    """Queue a run of a saved version (the newest when None) on one of the project's archived extracts."""
    access.require(service.EDIT_RIGHT)
    strategy_version = service.get_version(session, access, version)
    f = session.get(ArchiveFile, file_id)
    if f is None or f.project_id != access.project.id:
        raise Invalid(f"no file {file_id!r} in this project")
    if f.hold is not None:
        raise Invalid(f"{f.path}: the file is held ({f.hold}); release it before running a strategy on it")
    if f.state != READY:
        raise Invalid(f"{f.path}: the file is {f.state}, not archived yet")
    if suffix_of(f.path) not in SUFFIXES:
        raise Invalid(f"{f.path}: not a table the strategy engine reads ({', '.join(SUFFIXES)})")
    project_secret(session, settings, access.project.id)  # made now if new: the job only reads it
    run = StrategyRun(project_id=access.project.id, strategy_version_id=strategy_version.id, input_file_id=f.id,
                      state=QUEUED, created_by=principal.user.id)
    session.add(run)
    session.flush()
    jobs.enqueue(session, JOB, {"run_id": str(run.id)}, dedup_key=f"strategy-run:{run.id}", max_attempts=3)
    audit.record(session, principal.actor, "strategy.run.started", project_id=access.project.id,
                 target=f"strategy-run:{run.id}",
                 details={"file": f.id, "version": strategy_version.version, "sha256": strategy_version.sha256})
    return run


def list_runs(session: Session, access: ProjectAccess, *, limit: int = 100) -> list[tuple[StrategyRun, int, str]]:
    """The project's runs, newest first, each with its strategy version number and the input's path."""
    access.require(service.READ_RIGHT)
    rows = session.execute(
        select(StrategyRun, StrategyVersion.version, ArchiveFile.path)
        .join(StrategyVersion, StrategyVersion.id == StrategyRun.strategy_version_id)
        .join(ArchiveFile, ArchiveFile.id == StrategyRun.input_file_id)
        .where(StrategyRun.project_id == access.project.id)
        .order_by(StrategyRun.created_at.desc()).limit(min(max(limit, 1), 1000)))
    return [(run, number, path) for run, number, path in rows]


def get_run(session: Session, access: ProjectAccess, run_id: uuid.UUID) -> tuple[StrategyRun, int, str]:
    access.require(service.READ_RIGHT)
    row = session.execute(
        select(StrategyRun, StrategyVersion.version, ArchiveFile.path)
        .join(StrategyVersion, StrategyVersion.id == StrategyRun.strategy_version_id)
        .join(ArchiveFile, ArchiveFile.id == StrategyRun.input_file_id)
        .where(StrategyRun.id == run_id, StrategyRun.project_id == access.project.id)).first()
    if row is None:
        raise NotFound("no such run")
    return row[0], row[1], row[2]


def run_files(session: Session, access: ProjectAccess) -> list[ArchiveFile]:
    """The project's archived extracts a run may read (ready, not held, a table by its name)."""
    access.require(service.EDIT_RIGHT)
    files = session.scalars(select(ArchiveFile).where(ArchiveFile.project_id == access.project.id,
                                                      ArchiveFile.state == READY, ArchiveFile.hold.is_(None))
                            .order_by(ArchiveFile.created_at.desc()).limit(2000))
    return [f for f in files if suffix_of(f.path) in SUFFIXES][:200]


# -- the job's side ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Work:
    """What a run needs, read in one short transaction."""

    run_id: uuid.UUID
    project_id: uuid.UUID
    created_by: uuid.UUID
    file_id: str
    path: str
    header: bytes
    body_key: str
    plaintext_sha256: str
    version: int
    text: str
    sha256: str
    secret: bytes
    keys: HubKeys


def execute(hub: Hub, run_id: uuid.UUID, *, last_attempt: bool = True) -> str:
    """Do the run (see the module's text); returns its final state. Safe to call again at any point."""
    with transaction(hub.sessions) as session:
        run = session.get(StrategyRun, run_id, with_for_update=True)
        if run is None:
            return "missing"
        if run.state in FINISHED:
            return run.state
        run.state = RUNNING
        work = _work(hub, session, run)
    if isinstance(work, str):
        return _finish(hub, run_id, ERROR, error=work)
    storage = storage_for(hub)
    sealed: list[SealedBody] = []
    try:
        with tempfile.TemporaryDirectory(prefix="strongroom-run-") as tmp:  # 0700, the worker's own
            outcome = _apply(work, storage, Path(tmp), sealed)
    except RunError as exc:
        _delete(storage, sealed)
        return _finish(hub, run_id, ERROR, error=str(exc))
    except Exception as exc:
        _delete(storage, sealed)
        if last_attempt:  # no attempt is left to retry it: say so on the run instead of leaving it running
            _finish(hub, run_id, ERROR, error=f"internal error: {type(exc).__name__}")
        raise
    report, passed = outcome
    if not passed:
        return _finish(hub, run_id, FAILED, report=report)
    try:
        return _finish(hub, run_id, PASSED, report=report, work=work, sealed=sealed, storage=storage)
    except BaseException:
        _delete(storage, sealed)
        raise


def _work(hub: Hub, session: Session, run: StrategyRun) -> _Work | str:
    f = session.get(ArchiveFile, run.input_file_id)
    version = session.get(StrategyVersion, run.strategy_version_id)
    assert f is not None and version is not None
    if f.state != READY or f.hold is not None or f.header is None or f.body_key is None:
        return f"the input file {f.id} is no longer ready ({f.hold or f.state})"
    return _Work(run_id=run.id, project_id=run.project_id, created_by=run.created_by, file_id=f.id, path=f.path,
                 header=f.header, body_key=f.body_key, plaintext_sha256=f.plaintext_sha256 or "",
                 version=version.version, text=version.text, sha256=version.sha256,
                 secret=project_secret(session, hub.settings, run.project_id), keys=hub_keys(hub, session))


def _decrypt(work: _Work, storage: Storage, target: Path) -> None:
    """The extract's plaintext into `target`, checked against the SHA-256 taken at ingest."""
    try:
        opened = c4gh.open_header(work.header, work.keys.secrets)
        digest = hashlib.sha256()
        with storage.open_reader(work.body_key) as reader, target.open("wb") as out:
            for segment in c4gh.decrypt_segments(reader, opened.session_keys):
                digest.update(segment)
                out.write(segment)
    except c4gh.C4ghError as exc:
        raise RunError(f"the archived extract cannot be decrypted: {exc}") from None
    if digest.hexdigest() != work.plaintext_sha256:
        raise RunError("the archived extract differs from what was ingested (SHA-256)")


def _apply(work: _Work, storage: Storage, tmp: Path, sealed: list[SealedBody]) -> tuple[dict[str, Any], bool]:
    """Decrypt, apply, verify; when it passed, seal the output and the report into storage (`sealed`)."""
    try:
        strategy = service.parse(work.text)
    except Invalid as exc:
        raise RunError(exc.detail) from None
    source = tmp / ("extract" + suffix_of(work.path))
    _decrypt(work, storage, source)
    try:
        frame = read_table(source)
        result = engine.apply(frame, strategy, work.secret)
    except (TableError, engine.StrategyError) as exc:
        raise RunError(str(exc)) from None
    report = result.report(strategy)
    report["run"] = {"id": str(work.run_id), "input_file": work.file_id, "input_sha256": work.plaintext_sha256,
                     "strategy_version": work.version, "strategy_sha256": work.sha256}
    # as JSON has it (dates of a shifted column in a group become text): the row and the archived file agree
    report = json.loads(reports.to_json(report))
    if not result.passed:
        return report, False
    stem = Path(work.path.rstrip(". ")).stem
    output = write_table(result.output, tmp / f"{stem}.parquet")
    del result
    # what is archived is what passed: the written file is verified again, knowing nothing of how it was made
    names = engine.names_to_find(frame, strategy.identifier_scan)
    again = engine.verify(pl.read_parquet(output), strategy, names=names)
    if not again.passed:
        raise RunError("the written output did not pass the verification again; nothing was archived")
    report_path = tmp / f"{stem}.report.json"
    report_path.write_text(reports.to_json(report), encoding="utf-8")
    for path in (output, report_path):
        sealed.append(seal_into_storage(work.keys, storage, work.project_id, new_accession("SRF"), str(path)))
    return report, True


def _delete(storage: Storage, sealed: list[SealedBody]) -> None:
    for body in sealed:
        try:
            storage.delete(body.body_key)
        except Exception:  # the run's state matters more; a stray body is swept by hand
            log.exception("strategy.run.cleanup_failed", body_key=body.body_key)


def _finish(hub: Hub, run_id: uuid.UUID, state: str, *, report: dict[str, Any] | None = None,
            error: str | None = None, work: _Work | None = None, sealed: list[SealedBody] | None = None,
            storage: Storage | None = None) -> str:
    with transaction(hub.sessions) as session:
        return _conclude(session, run_id, state, report=report, error=error, work=work, sealed=sealed,
                         storage=storage)


def give_up(session: Session, payload: dict[str, Any], error: str) -> None:
    """`strategy.run`'s ``on_given_up``: its job failed for good without `execute` ending the run (the worker
    died, hung or ran past its time limit on the last attempt): the run ends in `error` instead of staying
    running. What the lost attempt sealed is deleted by that attempt if it ever finishes (`_conclude` finds the
    run finished); otherwise it is a stray body, as after any crash. Idempotent: a finished run is left alone."""
    run_id = uuid.UUID(payload["run_id"])
    if session.get(StrategyRun, run_id) is not None:
        _conclude(session, run_id, ERROR, error=f"gave up: {_job_error(error)}")


def _job_error(error: str) -> str:
    """The job's last error as a run may show it: the runner's own words for a lost or timed-out attempt; of an
    exception, only its type (its text may quote the extract's values; the job's record keeps it)."""
    if error.startswith("attempt "):
        return error[:1000]
    return f"internal error: {error.splitlines()[-1].split(':', 1)[0].strip()[:200] if error else 'unknown'}"


def _conclude(session: Session, run_id: uuid.UUID, state: str, *, report: dict[str, Any] | None = None,
              error: str | None = None, work: _Work | None = None, sealed: list[SealedBody] | None = None,
              storage: Storage | None = None) -> str:
    run = session.get(StrategyRun, run_id, with_for_update=True)
    assert run is not None
    if run.state in FINISHED:  # another attempt finished it first: what this one sealed is not needed
        if storage is not None and sealed:
            _delete(storage, sealed)
        return run.state
    run.report, run.error, run.finished_at = report, error, utcnow()
    if report is not None:
        run.rows_in, run.rows_out = report["rows_in"], report["rows_out"]
    details: dict[str, Any] = {"rows_in": run.rows_in, "rows_out": run.rows_out}
    if state == PASSED:
        assert work is not None and sealed is not None and storage is not None
        try:
            with session.begin_nested():
                dataset = _archive(session, work, sealed)
        except Conflict as exc:  # the quota does not allow the output
            _delete(storage, sealed)
            state, run.error = ERROR, f"the output could not be archived: {exc.detail}"
        else:
            run.dataset_id, run.output_file_id, run.report_file_id = dataset, sealed[0].file_id, sealed[1].file_id
            attach_run_output(session, run)  # a data request waiting for this run gets its dataset
            details |= {"dataset": dataset, "output_file": sealed[0].file_id, "report_file": sealed[1].file_id}
    run.state = state
    if state == PASSED:
        audit.record(session, ACTOR, "strategy.run.passed", project_id=run.project_id,
                     target=f"strategy-run:{run.id}", details=details)
    else:
        failed_checks = [c["name"] for c in (report or {}).get("checks", []) if not c["passed"]]
        audit.record(session, ACTOR, "strategy.run.failed", outcome="failed", project_id=run.project_id,
                     target=f"strategy-run:{run.id}",
                     details={**details, "state": state, **({"error": run.error} if run.error else {}),
                              **({"failed_checks": failed_checks} if failed_checks else {})})
    return state


def attach_run_output(session: Session, run: StrategyRun) -> None:
    """A passing run's draft dataset becomes the release candidate of the open data request waiting for it."""
    for r in session.scalars(select(DataRequest).where(DataRequest.run_id == run.id, DataRequest.state == OPEN)):
        r.dataset_id, r.dataset_version, r.updated_at = run.dataset_id, 1, utcnow()


def _archive(session: Session, work: _Work, sealed: list[SealedBody]) -> str:
    stem = Path(work.path.rstrip(". ")).stem
    name = service.parse(work.text).name
    folder = f"strategy-runs/{work.run_id}"
    marking = (f"The verified output of a pseudonymization strategy run, and its report.\n\n"
               f"Strategy: {name}, version {work.version} (SHA-256 {work.sha256})\n"
               f"Run: {work.run_id}\nExtract: {work.file_id} ({work.path}, SHA-256 {work.plaintext_sha256})")
    dataset, _ = archive_derived(
        session, ACTOR, work.project_id, work.created_by,
        files=[(f"{folder}/{stem}.parquet", sealed[0]), (f"{folder}/{stem}.report.json", sealed[1])],
        title=f"{stem}: {name} v{work.version}", description=marking,
        note=f"strategy {name} v{work.version} sha256:{work.sha256} run:{work.run_id}")
    return dataset.id
