"""The public dataset catalogue: entries (one per dataset), publishing, search, landing-page views,
schema.org JSON-LD and sitemaps.

Stewards (members of the dataset's owning project with write-data) edit and publish; everyone else
sees published entries only, and an unpublished entry does not exist for them. An entry is
metadata only: nothing here ever points at data bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import case, delete, func, select
from sqlalchemy.orm import Session

from ..archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..audit import service as audit
from ..db import utcnow
from ..errors import Conflict, Invalid, NotFound
from ..identity.models import User
from ..identity.principal import Principal
from ..projects import service as projects
from ..projects.models import Project
from ..text import human_bytes
from . import png
from .models import CatalogEntry, CatalogFacet, CatalogImage
from .vocab import ACCESS_LABELS, DUO, DUO_PERMISSIONS, MODALITIES, NO_METHODS, USE_LABELS, duo_url

# A sitemap holds at most this many URLs; above it /sitemap.xml becomes an index of child sitemaps.
# (The protocol allows 50,000; smaller files are rebuilt faster. Tests lower it.)
SITEMAP_MAX_URLS = 5000
MAX_IMAGES = 8
MAX_IMAGE_BYTES = 512 * 1024
PAGE_SIZE = 20

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,78}[a-z0-9]$")
DOI_RE = re.compile(r"^10\.\d{4,9}/[^\s]+$")
EMAIL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
WITHHELD = "[address withheld]"


# -- input -------------------------------------------------------------------------------------
@dataclass
class EntryFields:
    """Everything a steward edits. Lists are plain lists of strings; dates are ``datetime.date``."""

    slug: str = ""
    title: str = ""
    description: str = ""
    why_apply: str = ""
    data_owner: str = ""
    data_owner_url: str | None = None
    modalities: list[str] = field(default_factory=list)
    organs: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)
    subjects: int | None = None
    studies: int | None = None
    series: int | None = None
    annotations: int | None = None
    size_bytes: int | None = None
    time_start: dt.date | None = None
    time_end: dt.date | None = None
    terms_title: str = "Terms of use"
    terms_text: str = ""
    access_conditions: str = ""
    duo_codes: list[str] = field(default_factory=list)
    how_to_cite: str = ""
    doi: str | None = None
    contact_email: str | None = None
    apply_mode: str = "hub"
    external_url: str | None = None

    @classmethod
    def of(cls, entry: CatalogEntry) -> EntryFields:
        return cls(**{f.name: getattr(entry, f.name) for f in fields(cls)})


TEXT_FIELDS = ("title", "description", "why_apply", "data_owner", "terms_title", "terms_text",
               "access_conditions", "how_to_cite")
LIST_FIELDS = ("organs", "keywords", "variables")


def _text(value: str, name: str, max_len: int, *, multiline: bool = True) -> str:
    value = (value or "").replace("\r\n", "\n").strip()
    if _CONTROL.search(value) or (not multiline and "\n" in value):
        raise Invalid(f"{name} contains control characters")
    if len(value) > max_len:
        raise Invalid(f"{name} may be at most {max_len} characters (it has {len(value)})")
    return value


def _list(values: Iterable[str], name: str, max_items: int, max_len: int) -> list[str]:
    out: list[str] = []
    for raw in values:
        v = " ".join(str(raw).split())
        if not v:
            continue
        if len(v) > max_len or _CONTROL.search(v):
            raise Invalid(f"each of {name} must be a plain value of at most {max_len} characters")
        if v.lower() not in (o.lower() for o in out):
            out.append(v)
    if len(out) > max_items:
        raise Invalid(f"at most {max_items} {name}")
    return out


def _url(value: str | None, name: str) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc or len(value) > 1000 or _CONTROL.search(value):
        raise Invalid(f"{name} must be an http(s) address")
    return value


def normalise_doi(value: str | None) -> str | None:
    value = (value or "").strip()
    for prefix in ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:"):
        if value.lower().startswith(prefix):
            value = value[len(prefix):]
    if not value:
        return None
    if not DOI_RE.match(value):
        raise Invalid("a DOI looks like 10.1234/abc (a doi.org link is fine too)")
    if value.startswith("10.5072/"):
        raise Invalid("10.5072 is DataCite's retired test prefix; use your own prefix")
    return value


def _user_emails(session: Session, candidates: Iterable[str]) -> set[str]:
    """Which of these addresses belong to a person (any user of the hub), lower-cased."""
    wanted = {c.lower() for c in candidates}
    if not wanted:
        return set()
    rows = session.scalars(select(func.lower(User.email)).where(func.lower(User.email).in_(wanted)))
    return {r for r in rows if r}


def _clean(session: Session, f: EntryFields) -> EntryFields:
    """Validate and normalise field formats (completeness is checked when publishing)."""
    from email_validator import EmailNotValidError, validate_email

    slug = (f.slug or "").strip().lower()
    if not SLUG_RE.match(slug):
        raise Invalid("the public address (slug) must be 3-80 characters: lower-case letters, digits and '-'")
    out = replace(
        f, slug=slug,
        title=_text(f.title, "title", 300, multiline=False),
        description=_text(f.description, "description", 5000),
        why_apply=_text(f.why_apply, "why apply", 3000),
        data_owner=_text(f.data_owner, "data owner", 200, multiline=False),
        data_owner_url=_url(f.data_owner_url, "data owner web address"),
        organs=_list(f.organs, "body parts/organs", 20, 60),
        keywords=_list(f.keywords, "keywords", 30, 60),
        variables=_list(f.variables, "measured variables", 30, 200),
        terms_title=_text(f.terms_title, "terms title", 200, multiline=False) or "Terms of use",
        terms_text=_text(f.terms_text, "terms", 50_000),
        access_conditions=_text(f.access_conditions, "access conditions", 5000),
        how_to_cite=_text(f.how_to_cite, "how to cite", 2000),
        doi=normalise_doi(f.doi),
    )
    if not out.title:
        raise Invalid("a catalogue entry needs a title")
    if "@" in out.data_owner:
        raise Invalid("the data owner is an organisation's name, not an e-mail address")
    modalities = []
    for m in f.modalities:
        code = str(m).strip().upper()
        if code and code not in MODALITIES:
            raise Invalid(f"unknown modality {code!r}; use DICOM modality codes such as CT, MR, PT, CR, MG, SM")
        if code and code not in modalities:
            modalities.append(code)
    out.modalities = modalities
    codes = []
    for c in f.duo_codes:
        code = str(c).strip().upper().replace("_", ":")
        if code and code not in DUO:
            raise Invalid(f"unknown DUO code {code!r} (expected e.g. DUO:0000006)")
        if code and code not in codes:
            codes.append(code)
    if sum(c in DUO_PERMISSIONS for c in codes) > 1:
        raise Invalid("choose one DUO permission (NRES, GRU, HMB, DS, POA or CC); the others are modifiers")
    out.duo_codes = codes
    for name in ("subjects", "studies", "series", "annotations", "size_bytes"):
        value = getattr(out, name)
        if value is not None and not (0 <= int(value) <= 10**15):
            raise Invalid(f"{name.replace('_', ' ')} must be a whole number ≥ 0")
    if out.time_end and not out.time_start:
        raise Invalid("a time span needs a start (an end alone is not a span)")
    if out.time_start and out.time_end and out.time_end < out.time_start:
        raise Invalid("the time span ends before it starts")
    if out.apply_mode not in ("hub", "external"):
        raise Invalid("apply mode is 'hub' or 'external'")
    out.external_url = _url(f.external_url, "external application address")
    if out.apply_mode == "external" and not out.external_url:
        raise Invalid("external applications need the data owner's application address")
    contact = (f.contact_email or "").strip()
    if contact:
        try:
            contact = validate_email(contact, check_deliverability=False).normalized.lower()
        except EmailNotValidError as exc:
            raise Invalid(f"contact address: {exc}") from None
        if _user_emails(session, [contact]):
            raise Invalid("the contact must be a role address (e.g. data-access@…), not a person's own e-mail")
    out.contact_email = contact or None
    # No person's e-mail may reach a public page through any free text.
    for name in TEXT_FIELDS + LIST_FIELDS:
        value = getattr(out, name)
        found = EMAIL_RE.findall(value if isinstance(value, str) else " ".join(value))
        if _user_emails(session, found):
            raise Invalid(f"{name.replace('_', ' ')} contains a person's e-mail address; public pages may only "
                          "show the entry's role contact address")
    return out


def _missing_for_publishing(entry: CatalogEntry) -> list[str]:
    missing = []
    if not 50 <= len(entry.description) <= 5000:
        missing.append("a description of 50-5000 characters")
    for name, label in (("data_owner", "the data owner"), ("terms_text", "terms of use"),
                        ("access_conditions", "access conditions"), ("how_to_cite", "how to cite"),
                        ("contact_email", "a role contact address")):
        if not getattr(entry, name):
            missing.append(label)
    if not entry.modalities:
        missing.append("at least one modality")
    if not any(c in DUO_PERMISSIONS for c in entry.duo_codes):
        missing.append("a DUO permission code (e.g. DUO:0000006 health/medical/biomedical research)")
    return missing


# -- stewards ----------------------------------------------------------------------------------
def steward_dataset(session: Session, principal: Principal, dataset_id: str) -> tuple[Dataset,
                                                                                    projects.ProjectAccess]:
    """The dataset for a member of its owning project with write-data; NotFound for everyone else."""
    ds = session.get(Dataset, dataset_id)
    project = session.get(Project, ds.project_id) if ds else None
    if ds is None or project is None:
        raise NotFound("no such dataset")
    try:
        access = projects.open_project(session, principal, project.slug)
    except NotFound:
        raise NotFound("no such dataset") from None
    access.require("write-data")
    return ds, access


def entry_for(session: Session, dataset_id: str) -> CatalogEntry | None:
    return session.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == dataset_id))


def steward_entry(session: Session, principal: Principal, dataset_id: str) -> tuple[Dataset, CatalogEntry | None]:
    ds, _ = steward_dataset(session, principal, dataset_id)
    return ds, entry_for(session, ds.id)


def suggested_fields(ds: Dataset) -> EntryFields:
    slug = re.sub(r"[^a-z0-9]+", "-", ds.title.lower()).strip("-")[:60].strip("-")
    if len(slug) < 3:
        slug = ds.id.lower()
    return EntryFields(slug=slug, title=ds.title, description=ds.description)


def save_entry(session: Session, principal: Principal, dataset_id: str, data: EntryFields) -> CatalogEntry:
    """Create or update the dataset's catalogue entry. A published entry must stay publishable."""
    ds, access = steward_dataset(session, principal, dataset_id)
    clean = _clean(session, data)
    entry = entry_for(session, ds.id)
    clash = session.scalar(select(CatalogEntry.id).where(CatalogEntry.slug == clean.slug,
                                                          CatalogEntry.dataset_id != ds.id))
    if clash is not None:
        raise Conflict(f"the public address /catalog/{clean.slug} is taken by another dataset")
    created = entry is None
    if entry is None:
        entry = CatalogEntry(dataset_id=ds.id, created_by=principal.user.id, published=False)
        session.add(entry)
        changed = sorted(f.name for f in fields(EntryFields))
    else:
        if entry.published_at is not None and clean.slug != entry.slug:
            raise Conflict("the public address cannot change once the entry has been published: "
                           "links and citations point at it")
        changed = sorted(f.name for f in fields(EntryFields) if getattr(entry, f.name) != getattr(clean, f.name))
    for f in fields(EntryFields):
        setattr(entry, f.name, getattr(clean, f.name))
    if entry.published:
        missing = _missing_for_publishing(entry)
        if missing:
            raise Invalid("a published entry must stay complete; missing: " + "; ".join(missing))
    entry.updated_at = utcnow()
    session.flush()
    if created:
        for provider in INDEX_PROVIDERS:  # e.g. imaging: counts of what was imported so far
            provider(session, entry)
    _reindex(session, entry)
    audit.record(session, principal.actor, "catalog.entry.created" if created else "catalog.entry.updated",
                 project_id=access.project.id, target=f"dataset:{ds.id}",
                 details={"slug": entry.slug, "fields": changed})
    return entry


