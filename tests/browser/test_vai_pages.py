"""VAI in a real browser: a clinic member creates an evaluation (model version × dataset version × labels ×
protocol) and starts it from the page, watches it finish, reads the full result (metrics with CIs, ROC and
calibration as inline SVG, subgroups, the failure lists), asks for release; the two named reviewers approve
from the project's page; the vendor's user then reads the report."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from strongroom.archive.datasets import create_dataset
from strongroom.archive.keys import ensure_key
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.hub import Hub
from strongroom.identity.principal import SCOPES, Principal
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from strongroom.projects.models import Membership, ProjectSetting
from strongroom.vai import service as vai
from strongroom.vai import synthetic
from test_vai import _put_files

from .test_web_flows import login, make_project

pytestmark = pytest.mark.browser


def _as(browser: Browser, url: str, person) -> Page:
    page = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(120_000)  # the shared test machine can be very slow; nothing here waits on time
    login(page, person)
    return page


def _principal(person) -> Principal:
    return Principal(user=person.user, via="session", mfa_at=dt.datetime.now(dt.UTC), scopes=frozenset(SCOPES),
                     credential_id="test")


def test_evaluation_created_run_released_and_read_by_the_vendor(browser: Browser, live_server, hub: Hub, people,
                                                                 shots: Path, tmp_path: Path) -> None:
    expect.set_options(timeout=120_000)
    ensure_key(hub)
    alice, sam, rita, ron, vera = (people(n) for n in ("alice", "sam", "rita", "ron", "vera"))
    project = make_project(hub, "lung", "alice", members={"sam": "member", "rita": "member", "ron": "member"})
    cases = synthetic.cases(60, seed=7)
    model = synthetic.train(80)
    files = _put_files(hub, "lung", alice, {f"case-{c.index:04d}.dcm": c.data for c in cases})
    with transaction(hub.sessions) as s:
        s.scalar(select(Membership).where(Membership.user_id == sam.user.id)).delegated_rights = ["export"]
        s.add(ProjectSetting(project_id=project.id, key="airlock_reviewers",
                             value=[str(rita.user.id), str(ron.user.id)], changed_by=alice.user.id))
        vai.add_vendor(s, Actor.system("t"), "acme", "Acme AI")
        vai.add_member(s, Actor.system("t"), "acme", "vera")
        mv = vai.register_model(s, _principal(vera), "acme", name="LesionFinder", version="1.0", mode="onnx",
                                intended_use="Flags CT slices with a focal lesion", contract=synthetic.CONTRACT,
                                output=synthetic.OUTPUT, sha256=hashlib.sha256(model).hexdigest())
        vai.upload_model_file(s, hub, _principal(vera), str(mv.id), model)
        access = projects.open_project(s, _principal(alice), "lung")
        dataset = create_dataset(s, _principal(alice), access, title="Screening 2021", description="", files=files)
        dataset_id = dataset.id
    labels = tmp_path / "labels.csv"
    labels.write_text(synthetic.labels_csv(cases))

    clinic = _as(browser, live_server.url, sam)
    clinic.goto("/projects/lung/vai")
    clinic.get_by_label("Title").fill("LesionFinder on screening 2021")
    clinic.get_by_label("Model version").select_option(label="Acme AI: LesionFinder 1.0")
    clinic.get_by_label("Dataset version (ONNX models run on it)").select_option(f"{dataset_id}:1")
    clinic.get_by_label("Labels table (CSV file)").set_input_files(str(labels))
    clinic.get_by_label("Reference standard, in words").fill("The generator's ground truth")
    clinic.get_by_label("Subgroup columns (comma-separated; empty: every extra column)").fill("site, sex")
    clinic.get_by_label("Bootstrap resamples").fill("200")
    clinic.get_by_role("button", name="Create and start").click()
    expect(clinic.locator("#flash")).to_contain_text("is created and started: 60 instances to predict")
    expect(clinic.locator("#vai-state")).to_have_text("created")
    assert clinic.locator('meta[http-equiv="refresh"]').count() == 1  # the page follows the run by itself
    Runner(hub, lease_seconds=30, name="test").run_until_idle()  # the job
    clinic.reload()
    expect(clinic.locator("#vai-state")).to_have_text("done")
    expect(clinic.locator("#progress")).to_contain_text("60 of 60 instances")
    expect(clinic.locator("#progress")).to_contain_text("CPUExecutionProvider")
    assert clinic.locator("#plots svg").count() == 2 and clinic.locator("#plots polyline").count() >= 2
    expect(clinic.locator("#figures")).to_contain_text("AUC, DeLong 95 % CI")
    expect(clinic.locator("#subgroup-site")).to_contain_text("Sensitivity at vendor")
    expect(clinic.locator("#failures")).to_contain_text("False negatives")
    assert clinic.locator('meta[http-equiv="refresh"]').count() == 0
    clinic.screenshot(path=str(shots / "vai-evaluation.png"), full_page=True)
    clinic.get_by_role("button", name="Ask for release to the vendor").click()
    expect(clinic.locator("#flash")).to_contain_text("waits for 2 approvals")
    expect(clinic.locator("#releases")).to_contain_text("0 of 2 approvals")

    vendor = _as(browser, live_server.url, vera)
    vendor.goto("/vai")
    expect(vendor.locator("#vendor-acme")).to_contain_text("No reports released to you yet")
    for reviewer, said in ((rita, "still in review"), (ron, "released to the vendor")):
        page = _as(browser, live_server.url, reviewer)
        page.goto("/projects/lung/vai")
        page.locator("#releases").get_by_role("button", name="Approve").click()
        expect(page.locator("#flash")).to_contain_text(said)

    vendor.goto("/vai")
    vendor.locator("#vendor-acme").get_by_role("link", name="LesionFinder on screening 2021").click()
    expect(vendor.locator("h1")).to_contain_text("LesionFinder 1.0 at Project lung")
    # the released AUC carries the release noise (one label cannot be read from it), and says so
    expect(vendor.locator("#figures")).to_contain_text("AUC, 95 % CI (release noise of scale")
    assert vendor.locator("#plots svg").count() == 2
    assert not re.search(r"False negatives|case-00", vendor.content())  # no failure lists, no case ids
    vendor.screenshot(path=str(shots / "vai-vendor-report.png"), full_page=True)
    # and the vendor's user still sees nothing of the clinic
    assert vendor.goto("/projects/lung/vai").status == 404
