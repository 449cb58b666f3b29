"""Workspace job kinds: the idle check (and processes that died) and the booking-end check (warn, then stop)."""

from __future__ import annotations

from typing import Any

from ..db import utcnow
from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service


@job("workspaces.idle", every_seconds=300, max_attempts=2)
def idle(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Stop workspaces idle longer than ``[workspaces] idle_minutes`` and those whose JupyterLab is gone."""
    with ctx.transaction() as session:
        return service.check_idle(session, ctx.hub.settings, ctx.hub.secret, now=utcnow())


@job("workspaces.booking_end", every_seconds=300, max_attempts=2)
def booking_end(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Warn owners before their booking ends (Monday 09:00) and stop the workspaces of bookings that ended."""
    with ctx.transaction() as session:
        return service.check_bookings(session, ctx.hub.settings, now=utcnow())