# Capabilities that know facts about a dataset's content fill them into a new entry (see ``apply_index``).
INDEX_PROVIDERS: list[Callable[[Session, CatalogEntry], None]] = []


def apply_index(session: Session, entry: CatalogEntry, *, modalities: Iterable[str] = (),
                organs: Iterable[str] = (), manufacturers: Iterable[str] = (), subjects: int | None = None,
                studies: int | None = None, series: int | None = None, instances: int | None = None,
                size_bytes: int | None = None) -> None:
    """Facts measured from the data (e.g. by the DICOM import) into an entry: counts are replaced,
    lists are merged with what the steward wrote. Known modality codes only."""
    entry.modalities = entry.modalities + [m for m in dict.fromkeys(modalities)
                                           if m in MODALITIES and m not in entry.modalities]
    have = {o.lower() for o in entry.organs}
    entry.organs = entry.organs + [o.lower() for o in dict.fromkeys(organs) if o and o.lower() not in have][:50]
    entry.manufacturers = sorted(set(entry.manufacturers or []) | {m for m in manufacturers if m})[:50]
    for name, value in (("subjects", subjects), ("studies", studies), ("series", series),
                        ("instances", instances), ("size_bytes", size_bytes)):
        if value is not None:
            setattr(entry, name, value)
    entry.updated_at = utcnow()
    session.flush()
    _reindex(session, entry)


