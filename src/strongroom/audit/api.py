"""Audit API: my own events; platform events for admins; every event for auditors (audited reads)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fastapi import APIRouter, Query

from ..deps import Admin, AuditRead, Db, HubDep
from ..errors import Forbidden, NotFound
from ..identity.models import User
from ..identity.service import require_fresh_mfa
from ..schemas import Int64, Out
from . import service

router = APIRouter(prefix="/api/v1", tags=["audit"])


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
            summary="Events where I acted, and those done to me that are meant for me (without the "
                    "other actor's address), newest first")
def my_audit(db: Db, principal: AuditRead, before: Int64 | None = Query(None, ge=1),
             limit: Int64 = Query(50, ge=1, le=500)) -> list[AuditEventOut]:
    # what they did, and of what others did to them only what is meant for them (service.SUBJECT_SEES)
    events = service.personal_trail(db, principal.user.id, before_seq=before, limit=limit)
    return [AuditEventOut.model_validate(e) for e in events]


@router.get("/admin/audit", response_model=list[AuditEventOut],
            summary="Platform events (admins), or every event (auditors; each read is audited)")
def all_audit(db: Db, principal: AuditRead, before: Int64 | None = Query(None, ge=1),
              limit: Int64 = Query(50, ge=1, le=500), project_id: uuid.UUID | None = None,
              user_id: uuid.UUID | None = None, action: str | None = Query(None, max_length=80)
              ) -> list[AuditEventOut]:
    if service.is_auditor(db, principal.user.id):
        events = service.query(db, project_id=project_id, user_id=user_id, action_prefix=action,
                               before_seq=before, limit=limit)
        service.record_read(db, principal.actor, project_id=project_id, returned=len(events), via="api",
                            user_id=user_id, action=action, before=before)
        return [AuditEventOut.model_validate(e) for e in events]
    if not (principal.user.is_admin and principal.can("admin")):
        raise NotFound("not found")
    if project_id is not None:  # a project's events are its members' (and auditors') business
        raise NotFound("not found")
    events = service.query(db, user_id=user_id, action_prefix=action, before_seq=before, limit=limit,
                           platform_only=True)
    return [AuditEventOut.model_validate(e) for e in events]


class AuditorOut(Out):
    user_id: uuid.UUID
    granted_at: dt.datetime
    granted_by: str


@router.get("/admin/auditors", response_model=list[AuditorOut], summary="Platform auditors (admins)")
def list_auditors(db: Db, principal: Admin) -> list[AuditorOut]:
    return [AuditorOut.model_validate(a) for a in service.auditors(db)]


@router.put("/admin/auditors/{user_id}", response_model=AuditorOut,
            summary="Make a user a platform auditor (admins, fresh MFA, not yourself; audited)")
def grant_auditor(db: Db, hub: HubDep, principal: Admin, user_id: uuid.UUID) -> AuditorOut:
    require_fresh_mfa(principal, hub.settings.security.fresh_mfa_minutes)
    if user_id == principal.user.id:  # an admin who could make themselves auditor would not be segmented
        raise Forbidden("another admin (or the hub operator) must grant you the auditor role")
    if db.get(User, user_id) is None:
        raise NotFound("no such user")
    service.grant_auditor(db, principal.actor, user_id)
    found = service.auditor(db, user_id)
    assert found is not None
    return AuditorOut.model_validate(found)


@router.delete("/admin/auditors/{user_id}", status_code=204,
               summary="Take the auditor role away (admins, fresh MFA; audited)")
def revoke_auditor(db: Db, hub: HubDep, principal: Admin, user_id: uuid.UUID) -> None:
    require_fresh_mfa(principal, hub.settings.security.fresh_mfa_minutes)
    if not service.revoke_auditor(db, principal.actor, user_id):
        raise NotFound("not an auditor")
