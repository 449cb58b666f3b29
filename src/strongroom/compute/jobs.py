"""Compute job kinds: one booking's reservation after a change, and the drift check of all of them."""

from __future__ import annotations

from typing import Any

from ..db import utcnow
from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service


@job(service.SYNC_JOB, max_attempts=5)
def sync_booking(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Create, change or delete one booking's reservation."""
    with ctx.transaction() as session:
        scheduler = service.scheduler_for(ctx.hub.settings.compute)
        return service.sync(session, scheduler, now=utcnow(), booking_id=int(payload["booking_id"])).as_dict()


@job("compute.drift", every_seconds=600, max_attempts=2)
def drift(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Reconcile the calendar with `scontrol show reservation`: missing ones created, changed ones updated,
    our reservations without a booking deleted; what it found is the job's result."""
    with ctx.transaction() as session:
        scheduler = service.scheduler_for(ctx.hub.settings.compute)
        return service.sync(session, scheduler, now=utcnow()).as_dict()
