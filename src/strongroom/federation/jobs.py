"""Federation job kinds: harvesting the peers' public catalogues, pushing a dataset to a peer."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service


@job("federation.harvest", every_seconds=3600, max_attempts=3)
def harvest(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Import every active outbound peer's published catalogue entries (its DCAT feed) as remote entries."""
    return service.harvest(ctx.hub, ctx.transaction)


@job("federation.nonces", every_seconds=600)
def sweep_nonces(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Forget the nonces of signed hub-to-hub requests too old to be accepted anyway (replay protection)."""
    with ctx.transaction() as session:
        return {"swept": service.sweep_nonces(session)}


@job("federation.notices", every_seconds=60)
def send_notices(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Tell the peers holding a mirror of a dataset withdrawn (or a version deprecated) here; re-sent at every
    run until each peer acknowledges."""
    from . import notices

    with ctx.transaction() as session:
        queued = notices.discover(session)
    return {"queued": queued, **notices.send(ctx.hub)}


def _sync_given_up(session: Session, payload: dict[str, Any], error: str) -> None:
    from . import sync

    sync.give_up(session, payload, error)


@job("federation.sync", max_attempts=3, on_given_up=_sync_given_up)
def sync_dataset(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Push (or resume pushing) a dataset to a peer: the bodies it already acknowledged are not sent again."""
    from . import sync

    try:
        return sync.run_sync(ctx.hub, payload["sync_id"])
    except sync.SyncRefused as exc:  # final: the peer said why; retrying would only be refused again
        return {"state": "refused", "reason": str(exc)}
    except sync.SyncBusy as exc:  # another worker runs it (and finishes it, or its lease lapses and a retry does)
        return {"state": "busy", "reason": str(exc)}
