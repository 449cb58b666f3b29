"""Strategies API: a project's strategy and its versions; check a strategy's text without saving it; runs of
a version on extracts in the project's archive."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Response
from pydantic import Field

from ..deps import DataRead, DataWrite, Db, HubDep, ProjectsRead, ProjectsWrite
from ..errors import Invalid
from ..projects.service import ProjectAccess, open_project
from ..schemas import Body, Int32, Out
from . import requests, runs, service
from .models import DataRequest, StrategyRun, StrategyVersion

router = APIRouter(prefix="/api/v1", tags=["strategies"])
# A strategy is a few KiB of TOML. Any text of this many characters fits the hub's 1 MiB body limit even
# when every character is sent as a JSON escape (12 bytes for one outside the BMP): a body the schema
# allows is never refused as too large.
MAX_TEXT = 80_000


class StrategyVersionOut(Out):
    version: int
    name: str
    text: str
    sha256: str
    comment: str
    created_by: uuid.UUID
    created_at: dt.datetime


class StrategyIn(Body):
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="The strategy, as TOML.")
    comment: str = Field("", max_length=500, description="Why this version (shown in its history).")


class StrategyText(Body):
    text: str = Field(min_length=1, max_length=MAX_TEXT)


class CheckOut(Out):
    valid: bool
    name: str | None = None
    output_columns: list[str] = []
    problems: list[dict[str, Any]] = []


@router.get("/projects/{slug}/strategy", response_model=StrategyVersionOut, summary="The project's strategy (newest)")
def current_strategy(db: Db, principal: ProjectsRead, slug: str) -> StrategyVersionOut:
    return StrategyVersionOut.model_validate(service.get_version(db, open_project(db, principal, slug)))


@router.get("/projects/{slug}/strategy/versions", response_model=list[StrategyVersionOut],
            summary="Every saved version, newest first")
def strategy_versions(db: Db, principal: ProjectsRead, slug: str) -> list[StrategyVersionOut]:
    return [StrategyVersionOut.model_validate(v) for v in service.versions(db, open_project(db, principal, slug))]


@router.get("/projects/{slug}/strategy/versions/{version}", response_model=StrategyVersionOut,
            summary="One saved version")
def strategy_version(db: Db, principal: ProjectsRead, slug: str, version: Int32) -> StrategyVersionOut:
    return StrategyVersionOut.model_validate(service.get_version(db, open_project(db, principal, slug), version))


@router.put("/projects/{slug}/strategy", response_model=StrategyVersionOut,
            responses={201: {"model": StrategyVersionOut, "description": "Saved as a new version"}},
            summary="Save the strategy as the next version (needs the import right)")
def save_strategy(db: Db, principal: ProjectsWrite, slug: str, body: StrategyIn,
                  response: Response) -> StrategyVersionOut:
    row, created = service.save(db, principal, open_project(db, principal, slug), body.text, comment=body.comment)
    response.status_code = 201 if created else 200
    return StrategyVersionOut.model_validate(row)


@router.post("/strategies/check", response_model=CheckOut, summary="Validate a strategy without saving it")
def check_strategy(principal: ProjectsRead, body: StrategyText) -> CheckOut:
    try:
        strategy = service.parse(body.text, new=True)
    except Invalid as exc:
        return CheckOut(valid=False, problems=exc.extra.get("problems", []))
    return CheckOut(valid=True, name=strategy.name, output_columns=strategy.output_columns())


# -- runs on the project's extracts -------------------------------------------------------------------
class RunIn(Body):
    file_id: str = Field(min_length=1, max_length=32, description="An archived extract of the project "
                         "(CSV, TSV, TXT, XLSX or Parquet), ready and not held.")
    version: Int32 | None = Field(None, description="The strategy version to apply (default: the newest).")


class RunOut(Out):
    id: uuid.UUID
    state: str = Field(description="queued, running, passed, failed (the verification said no) or error")
    version: int = Field(description="The strategy version applied.")
    input_file_id: str
    input_path: str
    rows_in: int | None
    rows_out: int | None
    output_file_id: str | None = Field(description="The verified output (Parquet), when passed.")
    report_file_id: str | None = Field(description="The report (JSON) as an archived file, when passed.")
    dataset_id: str | None = Field(description="The draft dataset holding both, when passed.")
    error: str | None
    created_by: uuid.UUID
    created_at: dt.datetime
    finished_at: dt.datetime | None
    report: dict[str, Any] | None = Field(None, description="The verification report (one run only).")


def run_out(run: StrategyRun, version: int, path: str, *, with_report: bool = False) -> RunOut:
    return RunOut(id=run.id, state=run.state, version=version, input_file_id=run.input_file_id, input_path=path,
                  rows_in=run.rows_in, rows_out=run.rows_out, output_file_id=run.output_file_id,
                  report_file_id=run.report_file_id, dataset_id=run.dataset_id, error=run.error,
                  created_by=run.created_by, created_at=run.created_at, finished_at=run.finished_at,
                  report=run.report if with_report else None)


@router.post("/projects/{slug}/strategy/runs", response_model=RunOut, status_code=202,
             summary="Run a strategy version on an archived extract (a job; needs the import right)")
def start_run(db: Db, hub: HubDep, principal: DataWrite, slug: str, body: RunIn) -> RunOut:
    access = open_project(db, principal, slug)
    run = runs.start(db, hub.settings, principal, access, file_id=body.file_id, version=body.version)
    number, path = runs.get_run(db, access, run.id)[1:]
    return run_out(run, number, path)


@router.get("/projects/{slug}/strategy/runs", response_model=list[RunOut], summary="The project's runs, newest first")
def list_runs(db: Db, principal: DataRead, slug: str) -> list[RunOut]:
    return [run_out(*row) for row in runs.list_runs(db, open_project(db, principal, slug))]


@router.get("/projects/{slug}/strategy/runs/{run_id}", response_model=RunOut, summary="One run, with its report")
def get_run(db: Db, principal: DataRead, slug: str, run_id: uuid.UUID) -> RunOut:
    return run_out(*runs.get_run(db, open_project(db, principal, slug), run_id), with_report=True)


# -- data requests: the eight steps ----------------------------------------------------------------
class RequestIn(Body):
    application: str | None = Field(None, max_length=32, description="An access application (SRA-…) for one "
                                    "of the project's datasets: its selection and parameters are copied.")
    title: str = Field("", max_length=300)
    selection: str = Field("", max_length=requests.MAX_SELECTION,
                           description="Cohort, criteria, period (free text); from the application when empty.")
    parameters: dict[str, Any] = Field(default_factory=dict,
                                       description="variables (list), period_start, period_end (dates).")
    strategy_version: Int32 | None = Field(None, description="The strategy version the release is made with "
                                           "(default: the newest).")


class RequestRunIn(Body):
    file_id: str = Field(min_length=1, max_length=32, description="The extract, uploaded into the project.")


class CloseIn(Body):
    reason: str = Field(min_length=1, max_length=2000)


class StepOut(Out):
    name: str
    state: str = Field(description="done, failed, todo, or waiting (an earlier step is not done)")
    evidence: str
    href: str


class RequestOut(Out):
    id: str
    application_id: str | None
    title: str
    selection: str
    parameters: dict[str, Any]
    strategy_version: int
    strategy_sha256: str
    run_id: uuid.UUID | None
    dataset_id: str | None
    dataset_version: int | None
    state: str
    created_by: uuid.UUID
    created_at: dt.datetime
    steps: list[StepOut]


def request_out(db: Db, access: ProjectAccess, r: DataRequest) -> RequestOut:
    sv = db.get(StrategyVersion, r.strategy_version_id)
    assert sv is not None
    return RequestOut(id=r.id, application_id=r.application_id, title=r.title, selection=r.selection,
                      parameters=r.parameters, strategy_version=sv.version, strategy_sha256=sv.sha256,
                      run_id=r.run_id, dataset_id=r.dataset_id, dataset_version=r.dataset_version, state=r.state,
                      created_by=r.created_by, created_at=r.created_at,
                      steps=[StepOut(**asdict(s)) for s in requests.steps(db, access.project, r)])


@router.post("/projects/{slug}/requests", response_model=RequestOut, status_code=201,
             summary="Open a data request (from an application, or the project's own; needs the import right)")
def create_request(db: Db, principal: DataWrite, slug: str, body: RequestIn) -> RequestOut:
    access = open_project(db, principal, slug)
    r = requests.create(db, principal, access, application_id=body.application, title=body.title,
                        selection=body.selection, parameters=body.parameters, strategy_version=body.strategy_version)
    return request_out(db, access, r)


@router.get("/projects/{slug}/requests", response_model=list[RequestOut], summary="The project's data requests")
def list_requests(db: Db, principal: DataRead, slug: str, state: str | None = None) -> list[RequestOut]:
    access = open_project(db, principal, slug)
    return [request_out(db, access, r) for r in requests.list_requests(db, access, state=state)]


@router.get("/projects/{slug}/requests/{request_id}", response_model=RequestOut,
            summary="One data request with its eight steps and their evidence")
def get_request(db: Db, principal: DataRead, slug: str, request_id: str) -> RequestOut:
    access = open_project(db, principal, slug)
    return request_out(db, access, requests.get(db, access, request_id))


@router.post("/projects/{slug}/requests/{request_id}/runs", response_model=RunOut, status_code=202,
             summary="Run the request's strategy version on the uploaded extract")
def start_request_run(db: Db, hub: HubDep, principal: DataWrite, slug: str, request_id: str,
                      body: RequestRunIn) -> RunOut:
    access = open_project(db, principal, slug)
    run = requests.start_run(db, hub.settings, principal, access, request_id, file_id=body.file_id)
    number, path = runs.get_run(db, access, run.id)[1:]
    return run_out(run, number, path)


@router.post("/projects/{slug}/requests/{request_id}/release", response_model=RequestOut,
             summary="Release the passing run's version and grant the approved applicant access to it")
def release_request(db: Db, principal: DataWrite, slug: str, request_id: str) -> RequestOut:
    access = open_project(db, principal, slug)
    requests.release(db, principal, access, request_id)
    return request_out(db, access, requests.get(db, access, request_id))


@router.post("/projects/{slug}/requests/{request_id}/close", response_model=RequestOut,
             summary="Close a data request without a release")
def close_request(db: Db, principal: DataWrite, slug: str, request_id: str, body: CloseIn) -> RequestOut:
    access = open_project(db, principal, slug)
    return request_out(db, access, requests.close(db, principal, access, request_id, body.reason))
