"""Archive job kinds."""

from __future__ import annotations

from typing import Any

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service
from .backend import storage_for


@job("archive.ingest", max_attempts=5)
def ingest(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Decrypt-verify-hash-store one uploaded file. Re-running after a crash redoes the pass."""
    state = service.ingest(ctx.hub, storage_for(ctx.hub), payload["file_id"],
                           workers=ctx.hub.settings.archive.ingest_workers)
    return {"state": state}