def _require_entry(session: Session, principal: Principal, dataset_id: str) -> tuple[Dataset, CatalogEntry,
                                                                                    projects.ProjectAccess]:
    ds, access = steward_dataset(session, principal, dataset_id)
    entry = entry_for(session, ds.id)
    if entry is None:
        raise NotFound("this dataset has no catalogue entry yet")
    return ds, entry, access


def publish(session: Session, principal: Principal, dataset_id: str) -> CatalogEntry:
    ds, entry, access = _require_entry(session, principal, dataset_id)
    missing = _missing_for_publishing(entry)
    if latest_released(session, ds.id) is None:
        missing.append("a released version of the dataset")
    if missing:
        raise Invalid("before publishing, add " + "; ".join(missing))
    if not entry.published:
        entry.published, entry.published_at, entry.updated_at = True, entry.published_at or utcnow(), utcnow()
        audit.record(session, principal.actor, "catalog.entry.published", project_id=access.project.id,
                     target=f"dataset:{ds.id}", details={"slug": entry.slug})
    return entry


def unpublish(session: Session, principal: Principal, dataset_id: str) -> CatalogEntry:
    ds, entry, access = _require_entry(session, principal, dataset_id)
    if entry.published:
        entry.published, entry.updated_at = False, utcnow()
        audit.record(session, principal.actor, "catalog.entry.unpublished", project_id=access.project.id,
                     target=f"dataset:{ds.id}", details={"slug": entry.slug})
    return entry


