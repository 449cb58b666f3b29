"""Airlock job kinds: the automatic checks, the transfer (with retries), the hourly expiry and sweep."""

from __future__ import annotations

from typing import Any

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import checking, service, sweep
from . import transfer as delivery


@job(service.CHECK_JOB, max_attempts=3, on_given_up=checking.give_up)
def check(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Decrypt and check every file of a submitted request, then hand it to the reviewers."""
    return {"state": checking.run_checks(ctx.hub, payload["request_id"])}


@job(service.TRANSFER_JOB, max_attempts=service.TRANSFER_ATTEMPTS, on_given_up=delivery.give_up)
def transfer(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Deliver an approved request's files and write its checksum receipt; a retry continues."""
    return {"state": delivery.transfer(ctx.hub, payload["request_id"], attempt=ctx.attempt)}


@job("airlock.expire", every_seconds=3600, max_attempts=2)
def expire(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Undecided requests past their expiry become expired (requester and reviewers are told)."""
    with ctx.transaction() as session:
        return {"expired": service.expire_due(session)}


@job("airlock.sweep", every_seconds=3600, max_attempts=2)
def sweep_content(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Delete staged bodies of ended imports and outbox bodies taken or past retention (mark, then delete)."""
    return sweep.sweep(ctx.hub)
