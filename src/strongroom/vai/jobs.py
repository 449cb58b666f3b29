"""VAI job kinds: running (or resuming) an evaluation."""

from __future__ import annotations

import uuid
from typing import Any

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service


@job(service.JOB, max_attempts=5, on_given_up=service.give_up)
def evaluate(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Predict every instance not predicted yet (a batch per transaction: a killed worker's successor
    resumes where the last committed batch ended, never counting an instance twice), then the metrics."""
    evaluation_id = uuid.UUID(payload["evaluation_id"])
    service.run(ctx.hub, evaluation_id)
    with ctx.transaction(deferred=True) as session:
        from .models import Evaluation

        ev = session.get_one(Evaluation, evaluation_id)
        return {"state": ev.state, "done": ev.done, "total": ev.total, "outputs_sha256": ev.outputs_sha256}


@job("vai.demo", max_attempts=2)
def demo(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """The demo's finished evaluation and released report (queued by `strongroom init --demo`)."""
    from .demo import seed_vai_demo

    return {"report": seed_vai_demo(ctx.hub)}
