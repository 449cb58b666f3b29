"""The public dataset catalogue: landing pages with schema.org JSON-LD (read back with extruct, as a
crawler would), link-preview tags, canonical URLs, sitemaps and robots.txt, search with facets,
stewardship rights, validation, the AI-forbidden flag, and that no person's e-mail ever appears on
a public page."""

from __future__ import annotations

import datetime as dt
import struct
import xml.etree.ElementTree as ET
import zlib
from urllib.parse import urlsplit

import extruct
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from conftest import bearer, token_for, web_client
from helpers import csrf_for, extract, form_post
from strongroom.access.models import Application
from strongroom.access.notices import notify_applicant
from strongroom.archive import service as archive
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key
from strongroom.archive.models import Dataset
from strongroom.audit import service as audit
from strongroom.audit.service import Actor
from strongroom.catalog import entries, png, sitemaps
from strongroom.catalog import search as catalog_search
from strongroom.catalog.images import images_of
from strongroom.catalog.models import CatalogEntry
from strongroom.catalog.privacy import WITHHELD
from strongroom.db import transaction, utcnow
from strongroom.identity.models import User
from strongroom.identity.principal import SCOPES, Principal
from strongroom.jobs.models import Job
from strongroom.projects import service as projects
from strongroom.projects.models import Membership

END = dt.date.today() + dt.timedelta(days=365)


def recent_dates() -> set[str]:
    """Today, and yesterday for the first hour after midnight: a run may cross it between setup and assertion."""
    now = dt.datetime.now(dt.UTC)
    return {now.date().isoformat(), (now - dt.timedelta(hours=1)).date().isoformat()}


BASE = "http://127.0.0.1:8000"
DATA_PATHS = ("/api/", "/files/", "/ga4gh/", "/drs/", "/content", "/download", "/objects")


# -- fixtures and helpers ----------------------------------------------------------------------
def _principal(session, person) -> Principal:
    return Principal(user=session.get(User, person.user.id), via="session", mfa_at=utcnow(),
                     scopes=frozenset(SCOPES), credential_id="test")


def make_dataset(hub, person, project: str, title: str = "Chest CT", *, release: bool = True) -> str:
    """A dataset archived through the real pipeline: browser-style upload → ingest → release."""
    storage = storage_for(hub)
    with transaction(hub.sessions) as s:
        principal = _principal(s, person)
        access = projects.open_project(s, principal, project)
        f = archive.receive_small_plaintext(hub, s, principal, access, storage, path=f"{title}/slice-1.png",
                                            data=png.synthetic_ct_slice(len(title), size=48))
        file_id = f.id
    assert archive.ingest(hub, storage, file_id) == "ready"
    with transaction(hub.sessions) as s:
        principal = _principal(s, person)
        access = projects.open_project(s, principal, project)
        ds = archive.create_dataset(s, principal, access, title=title, files=[file_id])
        if release:
            archive.release_version(s, principal, ds.id, 1)
        return ds.id


def entry_body(slug: str = "chest-ct", **over) -> dict:
    body = {
        "slug": slug,
        "title": f"Chest CT cohort {slug}",
        "description": "Low-dose chest CT examinations from a screening programme, with radiologist "
                       "annotations of every lung nodule larger than 4 mm. " * 2,
        "why_apply": "One of the few screening cohorts with full nodule follow-up.",
        "data_owner": "Example University Hospital",
        "data_owner_url": "https://ror.org/000000000",
        "modalities": ["CT"],
        "organs": ["Lung"],
        "keywords": ["screening"],
        "subjects": 120, "studies": 130, "series": 260, "annotations": 410,
        "time_start": "2015-01-01", "time_end": "2019-12-31",
        "terms_text": "Use the data only for the approved study. Do not attempt re-identification.",
        "access_conditions": "Researchers at academic institutions with an ethics approval may apply.",
        "duo_codes": ["DUO:0000006", "DUO:0000021"],
        "how_to_cite": "Example University Hospital (2026). Chest CT cohort. Strongroom.",
        "doi": "10.23698/example.1",
        "contact_email": "data-access@hospital.example.net",
        "apply_mode": "hub",
    }
    body.update(over)
    return body


@pytest.fixture
def world(app, hub, people):
    """Project `lung` (PI alice, member carol) owns a released dataset; bob is in another project."""
    ensure_key(hub)
    alice, bob, carol = people("alice"), people("bob"), people("carol", email="Carol.Private@Example.org")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="alice", ethics_ref="E1",
                                end_date=END)
        projects.create_project(s, Actor.system("t"), slug="other", name="Other", pi="bob", ethics_ref="E2",
                                end_date=END)
    c = TestClient(app, base_url=BASE)
    tokens = {p.username: token_for(hub, p) for p in (alice, bob, carol)}
    c.post("/api/v1/projects/lung/members", json={"user": "carol"}, headers=bearer(tokens["alice"]))
    ds = make_dataset(hub, alice, "lung")
    return {"client": c, "tokens": tokens, "ds": ds, "alice": alice, "bob": bob, "carol": carol, "app": app}


def publish_entry(world, ds: str, slug: str, *, image: bool = True, **over) -> dict:
    c, h = world["client"], bearer(world["tokens"]["alice"])
    r = c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body(slug, **over), headers=h)
    assert r.status_code == 200, r.text
    if image:
        r = c.post(f"/api/v1/datasets/{ds}/catalog/images", params={"alt": "Axial CT slice, synthetic"},
                   content=png.synthetic_ct_slice(7, size=64), headers={**h, "Content-Type": "image/png"})
        assert r.status_code == 201, r.text
    r = c.post(f"/api/v1/datasets/{ds}/catalog/publish", headers=h)
    assert r.status_code == 200, r.text
    return r.json()


