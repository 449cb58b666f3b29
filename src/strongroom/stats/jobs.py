"""Stats job kinds."""

from __future__ import annotations

from typing import Any

from ..db import utcnow
from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service


@job("stats.prune", every_seconds=3600, max_attempts=2)
def prune(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Forget yesterday's visitor hashes and salt, even on a day nobody views a page."""
    with ctx.transaction() as session:
        return {"forgotten": service.prune_visitors(session, utcnow().date())}
