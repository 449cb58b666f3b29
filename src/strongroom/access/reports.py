"""Reports for data owners and handlers, computed from applications, entitlements and the audit log."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from sqlalchemy import literal, select
from sqlalchemy.orm import Session

from ..archive.models import Dataset, DatasetFile, DatasetVersion
from ..audit.models import AuditEvent
from ..db import utcnow
from ..errors import NotFound
from ..identity.models import User
from ..identity.principal import Principal
from .applications import handled_datasets
from .events import events_of, replay
from .models import Application, Entitlement


def _country(user: User | None) -> str:
    """The country the user gave on their profile, else a guess from the home organisation's domain
    (e-mail or scoped affiliation)."""
    if user is not None and user.country:
        return user.country
    for value in (user.affiliation if user else None, user.email if user else None):
        if value and "@" in value:
            tld = value.rsplit(".", 1)[-1].strip().lower()
            if len(tld) == 2 and tld.isalpha():  # country-code domains only; .org/.edu say nothing
                return tld.upper()
    return "unknown"


def dataset_report(session: Session, principal: Principal, dataset_id: str) -> dict[str, Any]:
    if dataset_id not in handled_datasets(session, principal):
        raise NotFound("no such dataset")
    ds = session.get(Dataset, dataset_id)
    assert ds is not None
    apps = list(session.scalars(select(Application).where(Application.dataset_id == dataset_id)))
    by_state = Counter(a.state for a in apps)
    waits = []
    for a in apps:
        s = replay(events_of(session, a.id))
        if s.submitted_at and s.decided_at:
            waits.append((s.decided_at - s.submitted_at).total_seconds() / 86400)
    now = utcnow()
    ents = list(session.scalars(select(Entitlement).where(Entitlement.dataset_id == dataset_id)))
    active = [e for e in ents if e.active(now)]
    file_targets = select(literal("file:").concat(DatasetFile.file_id)).join(
        DatasetVersion, DatasetVersion.id == DatasetFile.version_id).where(DatasetVersion.dataset_id == dataset_id)
    downloads = list(session.execute(select(AuditEvent.actor_id, AuditEvent.at).where(
        AuditEvent.action == "archive.download.completed", AuditEvent.target.in_(file_targets))))
    users = {u.id: u for u in session.scalars(select(User).where(User.id.in_(
        {e.user_id for e in active} | {d[0] for d in downloads if d[0]})))}
    return {
        "dataset": {"id": ds.id, "title": ds.title},
        "applications": {"total": len(apps), "by_state": dict(by_state)},
        "time_to_decision_days": {"median": round(statistics.median(waits), 2) if waits else None,
                                  "decided": len(waits)},
        "active_entitlements": len(active),
        "downloads": {"events": len(downloads), "users": len({d[0] for d in downloads})},
        "sharing_by_country": dict(Counter(_country(users.get(e.user_id)) for e in active)),
        "downloads_by_country": dict(Counter(_country(users.get(d[0]) if d[0] else None) for d in downloads)),
    }
