"""Fees job kinds."""

from __future__ import annotations

from typing import Any

from ..db import utcnow
from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service


@job("fees.snapshot", every_seconds=3600, max_attempts=3)
def snapshot(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Today's archived bytes per project and storage class. Hourly, so a day is measured even when the
    hub was down at midnight; the day's row is replaced, so the last run of a day is its measurement."""
    day = utcnow().date()
    with ctx.transaction() as session:
        return {"day": day.isoformat(), "projects": service.snapshot_storage(session, day)}
