"""Jobs API for platform admins: queue depth by state."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import Admin, Db
from . import service

router = APIRouter(prefix="/api/v1", tags=["jobs"])


@router.get("/admin/jobs", summary="Number of jobs per state (platform admins)")
def job_stats(db: Db, principal: Admin) -> dict[str, int]:
    return service.stats(db)
