"""E-mails about applications: to the applicant, and to the handlers of the dataset (its owning
project's PI when no one is named)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive.models import Dataset
from ..identity.models import User
from .models import Application, DatasetRole
from .policies import owner_pi
from .titles import title_for


def _email(session: Session, to: str | None, template: str, context: dict[str, Any]) -> None:
    if not to:
        return
    try:
        from ..notify.service import enqueue_email
    except ImportError:  # notifications not installed in this build
        return
    enqueue_email(session, to=to, template=template, context=context)


def notify_applicant(session: Session, app: Application, template: str, **context: Any) -> None:
    user = session.get(User, app.applicant_id)
    _email(session, user.email if user else None, template,
           {"application_id": app.id, "dataset": title_for(session, app.applicant_id, app.dataset_id),
            "name": user.display_name if user else "", **context})


def notify_handlers(session: Session, app: Application, template: str) -> None:
    ds = session.get(Dataset, app.dataset_id)
    handler_ids = set(session.scalars(select(DatasetRole.user_id).where(DatasetRole.dataset_id == app.dataset_id,
                                                                        DatasetRole.role == "handler")))
    if not handler_ids and ds is not None and (pi := owner_pi(session, ds)):
        handler_ids = {pi}
    for user in session.scalars(select(User).where(User.id.in_(handler_ids))):
        _email(session, user.email, template, {"application_id": app.id, "dataset": ds.title if ds else "",
                                               "name": user.display_name})