def add_image(session: Session, principal: Principal, dataset_id: str, data: bytes, alt: str) -> CatalogImage:
    """Add a de-identified sample thumbnail. Only PNG pixels are kept (text/EXIF chunks dropped)."""
    ds, entry, access = _require_entry(session, principal, dataset_id)
    if len(data) > MAX_IMAGE_BYTES:
        raise Invalid(f"a sample image may be at most {MAX_IMAGE_BYTES // 1024} kB")
    try:
        info = png.clean(data)
    except png.BadPng as exc:
        raise Invalid(f"sample images must be PNG thumbnails: {exc}") from None
    alt = _text(alt, "image description", 300, multiline=False)
    if not alt:
        raise Invalid("describe the image (alternative text) for people who cannot see it")
    if _user_emails(session, EMAIL_RE.findall(alt)):
        raise Invalid("the image description contains a person's e-mail address")
    images = list(session.scalars(select(CatalogImage).where(CatalogImage.entry_id == entry.id)))
    if len(images) >= MAX_IMAGES:
        raise Invalid(f"at most {MAX_IMAGES} sample images")
    image = CatalogImage(entry_id=entry.id, position=max((i.position for i in images), default=0) + 1,
                         png=info.data, width=info.width, height=info.height, alt=alt,
                         sha256=hashlib.sha256(info.data).hexdigest())
    session.add(image)
    entry.updated_at = utcnow()
    audit.record(session, principal.actor, "catalog.image.added", project_id=access.project.id,
                 target=f"dataset:{ds.id}", details={"position": image.position, "sha256": image.sha256,
                                                     "width": info.width, "height": info.height})
    session.flush()
    return image


