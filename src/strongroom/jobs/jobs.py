"""The job queue's own housekeeping job."""

from __future__ import annotations

import datetime as dt
from typing import Any

from . import service as jobs
from .context import JobContext
from .registry import job


@job("jobs.prune", every_seconds=3600)
def prune(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Drop finished jobs after `jobs.keep_done_days` (failed ones after `jobs.keep_failed_days`)."""
    cfg = ctx.hub.settings.jobs
    with ctx.transaction() as session:
        return jobs.prune_finished(session, keep_done=dt.timedelta(days=cfg.keep_done_days),
                                   keep_failed=dt.timedelta(days=cfg.keep_failed_days))
