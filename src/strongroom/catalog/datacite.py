"""DataCite Metadata Schema 4.6 records of a catalogue entry (pure: no web or database imports).

``datacite_attributes(facts)`` is the JSON the DataCite REST API takes as a DOI's ``attributes``;
``datacite_xml(facts)`` is the same record as kernel-4 XML (for oai_datacite and the XSD), written
from that JSON, so the two can never say different things. ``DoiFacts`` holds everything the
record says: the steward's fields and what the archive measured (counts, sizes, formats, versions).
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import small_counts
from ..text import human_bytes
from .vocab import DUO, MODALITIES, duo_url

NS = "http://datacite.org/schema/kernel-4"
SCHEMA_LOCATION = "http://datacite.org/schema/kernel-4 https://schema.datacite.org/meta/kernel-4.6/metadata.xsd"
SCHEMA_VERSION = "http://datacite.org/schema/kernel-4"
ORCID_RE = re.compile(r"^\d{4}-\d{4}-\d{4}-\d{3}[\dX]$")
ROR_RE = re.compile(r"^0[a-hj-km-np-tv-z0-9]{6}\d{2}$")

# DICOM modality (0008,0060) → MeSH descriptor (name, id). Only codes with a clear descriptor.
MESH_MODALITIES: dict[str, tuple[str, str]] = {
    "CT": ("Tomography, X-Ray Computed", "D014057"),
    "MR": ("Magnetic Resonance Imaging", "D008279"),
    "PT": ("Positron-Emission Tomography", "D049268"),
    "NM": ("Radionuclide Imaging", "D011877"),
    "CR": ("Radiography", "D011859"),
    "DX": ("Radiography", "D011859"),
    "MG": ("Mammography", "D008327"),
    "US": ("Ultrasonography", "D014463"),
    "XA": ("Angiography", "D000792"),
    "RF": ("Fluoroscopy", "D005471"),
    "OCT": ("Tomography, Optical Coherence", "D041623"),
    "OP": ("Photography", "D010781"),
    "SM": ("Microscopy", "D008853"),
    "ECG": ("Electrocardiography", "D004562"),
}
# Body parts (the steward's words or DICOM Body Part Examined, lower-cased) → SNOMED CT body structure.
SNOMED_BODY_PARTS: dict[str, tuple[str, str]] = {
    "lung": ("Lung structure", "39607008"), "lungs": ("Lung structure", "39607008"),
    "chest": ("Thoracic structure", "51185008"), "thorax": ("Thoracic structure", "51185008"),
    "brain": ("Brain structure", "12738006"), "head": ("Head structure", "69536005"),
    "neck": ("Neck structure", "45048000"), "heart": ("Heart structure", "80891009"),
    "liver": ("Liver structure", "10200004"), "breast": ("Breast structure", "76752008"),
    "kidney": ("Kidney structure", "64033007"), "prostate": ("Prostatic structure", "41216001"),
    "abdomen": ("Abdomen structure", "113345001"), "pancreas": ("Pancreatic structure", "15776009"),
    "colon": ("Colon structure", "71854001"), "skin": ("Skin structure", "39937001"),
    "bone": ("Bone structure", "272673000"), "pelvis": ("Pelvis structure", "12921003"),
    "knee": ("Knee region structure", "72696002"), "spine": ("Vertebral column structure", "421060004"),
    "eye": ("Eye structure", "81745001"), "thyroid": ("Thyroid structure", "69748006"),
    "stomach": ("Stomach structure", "69695003"), "esophagus": ("Esophageal structure", "32849002"),
    "bladder": ("Urinary bladder structure", "89837001"), "uterus": ("Uterine structure", "35039007"),
    "ovary": ("Ovarian structure", "15497006"),
}
MESH = {"subjectScheme": "MeSH", "schemeUri": "https://id.nlm.nih.gov/mesh/"}
SNOMED = {"subjectScheme": "SNOMED CT", "schemeUri": "http://snomed.info/sct"}
DICOM_MODALITY = {"subjectScheme": "DICOM Modality (0008,0060)",
                  "schemeUri": "https://dicom.nema.org/medical/dicom/current/output/chtml/part16/sect_CID_29.html"}
FOS = {"subject": "FOS: Clinical medicine", "subjectScheme": "Fields of Science and Technology (FOS)",
       "schemeUri": "http://www.oecd.org/science/inno/38235147.pdf"}
DUO_SCHEME = "http://purl.obolibrary.org/obo/duo.owl"
RESTRICTED = "info:eu-repo/semantics/restrictedAccess"


def orcid_ok(value: str) -> bool:
    """An ORCID iD (0000-0002-1825-0097) with a correct ISO 7064 11,2 check character."""
    if not ORCID_RE.match(value):
        return False
    total = 0
    for ch in value.replace("-", "")[:-1]:
        total = (total + int(ch)) * 2
    check = (12 - total % 11) % 11
    return value[-1] == ("X" if check == 10 else str(check))


def ror_id(value: str | None) -> str | None:
    """The bare ROR id of ``https://ror.org/03yrm5c26`` (or of the id itself); None for anything else."""
    text = (value or "").strip().lower()
    for prefix in ("https://ror.org/", "http://ror.org/", "ror.org/"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.rstrip("/")
    return text if ROR_RE.match(text) else None


@dataclass(frozen=True)
class Creator:
    """A creator: a person (family, given, ORCID) or an organisation; with an affiliation (ROR)."""

    name: str
    kind: Literal["person", "organisation"] = "person"
    given_name: str | None = None
    family_name: str | None = None
    orcid: str | None = None
    affiliation: str | None = None
    ror: str | None = None


@dataclass(frozen=True)
class Related:
    identifier: str
    relation: str  # DataCite relationType, e.g. IsVersionOf
    identifier_type: str = "DOI"
    resource_type: str | None = None  # resourceTypeGeneral of the related resource


@dataclass(frozen=True)
class DoiFacts:
    """What one DOI's record says. ``version`` None is the concept (all versions of the dataset)."""

    doi: str
    url: str
    title: str
    description: str
    publisher: str
    publication_year: int
    accession: str
    hosting_institution: str
    publisher_ror: str | None = None
    creators: Sequence[Creator] = ()
    version: int | None = None
    modalities: Sequence[str] = ()
    organs: Sequence[str] = ()
    keywords: Sequence[str] = ()
    duo_codes: Sequence[str] = ()
    terms_title: str = "Terms of use"
    terms_url: str | None = None
    access_conditions: str = ""
    size_bytes: int | None = None
    file_count: int | None = None
    subjects: int | None = None
    studies: int | None = None
    series: int | None = None
    instances: int | None = None
    annotations: int | None = None
    formats: Sequence[str] = ()
    issued: dt.date | None = None
    updated: dt.date | None = None
    collected: tuple[dt.date, dt.date | None] | None = None
    withdrawn: dt.date | None = None
    withdrawn_reason: str = ""
    related: Sequence[Related] = field(default_factory=tuple)
    language: str = "en"


def _creator(c: Creator) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c.name, "nameType": "Personal" if c.kind == "person" else "Organizational"}
    if c.kind == "person":
        if c.given_name:
            out["givenName"] = c.given_name
        if c.family_name:
            out["familyName"] = c.family_name
        if c.orcid:
            out["nameIdentifiers"] = [{"nameIdentifier": f"https://orcid.org/{c.orcid}",
                                       "nameIdentifierScheme": "ORCID", "schemeUri": "https://orcid.org"}]
    elif c.ror:
        out["nameIdentifiers"] = [{"nameIdentifier": f"https://ror.org/{c.ror}", "nameIdentifierScheme": "ROR",
                                   "schemeUri": "https://ror.org"}]
    if c.affiliation:
        aff: dict[str, Any] = {"name": c.affiliation}
        if c.ror and c.kind == "person":
            aff.update(affiliationIdentifier=f"https://ror.org/{c.ror}", affiliationIdentifierScheme="ROR",
                       schemeUri="https://ror.org")
        out["affiliation"] = [aff]
    return out


