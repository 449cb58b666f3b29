"""The archive in a real browser: upload a small file, watch it archive, make and release a dataset."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import crypt4gh.lib
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key, hub_keys
from strongroom.archive.models import ArchiveFile
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
    page.get_by_label("Files to upload").set_input_files(str(sample))
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
    page.goto("/projects/chest/data")
    page.screenshot(path=str(shots / "data.png"), full_page=True)


def test_without_javascript_the_form_takes_small_files_and_refuses_big_ones(browser, live_server, hub: Hub,
                                                                           people, tmp_path: Path) -> None:
    pia = people("pia")
    make_project(hub, "chest", "pia")
    ensure_key(hub)
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    page = context.new_page()
    login(page, pia)
    page.goto("/projects/chest/data")
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (1024 * 1024 + 1))
    page.get_by_label("Upload a small file").set_input_files(str(big))
    page.get_by_role("button", name="Upload and archive").click()
    expect(page.get_by_role("alert")).to_contain_text("strongroom upload")
    page.goto("/projects/chest/data")
    expect(page.locator("#files")).not_to_contain_text("big.bin")
    context.close()


@pytest.fixture
def settings(settings):
    """Upload parts of 40 crypt4gh segments (2.5 MiB): a 5 MB file goes in three parts, and the
    header shifts every part boundary off the segment grid."""
    return settings.model_copy(update={"archive": settings.archive.model_copy(
        update={"part_size": 40 * c4gh.CIPHER_SEGMENT_SIZE})})


def test_browser_encrypts_a_big_upload_itself_and_the_hub_decrypts_it_exactly(
        page: Page, hub: Hub, people, shots: Path, tmp_path: Path) -> None:
    pia = people("pia")
    make_project(hub, "chest", "pia")
    ensure_key(hub)
    login(page, pia)
    data = os.urandom(5 * 1024 * 1024 + 12345)
    sample = tmp_path / "scan-big.bin"
    sample.write_bytes(data)
    sent: list[bytes] = []  # what left the browser, as the hub received it
    failed_once: list[str] = []

    def flaky_part_2(route):  # the network drops part 2 once: the page retries it
        if not failed_once:
            failed_once.append(route.request.url)
            return route.abort("connectionreset")
        return route.continue_()

    def seen(request):
        if request.method == "PUT" and "/parts/" in request.url:
            sent.append(request.post_data_buffer or b"")

    page.on("request", seen)
    page.route("**/api/v1/uploads/*/parts/2", flaky_part_2)
    page.goto("/projects/chest/data")
    expect(page.get_by_label("Files to upload (any size")).to_be_visible()
    expect(page.get_by_role("button", name="Resume the upload")).to_be_hidden()
    page.get_by_label("Files to upload").set_input_files(str(sample))
    page.get_by_role("button", name="Upload and archive").click()
    expect(page.locator("#files")).to_contain_text("scan-big.bin", timeout=60_000)
    expect(page.locator("#files")).to_contain_text("uploaded")
    assert failed_once, "part 2 was never sent"
    with hub.sessions() as s:
        f = s.scalar(select(ArchiveFile).where(ArchiveFile.path == "scan-big.bin"))
        secrets = hub_keys(hub, s).secrets
    assert f.state == "uploaded" and f.upload_size == 124 + c4gh.body_size_for(len(data))
    # plaintext never left the browser: no 64 KiB run of the file is in any request body
    assert sent and not any(data[i:i + 65536] in body for body in sent for i in range(0, len(data), 1 << 20))
    # what the hub stored is crypt4gh to its archive key, and decrypts to the exact bytes — with the
    # hub's own engine and with the reference crypt4gh library (nothing of the page's code involved)
    stored = storage_for(hub).open_reader(f.inbox_key, 0, f.upload_size).read()
    assert stored.startswith(b"crypt4gh\x01\x00\x00\x00\x01\x00\x00\x00")
    assert b"".join(c4gh.decrypt_stream(io.BytesIO(stored), secrets)) == data
    out = io.BytesIO()
    crypt4gh.lib.decrypt([(0, secrets[0], None)], io.BytesIO(stored), out)
    assert out.getvalue() == data
    Runner(hub, lease_seconds=10, name="browser-test").run_until_idle()  # the ingest job
    page.reload()
    expect(page.locator("#files")).to_contain_text("ready")
    with hub.sessions() as s:
        f = s.get(ArchiveFile, f.id)
    assert f.state == "ready" and f.plaintext_sha256 == hashlib.sha256(data).hexdigest(), f.failure
    page.screenshot(path=str(shots / "data-browser-upload.png"), full_page=True)
