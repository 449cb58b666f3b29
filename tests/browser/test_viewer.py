"""The image viewer (issue 13) in a real chromium: a member opens it from the project page on an imported
CT series and sees the expected pixels (the canvas screenshot against the picture computed here from the
de-identified pixel data with the same window), scrolls to the next slice, changes the window by key; while
the project's downloads are locked (the default) a drag leaves the window alone (windows of one's own need the
download right), once they are open it changes it; every request the page makes goes to the hub's own origin;
another project's member gets 404; once approved for the published dataset, that member opens the viewer from
the dataset page."""

from __future__ import annotations

import datetime as dt
import io
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect
from sqlalchemy import select

from imaging_support import archived_bytes, instances, make_project
from strongroom.access.models import Entitlement
from strongroom.db import transaction
from strongroom.hub import Hub
from strongroom.imaging import bulk, synthetic
from strongroom.imaging.models import ImagingProject
from strongroom.projects.models import Project, ProjectSetting

from .conftest import LiveServer
from .test_web_flows import login

pytestmark = pytest.mark.browser
SIDE, SLICES = 64, 4


def slice_pixels(n: int) -> bytes:
    """Slice n: a left-to-right ramp with a faint row pattern, and a bright square that moves with n."""
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    values = -200 + 7 * x + 3 * (y % 16)
    values[8 + 6 * n:18 + 6 * n, 30 - 4 * n:40 - 4 * n] = 1000
    return values.astype("<i2").tobytes()


def expected(hub: Hub, file_id: str, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (linear VOI) over the archived, de-identified instance's modality values."""
    ds = pydicom.dcmread(io.BytesIO(archived_bytes(hub, file_id)))
    values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    low = center - 0.5 - (width - 1) / 2
    return np.clip((values - low) / (width - 1) * 255.0, 0, 255).astype(np.uint8)


def shown(canvas: Locator) -> np.ndarray:
    """The canvas as the screen shows it, sampled at the centre of every image pixel it draws."""
    grey = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), dtype=np.float64)
    x, y, w, h = (float(v) for v in (canvas.get_attribute("data-draw") or "").split(","))
    centres = (np.arange(SIDE) + 0.5) / SIDE
    rows, cols = (y + centres * h).astype(int), (x + centres * w).astype(int)
    return grey[np.ix_(rows, cols)]


def rendered(canvas: Locator, sop: str, window: str = "") -> None:
    """Wait for the state the viewer sets once it has drawn this instance with this window."""
    expect(canvas).to_have_attribute("data-item", f"{sop}:1")
    expect(canvas).to_have_attribute("data-window", window)
    expect(canvas).to_have_attribute("data-state", "rendered")


def drag(page: Page, canvas: Locator) -> None:
    """100 pixels to the right from the canvas's centre."""
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 100, box["y"] + box["height"] / 2)
    page.mouse.up()


