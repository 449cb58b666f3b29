"""The public view of one published entry: its landing and terms pages (texts scrubbed of any
person's e-mail address) and the schema.org Dataset JSON-LD that search engines read from them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..archive.models import ArchiveFile, DatasetFile, DatasetVersion
from ..errors import NotFound
from ..text import human_bytes
from .dois import RESOLVING, findable_dois
from .entries import latest_released
from .images import images_of
from .models import HOLDS_ADDRESS, CatalogEntry, CatalogImage, Doi, public_face
from .privacy import scrubber
from .search import snippet
from .vocab import DUO, MODALITIES, NO_METHODS, duo_url

# ``listener(request, response, dataset_id)`` for every landing page served (stats counts views):
# added by other capabilities with ``config.add_hook(VIEW_LISTENERS, …)``.
VIEW_LISTENERS: list[Callable[[Any, Any, str], None]] = []
# Notices shown on an entry's page, from other capabilities (federation: "Mirror of <origin>"):
# ``notice(session, dataset_id) -> {"origin", "origin_base", "url"} | None``.
NOTICES: list[Callable[[Any, str], dict[str, str] | None]] = []


def public_entry(session: Session, slug: str) -> CatalogEntry:
    entry = session.scalar(select(CatalogEntry).where(CatalogEntry.slug == slug.lower(), HOLDS_ADDRESS))
    if entry is None or not entry.published:
        raise NotFound("no such dataset in the catalogue")
    return entry


def landing_url(session: Session, dataset_id: str) -> str | None:
    """`archive.web.LANDING_PAGES` entry: the dataset's landing page, while its entry is published."""
    slug = session.scalar(select(CatalogEntry.slug).where(CatalogEntry.dataset_id == dataset_id,
                                                          CatalogEntry.published.is_(True)))
    return f"/catalog/{slug}" if slug else None


def public_image(session: Session, slug: str, position: int) -> CatalogImage:
    entry = public_entry(session, slug)
    image = session.get(CatalogImage, (entry.id, position))
    if image is None:
        raise NotFound("no such image")
    return image


@dataclass
class Tombstone:
    """What stays of a withdrawn entry that has a DOI: the page its DOI resolves to (HTTP 410)."""

    title: str
    doi: str
    doi_url: str
    withdrawn_at: dt.datetime | None
    reason: str
    how_to_cite: str
    data_owner: str
    canonical: str
    site_name: str
    origin: str = ""  # a mirror withdrawn by its origin hub (federation): that hub's name and the page there
    origin_url: str = ""


def tombstone(session: Session, slug: str, *, base_url: str, site_name: str) -> Tombstone | None:
    """The tombstone of a withdrawn entry whose DOI still resolves, or of a mirror its origin hub withdrew (a
    ``NOTICES`` entry saying ``withdrawn``); None when there is none (then 404)."""
    entry = session.scalar(select(CatalogEntry).where(CatalogEntry.slug == slug.lower(), HOLDS_ADDRESS))
    if entry is None or entry.published or entry.withdrawn_at is None:
        return None
    shown = public_face(entry)  # as it was withdrawn: the row may hold a draft its stewards prepare since
    doi = shown.doi or _resolving_concept_doi(session, entry.dataset_id)
    origin = next((n for n in (notice(session, entry.dataset_id) for notice in NOTICES) if n and n.get("withdrawn")),
                  None)
    if doi is None and origin is None:
        return None
    scrub = scrubber(session, [shown.title, entry.withdrawn_reason, shown.how_to_cite, shown.data_owner])
    return Tombstone(title=scrub(shown.title), doi=doi or "", doi_url=f"https://doi.org/{doi}" if doi else "",
                     origin=origin["origin"] if origin else "", origin_url=origin["url"] if origin else "",
                     withdrawn_at=entry.withdrawn_at, reason=scrub(entry.withdrawn_reason),
                     how_to_cite=scrub(shown.how_to_cite), data_owner=scrub(shown.data_owner),
                     canonical=f"{base_url.rstrip('/')}/catalog/{entry.slug}", site_name=site_name)


def _resolving_concept_doi(session: Session, dataset_id: str) -> str | None:
    """The hub's own concept DOI once it resolves (hidden ones do: the tombstone is where they lead)."""
    return session.scalar(select(Doi.doi).where(Doi.dataset_id == dataset_id, Doi.version.is_(None),
                                                Doi.state.in_(RESOLVING)))


@dataclass
class DuoTerm:
    code: str
    short: str
    label: str
    meaning: str
    url: str


@dataclass
class ImageView:
    position: int
    url: str  # absolute
    alt: str
    width: int
    height: int