def anon(world) -> TestClient:
    return TestClient(world["app"], base_url=BASE)


def path_of(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == BASE, f"{url} is not an absolute URL on this hub"
    return parts.path + (f"?{parts.query}" if parts.query else "")


def jsonld_of(html: str, url: str) -> dict:
    data = extruct.extract(html, base_url=url, syntaxes=["json-ld"], uniform=True)["json-ld"]
    datasets = [d for d in data if d.get("@type") == "Dataset"]
    assert len(datasets) == 1, data
    return datasets[0]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def check_landing_page(client: TestClient, url: str, dataset_id: str) -> dict:
    """Everything Google Dataset Search and link previews need, read back as a crawler would."""
    r = client.get(path_of(url))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    d = jsonld_of(html, url)
    assert d["name"]
    assert 50 <= len(d["description"]) <= 5000
    ids = d["identifier"] if isinstance(d["identifier"], list) else [d["identifier"]]
    assert ids and all(ids)
    assert any(isinstance(i, dict) and i.get("value") == dataset_id for i in ids)
    assert d["license"] == url + "/terms"
    assert client.get(path_of(d["license"])).status_code == 200
    assert d["creator"]["@type"] == "Organization" and d["creator"]["name"]
    assert d["conditionsOfAccess"] and "apply" in d["conditionsOfAccess"].lower()
    assert d["isAccessibleForFree"] is False
    assert d["includedInDataCatalog"]["@type"] == "DataCatalog"
    assert d["includedInDataCatalog"]["url"] == f"{BASE}/catalog"
    assert d["variableMeasured"]
    assert d["keywords"] and d["version"] and d["url"] == url
    images = d["image"] if isinstance(d["image"], list) else [d["image"]]
    for image in images:
        got = client.get(path_of(image))
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert got.content.startswith(png.SIGNATURE)
    for dist in d.get("distribution", []):
        assert "contentUrl" not in dist
        for s in _strings(dist):
            assert not any(p in s for p in DATA_PATHS), f"data URL in distribution: {s}"
    # link previews and the canonical URL
    og = extruct.extract(html, base_url=url, syntaxes=["opengraph"], uniform=True)["opengraph"][0]
    assert og["og:title"] == d["name"] and og["og:url"] == url and og["og:description"]
    preview = client.get(path_of(og["og:image"]))
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert '<meta name="twitter:card" content="summary' in html
    assert f'<meta name="twitter:image" content="{og["og:image"]}">' in html
    assert f'<link rel="canonical" href="{url}">' in html
    assert "noindex" not in html
    return d


# -- landing page ------------------------------------------------------------------------------
def test_landing_page_jsonld_og_canonical_and_apply_button(world):
    out = publish_entry(world, world["ds"], "chest-ct")
    url = f"{BASE}/catalog/chest-ct"
    assert out["url"] == url and out["published"]
    c = anon(world)
    d = check_landing_page(c, url, world["ds"])
    assert d["identifier"][0] == "https://doi.org/10.23698/example.1"
    assert d["temporalCoverage"] == "2015-01-01/2019-12-31"
    assert d["image"] == [f"{url}/images/1.png"]
    assert d["creator"]["sameAs"] == "https://ror.org/000000000"
    html = c.get("/catalog/chest-ct").text
    # everything the landing page promises, visible to people
    for text in ("Why you should apply", "Example University Hospital", "Computed tomography (CT)", "Lung",
                 "120", "130", "260", "410", "2015-01-01", "Version", "How to cite", "data-access@hospital.example.net",
                 "Health or medical or biomedical research", "DUO:0000021", "Sample images", "10.23698/example.1"):
        assert text in html, text
    assert f'href="/apply/{world["ds"]}"' in html and ">Apply for access</a>" in html
    assert "Not for AI" not in html
    terms = c.get("/catalog/chest-ct/terms")
    assert terms.status_code == 200 and "Do not attempt re-identification." in terms.text
    assert f'<link rel="canonical" href="{url}/terms">' in terms.text


def test_external_apply_mode_links_to_the_owner_and_defaults_come_from_the_archive(world):
    publish_entry(world, world["ds"], "scapis-ct", image=False, apply_mode="external",
                  external_url="https://apply.scapis.example.org/form?ds=1", doi=None, time_start=None,
                  time_end=None)
    c = anon(world)
    url = f"{BASE}/catalog/scapis-ct"
    d = check_landing_page(c, url, world["ds"])
    assert d["identifier"][0] == url  # no DOI: the accession URL
    assert d["image"] == [f"{url}/card.png"]  # a working preview picture even without samples
    assert d["temporalCoverage"].split("/")[-1] in recent_dates()  # archive dates by default
    assert d["distribution"][0]["contentSize"].endswith("kB")  # the released version's size
    html = c.get("/catalog/scapis-ct").text
    assert 'href="https://apply.scapis.example.org/form?ds=1"' in html
    assert "/apply/" not in html


# -- publishing and rights ---------------------------------------------------------------------
def test_unpublished_entries_are_404_everywhere_public(world):
    c, h, ds = world["client"], bearer(world["tokens"]["alice"]), world["ds"]
    # without a DOI (an entry with one keeps a tombstone page: test_dois.py)
    assert c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body("hidden-ct", doi=None), headers=h).status_code == 200
    assert c.post(f"/api/v1/datasets/{ds}/catalog/images", params={"alt": "slice"}, headers={
        **h, "Content-Type": "image/png"}, content=png.synthetic_ct_slice(1, size=32)).status_code == 201
    public = anon(world)

    def hidden() -> None:
        for path in ("/catalog/hidden-ct", "/catalog/hidden-ct/terms", "/catalog/hidden-ct/images/1.png",
                     "/catalog/hidden-ct/card.png"):
            assert public.get(path).status_code == 404, path
        assert "hidden-ct" not in public.get("/catalog").text
        assert not any("hidden-ct" in text for text in sitemap_texts(public))
        assert public.get("/api/v1/catalog").json()["total"] == 0

    hidden()  # unpublished by default
    assert c.get(f"/api/v1/datasets/{ds}/catalog", headers=h).json()["published"] is False
    assert c.post(f"/api/v1/datasets/{ds}/catalog/publish", headers=h).status_code == 200
    assert public.get("/catalog/hidden-ct").status_code == 200
    assert c.post(f"/api/v1/datasets/{ds}/catalog/unpublish", headers=h).status_code == 200
    hidden()
    # the stewards can still preview it
    steward = web_client(world["app"], world["app"].state.hub, world["alice"])
    preview = steward.get(f"/datasets/{ds}/catalog/preview")
    assert preview.status_code == 200 and "not published" in preview.text and "noindex" in preview.text


