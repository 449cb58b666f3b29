"""The public metrics page in a real browser, as a funder sees it: headline figures, SVG charts drawn by
the server (no script), nothing blocked by the hub's CSP; and a data owner's page of one dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

import metrics_support as ms
from strongroom.hub import Hub

pytestmark = pytest.mark.browser
CHARTS = ("datasets", "applications", "downloads", "views", "modalities", "organs", "countries")


def test_a_funder_reads_the_metrics_page_at_a_glance(page: Page, hub: Hub, shots: Path) -> None:
    ms.seed(hub)
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None)
    page.on("requestfailed", lambda req: problems.append(f"failed: {req.url}"))
    page.goto("/catalog/chest")  # a person's view of a landing page (headless chromium is a robot: not counted)
    page.goto("/stats")
    expect(page.get_by_role("heading", name="Data-sharing metrics")).to_be_visible()
    headline = page.locator("#headline")
    expect(headline.locator('[data-figure="datasets"]')).to_have_text("3")
    expect(headline.locator('[data-figure="scans"]')).to_have_text("10")  # 11 scans, rounded to 5 for the public
    expect(headline.locator('[data-figure="countries_shared_with"]')).to_have_text("4")
    expect(headline.locator('[data-figure="external_sharing_events"]')).to_have_text("10")
    for name in CHARTS:
        chart = page.locator(f"svg#chart-{name}")
        expect(chart).to_be_visible()
        box = chart.bounding_box()
        assert box and box["width"] > 250 and box["height"] > 30, (name, box)
        # an accessible name from its <title>
        expect(chart).to_have_attribute("role", "img")
    # the bars are drawn and visible, suppressed ones as outlines
    bars = page.locator("svg#chart-modalities rect.chart-bar")
    outlines = page.locator("svg#chart-modalities rect.chart-suppressed")
    # CT's 5 scans are a bar; SM, MR and PT ("< 5") are dashed outlines up to 5; SEG has no scans
    expect(bars).to_have_count(1)
    expect(outlines).to_have_count(3)
    # drawn as the SVG says (no style sheet rule reshapes them): an outline reaches as far as CT's 5
    ct = (bars.first.bounding_box() or {"width": 0})["width"]
    widths = [(outlines.nth(i).bounding_box() or {"width": 0})["width"] for i in range(3)]
    assert ct > 0 and all(abs(w - ct) < 1 for w in widths), (ct, widths)
    expect(page.locator("svg#chart-countries rect.chart-suppressed")).to_have_count(3)
    expect(page.locator("#countries li").first).to_contain_text("Germany")
    page.screenshot(path=str(shots / "metrics.png"), full_page=True)
    assert not problems, problems  # no CSP violation, nothing failed to load
