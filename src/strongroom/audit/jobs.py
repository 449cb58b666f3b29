"""The audit log's job kinds: the hourly chain check and the checkpoints that anchor it."""

from __future__ import annotations

from typing import Any

from ..db import open_session
from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service as audit
from .service import Actor


@job("audit.verify_chain", every_seconds=3600, max_attempts=2)
def verify_chain(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Re-check the whole audit chain (and its checkpoints) hourly and record the outcome in the chain.

    The walk reads in pages, each its own short read transaction, and writes nothing: only the one
    outcome event is written, in a transaction of its own at the end."""
    from . import checkpoints

    anchors, bad = checkpoints.gather(ctx.hub.settings, checkpoints.verification_keys(ctx.hub.settings))
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
    from . import checkpoints

    written = checkpoints.write_checkpoint(ctx.hub)
    assert written.checkpoint is not None
    return {"seq": written.checkpoint.seq, "unchanged": written.unchanged, "sinks": written.sinks}