def test_only_members_with_the_publish_right_can_edit_everyone_else_gets_404(world):
    c, ds = world["client"], world["ds"]
    publish_entry(world, ds, "chest-ct")
    bob = bearer(world["tokens"]["bob"])
    for method, path, kwargs in [
        ("GET", f"/api/v1/datasets/{ds}/catalog", {}),
        ("PUT", f"/api/v1/datasets/{ds}/catalog", {"json": entry_body("chest-ct", title="Hijacked")}),
        ("POST", f"/api/v1/datasets/{ds}/catalog/publish", {}),
        ("POST", f"/api/v1/datasets/{ds}/catalog/unpublish", {}),
        ("POST", f"/api/v1/datasets/{ds}/catalog/images", {"params": {"alt": "x"}, "content": png.synthetic_ct_slice(
            2, size=16), "headers": {**bob, "Content-Type": "image/png"}}),
        ("DELETE", f"/api/v1/datasets/{ds}/catalog/images/1", {}),
        ("GET", "/api/v1/datasets/SRD-DOESNOTEXIST/catalog", {}),
    ]:
        kwargs.setdefault("headers", bob)
        r = c.request(method, path, **kwargs)
        assert r.status_code == 404, (method, path, r.text)
    assert c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body("x-ct")).status_code == 401  # no token
    bob_web = web_client(world["app"], world["app"].state.hub, world["bob"])
    assert bob_web.get(f"/datasets/{ds}/catalog").status_code == 404
    assert bob_web.get(f"/datasets/{ds}/catalog/preview").status_code == 404
    assert form_post(bob_web, f"/datasets/{ds}/catalog/unpublish").status_code == 404
    assert anon(world).get("/catalog/chest-ct").status_code == 200  # still published, unchanged
    assert "Hijacked" not in anon(world).get("/catalog/chest-ct").text
    # a read-only token of a member cannot write
    ro = token_for(world["app"].state.hub, world["carol"], scopes=["data:read"])
    assert c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body("chest-ct"), headers=bearer(ro)).status_code == 403
    # carol (a researcher: read-data and write-data) may not: the public face is for the publish right, and
    # the same goes for releasing and deprecating versions
    carol = bearer(world["tokens"]["carol"])
    for method, path, kwargs in [
        ("PUT", f"/api/v1/datasets/{ds}/catalog", {"json": entry_body("chest-ct", title="Hijacked")}),
        ("POST", f"/api/v1/datasets/{ds}/catalog/unpublish", {}),
        ("POST", f"/api/v1/datasets/{ds}/versions/1/deprecate", {}),
        ("POST", f"/api/v1/datasets/{ds}/versions/2/release", {}),
    ]:
        r = c.request(method, path, headers=carol, **kwargs)
        assert r.status_code == 403 and "publish" in r.json()["detail"], (method, path, r.text)
    assert "Hijacked" not in anon(world).get("/catalog/chest-ct").text
    carol_page = web_client(world["app"], world["app"].state.hub, world["carol"]).get(f"/datasets/{ds}")
    assert carol_page.status_code == 200 and f"/datasets/{ds}/catalog" not in carol_page.text  # no editor link
    # once the PI delegates it to her, she may
    with transaction(world["app"].state.hub.sessions) as s:
        s.scalar(select(Membership).where(Membership.user_id == world["carol"].user.id)).delegated_rights = ["publish"]
    r = c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body("chest-ct", title="Chest CT, v2 text"), headers=carol)
    assert r.status_code == 200, r.text
    anonymous_editor = anon(world).get(f"/datasets/{ds}/catalog", follow_redirects=False)
    assert anonymous_editor.status_code == 303 and anonymous_editor.headers["location"].startswith("/login")


