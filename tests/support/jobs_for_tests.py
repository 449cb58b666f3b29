"""Job kinds used by the worker tests; loaded into worker processes via STRONGROOM_JOBS__EXTRA_MODULES."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from strongroom.audit import service as audit
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.jobs.context import JobContext
from strongroom.jobs.registry import job


@job("test.mark", max_attempts=3)
def mark(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Work for ``seconds``, then record one audit event for ``name`` — at most once (idempotent)."""
    deadline = time.monotonic() + float(payload.get("seconds", 0))
    while time.monotonic() < deadline:
        time.sleep(0.05)
    with ctx.transaction() as session:
        target = f"mark:{payload['name']}"
        done = session.scalar(select(AuditEvent).where(AuditEvent.action == "test.marked",
                                                       AuditEvent.target == target))
        if done is None:
            audit.record(session, Actor.system(ctx.worker_id), "test.marked", target=target,
                         details={"attempt": ctx.attempt})
    return {"worker": ctx.worker_id, "attempt": ctx.attempt}


@job("test.explode", max_attempts=2)
def explode(ctx: JobContext, payload: dict[str, Any]) -> None:
    raise RuntimeError("boom")
