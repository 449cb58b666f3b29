"""Harvestable catalogue (issue 11): the DCAT-AP 3 / HealthDCAT-AP export validated against the
official DCAT-AP 3.0.1 SHACL shapes with pySHACL, the OAI-PMH endpoint validated against the OAI-PMH
XSD and harvested with a real harvester (Sickle) from a live server with resumption tokens, the
sitemap index with image sitemaps, and that nothing unpublished, withdrawn or private ever appears in
any of these formats."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from lxml import etree
from pyshacl import validate
from rdflib import Graph, Literal, Namespace, URIRef
from rdflib.compare import isomorphic
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, SKOS, XSD
from sickle import Sickle
from sickle.oaiexceptions import BadResumptionToken, IdDoesNotExist, NoRecordsMatch
from sqlalchemy import select, update

import test_catalog as tc
from conftest import bearer, token_for
from strongroom.archive import service as archive
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key
from strongroom.archive.models import DatasetVersion
from strongroom.audit.service import Actor
from strongroom.catalog import dcat, fair, oai
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction
from strongroom.identity.models import User
from strongroom.projects import service as projects
from support.live import serving

SHAPES = Path(__file__).parent / "support" / "dcat-ap-3.0.1"
OAI_XSD = Path(__file__).parent / "support" / "oai-pmh" / "OAI-PMH.xsd"
BASE = tc.BASE
ADMS = Namespace("http://www.w3.org/ns/adms#")
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
HEALTH = Namespace("http://healthdataportal.eu/ns/health#")
EU = "http://publications.europa.eu/resource/authority/"
NS = {"o": oai.OAI_NS, "dc": oai.DC_NS, "oai_dc": oai.OAI_DC_NS, "dcite": oai.DATACITE_NS,
      "od": oai.OAI_DATACITE_NS}
RDF_FORMATS = {"ttl": ("text/turtle", "turtle"), "jsonld": ("application/ld+json", "json-ld"),
               "rdf": ("application/rdf+xml", "xml")}


# -- helpers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes() -> Graph:
    g = Graph()
    for name in ("shacl_dcat-ap-SHACL.ttl", "html_shacl_deprecateduris.ttl"):
        g.parse(SHAPES / name)
    return g


def assert_conforms(data: Graph, shapes: Graph) -> None:
    conforms, _, report = validate(data, shacl_graph=shapes, inference="none", advanced=True,
                                   allow_warnings=True)
    assert conforms, report


def assert_vocabularies(g: Graph) -> None:
    """The controlled vocabularies DCAT-AP names, checked against their authority tables."""
    themes = set(g.objects(None, DCAT.theme))
    assert themes == {URIRef(EU + "data-theme/HEAL")}
    for term in themes:
        assert (term, SKOS.inScheme, URIRef(EU + "data-theme")) in g
    for rights in g.objects(None, DCTERMS.accessRights):
        assert rights == URIRef(EU + "access-right/RESTRICTED")
        assert (rights, SKOS.inScheme, URIRef(EU + "access-right")) in g
    for fmt in g.objects(None, DCTERMS.format):
        assert str(fmt).startswith(EU + "file-type/") and (fmt, SKOS.inScheme, URIRef(EU + "file-type")) in g
    for media in g.objects(None, DCAT.mediaType):
        assert re.fullmatch(r"https://www\.iana\.org/assignments/media-types/[a-z]+/[a-z0-9.+-]+", str(media))


def graph_of(client: TestClient, path: str, ext: str = "ttl") -> Graph:
    r = client.get(f"{path}.{ext}")
    assert r.status_code == 200, r.text
    media, parser = RDF_FORMATS[ext]
    assert r.headers["content-type"].startswith(media)
    return Graph().parse(data=r.content, format=parser, publicID=BASE + "/")


@pytest.fixture
def world(app, hub, people):
    """Project `lung` (PI alice) owns a released dataset, as in test_catalog."""
    ensure_key(hub)
    alice = people("alice")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="alice", ethics_ref="E1",
                                end_date=tc.END)
    c = TestClient(app, base_url=BASE)
    return {"client": c, "tokens": {"alice": token_for(hub, alice)}, "ds": tc.make_dataset(hub, alice, "lung"),
            "alice": alice, "app": app}


def publish(world, hub, slug: str, *, title: str | None = None, **over) -> str:
    """A released dataset published under ``slug``; returns its accession."""
    ds = tc.make_dataset(hub, world["alice"], "lung", title or f"Data {slug}")
    tc.publish_entry(world, ds, slug, image=False, **over)
    return ds


def second_version(hub, person, ds: str) -> None:
    """Version 2 adds an annotation file (JSON) to version 1's files and is released; version 1 is deprecated.
    (Not a table: tables are released only from a passing strategy run, see test_data_requests.)"""
    storage = storage_for(hub)
    with transaction(hub.sessions) as s:
        principal = tc._principal(s, person)
        access = projects.open_project(s, principal, "lung")
        file_id = archive.receive_small_plaintext(hub, s, principal, access, storage, path="annotations/nodules.json",
                                                  data=b'[{"case": 1, "diameter_mm": 6}]\n').id
    assert archive.ingest(hub, storage, file_id) == "ready"
    with transaction(hub.sessions) as s:
        principal = tc._principal(s, person)
        archive.edit_draft(s, principal, ds, add=[file_id], remove=[])
        archive.release_version(s, principal, ds, 2)
        archive.deprecate_version(s, principal, ds, 1)


# -- DCAT-AP -----------------------------------------------------------------------------------------
def test_seeded_demo_catalogue_conforms_to_dcat_ap_3(app, hub, shapes):
    from strongroom.demo import seed_demo

    ensure_key(hub)
    seed_demo(hub)
    c = TestClient(app, base_url=BASE)
    g = graph_of(c, "/catalog")
    assert_conforms(g, shapes)
    assert_vocabularies(g)
    catalog = URIRef(f"{BASE}/catalog")
    assert (catalog, RDF.type, DCAT.Catalog) in g
    [ds] = g.objects(catalog, DCAT.dataset)
    assert ds == URIRef(f"{BASE}/catalog/synthetic-chest-ct-demo")
    [dist] = g.objects(ds, DCAT.distribution)
    assert g.value(dist, DCAT.mediaType) == URIRef("https://www.iana.org/assignments/media-types/image/png")
    assert g.value(dist, DCAT.accessURL) == ds  # the landing page: never a data URL
    assert g.value(ds, HEALTH.numberOfUniqueIndividuals) is None  # 3 subjects: a small count is left out
    # the same graph in JSON-LD and RDF/XML
    for ext in ("jsonld", "rdf"):
        assert isomorphic(graph_of(c, "/catalog", ext), g), ext


def test_an_entry_with_every_field_conforms_and_says_everything_it_knows(world, hub, shapes):
    ds = world["ds"]
    tc.publish_entry(world, ds, "full-ct")
    second_version(hub, world["alice"], ds)
    c = world["client"]
    g = graph_of(c, "/catalog/full-ct")
    assert_conforms(g, shapes)
    assert_vocabularies(g)
    node = URIRef(f"{BASE}/catalog/full-ct")
    assert g.value(node, DCTERMS.title) == Literal("Chest CT cohort full-ct", lang="en")
    assert g.value(node, DCTERMS.identifier) == Literal("https://doi.org/10.23698/example.1")
    notations = {str(g.value(i, SKOS.notation)) for i in g.objects(node, ADMS.identifier)}
    assert notations == {"10.23698/example.1", ds}
    owner = g.value(node, DCTERMS.publisher)
    assert owner == URIRef("https://ror.org/000000000") and (owner, RDF.type, FOAF.Agent) in g
    assert g.value(owner, FOAF.name) == Literal("Example University Hospital")
    contact = g.value(node, DCAT.contactPoint)
    assert g.value(contact, VCARD.hasEmail) == URIRef("mailto:data-access@hospital.example.net")
    keywords = {str(k) for k in g.objects(node, DCAT.keyword)}
    assert {"Computed tomography", "CT", "Lung", "screening"} <= keywords
    period = g.value(node, DCTERMS.temporal)
    assert g.value(period, DCAT.startDate) == Literal(dt.date(2015, 1, 1), datatype=XSD.date)
    assert g.value(period, DCAT.endDate) == Literal(dt.date(2019, 12, 31), datatype=XSD.date)
    assert g.value(node, HEALTH.numberOfUniqueIndividuals) == Literal(120, datatype=XSD.nonNegativeInteger)
    assert g.value(node, HEALTH.numberOfRecords) == Literal(130, datatype=XSD.nonNegativeInteger)
    assert g.value(node, FOAF.depiction) == URIRef(f"{BASE}/catalog/full-ct/images/1.png")
    assert g.value(node, dcat.DCAT_VERSION) == Literal("2")
    dists = {str(g.value(d, DCTERMS.title)): d for d in g.objects(node, DCAT.distribution)}
    assert set(dists) == {"Version 1 (deprecated)", "Version 2"}
    with hub.sessions() as s:
        sizes = {v.number: v.total_bytes for v in s.scalars(select(DatasetVersion).where(
            DatasetVersion.dataset_id == ds))}
    for number, label in ((1, "Version 1 (deprecated)"), (2, "Version 2")):
        dist = dists[label]
        assert g.value(dist, DCAT.byteSize) == Literal(sizes[number], datatype=XSD.nonNegativeInteger)
        assert g.value(dist, DCTERMS.license) == URIRef(f"{BASE}/catalog/full-ct/terms")
        assert g.value(dist, DCAT.accessURL) == node
        assert URIRef("http://purl.obolibrary.org/obo/DUO_0000006") in set(g.objects(dist, DCTERMS.rights))
    assert set(g.objects(dists["Version 1 (deprecated)"], DCTERMS.format)) == {URIRef(EU + "file-type/PNG")}
    # one media type per distribution (DCAT-AP): a version of mixed files names its types in words
    assert g.value(dists["Version 2"], DCAT.mediaType) is None
    assert "2 files (application/json, image/png)" in str(g.value(dists["Version 2"], DCTERMS.description))
    for ext in ("jsonld", "rdf"):
        assert isomorphic(graph_of(c, "/catalog/full-ct", ext), g), ext
    # the landing page itself is still the HTML page
    assert c.get("/catalog/full-ct").headers["content-type"].startswith("text/html")


# -- OAI-PMH -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oai_schema() -> etree.XMLSchema:
    # The payload slots are <any processContents="strict"> whose schemas live on the network: lax here,
    # the payloads are checked by check_payloads.
    text = OAI_XSD.read_text().replace('processContents="strict"', 'processContents="lax"')
    return etree.XMLSchema(etree.fromstring(text.encode()))


DC_ELEMENTS = {"title", "creator", "subject", "description", "publisher", "contributor", "date", "type", "format",
               "identifier", "source", "language", "relation", "coverage", "rights"}


def check_payloads(root: etree._Element) -> None:
    for dc in root.iterfind(".//oai_dc:dc", NS):
        names = [etree.QName(child).localname for child in dc]
        assert set(names) <= DC_ELEMENTS and {"title", "identifier", "type"} <= set(names), names
        assert all(etree.QName(child).namespace == oai.DC_NS for child in dc)
    for resource in root.iterfind(".//dcite:resource", NS):
        kids = {etree.QName(child).localname for child in resource}
        assert {"identifier", "creators", "titles", "publisher", "publicationYear", "resourceType"} <= kids
        assert resource.find("dcite:identifier", NS).get("identifierType") == "DOI"
        assert resource.find("dcite:resourceType", NS).get("resourceTypeGeneral") == "Dataset"
    for record in root.iterfind(".//o:record", NS):
        deleted = record.find("o:header", NS).get("status") == "deleted"
        assert (record.find("o:metadata", NS) is None) is deleted


def oai_xml(client, schema: etree.XMLSchema, method: str = "GET", **params) -> etree._Element:
    r = client.request(method, "/oai", params=params) if method == "GET" else client.post("/oai", data=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml")
    root = etree.fromstring(r.content)
    schema.assertValid(root)
    check_payloads(root)
    return root


def error_code(root: etree._Element) -> str | None:
    error = root.find("o:error", NS)
    return None if error is None else error.get("code")


def identifier_of(ds: str) -> str:
    return f"oai:127.0.0.1:{ds}"


def withdraw(world, ds: str) -> None:
    r = world["client"].post(f"/api/v1/datasets/{ds}/catalog/unpublish", headers=bearer(world["tokens"]["alice"]))
    assert r.status_code == 200, r.text


def set_stamp(hub, ds: str, when: dt.datetime) -> None:
    with transaction(hub.sessions) as s:
        s.execute(update(CatalogEntry).where(CatalogEntry.dataset_id == ds).values(updated_at=when))


def test_oai_identify_formats_sets_and_records(world, hub, oai_schema):
    c = world["client"]
    with_doi = world["ds"]
    tc.publish_entry(world, with_doi, "with-doi", image=False)
    without = publish(world, hub, "no-doi", doi=None, modalities=["MR"], data_owner="Other Clinic")
    root = oai_xml(c, oai_schema, verb="Identify")
    ident = root.find("o:Identify", NS)
    assert ident.findtext("o:baseURL", namespaces=NS) == f"{BASE}/oai"
    assert ident.findtext("o:protocolVersion", namespaces=NS) == "2.0"
    assert ident.findtext("o:deletedRecord", namespaces=NS) == "transient"
    assert ident.findtext("o:granularity", namespaces=NS) == "YYYY-MM-DDThh:mm:ssZ"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ident.findtext("o:earliestDatestamp", namespaces=NS))
    assert root.find("o:request", NS).attrib == {"verb": "Identify"}

    prefixes = lambda root: [e.text for e in root.iterfind(".//o:metadataPrefix", NS)]  # noqa: E731
    assert prefixes(oai_xml(c, oai_schema, verb="ListMetadataFormats")) == ["oai_dc", "oai_datacite", "datacite"]
    assert prefixes(oai_xml(c, oai_schema, verb="ListMetadataFormats", identifier=identifier_of(without))) == [
        "oai_dc"]  # DataCite records need a DOI: none is invented
    sets = {e.findtext("o:setSpec", namespaces=NS): e.findtext("o:setName", namespaces=NS)
            for e in oai_xml(c, oai_schema, verb="ListSets").iterfind(".//o:set", NS)}
    assert sets == {"modality:CT": "Modality: Computed tomography", "modality:MR": "Modality: Magnetic resonance",
                    "owner:example-university-hospital": "Data owner: Example University Hospital",
                    "owner:other-clinic": "Data owner: Other Clinic"}

    root = oai_xml(c, oai_schema, verb="GetRecord", identifier=identifier_of(with_doi), metadataPrefix="oai_dc")
    header = root.find(".//o:header", NS)
    assert header.findtext("o:identifier", namespaces=NS) == identifier_of(with_doi)
    assert [e.text for e in header.iterfind("o:setSpec", NS)] == ["modality:CT", "owner:example-university-hospital"]
    dc = root.find(".//oai_dc:dc", NS)
    assert dc.findtext("dc:title", namespaces=NS) == "Chest CT cohort with-doi"
    assert [e.text for e in dc.iterfind("dc:identifier", NS)] == [
        "https://doi.org/10.23698/example.1", f"{BASE}/catalog/with-doi"]
    assert "info:eu-repo/semantics/restrictedAccess" in [e.text for e in dc.iterfind("dc:rights", NS)]
    for prefix in ("oai_datacite", "datacite"):
        root = oai_xml(c, oai_schema, verb="GetRecord", identifier=identifier_of(with_doi), metadataPrefix=prefix)
        resource = root.find(".//dcite:resource", NS)
        assert resource.findtext("dcite:identifier", namespaces=NS) == "10.23698/example.1"
        assert (root.find(".//od:oai_datacite/od:payload", NS) is not None) is (prefix == "oai_datacite")
    root = oai_xml(c, oai_schema, verb="GetRecord", identifier=identifier_of(without), metadataPrefix="oai_datacite")
    assert error_code(root) == "cannotDisseminateFormat"
    # ListRecords in DataCite lists only what has a DOI
    root = oai_xml(c, oai_schema, verb="ListRecords", metadataPrefix="oai_datacite")
    assert [e.text for e in root.iterfind(".//o:header/o:identifier", NS)] == [identifier_of(with_doi)]
    root = oai_xml(c, oai_schema, verb="ListIdentifiers", metadataPrefix="oai_dc", set="modality:MR")
    assert [e.text for e in root.iterfind(".//o:header/o:identifier", NS)] == [identifier_of(without)]
    # POST answers exactly as GET
    assert [e.text for e in oai_xml(c, oai_schema, "POST", verb="ListIdentifiers", metadataPrefix="oai_dc")
            .iterfind(".//o:identifier", NS)] == [identifier_of(with_doi), identifier_of(without)]


def test_oai_identifiers_use_the_hub_domain_and_identify_describes_the_scheme(world, hub, oai_schema):
    tc.publish_entry(world, world["ds"], "chest-ct", image=False)
    tokens = oai.Tokens(hub.secret)
    with hub.sessions() as s:
        repo = fair.CatalogRepository(s, hub.settings.model_copy(update={"base_url": "https://hub.example.org/",
                                                                          "site_name": "Example Hub"}))
        root = etree.fromstring(oai.handle(repo, tokens, [("verb", "Identify")]))
        oai_schema.assertValid(root)
        assert root.findtext(".//o:baseURL", namespaces=NS) == "https://hub.example.org/oai"
        assert root.findtext(".//o:adminEmail", namespaces=NS) == "catalogue@hub.example.org"
        scheme = {"i": oai.IDENTIFIER_NS}
        assert root.findtext(".//i:oai-identifier/i:repositoryIdentifier", namespaces=scheme) == "hub.example.org"
        record = etree.fromstring(oai.handle(repo, tokens, [
            ("verb", "GetRecord"), ("metadataPrefix", "oai_dc"), ("identifier", f"oai:hub.example.org:{world['ds']}")]))
        assert record.findtext(".//dc:identifier[2]", namespaces=NS) == "https://hub.example.org/catalog/chest-ct"
    # on a loopback address (no domain name) the scheme description is left out, as it must be
    root = oai_xml(world["client"], oai_schema, verb="Identify")
    assert root.find(".//o:description", NS) is None


def test_oai_datestamps_select_by_from_and_until_at_seconds(world, hub, oai_schema):
    c = world["client"]
    a, b, d = (publish(world, hub, slug) for slug in ("day-one", "day-two", "day-three"))
    set_stamp(hub, a, dt.datetime(2026, 1, 1, 10, 0, 0, 400000, tzinfo=dt.UTC))
    set_stamp(hub, b, dt.datetime(2026, 1, 2, 10, 0, 0, tzinfo=dt.UTC))
    set_stamp(hub, d, dt.datetime(2026, 1, 3, 23, 59, 59, tzinfo=dt.UTC))

    def ids(**params) -> list[str]:
        root = oai_xml(c, oai_schema, verb="ListIdentifiers", metadataPrefix="oai_dc", **params)
        if error_code(root) == "noRecordsMatch":
            return []
        return [e.text for e in root.iterfind(".//o:header/o:identifier", NS)]

    stamps = [e.text for e in oai_xml(c, oai_schema, verb="ListIdentifiers", metadataPrefix="oai_dc")
              .iterfind(".//o:datestamp", NS)]
    assert stamps == ["2026-01-01T10:00:00Z", "2026-01-02T10:00:00Z", "2026-01-03T23:59:59Z"]
    assert ids(**{"from": "2026-01-02"}) == [identifier_of(b), identifier_of(d)]
    assert ids(until="2026-01-02") == [identifier_of(a), identifier_of(b)]  # a day includes all of it
    assert ids(until="2026-01-01T10:00:00Z") == [identifier_of(a)]  # its datestamp says 10:00:00
    assert ids(**{"from": "2026-01-01T10:00:01Z", "until": "2026-01-03T23:59:58Z"}) == [identifier_of(b)]
    assert ids(**{"from": "2026-01-03", "until": "2026-01-03"}) == [identifier_of(d)]
    assert ids(**{"from": "2027-01-01"}) == []
    root = oai_xml(c, oai_schema, verb="Identify")
    assert root.findtext(".//o:earliestDatestamp", namespaces=NS) == "2026-01-01T10:00:00Z"


ERRORS = [
    ({}, "badVerb"),
    ({"verb": "ListEverything"}, "badVerb"),
    ({"verb": ["Identify", "Identify"]}, "badVerb"),
    ({"verb": "Identify", "metadataPrefix": "oai_dc"}, "badArgument"),
    ({"verb": "ListRecords"}, "badArgument"),
    ({"verb": "GetRecord", "metadataPrefix": "oai_dc"}, "badArgument"),
    ({"verb": "ListRecords", "metadataPrefix": ["oai_dc", "oai_dc"]}, "badArgument"),
    ({"verb": "ListRecords", "metadataPrefix": "oai_dc", "from": "2026-13-01"}, "badArgument"),
    ({"verb": "ListRecords", "metadataPrefix": "oai_dc", "from": "2026-01-01T00:00:00"}, "badArgument"),
    ({"verb": "ListRecords", "metadataPrefix": "oai_dc", "from": "2026-01-01", "until": "2026-02-01T00:00:00Z"},
     "badArgument"),
    ({"verb": "ListRecords", "metadataPrefix": "oai_dc", "from": "2026-02-01", "until": "2026-01-01"}, "badArgument"),
    ({"verb": "ListRecords", "metadataPrefix": "oai_dc", "set": "no spaces"}, "badArgument"),
    ({"verb": "ListRecords", "metadataPrefix": "oai_dc", "resumptionToken": "x"}, "badArgument"),
    ({"verb": "Identify", "resumptionToken": "x"}, "badArgument"),
    ({"verb": "ListRecords", "metadataPrefix": "marc21"}, "cannotDisseminateFormat"),
    ({"verb": "GetRecord", "metadataPrefix": "marc21", "identifier": "oai:127.0.0.1:SRD-X"}, "cannotDisseminateFormat"),
    ({"verb": "GetRecord", "metadataPrefix": "oai_dc", "identifier": "oai:127.0.0.1:SRD-0000000000"}, "idDoesNotExist"),
    ({"verb": "GetRecord", "metadataPrefix": "oai_dc", "identifier": "oai:elsewhere.org:1"}, "idDoesNotExist"),
    ({"verb": "ListMetadataFormats", "identifier": "oai:127.0.0.1:SRD-0000000000"}, "idDoesNotExist"),
    ({"verb": "ListRecords", "metadataPrefix": "oai_dc", "set": "modality:XA"}, "noRecordsMatch"),
    ({"verb": "ListIdentifiers", "metadataPrefix": "oai_dc", "from": "2099-01-01"}, "noRecordsMatch"),
    ({"verb": "ListRecords", "resumptionToken": "forged.token"}, "badResumptionToken"),
    ({"verb": "ListSets", "resumptionToken": "forged.token"}, "badResumptionToken"),
]


def test_oai_protocol_errors(world, hub, oai_schema):
    tc.publish_entry(world, world["ds"], "chest-ct", image=False)
    for params, code in ERRORS:
        for method in ("GET", "POST"):
            root = oai_xml(world["client"], oai_schema, method, **params)
            assert error_code(root) == code, (params, method, etree.tostring(root))
            request = root.find("o:request", NS)
            if code in ("badVerb", "badArgument"):  # the protocol: no attributes echoed then
                assert request.attrib == {}, params
            else:
                assert request.attrib == {k: v for k, v in params.items()}, params


def test_oai_no_set_hierarchy_and_no_records_in_an_empty_catalogue(world, oai_schema):
    c = world["client"]
    assert error_code(oai_xml(c, oai_schema, verb="ListSets")) == "noSetHierarchy"
    assert error_code(oai_xml(c, oai_schema, verb="ListRecords", metadataPrefix="oai_dc")) == "noRecordsMatch"
    assert error_code(oai_xml(c, oai_schema, verb="Identify")) is None


def test_resumption_tokens_are_tamper_evident_bound_to_their_verb_and_expire(world, hub, oai_schema, monkeypatch):
    monkeypatch.setattr(oai, "PAGE_SIZE", 1)
    c = world["client"]
    for slug in ("t-one", "t-two"):
        publish(world, hub, slug)
    first = oai_xml(c, oai_schema, verb="ListIdentifiers", metadataPrefix="oai_dc")
    token_el = first.find(".//o:resumptionToken", NS)
    assert token_el.get("completeListSize") == "2" and token_el.get("cursor") == "0" and token_el.get("expirationDate")
    token = token_el.text
    body, mac = token.split(".")
    edited = body[:-1] + ("A" if body[-1] != "A" else "B")
    for bad in (f"{edited}.{mac}", f"{body}.{mac[:-1]}x", token + "x", ""):
        root = oai_xml(c, oai_schema, verb="ListIdentifiers", resumptionToken=bad)
        assert error_code(root) == "badResumptionToken", bad
    assert error_code(oai_xml(c, oai_schema, verb="ListRecords", resumptionToken=token)) == "badResumptionToken"
    expired = oai.Tokens(hub.secret).make({"verb": "ListIdentifiers", "prefix": "oai_dc", "since": None,
                                           "before": 4102444800, "set": None, "after": 0, "cursor": 0, "exp": 1})
    assert error_code(oai_xml(c, oai_schema, verb="ListIdentifiers", resumptionToken=expired)) == "badResumptionToken"
    last = oai_xml(c, oai_schema, verb="ListIdentifiers", resumptionToken=token)
    end = last.find(".//o:resumptionToken", NS)
    assert end.text is None and end.get("cursor") == "1" and end.get("completeListSize") == "2"


@pytest.mark.slow
def test_sickle_harvests_everything_through_resumption_tokens_from_a_live_server(world, hub, app, oai_schema,
                                                                                monkeypatch):
    from sickle.iterator import OAIResponseIterator

    from support.live import free_port

    monkeypatch.setattr(oai, "PAGE_SIZE", 2)
    tc.publish_entry(world, world["ds"], "harvest-0", image=False)
    published = [world["ds"]] + [publish(world, hub, f"harvest-{n}", doi=None) for n in range(1, 5)]
    gone = publish(world, hub, "harvest-gone")
    withdraw(world, gone)
    with serving(app, free_port()) as url:
        for method in ("GET", "POST"):
            harvester = Sickle(f"{url}/oai", http_method=method, max_retries=0)
            assert harvester.Identify().repositoryName == "Strongroom dataset catalogue"
            records = list(harvester.ListRecords(metadataPrefix="oai_dc", ignore_deleted=False))
            assert [r.header.identifier for r in records] == [identifier_of(d) for d in [*published, gone]]
            assert [r.deleted for r in records] == [False] * 5 + [True]
            assert records[0].metadata["title"] == ["Chest CT cohort harvest-0"]
            assert records[-1].header.deleted and getattr(records[-1], "metadata", None) is None
            live = list(harvester.ListIdentifiers(metadataPrefix="oai_dc", set="modality:CT"))
            assert len(live) == 6  # a withdrawal reaches every set's harvesters
            assert [r.header.identifier for r in harvester.ListRecords(metadataPrefix="oai_datacite",
                                                                       ignore_deleted=False)] == [
                identifier_of(world["ds"]), identifier_of(gone)]
            pages = list(Sickle(f"{url}/oai", http_method=method, iterator=OAIResponseIterator)
                         .ListRecords(metadataPrefix="oai_dc"))
            assert len(pages) == 3  # 6 records, 2 a page: two resumption tokens followed
            cursors = []
            for page in pages:
                root = etree.fromstring(page.raw.encode())
                oai_schema.assertValid(root)
                check_payloads(root)
                token = root.find(".//o:resumptionToken", NS)
                cursors.append((token.get("cursor"), token.get("completeListSize")))
            assert cursors == [("0", "6"), ("2", "6"), ("4", "6")]
        with pytest.raises(IdDoesNotExist):
            harvester.GetRecord(identifier="oai:127.0.0.1:SRD-0000000000", metadataPrefix="oai_dc")
        with pytest.raises(NoRecordsMatch):
            list(harvester.ListRecords(metadataPrefix="oai_dc", **{"from": "2099-01-01"}))
        with pytest.raises(BadResumptionToken):
            list(harvester.ListRecords(resumptionToken="forged.token"))


# -- nothing private, in any format ------------------------------------------------------------------
HARVESTABLE = ["/catalog.ttl", "/catalog.jsonld", "/catalog.rdf",
               "/oai?verb=ListRecords&metadataPrefix=oai_dc", "/oai?verb=ListRecords&metadataPrefix=oai_datacite",
               "/oai?verb=ListRecords&metadataPrefix=datacite", "/oai?verb=ListIdentifiers&metadataPrefix=oai_dc",
               "/oai?verb=ListSets", "/sitemap.xml", "/sitemaps/site.xml", "/sitemaps/catalog-1.xml"]


def test_unpublished_withdrawn_and_private_entries_never_appear_in_any_harvestable_format(world, hub, people,
                                                                                        oai_schema):
    c, h = world["client"], bearer(world["tokens"]["alice"])
    tc.publish_entry(world, world["ds"], "open-ct", image=False, description=(
        "Open chest CT. Technical questions go to helpdesk@imaging.example.net, which answers within two "
        "working days, and a person's address must never be harvested from here."))
    draft = tc.make_dataset(hub, world["alice"], "lung", "Secret draft MR")
    r = c.put(f"/api/v1/datasets/{draft}/catalog", headers=h, json=tc.entry_body(
        "draft-mr", title="Secret draft MR", data_owner="Hidden Owner Clinic", modalities=["MR"],
        doi="10.9999/secret-draft"))
    assert r.status_code == 200, r.text
    gone = publish(world, hub, "withdrawn-pet", title="Withdrawn PET", modalities=["PT"], data_owner="Gone Clinic")
    withdraw(world, gone)
    r = c.put(f"/api/v1/datasets/{gone}/catalog", headers=h, json=tc.entry_body(
        "withdrawn-pet", title="Renamed while withdrawn", data_owner="Gone Clinic", modalities=["PT"]))
    assert r.status_code == 200, r.text
    no_entry = tc.make_dataset(hub, world["alice"], "lung", "No entry at all")
    with transaction(hub.sessions) as s:  # later, a person takes the address the open entry mentions
        s.execute(update(User).where(User.id == world["alice"].user.id).values(email="HelpDesk@imaging.example.net"))
    secrets = ["Secret draft MR", "draft-mr", "Hidden", "10.9999/secret-draft", "Withdrawn PET",
               "Renamed while withdrawn", "withdrawn-pet", "Gone Clinic", "modality:MR", "modality:PT",
               "No entry at all", draft, no_entry, "helpdesk@imaging.example.net", "alice@example.org"]
    for path in HARVESTABLE:
        r = c.get(path)
        assert r.status_code == 200, path
        body = r.text.lower()
        for secret in secrets:
            assert secret.lower() not in body, f"{secret!r} appears in {path}"
        if path in ("/catalog.ttl", "/catalog.jsonld", "/catalog.rdf", "/sitemaps/catalog-1.xml"):
            assert "open-ct" in body, path  # the published entry is there
        # the withdrawn dataset is named only as an OAI-PMH deleted record: its identifier, nothing else
        if gone.lower() in body:
            root = etree.fromstring(r.content)
            headers = [e for e in root.iterfind(".//o:header", NS) if e.findtext("o:identifier", namespaces=NS)
                       == identifier_of(gone)]
            assert path.startswith("/oai") and len(headers) == 1 and headers[0].get("status") == "deleted", path
            assert not [e for e in headers[0] if etree.QName(e).localname == "setSpec"]
    for ext in ("ttl", "jsonld", "rdf"):
        for slug in ("draft-mr", "withdrawn-pet", "no-such"):
            assert c.get(f"/catalog/{slug}.{ext}").status_code == 404
    for ds in (draft, no_entry, "SRD-0000000000"):
        for prefix in ("oai_dc", "oai_datacite"):
            root = oai_xml(c, oai_schema, verb="GetRecord", identifier=identifier_of(ds), metadataPrefix=prefix)
            assert error_code(root) == "idDoesNotExist"
        root = oai_xml(c, oai_schema, verb="ListMetadataFormats", identifier=identifier_of(ds))
        assert error_code(root) == "idDoesNotExist"
    root = oai_xml(c, oai_schema, verb="GetRecord", identifier=identifier_of(gone), metadataPrefix="oai_dc")
    assert root.find(".//o:header", NS).get("status") == "deleted" and root.find(".//o:metadata", NS) is None
    # republished: a live record again, with what is public now
    assert c.post(f"/api/v1/datasets/{gone}/catalog/publish", headers=h).status_code == 200
    root = oai_xml(c, oai_schema, verb="GetRecord", identifier=identifier_of(gone), metadataPrefix="oai_dc")
    assert root.find(".//o:header", NS).get("status") is None
    assert root.findtext(".//dc:title", namespaces=NS) == "Renamed while withdrawn"