def test_steward_web_editor_saves_uploads_and_publishes(world):
    hub, ds = world["app"].state.hub, world["ds"]
    web = web_client(world["app"], hub, world["alice"])
    page = web.get(f"/datasets/{ds}/catalog")
    assert page.status_code == 200 and 'value="chest-ct"' in page.text  # slug suggested from the title
    form = {k: v for k, v in entry_body("chest-ct-web").items() if not isinstance(v, list | int) or isinstance(
        v, bool)}
    form.update({"organs": "Lung, Chest", "keywords": "screening", "subjects": "1,200", "series": "",
                 "modalities": ["CT", "PT"], "duo_codes": ["DUO:0000042", "DUO:0000015"]})
    r = form_post(web, f"/datasets/{ds}/catalog", form)
    assert r.status_code == 303, r.text
    bad = form_post(web, f"/datasets/{ds}/catalog", {**form, "description": "too short"})
    assert bad.status_code == 303  # a short description is fine while unpublished…
    r = form_post(web, f"/datasets/{ds}/catalog/publish")
    assert r.status_code == 422 and "description of 50-5000 characters" in r.text  # …but not to publish
    assert form_post(web, f"/datasets/{ds}/catalog", form).status_code == 303
    r = web.post(f"/datasets/{ds}/catalog/images", data={"alt": "Fused PET/CT slice", "csrf_token": csrf_for(web)},
                 files={"image": ("s.png", png.synthetic_ct_slice(3, size=40), "image/png")}, follow_redirects=False)
    assert r.status_code == 303, r.text
    assert form_post(web, f"/datasets/{ds}/catalog/publish").status_code == 303
    editor = web.get(f"/datasets/{ds}/catalog")
    assert "published" in editor.text and f"{BASE}/catalog/chest-ct-web" in editor.text
    with hub.sessions() as s:
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == ds))
        assert entry.subjects == 1200 and entry.series is None and entry.organs == ["Lung", "Chest"]
        assert entry.modalities == ["CT", "PT"] and entry.published
    d = check_landing_page(anon(world), f"{BASE}/catalog/chest-ct-web", ds)
    assert "Positron emission tomography" in d["measurementTechnique"]
    # an invalid form is shown again with the message and the typed values
    r = form_post(web, f"/datasets/{ds}/catalog", {**form, "contact_email": "carol.private@example.org"})
    assert r.status_code == 422 and "role address" in r.text and "Low-dose chest CT" in r.text
    with hub.sessions() as s:
        events = [e.action for e in audit.query(s, action_prefix="catalog.", limit=50)]
    for action in ("catalog.entry.created", "catalog.entry.updated", "catalog.image.added",
                   "catalog.entry.published"):
        assert action in events


@pytest.mark.parametrize(("override", "message"), [
    ({"description": "x" * 5001}, "at most 5000"),
    ({"contact_email": "CAROL.private@example.org"}, "role address"),
    ({"contact_email": "not an address"}, "contact address"),
    ({"description": "Questions? Write to carol.private@example.org. " + "x" * 60}, "person's e-mail"),
    ({"how_to_cite": "Cite Carol <Carol.Private@Example.org>"}, "person's e-mail"),
    ({"duo_codes": ["DUO:9999999"]}, "unknown DUO code"),
    ({"duo_codes": ["DUO:0000042", "DUO:0000006"]}, "one DUO permission"),
    ({"modalities": ["XRAY"]}, "unknown modality"),
    ({"apply_mode": "external", "external_url": None}, "external applications need"),
    ({"apply_mode": "external", "external_url": "javascript:alert(1)"}, "http(s) address"),
    ({"doi": "10.5072/old-test"}, "retired test prefix"),
    ({"doi": "not-a-doi"}, "a DOI looks like"),
    ({"slug": "Bad Slug!"}, "public address"),
    ({"time_start": "2020-01-01", "time_end": "2019-01-01"}, "ends before it starts"),
    ({"data_owner": "someone@hospital.example.net"}, "organisation"),
])
def test_entry_validation(world, override, message):
    body = entry_body(**{"slug": "chest-ct", **override})
    r = world["client"].put(f"/api/v1/datasets/{world['ds']}/catalog", json=body,
                            headers=bearer(world["tokens"]["alice"]))
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"], r.json()


def test_api_and_editor_report_the_same_field_errors_in_the_editors_words(world):
    """One model checks both: every broken field is named, by its label, never its internal name."""
    ds = world["ds"]
    body = entry_body(size_bytes=-1, time_start="soon", organs=["x" * 61])
    r = world["client"].put(f"/api/v1/datasets/{ds}/catalog", json=body, headers=bearer(world["tokens"]["alice"]))
    assert r.status_code == 422, r.text
    problem = r.json()
    assert {tuple(e["loc"]) for e in problem["errors"]} == {("size_bytes",), ("time_start",), ("organs",)}
    for words in ("size in bytes must be a whole number", "time span start must be a date",
                  "body parts/organs must be a plain value"):
        assert words in problem["detail"], problem
    web = web_client(world["app"], world["app"].state.hub, world["alice"])
    form = {k: v for k, v in entry_body("chest-ct-web").items() if isinstance(v, str)}
    r = form_post(web, f"/datasets/{ds}/catalog", {**form, "size_bytes": "lots", "time_start": "soon"})
    assert r.status_code == 422
    assert "size in bytes must be a whole number" in r.text and "time span start must be a date" in r.text
    assert "size_bytes" not in extract(r'class="notice error"[^>]*>(.*?)</p>', r.text)
    assert 'value="lots"' in r.text and 'value="soon"' in r.text  # shown again as typed


