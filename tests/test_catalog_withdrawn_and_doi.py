"""A withdrawn entry's public side shows only what was public when it was withdrawn, and no stored value can break
the landing page's HTTP headers.

1. Its stewards may edit a withdrawn entry again as a draft (to publish it anew later). The tombstone page (every
   content negotiation variant), the OAI-PMH deleted record's datestamp (GetRecord, ListIdentifiers, ListRecords,
   selective harvesting) and the hidden DOIs' DataCite records keep the texts and date of the withdrawal.
2. A steward's DOI is a DOI (printable ASCII without <>"{}|\\^` or spaces), and every ``Link`` header target is
   percent-encoded, so a row stored before the rule neither adds links nor makes the landing page a 500.
"""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from lxml import etree
from sqlalchemy import select, update

import test_dois as td
from conftest import bearer
from strongroom.catalog import models as catalog_models
from strongroom.catalog import oai, signposting
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction
from test_catalog import BASE, entry_body, world  # noqa: F401  (the fixture)
from test_dois import datacite  # noqa: F401  (the fixture: a local DataCite server)

PUBLISHED_TITLE = "Chest CT cohort chest-ct"  # entry_body's title for the slug chest-ct
DRAFT = {"title": "DRAFT Glioma re-analysis for the Karolinska cohort (unpublished)",
         "how_to_cite": "DRAFT citation: not yet approved by the ethics board",
         "data_owner": "DRAFT Owner Institute", "doi": "10.99999/draft.doi"}
NS = {"o": oai.OAI_NS}
WITHDRAWN_AT = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)


def _h(world) -> dict[str, str]:  # noqa: F811
    return bearer(world["tokens"]["alice"])


def _publish_then_withdraw(world, **over) -> None:  # noqa: F811
    c, ds = world["client"], world["ds"]
    assert c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body(**over), headers=_h(world)).status_code == 200
    assert c.post(f"/api/v1/datasets/{ds}/catalog/publish", headers=_h(world)).status_code == 200
    r = c.post(f"/api/v1/datasets/{ds}/catalog/unpublish", json={"reason": "consent withdrawn"}, headers=_h(world))
    assert r.status_code == 200, r.text


def _edit_draft(world, **over) -> None:  # noqa: F811
    r = world["client"].put(f"/api/v1/datasets/{world['ds']}/catalog", json=entry_body(**{**DRAFT, **over}),
                            headers=_h(world))
    assert r.status_code == 200 and r.json()["published"] is False, r.text


def _withdrawn_earlier(hub, ds: str) -> None:
    """As if the withdrawal had been some days ago (the draft edit that follows is dated now)."""
    with transaction(hub.sessions) as s:
        s.execute(update(CatalogEntry).where(CatalogEntry.dataset_id == ds)
                  .values(withdrawn_at=WITHDRAWN_AT, updated_at=WITHDRAWN_AT))


def _no_draft(text: str) -> None:
    for value in DRAFT.values():
        assert value not in text


# -- 1. the tombstone ------------------------------------------------------------------------------
def test_the_tombstone_shows_what_was_withdrawn_never_the_later_draft(world):  # noqa: F811
    _publish_then_withdraw(world)
    _edit_draft(world)
    anon = TestClient(world["app"], base_url=BASE)
    page = anon.get("/catalog/chest-ct")
    assert page.status_code == 410
    assert PUBLISHED_TITLE in page.text and "Example University Hospital" in page.text
    assert "Example University Hospital (2026). Chest CT cohort. Strongroom." in page.text  # how to cite
    assert "https://doi.org/10.23698/example.1" in page.text and "consent withdrawn" in page.text
    _no_draft(page.text)
    # every variant the landing address negotiates answers the same tombstone; no signposts, no draft in a header
    for accept in ("application/ld+json", "application/x-bibtex", "application/x-research-info-systems",
                   "application/vnd.citationstyles.csl+json", "text/x-bibliography; style=vancouver",
                   "application/vnd.datacite.datacite+xml", "text/turtle", "*/*"):
        r = anon.get("/catalog/chest-ct", headers={"Accept": accept})
        assert r.status_code == 410 and PUBLISHED_TITLE in r.text, accept
        _no_draft(r.text + repr(r.headers))
        assert "link" not in r.headers
    for path in ("/catalog/chest-ct/cite.bib", "/catalog/chest-ct/cite.ris", "/catalog/chest-ct/cite.jsonld",
                 "/catalog/chest-ct/terms", "/catalog/chest-ct.jsonld", "/catalog/chest-ct.ttl", "/catalog.ttl",
                 "/catalog/chest-ct/card.png"):
        r = anon.get(path)
        _no_draft(r.text)
        assert path == "/catalog.ttl" or r.status_code == 404, path
    # the steward still sees (and edits) the draft
    mine = world["client"].get(f"/api/v1/datasets/{world['ds']}/catalog", headers=_h(world)).json()
    assert mine["title"] == DRAFT["title"] and mine["published"] is False


