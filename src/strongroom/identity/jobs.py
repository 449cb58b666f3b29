"""Identity's job kinds."""

from __future__ import annotations

from typing import Any

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service as identity


@job("identity.purge_expired", every_seconds=300)
def purge_expired(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Drop expired sessions, old login-throttle rows and abandoned OIDC logins."""
    with ctx.transaction() as session:
        return identity.purge_expired(session, window_s=int(payload.get("window_s", 3600)))
