"""Retention job kinds: the clock (from the audit log), the review notices, and deletions."""

from __future__ import annotations

import uuid
from typing import Any

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import clock, deletion, service


def _clock_to_head(ctx: JobContext) -> int:
    """Read the audit log to its head, one short transaction per batch, then start missing clocks."""
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
    return total


@job("retention.clock", every_seconds=3600, max_attempts=3)
def advance_clock(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Read the audit log forward and move the last-use clocks."""
    return {"events": _clock_to_head(ctx)}


@job("retention.review", every_seconds=86400, max_attempts=3)
def review(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Notices to owners and PIs of versions coming due (once per threshold), on an up-to-date clock: a use
    not yet read must not bring a notice."""
    events = _clock_to_head(ctx)
    with ctx.transaction() as session:
        return {"events": events, "notices": service.send_notices(session, ctx.hub.settings.retention)}


@job(service.DELETE_JOB, max_attempts=20, on_given_up=deletion.give_up)
def delete(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """An approved deletion, from the step it reached to its certificate."""
    return {"state": deletion.run(ctx.hub, uuid.UUID(payload["deletion"]))}