def subjects_of(modalities: Sequence[str], organs: Sequence[str], keywords: Sequence[str]) -> list[dict[str, Any]]:
    """Subjects with a scheme where one is known (DICOM modality, MeSH, SNOMED CT), then free keywords."""
    out: list[dict[str, Any]] = [dict(FOS)]
    for code in modalities:
        out.append({"subject": MODALITIES.get(code, code), **DICOM_MODALITY, "classificationCode": code})
        if code in MESH_MODALITIES:
            name, mesh = MESH_MODALITIES[code]
            out.append({"subject": name, **MESH, "valueUri": f"https://id.nlm.nih.gov/mesh/{mesh}",
                        "classificationCode": mesh})
    for organ in organs:
        known = SNOMED_BODY_PARTS.get(organ.strip().lower())
        if known:
            out.append({"subject": known[0], **SNOMED, "valueUri": f"http://snomed.info/id/{known[1]}",
                        "classificationCode": known[1]})
        else:
            out.append({"subject": organ})
    out += [{"subject": k} for k in keywords]
    unique: list[dict[str, Any]] = []
    for s in out:  # e.g. CR and DX share one MeSH descriptor
        if s not in unique:
            unique.append(s)
    return unique


def _rights(f: DoiFacts) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"rights": "Restricted access: apply to the data owner", "rightsUri": RESTRICTED}]
    if f.terms_url:
        out.append({"rights": f.terms_title, "rightsUri": f.terms_url})
    for code in f.duo_codes:
        if code in DUO:
            out.append({"rights": DUO[code][1], "rightsUri": duo_url(code), "rightsIdentifier": code,
                        "rightsIdentifierScheme": "DUO", "schemeUri": DUO_SCHEME})
    return out