def remove_image(session: Session, principal: Principal, dataset_id: str, position: int) -> None:
    ds, entry, access = _require_entry(session, principal, dataset_id)
    image = session.get(CatalogImage, (entry.id, position))
    if image is None:
        raise NotFound("no such image")
    session.delete(image)
    entry.updated_at = utcnow()
    audit.record(session, principal.actor, "catalog.image.removed", project_id=access.project.id,
                 target=f"dataset:{ds.id}", details={"position": position})


def images_of(session: Session, entry: CatalogEntry) -> list[CatalogImage]:
    return list(session.scalars(select(CatalogImage).where(CatalogImage.entry_id == entry.id)
                                .order_by(CatalogImage.position)))


def steward_image(session: Session, principal: Principal, dataset_id: str, position: int) -> CatalogImage:
    _, entry, _ = _require_entry(session, principal, dataset_id)
    image = session.get(CatalogImage, (entry.id, position))
    if image is None:
        raise NotFound("no such image")
    return image


# -- facets and search -------------------------------------------------------------------------
def facet_values(entry: CatalogEntry) -> set[tuple[str, str]]:
    values = {("modality", m) for m in entry.modalities}
    values |= {("organ", o.lower()[:100]) for o in entry.organs}
    values.add(("access", entry.apply_mode))
    values.add(("use", "no-methods" if NO_METHODS in entry.duo_codes else "methods-allowed"))
    return values


def _reindex(session: Session, entry: CatalogEntry) -> None:
    session.execute(delete(CatalogFacet).where(CatalogFacet.entry_id == entry.id))
    session.add_all(CatalogFacet(entry_id=entry.id, facet=f, value=v) for f, v in sorted(facet_values(entry)))
    words = [entry.slug, entry.dataset_id, entry.title, entry.description, entry.why_apply, entry.data_owner,
             *entry.modalities, *(MODALITIES.get(m, "") for m in entry.modalities), *entry.organs,
             *entry.keywords, *entry.variables, *(DUO[c][0] + " " + DUO[c][1] for c in entry.duo_codes if c in DUO)]
    entry.search_text = " ".join(" ".join(words).lower().split())


FACETS = ("modality", "organ", "access", "use")
FACET_HEADINGS = {"modality": "Modality", "organ": "Body part / organ", "access": "Access",
                  "use": "Permitted use"}


def facet_label(facet: str, value: str) -> str:
    if facet == "modality":
        return f"{MODALITIES.get(value, value)} ({value})"
    if facet == "access":
        return ACCESS_LABELS.get(value, value)
    if facet == "use":
        return USE_LABELS.get(value, value)
    return value[:1].upper() + value[1:]


@dataclass
class FacetValue:
    value: str
    label: str
    count: int
    selected: bool


@dataclass
class EntryCard:
    """One search hit as the public sees it (texts scrubbed of any person's e-mail address)."""

    slug: str
    title: str
    data_owner: str
    snippet: str
    modalities: list[str]
    organs: list[str]
    apply_mode: str
    no_methods: bool
    subjects: int | None
    series: int | None
    thumbnail: int | None  # position of the first sample image