def test_a_draft_doi_neither_makes_nor_changes_a_tombstone(world):  # noqa: F811
    # withdrawn without a DOI: 404, and a DOI typed into the draft since does not conjure a tombstone up
    _publish_then_withdraw(world, doi=None)
    anon = TestClient(world["app"], base_url=BASE)
    assert anon.get("/catalog/chest-ct").status_code == 404
    _edit_draft(world)
    r = anon.get("/catalog/chest-ct")
    assert r.status_code == 404
    _no_draft(r.text)


def test_publishing_again_shows_the_new_texts_and_a_second_withdrawal_keeps_them(world):  # noqa: F811
    c, ds = world["client"], world["ds"]
    _publish_then_withdraw(world)
    _edit_draft(world, title="Chest CT cohort, corrected", how_to_cite="Corrected citation.",
                doi="10.23698/example.2", data_owner="Example University Hospital")
    assert c.post(f"/api/v1/datasets/{ds}/catalog/publish", headers=_h(world)).status_code == 200
    anon = TestClient(world["app"], base_url=BASE)
    assert "Chest CT cohort, corrected" in anon.get("/catalog/chest-ct").text
    assert c.post(f"/api/v1/datasets/{ds}/catalog/unpublish", json={"reason": "again"},
                  headers=_h(world)).status_code == 200
    _edit_draft(world)
    page = anon.get("/catalog/chest-ct")
    assert page.status_code == 410 and "Chest CT cohort, corrected" in page.text
    assert "https://doi.org/10.23698/example.2" in page.text and "Corrected citation." in page.text
    _no_draft(page.text)


def test_a_withdrawal_by_any_path_keeps_what_was_public(world):  # noqa: F811
    """Not only the steward's unpublish: retention and a federation notice set the row's columns themselves."""
    c, ds = world["client"], world["ds"]
    assert c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body(), headers=_h(world)).status_code == 200
    assert c.post(f"/api/v1/datasets/{ds}/catalog/publish", headers=_h(world)).status_code == 200
    hub = world["app"].state.hub
    with transaction(hub.sessions) as s:  # as federation.notices withdraws a mirror
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == ds))
        entry.published, entry.updated_at, entry.withdrawn_at = False, WITHDRAWN_AT, WITHDRAWN_AT
        entry.withdrawn_reason = "Withdrawn at its origin, Partner hub."
    _edit_draft(world)
    page = TestClient(world["app"], base_url=BASE).get("/catalog/chest-ct")
    assert page.status_code == 410 and PUBLISHED_TITLE in page.text
    _no_draft(page.text)
    with transaction(hub.sessions) as s:
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == ds))
        face = catalog_models.public_face(entry)
        assert face is not entry and face not in s  # a detached copy: nothing of it is ever written
        assert (face.title, face.doi, face.updated_at.replace(tzinfo=dt.UTC)) == (
            PUBLISHED_TITLE, "10.23698/example.1", WITHDRAWN_AT)
        assert entry.title == DRAFT["title"]