def test_a_draft_address_is_no_oracle_of_another_projects_plans(world, hub):
    """A slug is held from an entry's first publication on, not from its draft: another project's steward saving
    the slug of a draft they cannot see is not refused (a refusal would tell them that dataset is being prepared).
    Whoever publishes first keeps the address; the other is refused then, on the API and the form."""
    c, alice, bob = world["client"], bearer(world["tokens"]["alice"]), bearer(world["tokens"]["bob"])
    secret_plan = make_dataset(hub, world["alice"], "lung", "Rare disease cohort")
    assert c.put(f"/api/v1/datasets/{secret_plan}/catalog", json=entry_body("rare-disease-cohort"),
                 headers=alice).status_code == 200
    theirs = make_dataset(hub, world["bob"], "other", "Their cohort")
    r = c.put(f"/api/v1/datasets/{theirs}/catalog", json=entry_body("rare-disease-cohort", title="Their cohort"),
              headers=bob)
    assert r.status_code == 200, r.text  # the draft's address told bob nothing
    assert anon(world).get("/catalog/rare-disease-cohort").status_code == 404  # drafts: no public page
    assert c.post(f"/api/v1/datasets/{theirs}/catalog/publish", headers=bob).status_code == 200
    assert "Their cohort" in anon(world).get("/catalog/rare-disease-cohort").text
    # now the address is public: alice's publication is refused and her draft keeps its data
    r = c.post(f"/api/v1/datasets/{secret_plan}/catalog/publish", headers=alice)
    assert r.status_code == 409 and "is taken" in r.json()["detail"], r.text
    web = web_client(world["app"], hub, world["alice"])
    r = form_post(web, f"/datasets/{secret_plan}/catalog/publish", {})
    assert r.status_code == 409 and "is taken" in r.text
    assert c.get(f"/api/v1/datasets/{secret_plan}/catalog", headers=alice).json()["published"] is False
    assert c.put(f"/api/v1/datasets/{secret_plan}/catalog", json=entry_body("rare-disease-cohort"),
                 headers=alice).status_code == 409
    assert c.put(f"/api/v1/datasets/{secret_plan}/catalog", json=entry_body("rare-disease-cohort-2"),
                 headers=alice).status_code == 200
    assert c.post(f"/api/v1/datasets/{secret_plan}/catalog/publish", headers=alice).status_code == 200
    # a withdrawn entry keeps its address (its DOI may resolve to the tombstone there)
    assert c.post(f"/api/v1/datasets/{theirs}/catalog/unpublish", json={"reason": "moved"},
                  headers=bob).status_code == 200
    r = c.put(f"/api/v1/datasets/{secret_plan}/catalog", json=entry_body("rare-disease-cohort-2"), headers=alice)
    assert r.status_code == 200
    other = make_dataset(hub, world["alice"], "lung", "Third")
    assert c.put(f"/api/v1/datasets/{other}/catalog", json=entry_body("rare-disease-cohort"),
                 headers=alice).status_code == 409


def test_publishing_rules_slugs_and_images(world, hub):
    c, h, ds = world["client"], bearer(world["tokens"]["alice"]), world["ds"]
    # an unreleased dataset cannot be published
    draft = make_dataset(hub, world["alice"], "lung", "Draft only", release=False)
    assert c.put(f"/api/v1/datasets/{draft}/catalog", json=entry_body("draft-ct"), headers=h).status_code == 200
    r = c.post(f"/api/v1/datasets/{draft}/catalog/publish", headers=h)
    assert r.status_code == 422 and "released version" in r.json()["detail"]
    # incomplete entries cannot be published, and a published one must stay complete
    assert c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body("chest-ct", contact_email=None, duo_codes=[]),
                 headers=h).status_code == 200
    detail = c.post(f"/api/v1/datasets/{ds}/catalog/publish", headers=h).json()["detail"]
    assert "role contact address" in detail and "DUO permission" in detail
    publish_entry(world, ds, "chest-ct", image=False)
    r = c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body("chest-ct", terms_text=""), headers=h)
    assert r.status_code == 422 and "stay complete" in r.json()["detail"]
    # slugs are unique and fixed once published
    assert c.put(f"/api/v1/datasets/{draft}/catalog", json=entry_body("chest-ct"), headers=h).status_code == 409
    r = c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body("renamed-ct"), headers=h)
    assert r.status_code == 409 and "cannot change" in r.json()["detail"]
    # images: PNG only; text chunks (names, dates) are stripped before anything is served
    img = {**h, "Content-Type": "image/png"}
    assert c.post(f"/api/v1/datasets/{ds}/catalog/images", params={"alt": "x"}, headers=img,
                  content=b"GIF89a....").status_code == 422
    raw = png.synthetic_ct_slice(5, size=32)
    text = b"Comment\x00Patient: Doe^John 1970-01-01"
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    tagged = raw[:33] + chunk + raw[33:]  # after the 8-byte signature and the 25-byte IHDR chunk
    r = c.post(f"/api/v1/datasets/{ds}/catalog/images", params={"alt": "Axial slice"}, headers=img, content=tagged)
    assert r.status_code == 201, r.text
    served = anon(world).get(f"/catalog/chest-ct/images/{r.json()['position']}.png")
    assert served.status_code == 200 and b"Doe^John" not in served.content and b"tEXt" not in served.content
    broken = raw[:-5] + b"XXXXX"
    assert c.post(f"/api/v1/datasets/{ds}/catalog/images", params={"alt": "x"}, headers=img,
                  content=broken).status_code == 422
    assert c.delete(f"/api/v1/datasets/{ds}/catalog/images/1", headers=h).status_code == 204
    assert anon(world).get("/catalog/chest-ct/images/1.png").status_code == 404


# -- the AI flag -------------------------------------------------------------------------------
def test_no_methods_development_is_flagged_on_page_in_jsonld_and_as_a_facet(world, hub):
    publish_entry(world, world["ds"], "no-ai-ct", duo_codes=["DUO:0000006", "DUO:0000015"])
    other = make_dataset(hub, world["alice"], "lung", "AI friendly")
    publish_entry(world, other, "ai-ok-ct", duo_codes=["DUO:0000042"])
    c = anon(world)
    html = c.get("/catalog/no-ai-ct").text
    assert 'class="cat-flag"' in html and "Not for AI or methods development" in html
    assert "No general methods research" in html
    d = jsonld_of(html, f"{BASE}/catalog/no-ai-ct")
    assert "DUO:0000015" in d["conditionsOfAccess"] and "AI" in d["conditionsOfAccess"]
    assert "Not for AI" not in c.get("/catalog/ai-ok-ct").text
    listing = c.get("/catalog", params={"use": "no-methods"}).text
    assert "/catalog/no-ai-ct" in listing and "/catalog/ai-ok-ct" not in listing
    assert "No methods / AI development" in listing
    api = c.get("/api/v1/catalog", params={"use": "methods-allowed"}).json()
    assert [e["slug"] for e in api["entries"]] == ["ai-ok-ct"]


