"""DICOMweb job kinds."""

from __future__ import annotations

from typing import Any

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import backfill


@job("dicomweb.backfill", max_attempts=3)
def backfill_index(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Index the instances archived before the index existed; resumable (each batch commits)."""
    result = backfill.run(ctx.hub, batch=int(payload.get("batch", 200)))
    return {"indexed": result.indexed, "failed": result.failed, "remaining": result.remaining}
