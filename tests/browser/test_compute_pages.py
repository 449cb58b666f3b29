"""The GPU calendar in a real browser: an operator sets a budget, a member books GPUs (shown in the week
grid), a booking beyond the budget is flagged red (this hub allows it and tells the PI), and cancelling
frees the GPUs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from strongroom.hub import Hub

from .test_web_flows import login, make_project

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings):
    from strongroom.config import ComputeSettings

    return settings.model_copy(update={"compute": ComputeSettings.model_validate(
        {"machines": {"dgx2": {"gpus": 16}}, "over_budget": "allow_and_notify"})})


def _as(browser: Browser, url: str, person) -> Page:
    page = browser.new_context(base_url=url, viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(10_000)
    login(page, person)
    return page


def test_book_red_flag_and_cancel_in_the_browser(browser: Browser, live_server, hub: Hub, people,
                                                 shots: Path) -> None:
    alice, sam, olga = people("alice"), people("sam"), people("olga", admin=True)
    make_project(hub, "lung", "alice", members={"sam": "member"})

    operator = _as(browser, live_server.url, olga)
    operator.goto("/admin/compute")
    operator.get_by_label("Project").select_option("lung")
    operator.get_by_label("Class").select_option("network_partner")
    operator.get_by_role("button", name="Set the budget").click()
    expect(operator.locator("#flash")).to_contain_text("lung: network partner, 8 GPU-weeks")

    member = _as(browser, live_server.url, sam)
    member.goto("/projects/lung")
    member.get_by_role("link", name="GPU calendar, bookings and budget").click()
    expect(member.locator("#budget")).to_contain_text("8 GPU-weeks")
    member.get_by_label("GPUs", exact=True).fill("1")
    member.get_by_label("Weeks", exact=True).fill("1")
    member.get_by_role("button", name="Book").click()
    expect(member.locator("#flash")).to_contain_text("1 GPUs on dgx2 from")
    grid = member.locator("table.gpu-grid")
    expect(grid.locator("td.held").first).to_contain_text("Sam")
    expect(grid.locator("td.over")).to_have_count(0)
    # 8 GPUs for 2 weeks is beyond 8 GPU-weeks: allowed here, flagged red, the PI is told
    member.get_by_label("GPUs", exact=True).fill("8")
    member.get_by_label("Weeks", exact=True).fill("2")
    member.get_by_role("button", name="Book").click()
    expect(member.locator("#flash")).to_contain_text("over the project's budget: the PI has been told")
    expect(grid.locator("td.over").first).to_contain_text("over budget")
    red = member.locator("#bookings tr.over")
    expect(red).to_have_count(1)
    member.screenshot(path=str(shots / "compute-calendar.png"), full_page=True)
    # cancel the red one: its GPUs are free again
    red.get_by_role("button", name="Cancel").click()
    # (not just "Booking": the booking's own message says that too, and a goto would cut the cancel short)
    flash = member.locator("#flash")
    expect(flash).to_contain_text(re.compile(r"Booking \d+ (cancelled|ended now)"))
    expect(member.locator("#bookings tr.over")).to_have_count(0)
    said = flash.inner_text()
    member.goto("/projects/lung/compute")
    if "cancelled" in said:  # it had not started: every GPU is free again
        expect(member.locator("table.gpu-grid td.over")).to_have_count(0)
    else:  # booked between 09:00 and 12:00 local, it started at once: cut to now, the hour in progress stays its own
        expect(member.locator("table.gpu-grid td.over")).to_have_count(8)  # its 8 GPUs, this hour only

    pi = _as(browser, live_server.url, alice)
    pi.goto("/projects/lung/compute")
    expect(pi.locator("#bookings")).to_contain_text("Sam")
    expect(pi.locator("#bookings").get_by_role("button", name="Cancel")).to_have_count(1)  # the PI may cancel
