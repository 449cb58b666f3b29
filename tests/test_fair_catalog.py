"""Harvestable catalogue (issue 11): the DCAT-AP 3 / HealthDCAT-AP export validated against the
official DCAT-AP 3.0.1 SHACL shapes with pySHACL, the OAI-PMH endpoint validated against the OAI-PMH
XSD and harvested with a real harvester (Sickle) from a live server with resumption tokens, the
sitemap index with image sitemaps, and that nothing unpublished, withdrawn or private ever appears in
any of these formats."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

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
from strongroom.archive.models import DatasetVersion
from strongroom.archive.keys import ensure_key
from strongroom.catalog import oai, sitemaps
from strongroom.catalog.models import CatalogEntry
from strongroom.audit.service import Actor
from strongroom.db import transaction
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
    """Version 2 adds a CSV table to version 1's files and is released; version 1 is deprecated."""
    storage = storage_for(hub)
    with transaction(hub.sessions) as s:
        principal = tc._principal(s, person)
        access = projects.open_project(s, principal, "lung")
        file_id = archive.receive_small_plaintext(hub, s, principal, access, storage, path="tables/nodules.csv",
                                                  data=b"case,diameter_mm\n1,6\n").id
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
    assert g.value(ds, HEALTH.numberOfUniqueIndividuals) == Literal(3, datatype=XSD.nonNegativeInteger)
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
    assert g.value(node, DCAT.version) == Literal("2")
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
    assert "2 files (text/csv, image/png)" in str(g.value(dists["Version 2"], DCTERMS.description))
    for ext in ("jsonld", "rdf"):
        assert isomorphic(graph_of(c, "/catalog/full-ct", ext), g), ext
    # the landing page itself is still the HTML page
    assert c.get("/catalog/full-ct").headers["content-type"].startswith("text/html")
