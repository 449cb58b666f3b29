"""Housekeeping jobs every hub runs."""

from __future__ import annotations

from typing import Any

from ..audit import service as audit
from ..audit.service import Actor
from ..identity import service as identity
from .context import JobContext
from .registry import job


@job("identity.purge_expired", every_seconds=300)
def purge_expired(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Drop expired sessions, old login-throttle rows and abandoned OIDC logins."""
    with ctx.transaction() as session:
        return identity.purge_expired(session, window_s=int(payload.get("window_s", 3600)))


@job("audit.verify_chain", every_seconds=3600, max_attempts=2)
def verify_chain(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Re-check the whole audit chain hourly and record the outcome in the chain itself. The long walk
    reads without the write lock; only recording the outcome takes it."""
    with ctx.transaction(deferred=True) as session:
        report = audit.verify(session)
        problems = [f"{p.seq}:{p.kind}" for p in report.problems[:20]]
        audit.record(session, Actor.system("audit-verifier"), "audit.verified",
                     outcome="ok" if report.ok else "failed",
                     details={"checked": report.checked, "problems": problems})
        return {"checked": report.checked, "ok": report.ok}