def _sizes(f: DoiFacts) -> list[str]:
    sizes = [f"{human_bytes(f.size_bytes)} ({f.size_bytes} bytes)"] if f.size_bytes is not None else []
    for n, what in ((f.file_count, "files"), (f.subjects, "subjects"), (f.studies, "studies"),
                    (f.series, "series"), (f.instances, "DICOM instances"), (f.annotations, "annotations")):
        if n is not None:
            # people's imaging follows the public small-count rule (the record is public); files do not
            sizes.append(f"{n if what == 'files' else small_counts.text(n)} {what}")
    return sizes


def _dates(f: DoiFacts) -> list[dict[str, Any]]:
    dates: list[dict[str, Any]] = []
    if f.issued:
        dates.append({"date": f.issued.isoformat(), "dateType": "Issued"})
    if f.collected:
        start, end = f.collected
        dates.append({"date": f"{start.isoformat()}/{end.isoformat() if end else ''}".rstrip("/"),
                      "dateType": "Collected"})
    if f.updated:
        dates.append({"date": f.updated.isoformat(), "dateType": "Updated"})
    if f.withdrawn:
        dates.append({"date": f.withdrawn.isoformat(), "dateType": "Withdrawn",
                      **({"dateInformation": f.withdrawn_reason} if f.withdrawn_reason else {})})
    return dates


def datacite_attributes(f: DoiFacts) -> dict[str, Any]:
    """The DOI's ``attributes`` for the DataCite REST API (JSON:API), DataCite Metadata Schema 4.6."""
    creators = [_creator(c) for c in f.creators] or [_creator(Creator(f.publisher, "organisation",
                                                                      ror=f.publisher_ror))]
    publisher: dict[str, Any] = {"name": f.publisher}
    if f.publisher_ror:
        publisher.update(publisherIdentifier=f"https://ror.org/{f.publisher_ror}", publisherIdentifierScheme="ROR",
                         schemeUri="https://ror.org/")
    owner: dict[str, Any] = {"name": f.publisher, "nameType": "Organizational", "contributorType": "RightsHolder"}
    if f.publisher_ror:
        owner["nameIdentifiers"] = [{"nameIdentifier": f"https://ror.org/{f.publisher_ror}",
                                     "nameIdentifierScheme": "ROR", "schemeUri": "https://ror.org"}]
    descriptions = [{"description": f.description, "descriptionType": "Abstract"}] if f.description else []
    if f.access_conditions:
        descriptions.append({"description": "Access conditions: " + f.access_conditions, "descriptionType": "Other"})
    if f.withdrawn:
        descriptions.append({"description": "This dataset has been withdrawn"
                             + (f": {f.withdrawn_reason}" if f.withdrawn_reason else "."),
                             "descriptionType": "Other"})
    attrs: dict[str, Any] = {
        "doi": f.doi,
        "url": f.url,
        "types": {"resourceTypeGeneral": "Dataset", "resourceType": "Medical imaging dataset"},
        "creators": creators,
        "titles": [{"title": f.title}],
        "publisher": publisher,
        "publicationYear": str(f.publication_year),
        "subjects": subjects_of(f.modalities, f.organs, f.keywords),
        "contributors": [owner, {"name": f.hosting_institution, "nameType": "Organizational",
                                 "contributorType": "HostingInstitution"}],
        "dates": _dates(f),
        "language": f.language,
        "alternateIdentifiers": [{"alternateIdentifier": f.accession, "alternateIdentifierType": "Accession"}],
        "relatedIdentifiers": [
            {"relatedIdentifier": r.identifier, "relatedIdentifierType": r.identifier_type, "relationType": r.relation,
             **({"resourceTypeGeneral": r.resource_type} if r.resource_type else {})} for r in f.related],
        "sizes": _sizes(f),
        "formats": list(dict.fromkeys(f.formats)),
        "rightsList": _rights(f),
        "descriptions": descriptions,
        "schemaVersion": SCHEMA_VERSION,
    }
    if f.version is not None:
        attrs["version"] = str(f.version)
    return {k: v for k, v in attrs.items() if v not in ([], "", None)}


# -- XML: the same record, element by element --------------------------------------------------
def _el(parent: ET.Element, tag: str, text: str | None = None, **attrib: str | None) -> ET.Element:
    el = ET.SubElement(parent, f"{{{NS}}}{tag}", {k: v for k, v in attrib.items() if v})
    if text is not None:
        el.text = text
    return el


