"""The sweep (an hourly job): what the airlock keeps on the hub for a request that no longer needs it is
deleted from storage — the staged bodies of an import that ended rejected, expired or failed, and an outbox
body once its recipient downloaded it (after a grace for that download to finish) or nobody did within
``[airlock] outbox_days``. Nothing of a request that is still open, in review or transferring is touched.

Crash-safe in two steps: one transaction *marks* what goes (``removed_at``: from then on it cannot be read or
downloaded, a staged file's quota is freed; audited as ``airlock.content.removed``), then the bodies are
deleted from storage and the rows forget their keys. A run stopped between the two leaves marks whose key is
still set, and the next run deletes those first; deleting a missing object is not an error, so a repeat is
harmless. A request whose last body is gone shows ``content_removed_at``.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from ..archive.backend import storage_for
from ..archive.models import FAILED as FILE_FAILED
from ..archive.models import READY, ArchiveFile
from ..audit import service as audit
from ..audit.service import Actor
from ..db import open_session, transaction, utcnow
from ..hub import Hub
from ..projects import quota
from .models import DONE, EXPIRED, FAILED, REJECTED, AirlockFile, AirlockRequest, OutboxItem
from .service import HOLD

ENDED_IMPORT = (REJECTED, EXPIRED, FAILED)  # an import that ends so: its staged bodies go
FINISHED = (DONE, REJECTED, EXPIRED, FAILED)  # an outbox body goes only once its request finished
TAKEN_GRACE = dt.timedelta(hours=24)  # a download under way keeps streaming the body it took
BATCH = 500


def sweep(hub: Hub, now: dt.datetime | None = None) -> dict[str, int]:
    """Mark what is due, then delete every marked body still in storage (this run's and any left over)."""
    now = now or utcnow()
    with transaction(hub.sessions) as session:
        marked = mark(session, now, outbox_days=hub.settings.airlock.outbox_days)
    return {"marked": marked, "deleted": delete_marked(hub, now)}


def mark(session: Session, now: dt.datetime, *, outbox_days: int) -> int:
    """Step one: mark due bodies (no longer readable from now on) and audit it per request."""
    removed: dict[str, dict[str, Any]] = defaultdict(lambda: {"files": 0, "bytes": 0, "outbox": 0})
    projects: dict[str, Any] = {}
    staged = session.execute(
        select(AirlockFile, ArchiveFile, AirlockRequest)
        .join(AirlockRequest, AirlockRequest.id == AirlockFile.request_id)
        .join(ArchiveFile, ArchiveFile.id == AirlockFile.file_id)
        .where(AirlockRequest.direction == "import", AirlockRequest.state.in_(ENDED_IMPORT),
               AirlockFile.removed_at.is_(None), ArchiveFile.hold == HOLD)  # a landed file is the project's
        .limit(BATCH)).all()
    for af, f, r in staged:
        af.removed_at = now
        if f.state == READY and f.body_size:
            quota.free(session, f.project_id, f.body_size)
        f.state, f.failure = FILE_FAILED, f"removed by the airlock sweep: its import request was {r.state}"
        removed[r.id]["files"] += 1
        removed[r.id]["bytes"] += f.body_size or 0
        removed[r.id]["why"] = f"import {r.state}"
        projects[r.id] = r.project_id
    taken = and_(OutboxItem.downloaded_at.is_not(None), OutboxItem.downloaded_at < now - TAKEN_GRACE)
    untaken = OutboxItem.created_at < now - dt.timedelta(days=outbox_days)
    items = session.execute(
        select(OutboxItem, AirlockRequest).join(AirlockRequest, AirlockRequest.id == OutboxItem.request_id)
        .where(AirlockRequest.state.in_(FINISHED), OutboxItem.removed_at.is_(None), or_(taken, untaken))
        .limit(BATCH)).all()
    for item, r in items:
        item.removed_at = now
        removed[r.id]["outbox"] += 1
        removed[r.id]["bytes"] += item.body_size
        removed[r.id]["why"] = "downloaded" if item.downloaded_at else f"not downloaded in {outbox_days} days"
        projects[r.id] = r.project_id
    for request_id, details in removed.items():
        audit.record(session, Actor.system("airlock"), "airlock.content.removed", project_id=projects[request_id],
                     target=f"airlock:{request_id}", details=details)
    return len(staged) + len(items)


def delete_marked(hub: Hub, now: dt.datetime) -> int:
    """Step two: delete marked bodies from storage, then forget their keys; a request whose last body went
    gets ``content_removed_at``."""
    storage = storage_for(hub)
    with open_session(hub.sessions, deferred=True) as session:
        files = session.execute(select(AirlockFile.request_id, ArchiveFile.id, ArchiveFile.body_key)
                                .join(ArchiveFile, ArchiveFile.id == AirlockFile.file_id)
                                .where(AirlockFile.removed_at.is_not(None), ArchiveFile.body_key.is_not(None))
                                .limit(BATCH)).all()
        items = session.execute(select(OutboxItem.request_id, OutboxItem.id, OutboxItem.body_key)
                                .where(OutboxItem.removed_at.is_not(None), OutboxItem.body_key.is_not(None))
                                .limit(BATCH)).all()
    for _request_id, _id, key in [*files, *items]:
        if key:
            storage.delete(key)
    with transaction(hub.sessions) as session:
        for _request_id, file_id, _key in files:
            f = session.get(ArchiveFile, file_id)
            assert f is not None
            f.body_key = f.header = None
        for _request_id, item_id, _key in items:
            item = session.get(OutboxItem, item_id)
            assert item is not None
            item.body_key = None
        for request_id in {row[0] for row in [*files, *items]}:
            if not _has_content(session, request_id):
                r = session.get(AirlockRequest, request_id)
                assert r is not None
                r.content_removed_at = now
    return len(files) + len(items)


def _has_content(session: Session, request_id: str) -> bool:
    """Whether a body of the request is still kept by the airlock (a held staged file, an outbox file)."""
    staged = select(AirlockFile.file_id).join(ArchiveFile, ArchiveFile.id == AirlockFile.file_id).where(
        AirlockFile.request_id == request_id, ArchiveFile.hold == HOLD, ArchiveFile.body_key.is_not(None))
    outbox = select(OutboxItem.id).where(OutboxItem.request_id == request_id, OutboxItem.body_key.is_not(None))
    return session.scalar(staged.limit(1)) is not None or session.scalar(outbox.limit(1)) is not None