@dataclass
class SearchResult:
    query: str
    selected: dict[str, list[str]]
    entries: list[EntryCard]
    total: int
    page: int
    pages: int
    facets: dict[str, list[FacetValue]]


def _like(token: str) -> str:
    return "%" + token.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search(session: Session, query: str = "", selected: dict[str, list[str]] | None = None, *,
           page: int = 1, per_page: int | None = None) -> SearchResult:
    """Published entries matching every word of ``query`` and, per facet, any selected value
    (values of different facets must all match). Facet counts follow the standard
    disjunctive rule: each facet is counted with every filter except its own."""
    query = " ".join((query or "").split())[:200]
    selected = {f: sorted({v.lower() if f == "organ" else v for v in vs if v})[:50]
                for f, vs in (selected or {}).items() if f in FACETS}
    selected = {f: vs for f, vs in selected.items() if vs}
    tokens = query.lower().split()[:8]
    per_page = per_page or PAGE_SIZE

    def matching(skip: str | None = None):  # noqa: ANN202 - a select of entry ids
        stmt = select(CatalogEntry.id).where(CatalogEntry.published.is_(True))
        for token in tokens:
            stmt = stmt.where(CatalogEntry.search_text.like(_like(token), escape="\\"))
        for facet, values in selected.items():
            if facet != skip:
                stmt = stmt.where(CatalogEntry.id.in_(select(CatalogFacet.entry_id).where(
                    CatalogFacet.facet == facet, CatalogFacet.value.in_(values))))
        return stmt

    ids = matching().subquery()
    total = session.scalar(select(func.count()).select_from(ids)) or 0
    pages = max(1, math.ceil(total / per_page))
    page = min(max(page, 1), pages)
    order = [CatalogEntry.title, CatalogEntry.id]
    if tokens:
        order.insert(0, case((func.lower(CatalogEntry.title).like(_like(tokens[0]), escape="\\"), 0), else_=1))
    entries = list(session.scalars(select(CatalogEntry).where(CatalogEntry.id.in_(select(ids.c.id)))
                                   .order_by(*order).offset((page - 1) * per_page).limit(per_page)))
    facets: dict[str, list[FacetValue]] = {}
    for facet in FACETS:
        rows = session.execute(
            select(CatalogFacet.value, func.count(CatalogFacet.entry_id))
            .where(CatalogFacet.facet == facet, CatalogFacet.entry_id.in_(matching(skip=facet)))
            .group_by(CatalogFacet.value)).all()
        counts = dict(rows)
        for value in selected.get(facet, []):
            counts.setdefault(value, 0)  # a selected value stays visible (to untick it) even at 0
        facets[facet] = sorted((FacetValue(v, facet_label(facet, v), n, v in selected.get(facet, []))
                                for v, n in counts.items()), key=lambda fv: (-fv.count, fv.label))
    thumbs: dict[int, int] = {}
    if entries:
        for entry_id, position in session.execute(
                select(CatalogImage.entry_id, func.min(CatalogImage.position))
                .where(CatalogImage.entry_id.in_([e.id for e in entries])).group_by(CatalogImage.entry_id)):
            thumbs[entry_id] = position
    scrub = _scrubber(session, [t for e in entries for t in (e.title, e.description, e.data_owner, *e.organs)])
    cards = [EntryCard(slug=e.slug, title=scrub(e.title), data_owner=scrub(e.data_owner),
                       snippet=_snippet(scrub(e.description)), modalities=list(e.modalities),
                       organs=[scrub(o) for o in e.organs], apply_mode=e.apply_mode,
                       no_methods=NO_METHODS in e.duo_codes, subjects=e.subjects, series=e.series,
                       thumbnail=thumbs.get(e.id)) for e in entries]
    return SearchResult(query, selected, cards, total, page, pages, facets)


