"""End-to-end web flows in a real chromium against the app served by uvicorn (SQLite)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from conftest import PASSWORD, Person, browser_session
from strongroom.audit import service as audit
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.deps import SESSION_COOKIE
from strongroom.hub import Hub
from strongroom.projects import service as projects
from strongroom.projects.models import Project

pytestmark = pytest.mark.browser


def _path(page: Page, pattern: str) -> re.Pattern[str]:
    """A URL matcher for a path on the live server (query and fragment allowed)."""
    return re.compile(r"^https?://[^/]+" + pattern + r"(\?[^#]*)?(#.*)?$")


def _password_step(page: Page, username: str) -> None:
    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()


def login(page: Page, person: Person) -> None:
    """Drive the real login pages: password, then a fresh TOTP code."""
    _password_step(page, person.username)
    expect(page).to_have_url(_path(page, "/login/mfa"))
    page.get_by_label(re.compile("6-digit code")).fill(person.code())
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(_path(page, "/projects"))


def make_project(hub: Hub, slug: str, pi: str, *, members: dict[str, str] | None = None) -> Project:
    with transaction(hub.sessions) as session:
        project = projects.create_project(session, Actor.system("test"), slug=slug, name=f"Project {slug}",
                                          pi=pi, ethics_ref="Dnr 2026-00001-01",
                                          end_date=dt.date.today() + dt.timedelta(days=365))
        for username, role in (members or {}).items():
            from strongroom.identity import service as identity
            from strongroom.projects.models import Membership

            user = identity.find_user(session, username)
            session.add(Membership(project_id=project.id, user_id=user.id, role=role, delegated_rights=[]))
        session.flush()
        session.expunge(project)
    return project


def _actions(hub: Hub, prefix: str) -> list[audit.AuditEvent]:
    session = hub.sessions()
    try:
        return audit.query(session, action_prefix=prefix, limit=100)
    finally:
        session.close()


def test_admin_enrols_mfa_creates_project_and_adds_member(page: Page, hub: Hub, people, shots: Path
                                                          ) -> None:
    admin = people("admin", admin=True, mfa=False)
    people("researcher", mfa=False)

    page.goto("/")
    expect(page).to_have_url(_path(page, "/login"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("Username").fill(admin.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()

    # No MFA yet: the hub insists on enrolment before anything else.
    expect(page).to_have_url(_path(page, "/mfa/enrol"))
    expect(page.get_by_role("heading", name="Set up multi-factor authentication")).to_be_visible()
    expect(page.get_by_role("img", name="QR code for your authenticator app")).to_be_visible()
    page.goto("/projects")  # nothing else is reachable before enrolment: back to the enrolment page
    expect(page).to_have_url(_path(page, "/mfa/enrol"))
    expect(page.get_by_role("heading", name="Your projects")).to_have_count(0)
    page.screenshot(path=str(shots / "mfa_enrol.png"), full_page=True)

    secret = page.locator("#totp-secret").inner_text().strip()
    assert re.fullmatch(r"[A-Z2-7]{16,}", secret)
    admin.seed = secret
    page.get_by_label("Code from the app").fill(admin.code())
    page.get_by_role("button", name="Turn on MFA").click()

    expect(page.get_by_role("heading", name=re.compile("Save your recovery codes"))).to_be_visible()
    codes = page.locator("#recovery-codes li")
    expect(codes).to_have_count(10)
    page.screenshot(path=str(shots / "recovery_codes.png"), full_page=True)
    assert all(re.fullmatch(r"[0-9a-f]{5}-[0-9a-f]{5}", c.strip()) for c in codes.all_inner_texts())
    page.get_by_role("link", name=re.compile("I saved them")).click()

    expect(page).to_have_url(_path(page, "/projects"))
    expect(page.get_by_role("heading", name="Your projects")).to_be_visible()
    expect(page.get_by_text("You are not a member of any project yet")).to_be_visible()
    expect(page.locator("header .who")).to_contain_text("Admin")

    form = page.locator("#create-project")
    form.get_by_label("Id (used in URLs)").fill("lung-ct-2026")
    form.get_by_label("Name", exact=True).fill("Lung CT cohort")
    form.get_by_label("PI (username or e-mail)").fill("admin")
    form.get_by_label("Ethics approval reference").fill("Dnr 2026-01234-01")
    form.get_by_label("Class").select_option("project")
    form.get_by_label("Storage quota (TB)").fill("5")
    form.get_by_label("Description").fill("Low-dose CT screening study.")
    form.get_by_role("button", name="Create project").click()

    # The admin is the PI, so the hub opens the project page.
    expect(page).to_have_url(_path(page, "/projects/lung-ct-2026"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Lung CT cohort")
    facts = page.locator("dl.facts")
    expect(facts).to_contain_text("lung-ct-2026")
    expect(facts).to_contain_text("Dnr 2026-01234-01")
    expect(facts.locator("dt:text-is('Your role') + dd")).to_contain_text(re.compile(r"^pi —"))
    expect(facts.locator("dt:text-is('PI') + dd")).to_have_text("Admin")

    add = page.locator("#add-member")
    add.get_by_label("Add member (username or e-mail)").fill("researcher")
    add.get_by_label("Role").select_option("member")
    add.get_by_role("button", name="Add member").click()

    expect(page).to_have_url(_path(page, "/projects/lung-ct-2026"))
    rows = page.locator("#members tbody tr")
    expect(rows).to_have_count(2)
    researcher = rows.filter(has_text="Researcher")
    expect(researcher).to_have_count(1)
    expect(researcher.get_by_label("Role of Researcher", exact=True)).to_have_value("member")
    expect(rows.filter(has_text="Admin").locator("td").nth(1)).to_have_text("pi")
    expect(page.locator("#audit")).to_contain_text("project.member.added")
    page.screenshot(path=str(shots / "project.png"), full_page=True)

    enrol = [e for e in _actions(hub, "mfa.enrol") if e.subject_user_id == admin.user.id]
    assert [e.outcome for e in enrol] == ["ok"]
    created = _actions(hub, "project.created")
    assert len(created) == 1 and created[0].subject_user_id == admin.user.id
    added = _actions(hub, "project.member.added")
    assert len(added) == 1 and added[0].details == {"role": "member"} and added[0].actor_id == admin.user.id
    session = hub.sessions()
    try:
        report = audit.verify(session)
    finally:
        session.close()
    assert report.ok, report.problems
    assert report.checked >= 5


def test_logout_then_login_with_totp(context: BrowserContext, page: Page, hub: Hub, people,
                                     live_server) -> None:
    alice = people("alice")
    # Start logged in (the login pages are what this test drives next, after logging out).
    context.add_cookies([{"name": SESSION_COOKIE, "value": browser_session(hub, alice),
                          "url": live_server.url}])
    page.goto("/projects")
    expect(page.locator("header .who")).to_have_text("Alice")

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(_path(page, "/login"))
    assert SESSION_COOKIE not in {c["name"] for c in context.cookies()}
    page.goto("/projects")
    expect(page).to_have_url(_path(page, "/login"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()

    # A wrong password stays on the login page.
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("alert")).to_have_text("wrong username or password")

    _password_step(page, "alice")
    expect(page).to_have_url(_path(page, "/login/mfa"))
    expect(page.get_by_role("heading", name="Enter your authenticator code")).to_be_visible()
    page.goto("/projects")  # a password alone is not a login: back to the second factor
    expect(page).to_have_url(_path(page, "/login/mfa"))
    expect(page.get_by_role("heading", name="Your projects")).to_have_count(0)

    valid_now = {pyotp.TOTP(alice.seed).at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30 * k))
                 for k in (-1, 0, 1, 2)}
    wrong = next(c for c in ("000000", "111111", "222222") if c not in valid_now)
    code = page.get_by_label(re.compile("6-digit code"))
    code.fill(wrong)
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_have_text("that code is not valid")
    expect(page).to_have_url(_path(page, "/login/mfa"))
    expect(page.get_by_role("heading", name="Enter your authenticator code")).to_be_visible()

    code.fill(alice.code())
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(_path(page, "/projects"))
    expect(page.get_by_role("heading", name="Your projects")).to_be_visible()
    expect(page.locator("header .who")).to_have_text("Alice")
    expect(page.get_by_text("Project data needs a login with multi-factor")).to_have_count(0)

    outcomes = [e.outcome for e in reversed(_actions(hub, "login.mfa")) if e.subject_user_id == alice.user.id]
    assert outcomes == ["denied", "ok"]


def test_member_of_a_cannot_see_project_b(page: Page, hub: Hub, people) -> None:
    pi_a, pi_b = people("pia"), people("pib")
    bob = people("bob")
    make_project(hub, "project-a", pi_a.username, members={"bob": "member"})
    make_project(hub, "project-b", pi_b.username)

    login(page, bob)
    tiles = page.locator("#my-projects li")
    expect(tiles).to_have_count(1)
    expect(tiles.first).to_contain_text("Project project-a")
    expect(tiles.first).to_contain_text("your role: member")
    expect(page.get_by_text("project-b")).to_have_count(0)
    expect(page.locator("#admin-projects")).to_have_count(0)

    page.get_by_role("link", name="Project project-a").click()
    expect(page).to_have_url(_path(page, "/projects/project-a"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Project project-a")
    expect(page.locator("#add-member")).to_have_count(0)  # members do not manage members

    response = page.goto("/projects/project-b")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.get_by_text("Project project-b")).to_have_count(0)
    # Indistinguishable from a project that does not exist at all.
    missing = page.goto("/projects/no-such-project")
    assert missing is not None and missing.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()


def test_pi_opens_dicom_senders_setting(page: Page, hub: Hub, people, shots: Path) -> None:
    carol = people("carol")
    project = make_project(hub, "mri-study", carol.username)

    login(page, carol)
    page.goto("/projects/mri-study")
    setting = page.locator("#setting-dicom_senders")
    tag = setting.get_by_role("heading", name=re.compile("Allowed DICOM senders")).locator(".tag")
    expect(tag).to_have_text("locked")
    expect(tag).to_have_class(re.compile(r"\blocked\b"))

    def add(ae_title: str, address: str) -> None:
        box = page.locator("#setting-dicom_senders")
        box.get_by_label("ae title").fill(ae_title)
        box.get_by_label("address").fill(address)
        box.get_by_role("button", name="Add").click()

    # An invalid address: an error, and the setting stays locked.
    add("CT_SCANNER_1", "not-an-address")
    expect(page.get_by_role("alert")).to_contain_text("Allowed DICOM senders: address")
    expect(page.get_by_role("alert")).to_contain_text("address")
    page.screenshot(path=str(shots / "setting_error.png"), full_page=True)
    expect(tag).to_have_text("locked")
    expect(setting.locator("ul li")).to_have_count(0)

    add("CT_SCANNER_1", "10.20.30.0/24")
    expect(page).to_have_url(_path(page, "/projects/mri-study"))
    expect(page.get_by_role("alert")).to_have_count(0)
    expect(tag).to_have_text("open")
    expect(tag).to_have_class(re.compile(r"\bopen\b"))
    entries = setting.locator("ul li")
    expect(entries).to_have_count(1)
    expect(entries.first).to_contain_text("CT_SCANNER_1")
    expect(entries.first).to_contain_text("10.20.30.0/24")
    # The other settings stay locked.
    expect(page.locator("#setting-internet_access .tag")).to_have_text("locked")

    # Another invalid entry changes nothing: still open, still one sender.
    add("MR_1", "300.1.2.3")
    expect(page.get_by_role("alert")).to_contain_text("Allowed DICOM senders: address")
    page.goto("/projects/mri-study")
    expect(tag).to_have_text("open")
    expect(entries).to_have_count(1)

    session = hub.sessions()
    try:
        assert projects.get_setting(session, project.id, "dicom_senders") == [
            {"ae_title": "CT_SCANNER_1", "address": "10.20.30.0/24", "query_retrieve": False}]  # a scanner
    finally:
        session.close()
    opened = _actions(hub, "project.setting")
    assert [(e.action, e.outcome, e.actor_id) for e in opened] == [
        ("project.setting.opened", "ok", carol.user.id)]
