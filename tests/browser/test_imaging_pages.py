"""Imaging in a real browser: the project's imaging page after an import; release a quarantined
ultrasound after looking at why it was held; change the de-identification profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from imaging_support import instances, make_project, ultrasound, write_corpus
from strongroom.hub import Hub
from strongroom.imaging import bulk

from .test_web_flows import login

pytestmark = pytest.mark.browser


def test_quarantine_review_and_profile_in_the_browser(page: Page, hub: Hub, people, shots: Path,
                                                      tmp_path: Path) -> None:
    pia = people("pia")
    make_project(hub, "chest", "pia")
    write_corpus(tmp_path / "in", patients=1, studies=1, instances=2)
    (tmp_path / "in" / "us.dcm").write_bytes(ultrasound())
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "chest"), tmp_path / "in", workers=1)
    assert report.quarantined == 1
    login(page, pia)
    page.goto("/projects/chest")
    page.get_by_role("link", name="DICOM destination, imports, quarantine, de-identification profile").click()
    expect(page.get_by_role("heading", name="Imaging imports into Chest")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("2 instance(s)")
    expect(page.locator("#quarantine")).to_contain_text("ultrasound")
    expect(page.locator("#destination")).to_contain_text("No destination")
    page.screenshot(path=str(shots / "imaging.png"), full_page=True)
    # releasing without a note is refused with a message; with one it publishes version 2
    page.locator("#quarantine input[type=checkbox]").first.check()
    page.get_by_role("button", name="Release selected").click()
    expect(page.get_by_role("alert")).to_contain_text("say why")
    page.locator("#quarantine input[type=checkbox]").first.check()
    page.get_by_label("Review note (required to release)").fill("checked: no burned-in text")
    page.get_by_role("button", name="Release selected").click()
    expect(page.locator("#quarantine")).to_contain_text("Nothing in quarantine")
    expect(page.locator("#status")).to_contain_text("3 instance(s)")
    assert {i.published_version for i in instances(hub, "published")} == {1, 2}
    # the profile: Modified Dates + Clean Descriptors, saved and shown as selected
    page.get_by_label("Modified Dates — shifted per patient, intervals kept (113107)").check()
    page.get_by_role("checkbox", name="Clean Descriptors (113105").check()
    page.get_by_role("button", name="Save profile").click()
    expect(page.locator("#profile")).to_contain_text("options selected")
    expect(page.get_by_role("checkbox", name="Clean Descriptors (113105")).to_be_checked()
    # the import's own page lists its instances by pseudonym only
    page.get_by_role("link", name=report.batch_id).click()
    expect(page.get_by_role("heading", name=f"Import {report.batch_id}")).to_be_visible()
    expect(page.locator("main")).to_contain_text("ultrasound")
    page.screenshot(path=str(shots / "imaging-import.png"), full_page=True)
