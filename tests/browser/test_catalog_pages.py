"""The public catalogue in a real browser, as an anonymous visitor: search, filter, open a landing
page, find the Apply button."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from strongroom.catalog import entries
from strongroom.catalog.demo import seed_catalog_demo
from strongroom.catalog.fields import EntryFields
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction
from strongroom.hub import Hub

from .test_web_flows import make_project

pytestmark = pytest.mark.browser


def _second_entry(hub: Hub, steward: str) -> None:
    """A brain MR dataset whose owner forbids methods development, so the catalogue has a choice."""
    from strongroom.identity import service as identity
    from test_catalog import _principal, make_dataset

    with hub.sessions() as s:
        person = type("P", (), {"user": identity.find_user(s, steward)})()
    ds = make_dataset(hub, person, "chest", "Glioma MR")
    with transaction(hub.sessions) as s:
        principal = _principal(s, person)
        entries.save_entry(s, principal, ds, EntryFields(
            slug="glioma-mr", title="Pre-operative glioma MR with tumour segmentations",
            description="Brain MR (T1, T2, FLAIR) of adult glioma patients before surgery, each with an expert "
                        "segmentation of enhancing tumour, oedema and necrosis.",
            data_owner="Example Neuro-Oncology Registry", modalities=["MR"], organs=["Brain"], subjects=240,
            series=960, annotations=240, terms_text="Registry data use agreement: approved studies only.",
            access_conditions="Clinical researchers with an approved protocol may apply.",
            duo_codes=["DUO:0000006", "DUO:0000015"], how_to_cite="Example Neuro-Oncology Registry (2026).",
            contact_email="registry-access@neuro.example.org"))
        entries.publish(s, principal, ds)


def test_anonymous_visitor_finds_a_dataset_and_sees_the_apply_button(page: Page, hub: Hub, people,
                                                                     shots: Path) -> None:
    people("pia")
    make_project(hub, "chest", "pia")
    landing_url = seed_catalog_demo(hub, project_slug="chest", steward="pia")
    _second_entry(hub, "pia")
    with hub.sessions() as s:
        from sqlalchemy import select

        dataset_id = s.scalar(select(CatalogEntry.dataset_id).where(CatalogEntry.slug == "synthetic-chest-ct-demo"))

    page.goto("/catalog")  # no login
    expect(page.get_by_role("heading", name="Dataset catalogue")).to_be_visible()
    expect(page.locator(".cat-count")).to_have_text("2 datasets")
    page.screenshot(path=str(shots / "catalog.png"), full_page=True)

    page.get_by_label("Search datasets").fill("nodule")
    page.get_by_role("button", name="Search").click()
    expect(page.locator(".cat-count")).to_contain_text("1 dataset matching “nodule”")
    expect(page.get_by_role("link", name="Synthetic chest CT with lung nodules (demo)")).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("glioma", re.I))).to_have_count(0)

    # facets are plain checkboxes in the same GET form: no JavaScript needed
    page.get_by_role("link", name="Clear all").click()
    expect(page.locator(".cat-count")).to_have_text("2 datasets")
    page.get_by_label(re.compile(r"No methods development \(DUO:0000015\)")).check()
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator(".cat-count")).to_have_text("1 dataset")
    expect(page.get_by_text("No methods / AI development")).to_be_visible()
    page.get_by_role("link", name="Clear all").click()
    page.get_by_label(re.compile(r"Computed tomography \(CT\)")).check()
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator(".cat-count")).to_have_text("1 dataset")

    page.get_by_role("link", name="Synthetic chest CT with lung nodules (demo)").click()
    expect(page).to_have_url(landing_url)
    expect(page.get_by_role("heading", level=1)).to_have_text("Synthetic chest CT with lung nodules (demo)")
    apply = page.get_by_role("link", name="Apply for access")
    expect(apply).to_be_visible()
    expect(apply).to_have_attribute("href", f"/apply/{dataset_id}")
    expect(page.get_by_role("heading", name="Why you should apply")).to_be_visible()
    expect(page.locator(".cat-gallery img")).to_have_count(3)
    for img in page.locator(".cat-gallery img").all():  # the sample images really load
        assert img.evaluate("i => i.complete && i.naturalWidth") == 256
    expect(page.locator("link[rel=canonical]")).to_have_attribute("href", landing_url)
    expect(page.locator('script[type="application/ld+json"]')).to_have_count(1)
    expect(page.locator(".cat-flag")).to_have_count(0)
    page.screenshot(path=str(shots / "catalog-landing.png"), full_page=True)

    page.get_by_role("link", name="Demo data use agreement").first.click()
    expect(page.get_by_role("heading", name="Demo data use agreement")).to_be_visible()

    page.goto("/catalog/glioma-mr")
    expect(page.locator(".cat-flag")).to_contain_text("Not for AI or methods development")
    page.screenshot(path=str(shots / "catalog-landing-no-ai.png"), full_page=True)


def test_citation_downloads_on_the_landing_page_import_cleanly(page: Page, hub: Hub, people, shots: Path) -> None:
    """Issue 11: the "How to cite" box's links download files a reference manager's parser reads."""
    import json

    import bibtexparser
    import rispy

    from strongroom.catalog.demo import DATA_OWNER, DEMO_TITLE

    people("pia")
    make_project(hub, "chest", "pia")
    landing_url = seed_catalog_demo(hub, project_slug="chest", steward="pia")
    page.goto(landing_url)  # no login
    box = page.locator(".cat-cite-dl")
    expect(box.get_by_role("link")).to_have_count(6)
    expect(page.locator(".cat-cite-apa")).to_contain_text(f"{DATA_OWNER}. (")
    expect(page.locator('link[rel="cite-as"]')).to_have_attribute("href", landing_url)
    box.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "catalog-how-to-cite.png"), full_page=True)
    got: dict[str, tuple[str, str]] = {}
    for label in ("BibTeX", "RIS", "CSL-JSON", "APA", "Vancouver", "schema.org JSON-LD"):
        with page.expect_download() as info:
            box.get_by_role("link", name=label, exact=True).click()
        download = info.value
        got[label] = (download.suggested_filename, Path(download.path()).read_text(encoding="utf-8"))
    stem = "synthetic-chest-ct-demo-v1"
    assert {name for name, _ in got.values()} == {f"{stem}.bib", f"{stem}.ris", f"{stem}.csl.json",
                                                 f"{stem}-apa.txt", f"{stem}-vancouver.txt", f"{stem}.jsonld"}
    library = bibtexparser.parse_string(got["BibTeX"][1])
    assert not library.failed_blocks and library.entries[0].fields_dict["title"].value == "{" + DEMO_TITLE + "}"
    (record,) = rispy.loads(got["RIS"][1])
    assert record["type_of_reference"] == "DATA" and record["title"] == DEMO_TITLE and record["edition"] == "1"
    assert json.loads(got["CSL-JSON"][1])[0]["title"] == DEMO_TITLE
    assert "(Version 1) [Dataset]" in got["APA"][1] and "Version 1." in got["Vancouver"][1]
    assert json.loads(got["schema.org JSON-LD"][1])["name"] == DEMO_TITLE
    assert page.url == landing_url  # downloading left the page where it was
