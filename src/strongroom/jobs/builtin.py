"""Housekeeping jobs every hub runs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..audit import service as audit
from ..audit.service import Actor
from ..db import open_session
from ..identity import service as identity
from . import service as jobs
from .context import JobContext
from .registry import job


@job("identity.purge_expired", every_seconds=300)
def purge_expired(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Drop expired sessions, old login-throttle rows and abandoned OIDC logins."""
    with ctx.transaction() as session:
        return identity.purge_expired(session, window_s=int(payload.get("window_s", 3600)))


@job("jobs.prune", every_seconds=3600)
def prune(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Drop finished jobs after `jobs.keep_done_days` (failed ones after `jobs.keep_failed_days`)."""
    cfg = ctx.hub.settings.jobs
    with ctx.transaction() as session:
        return jobs.prune_finished(session, keep_done=dt.timedelta(days=cfg.keep_done_days),
                                   keep_failed=dt.timedelta(days=cfg.keep_failed_days))


@job("audit.verify_chain", every_seconds=3600, max_attempts=2)
def verify_chain(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Re-check the whole audit chain (and its checkpoints) hourly and record the outcome in the chain.

    The walk reads in pages, each its own short read transaction, and writes nothing: only the one
    outcome event is written, in a transaction of its own at the end."""
    from ..audit import checkpoints

    anchors, bad = checkpoints.gather(ctx.hub.settings, checkpoints.anchor_key(ctx.hub.settings))
    with open_session(ctx.sessions, deferred=True) as session:  # pages read without the write lock
        report = audit.verify(session, anchors=anchors)
    problems = [f"{p.seq}:{p.kind}" for p in report.problems[:20]] + bad[:5]
    ok = report.ok and not bad
    with ctx.transaction() as session:
        audit.record(session, Actor.system("audit-verifier"), "audit.verified", outcome="ok" if ok else "failed",
                     details={"checked": report.checked, "problems": problems,
                              "proven_up_to": report.proven.seq if report.proven else 0})
    return {"checked": report.checked, "ok": ok}


@job("audit.checkpoint", every_seconds=300, max_attempts=1)
def checkpoint(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Anchor the chain's end outside the database: a signed checkpoint to the append-only file, S3 and
    the log. Fails (and logs an error) when the chain is shorter than the last checkpoint said."""
    from ..audit import checkpoints

    written = checkpoints.write_checkpoint(ctx.hub)
    assert written.checkpoint is not None
    return {"seq": written.checkpoint.seq, "unchanged": written.unchanged, "sinks": written.sinks}
