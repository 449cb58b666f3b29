"""Audit API: my own events, and the whole log for platform admins."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fastapi import APIRouter, Query

from ..deps import Db, scoped
from ..errors import NotFound
from ..schemas import Int64, Out
from . import service

router = APIRouter(prefix="/api/v1", tags=["audit"])
AuditRead = scoped("audit:read")


class AuditEventOut(Out):
    seq: int
    at: dt.datetime
    action: str
    outcome: str
    actor: str
    actor_id: uuid.UUID | None
    subject_user_id: uuid.UUID | None
    project_id: uuid.UUID | None
    target: str | None
    ip: str | None
    details: dict[str, Any]
    hash: str


@router.get("/me/audit", response_model=list[AuditEventOut],
            summary="Events where I acted or was acted upon, newest first")
def my_audit(db: Db, principal: AuditRead, before: Int64 | None = Query(None, ge=1),
             limit: Int64 = Query(50, ge=1, le=500)) -> list[AuditEventOut]:
    events = service.query(db, user_id=principal.user.id, before_seq=before, limit=limit)
    return [AuditEventOut.model_validate(e) for e in events]


@router.get("/admin/audit", response_model=list[AuditEventOut],
            summary="The whole audit log (platform admins), filterable")
def all_audit(db: Db, principal: AuditRead, before: Int64 | None = Query(None, ge=1),
              limit: Int64 = Query(50, ge=1, le=500), project_id: uuid.UUID | None = None,
              user_id: uuid.UUID | None = None, action: str | None = Query(None, max_length=80)
              ) -> list[AuditEventOut]:
    if not (principal.user.is_admin and principal.can("admin")):
        raise NotFound("not found")
    events = service.query(db, project_id=project_id, user_id=user_id, action_prefix=action,
                           before_seq=before, limit=limit)
    return [AuditEventOut.model_validate(e) for e in events]