def _snippet(text: str, limit: int = 220) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rsplit(" ", 1)[0] + "…"


# -- the public view of one entry --------------------------------------------------------------
def public_entry(session: Session, slug: str) -> CatalogEntry:
    entry = session.scalar(select(CatalogEntry).where(CatalogEntry.slug == slug.lower()))
    if entry is None or not entry.published:
        raise NotFound("no such dataset in the catalogue")
    return entry


def public_image(session: Session, slug: str, position: int) -> CatalogImage:
    entry = public_entry(session, slug)
    image = session.get(CatalogImage, (entry.id, position))
    if image is None:
        raise NotFound("no such image")
    return image


def latest_released(session: Session, dataset_id: str) -> DatasetVersion | None:
    return session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id,
                                                       DatasetVersion.state.in_(("released", "deprecated")))
                          .order_by(DatasetVersion.state == "deprecated", DatasetVersion.number.desc()).limit(1))


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
    applicant_download: bool = False  # the dataset's access policy: download, or in-platform use only
    jsonld: dict[str, Any] = field(default_factory=dict)

    @property
    def use_label(self) -> str:
        return ("Approved users may download to their own machines" if self.applicant_download
                else "In-platform use only: approved users work with the data on the hub")

    @property
    def short_description(self) -> str:
        return _snippet(self.description, 200)


def _scrubber(session: Session, texts: Iterable[str]):  # noqa: ANN202 - returns a str → str function
    """Replace any person's e-mail address with a placeholder. Saving already refuses them; this
    also covers a user who later takes an address that an entry's text mentions."""
    private = _user_emails(session, {m for t in texts for m in EMAIL_RE.findall(t or "")})
    if not private:
        return lambda s: s

    def scrub(text: str) -> str:
        return EMAIL_RE.sub(lambda m: WITHHELD if m.group(0).lower() in private else m.group(0), text)

    return scrub


def _archive_span(session: Session, version: DatasetVersion) -> tuple[dt.date | None, dt.date | None]:
    first = session.scalar(select(func.min(ArchiveFile.ingested_at)).join(
        DatasetFile, DatasetFile.file_id == ArchiveFile.id).where(DatasetFile.version_id == version.id))
    last = version.released_at
    return (first.date() if first else None), (last.date() if last else None)


def landing_view(session: Session, entry: CatalogEntry, *, base_url: str, site_name: str) -> LandingView:
    base = base_url.rstrip("/")
    canonical = f"{base}/catalog/{entry.slug}"
    texts = [entry.title, entry.description, entry.why_apply, entry.data_owner, entry.access_conditions,
             entry.how_to_cite, entry.terms_title, entry.terms_text, entry.contact_email or "",
             *entry.organs, *entry.keywords, *entry.variables]
    scrub = _scrubber(session, texts)
    version = latest_released(session, entry.dataset_id)
    start, end, from_archive = entry.time_start, entry.time_end, False
    if start is None and version is not None:
        start, end = _archive_span(session, version)
        from_archive = start is not None
    images = [ImageView(i.position, f"{canonical}/images/{i.position}.png", scrub(i.alt), i.width, i.height)
              for i in images_of(session, entry)]
    og_image = images[0] if images else ImageView(0, f"{canonical}/card.png", f"{site_name} dataset catalogue",
                                                  600, 315)
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
        doi_url=f"https://doi.org/{entry.doi}" if entry.doi else None, site_name=site_name,
        applicant_download=_applicant_download(session, entry.dataset_id),
    )
    view.jsonld = dataset_jsonld(view, base)
    return view


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


def dataset_jsonld(view: LandingView, base: str) -> dict[str, Any]:
    """schema.org Dataset with Google's required and recommended properties, following the
    restricted-data recipe: honest isAccessibleForFree, conditionsOfAccess, licence = the terms
    page, and a distribution that names formats and size but never a data URL."""
    e = view.entry
    accession = {"@type": "PropertyValue", "propertyID": f"{view.site_name} accession", "value": e.dataset_id,
                 "url": view.canonical}
    creator: dict[str, Any] = {"@type": "Organization", "name": view.data_owner}
    if e.data_owner_url:
        creator["url"] = e.data_owner_url
        creator["sameAs"] = e.data_owner_url
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


