"""Small helpers for driving the HTML forms in tests."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

CSRF = "test-csrf-token-0123456789"


def form_post(client: TestClient, url: str, data: dict | None = None, **kwargs):  # noqa: ANN201
    """POST a form the way a browser does: CSRF cookie plus the matching hidden field."""
    client.cookies.delete("sr_csrf")  # drop the one a page set, so exactly one is sent
    client.cookies.set("sr_csrf", CSRF)
    return client.post(url, data={**(data or {}), "csrf_token": CSRF}, follow_redirects=False, **kwargs)


def extract(pattern: str, html: str) -> str:
    match = re.search(pattern, html, re.S)
    assert match, f"pattern {pattern!r} not found"
    return match.group(1)
