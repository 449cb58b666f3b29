"""What a new user hit (issue 10), in a real chromium: the application form keeps what was typed
across accepting the terms and names fields by their labels; enrolment carries on to where the user
was going; the layout links Log in and Datasets you may use; a handler sees how many applications
wait; the project's audit log comes in pages with filters in the query string."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect

from conftest import PASSWORD
from strongroom.archive.models import Dataset, DatasetVersion
from strongroom.audit import service as audit
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction
from strongroom.hub import Hub
from strongroom.projects import service as projects

from .test_access_spine import login_to
from .test_web_flows import _path, login, make_project

pytestmark = pytest.mark.browser


def _applicable_dataset(hub: Hub, slug: str, pi: str) -> str:
    """A released dataset, published in the catalogue, that anyone logged in may apply for."""
    with transaction(hub.sessions) as s:
        project = projects.create_project(s, Actor.system("t"), slug=slug, name=slug.title(), pi=pi, ethics_ref="E",
                                          end_date=dt.date.today() + dt.timedelta(days=365))
        ds = Dataset(id=f"SRD-{slug.upper()[:10]}", project_id=project.id, title="SCAPIS CT",
                     created_by=project.pi_id)
        s.add(ds)
        s.flush()
        s.add(DatasetVersion(dataset_id=ds.id, number=1, state="released"))
        s.add(CatalogEntry(dataset_id=ds.id, slug=f"{slug}-entry", title="SCAPIS CT", created_by=project.pi_id,
                           published=True, published_at=dt.datetime.now(dt.UTC)))
        return ds.id


def test_application_form_keeps_typing_across_terms_and_names_fields(browser: Browser, live_server, hub: Hub,
                                                                      people, shots: Path) -> None:
    owner, rita = people("owner"), people("rita")
    dataset_id = _applicable_dataset(hub, "scapis", "owner")
    page = browser.new_context(base_url=live_server.url).new_page()
    login_to(page, rita, f"/apply/{dataset_id}")
    page.get_by_role("button", name="Start application").click()
    expect(page.locator("#flash")).to_contain_text("started as a draft")
    page.get_by_label("Study name").fill("Nodule AI")
    page.get_by_label(re.compile("Description of the data")).fill("Chest CT, 1 mm")
    # accepting the terms first keeps (and saves) what was typed
    page.get_by_role("button", name="I accept these terms").click()
    expect(page.locator("#flash")).to_have_text(re.compile("Draft saved and terms of use accepted"))
    expect(page.get_by_label("Study name")).to_have_value("Nodule AI")
    expect(page.get_by_label(re.compile("Description of the data"))).to_have_value("Chest CT, 1 mm")
    expect(page.locator("#terms")).to_contain_text("You accepted these terms")
    # submitting an incomplete form: the errors name the fields by their labels
    page.get_by_label(re.compile("Selection criteria")).fill("Adults 50-64")
    page.get_by_role("button", name="Submit application").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Sharing plan (who else sees data or results) is required")
    expect(alert).to_contain_text("Ethics approval (registration number and decision) is required")
    expect(alert).not_to_contain_text("sharing_plan")
    expect(page.get_by_label(re.compile("Selection criteria"))).to_have_value("Adults 50-64")  # saved first
    # a wrong value: shown again as typed, with the label in the message
    page.get_by_label(re.compile("Contact e-mail")).fill("lab@uni")  # the browser lets it through; the hub does not
    page.get_by_label("Study name").fill("Nodule AI v2")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("alert")).to_contain_text("Contact e-mail for this application:")
    expect(page.get_by_label("Study name")).to_have_value("Nodule AI v2")
    page.screenshot(path=str(shots / "application-errors.png"), full_page=True)
    page.get_by_label(re.compile("Contact e-mail")).fill("lab@uni.example")
    page.get_by_label("Registration number").fill("Dnr 2026-01234-01")
    page.get_by_label(re.compile("pseudonymization strategy")).select_option(index=1)
    page.get_by_label(re.compile("Sharing plan")).fill("Team only")
    page.get_by_role("button", name="Save draft").click()
    expect(page.locator("#flash")).to_have_text("Draft saved.")
    page.get_by_role("button", name="Submit application").click()
    expect(page.locator("#application-state")).to_have_text("submitted")
    expect(page.locator("#flash")).to_contain_text("Application submitted")

    # the handler lands on their projects and sees what waits for them
    handler = browser.new_context(base_url=live_server.url).new_page()
    login(handler, owner)
    handler.get_by_role("link", name="Applications to review (1)").click()
    expect(handler).to_have_url(_path(handler, "/applications"))
    expect(handler.locator("#review-count")).to_contain_text("Applications to review (1)")
    expect(handler.locator("#queue")).to_contain_text("Rita")


def test_log_in_link_and_enrolment_carry_on_to_the_page(page: Page, people) -> None:
    people("newbie", mfa=False)
    page.goto("/catalog")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Datasets you may use")).to_have_count(0)
    page.get_by_role("link", name="Log in", exact=True).click()
    expect(page).to_have_url(re.compile(r"/login\?next=/catalog$"))
    page.get_by_label("Username").fill("newbie")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    expect(page).to_have_url(re.compile(r"/mfa/enrol\?next=/catalog$"))
    expect(page.locator("#flash")).to_contain_text("Set up your second factor")
    secret = page.locator("#totp-secret").inner_text().strip()
    page.get_by_label("Code from the app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on MFA").click()
    expect(page.locator("#flash")).to_have_text("Multi-factor authentication is on.")
    page.get_by_role("link", name=re.compile("I saved them")).click()
    expect(page).to_have_url(_path(page, "/catalog"))  # where they were going, not /projects
    expect(page.get_by_role("link", name="Log in", exact=True)).to_have_count(0)
    nav.get_by_role("link", name="Datasets you may use").click()
    expect(page).to_have_url(_path(page, "/access"))


def test_project_audit_log_is_paged_and_filtered(page: Page, hub: Hub, people, shots: Path) -> None:
    pia = people("pia")
    project = make_project(hub, "audited", "pia")
    with transaction(hub.sessions) as s:
        for i in range(60):
            audit.record(s, Actor.system("Robot" if i % 2 else "Scanner"), "test.beta" if i % 3 == 0 else "test.alpha",
                         project_id=project.id, target=f"item-{i}")
    login(page, pia)
    page.goto("/projects/audited")
    rows = page.locator("#audit table.audit tbody tr")
    expect(rows).to_have_count(25)
    expect(rows.first).to_contain_text("item-59")  # newest first
    # one page of the log, not all 60 events (the project page's other sections grow as capabilities add links)
    assert page.evaluate("document.documentElement.scrollHeight") < 5400  # 35 more rows would add ~1,000 px
    expect(page.get_by_role("link", name="← Newer events")).to_have_count(0)
    page.get_by_role("link", name="Older events →").click()
    expect(page).to_have_url(re.compile(r"before=\d+"))
    expect(rows).to_have_count(25)
    expect(rows.first).to_contain_text("item-34")
    page.get_by_role("link", name="← Newer events").click()
    expect(rows.first).to_contain_text("item-59")
    # filter by action and actor: the filter is in the query string, and paging keeps it
    page.get_by_label("Action", exact=True).select_option("test.beta")
    page.get_by_label("Who (part of the name)").fill("robot")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"action=test\.beta&actor=robot"))
    page.screenshot(path=str(shots / "project-audit.png"), full_page=True)
    expect(rows).to_have_count(10)  # i in 3, 9, …, 57: odd multiples of 3
    for text in rows.all_inner_texts():
        assert "test.beta" in text and "Robot" in text
    expect(page.get_by_role("link", name="Older events →")).to_have_count(0)
    # days: nothing before today
    page.goto("/projects/audited?until=2000-01-01")
    expect(page.locator("#audit")).to_contain_text("No events match this filter.")
    page.goto("/projects/audited?since=yesterday")
    expect(page.locator("#audit").get_by_role("alert")).to_contain_text("not a date")
