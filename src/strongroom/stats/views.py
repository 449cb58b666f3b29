"""Counting landing-page views: the catalogue calls ``count_landing_view`` for every landing page it
serves (``catalog.landing.VIEW_LISTENERS``); the view is recorded after the response has gone, so a page is
never slower or refused because of its counter.

Views that arrive while another response of this process is recording are recorded by that one, in the same
transaction: one request alone writes its own view (as before), a busy page writes its views in batches
instead of one write transaction each (on SQLite, one writer at a time, that was half of the page's cost).
A view that finds the recorder busy is only queued, on the event loop, with no worker-thread hop; a robot's or
machine's request (the COUNTER list, which ``record_view`` would refuse anyway) queues nothing. Within one batch, a
run of one visitor's views of one page (each within 30 s: one view, as ``record_view`` counts it) is recorded as its
first and last view, which gives the same counts and the same ``last_at``."""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool

from ..db import transaction, utcnow
from ..hub import Hub
from . import service

log = structlog.get_logger("strongroom.stats")


_PENDING: list[tuple[Hub, str, str | None, str, Any]] = []
_PENDING_LOCK = threading.Lock()  # guards _PENDING
_RECORDING = threading.Lock()  # held by the one response recording the pending views


async def _record_soon(hub: Hub, dataset_id: str, ip: str | None, user_agent: str, at: Any) -> None:
    """Queue one view; record what is pending in a worker thread unless a recorder is running: it takes this view
    too (it looks at what is pending after it lets go of ``_RECORDING``, and this view was queued before this
    check)."""
    with _PENDING_LOCK:
        _PENDING.append((hub, dataset_id, ip, user_agent, at))
    if not _RECORDING.locked():
        await run_in_threadpool(_record_pending)


def _record_pending() -> None:
    # Whoever holds _RECORDING drains what is pending, and looks again after letting go: a view appended while
    # it was finishing is either seen by that second look or by its own caller's acquire, never stranded.
    while _PENDING and _RECORDING.acquire(blocking=False):
        try:
            with _PENDING_LOCK:
                batch = _PENDING[:]
                del _PENDING[:]
            _record_batch(batch)
        finally:
            _RECORDING.release()


def _coalesced(views: list[tuple[str, str | None, str, Any]]) -> list[tuple[str, str | None, str, Any]]:
    """One visitor's views of one page within DOUBLE_CLICK of their first: the first and the last (the others
    neither count nor set ``last_at`` last)."""
    runs: dict[tuple[str, str | None, str], list[tuple[str, str | None, str, Any]]] = {}
    for view in sorted(views, key=lambda v: v[3]):
        runs.setdefault(view[:3], []).append(view)
    out = []
    for run in runs.values():
        if len(run) > 2 and run[-1][3] - run[0][3] < service.DOUBLE_CLICK:
            run = [run[0], run[-1]]
        out.extend(run)
    return sorted(out, key=lambda v: v[3])


def _record_batch(batch: list[tuple[Hub, str, str | None, str, Any]]) -> None:
    for hub in {id(entry[0]): entry[0] for entry in batch}.values():
        views = _coalesced([entry[1:] for entry in batch if entry[0] is hub])
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


def _machine(user_agent: str) -> bool:
    """COUNTER's robot/machine list (~0.1 ms a call; a busy page sees the same few browsers again and again)."""
    return _machine_cached(user_agent) if len(user_agent) <= 512 else _machine_uncached(user_agent)


def _machine_uncached(user_agent: str) -> bool:
    import counter_robots  # type: ignore[import-untyped]

    return not user_agent.strip() or bool(counter_robots.is_robot_or_machine(user_agent))


_machine_cached = lru_cache(maxsize=4096)(_machine_uncached)


def count_landing_view(request: Any, response: Any, dataset_id: str) -> None:
    from starlette.background import BackgroundTasks

    user_agent = request.headers.get("user-agent", "")
    if _machine(user_agent):
        return  # never counted (record_view says so too): nothing to queue
    tasks = response.background if isinstance(response.background, BackgroundTasks) else BackgroundTasks(
        [response.background] if response.background else None)
    tasks.add_task(_record_soon, request.app.state.hub, dataset_id,
                   request.client.host if request.client else None, user_agent, utcnow())
    response.background = tasks