# -- catalogue search --------------------------------------------------------------------------
def test_catalogue_text_search_and_facets(world, hub):
    publish_entry(world, world["ds"], "lung-ct", title="Lung screening CT", organs=["Lung"])
    brain = make_dataset(hub, world["alice"], "lung", "Brain MR")
    publish_entry(world, brain, "brain-mr", title="Glioma MR", modalities=["MR"], organs=["Brain"], keywords=[],
                  why_apply="Rare paediatric cases.",
                  description="Pre-operative brain MR of glioma patients with expert tumour segmentations, "
                              "T1, T2 and FLAIR sequences.")
    breast = make_dataset(hub, world["alice"], "lung", "Mammo")
    publish_entry(world, breast, "mammo", title="Screening mammography", modalities=["MG"], organs=["Breast"],
                  keywords=["BI-RADS"],
                  apply_mode="external", external_url="https://owner.example.org/apply",
                  description="Screening mammograms with biopsy-confirmed outcomes and radiologist BI-RADS "
                              "assessments for every examination.")
    c = anon(world)

    def slugs(**params) -> list[str]:
        return [e["slug"] for e in c.get("/api/v1/catalog", params=params).json()["entries"]]

    assert sorted(slugs()) == ["brain-mr", "lung-ct", "mammo"]
    assert slugs(q="glioma") == ["brain-mr"]
    assert slugs(q="GLIOMA flair") == ["brain-mr"]  # every word, any case
    assert slugs(q="screening") == ["lung-ct", "mammo"]  # title hits first, then by title
    assert slugs(q="magnetic") == ["brain-mr"]  # modality names are searchable
    assert slugs(q="100%_") == []  # LIKE wildcards are literal
    assert sorted(slugs(modality=["CT", "MR"])) == ["brain-mr", "lung-ct"]  # OR within a facet
    assert slugs(modality="CT", organ="brain") == []  # AND across facets
    assert slugs(organ="Breast") == ["mammo"]
    assert slugs(access="external") == ["mammo"]
    facets = c.get("/api/v1/catalog", params={"modality": "MR"}).json()["facets"]
    modality = {f["value"]: (f["count"], f["selected"]) for f in facets["modality"]}
    assert modality == {"CT": (1, False), "MR": (1, True), "MG": (1, False)}  # own filter not applied
    assert {f["value"]: f["count"] for f in facets["organ"]} == {"brain": 1}
    # the HTML page: a plain GET form (works without JavaScript) with counted facet checkboxes
    r = c.get("/catalog", params={"q": "screening", "access": "hub"})
    assert r.status_code == 200
    html = r.text
    assert '<form method="get" action="/catalog"' in html
    assert 'name="access" value="hub" checked' in html
    assert "1 dataset matching “screening”" in html
    assert "/catalog/lung-ct" in html and "/catalog/mammo\"" not in html
    assert 'name="modality" value="CT"' in html and "Computed tomography (CT)" in html
    assert "noindex" in html  # filtered result pages stay out of the index; the catalogue itself is in
    assert "noindex" not in c.get("/catalog").text
    assert c.get("/catalog", params={"q": "nothing-matches-this"}).text.count("No dataset matches") == 1


def test_catalogue_pages(world, hub, monkeypatch):
    monkeypatch.setattr(catalog_search, "PAGE_SIZE", 2)
    publish_entry(world, world["ds"], "a-ct", image=False, title="A chest CT")
    for name in ("B chest CT", "C chest CT"):
        publish_entry(world, make_dataset(hub, world["alice"], "lung", name), name[0].lower() + "-ct",
                      image=False, title=name)
    c = anon(world)
    html = c.get("/catalog", params={"q": "chest"}).text
    assert "Page 1 of 2" in html and 'href="/catalog?q=chest&amp;page=2"' in html
    page2 = c.get("/catalog", params={"q": "chest", "page": 2}).text
    assert "/catalog/c-ct" in page2 and "/catalog/a-ct" not in page2


# -- sitemaps and robots -----------------------------------------------------------------------
NS = {"s": "http://www.sitemaps.org/schemas/sitemap/0.9", "i": "http://www.google.com/schemas/sitemap-image/1.1"}


def sitemap_texts(c: TestClient) -> list[str]:
    """The sitemap index and every child it lists, as a crawler reads them."""
    index = c.get("/sitemap.xml")
    assert index.status_code == 200 and index.headers["content-type"].startswith("application/xml")
    children = [e.text for e in ET.fromstring(index.content).iterfind("s:sitemap/s:loc", NS)]
    texts = [index.text]
    for child in children:
        r = c.get(path_of(child))
        assert r.status_code == 200, child
        texts.append(r.text)
    return texts


