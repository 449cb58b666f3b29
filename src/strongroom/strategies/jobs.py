"""Strategy job kinds: a run of a strategy version on an extract in the project's archive."""

from __future__ import annotations

import uuid
from typing import Any

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import runs

MAX_ATTEMPTS = 3


@job(runs.JOB, max_attempts=MAX_ATTEMPTS, on_given_up=runs.give_up)
def strategy_run(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Decrypt the extract to a private temp dir, apply, verify; archive the output only when it passed.
    A finished run is never redone, so a retried job changes nothing."""
    state = runs.execute(ctx.hub, uuid.UUID(payload["run_id"]), last_attempt=ctx.attempt >= MAX_ATTEMPTS)
    return {"state": state}