def test_viewer_renders_a_ct_series_from_the_hubs_own_origin(page: Page, browser: Browser, live_server: LiveServer,
                                                             hub: Hub, people, shots: Path, tmp_path: Path) -> None:
    alice, bob = people("alice"), people("bob")
    make_project(hub, "lung", "alice")
    make_project(hub, "heart", "bob")
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(1, SLICES + 1):
        (folder / f"ct-{n}.dcm").write_bytes(synthetic.make_ct(0, 0, 1, n, rows=SIDE, columns=SIDE,
                                                               pixel_bytes=slice_pixels(n)))
    (folder / "other.dcm").write_bytes(synthetic.make_ct(1, 0, 1, 1, rows=SIDE, columns=SIDE))  # a second study
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), folder, workers=1)
    assert report.archived == SLICES + 1 and report.quarantined == 0
    rows = instances(hub, "published")
    studies = {r.study_uid for r in rows}
    series = sorted((r for r in rows if r.rows == SIDE and r.instance_number <= SLICES and sum(
        1 for o in rows if o.series_uid == r.series_uid) == SLICES), key=lambda r: r.instance_number)
    assert len(studies) == 2 and len(series) == SLICES

    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    login(page, alice)
    page.goto("/projects/lung")
    page.get_by_role("link", name="Image viewer").click()
    expect(page).to_have_url(re.compile(r"/projects/lung/viewer$"))
    expect(page.get_by_role("heading", name="Images of Lung")).to_be_visible()
    first = series[0]
    page.locator(f'#vw-studies button[data-study="{first.study_uid}"]').click()
    page.locator(f'#vw-series button[data-series="{first.series_uid}"]').click()
    canvas = page.locator("#vw-canvas")
    rendered(canvas, first.sop_instance_uid)
    expect(page.locator("#vw-position")).to_have_text(f"1 / {SLICES}")
    # the image's own window (the header's 40/400), drawn magnified: pixel for pixel what the archive holds
    want = expected(hub, first.file_id, 40, 400)
    assert np.abs(shown(canvas) - want).mean() < 1.0
    canvas.screenshot(path=str(shots / "viewer.png"))

    # the wheel scrolls to the next slice: a different picture, the expected one
    canvas.hover()
    page.mouse.wheel(0, 120)
    rendered(canvas, series[1].sop_instance_uid)
    second = expected(hub, series[1].file_id, 40, 400)
    assert np.abs(second.astype(float) - want).mean() > 5  # the square moved
    assert np.abs(shown(canvas) - second).mean() < 1.0
    # key 3: the lung preset, rendered by the hub with that window
    page.keyboard.press("3")
    rendered(canvas, series[1].sop_instance_uid, "-600,1500")
    assert np.abs(shown(canvas) - expected(hub, series[1].file_id, -600, 1500)).mean() < 1.0
    # End and the arrow keys walk the series; 0 resets the window to the image's own
    page.keyboard.press("End")
    rendered(canvas, series[-1].sop_instance_uid, "-600,1500")
    page.keyboard.press("0")
    page.keyboard.press("ArrowUp")
    rendered(canvas, series[-2].sop_instance_uid)
    assert np.abs(shown(canvas) - expected(hub, series[-2].file_id, 40, 400)).mean() < 1.0
    # downloads are locked (the default): the hub renders only its own windows, so a drag changes nothing
    drag(page, canvas)
    expect(page.locator("#vw-preset")).to_have_value("")  # a drag that took would say "custom" at once
    expect(page.locator("#vw-info")).to_contain_text("windows of your own need the download right")
    rendered(canvas, series[-2].sop_instance_uid)
    # the PI opens downloads: dragging right widens the window (a step of width/256 per pixel): 100 px from
    # 40/400 is 40/556
    with transaction(hub.sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        assert project is not None
        s.add(ProjectSetting(project_id=project.id, key="download_allowed", value=True, changed_by=project.pi_id))
    page.reload()
    page.locator(f'#vw-studies button[data-study="{first.study_uid}"]').click()
    page.locator(f'#vw-series button[data-series="{first.series_uid}"]').click()
    rendered(canvas, first.sop_instance_uid)
    page.keyboard.press("End")
    rendered(canvas, series[-1].sop_instance_uid)
    page.keyboard.press("ArrowUp")
    rendered(canvas, series[-2].sop_instance_uid)
    expect(page.locator("#vw-info")).not_to_contain_text("download right")
    drag(page, canvas)
    rendered(canvas, series[-2].sop_instance_uid, "40,556")
    assert np.abs(shown(canvas) - expected(hub, series[-2].file_id, 40, 556)).mean() < 1.0
    page.screenshot(path=str(shots / "viewer-page.png"), full_page=True)

    # nothing from anywhere but the hub (no CDN, no fonts, no third-party script), and no CSP refusals
    assert requests and all(u.startswith(live_server.url + "/") for u in requests), requests
    assert any("/rendered" in u for u in requests) and any(u.endswith("/static/viewer.js") for u in requests)
    assert problems == []
    policy = page.request.get("/projects/lung/viewer").headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe" not in policy and "wasm" not in policy  # the hub's own

    # bob (another project's PI) gets 404 for the viewer, as for everything of lung's
    other = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    other.set_default_timeout(10_000)
    try:
        bob_page = other.new_page()
        login(bob_page, bob)
        response = bob_page.goto("/projects/lung/viewer")
        assert response is not None and response.status == 404
        with transaction(hub.sessions) as s:
            dataset = s.scalar(select(ImagingProject.dataset_id))
            now = dt.datetime.now(dt.UTC)
            s.add(Entitlement(user_id=bob.user.id, dataset_id=dataset, version=None, starts_at=now,
                              ends_at=now + dt.timedelta(days=9)))
        # approved for the published dataset: the dataset page opens the viewer
        bob_page.goto(f"/datasets/{dataset}")
        bob_page.get_by_role("link", name="Open the images in the viewer").click()
        expect(bob_page).to_have_url(re.compile(r"/projects/lung/viewer$"))
        expect(bob_page.get_by_role("link", name="← the dataset")).to_have_attribute("href", f"/datasets/{dataset}")
        bob_page.locator(f'#vw-studies button[data-study="{first.study_uid}"]').click()
        bob_canvas = bob_page.locator("#vw-canvas")
        rendered(bob_canvas, first.sop_instance_uid)
        assert np.abs(shown(bob_canvas) - want).mean() < 1.0
    finally:
        other.close()
