"""Imaging API: import status, quarantine review, publishing and re-identification for a project.

The DICOM destination and the de-identification profile are project settings
(``PUT /api/v1/projects/{slug}/settings/dicom_destination`` / ``deid_profile`` / ``dicom_senders``):
locked by default, opened with fresh MFA, audited.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import Field

from ..archive.backend import storage_for
from ..deps import DataRead as Read
from ..deps import DataWrite as Write
from ..deps import Db, HubDep
from ..projects import service as projects
from ..schemas import Body, Int64, Out
from . import keystore, service

router = APIRouter(prefix="/api/v1/projects/{slug}/imaging", tags=["imaging"])


class BatchOut(Out):
    id: str
    source: str
    origin: str
    state: str
    received: int
    archived: int
    quarantined: int
    rejected: int
    duplicates: int
    bytes_received: int
    reasons: dict[str, int]
    created_at: dt.datetime
    closed_at: dt.datetime | None


class InstanceOut(Out):
    id: int
    batch_id: str
    state: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_pseudonym: str
    modality: str
    body_part: str
    manufacturer: str
    size: int
    reasons: list[str]
    file_id: str | None
    published_version: int | None
    created_at: dt.datetime


class OverviewOut(Out):
    destination: dict[str, Any] | None
    senders: list[dict[str, Any]]
    profile: dict[str, Any]
    counts: dict[str, int]
    dataset_id: str | None
    key_fingerprint: str | None


class ActionOut(Out):
    path: str
    keyword: str
    rule: str
    action: str


class InstanceActionsOut(Out):
    instance: InstanceOut
    actions: list[ActionOut]


class ReviewIn(Body):
    instance_ids: list[Int64] = Field(min_length=1, max_length=1000)
    decision: Literal["approve", "discard"]
    note: str = Field("", max_length=2000)


class ReviewOut(Out):
    reviewed: int
    published_version: int | None


class ReidentifyIn(Body):
    pseudonym: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=10, max_length=1000)


class OriginalOut(Out):
    kind: str
    original: str


@router.get("", response_model=OverviewOut)
def overview(db: Db, principal: Read, slug: str) -> dict[str, Any]:
    """Destination, allowed senders, profile, instance counts by state, the import dataset."""
    access = projects.open_project(db, principal, slug)
    access.require("import")
    facts = service.overview(db, access)
    return {"destination": projects.get_setting(db, access.project.id, "dicom_destination"),
            "senders": projects.get_setting(db, access.project.id, "dicom_senders"),
            "profile": projects.get_setting(db, access.project.id, "deid_profile"), **facts}


@router.get("/imports", response_model=list[BatchOut])
def list_imports(db: Db, principal: Read, slug: str, limit: Int64 = Query(50, ge=1, le=500)) -> list[Any]:
    """Recent imports (one per sending association or bulk run), newest first."""
    return service.batches(db, projects.open_project(db, principal, slug), limit=limit)


@router.get("/imports/{batch_id}", response_model=BatchOut)
def get_import(db: Db, principal: Read, slug: str, batch_id: str) -> Any:
    return service.batch(db, projects.open_project(db, principal, slug), batch_id)


@router.get("/quarantine", response_model=list[InstanceOut])
def list_quarantine(db: Db, principal: Read, slug: str) -> list[Any]:
    """Instances waiting for a person: why each was held (never an original value)."""
    return service.quarantined(db, projects.open_project(db, principal, slug))


@router.get("/instances/{instance_id}/actions", response_model=InstanceActionsOut)
def instance_actions(db: Db, principal: Read, slug: str, instance_id: Int64) -> dict[str, Any]:
    """What de-identification did to one instance: attribute, rule (PS3.15 row and option), action
    (X remove, Z empty, D dummy, U new UID, C clean/shift, K keep). Never an original value."""
    inst, entries = service.action_log(db, projects.open_project(db, principal, slug), instance_id)
    return {"instance": inst, "actions": [dict(zip(("path", "keyword", "rule", "action"), e, strict=True))
                                          for e in entries]}


@router.post("/quarantine/review", response_model=ReviewOut)
def review(db: Db, hub: HubDep, principal: Write, slug: str, body: ReviewIn) -> dict[str, Any]:
    """Release (publishes a new version at once) or discard (deletes from the archive); audited."""
    access = projects.open_project(db, principal, slug)
    version = service.review(db, storage_for(hub), principal, access, body.instance_ids,
                             decision=body.decision, note=body.note)
    return {"reviewed": len(set(body.instance_ids)), "published_version": version}


@router.post("/publish", response_model=ReviewOut)
def publish(db: Db, principal: Write, slug: str) -> dict[str, Any]:
    """Publish what is archived and verified now, instead of waiting for the senders to go quiet."""
    access = projects.open_project(db, principal, slug)
    access.require("import")
    return {"reviewed": 0, "published_version": service.publish_in(db, access.project.id, principal.actor)}


@router.post("/reidentify", response_model=list[OriginalOut],
             responses={404: {"description": "unknown pseudonym (the lookup is still audited)"}})
def reidentify(db: Db, hub: HubDep, principal: Read, slug: str, body: ReidentifyIn) -> Any:
    """The original identifier(s) behind a pseudonym. Needs the ``reidentify`` right (delegated by
    the PI to a named member), a second factor within the fresh-MFA window, and a reason."""
    access = projects.open_project(db, principal, slug)
    found = keystore.reidentify(db, hub.settings, principal, access, body.pseudonym, reason=body.reason,
                                fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    if not found:
        return JSONResponse({"type": "about:blank", "title": "Not Found", "status": 404,
                             "detail": "no such pseudonym in this project"}, status_code=404,
                            media_type="application/problem+json")
    return [{"kind": k, "original": v} for k, v in found]
