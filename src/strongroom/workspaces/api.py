"""Workspace API under /api/v1/workspaces/…: the caller's workspaces in a project (read-only; workspaces
are started and stopped from the project's page, with fresh MFA)."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import APIRouter
from pydantic import Field

from ..deps import Db, ProjectsRead
from ..projects.service import open_project
from ..schemas import Out
from . import service

router = APIRouter(prefix="/api/v1/workspaces", tags=["workspaces"])


class WorkspaceOut(Out):
    id: uuid.UUID
    state: str = Field(description="starting | running | stopped | failed")
    launcher: str = Field(description="local | slurm")
    isolation: str = Field(description="namespace (egress confined) | none")
    booking_id: int | None
    ends_at: dt.datetime | None = Field(description="when the booking it runs in ends (it stops then)")
    started_at: dt.datetime | None
    stopped_at: dt.datetime | None
    stop_reason: str
    url: str = Field(description="where it opens, through the hub's proxy")


@router.get("/projects/{slug}", response_model=list[WorkspaceOut], summary="Your workspaces in a project")
def list_workspaces(db: Db, principal: ProjectsRead, slug: str) -> list[WorkspaceOut]:
    access = open_project(db, principal, slug)
    return [WorkspaceOut(id=w.id, state=w.state, launcher=w.launcher, isolation=w.isolation,
                         booking_id=w.booking_id, ends_at=w.ends_at, started_at=w.started_at,
                         stopped_at=w.stopped_at, stop_reason=w.stop_reason,
                         url=service.base_path(slug, w.id) + "lab")
            for w in service.list_mine(db, access, principal.user)]
