"""Unpublished datasets do not exist outside their project (issue 9, point 5): a dataset never
published in the catalogue, another project's draft, and a withdrawn (unpublished-again) dataset
answer every access/, catalogue and archive route that takes a dataset id exactly like a made-up id —
same status, same body apart from the echoed id — on the API and the web, and no title leaks.

Fails on the old code: GET /apply/{id} answered 200 with the title, and POST …/applications created
an application for it.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conftest import bearer, token_for, web_client
from helpers import form_post
from strongroom.access.models import Application
from strongroom.archive.models import Dataset, DatasetVersion
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction
from strongroom.projects import service as projects

END = dt.date.today() + dt.timedelta(days=365)
MADE_UP = "SRD-0000000000"
TITLES = {"never": "Never published CT", "draft": "Secret draft MR", "withdrawn": "Withdrawn PET"}


def _dataset(s, project, ds_id: str, title: str, *, released: bool = True,
             entry: str | None = None) -> None:
    s.add(Dataset(id=ds_id, project_id=project.id, title=title, created_by=project.pi_id))
    s.flush()
    s.add(DatasetVersion(dataset_id=ds_id, number=1, state="released" if released else "draft"))
    if entry is not None:  # "withdrawn": was published, then unpublished
        s.add(CatalogEntry(dataset_id=ds_id, slug=entry, title=title, created_by=project.pi_id,
                           published=entry == "open-ct", published_at=dt.datetime.now(dt.UTC),
                           description="x" * 60))


@pytest.fixture
def world(app, hub, people):
    persons = {n: people(n) for n in ("owner", "otherowner", "rita")}
    with transaction(hub.sessions) as s:
        mine = projects.create_project(s, Actor.system("t"), slug="scapis", name="SCAPIS consortium", pi="owner",
                                       ethics_ref="E", end_date=END)
        theirs = projects.create_project(s, Actor.system("t"), slug="elsewhere", name="Elsewhere lab",
                                         pi="otherowner", ethics_ref="E", end_date=END)
        _dataset(s, mine, "SRD-NEVERPUBL", TITLES["never"])
        _dataset(s, theirs, "SRD-DRAFTONLY", TITLES["draft"], released=False)
        _dataset(s, mine, "SRD-WITHDRAWN", TITLES["withdrawn"], entry="withdrawn-pet")
        _dataset(s, mine, "SRD-PUBLISHED", "Open CT", entry="open-ct")
    tokens = {n: token_for(hub, p) for n, p in persons.items()}
    return {"app": app, "hub": hub, "people": persons, "t": tokens,
            "api": TestClient(app, base_url="http://127.0.0.1:8000"),
            "web": web_client(app, hub, persons["rita"])}


def _api(world, ds: str) -> dict[str, tuple[int, str]]:
    c, h = world["api"], bearer(world["t"]["rita"])
    calls = {
        "create application": c.post(f"/api/v1/datasets/{ds}/applications", headers=h),
        "access policy": c.put(f"/api/v1/datasets/{ds}/access-policy", json={"applicant_download": True}, headers=h),
        "external decision": c.post(f"/api/v1/external/datasets/{ds}/decisions", headers=h,
                                    json={"applicant": "rita", "approve": True, "ends": str(END)}),
        "access report": c.get(f"/api/v1/datasets/{ds}/access-report", headers=h),
        "dataset": c.get(f"/api/v1/datasets/{ds}", headers=h),
        "version files": c.get(f"/api/v1/datasets/{ds}/versions/1/files", headers=h),
        "catalogue entry": c.get(f"/api/v1/datasets/{ds}/catalog", headers=h),
        "drs bundle": c.get(f"/ga4gh/drs/v1/objects/{ds}", headers=h),
    }
    return {k: (r.status_code, r.text.replace(ds, "{id}")) for k, r in calls.items()}


def _web(world, ds: str) -> dict[str, tuple[int, str]]:
    w = world["web"]
    calls = {
        "apply page": w.get(f"/apply/{ds}"),
        "start application": form_post(w, f"/apply/{ds}"),
        "owner page": w.get(f"/datasets/{ds}/access"),
        "download policy form": form_post(w, f"/datasets/{ds}/access/download", {"allowed": "yes"}),
        "dataset page": w.get(f"/datasets/{ds}"),
        "catalogue editor": w.get(f"/datasets/{ds}/catalog"),
        "catalogue preview": w.get(f"/datasets/{ds}/catalog/preview"),
    }
    # the page's CSRF token (the log-out form) is per browser, not per dataset
    return {k: (r.status_code, re.sub(r'name="csrf_token" value="[^"]*"', "", r.text.replace(ds, "{id}")))
            for k, r in calls.items()}


@pytest.mark.parametrize("ds", ["SRD-NEVERPUBL", "SRD-DRAFTONLY", "SRD-WITHDRAWN"])
def test_unpublished_dataset_answers_like_a_made_up_id(world, ds: str) -> None:
    api, made_up_api = _api(world, ds), _api(world, MADE_UP)
    web, made_up_web = _web(world, ds), _web(world, MADE_UP)
    for route, answer in api.items():
        assert answer == made_up_api[route], (route, answer)
        assert answer[0] == 404, route
    for route, answer in web.items():
        assert answer == made_up_web[route], (route, answer[0])
        assert answer[0] == 404, route
    everything = " ".join(text for _, text in [*api.values(), *web.values()])
    assert not any(title in everything for title in TITLES.values())
    assert "SCAPIS consortium" not in everything and "Elsewhere lab" not in everything
    # nothing was created, so nothing lists it later
    with world["hub"].sessions() as s:
        assert s.scalar(select(func.count()).select_from(Application)) == 0
    listing = world["web"].get("/applications").text
    assert not any(title in listing for title in TITLES.values())
    if ds == "SRD-WITHDRAWN":
        _withdrawn_entry_is_gone_from_the_public_catalogue(world)


def _withdrawn_entry_is_gone_from_the_public_catalogue(world) -> None:
    """The public side, keyed by slug: landing page, terms, sample images, card, sitemap, search."""
    anon = TestClient(world["app"], base_url="http://127.0.0.1:8000")
    for suffix in ("", "/terms", "/images/1.png", "/card.png"):
        gone, made_up = anon.get(f"/catalog/withdrawn-pet{suffix}"), anon.get(f"/catalog/no-such-slug{suffix}")
        assert (gone.status_code, gone.text.replace("withdrawn-pet", "{slug}")) == \
            (made_up.status_code, made_up.text.replace("no-such-slug", "{slug}")), suffix
        assert gone.status_code == 404, suffix
    for url in ("/sitemap.xml", "/sitemaps/catalog-1.xml", "/catalog", "/api/v1/catalog", "/catalog.ttl"):
        text = anon.get(url).text
        assert "withdrawn-pet" not in text and TITLES["withdrawn"] not in text, url
    assert "open-ct" in anon.get("/sitemaps/catalog-1.xml").text  # the published one is there


def test_published_dataset_and_own_project_still_work(world) -> None:
    web, api = world["web"], world["api"]
    assert web.get("/apply/SRD-PUBLISHED").status_code == 200
    r = api.post("/api/v1/datasets/SRD-PUBLISHED/applications", headers=bearer(world["t"]["rita"]))
    assert r.status_code == 201, r.text
    # members of the owning project see their own unpublished dataset's apply page
    owner = web_client(world["app"], world["hub"], world["people"]["owner"])
    page = owner.get("/apply/SRD-NEVERPUBL")
    assert page.status_code == 200 and TITLES["never"] in page.text
    # another project's PI is an outsider
    other = web_client(world["app"], world["hub"], world["people"]["otherowner"])
    assert other.get("/apply/SRD-NEVERPUBL").status_code == 404