# -- sitemaps ----------------------------------------------------------------------------------
def _xml(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(text)


SITEMAP_NS = ('xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
              'xmlns:image="http://www.google.com/schemas/sitemap-image/1.1"')


def _published_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(CatalogEntry).where(CatalogEntry.published.is_(True))) or 0


def _urlset(session: Session, base: str, *, offset: int, limit: int, with_catalog: bool) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f"<urlset {SITEMAP_NS}>"]
    if with_catalog:
        lines.append(f"<url><loc>{_xml(base)}/catalog</loc></url>")
    rows = list(session.execute(select(CatalogEntry.id, CatalogEntry.slug, CatalogEntry.updated_at)
                                .where(CatalogEntry.published.is_(True)).order_by(CatalogEntry.id)
                                .offset(offset).limit(limit)))
    images: dict[int, list[int]] = {}
    if rows:
        for entry_id, position in session.execute(
                select(CatalogImage.entry_id, CatalogImage.position)
                .where(CatalogImage.entry_id.in_([r[0] for r in rows])).order_by(CatalogImage.position)):
            images.setdefault(entry_id, []).append(position)
    for entry_id, slug, updated in rows:
        loc = f"{base}/catalog/{slug}"
        pics = "".join(f"<image:image><image:loc>{_xml(loc)}/images/{n}.png</image:loc></image:image>"
                       for n in images.get(entry_id, []))
        lastmod = f"<lastmod>{updated.date().isoformat()}</lastmod>" if updated else ""
        lines.append(f"<url><loc>{_xml(loc)}</loc>{lastmod}{pics}</url>")
    lines.append("</urlset>")
    return "\n".join(lines) + "\n"


def sitemap(session: Session, base_url: str) -> str:
    """One sitemap while everything fits; an index of child sitemaps beyond ``SITEMAP_MAX_URLS``."""
    base = base_url.rstrip("/")
    count = _published_count(session)
    if count + 1 <= SITEMAP_MAX_URLS:
        return _urlset(session, base, offset=0, limit=SITEMAP_MAX_URLS, with_catalog=True)
    children = math.ceil(count / SITEMAP_MAX_URLS)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">',
             f"<sitemap><loc>{_xml(base)}/sitemaps/site.xml</loc></sitemap>"]
    lines += [f"<sitemap><loc>{_xml(base)}/sitemaps/catalog-{n}.xml</loc></sitemap>" for n in range(1, children + 1)]
    lines.append("</sitemapindex>")
    return "\n".join(lines) + "\n"


def child_sitemap(session: Session, base_url: str, name: str) -> str:
    base = base_url.rstrip("/")
    if name == "site":
        return _urlset(session, base, offset=0, limit=0, with_catalog=True)
    match = re.fullmatch(r"catalog-(\d{1,6})", name)
    if not match:
        raise NotFound("no such sitemap")
    n = int(match.group(1))
    if not 1 <= n <= max(1, math.ceil(_published_count(session) / SITEMAP_MAX_URLS)):
        raise NotFound("no such sitemap")
    return _urlset(session, base, offset=(n - 1) * SITEMAP_MAX_URLS, limit=SITEMAP_MAX_URLS, with_catalog=False)


def robots_txt(base_url: str) -> str:
    base = base_url.rstrip("/")
    return "\n".join([
        "# The dataset catalogue is public and meant to be found; everything else needs a login.",
        "User-agent: *",
        "Allow: /catalog",
        "Disallow: /api/",
        "Disallow: /projects",
        "Disallow: /account",
        "Disallow: /datasets",
        "Disallow: /admin",
        "Disallow: /apply",
        "Disallow: /login",
        "",
        f"Sitemap: {base}/sitemap.xml",
        "",
    ])