def _name_parts(parent: ET.Element, person: dict[str, Any], name_tag: str) -> None:
    _el(parent, name_tag, person["name"], nameType=person.get("nameType"))
    for key, tag in (("givenName", "givenName"), ("familyName", "familyName")):
        if key in person:
            _el(parent, tag, person[key])
    for ident in person.get("nameIdentifiers", []):
        _el(parent, "nameIdentifier", ident["nameIdentifier"], nameIdentifierScheme=ident["nameIdentifierScheme"],
            schemeURI=ident.get("schemeUri"))
    for aff in person.get("affiliation", []):
        _el(parent, "affiliation", aff["name"], affiliationIdentifier=aff.get("affiliationIdentifier"),
            affiliationIdentifierScheme=aff.get("affiliationIdentifierScheme"), schemeURI=aff.get("schemeUri"))


def attributes_xml(attrs: dict[str, Any]) -> bytes:
    """Kernel-4 XML of ``datacite_attributes`` output (the keys this module writes)."""
    ET.register_namespace("", NS)
    ET.register_namespace("xsi", "http://www.w3.org/2001/XMLSchema-instance")
    root = ET.Element(f"{{{NS}}}resource",
                      {"{http://www.w3.org/2001/XMLSchema-instance}schemaLocation": SCHEMA_LOCATION})
    _el(root, "identifier", attrs["doi"], identifierType="DOI")
    creators = _el(root, "creators")
    for c in attrs["creators"]:
        _name_parts(_el(creators, "creator"), c, "creatorName")
    titles = _el(root, "titles")
    for t in attrs["titles"]:
        _el(titles, "title", t["title"], titleType=t.get("titleType"))
    p = attrs["publisher"]
    _el(root, "publisher", p["name"], publisherIdentifier=p.get("publisherIdentifier"),
        publisherIdentifierScheme=p.get("publisherIdentifierScheme"), schemeURI=p.get("schemeUri"))
    _el(root, "publicationYear", attrs["publicationYear"])
    _el(root, "resourceType", attrs["types"].get("resourceType", ""),
        resourceTypeGeneral=attrs["types"]["resourceTypeGeneral"])
    if attrs.get("subjects"):
        subjects = _el(root, "subjects")
        for s in attrs["subjects"]:
            _el(subjects, "subject", s["subject"], subjectScheme=s.get("subjectScheme"), schemeURI=s.get("schemeUri"),
                valueURI=s.get("valueUri"), classificationCode=s.get("classificationCode"))
    if attrs.get("contributors"):
        contributors = _el(root, "contributors")
        for c in attrs["contributors"]:
            _name_parts(_el(contributors, "contributor", contributorType=c["contributorType"]), c, "contributorName")
    if attrs.get("dates"):
        dates = _el(root, "dates")
        for d in attrs["dates"]:
            _el(dates, "date", d["date"], dateType=d["dateType"], dateInformation=d.get("dateInformation"))
    if attrs.get("language"):
        _el(root, "language", attrs["language"])
    if attrs.get("alternateIdentifiers"):
        alternates = _el(root, "alternateIdentifiers")
        for a in attrs["alternateIdentifiers"]:
            _el(alternates, "alternateIdentifier", a["alternateIdentifier"],
                alternateIdentifierType=a["alternateIdentifierType"])
    if attrs.get("relatedIdentifiers"):
        related = _el(root, "relatedIdentifiers")
        for r in attrs["relatedIdentifiers"]:
            _el(related, "relatedIdentifier", r["relatedIdentifier"], relatedIdentifierType=r["relatedIdentifierType"],
                relationType=r["relationType"], resourceTypeGeneral=r.get("resourceTypeGeneral"))
    for key, wrapper, tag in (("sizes", "sizes", "size"), ("formats", "formats", "format")):
        if attrs.get(key):
            parent = _el(root, wrapper)
            for value in attrs[key]:
                _el(parent, tag, value)
    if attrs.get("version"):
        _el(root, "version", attrs["version"])
    if attrs.get("rightsList"):
        rights = _el(root, "rightsList")
        for r in attrs["rightsList"]:
            _el(rights, "rights", r.get("rights", ""), rightsURI=r.get("rightsUri"),
                rightsIdentifier=r.get("rightsIdentifier"), rightsIdentifierScheme=r.get("rightsIdentifierScheme"),
                schemeURI=r.get("schemeUri"))
    if attrs.get("descriptions"):
        descriptions = _el(root, "descriptions")
        for d in attrs["descriptions"]:
            _el(descriptions, "description", d["description"], descriptionType=d["descriptionType"])
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def datacite_xml(f: DoiFacts) -> bytes:
    """The DOI's record as DataCite kernel-4 XML (schema 4.6), e.g. for OAI-PMH ``oai_datacite``."""
    return attributes_xml(datacite_attributes(f))
