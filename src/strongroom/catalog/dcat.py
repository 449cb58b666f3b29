"""The public catalogue as DCAT-AP 3 with the HealthDCAT-AP extras (pure: facts in, an rdflib graph
out; no web or database imports). ``fair.py`` gathers the facts from published entries only.

Controlled vocabularies are the EU Publications Office authority tables (data theme HEAL, access
right RESTRICTED, file types) and IANA media types, each stated with ``skos:inScheme`` so a validator
that has no network can still check them. Facts that are not known are left out, never guessed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rdflib import Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, RDFS, SKOS, XSD

from .. import small_counts

ADMS = Namespace("http://www.w3.org/ns/adms#")
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
HEALTHDCATAP = Namespace("http://healthdataportal.eu/ns/health#")
EU = "http://publications.europa.eu/resource/authority/"
DATA_THEME = URIRef(EU + "data-theme")
HEALTH_THEME = URIRef(EU + "data-theme/HEAL")
ACCESS_RIGHT = URIRef(EU + "access-right")
RESTRICTED = URIRef(EU + "access-right/RESTRICTED")  # available under conditions: the application
FILE_TYPE = URIRef(EU + "file-type")
IANA = "https://www.iana.org/assignments/media-types/"
DCAT_VERSION = URIRef(str(DCAT) + "version")  # DCAT 3; rdflib's DCAT namespace is DCAT 2

# File name suffix → (IANA media type, EU file-type code or None where the table has none).
FORMATS: dict[str, tuple[str, str | None]] = {
    ".dcm": ("application/dicom", None),
    ".png": ("image/png", "PNG"),
    ".jpg": ("image/jpeg", "JPEG"),
    ".jpeg": ("image/jpeg", "JPEG"),
    ".tif": ("image/tiff", "TIFF"),
    ".tiff": ("image/tiff", "TIFF"),
    ".csv": ("text/csv", "CSV"),
    ".json": ("application/json", "JSON"),
    ".xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "XLSX"),
    ".zip": ("application/zip", "ZIP"),
    ".pdf": ("application/pdf", "PDF"),
    ".txt": ("text/plain", "TXT"),
    ".gz": ("application/gzip", "GZIP"),
}
RDF_FORMATS = {  # rdflib serializer → media type, file suffix
    "turtle": ("text/turtle", "ttl"),
    "json-ld": ("application/ld+json", "jsonld"),
    "xml": ("application/rdf+xml", "rdf"),
}


@dataclass(frozen=True)
class VersionFacts:
    number: int
    released_at: dt.datetime | None
    deprecated: bool
    byte_size: int
    file_count: int
    suffixes: tuple[str, ...] = ()  # file name suffixes present, e.g. (".dcm",)


@dataclass(frozen=True)
class DatasetFacts:
    """What the public already sees on a landing page (texts scrubbed of any person's e-mail)."""

    landing: str  # absolute landing page URL: the dataset's IRI
    accession: str
    title: str
    description: str
    owner: str
    owner_url: str | None
    contact_email: str | None  # a role address, or None
    terms_url: str
    terms_title: str
    access_conditions: str
    keywords: Sequence[str]
    modalities: Sequence[tuple[str, str]]  # (DICOM code, name)
    organs: Sequence[str]
    duo: Sequence[tuple[str, str, str]]  # (code, label, IRI)
    doi: str | None
    issued: dt.datetime | None
    modified: dt.datetime
    time_start: dt.date | None
    time_end: dt.date | None
    subjects: int | None
    studies: int | None
    series: int | None
    instances: int | None
    images: Sequence[str] = ()
    versions: Sequence[VersionFacts] = field(default_factory=tuple)


@dataclass(frozen=True)
class CatalogFacts:
    url: str  # the catalogue page: the catalogue's IRI
    home: str
    site_name: str
    modified: dt.datetime | None


def _en(text: str) -> Literal:
    return Literal(text, lang="en")


def _stamp(value: dt.datetime) -> Literal:
    value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return Literal(value.astimezone(dt.UTC).replace(microsecond=0), datatype=XSD.dateTime)


def _concept(g: Graph, iri: URIRef, scheme: URIRef, label: str, *, kind: URIRef | None = None) -> URIRef:
    g.add((iri, RDF.type, SKOS.Concept))
    if kind is not None:
        g.add((iri, RDF.type, kind))
    g.add((iri, SKOS.prefLabel, _en(label)))
    g.add((iri, SKOS.inScheme, scheme))
    return iri


def new_graph() -> Graph:
    g = Graph()
    for prefix, ns in (("dcat", DCAT), ("dct", DCTERMS), ("foaf", FOAF), ("vcard", VCARD), ("adms", ADMS),
                       ("skos", SKOS), ("healthdcatap", HEALTHDCATAP), ("xsd", XSD)):
        g.bind(prefix, ns)
    return g


def add_catalog(g: Graph, cat: CatalogFacts, datasets: Iterable[DatasetFacts]) -> URIRef:
    node = URIRef(cat.url)
    publisher = URIRef(cat.home.rstrip("/") + "/#publisher")
    g.add((node, RDF.type, DCAT.Catalog))
    g.add((node, DCTERMS.title, _en(f"{cat.site_name} dataset catalogue")))
    g.add((node, DCTERMS.description, _en(
        f"Controlled-access medical imaging datasets held by {cat.site_name}. The catalogue is metadata "
        "only: data are released to approved applicants, never by public download.")))
    g.add((node, DCTERMS.publisher, publisher))
    g.add((publisher, RDF.type, FOAF.Agent))
    g.add((publisher, FOAF.name, Literal(cat.site_name)))
    home = URIRef(cat.home)
    g.add((node, FOAF.homepage, home))
    g.add((home, RDF.type, FOAF.Document))
    g.add((node, DCAT.themeTaxonomy, DATA_THEME))
    g.add((DATA_THEME, RDF.type, SKOS.ConceptScheme))
    g.add((DATA_THEME, DCTERMS.title, _en("Data theme")))
    if cat.modified is not None:
        g.add((node, DCTERMS.modified, _stamp(cat.modified)))
    for facts in datasets:
        g.add((node, DCAT.dataset, add_dataset(g, facts)))
    return node


def add_dataset(g: Graph, d: DatasetFacts) -> URIRef:
    node = URIRef(d.landing)
    g.add((node, RDF.type, DCAT.Dataset))
    g.add((node, DCTERMS.title, _en(d.title)))
    g.add((node, DCTERMS.description, _en(d.description)))
    landing = URIRef(d.landing)
    g.add((node, DCAT.landingPage, landing))
    g.add((landing, RDF.type, FOAF.Document))
    _identifiers(g, node, d)
    owner = URIRef(d.owner_url) if d.owner_url else URIRef(d.landing + "#owner")
    g.add((node, DCTERMS.publisher, owner))
    g.add((node, DCTERMS.creator, owner))
    g.add((owner, RDF.type, FOAF.Agent))
    g.add((owner, RDF.type, FOAF.Organization))
    g.add((owner, FOAF.name, Literal(d.owner)))
    if d.contact_email:
        contact = URIRef(d.landing + "#contact")
        g.add((node, DCAT.contactPoint, contact))
        g.add((contact, RDF.type, VCARD.Organization))
        g.add((contact, RDF.type, VCARD.Kind))
        g.add((contact, VCARD.fn, Literal(d.owner)))
        g.add((contact, VCARD.hasEmail, URIRef("mailto:" + d.contact_email)))
    words = [name for _, name in d.modalities] + [code for code, _ in d.modalities] + list(d.organs)
    for word in dict.fromkeys([*words, *d.keywords]):
        g.add((node, DCAT.keyword, _en(word)))
    g.add((node, DCAT.theme, _concept(g, HEALTH_THEME, DATA_THEME, "Health")))
    g.add((node, DCTERMS.accessRights, _rights(g)))
    if d.issued is not None:
        g.add((node, DCTERMS.issued, _stamp(d.issued)))
    g.add((node, DCTERMS.modified, _stamp(d.modified)))
    if d.time_start is not None:
        period = URIRef(d.landing + "#temporal")
        g.add((node, DCTERMS.temporal, period))
        g.add((period, RDF.type, DCTERMS.PeriodOfTime))
        g.add((period, DCAT.startDate, Literal(d.time_start, datatype=XSD.date)))
        if d.time_end is not None:
            g.add((period, DCAT.endDate, Literal(d.time_end, datatype=XSD.date)))
    for url in d.images:
        g.add((node, FOAF.depiction, URIRef(url)))
    released = [v for v in d.versions if not v.deprecated]
    if released:
        g.add((node, DCAT_VERSION, Literal(str(max(v.number for v in released)))))
    for version in d.versions:
        g.add((node, DCAT.distribution, _distribution(g, d, version)))
    # HealthDCAT-AP: only what the archive or the steward actually states, by the hub's small-count rule (rounded
    # to 5; a count of 1-4 is private and an integer cannot say "< 5", so the property is left out)
    if (individuals := small_counts.number(d.subjects)) is not None:
        g.add((node, HEALTHDCATAP.numberOfUniqueIndividuals, Literal(individuals, datatype=XSD.nonNegativeInteger)))
    # a record is one imaging study (examination), else one series
    if (records := small_counts.number(d.studies if d.studies is not None else d.series)) is not None:
        g.add((node, HEALTHDCATAP.numberOfRecords, Literal(records, datatype=XSD.nonNegativeInteger)))
    return node


def _identifiers(g: Graph, node: URIRef, d: DatasetFacts) -> None:
    g.add((node, DCTERMS.identifier, Literal(f"https://doi.org/{d.doi}" if d.doi else d.landing)))
    ids: list[tuple[str, str | None, str]] = [(d.accession, None, "accession")]
    if d.doi:
        ids.insert(0, (d.doi, "https://doi.org/" + d.doi, "DOI"))
    for notation, iri, kind in ids:
        ident = URIRef(f"{d.landing}#id-{kind.lower()}")
        g.add((node, ADMS.identifier, ident))
        g.add((ident, RDF.type, ADMS.Identifier))
        g.add((ident, SKOS.notation, Literal(notation)))
        g.add((ident, DCTERMS.type, _en(kind)))
        if iri:
            g.add((ident, DCTERMS.identifier, Literal(iri)))


def _rights(g: Graph) -> URIRef:
    g.add((RESTRICTED, RDF.type, DCTERMS.RightsStatement))
    return _concept(g, RESTRICTED, ACCESS_RIGHT, "Restricted")


def _distribution(g: Graph, d: DatasetFacts, v: VersionFacts) -> URIRef:
    node = URIRef(f"{d.landing}#version-{v.number}")
    g.add((node, RDF.type, DCAT.Distribution))
    g.add((node, DCTERMS.title, _en(f"Version {v.number}" + (" (deprecated)" if v.deprecated else ""))))
    named = ", ".join(dict.fromkeys(FORMATS[s][0] for s in v.suffixes if s in FORMATS))
    files = f"{v.file_count} files" + (f" ({named})" if named else "")
    g.add((node, DCTERMS.description, _en(
        f"{files}, kept encrypted (crypt4gh) in the hub's archive and released only to approved applicants, "
        "re-encrypted to their own key. Apply from the landing page; there is no public download.")))
    # The access URL is the landing page (apply there); a data URL is never published.
    g.add((node, DCAT.accessURL, URIRef(d.landing)))
    g.add((node, DCAT.byteSize, Literal(v.byte_size, datatype=XSD.nonNegativeInteger)))
    g.add((node, DCTERMS.accessRights, _rights(g)))
    terms = URIRef(d.terms_url)
    g.add((node, DCTERMS.license, terms))
    g.add((terms, RDF.type, DCTERMS.LicenseDocument))
    g.add((terms, RDFS.label, _en(d.terms_title)))
    for code, label, iri in d.duo:  # GA4GH Data Use Ontology terms of the data owner
        g.add((node, DCTERMS.rights, URIRef(iri)))
        g.add((URIRef(iri), RDF.type, DCTERMS.RightsStatement))
        g.add((URIRef(iri), RDFS.label, _en(f"{label} ({code})")))
    if v.released_at is not None:
        g.add((node, DCTERMS.issued, _stamp(v.released_at)))
    kinds = list(dict.fromkeys(FORMATS[s] for s in v.suffixes if s in FORMATS))
    if len(kinds) == 1:  # DCAT-AP: at most one media type and one format per distribution
        media, file_type = kinds[0]
        media_iri = URIRef(IANA + media)
        g.add((node, DCAT.mediaType, media_iri))
        g.add((media_iri, RDF.type, DCTERMS.MediaType))
        if file_type:
            g.add((node, DCTERMS.format, _concept(g, URIRef(f"{FILE_TYPE}/{file_type}"), FILE_TYPE, file_type,
                                                  kind=DCTERMS.MediaTypeOrExtent)))
    return node


def catalog_graph(cat: CatalogFacts, datasets: Iterable[DatasetFacts]) -> Graph:
    g = new_graph()
    add_catalog(g, cat, datasets)
    return g


def dataset_graph(d: DatasetFacts) -> Graph:
    g = new_graph()
    add_dataset(g, d)
    return g


def serialize(g: Graph, fmt: str) -> bytes:
    """Turtle, JSON-LD (compacted with the bound prefixes) or RDF/XML."""
    if fmt == "json-ld":
        context = {prefix: str(ns) for prefix, ns in g.namespaces()
                   if prefix in ("dcat", "dct", "foaf", "vcard", "adms", "skos", "healthdcatap", "xsd", "rdfs")}
        return g.serialize(format="json-ld", context=context, auto_compact=True, indent=2).encode()
    return g.serialize(format=fmt, encoding="utf-8")

