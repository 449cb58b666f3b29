"""Notification jobs: send one e-mail (``notify.email``), and the handlers' daily digest."""

from __future__ import annotations

from typing import Any

from ..jobs.context import JobContext
from ..jobs.registry import job
from . import service


@job(service.EMAIL_JOB, max_attempts=8)
def send_email(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Render and send. A worker that dies after the SMTP server accepted the message sends it
    again on retry (at least once); the Message-ID is the same, so receivers can drop the copy. The account
    is asked again at sending (`service.may_receive`): one deactivated after the e-mail was queued (or
    between retries) gets nothing."""
    with ctx.transaction() as session:
        allowed = service.may_receive(session, payload["to"])
    if not allowed:
        return {"delivery": "skipped: account deactivated", "template": payload["template"]}
    return service.send_job(ctx.hub.settings, ctx.job_id, payload)


@job("notify.digest", every_seconds=86_400, max_attempts=3)
def send_digests(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Once a day (UTC): each user in ``daily`` mode with held items gets one e-mail. Each user
    is one short transaction; an item is marked sent in the transaction that queues its e-mail."""
    with ctx.transaction() as session:
        users = service.users_with_pending_digest(session)
    digests = items = 0
    for user_id in users:
        with ctx.transaction() as session:
            n = service.queue_digest(session, ctx.hub.settings, user_id)
        digests += n > 0
        items += n
    return {"digests": digests, "items": items}