@dataclass
class LandingView:
    """What a landing page shows: texts already scrubbed of any person's e-mail address."""

    entry: CatalogEntry
    title: str
    description: str
    why_apply: str
    data_owner: str
    access_conditions: str
    how_to_cite: str
    terms_title: str
    terms_text: str
    organs: list[str]
    keywords: list[str]
    variables: list[str]
    contact_email: str | None
    modalities: list[tuple[str, str]]
    duo: list[DuoTerm]
    ai_forbidden: bool
    version: DatasetVersion | None
    size_bytes: int | None
    file_count: int | None
    time_start: dt.date | None
    time_end: dt.date | None
    time_from_archive: bool
    images: list[ImageView]
    canonical: str
    terms_url: str
    catalog_url: str
    apply_url: str
    apply_external: bool
    og_image: ImageView
    doi_url: str | None
    site_name: str
    doi: str | None = None  # the effective DOI: the hub's findable concept DOI, or the steward's own
    version_dois: list[tuple[int, str]] = field(default_factory=list)  # findable version DOIs
    applicant_download: bool = False  # the dataset's access policy: download, or in-platform use only
    jsonld: dict[str, Any] = field(default_factory=dict)

    @property
    def use_label(self) -> str:
        return ("Approved users may download to their own machines" if self.applicant_download
                else "In-platform use only: approved users work with the data on the hub")

    @property
    def short_description(self) -> str:
        return snippet(self.description, 200)


def _archive_span(session: Session, version: DatasetVersion) -> tuple[dt.date | None, dt.date | None]:
    first = session.scalar(select(func.min(ArchiveFile.ingested_at)).join(
        DatasetFile, DatasetFile.file_id == ArchiveFile.id).where(DatasetFile.version_id == version.id))
    last = version.released_at
    return (first.date() if first else None), (last.date() if last else None)


def landing_view(session: Session, entry: CatalogEntry, *, base_url: str, site_name: str,
                 version: DatasetVersion | None = None) -> LandingView:
    """The page's facts at ``version`` (default: the latest released one)."""
    base = base_url.rstrip("/")
    canonical = f"{base}/catalog/{entry.slug}"
    texts = [entry.title, entry.description, entry.why_apply, entry.data_owner, entry.access_conditions,
             entry.how_to_cite, entry.terms_title, entry.terms_text, entry.contact_email or "",
             *entry.organs, *entry.keywords, *entry.variables]
    scrub = scrubber(session, texts)
    version = version or latest_released(session, entry.dataset_id)
    start, end, from_archive = entry.time_start, entry.time_end, False
    if start is None and version is not None:
        start, end = _archive_span(session, version)
        from_archive = start is not None
    images = [ImageView(i.position, f"{canonical}/images/{i.position}.png", scrub(i.alt), i.width, i.height)
              for i in images_of(session, entry)]
    og_image = images[0] if images else ImageView(0, f"{canonical}/card.png", f"{site_name} dataset catalogue",
                                                  600, 315)
    doi, version_dois = entry.doi, list[tuple[int, str]]()
    if not doi:
        doi, version_dois = findable_dois(session, entry.dataset_id)
    contact = entry.contact_email
    if contact and scrub(contact) != contact:
        contact = None  # the address has since become a person's: never show it
    view = LandingView(
        entry=entry, title=scrub(entry.title), description=scrub(entry.description),
        why_apply=scrub(entry.why_apply), data_owner=scrub(entry.data_owner),
        access_conditions=scrub(entry.access_conditions), how_to_cite=scrub(entry.how_to_cite),
        terms_title=scrub(entry.terms_title), terms_text=scrub(entry.terms_text),
        organs=[scrub(o) for o in entry.organs], keywords=[scrub(k) for k in entry.keywords],
        variables=[scrub(v) for v in entry.variables], contact_email=contact,
        modalities=[(m, MODALITIES.get(m, m)) for m in entry.modalities],
        duo=[DuoTerm(c, *DUO[c], duo_url(c)) for c in entry.duo_codes if c in DUO],
        ai_forbidden=NO_METHODS in entry.duo_codes, version=version,
        size_bytes=entry.size_bytes if entry.size_bytes is not None else (version.total_bytes if version else None),
        file_count=version.file_count if version else None,
        time_start=start, time_end=end, time_from_archive=from_archive, images=images, canonical=canonical,
        terms_url=f"{canonical}/terms", catalog_url=f"{base}/catalog",
        apply_url=(entry.external_url or "") if entry.apply_mode == "external" else f"/apply/{entry.dataset_id}",
        apply_external=entry.apply_mode == "external", og_image=og_image,
        doi_url=f"https://doi.org/{doi}" if doi else None, site_name=site_name, doi=doi, version_dois=version_dois,
        applicant_download=_applicant_download(session, entry.dataset_id),
    )
    view.jsonld = dataset_jsonld(view, base)
    return view


def public_version(session: Session, entry: CatalogEntry, number: int) -> DatasetVersion:
    """A released (or deprecated) version of a published entry's dataset; drafts are nobody's business."""
    version = session.scalar(select(DatasetVersion).where(
        DatasetVersion.dataset_id == entry.dataset_id, DatasetVersion.number == number,
        DatasetVersion.state.in_(("released", "deprecated"))))
    if version is None:
        raise NotFound("no such released version of this dataset")
    return version


def _applicant_download(session: Session, dataset_id: str) -> bool:
    from ..access.grants import applicant_download  # the access capability owns the policy

    return applicant_download(session, dataset_id)


