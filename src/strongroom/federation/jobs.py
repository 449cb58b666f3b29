"""Federation job kinds: harvesting the peers' public catalogues."""

from __future__ import annotations

from typing import Any

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service


@job("federation.harvest", every_seconds=3600, max_attempts=3)
def harvest(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Import every active outbound peer's published catalogue entries (its DCAT feed) as remote entries."""
    return service.harvest(ctx.hub, ctx.transaction)
