"""Catalogue job kinds: minting and updating DOIs at DataCite."""

from __future__ import annotations

from typing import Any

from ..jobs import service as jobs
from ..jobs.context import JobContext
from ..jobs.registry import job
from . import dois


@job(dois.JOB, max_attempts=8)
def sync_dois(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Mint, update, publish or hide one dataset's DOIs (idempotent: a repeat continues where one stopped)."""
    return dois.sync(ctx.hub, str(payload["dataset_id"]))


@job("catalog.dois_sweep", every_seconds=3600, max_attempts=2)
def sweep_dois(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Try again for every dataset whose DOIs are not yet where they should be (after long outages)."""
    if not ctx.hub.settings.doi.configured:
        return {"queued": 0}
    with ctx.transaction() as session:
        datasets = dois.unsettled(session)
        for dataset_id in datasets:
            jobs.enqueue(session, dois.JOB, {"dataset_id": dataset_id}, max_attempts=8)
    return {"queued": len(datasets)}
