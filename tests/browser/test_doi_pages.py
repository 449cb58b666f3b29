"""DOIs in a real browser: a steward publishes a dataset, the job mints its DOIs on the local DataCite
server, the landing page shows them; releasing version 2 mints its DOI and updates the concept's
relations; withdrawing leaves a tombstone page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from strongroom.catalog import dois, entries
from strongroom.catalog.fields import EntryFields
from strongroom.config import DoiSettings, Settings
from strongroom.db import transaction
from strongroom.hub import Hub
from strongroom.jobs.runner import Runner
from support.datacite_server import FakeDataCite
from support.live import free_port, serving

from .test_web_flows import login, make_project

pytestmark = pytest.mark.browser
PREFIX = "10.80000"


@pytest.fixture
def datacite() -> Iterator[FakeDataCite]:
    fake = FakeDataCite(prefixes=(PREFIX,))
    with serving(fake.app(), free_port()) as url:
        fake.url = url  # type: ignore[attr-defined]
        yield fake


@pytest.fixture
def settings(settings: Settings, datacite: FakeDataCite) -> Settings:
    return settings.model_copy(update={"doi": DoiSettings(
        endpoint=datacite.url, repository_id=datacite.repository_id,  # type: ignore[attr-defined]
        password=datacite.password, prefix=PREFIX)})


def test_steward_publishes_and_the_landing_page_shows_the_doi(page: Page, hub: Hub, people, datacite,
                                                                shots: Path) -> None:
    from test_catalog import _principal, make_dataset
    from test_dois import release_version_2

    pia = people("pia")
    make_project(hub, "chest", "pia")
    ds = make_dataset(hub, pia, "chest", "Chest CT")
    with transaction(hub.sessions) as s:
        entries.save_entry(s, _principal(s, pia), ds, EntryFields(
            slug="chest-ct", title="Low-dose chest CT with nodule annotations",
            description="Low-dose chest CT examinations from a screening programme, with radiologist annotations "
                        "of every lung nodule larger than 4 mm.",
            data_owner="Example University Hospital", data_owner_url="https://ror.org/03yrm5c26",
            modalities=["CT"], organs=["Lung"], terms_text="Approved studies only.",
            access_conditions="Academic researchers with ethics approval may apply.",
            duo_codes=["DUO:0000006"], how_to_cite="Example University Hospital (2026). Chest CT.",
            contact_email="data-access@hospital.example.net",
            creators=[{"family_name": "Carberry", "given_name": "Josiah", "orcid": "0000-0002-1825-0097",
                       "affiliation": "Brown University", "ror": "05gq02987"}]))

    login(page, pia)
    page.goto(f"/datasets/{ds}/catalog")
    expect(page.locator("#dois")).to_contain_text("When you publish the entry, the hub mints a concept DOI")
    page.get_by_role("button", name="Publish").click()
    expect(page.locator("#flash")).to_contain_text("Published")
    Runner(hub, lease_seconds=10, name="test").run_until_idle()  # the catalog.dois job

    concept, v1 = dois.doi_name(PREFIX, ds, None), dois.doi_name(PREFIX, ds, 1)
    page.reload()
    expect(page.locator("#dois")).to_contain_text(concept)
    expect(page.locator("#dois")).to_contain_text("findable")
    page.screenshot(path=str(shots / "doi-steward.png"), full_page=True)

    page.goto("/catalog/chest-ct")
    doi_link = page.locator("#doi")
    expect(doi_link).to_have_text(concept)
    expect(doi_link).to_have_attribute("href", f"https://doi.org/{concept}")
    expect(page.get_by_role("link", name=f"https://doi.org/{v1}")).to_be_visible()
    page.screenshot(path=str(shots / "doi-landing.png"), full_page=True)
    assert datacite.dois[concept]["state"] == "findable"

    # version 2: its DOI, and the concept now lists both versions
    release_version_2({"hub": hub, "alice": pia, "ds": ds, "project": "chest"})
    Runner(hub, lease_seconds=10, name="test").run_until_idle()
    v2 = dois.doi_name(PREFIX, ds, 2)
    page.reload()
    expect(page.get_by_role("link", name=f"https://doi.org/{v2}")).to_be_visible()
    has_versions = {r["relatedIdentifier"] for r in datacite.dois[concept]["relatedIdentifiers"]
                    if r["relationType"] == "HasVersion"}
    assert has_versions == {v1, v2}

    # withdrawn: the DOI keeps resolving, to a tombstone
    page.goto(f"/datasets/{ds}/catalog")
    page.get_by_label("Reason").fill("Superseded by a corrected release.")
    page.get_by_role("button", name="Unpublish").click()
    expect(page.locator("#flash")).to_contain_text("tombstone")
    Runner(hub, lease_seconds=10, name="test").run_until_idle()
    response = page.goto("/catalog/chest-ct")
    assert response is not None and response.status == 410
    expect(page.get_by_role("heading", name="Low-dose chest CT with nodule annotations")).to_be_visible()
    expect(page.get_by_text("Superseded by a corrected release.")).to_be_visible()
    expect(page.locator("#doi")).to_have_attribute("href", f"https://doi.org/{concept}")
    page.screenshot(path=str(shots / "doi-tombstone.png"), full_page=True)
    assert datacite.dois[concept]["state"] == "registered"