# -- 1. OAI-PMH --------------------------------------------------------------------------------------
def _oai(anon: TestClient, **params) -> etree._Element:
    r = anon.get("/oai", params=params)
    assert r.status_code == 200, r.text
    return etree.fromstring(r.content)


def test_the_deleted_records_datestamp_is_the_withdrawals(world):  # noqa: F811
    ds, hub = world["ds"], world["app"].state.hub
    _publish_then_withdraw(world)
    _withdrawn_earlier(hub, ds)
    _edit_draft(world)  # today
    anon = TestClient(world["app"], base_url=BASE)
    identifier = f"oai:127.0.0.1:{ds}"
    stamp = "2026-01-05T09:30:00Z"
    for root in (_oai(anon, verb="GetRecord", identifier=identifier, metadataPrefix="oai_dc"),
                 _oai(anon, verb="ListIdentifiers", metadataPrefix="oai_dc"),
                 _oai(anon, verb="ListRecords", metadataPrefix="oai_dc"),
                 _oai(anon, verb="ListRecords", metadataPrefix="oai_dc",
                      **{"from": "2026-01-05", "until": "2026-01-05"})):
        headers = root.findall(".//o:header", NS)
        assert [(h.findtext("o:identifier", namespaces=NS), h.findtext("o:datestamp", namespaces=NS),
                 h.get("status")) for h in headers] == [(identifier, stamp, "deleted")]
        assert root.find(".//o:metadata", NS) is None
        _no_draft(etree.tostring(root).decode())
    # a harvest of what changed since the withdrawal has nothing: the draft edit is not a public change
    since = _oai(anon, verb="ListIdentifiers", metadataPrefix="oai_dc", **{"from": "2026-01-06"})
    assert since.find("o:error", NS).get("code") == "noRecordsMatch"
    earliest = _oai(anon, verb="Identify").findtext(".//o:earliestDatestamp", namespaces=NS)
    assert earliest == stamp


# -- 1. DataCite -------------------------------------------------------------------------------------
@pytest.fixture
def settings(settings, request):
    """The hub has a DataCite repository (test_dois's local server) for the tests that ask for ``datacite``."""
    if "datacite" not in request.fixturenames:
        return settings
    return settings.model_copy(update={"doi": td.configured(request.getfixturevalue("datacite"))})


def test_the_hidden_dois_keep_the_withdrawn_metadata(world, datacite, hub):  # noqa: F811
    w = {**world, "h": _h(world), "hub": hub}
    c, h, ds = w["client"], w["h"], w["ds"]
    td.publish(w)
    td.run_jobs(hub)
    assert c.post(f"/api/v1/datasets/{ds}/catalog/unpublish", json={"reason": "consent withdrawn"},
                  headers=h).status_code == 200
    draft = entry_body("chest-ct", **{**DRAFT, "doi": None, "creators": td.creators()})
    assert c.put(f"/api/v1/datasets/{ds}/catalog", json=draft, headers=h).status_code == 200
    td.run_jobs(hub)  # the withdrawal's job runs after the draft edit
    td.release_version_2(w)  # a release schedules the DOI job again
    td.run_jobs(hub)
    concept = td.name(ds)
    assert datacite.dois[concept]["state"] == "registered"
    assert datacite.dois[concept]["titles"] == [{"title": PUBLISHED_TITLE}]
    _no_draft(repr(datacite.dois))


# -- 2. DOIs and the Link header ---------------------------------------------------------------------
@pytest.mark.parametrize("doi", [
    '10.1234/x>;rel="item";type="application/json",<https://evil.example/steal', "10.1234/雪", "10.1234/a b",
    "10.1234/a<b", '10.1234/a"b', "10.1234/a{b}", "10.1234/a|b", "10.1234/a\\b", "10.1234/a^b", "10.1234/a`b",
    "10.1234/a\x7fb", "10.1234/a\tb", "10.1234/"])
