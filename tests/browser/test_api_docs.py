"""The API docs page in a real chromium, offline: every request outside loopback is cut."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

pytestmark = pytest.mark.browser
LOOPBACK = re.compile(r"^(https?|wss?)://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?/")


def test_api_docs_render_offline_under_the_strict_csp(page: Page, shots: Path) -> None:
    blocked: list[str] = []
    problems: list[str] = []

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if LOOPBACK.match(url) or url.startswith("data:"):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", only_loopback)
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    response = page.goto("/api/docs")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # The operations are listed, grouped by tag, from this hub's own OpenAPI document.
    expect(page.locator(".opblock").first).to_be_visible()
    expect(page.get_by_text("/api/v1/me", exact=True).first).to_be_visible()
    assert page.locator(".opblock").count() > 20
    page.screenshot(path=shots / "api_docs.png")
    assert blocked == [], f"the page tried to reach outside the hub: {blocked}"
    assert problems == [], f"console errors or CSP violations: {problems}"
