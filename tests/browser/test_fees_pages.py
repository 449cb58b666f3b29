"""The statement page in a real browser: a PI reads their project's year and a month, downloads the CSV;
an operator issues the statement and sees it listed. Nothing blocked by the hub's CSP."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from strongroom.hub import Hub
from test_fees import CHEST_TOTAL, seed_year

from .test_web_flows import login

pytestmark = pytest.mark.browser


def test_a_pi_reads_the_statement_and_an_operator_issues_it(page: Page, browser: Browser, live_server, hub: Hub,
                                                              people, shots: Path) -> None:
    seeded = seed_year(hub, people)
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None)
    page.on("requestfailed", lambda req: problems.append(f"failed: {req.url}"))
    login(page, seeded["people"]["pia"])
    page.goto("/projects/chest/fees?period=2025")
    expect(page.get_by_role("heading", name="Statement: Chest CT")).to_be_visible()
    expect(page.locator("#statement-total")).to_have_text("75 858,21")
    expect(page.locator("#statement-lines tbody tr")).to_have_count(5)
    expect(page.locator("tr.line-discount")).to_contain_text("-1 232,88")
    expect(page.get_by_role("button", name="Issue this statement")).to_have_count(0)  # a PI does not issue
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV for the finance system").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert Decimal(rows[-1]["amount_sek"]) == CHEST_TOTAL
    page.get_by_label(re.compile("Period")).fill("2025-07")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#statement-total")).to_have_text("5 265,76")
    page.screenshot(path=str(shots / "fees-statement.png"), full_page=True)
    assert not problems, problems

    ctx = browser.new_context(base_url=live_server.url)
    operator = ctx.new_page()
    login(operator, seeded["people"]["olle"])
    operator.goto("/projects/chest/fees?period=2025")
    operator.get_by_role("button", name="Issue this statement").click()
    expect(operator.locator("#flash")).to_have_text("Issued ST-chest-2025-v1.")
    expect(operator.locator("#issued")).to_be_visible()
    expect(operator.get_by_role("cell", name="ST-chest-2025-v1")).to_be_visible()
    ctx.close()
