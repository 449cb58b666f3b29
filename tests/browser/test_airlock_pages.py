"""The airlock in a real browser: the receiving project's PI accepts exports from the sending project; the
sending PI allows it as a destination and names reviewers; a member requests an export; after the automatic checks
two reviewers approve; the transfer's receipt is on the request page."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from strongroom.archive import c4gh
from strongroom.archive import service as archive
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key, hub_keys
from strongroom.archive.models import ArchiveFile
from strongroom.db import transaction
from strongroom.hub import Hub
from strongroom.jobs.runner import Runner
from strongroom.projects.models import Membership

from .test_web_flows import login, make_project

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings):
    """A partner bucket configured on the hub by name for 'lung' (never contacted here): its PI picks it on the
    page."""
    from strongroom.config import AirlockSettings

    return settings.model_copy(update={"airlock": AirlockSettings.model_validate(
        {"s3": {"partner": {"bucket": "incoming", "endpoint_url": "https://s3.partner.example",
                            "secret_key": "never-shown", "projects": ["lung"]}}})})


def _as(browser: Browser, url: str, person) -> Page:
    page = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(10_000)
    login(page, person)
    return page


def test_export_request_reviewed_and_delivered_in_the_browser(browser: Browser, live_server, hub: Hub, people,
                                                              shots: Path, tmp_path: Path) -> None:
    ensure_key(hub)
    alice, sam, rita, ron = (people(n) for n in ("alice", "sam", "rita", "ron"))
    bob = people("bob")
    make_project(hub, "lung", "alice", members={"sam": "member", "rita": "member", "ron": "member"})
    make_project(hub, "other", "bob")
    src = tmp_path / "ages.csv"
    src.write_bytes(b"id,age_band\nP001,40-49\nP002,50-59\n")
    with transaction(hub.sessions) as s:
        lung = s.scalar(select(Membership.project_id).where(Membership.user_id == sam.user.id))
        s.scalar(select(Membership).where(Membership.user_id == sam.user.id)).delegated_rights = ["export"]
        sealed = archive.seal_into_storage(hub_keys(hub, s), storage_for(hub), lung, archive.new_accession("SRF"),
                                           str(src))
        archive.add_sealed_file(s, lung, sam.user.id, "out/ages.csv", sealed)
    receiving = _as(browser, live_server.url, bob)  # 'other' agrees to receive lung's exports
    receiving.goto("/projects/other/airlock/settings")
    receiving.get_by_label("Projects that may export into this one (slugs, comma-separated)").fill("lung")
    receiving.get_by_role("button", name="Save the projects accepted").click()
    expect(receiving.locator("#flash")).to_contain_text("Exports accepted from: lung.")
    pi = _as(browser, live_server.url, alice)
    pi.goto("/projects/lung")
    pi.get_by_role("link", name="Reviewed export and import").click()
    pi.get_by_role("link", name="Destinations and reviewers").click()
    pi.get_by_label("Name", exact=True).fill("Other team")
    pi.get_by_label("Project slug or recipient").fill("other")
    pi.get_by_role("button", name="Add destination").click()
    expect(pi.locator("#flash")).to_contain_text("Destination Other team added")
    pi.get_by_label("S3 destination name").fill("Partner bucket")
    expect(pi.get_by_label("Bucket (configured on the hub)")).to_contain_text("incoming/")
    pi.get_by_label("Folder in the bucket (optional, e.g. lung/)").fill("lung/")
    pi.get_by_label("The partner's crypt4gh public key").first.fill(
        c4gh.public_key_file(c4gh.generate_keypair().public).decode())
    pi.get_by_role("button", name="Add the S3 destination").click()
    expect(pi.locator("#flash")).to_contain_text("Destination Partner bucket (S3: partner) added")
    expect(pi.locator("#destinations")).to_contain_text("Partner bucket — s3: partner")
    assert "never-shown" not in pi.content()
    pi.get_by_label("Reviewers (usernames or e-mails of members, comma-separated)").fill("rita, ron")
    pi.get_by_role("button", name="Save reviewers and rules").click()
    expect(pi.locator("#flash")).to_contain_text("2 reviewer(s); 2 approval(s) needed")

    requester = _as(browser, live_server.url, sam)
    requester.goto("/projects/lung/airlock")
    requester.get_by_label("out/ages.csv").check()
    requester.get_by_label("Purpose").fill("Registry linkage")
    requester.get_by_role("button", name="Submit the export request").click()
    expect(requester.locator("#flash")).to_contain_text("submitted")
    request_url = requester.url
    Runner(hub, lease_seconds=10, name="test").run_until_idle()  # the automatic checks
    for reviewer in (rita, ron):
        page = _as(browser, live_server.url, reviewer)
        page.goto("/projects")
        page.locator("#nav-reviews").click()  # the top bar counts the requests waiting for this reviewer
        page.get_by_role("link", name=request_url.rsplit("/", 1)[1]).click()
        expect(page.locator("#files")).to_contain_text("identifiers in cells")
        page.get_by_role("link", name="out/ages.csv").click()
        expect(page.locator("main table")).to_contain_text("40-49")
        page.go_back()
        page.get_by_role("button", name="Approve").click()
        expect(page.locator("#flash")).to_contain_text("Request" if reviewer is ron else "Approval recorded")
    Runner(hub, lease_seconds=10, name="test").run_until_idle()  # the transfer
    requester.goto(request_url)
    expect(requester.locator("main")).to_contain_text("done")
    expect(requester.locator("#receipt")).to_contain_text(sealed.plaintext_sha256)
    requester.screenshot(path=str(shots / "airlock-request.png"), full_page=True)
    with hub.sessions() as s:
        assert s.scalar(select(ArchiveFile).where(ArchiveFile.path == "out/ages.csv",
                                                  ArchiveFile.project_id != lung)) is not None
