"""DOIs at DataCite: the DataCite 4.6 metadata (validated against the official XSD and the JSON schema),
the REST client against a local DataCite server (over real HTTP) and against recorded DataCite answers,
and the hub's lifecycle end to end through its API and pages: publish → concept + version DOIs findable,
version 2 → its DOI and updated relations, withdraw → hidden DOIs and a 410 tombstone page; outages
resume; without DataCite configured nothing is minted and the steward's page says so."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from lxml import etree
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from helpers import csrf_for
from strongroom.app import create_app
from strongroom.archive import service as archive
from strongroom.archive.backend import storage_for
from strongroom.audit.service import Actor
from strongroom.catalog import dois, png
from strongroom.catalog.datacite import Creator, DoiFacts, Related, datacite_attributes, datacite_xml, orcid_ok
from strongroom.catalog.datacite_client import DataCiteClient, DataCiteError, DoiTaken
from strongroom.catalog.models import CatalogEntry, Doi
from strongroom.config import DoiSettings
from strongroom.db import transaction
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from support.datacite_server import FakeDataCite, recorded_app
from support.live import free_port, serving
from test_catalog import BASE, _principal, entry_body, jsonld_of, make_dataset

SUPPORT = Path(__file__).parent / "support" / "datacite"
XSD = etree.XMLSchema(etree.parse(str(SUPPORT / "kernel-4.6" / "metadata.xsd")))
JSON_SCHEMA = jsonschema_rs.validator_for(json.loads((SUPPORT / "json" / "datacite-v4.5.json").read_text()))
END = dt.date.today() + dt.timedelta(days=365)
PREFIX = "10.80000"


def assert_valid(attrs: dict, xml: bytes) -> None:
    errors = [e.message for e in JSON_SCHEMA.iter_errors(attrs)]
    assert not errors, errors
    doc = etree.fromstring(xml)
    assert XSD.validate(doc), XSD.error_log


@pytest.fixture
def datacite():
    fake = FakeDataCite(prefixes=(PREFIX,))
    with serving(fake.app(), free_port()) as url:
        fake.url = url  # type: ignore[attr-defined]
        yield fake


def configured(datacite) -> DoiSettings:
    return DoiSettings(endpoint=datacite.url, repository_id=datacite.repository_id, password=datacite.password,
                       prefix=PREFIX)


@pytest.fixture
def settings(settings, datacite):
    """This hub has a DataCite repository: the local server."""
    return settings.model_copy(update={"doi": configured(datacite)})


def run_jobs(hub) -> None:
    Runner(hub, lease_seconds=10, name="test").run_until_idle()


@pytest.fixture
def world(app, hub, people):
    from strongroom.archive.keys import ensure_key

    ensure_key(hub)
    alice = people("alice")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="alice", ethics_ref="E1",
                                end_date=END)
    client = TestClient(app, base_url=BASE)
    ds = make_dataset(hub, alice, "lung")
    return {"client": client, "h": bearer(token_for(hub, alice)), "ds": ds, "alice": alice, "hub": hub, "app": app}


def creators() -> list[dict]:
    return [{"family_name": "Carberry", "given_name": "Josiah", "orcid": "https://orcid.org/0000-0002-1825-0097",
             "affiliation": "Brown University", "ror": "https://ror.org/05gq02987"},
            {"kind": "organisation", "name": "Lung Screening Consortium"}]


def publish(world, slug: str = "chest-ct", **over) -> dict:
    c, h, ds = world["client"], world["h"], world["ds"]
    body = entry_body(slug, **{"doi": None, "creators": creators(), "publications": ["10.1000/xyz123"], **over})
    r = c.put(f"/api/v1/datasets/{ds}/catalog", json=body, headers=h)
    assert r.status_code == 200, r.text
    r = c.post(f"/api/v1/datasets/{ds}/catalog/publish", headers=h)
    assert r.status_code == 200, r.text
    return r.json()


def release_version_2(world) -> None:
    hub, alice, ds = world["hub"], world["alice"], world["ds"]
    storage = storage_for(hub)
    with transaction(hub.sessions) as s:
        principal = _principal(s, alice)
        access = projects.open_project(s, principal, world.get("project", "lung"))
        f = archive.receive_small_plaintext(hub, s, principal, access, storage, path="Chest CT/case-2.dcm",
                                            data=png.synthetic_ct_slice(99, size=48))
        file_id = f.id
    assert archive.ingest(hub, storage, file_id) == "ready"
    with transaction(hub.sessions) as s:
        principal = _principal(s, alice)
        archive.edit_draft(s, principal, ds, add=[file_id], remove=[])
        archive.release_version(s, principal, ds, 2)


def name(ds: str, version: int | None = None) -> str:
    return dois.doi_name(PREFIX, ds, version)


def related(record: dict) -> set[tuple[str, str]]:
    return {(r["relationType"], r["relatedIdentifier"]) for r in record.get("relatedIdentifiers", [])}


# -- the metadata -------------------------------------------------------------------------------
def full_facts() -> DoiFacts:
    return DoiFacts(
        doi="10.80000/srd-full.v2", url="https://hub.example.org/catalog/full?version=2", title="Every field",
        description="A dataset with every field the hub can say something about. " * 3,
        publisher="Example University Hospital", publication_year=2026, accession="SRD-FULL",
        hosting_institution="Strongroom", publisher_ror="03yrm5c26",
        creators=[Creator("Carberry, Josiah", given_name="Josiah", family_name="Carberry", orcid="0000-0002-1825-0097",
                          affiliation="Brown University", ror="05gq02987"),
                  Creator("Lung Screening Consortium", "organisation", affiliation="Example University Hospital",
                          ror="03yrm5c26")],
        version=2, modalities=["CT", "MR", "PT", "CR", "DX", "MG", "US", "SM", "SEG", "OT"],
        organs=["Lung", "chest", "Brain", "left ventricle"], keywords=["screening", "nodules"],
        duo_codes=["DUO:0000006", "DUO:0000015", "DUO:0000021"], terms_url="https://hub.example.org/catalog/full/terms",
        access_conditions="Academic researchers with ethics approval.", size_bytes=12_300_000_000_000, file_count=32081,
        subjects=1200, studies=1300, series=32081, instances=4_100_000, annotations=39093,
        formats=["application/dicom", "image/png"], issued=dt.date(2026, 1, 2), updated=dt.date(2026, 3, 4),
        collected=(dt.date(2015, 1, 1), dt.date(2019, 12, 31)), withdrawn=dt.date(2026, 5, 6),
        withdrawn_reason="A participant withdrew consent.",
        related=[Related("10.80000/srd-full", "IsVersionOf"), Related("10.80000/srd-full.v1", "IsNewVersionOf"),
                 Related("10.80000/srd-full.v3", "IsPreviousVersionOf"),
                 Related("10.1000/xyz123", "IsSupplementTo", resource_type="JournalArticle")])


def test_a_record_with_every_field_is_valid_datacite_46():
    facts = full_facts()
    attrs, xml = datacite_attributes(facts), datacite_xml(facts)
    assert_valid(attrs, xml)
    assert attrs["types"]["resourceTypeGeneral"] == "Dataset" and attrs["version"] == "2"
    person = attrs["creators"][0]
    assert person["nameIdentifiers"][0] == {"nameIdentifier": "https://orcid.org/0000-0002-1825-0097",
                                            "nameIdentifierScheme": "ORCID", "schemeUri": "https://orcid.org"}
    assert person["affiliation"][0]["affiliationIdentifier"] == "https://ror.org/05gq02987"
    assert attrs["publisher"]["publisherIdentifier"] == "https://ror.org/03yrm5c26"
    schemes = {(s.get("subjectScheme"), s.get("classificationCode")) for s in attrs["subjects"]}
    assert {("MeSH", "D014057"), ("SNOMED CT", "39607008"), ("SNOMED CT", "51185008"),
            ("DICOM Modality (0008,0060)", "CT")} <= schemes
    assert {"subject": "left ventricle"} in attrs["subjects"]  # no code known: a plain keyword
    duo = [r for r in attrs["rightsList"] if r.get("rightsIdentifierScheme") == "DUO"]
    assert [r["rightsIdentifier"] for r in duo] == ["DUO:0000006", "DUO:0000015", "DUO:0000021"]
    assert any(r.get("rightsUri") == "https://hub.example.org/catalog/full/terms" for r in attrs["rightsList"])
    # 32,081 series: rounded to 5, as every public count of people's imaging
    assert "12.3 TB (12300000000000 bytes)" in attrs["sizes"] and "32,080 series" in attrs["sizes"]
    assert {"date": "2026-05-06", "dateType": "Withdrawn", "dateInformation": "A participant withdrew consent."} \
        in attrs["dates"]
    assert {"date": "2015-01-01/2019-12-31", "dateType": "Collected"} in attrs["dates"]
    # the XML says the same things
    ns = {"d": "http://datacite.org/schema/kernel-4"}
    doc = etree.fromstring(xml)
    assert doc.findtext("d:identifier", namespaces=ns) == "10.80000/srd-full.v2"
    assert {(e.get("relationType"), e.text) for e in doc.iterfind(".//d:relatedIdentifier", ns)} == related(attrs)
    assert len(doc.findall(".//d:subject", ns)) == len(attrs["subjects"])


def test_the_validators_catch_a_broken_record():
    attrs = datacite_attributes(full_facts())
    broken = {**attrs, "types": {"resourceTypeGeneral": "Spreadsheet"}}
    assert list(JSON_SCHEMA.iter_errors(broken))
    xml = datacite_xml(full_facts()).replace(b'resourceTypeGeneral="Dataset"', b'resourceTypeGeneral="Spreadsheet"')
    assert not XSD.validate(etree.fromstring(xml))


def test_orcid_check_digit():
    assert orcid_ok("0000-0002-1825-0097") and orcid_ok("0000-0001-5109-3700") and orcid_ok("0000-0002-1694-233X")
    assert not orcid_ok("0000-0002-1825-0098") and not orcid_ok("0000-0002-1825-009")


def test_the_seeded_demo_entry_makes_valid_records(app, hub, datacite):
    from strongroom.demo import seed_demo

    seed_demo(hub)
    run_jobs(hub)  # the demo entry is published: its DOIs are minted too
    with transaction(hub.sessions) as s:
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.slug == "synthetic-chest-ct-demo"))
        rows = dois.dois_of(s, entry.dataset_id)
        assert [r.state for r in rows] == ["findable", "findable"]
        for row in rows:
            facts = dois.facts(s, hub.settings, entry, row, rows)
            assert_valid(datacite_attributes(facts), datacite_xml(facts))
    assert datacite.dois[rows[0].doi]["state"] == "findable"


# -- the client ---------------------------------------------------------------------------------
def minimal(doi: str) -> dict:
    return datacite_attributes(DoiFacts(doi=doi, url="https://hub.example.org/catalog/x", title="X",
                                        description="", publisher="Example", publication_year=2026,
                                        accession="SRD-X", hosting_institution="Strongroom"))


def test_client_walks_the_documented_states_and_errors(datacite):
    doi = f"{PREFIX}/srd-client"
    with DataCiteClient(datacite.url, datacite.repository_id, datacite.password) as client:
        assert client.get(doi) is None
        draft = client.create(doi, {"url": "https://hub.example.org/x"})
        assert draft.state == "draft" and draft.doi == doi
        with pytest.raises(DoiTaken):
            client.create(doi, {})
        with pytest.raises(DataCiteError, match="rejected the metadata.*creators"):
            client.publish(doi)  # a draft without metadata cannot be published
        assert client.update(doi, minimal(doi)).state == "draft"
        assert client.register(doi).state == "registered"
        assert client.publish(doi).state == "findable"
        with pytest.raises(DataCiteError, match="only drafts can be deleted"):
            client.delete_draft(doi)
        assert client.hide(doi).state == "registered"
        assert client.get(doi).state == "registered"
        other = f"{PREFIX}/srd-draft"
        client.create(other, {})
        client.delete_draft(other)
        assert client.get(other) is None
        with pytest.raises(DataCiteError, match="prefix"):
            client.create("10.99999/not-ours", {})
    with DataCiteClient(datacite.url, datacite.repository_id, "wrong") as client, \
            pytest.raises(DataCiteError, match="credentials.*Bad credentials"):
        client.create(f"{PREFIX}/srd-nope", {})
    with DataCiteClient(f"http://127.0.0.1:{free_port()}", "a", "b", timeout=2) as client, \
            pytest.raises(DataCiteError, match="cannot be reached") as unreachable:
        client.get(doi)
    assert unreachable.value.retry


def test_client_reads_recorded_datacite_answers():
    def recorded(name: str) -> dict:
        return json.loads((SUPPORT / "recorded" / name).read_text())

    doi = "10.82433/9184-dy35"
    answers = {
        ("POST", "/dois"): (201, recorded("create-draft-201.json")),
        ("GET", f"/dois/{doi}"): (200, recorded("get-findable-200.json")),
        ("PUT", f"/dois/{doi}"): (422, recorded("error-422-xml.json")),
        ("GET", "/dois/10.82433/unknown"): (404, recorded("error-404.json")),
        ("POST", "/dois/taken"): (422, recorded("error-422-taken.json")),
        ("DELETE", f"/dois/{doi}"): (401, recorded("error-401.json")),
        ("PUT", "/dois/10.82433/forbidden"): (403, recorded("error-403.json")),
        ("GET", "/dois/10.82433/down"): (500, recorded("error-500.json")),
    }
    with serving(recorded_app(answers), free_port()) as url, DataCiteClient(url, "DATACITE.DATACITE", "pw") as client:
        draft = client.create(doi, {})
        assert (draft.doi, draft.state, draft.url) == (doi, "draft", None)
        found = client.get(doi)
        assert found is not None and found.state == "findable"
        assert found.attributes["publisher"]["name"] == "National Gallery"
        assert found.attributes["types"]["resourceTypeGeneral"] == "Dataset"
        with pytest.raises(DataCiteError, match="Missing child element") as bad:
            client.publish(doi)
        assert bad.value.status == 422 and not bad.value.retry
        assert client.get("10.82433/unknown") is None
        with pytest.raises(DataCiteError, match="Bad credentials"):
            client.delete_draft(doi)
        with pytest.raises(DataCiteError, match="not authorized"):
            client.update("10.82433/forbidden", {})
        with pytest.raises(DataCiteError, match="unavailable") as down:
            client.get("10.82433/down")
        assert down.value.retry
    taken = _taken_error(recorded("error-422-taken.json"))
    assert isinstance(taken, DoiTaken)


def _taken_error(body: dict) -> DataCiteError:
    import httpx

    from strongroom.catalog.datacite_client import _error

    return _error(httpx.Response(422, json=body), "10.82433/9184-dy35")


# -- the lifecycle in the hub --------------------------------------------------------------------
def test_publish_mints_concept_and_version_dois_and_the_landing_page_shows_them(world, datacite):
    c, ds = world["client"], world["ds"]
    out = publish(world)
    assert [d["state"] for d in out["dois"]] == []  # the job has not run yet: nothing claimed
    public = TestClient(world["app"], base_url=BASE)
    assert "doi.org" not in public.get("/catalog/chest-ct").text  # no DOI before DataCite has it
    run_jobs(world["hub"])
    concept, v1 = name(ds), name(ds, 1)
    assert {d: r["state"] for d, r in datacite.dois.items()} == {concept: "findable", v1: "findable"}
    # draft → registered → findable, with the metadata in the very first call
    assert [e for m, p, e in datacite.calls if p.endswith(concept) or m == "POST"][:3] == [None, "register", "publish"]
    record = datacite.dois[concept]
    assert record["url"] == f"{BASE}/catalog/chest-ct"
    assert related(record) == {("HasVersion", v1), ("IsSupplementTo", "10.1000/xyz123")}
    assert related(datacite.dois[v1]) == {("IsVersionOf", concept), ("IsSupplementTo", "10.1000/xyz123")}
    assert record["creators"][0]["nameIdentifiers"][0]["nameIdentifier"] == "https://orcid.org/0000-0002-1825-0097"
    assert_valid({k: v for k, v in record.items() if k not in ("prefix", "suffix", "state", "created", "updated",
                                                                "registered", "published")},
                 datacite_xml_of(world, concept))
    page = public.get("/catalog/chest-ct")
    assert f'href="https://doi.org/{concept}"' in page.text and f"https://doi.org/{v1}" in page.text
    jsonld = jsonld_of(page.text, f"{BASE}/catalog/chest-ct")
    assert jsonld["sameAs"] == f"https://doi.org/{concept}"
    assert jsonld["creator"][0]["@id"] == "https://orcid.org/0000-0002-1825-0097"
    assert jsonld["creator"][0]["affiliation"]["sameAs"] == "https://ror.org/05gq02987"
    assert jsonld["creator"][1] == {"@type": "Organization", "name": "Lung Screening Consortium"}
    entry = c.get(f"/api/v1/datasets/{ds}/catalog", headers=world["h"]).json()
    assert entry["effective_doi"] == concept
    assert [(d["version"], d["state"]) for d in entry["dois"]] == [(None, "findable"), (1, "findable")]
    with transaction(world["hub"].sessions) as s:
        assert dois.effective_doi(s, ds, 1) == v1 and dois.effective_doi(s, ds, 7) is None
    # the record other code serves (content negotiation, oai_datacite) is the one DataCite has
    with transaction(world["hub"].sessions) as s:
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == ds))
        served = dois.record_facts(s, world["hub"].settings, entry)
        assert served is not None and datacite_attributes(served)["relatedIdentifiers"] == record["relatedIdentifiers"]
        assert dois.record_facts(s, world["hub"].settings, entry, 1).doi == v1
        assert dois.record_facts(s, world["hub"].settings, entry, 2) is None
    # a second run sends nothing: everything is where it should be
    calls = len(datacite.calls)
    with transaction(world["hub"].sessions) as s:
        dois.schedule(s, ds)
    run_jobs(world["hub"])
    assert len(datacite.calls) == calls


def datacite_xml_of(world, doi: str) -> bytes:
    with transaction(world["hub"].sessions) as s:
        row = s.get(Doi, doi)
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == row.dataset_id))
        return datacite_xml(dois.facts(s, world["hub"].settings, entry, row, dois.dois_of(s, row.dataset_id)))


def test_version_2_gets_its_doi_and_the_relations_follow(world, datacite):
    ds = world["ds"]
    publish(world)
    run_jobs(world["hub"])
    release_version_2(world)
    run_jobs(world["hub"])
    concept, v1, v2 = name(ds), name(ds, 1), name(ds, 2)
    assert datacite.dois[v2]["state"] == "findable" and datacite.dois[v2]["version"] == "2"
    assert {("HasVersion", v1), ("HasVersion", v2)} <= related(datacite.dois[concept])
    assert ("IsPreviousVersionOf", v2) in related(datacite.dois[v1])
    assert {("IsVersionOf", concept), ("IsNewVersionOf", v1)} <= related(datacite.dois[v2])
    assert "application/dicom" in datacite.dois[v2]["formats"]  # the .dcm file of version 2
    page = TestClient(world["app"], base_url=BASE).get("/catalog/chest-ct")
    assert f"Version 2: <a href=\"https://doi.org/{v2}\"" in page.text
    old = TestClient(world["app"], base_url=BASE).get("/catalog/chest-ct?version=1")  # where v1's DOI resolves
    assert old.status_code == 200 and "You followed the DOI of version 1" in old.text and v1 in old.text


def test_withdrawing_hides_the_dois_and_leaves_a_tombstone(world, datacite):
    c, h, ds = world["client"], world["h"], world["ds"]
    publish(world)
    run_jobs(world["hub"])
    r = c.post(f"/api/v1/datasets/{ds}/catalog/unpublish", json={"reason": "A participant withdrew consent."},
               headers=h)
    assert r.status_code == 200 and r.json()["withdrawn_reason"] == "A participant withdrew consent."
    run_jobs(world["hub"])
    concept = name(ds)
    assert {r["state"] for r in datacite.dois.values()} == {"registered"}  # hidden, still resolving
    assert any(d["dateType"] == "Withdrawn" for d in datacite.dois[concept]["dates"])
    assert datacite.dois[concept]["url"] == f"{BASE}/catalog/chest-ct"  # the DOI still leads to the tombstone
    public = TestClient(world["app"], base_url=BASE)
    page = public.get("/catalog/chest-ct")
    assert page.status_code == 410
    assert "withdrawn" in page.text and "A participant withdrew consent." in page.text
    assert f"https://doi.org/{concept}" in page.text and "Chest CT cohort" in page.text
    withdrawn = next(d["date"] for d in datacite.dois[concept]["dates"] if d["dateType"] == "Withdrawn")
    assert withdrawn[:10] in page.text and 'content="noindex"' in page.text  # the day it was withdrawn
    assert public.get("/catalog/chest-ct/terms").status_code == 404
    assert "chest-ct" not in public.get("/sitemap.xml").text
    # published again: findable again
    assert c.post(f"/api/v1/datasets/{ds}/catalog/publish", headers=h).status_code == 200
    run_jobs(world["hub"])
    assert {r["state"] for r in datacite.dois.values()} == {"findable"}
    assert public.get("/catalog/chest-ct").status_code == 200


def test_withdrawing_from_the_steward_page_says_so(world, datacite):
    publish(world)
    run_jobs(world["hub"])
    steward = web_client(world["app"], world["hub"], world["alice"])
    page = steward.get(f"/datasets/{world['ds']}/catalog")
    assert "findable" in page.text and name(world["ds"]) in page.text
    r = steward.post(f"/datasets/{world['ds']}/catalog/unpublish", data={
        "csrf_token": csrf_for(steward), "reason": "Superseded by a corrected dataset."}, follow_redirects=True)
    assert r.status_code == 200 and "tombstone" in r.text


def test_an_outage_is_retried_and_a_half_done_run_resumes(world, datacite):
    ds, hub = world["ds"], world["hub"]
    publish(world)
    datacite.fail_next = [503]
    with pytest.raises(RuntimeError, match="unavailable"):
        dois.sync(hub, ds)
    with transaction(hub.sessions) as s:
        rows = dois.dois_of(s, ds)
        assert rows[0].state == "new" and "unavailable" in rows[0].last_error and rows[0].attempts == 1
        assert dois.unsettled(s) == [ds]
    # a run that died after DataCite created the DOI, before the hub recorded it
    with DataCiteClient(datacite.url, datacite.repository_id, datacite.password) as client:
        client.create(name(ds), {})
    assert dois.sync(hub, ds)["dois"] == {name(ds): "findable", name(ds, 1): "findable"}
    with transaction(hub.sessions) as s:
        assert [(r.state, r.last_error) for r in dois.dois_of(s, ds)] == [("findable", None)] * 2
        assert dois.unsettled(s) == []


def test_metadata_edits_reach_datacite(world, datacite):
    c, h, ds = world["client"], world["h"], world["ds"]
    publish(world)
    run_jobs(world["hub"])
    body = entry_body("chest-ct", doi=None, creators=creators(), title="Chest CT cohort, revised")
    assert c.put(f"/api/v1/datasets/{ds}/catalog", json=body, headers=h).status_code == 200
    run_jobs(world["hub"])
    assert datacite.dois[name(ds)]["titles"] == [{"title": "Chest CT cohort, revised"}]
    assert datacite.dois[name(ds)]["state"] == "findable"


def test_an_external_doi_is_kept_and_nothing_is_minted(world, datacite):
    c, h, ds = world["client"], world["h"], world["ds"]
    publish(world, doi="10.23698/example.1")
    run_jobs(world["hub"])
    assert datacite.dois == {}
    assert c.get(f"/api/v1/datasets/{ds}/catalog", headers=h).json()["effective_doi"] == "10.23698/example.1"
    with transaction(world["hub"].sessions) as s:
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == ds))
        own = dois.record_facts(s, world["hub"].settings, entry)
        assert own is not None and own.doi == "10.23698/example.1" and own.related[0].relation == "IsSupplementTo"
        assert_valid(datacite_attributes(own), datacite_xml(own))
    assert "https://doi.org/10.23698/example.1" in TestClient(world["app"], base_url=BASE).get("/catalog/chest-ct").text
    c.post(f"/api/v1/datasets/{ds}/catalog/unpublish", headers=h)
    assert TestClient(world["app"], base_url=BASE).get("/catalog/chest-ct").status_code == 410


def test_creators_are_validated_and_edited_on_the_page(world, datacite):
    c, h, ds = world["client"], world["h"], world["ds"]
    bad = entry_body("chest-ct", creators=[{"family_name": "Carberry", "orcid": "0000-0002-1825-0098"}])
    r = c.put(f"/api/v1/datasets/{ds}/catalog", json=bad, headers=h)
    assert r.status_code == 422 and "not an ORCID iD" in r.json()["detail"]
    r = c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body("chest-ct", creators=[{"ror": "nope", "name": "X"}]),
              headers=h)
    assert r.status_code == 422 and "not a ROR id" in r.json()["detail"]
    r = c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body("chest-ct", creators=[{"orcid": None}]), headers=h)
    assert r.status_code == 422 and "needs a name" in r.json()["detail"]
    steward = web_client(world["app"], world["hub"], world["alice"])
    form = {**{k: v for k, v in entry_body("chest-ct", doi=None).items() if not isinstance(v, list)},
            "modalities": ["CT"], "duo_codes": ["DUO:0000006"], "csrf_token": csrf_for(steward),
            "creator_kind": ["person", "organisation", "person"], "creator_family": ["Carberry", "Lung Consortium", ""],
            "creator_given": ["Josiah", "", ""], "creator_orcid": ["0000-0002-1825-0097", "", ""],
            "creator_affiliation": ["Brown University", "", ""], "creator_ror": ["https://ror.org/05gq02987", "", ""],
            "publications": "https://doi.org/10.1000/xyz123"}
    r = steward.post(f"/datasets/{ds}/catalog", data=form, follow_redirects=True)
    assert r.status_code == 200 and "Saved." in r.text, r.text[-2000:]
    saved = c.get(f"/api/v1/datasets/{ds}/catalog", headers=h).json()
    assert saved["creators"] == [
        {"name": "Carberry, Josiah", "kind": "person", "given_name": "Josiah", "family_name": "Carberry",
         "orcid": "0000-0002-1825-0097", "affiliation": "Brown University", "ror": "05gq02987"},
        {"name": "Lung Consortium", "kind": "organisation", "given_name": None, "family_name": None, "orcid": None,
         "affiliation": None, "ror": None}]
    assert saved["publications"] == ["10.1000/xyz123"]
    assert 'value="0000-0002-1825-0097"' in steward.get(f"/datasets/{ds}/catalog").text


def test_without_datacite_nothing_is_minted_and_the_page_says_so(world, settings, datacite):
    plain = create_app(settings.model_copy(update={"doi": DoiSettings()}), run_jobs=False)  # same database
    hub = plain.state.hub
    w = {**world, "client": TestClient(plain, base_url=BASE), "hub": hub, "app": plain}
    publish(w)
    run_jobs(hub)
    assert datacite.calls == []
    with transaction(hub.sessions) as s:
        assert s.scalars(select(Doi)).all() == []
    page = w["client"].get("/catalog/chest-ct")
    assert page.status_code == 200 and "doi.org" not in page.text
    steward = web_client(plain, hub, world["alice"])
    assert "DataCite is not configured" in steward.get(f"/datasets/{world['ds']}/catalog").text
    entry = w["client"].get(f"/api/v1/datasets/{world['ds']}/catalog", headers=world["h"]).json()
    assert entry["effective_doi"] is None


def test_the_minted_record_is_served_by_negotiation_download_and_oai_datacite(world, datacite):
    """What DataCite holds is what the hub serves: the landing URL's DataCite JSON/XML (content
    negotiation and download) and OAI-PMH ``oai_datacite`` carry the same 4.6 record, valid against the
    official XSD; before a DOI exists, none of them is offered (nothing is made up)."""
    ds = world["ds"]
    public = TestClient(world["app"], base_url=BASE)
    publish(world)
    xml_type, json_type = "application/vnd.datacite.datacite+xml", "application/vnd.datacite.datacite+json"
    assert public.get("/catalog/chest-ct", headers={"Accept": json_type}).status_code == 406  # no DOI yet
    assert public.get("/catalog/chest-ct/cite.datacite.xml").status_code == 404
    assert "cite.datacite" not in public.get("/catalog/chest-ct").text
    oai_url = "/oai?verb=ListRecords&metadataPrefix=oai_datacite"
    assert b"noRecordsMatch" in public.get(oai_url).content
    run_jobs(world["hub"])
    v1 = name(ds, 1)  # the landing page shows version 1, so it cites version 1's own DOI
    held = {k: v for k, v in datacite.dois[v1].items() if k not in (
        "prefix", "suffix", "state", "created", "updated", "registered", "published")}
    as_json = public.get("/catalog/chest-ct", headers={"Accept": json_type})
    assert as_json.status_code == 200 and as_json.headers["vary"] == "Accept"
    assert as_json.json() == held
    as_xml = public.get("/catalog/chest-ct/cite.datacite.xml")
    assert as_xml.status_code == 200 and as_xml.headers["content-type"].startswith(xml_type)
    assert_valid(held, as_xml.content)
    assert 'href="/catalog/chest-ct/cite.datacite.xml"' in public.get("/catalog/chest-ct").text
    # OAI-PMH: the concept's record, inside the oai_datacite wrapper
    root = etree.fromstring(public.get(oai_url).content)
    (resource,) = root.iterfind(".//{http://datacite.org/schema/kernel-4}resource")
    XSD.assertValid(etree.ElementTree(resource))
    assert resource.findtext("{http://datacite.org/schema/kernel-4}identifier").lower() == name(ds)
    # DCAT-AP is negotiated on the landing URL too: 303 to the document
    turtle = public.get("/catalog/chest-ct", headers={"Accept": "text/turtle"}, follow_redirects=False)
    assert turtle.status_code == 303 and turtle.headers["location"] == "/catalog/chest-ct.ttl"