def test_sitemap_index_lists_landing_pages_and_image_sitemaps(world, hub, monkeypatch):
    c = anon(world)
    publish_entry(world, world["ds"], "first-ct")
    index = ET.fromstring(c.get("/sitemap.xml").content)
    assert index.tag == f"{{{NS['s']}}}sitemapindex"
    children = [s.findtext("s:loc", namespaces=NS) for s in index.findall("s:sitemap", NS)]
    assert children == [f"{BASE}/sitemaps/site.xml", f"{BASE}/sitemaps/catalog-1.xml",
                        f"{BASE}/sitemaps/images-1.xml"]
    assert {s.findtext("s:lastmod", namespaces=NS) for s in index.findall("s:sitemap", NS)} <= recent_dates()
    pages = ET.fromstring(c.get("/sitemaps/catalog-1.xml").content)
    [url] = pages.findall("s:url", NS)
    assert url.findtext("s:loc", namespaces=NS) == f"{BASE}/catalog/first-ct"
    assert url.findtext("s:lastmod", namespaces=NS) in recent_dates()
    images = ET.fromstring(c.get("/sitemaps/images-1.xml").content)
    [url] = images.findall("s:url", NS)
    assert url.findtext("s:loc", namespaces=NS) == f"{BASE}/catalog/first-ct"
    [pic] = url.findall("i:image/i:loc", NS)
    assert pic.text == f"{BASE}/catalog/first-ct/images/1.png"
    assert c.get(path_of(pic.text)).headers["content-type"] == "image/png"

    monkeypatch.setattr(sitemaps, "SITEMAP_MAX_URLS", 2)
    for n in range(2, 5):
        publish_entry(world, make_dataset(hub, world["alice"], "lung", f"Set {n}"), f"set-{n}-ct", image=n == 4)
    index = ET.fromstring(c.get("/sitemap.xml").content)
    children = [s.findtext("s:loc", namespaces=NS) for s in index.findall("s:sitemap", NS)]
    assert children == [f"{BASE}/sitemaps/site.xml", f"{BASE}/sitemaps/catalog-1.xml",
                        f"{BASE}/sitemaps/catalog-2.xml", f"{BASE}/sitemaps/images-1.xml"]
    seen, pictured = [], []
    for child in children:
        got = c.get(path_of(child))
        assert got.status_code == 200
        urls = ET.fromstring(got.content).findall("s:url", NS)
        assert 0 < len(urls) <= 2
        target = pictured if "/images-" in child else seen
        target += [u.findtext("s:loc", namespaces=NS) for u in urls]
    assert sorted(seen) == sorted([f"{BASE}/catalog"] + [f"{BASE}/catalog/{s}" for s in
                                                         ("first-ct", "set-2-ct", "set-3-ct", "set-4-ct")])
    assert pictured == [f"{BASE}/catalog/first-ct", f"{BASE}/catalog/set-4-ct"]
    for missing in ("catalog-3", "images-2", "images-0", "other"):
        assert c.get(f"/sitemaps/{missing}.xml").status_code == 404
    # every URL in the sitemaps is a working landing page with valid markup
    with hub.sessions() as s:
        ids = {e.slug: e.dataset_id for e in s.scalars(select(CatalogEntry))}
    for u in seen:
        if u != f"{BASE}/catalog":
            check_landing_page(c, u, ids[u.rsplit("/", 1)[1]])


def test_robots_txt_names_the_sitemap_and_keeps_private_areas_out(world):
    r = anon(world).get("/robots.txt")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert f"Sitemap: {BASE}/sitemap.xml" in lines
    for path in ("/api/", "/projects", "/account"):
        assert f"Disallow: {path}" in lines
    assert "Disallow: /" not in lines and "Disallow: /catalog" not in lines  # the catalogue stays crawlable


# -- privacy -----------------------------------------------------------------------------------
def test_no_private_email_on_any_public_page(world, hub, people):
    people("dave", email="dave.d@uni.example.edu")
    publish_entry(world, world["ds"], "chest-ct", description=(
        "Chest CT with nodule annotations. Technical questions go to helpdesk@imaging.example.net, "
        "which answers within two working days."), contact_email="data-access@hospital.example.net",
        terms_title="DUA of helpdesk@imaging.example.net")
    other = make_dataset(hub, world["alice"], "lung", "Second")
    publish_entry(world, other, "second-ct", contact_email="datasets@hospital.example.net")
    c = anon(world)
    assert "helpdesk@imaging.example.net" in c.get("/catalog/chest-ct").text  # not a person: allowed
    # later, people take those addresses as their own: the public pages must stop showing them
    with transaction(hub.sessions) as s:
        s.execute(update(User).where(User.id == world["bob"].user.id).values(email="Helpdesk@Imaging.example.net"))
        s.execute(update(User).where(User.id == world["carol"].user.id).values(
            email="datasets@hospital.example.net"))
    with hub.sessions() as s:
        emails = [e.lower() for e in s.scalars(select(User.email)) if e]
    assert len(emails) >= 4
    pages = ["/catalog", "/catalog?q=chest", "/catalog?modality=CT&organ=lung", "/robots.txt", "/sitemap.xml",
             "/sitemaps/site.xml", "/sitemaps/catalog-1.xml", "/sitemaps/images-1.xml", "/api/v1/catalog",
             "/api/v1/catalog?q=ct", "/catalog.ttl", "/catalog.jsonld", "/catalog.rdf",
             "/oai?verb=ListRecords&metadataPrefix=oai_dc", "/oai?verb=ListRecords&metadataPrefix=oai_datacite",
             "/oai?verb=ListSets"]
    for slug in ("chest-ct", "second-ct"):
        pages += [f"/catalog/{slug}", f"/catalog/{slug}/terms", f"/catalog/{slug}.ttl", f"/catalog/{slug}.jsonld",
                  *(f"/catalog/{slug}/cite.{ext}" for ext in ("bib", "ris", "csl.json", "txt", "jsonld"))]
    for path in pages:
        r = c.get(path)
        assert r.status_code == 200, path
        body = r.text.lower()
        for email in emails:
            assert email not in body, f"{email} appears on {path}"
    landing = c.get("/catalog/chest-ct").text
    assert WITHHELD in landing and "data-access@hospital.example.net" in landing  # role address stays
    second = c.get("/catalog/second-ct").text
    assert "through the application" in second  # the contact became a person's: hidden