def conditions_text(view: LandingView) -> str:
    how = ("Apply to the data owner through their own process at " + view.apply_url if view.apply_external
           else "Apply for access on this page; the data owner decides on each application")
    parts = [view.access_conditions, how + ".", view.use_label + "."]
    if view.duo:
        parts.append("Data use conditions (GA4GH DUO): " + "; ".join(f"{d.label} ({d.code})" for d in view.duo)
                     + ".")
    if view.ai_forbidden:
        parts.append("Methods development, including training AI models, is not permitted (DUO:0000015).")
    return " ".join(p.strip() for p in parts if p.strip())


def temporal_coverage(start: dt.date | None, end: dt.date | None) -> str | None:
    if start is None:
        return None
    return f"{start.isoformat()}/{end.isoformat() if end else '..'}"


def _schema_creator(c: dict[str, str]) -> dict[str, Any]:
    person = c.get("kind", "person") == "person"
    out: dict[str, Any] = {"@type": "Person" if person else "Organization", "name": c["name"]}
    if person:
        out.update({k: c[f] for k, f in (("givenName", "given_name"), ("familyName", "family_name")) if c.get(f)})
        if c.get("orcid"):
            out["@id"] = out["sameAs"] = f"https://orcid.org/{c['orcid']}"
    if c.get("affiliation") or (c.get("ror") and not person):
        org: dict[str, Any] = {"@type": "Organization", "name": c.get("affiliation") or c["name"]}
        if c.get("ror"):
            org["sameAs"] = f"https://ror.org/{c['ror']}"
        if person:
            out["affiliation"] = org
        elif c.get("ror"):
            out["sameAs"] = org["sameAs"]
    return out


def dataset_jsonld(view: LandingView, base: str) -> dict[str, Any]:
    """schema.org Dataset with Google's required and recommended properties, following the
    restricted-data recipe: honest isAccessibleForFree, conditionsOfAccess, licence = the terms
    page, and a distribution that names formats and size but never a data URL."""
    e = view.entry
    accession = {"@type": "PropertyValue", "propertyID": f"{view.site_name} accession", "value": e.dataset_id,
                 "url": view.canonical}
    owner: dict[str, Any] = {"@type": "Organization", "name": view.data_owner}
    if e.data_owner_url:
        owner.update(url=e.data_owner_url, sameAs=e.data_owner_url)
    # as DataCite cites them (persons with their ORCID iD, affiliations with their ROR id), else the owner
    creator = [_schema_creator(c) for c in e.creators] if e.creators else owner
    variables = view.variables or (
        [f"{name} images" for _, name in view.modalities]
        + (["Expert annotations"] if e.annotations else []))
    keywords = list(dict.fromkeys(
        [name for _, name in view.modalities] + [m for m, _ in view.modalities] + view.organs + view.keywords
        + [d.label for d in view.duo] + ["medical imaging", "controlled access"]))
    data: dict[str, Any] = {
        "@context": "https://schema.org/",
        "@type": "Dataset",
        "@id": view.canonical,
        "name": view.title,
        "description": view.description,
        "url": view.canonical,
        "identifier": ([view.doi_url] if view.doi_url else [view.canonical]) + [accession],
        "alternateName": e.dataset_id,
        "creator": creator,
        "publisher": {"@type": "Organization", "name": view.site_name, "url": base + "/"},
        "license": view.terms_url,
        "usageInfo": view.terms_url,
        "isAccessibleForFree": False,
        "conditionsOfAccess": conditions_text(view),
        "keywords": keywords,
        "variableMeasured": [{"@type": "PropertyValue", "name": v} for v in variables],
        "measurementTechnique": [name for _, name in view.modalities],
        "about": [{"@type": "AnatomicalStructure", "name": o} for o in view.organs],
        "includedInDataCatalog": {"@type": "DataCatalog", "name": f"{view.site_name} dataset catalogue",
                                  "url": view.catalog_url},
        "image": [i.url for i in view.images] or [view.og_image.url],
        "thumbnailUrl": view.og_image.url,
        "datePublished": e.published_at.date().isoformat() if e.published_at else None,
        "dateModified": e.updated_at.date().isoformat() if e.updated_at else None,
        "citation": view.how_to_cite or None,
    }
    if view.doi_url:
        data["sameAs"] = view.doi_url
    if view.version is not None:
        data["version"] = str(view.version.number)
    coverage = temporal_coverage(view.time_start, view.time_end)
    if coverage:
        data["temporalCoverage"] = coverage
    distribution: dict[str, Any] = {
        "@type": "DataDownload",
        "name": "Controlled-access files (by approved application only; no public download)",
        "encodingFormat": "application/crypt4gh",
        "description": "Files are kept encrypted in the hub's archive. "
                       + ("Approved applicants may download them, re-encrypted to their own key; "
                          if view.applicant_download else
                          "Approved applicants use them in the platform only (no download to own machines); ")
                       + "apply for access from the landing page.",
    }
    if view.size_bytes:
        distribution["contentSize"] = human_bytes(view.size_bytes)
    data["distribution"] = [distribution]
    return {k: v for k, v in data.items() if v not in (None, [], "")}

