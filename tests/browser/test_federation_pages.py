"""Two hubs in a real browser: the operator of hub A registers hub B on the peers page (its keys read from
B's /api/v1/federation/hub), B's operator registers A on B's host; a researcher at A searches both hubs'
beacons at once and sees each hub's answer; after a harvest, A's catalogue shows B's entry marked remote.
Nothing blocked by the hub's CSP."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

import federation_support
from strongroom.app import create_app
from strongroom.audit.service import Actor
from strongroom.config import Settings
from strongroom.db import transaction
from strongroom.federation import service
from support.live import free_port, serving

from .test_web_flows import login

pytestmark = pytest.mark.browser


def test_operators_pair_two_hubs_and_a_researcher_searches_both(page: Page, browser: Browser, live_server, hub,
                                                                  people, sqlite_template, tmp_path: Path,
                                                                  shots: Path) -> None:
    (tmp_path / "b").mkdir()
    shutil.copy(sqlite_template, tmp_path / "b" / "hub.db")
    port_b = free_port()
    settings_b = Settings(var_dir=tmp_path / "b" / "var", database_url=f"sqlite:///{tmp_path / 'b' / 'hub.db'}",
                          secret_key="test-secret-" + "b" * 32, base_url=f"http://127.0.0.1:{port_b}",
                          site_name="Hub B", log_json=True, jobs={"embedded": False}, security={"cookie_secure": False})
    app_b = create_app(settings_b, run_jobs=False)
    federation_support.seed(hub, {"beaconct": "lung-ct"})
    federation_support.seed(app_b.state.hub, {"slides": "slides"})
    pia, rita = people("pia", admin=True), people("rita")
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None)
    with serving(app_b, port_b) as url_b:
        me_b = httpx.get(f"{url_b}/api/v1/federation/hub", timeout=30).json()
        me_a = httpx.get(f"{live_server.url}/api/v1/federation/hub", timeout=30).json()
        with transaction(app_b.state.hub.sessions) as s:
            service.register_peer(s, settings_b, Actor.system("cli:operator@hub-b"), {
                "name": "hub-a", **{k: me_a[k] for k in ("base_url", "signing_key", "archive_key")}})

        login(page, pia)
        page.goto("/federation/peers")
        expect(page.locator("#my-key-id")).to_have_text(me_a["key_id"])
        form = page.locator("#register")
        form.get_by_label("Short name").fill("hub-b")
        form.get_by_label("Address", exact=True).fill(url_b)
        form.get_by_label(re.compile("Hub signing key")).fill(me_b["signing_key"])
        form.get_by_label(re.compile("Archive key")).fill(me_b["archive_key"])
        form.get_by_role("button", name="Register").click()
        expect(page.locator("#flash")).to_have_text(f"Peer hub-b registered; its key id is {me_b['key_id']}.")
        expect(page.locator("#peers")).to_contain_text(url_b)
        page.screenshot(path=str(shots / "federation-peers.png"), full_page=True)

        ctx = browser.new_context(base_url=live_server.url)
        researcher = ctx.new_page()
        login(researcher, rita)
        researcher.goto("/federation/search")
        researcher.get_by_label(re.compile("Computed Tomography")).check()
        researcher.get_by_role("button", name="Search all hubs").click()
        rows = researcher.locator("tr.fed-answer")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text("this hub")
        expect(rows.nth(0).locator(".fed-count")).to_have_text("5")  # 6 studies: counts are rounded to 5
        expect(rows.nth(1)).to_contain_text("hub-b")
        expect(rows.nth(1)).to_contain_text("answered")
        expect(rows.nth(1).locator(".fed-count")).to_have_text("0")  # B has no CT
        researcher.get_by_label(re.compile("Computed Tomography")).uncheck()
        researcher.get_by_role("button", name="Search all hubs").click()
        expect(rows.nth(1).locator(".fed-count")).to_have_text("< 5")  # B's two slide studies
        researcher.screenshot(path=str(shots / "federation-search.png"), full_page=True)

        assert service.harvest(hub, lambda: transaction(hub.sessions)) == {"hub-b": {"entries": 1, "removed": 0}}
        researcher.goto("/catalog")
        remote = researcher.locator("#remote-entries")
        expect(remote.get_by_role("link", name="Breast pathology slides")).to_have_attribute(
            "href", f"{url_b}/catalog/slides")
        expect(remote.locator(".cat-remote-tag")).to_have_text("remote")
        expect(researcher.locator(".cat-count")).to_have_text("1 dataset")
        ctx.close()
    assert not problems, problems
