"""Counting landing-page views: the catalogue calls ``count_landing_view`` for every landing page it
serves (``catalog.landing.VIEW_LISTENERS``); the view is recorded after the response has gone, in a
short transaction of its own, so a page is never slower or refused because of its counter."""

from __future__ import annotations

from typing import Any

import structlog

from ..db import transaction, utcnow
from ..hub import Hub
from . import service

log = structlog.get_logger("strongroom.stats")


def _record(hub: Hub, dataset_id: str, ip: str | None, user_agent: str, at: Any) -> None:
    try:
        with transaction(hub.sessions) as session:
            service.record_view(session, hub.secret, dataset_id, ip=ip, user_agent=user_agent, now=at)
    except Exception:  # a lost count is logged, never the visitor's problem
        log.exception("stats.view_not_recorded", dataset_id=dataset_id)


def count_landing_view(request: Any, response: Any, dataset_id: str) -> None:
    from starlette.background import BackgroundTasks

    tasks = response.background if isinstance(response.background, BackgroundTasks) else BackgroundTasks(
        [response.background] if response.background else None)
    tasks.add_task(_record, request.app.state.hub, dataset_id, request.client.host if request.client else None,
                   request.headers.get("user-agent", ""), utcnow())
    response.background = tasks
