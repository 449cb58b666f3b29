"""Small helpers for driving the HTML forms in tests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from strongroom.deps import CSRF_COOKIE, SESSION_COOKIE, csrf_token_for

PRESESSION = "test-presession-cookie-0123456789"


def csrf_for(client: TestClient) -> str:
    """The token the hub's pages would give this client: bound to its session cookie, or before
    login to a pre-session cookie (set here when the client has none)."""
    session_cookie = client.cookies.get(SESSION_COOKIE)
    if session_cookie is None and client.cookies.get(CSRF_COOKIE) is None:
        client.cookies.set(CSRF_COOKIE, PRESESSION)
    return csrf_token_for(client.app.state.hub.secret, session_cookie=session_cookie,
                          presession_cookie=client.cookies.get(CSRF_COOKIE))


def form_post(client: TestClient, url: str, data: dict | None = None, **kwargs):
    """POST a form the way a browser does: with the token its page would carry."""
    return client.post(url, data={**(data or {}), "csrf_token": csrf_for(client)}, follow_redirects=False,
                       **kwargs)


def extract(pattern: str, html: str) -> str:
    match = re.search(pattern, html, re.S)
    assert match, f"pattern {pattern!r} not found"
    return match.group(1)


def wait_until(predicate, timeout: float = 60.0, step: float = 0.005):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` seconds: waiting
    on observable state, never a fixed sleep."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


@contextmanager
def sql_statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement ``engine`` sends while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
