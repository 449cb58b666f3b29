"""Workspace job kinds: the idle check (and processes that died), the booking-end check (warn, then stop), the
access check (owners who lost access) and the egress re-application (the project's allow-list changed)."""

from __future__ import annotations

import uuid
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


@job("workspaces.access", every_seconds=300, max_attempts=3)
def access(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Stop workspaces whose owner lost access: deactivated, left the project or its read-data right, or the
    project closed or ended. Enqueued for one project when its members change; every 5 minutes for all (an
    account deactivated, an end date passed)."""
    project_id = payload.get("project_id")
    with ctx.transaction() as session:
        return service.check_access(session, ctx.hub.settings,
                                    project_id=uuid.UUID(project_id) if project_id else None)


@job("workspaces.egress", max_attempts=3)
def egress(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Re-apply a project's allow-list to its running workspaces after its egress destinations or package mirror
    changed (queued by the change)."""
    with ctx.transaction() as session:
        return service.reapply_egress(session, ctx.hub.settings, uuid.UUID(payload["project_id"]))
