"""Retention job kinds: the clock (from the audit log), the review notices, and deletions."""

from __future__ import annotations

import uuid
from typing import Any

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import clock, deletion, service


@job("retention.clock", every_seconds=3600, max_attempts=3)
def advance_clock(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Read the audit log forward and move the last-use clocks; short transactions of one batch each."""
    settings, total = ctx.hub.settings.retention, 0
    while True:
        with ctx.transaction() as session:
            done = clock.advance(session, settings)
            at_head = done["read_to"] >= clock.head(session)
        total += done["events"]
        if at_head:
            break
    with ctx.transaction() as session:
        clock.start_missing(session, settings)
    return {"events": total}


@job("retention.review", every_seconds=86400, max_attempts=3)
def review(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Notices to owners and PIs of versions coming due (once per threshold)."""
    with ctx.transaction() as session:
        clock.catch_up(session, ctx.hub.settings.retention)
        return {"notices": service.send_notices(session, ctx.hub.settings.retention)}


@job(service.DELETE_JOB, max_attempts=20)
def delete(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """An approved deletion, from the step it reached to its certificate."""
    return {"state": deletion.run(ctx.hub, uuid.UUID(payload["deletion"]))}
