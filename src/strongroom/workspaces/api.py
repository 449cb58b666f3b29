"""Workspace API under /api/v1/workspaces/…: the caller's workspaces in a project (read-only; workspaces
are started and stopped from the project's page, with fresh MFA); operators set members' cluster accounts."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import APIRouter
from pydantic import Field

from ..deps import Admin, Db, HubDep, ProjectsRead
from ..errors import NotFound
from ..identity import service as identity
from ..identity.models import User
from ..projects.service import open_project
from ..schemas import Body, Out
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


class ClusterAccountOut(Out):
    user_id: uuid.UUID
    user: str = Field(description="the member's name and e-mail")
    account: str = Field(description="the POSIX account on the cluster the Slurm launcher submits as")


class ClusterAccountIn(Body):
    account: str = Field(description='POSIX user name on the cluster; "" removes it', max_length=64)


@router.get("/cluster-accounts", response_model=list[ClusterAccountOut],
            summary="Members' cluster accounts (operators)")
def list_cluster_accounts(db: Db, principal: Admin) -> list[ClusterAccountOut]:
    return [ClusterAccountOut(user_id=u.id, user=u.label, account=a) for u, a in service.list_cluster_accounts(db)]


@router.put("/cluster-accounts/{user_id}", response_model=ClusterAccountOut,
            summary="Set a member's cluster account: their Slurm workspaces run as it (operators, fresh MFA)")
def set_cluster_account(db: Db, hub: HubDep, principal: Admin, user_id: uuid.UUID,
                        body: ClusterAccountIn) -> ClusterAccountOut:
    identity.require_fresh_mfa(principal, hub.settings.security.fresh_mfa_minutes)
    user = db.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    account = service.set_cluster_account(db, principal.actor, user, body.account)
    return ClusterAccountOut(user_id=user.id, user=user.label, account=account)
