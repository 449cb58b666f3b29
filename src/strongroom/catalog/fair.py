"""Harvestable metadata from the hub's own records: the facts of published entries for the DCAT-AP
export (``dcat``) and the OAI-PMH repository (``oai``) over the catalogue.

Only published entries are described. A withdrawn entry (published once, unpublished since) is an
OAI-PMH deleted record: its identifier and datestamp (the withdrawal's), nothing else. Never-published
entries do not exist here at all. Texts come from ``landing.landing_view``, so any person's e-mail address is
withheld exactly as on the landing page.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from lxml import etree
from sqlalchemy import Select, and_, case, func, or_, select
from sqlalchemy.orm import Session

from ..archive.models import ArchiveFile, DatasetFile, DatasetVersion
from ..config import Settings
from . import dois, oai
from .datacite import DoiFacts, datacite_xml
from .dcat import FORMATS, CatalogFacts, DatasetFacts, VersionFacts
from .landing import landing_view
from .models import HOLDS_ADDRESS, CatalogEntry, Doi
from .vocab import MODALITIES

WITHDRAWN = and_(CatalogEntry.published.is_(False), CatalogEntry.published_at.is_not(None))
# An OAI-PMH record's datestamp: a published entry's last change, a withdrawn one's withdrawal (its stewards may edit
# the row as a draft since: nothing public changes with that). In SQL for selective harvesting; ``datestamp`` in Python.
DATESTAMP = case((CatalogEntry.published.is_(True), CatalogEntry.updated_at),
                 else_=func.coalesce(CatalogEntry.withdrawn_at, CatalogEntry.updated_at))


def datestamp(entry: CatalogEntry) -> dt.datetime:
    return entry.updated_at if entry.published else (entry.withdrawn_at or entry.updated_at)


def _suffixes(session: Session, version_id: int) -> tuple[str, ...]:
    paths = session.scalars(select(ArchiveFile.path).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
                            .where(DatasetFile.version_id == version_id))
    found = {posixpath.splitext(p.lower())[1] for p in paths}
    return tuple(sorted(s for s in found if s in FORMATS))


def _versions(session: Session, dataset_id: str) -> list[VersionFacts]:
    rows = session.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id,
                                                        DatasetVersion.state.in_(("released", "deprecated")))
                           .order_by(DatasetVersion.number))
    return [VersionFacts(number=v.number, released_at=v.released_at, deprecated=v.state == "deprecated",
                         byte_size=v.total_bytes, file_count=v.file_count, suffixes=_suffixes(session, v.id))
            for v in rows]


def dataset_facts(session: Session, entry: CatalogEntry, *, base_url: str, site_name: str) -> DatasetFacts:
    if not entry.published:  # the one gate: nothing unpublished is ever described
        raise ValueError("only published entries are described")
    view = landing_view(session, entry, base_url=base_url, site_name=site_name)
    return DatasetFacts(
        landing=view.canonical, accession=entry.dataset_id, title=view.title, description=view.description,
        owner=view.data_owner, owner_url=entry.data_owner_url, contact_email=view.contact_email,
        terms_url=view.terms_url, terms_title=view.terms_title, access_conditions=view.access_conditions,
        keywords=view.keywords, modalities=view.modalities, organs=view.organs,
        duo=[(d.code, d.label, d.url) for d in view.duo], doi=entry.doi, issued=entry.published_at,
        modified=entry.updated_at, time_start=view.time_start, time_end=view.time_end,
        subjects=entry.subjects, studies=entry.studies, series=entry.series, instances=entry.instances,
        images=[i.url for i in view.images], versions=_versions(session, entry.dataset_id))


def published_entries(session: Session) -> list[CatalogEntry]:
    return list(session.scalars(select(CatalogEntry).where(CatalogEntry.published.is_(True))
                                .order_by(CatalogEntry.id)))


def catalog_facts(session: Session, *, base_url: str, site_name: str) -> tuple[CatalogFacts, list[DatasetFacts]]:
    base = base_url.rstrip("/")
    entries = published_entries(session)
    datasets = [dataset_facts(session, e, base_url=base, site_name=site_name) for e in entries]
    modified = max((e.updated_at for e in entries), default=None)
    return CatalogFacts(url=f"{base}/catalog", home=f"{base}/", site_name=site_name, modified=modified), datasets


def public_by_slug(session: Session, slug: str) -> CatalogEntry | None:
    entry = session.scalar(select(CatalogEntry).where(CatalogEntry.slug == slug.lower(), HOLDS_ADDRESS))
    return entry if entry is not None and entry.published else None


# -- OAI-PMH sets ----------------------------------------------------------------------------------
def owner_spec(owner: str) -> str:
    return "owner:" + (re.sub(r"[^a-z0-9]+", "-", owner.lower()).strip("-") or "unnamed")[:80]


def set_specs(entry: CatalogEntry) -> tuple[str, ...]:
    return (*(f"modality:{m}" for m in entry.modalities), owner_spec(entry.data_owner))


class CatalogRepository:
    """The catalogue as an OAI-PMH repository (``oai.Repository``) for one request's session."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self.site = settings.base_url.rstrip("/")
        self.site_name = settings.site_name
        self.name = f"{self.site_name} dataset catalogue"
        self.base_url = f"{self.site}/oai"
        self.namespace = urlsplit(self.site).hostname or "localhost"
        # The public role address of the catalogue's stewards would be better; the hub has none yet.
        self.admin_email = f"catalogue@{self.namespace}" if "." in self.namespace else "catalogue@localhost.localdomain"

    def identifier(self, entry: CatalogEntry) -> str:
        return f"oai:{self.namespace}:{entry.dataset_id}"

    def _visible(self) -> Select[CatalogEntry]:
        return select(CatalogEntry).where(or_(CatalogEntry.published.is_(True), WITHDRAWN))

    def earliest(self) -> dt.datetime:
        first = self.session.scalar(select(func.min(DATESTAMP))
                                    .where(or_(CatalogEntry.published.is_(True), WITHDRAWN)))
        return first or dt.datetime(2020, 1, 1, tzinfo=dt.UTC)

    def sets(self) -> list[tuple[str, str]]:
        found: dict[str, str] = {}
        for entry in published_entries(self.session):
            for m in entry.modalities:
                found[f"modality:{m}"] = f"Modality: {MODALITIES.get(m, m)}"
            found[owner_spec(entry.data_owner)] = f"Data owner: {entry.data_owner}"
        return sorted(found.items())

    def _filtered(self, q: oai.Query) -> Select[CatalogEntry]:
        stamp = DATESTAMP
        stmt = self._visible().where(stamp < q.before)
        if q.since is not None:
            stmt = stmt.where(stamp >= q.since)
        if q.doi_only:  # the steward's own DOI, or the hub's concept DOI once findable
            minted = select(Doi.dataset_id).where(Doi.version.is_(None), Doi.state == "findable")
            stmt = stmt.where(or_(CatalogEntry.doi.is_not(None), CatalogEntry.dataset_id.in_(minted), WITHDRAWN))
        return stmt

    def _matching(self, q: oai.Query, entries: Iterable[CatalogEntry]) -> list[CatalogEntry]:
        # Sets are a few per entry; filtered here so that SQLite and PostgreSQL agree. A deleted
        # record is in every set: a set's harvesters must learn of the withdrawal too.
        return [e for e in entries if q.set_spec is None or not e.published or q.set_spec in set_specs(e)]

    def count(self, q: oai.Query) -> int:
        if q.set_spec is None:
            return self.session.scalar(select(func.count()).select_from(self._filtered(q).subquery())) or 0
        return len(self._matching(q, self.session.scalars(self._filtered(q))))

    def page(self, q: oai.Query, after: int, limit: int) -> list[oai.Record]:
        found: list[CatalogEntry] = []
        stmt = self._filtered(q).order_by(CatalogEntry.id)
        while len(found) < limit:
            batch = list(self.session.scalars(stmt.where(CatalogEntry.id > after).limit(limit * 2)))
            if not batch:
                break
            found += self._matching(q, batch)
            after = batch[-1].id
        return [self.record(e) for e in found[:limit]]

    def record(self, entry: CatalogEntry) -> oai.Record:
        if not entry.published:
            header = oai.Header(self.identifier(entry), datestamp(entry), deleted=True)
            return oai.Record(key=entry.id, header=header, facts=None)
        facts = dataset_facts(self.session, entry, base_url=self.site, site_name=self.site_name)
        return oai.Record(key=entry.id, header=oai.Header(self.identifier(entry), datestamp(entry), set_specs(entry)),
                          facts=facts, has_doi=self._datacite_facts(entry) is not None)

    def _datacite_facts(self, entry: CatalogEntry) -> DoiFacts | None:
        found = dois.record_facts(self.session, self.settings, entry)
        return found if found is not None and (entry.doi or found.doi in self._findable(entry)) else None

    def _findable(self, entry: CatalogEntry) -> set[str]:
        concept, _ = dois.findable_dois(self.session, entry.dataset_id)
        return {concept} if concept else set()

    def get(self, identifier: str) -> oai.Record | None:
        prefix = f"oai:{self.namespace}:"
        if not identifier.startswith(prefix):
            return None
        entry = self.session.scalar(self._visible().where(CatalogEntry.dataset_id == identifier[len(prefix):]))
        return self.record(entry) if entry is not None else None

    def datacite(self, record: oai.Record) -> etree._Element:
        """The DOI capability's DataCite 4.6 record (the same one DataCite holds) of a record with a DOI."""
        entry = self.session.get(CatalogEntry, record.key)
        found = self._datacite_facts(entry) if entry is not None else None
        if found is None:  # has_doi said otherwise: the entry changed between the two reads
            raise LookupError(f"{record.header.identifier} has no DOI any more")
        return etree.fromstring(datacite_xml(found))
