"""Counting landing-page views: the catalogue calls ``count_landing_view`` for every landing page it
serves (``catalog.landing.VIEW_LISTENERS``); the view is recorded after the response has gone, so a page is
never slower or refused because of its counter.

Views that arrive while another response of this process is recording are recorded by that one, in the same
transaction: one request alone writes its own view (as before), a busy page writes its views in batches
instead of one write transaction each (on SQLite, one writer at a time, that was half of the page's cost)."""

from __future__ import annotations

import threading
from typing import Any

import structlog

from ..db import transaction, utcnow
from ..hub import Hub
from . import service

log = structlog.get_logger("strongroom.stats")


_PENDING: list[tuple[Hub, str, str | None, str, Any]] = []
_PENDING_LOCK = threading.Lock()  # guards _PENDING
_RECORDING = threading.Lock()  # held by the one response recording the pending views


def _record(hub: Hub, dataset_id: str, ip: str | None, user_agent: str, at: Any) -> None:
    with _PENDING_LOCK:
        _PENDING.append((hub, dataset_id, ip, user_agent, at))
    # Whoever holds _RECORDING drains what is pending, and looks again after letting go: a view appended while
    # it was finishing is either seen by that second look or by this caller's own acquire, never stranded.
    while _PENDING and _RECORDING.acquire(blocking=False):
        try:
            with _PENDING_LOCK:
                batch = _PENDING[:]
                del _PENDING[:]
            _record_batch(batch)
        finally:
            _RECORDING.release()


def _record_batch(batch: list[tuple[Hub, str, str | None, str, Any]]) -> None:
    for hub in {id(entry[0]): entry[0] for entry in batch}.values():
        views = [entry[1:] for entry in batch if entry[0] is hub]
        try:
            _write(hub, views)
        except Exception:  # one bad view must not cost the others theirs: each again, alone
            for view in views:
                try:
                    _write(hub, [view])
                except Exception:  # a lost count is logged, never the visitor's problem
                    log.exception("stats.view_not_recorded", dataset_id=view[0])


def _write(hub: Hub, views: list[tuple[str, str | None, str, Any]]) -> None:
    with transaction(hub.sessions) as session:
        for dataset_id, ip, user_agent, at in views:
            service.record_view(session, hub.secret, dataset_id, ip=ip, user_agent=user_agent, now=at)


def count_landing_view(request: Any, response: Any, dataset_id: str) -> None:
    from starlette.background import BackgroundTasks

    tasks = response.background if isinstance(response.background, BackgroundTasks) else BackgroundTasks(
        [response.background] if response.background else None)
    tasks.add_task(_record, request.app.state.hub, dataset_id, request.client.host if request.client else None,
                   request.headers.get("user-agent", ""), utcnow())
    response.background = tasks