def test_an_applicant_sees_the_public_title_never_the_archives_working_name(world, hub):
    """A dataset's own title is its project's working name ("ward 5, Dr Berg's list"); everyone outside the
    project who applies sees the catalogue's public title: on the apply page, the application, the lists
    and the e-mails. The project's members (and, once granted, the entitlement's holder) see the working name."""
    internal = "Ward 5 patients - Dr Berg list (internal)"
    with transaction(hub.sessions) as s:
        s.execute(update(Dataset).where(Dataset.id == world["ds"]).values(title=internal))
    publish_entry(world, world["ds"], "chest-ct", title="Chest CT with nodule annotations")
    bob = web_client(world["app"], hub, world["bob"])
    apply = bob.get(f"/apply/{world['ds']}")
    assert apply.status_code == 200 and "Chest CT with nodule annotations" in apply.text
    started = form_post(bob, f"/apply/{world['ds']}", {})
    assert started.status_code in (200, 303), started.text
    application_id = started.headers["location"].rsplit("/", 1)[-1] if started.status_code == 303 else None
    pages = [f"/apply/{world['ds']}", "/applications", "/access"]
    if application_id:
        pages.append(f"/applications/{application_id}")
    for path in pages:
        page = bob.get(path, follow_redirects=True)
        assert page.status_code == 200, path
        assert "Dr Berg" not in page.text, path
    assert application_id
    with transaction(hub.sessions) as s:  # what the applicant is e-mailed names the public title too
        notify_applicant(s, s.get(Application, application_id), "application_returned", comment="add the DPA")
    with hub.sessions() as s:
        [mail] = [j.payload for j in s.scalars(select(Job).where(Job.kind == "notify.email"))
                  if j.payload["template"] == "application_returned"]
    assert mail["context"]["dataset"] == "Chest CT with nodule annotations"
    carol = web_client(world["app"], hub, world["carol"])  # a member of the owning project
    assert "Dr Berg" in carol.get(f"/apply/{world['ds']}").text


def test_public_copies_expire_within_a_landing_pages_lifetime(world):
    """A withdrawal must reach shared caches and crawlers promptly (a sample image may be why the dataset was
    withdrawn): landing page, sample images and the metadata documents are cached for 30 s at most."""
    publish_entry(world, world["ds"], "chest-ct")
    c = anon(world)
    for path in ("/catalog/chest-ct", "/catalog/chest-ct/images/1.png", "/catalog/chest-ct.ttl",
                 "/catalog/chest-ct.jsonld", "/catalog.ttl"):
        r = c.get(path)
        assert r.status_code == 200, path
        directives = dict(d.strip().partition("=")[::2] for d in r.headers["cache-control"].split(","))
        assert "public" in directives and int(directives["max-age"]) <= 30, (path, r.headers["cache-control"])


# -- the demo ----------------------------------------------------------------------------------
def test_seed_demo_publishes_a_complete_entry_idempotently(app, hub):
    from strongroom.archive.models import ArchiveFile, Dataset
    from strongroom.demo import seed_demo

    ensure_key(hub)
    lines = seed_demo(hub)
    url = f"{hub.settings.base_url}/catalog/synthetic-chest-ct-demo"
    assert any(url in line for line in lines)
    assert (hub.settings.var_dir / "demo-credentials.json").exists()
    with hub.sessions() as s:
        entry = s.scalar(select(CatalogEntry))
        assert entry.published and entry.apply_mode == "hub" and "DUO:0000006" in entry.duo_codes
        assert len(images_of(s, entry)) == 3
        files = list(s.scalars(select(ArchiveFile)))
        assert len(files) == 6 and {f.state for f in files} == {"ready"}
        dataset_id = entry.dataset_id
        assert entries.latest_released(s, dataset_id).file_count == 6
    c = TestClient(app, base_url=BASE)
    d = check_landing_page(c, url, dataset_id)
    assert len(d["image"]) == 3
    html = c.get("/catalog/synthetic-chest-ct-demo").text
    assert f'href="/apply/{dataset_id}"' in html
    assert any("/catalog/synthetic-chest-ct-demo" in text for text in sitemap_texts(c))
    assert "Synthetic chest CT" in c.get("/catalog", params={"q": "synthetic"}).text
    seed_demo(hub)  # again: nothing new
    with hub.sessions() as s:
        assert len(list(s.scalars(select(ArchiveFile)))) == 6
        assert len(list(s.scalars(select(Dataset)))) == 1
        assert len(list(s.scalars(select(CatalogEntry)))) == 1


def test_landing_page_and_owner_page_say_whether_approved_users_may_download(world) -> None:
    """Issue 9, point 7: the dataset's access policy (in-platform only by default) is shown on the
    landing page, in the JSON-LD and on the data owner's page, whose form (PI only) changes it.
    Fails on the old code: nothing said which, and there was no such policy."""
    publish_entry(world, world["ds"], "policy-ct", image=False)
    anon_client, url = anon(world), f"{BASE}/catalog/policy-ct"

    def shown() -> tuple[str, str]:
        html = anon_client.get("/catalog/policy-ct").text
        use = extract(r'<p class="cat-use-kind" data-download="(\w+)">', html)
        return use, jsonld_of(html, url)["distribution"][0]["description"]

    use, described = shown()
    assert use == "no" and "platform only" in described
    html = anon_client.get("/catalog/policy-ct").text
    assert "In-platform use only" in html and "may download" not in html
    alice = web_client(world["app"], world["app"].state.hub, world["alice"])
    owner_page = alice.get(f"/datasets/{world['ds']}/access")
    assert owner_page.status_code == 200 and "In-platform use only" in owner_page.text
    # a member of the project who is not its PI, and an outsider, cannot change it
    for who in ("carol", "bob"):
        other = web_client(world["app"], world["app"].state.hub, world[who])
        r = form_post(other, f"/datasets/{world['ds']}/access/download", {"allowed": "yes"})
        assert r.status_code == 404, who
    assert shown()[0] == "no"
    r = form_post(alice, f"/datasets/{world['ds']}/access/download", {"allowed": "yes"})
    assert r.status_code == 303
    use, described = shown()
    assert use == "yes" and "may download" in described
    assert "Approved users may download" in alice.get(f"/datasets/{world['ds']}/access").text
