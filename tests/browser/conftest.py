"""Browser-test fixtures: the real app served by uvicorn on a loopback port, driven by chromium.

These tests run on SQLite only: the live server and the test share one database file, and
PostgreSQL may be busy with other sessions. ``database_url`` is narrowed to its ``sqlite``
parameter, so the root ``settings``/``app``/``hub``/``people`` fixtures all point at that file
and test ids still carry ``[sqlite]`` (``pytest -k sqlite`` selects them).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from strongroom.config import Settings
from support.live import serving

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path("/tmp/shots")


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: str) -> str:
    target = tmp_path / "strongroom.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def listen_socket() -> Iterator[socket.socket]:
    """Bound before the app exists, so base_url names the real port and nothing can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, listen_socket: socket.socket) -> Settings:
    port = listen_socket.getsockname()[1]
    return Settings(var_dir=tmp_path / "var", database_url=database_url, secret_key="test-secret-" + "x" * 32,
                    base_url=f"http://127.0.0.1:{port}", log_json=True, jobs={"embedded": False},
                    security={"cookie_secure": False, "login_attempts_per_window": 5})


@dataclass
class LiveServer:
    url: str


@pytest.fixture
def live_server(app, settings: Settings, listen_socket: socket.socket) -> Iterator[LiveServer]:
    """``create_app(settings, run_jobs=False)`` (the root ``app`` fixture) served for real."""
    with serving(app, sock=listen_socket) as url:
        yield LiveServer(url)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    # Module scope, not session: the sync API's event loop must not outlive the browser tests.
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser, live_server: LiveServer) -> Iterator[BrowserContext]:
    ctx = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS
