"""The seeds' spine in a real browser: apply → the handler approves → the researcher downloads,
and the download shows up in the owner's report and the audit log."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
from pathlib import Path

import crypt4gh.lib
import pytest
from playwright.sync_api import Browser, Page, expect

from strongroom.access import reports
from strongroom.archive import c4gh
from strongroom.archive import service as archive
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key
from strongroom.audit import service as audit
from strongroom.db import transaction
from strongroom.hub import Hub
from strongroom.identity import service as identity
from strongroom.identity.models import User
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects

from .test_web_flows import login, make_project

pytestmark = pytest.mark.browser


def released_dataset(hub: Hub, pi: User, slug: str, data: bytes) -> tuple[str, str]:
    """A project with one archived file in a released dataset, through the real pipeline."""
    ensure_key(hub)
    with transaction(hub.sessions) as s:
        principal = identity.session_principal(
            type("S", (), {"mfa_at": dt.datetime.now(dt.UTC), "id_hash": "seed0000"})(), s.get(User, pi.id), None)
        access = projects.open_project(s, principal, slug)
        f = archive.receive_small_plaintext(hub, s, principal, access, storage_for(hub), path="IM0001.dcm",
                                            data=data)
        file_id = f.id
    Runner(hub, lease_seconds=10, name="seed").run_until_idle()
    with transaction(hub.sessions) as s:
        principal = identity.session_principal(
            type("S", (), {"mfa_at": dt.datetime.now(dt.UTC), "id_hash": "seed0000"})(), s.get(User, pi.id), None)
        access = projects.open_project(s, principal, slug)
        ds = archive.create_dataset(s, principal, access, title="SCAPIS demo CT", files=[file_id])
        s.flush()
        archive.release_version(s, principal, ds.id, 1)
        return ds.id, file_id


def test_apply_approve_download_report(browser: Browser, live_server, hub: Hub, people, tmp_path: Path,
                                       shots: Path) -> None:
    from strongroom.catalog.demo import DEMO_TITLE, seed_catalog_demo
    from strongroom.catalog.png import synthetic_ct_slice

    owner, rita = people("owner"), people("rita")
    make_project(hub, "scapis", "owner")
    seed_catalog_demo(hub, project_slug="scapis", steward="owner")  # archived, released, published
    data = synthetic_ct_slice(101, z=0.3 + 0.4 * 1 / 2)  # case-001/slice-001, as the seed made it

    researcher = browser.new_context(base_url=live_server.url, accept_downloads=True)
    page: Page = researcher.new_page()
    # an anonymous visitor finds the dataset in the public catalogue and lands on its page
    page.goto("/catalog")
    page.get_by_role("searchbox").fill("nodules")
    page.keyboard.press("Enter")
    page.get_by_role("link", name=DEMO_TITLE).first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Synthetic chest CT")
    page.get_by_role("link", name=re.compile("Apply for access")).first.click()
    expect(page).to_have_url(re.compile(r"/login\?next=/apply/SRD-"))
    dataset_id = page.url.rsplit("/apply/", 1)[1]
    login_to(page, rita, f"/apply/{dataset_id}")
    page.get_by_role("button", name="Start application").click()
    expect(page.locator("#application-state")).to_have_text("draft")
    page.get_by_label("Study name").fill("Nodule AI")
    page.get_by_label("Registration number").fill("Dnr 2026-01234-01")
    ethics = tmp_path / "ethics.pdf"
    ethics.write_bytes(b"%PDF-1.4 approved")
    page.get_by_label(re.compile("Decision document")).set_input_files(str(ethics))
    page.get_by_label(re.compile("Description of the data")).fill("Chest CT, 1 mm")
    page.get_by_label(re.compile("Selection criteria")).fill("Adults 50-64")
    page.get_by_label(re.compile("pseudonymization strategy")).select_option(index=1)
    page.get_by_label("AI model training").check()
    page.get_by_label(re.compile("Sharing plan")).fill("Team only")
    page.get_by_label(re.compile("Contact e-mail")).fill("lab@uni.example")
    page.get_by_role("button", name="Save draft").click()
    # submitting before accepting the terms is refused with a reason
    page.get_by_role("button", name="Submit application").click()
    expect(page.get_by_role("alert")).to_contain_text("terms")
    page.get_by_role("button", name="I accept these terms").click()
    page.get_by_role("button", name="Submit application").click()
    expect(page.locator("#application-state")).to_have_text("submitted")
    application_url = page.url

    handler = browser.new_context(base_url=live_server.url).new_page()
    login_to(handler, owner, "/applications")
    expect(handler.locator("#queue")).to_contain_text("Rita")
    handler.goto(application_url.replace(live_server.url, ""))
    expect(handler.get_by_text("Dnr 2026-01234-01")).to_be_visible()
    handler.get_by_role("button", name="Reject").click()  # without a reason: refused
    expect(handler.get_by_role("alert")).to_contain_text("reason")
    handler.get_by_label("Access until").fill((dt.date.today() + dt.timedelta(days=90)).isoformat())
    handler.get_by_role("button", name="Approve").click()
    expect(handler.locator("#application-state")).to_have_text("approved")

    # the researcher registers a key and downloads from the dataset page
    keypair = c4gh.generate_keypair()
    page.goto("/account/keys")
    page.get_by_label("Public key").fill(c4gh.public_key_file(keypair.public).decode())
    page.get_by_role("button", name="Add key").click()
    page.goto("/access")
    page.get_by_role("link", name=DEMO_TITLE).click()
    with page.expect_download() as download:
        page.get_by_role("link", name="Download synthetic-chest-ct/case-001/slice-001.png").click()
    encrypted = Path(download.value.path()).read_bytes()
    plain = io.BytesIO()
    crypt4gh.lib.decrypt([(0, keypair.secret, None)], io.BytesIO(encrypted), plain)
    assert hashlib.sha256(plain.getvalue()).digest() == hashlib.sha256(data).digest()
    page.screenshot(path=str(shots / "application.png"), full_page=True)
    # the data owner's page shows the approval and the download
    handler.goto(f"/datasets/{dataset_id}/access")
    expect(handler.locator("#owner-report")).to_contain_text("1 by 1 user")
    expect(handler.locator("#owner-report")).to_contain_text("approved: 1")
    handler.screenshot(path=str(shots / "owner.png"), full_page=True)
    page.goto(f"/datasets/{dataset_id}/access")  # the researcher is no handler
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()

    with hub.sessions() as s:
        owner_principal = identity.session_principal(
            type("S", (), {"mfa_at": dt.datetime.now(dt.UTC), "id_hash": "r0000000"})(), s.get(User, owner.user.id),
            None)
        report = reports.dataset_report(s, owner_principal, dataset_id)
        events = audit.query(s, action_prefix="archive.download.started")
    assert report["downloads"] == {"events": 1, "users": 1} and report["active_entitlements"] == 1
    assert events[0].actor_id == rita.user.id and events[0].details["basis"] == "entitlement"


def login_to(page: Page, person, next_path: str) -> None:
    """Log in through the real pages and land on ``next_path``."""
    if "/login" not in page.url:
        page.goto(f"/login?next={next_path}")
    page.get_by_label("Username").fill(person.username)
    page.get_by_label("Password").fill("correct horse battery staple")
    page.get_by_role("button", name="Continue").click()
    page.get_by_label(re.compile("6-digit code")).fill(person.code())
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(re.compile(re.escape(next_path)))


__all__ = ["login", "make_project"]