def test_a_doi_is_printable_ascii_without_unsafe_characters(world, doi):  # noqa: F811
    for field, value in (("doi", doi), ("publications", [doi])):
        r = world["client"].put(f"/api/v1/datasets/{world['ds']}/catalog", json=entry_body(**{field: value}),
                                headers=_h(world))
        assert r.status_code == 422, (field, r.text)


def test_real_dois_with_punctuation_are_accepted(world):  # noqa: F811
    for doi in ("10.1002/(SICI)1097-4636(199706)35:4;527::AID-JBM13;3.0.CO;2-B", "10.1000/a,b", "10.5555/x#y[1]~",
                "https://doi.org/10.1234/ABC.def_1"):
        r = world["client"].put(f"/api/v1/datasets/{world['ds']}/catalog", json=entry_body(doi=doi),
                                headers=_h(world))
        assert r.status_code == 200, (doi, r.text)


def _links(header: str) -> list[tuple[str, str]]:
    """(target, rel) of each link of an RFC 8288 header whose targets hold no '<', '>', ',' or '"'."""
    out = []
    for part in header.split(", "):
        target, _, params = part.partition(">; ")
        assert target.startswith("<") and "<" not in target[1:] and ">" not in target, part
        rel = dict(p.split("=", 1) for p in params.split("; "))["rel"]
        out.append((target[1:], rel.strip('"')))
    return out


@pytest.mark.parametrize("stored", [
    '10.1234/x>;rel="item";type="application/json",<https://evil.example/steal', "10.1234/雪 x"])
def test_a_bad_doi_stored_before_the_rule_is_encoded_in_the_link_header(world, stored):  # noqa: F811
    c, ds = world["client"], world["ds"]
    assert c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body(), headers=_h(world)).status_code == 200
    assert c.post(f"/api/v1/datasets/{ds}/catalog/publish", headers=_h(world)).status_code == 200
    with transaction(world["app"].state.hub.sessions) as s:  # a row written before DOIs were checked this way
        s.execute(update(CatalogEntry).where(CatalogEntry.dataset_id == ds).values(doi=stored))
    anon = TestClient(world["app"], base_url=BASE, raise_server_exceptions=False)
    for _ in range(2):  # rendered, then from the page cache
        page = anon.get("/catalog/chest-ct")
        assert page.status_code == 200
        links = _links(page.headers["link"])
        assert links[0] == (signposting.uri_reference(f"https://doi.org/{stored}"), "cite-as")
        assert [rel for _, rel in links].count("item") == 1  # the DRS bundle only
        assert not any(target.startswith("https://evil.example") for target, _ in links)
    # the citation downloads and negotiated variants of the same page stay well-formed too
    for ext in ("bib", "ris", "csl.json", "jsonld", "txt?style=vancouver", "datacite.xml"):
        path = f"/catalog/chest-ct/cite.{ext}"
        r = anon.get(path)
        assert r.status_code == 200 and r.headers["content-disposition"].isascii(), path
    r = anon.get("/catalog/chest-ct", headers={"Accept": "application/x-bibtex"})
    assert r.status_code == 200 and len(_links(r.headers["link"])) == len(links)
    assert r.headers["content-location"] == "/catalog/chest-ct/cite.bib"


def test_uri_reference_encodes_all_but_safe_uri_characters():
    assert signposting.uri_reference("https://hub.example/catalog/a-b?x=1&y=(2)#top") == \
        "https://hub.example/catalog/a-b?x=1&y=(2)#top"
    assert signposting.uri_reference('https://doi.org/10.1/a>;rel="x",<b') == \
        "https://doi.org/10.1/a%3E%3Brel=%22x%22%2C%3Cb"
    assert signposting.uri_reference("https://doi.org/10.1/雪 %2f%zz\r\n") == \
        "https://doi.org/10.1/%E9%9B%AA%20%2f%25zz%0D%0A"
    header = signposting.link_header([signposting.Link("https://doi.org/10.1/é>", "cite-as")])
    assert header == '<https://doi.org/10.1/%C3%A9%3E>; rel="cite-as"' and header.isascii()
