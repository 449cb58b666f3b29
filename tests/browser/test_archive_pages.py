"""The archive in a real browser: upload a small file, watch it archive, make and release a dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from strongroom.archive.keys import ensure_key
from strongroom.hub import Hub
from strongroom.jobs.runner import Runner

from .test_web_flows import login, make_project

pytestmark = pytest.mark.browser


def test_browser_upload_archive_and_release_a_dataset(page: Page, hub: Hub, people, shots: Path,
                                                      tmp_path: Path) -> None:
    pia = people("pia")
    make_project(hub, "chest", "pia")
    ensure_key(hub)
    login(page, pia)
    page.goto("/projects/chest")
    page.get_by_role("link", name="Files and datasets").click()
    expect(page.get_by_role("heading", name="Data in Project chest")).to_be_visible()
    sample = tmp_path / "IM0001.dcm"
    sample.write_bytes(b"DICM" + bytes(range(256)) * 40)
    page.get_by_label("Upload a small file").set_input_files(str(sample))
    page.get_by_role("button", name="Upload and archive").click()
    expect(page.locator("#files")).to_contain_text("IM0001.dcm")
    expect(page.locator("#files")).to_contain_text("uploaded")
    Runner(hub, lease_seconds=10, name="browser-test").run_until_idle()  # the ingest job
    page.reload()
    expect(page.locator("#files")).to_contain_text("ready")
    page.get_by_label("Include IM0001.dcm").check()
    page.get_by_label("New dataset title").fill("Chest sample")
    page.get_by_role("button", name="Create dataset").click()
    expect(page.get_by_role("heading", name="Chest sample")).to_be_visible()
    page.get_by_role("button", name="Release version 1").click()
    expect(page.locator("table").first).to_contain_text("released")
    expect(page.locator("#files")).to_contain_text("IM0001.dcm")
    page.screenshot(path=str(shots / "dataset.png"), full_page=True)
    # a file over the browser limit is refused with a clear message, nothing stored
    page.goto("/projects/chest/data")
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (1024 * 1024 + 1))
    page.get_by_label("Upload a small file").set_input_files(str(big))
    page.get_by_role("button", name="Upload and archive").click()
    expect(page.get_by_role("alert")).to_contain_text("strongroom upload")
    page.goto("/projects/chest/data")
    expect(page.locator("#files")).not_to_contain_text("big.bin")
    page.screenshot(path=str(shots / "data.png"), full_page=True)
