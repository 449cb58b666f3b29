"""GA4GH Data Repository Service 1.5 over the archive: files are blobs, datasets are bundles.

Authorisation is the same as every other read (Bearer token, checked on each request); an
access method's URL points at the re-encrypting download endpoint, so bytes leave only as
crypt4gh to the caller's registered key.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field
from sqlalchemy import select

from .. import __version__
from ..deps import DataRead, Db, HubDep
from ..errors import NotFound
from ..identity.principal import Principal
from ..schemas import Body
from . import service
from .models import READY, ArchiveFile, DatasetVersion

router = APIRouter(prefix="/ga4gh/drs/v1", tags=["GA4GH DRS"])


def _host(hub: HubDep) -> str:
    return hub.settings.base_url.split("://", 1)[-1].rstrip("/")


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _file_object(hub: HubDep, f: ArchiveFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "self_uri": f"drs://{_host(hub)}/{f.id}",
        "name": f.path.rsplit("/", 1)[-1],
        "size": f.plaintext_size,
        "created_time": _iso(f.created_at),
        "updated_time": _iso(f.ingested_at),
        "mime_type": "application/octet-stream",
        "checksums": [{"type": "sha-256", "checksum": f.plaintext_sha256},
                      {"type": "md5", "checksum": f.plaintext_md5}],
        "description": "crypt4gh-encrypted at rest; delivered re-encrypted to the caller's registered key",
        "access_methods": [{"type": "https", "access_id": "crypt4gh", "region": "strongroom"}],
    }


def _bundle_object(hub: HubDep, db: Db, principal: Principal, dataset_id: str) -> dict[str, Any]:
    ds, owner = service.visible_dataset(db, principal, dataset_id)
    versions = [v for v in ds.versions if v.state in ("released", "deprecated") or owner]
    if not versions:
        raise NotFound("no released version")
    latest: DatasetVersion = versions[-1]
    _, files = service.version_files(db, principal, ds.id, latest.number, limit=5000)
    return {
        "id": ds.id,
        "self_uri": f"drs://{_host(hub)}/{ds.id}",
        "name": ds.title,
        "size": latest.total_bytes,
        "created_time": _iso(ds.created_at),
        "version": str(latest.number),
        "description": ds.description[:5000],
        "checksums": [],
        "contents": [{"name": f.path, "id": f.id, "drs_uri": [f"drs://{_host(hub)}/{f.id}"]} for f in files],
    }


def _object(hub: HubDep, db: Db, principal: Principal, object_id: str) -> dict[str, Any]:
    if object_id.startswith("SRD-"):
        return _bundle_object(hub, db, principal, object_id)
    f = service.get_file(db, principal, object_id)
    if f.state != READY:
        raise NotFound("no such object")
    return _file_object(hub, f)


@router.get("/service-info", summary="DRS service description")
def service_info(hub: HubDep) -> dict[str, Any]:
    return {
        "id": f"{'.'.join(reversed(_host(hub).split(':')[0].split('.')))}.strongroom",
        "name": f"{hub.settings.site_name} DRS",
        "type": {"group": "org.ga4gh", "artifact": "drs", "version": "1.5.0"},
        "description": "Encrypted medical imaging archive (crypt4gh); access needs a token and an approved basis",
        "organization": {"name": hub.settings.site_name, "url": hub.settings.base_url},
        "version": __version__,
        "drs": {"maxBulkRequestLength": 1000},
    }


@router.get("/objects/{object_id}", summary="A file (blob) or a dataset (bundle)")
def get_object(db: Db, hub: HubDep, principal: DataRead, object_id: str) -> dict[str, Any]:
    return _object(hub, db, principal, object_id)


@router.get("/objects/{object_id}/access/{access_id}", summary="Where to fetch the bytes")
def access_url(request: Request, db: Db, hub: HubDep, principal: DataRead, object_id: str,
               access_id: str) -> dict[str, Any]:
    f = service.get_file(db, principal, object_id)
    if access_id != "crypt4gh" or f.state != READY:
        raise NotFound("no such access method")
    return {"url": f"{hub.settings.base_url.rstrip('/')}/api/v1/files/{f.id}/content",
            "headers": ["Authorization: Bearer <your token>"]}


class BulkRequest(Body):
    bulk_object_ids: list[str] = Field(min_length=1, max_length=1000)
    passports: list[str] | None = None


@router.post("/objects", summary="Many objects at once")
def bulk_objects(db: Db, hub: HubDep, principal: DataRead, body: BulkRequest) -> dict[str, Any]:
    resolved, unresolved = [], []
    for object_id in dict.fromkeys(body.bulk_object_ids):
        try:
            resolved.append(_object(hub, db, principal, object_id))
        except NotFound:
            unresolved.append(object_id)
    return {
        "summary": {"requested": len(body.bulk_object_ids), "resolved": len(resolved),
                    "unresolved": len(unresolved)},
        "resolved_drs_object": resolved,
        "unresolved_drs_objects": [{"error_code": 404, "object_ids": unresolved}] if unresolved else [],
    }


__all__ = ["router", "select"]
