"""Archive job kinds."""

from __future__ import annotations

from typing import Any

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service
from .backend import storage_for
from .ingest import give_up


@job("archive.ingest", max_attempts=5, on_given_up=give_up)
def ingest(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Decrypt-verify-hash-store one uploaded file, or (``inbox_key``) every file of a bundle as one group
    commit. Re-running after a crash redoes the pass for what is not ready yet."""
    if "inbox_key" in payload:
        states = service.ingest_bundle(ctx.hub, storage_for(ctx.hub), payload["inbox_key"])
        counts: dict[str, int] = {}
        for state in states.values():
            counts[state] = counts.get(state, 0) + 1
        return {"states": counts}
    state = service.ingest(ctx.hub, storage_for(ctx.hub), payload["file_id"],
                           workers=ctx.hub.settings.archive.ingest_workers)
    return {"state": state}


@job("archive.cleanup_storage", every_seconds=6 * 3600, max_attempts=2)
def cleanup_storage(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Sweep temp objects of crashed writers and multipart uploads abandoned for a week."""
    removed = storage_for(ctx.hub).cleanup_incomplete(older_than=float(payload.get("older_than", 7 * 86400)))
    return {"removed": removed}
