"""Strategies API: a project's strategy and its versions; check a strategy's text without saving it."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fastapi import APIRouter, Response
from pydantic import Field

from ..deps import Db, ProjectsRead, ProjectsWrite
from ..errors import Invalid
from ..projects.service import open_project
from ..schemas import Body, Int32, Out
from . import service

router = APIRouter(prefix="/api/v1", tags=["strategies"])


class StrategyVersionOut(Out):
    version: int
    name: str
    text: str
    sha256: str
    comment: str
    created_by: uuid.UUID
    created_at: dt.datetime


class StrategyIn(Body):
    text: str = Field(min_length=1, max_length=1_000_000, description="The strategy, as TOML.")
    comment: str = Field("", max_length=500, description="Why this version (shown in its history).")


class StrategyText(Body):
    text: str = Field(min_length=1, max_length=1_000_000)


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
        strategy = service.parse(body.text)
    except Invalid as exc:
        return CheckOut(valid=False, problems=exc.extra.get("problems", []))
    return CheckOut(valid=True, name=strategy.name, output_columns=strategy.output_columns())
