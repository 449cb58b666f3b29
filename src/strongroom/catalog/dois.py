"""DOIs of published datasets: a concept DOI for the dataset and a version DOI per released version,
minted at DataCite by the ``catalog.dois`` job (draft → registered → findable), kept up to date when
the entry changes or a version is released, and hidden (registered) when the entry is withdrawn, so
that the DOI still resolves to the tombstone page. Without DataCite configured (``[doi]``) nothing is
minted. ``effective_doi`` is the one answer to "which DOI cites this dataset (version)?".

The ``dois`` table is the plan and the progress: ``state`` is what DataCite holds, ``target`` what it
should hold, ``sent_hash`` the metadata it has. Every step reads DataCite's answer back, so a run that
died half-way (or a DOI that exists already) is simply continued by the next run."""

from __future__ import annotations

import hashlib
import json
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive.models import ArchiveFile, DatasetFile, DatasetVersion
from ..audit import service as audit
from ..audit.service import Actor
from ..db import transaction, utcnow
from ..jobs import service as jobs
from .datacite import Creator, DoiFacts, Related, datacite_attributes, ror_id
from .datacite_client import DataCiteClient, DataCiteError, DoiTaken
from .models import CatalogEntry, Doi, public_face
from .privacy import scrubber

if TYPE_CHECKING:
    from ..config import DoiSettings, Settings
    from ..hub import Hub

JOB = "catalog.dois"
RESOLVING = ("registered", "findable")  # states in which a DOI resolves at doi.org
# How the job reaches DataCite; the tests may point it elsewhere (never needed in production).
ClientFactory = Callable[["DoiSettings"], DataCiteClient]


def client_for(settings: DoiSettings) -> DataCiteClient:
    return DataCiteClient(settings.endpoint, settings.repository_id, settings.password.get_secret_value(),
                          timeout=settings.timeout_seconds)


def _entry(session: Session, dataset_id: str) -> CatalogEntry | None:
    """The entry as the public may know it: a withdrawn one as it was withdrawn (``models.public_face``), never
    the draft its stewards edit since — the hidden DOIs' records and the tombstone's DOI come from this."""
    entry = session.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == dataset_id))
    return public_face(entry) if entry is not None else None


def dois_of(session: Session, dataset_id: str) -> list[Doi]:
    """Concept first, then the versions in order."""
    rows = session.scalars(select(Doi).where(Doi.dataset_id == dataset_id))
    return sorted(rows, key=lambda d: -1 if d.version is None else d.version)


def effective_doi(session: Session, dataset_id: str, version: int | None = None) -> str | None:
    """The DOI that cites the dataset (``version`` None) or one version: the steward's own external
    DOI if the entry has one, else the hub's minted DOI once it resolves; None otherwise."""
    entry = _entry(session, dataset_id)
    if entry is not None and entry.doi:
        return entry.doi
    row = session.scalar(select(Doi).where(Doi.dataset_id == dataset_id, Doi.state.in_(RESOLVING),
                                           Doi.version.is_(None) if version is None else Doi.version == version))
    return row.doi if row is not None else None


def findable_dois(session: Session, dataset_id: str) -> tuple[str | None, list[tuple[int, str]]]:
    """(the concept DOI, [(version, DOI)]) that DataCite lists as findable: what a landing page shows."""
    concept, versions = None, []
    for row in dois_of(session, dataset_id):
        if row.state == "findable":
            if row.version is None:
                concept = row.doi
            else:
                versions.append((row.version, row.doi))
    return concept, versions


def schedule(session: Session, dataset_id: str) -> None:
    """Have the job bring the dataset's DOIs up to date (in the caller's transaction: nothing is
    sent for a change that is rolled back). Cheap when nothing is to be done."""
    entry = _entry(session, dataset_id)
    if entry is None or entry.doi:
        return
    if entry.published or session.scalar(select(Doi.doi).where(Doi.dataset_id == dataset_id).limit(1)):
        jobs.enqueue(session, JOB, {"dataset_id": dataset_id}, max_attempts=8)


def on_release(session: Session, version: DatasetVersion) -> None:
    """``archive.datasets.RELEASE_HOOKS``: a released version of a published dataset gets its DOI."""
    schedule(session, version.dataset_id)


# -- the plan ------------------------------------------------------------------------------------
def _released(session: Session, dataset_id: str) -> list[DatasetVersion]:
    return list(session.scalars(select(DatasetVersion).where(
        DatasetVersion.dataset_id == dataset_id, DatasetVersion.state.in_(("released", "deprecated")))
        .order_by(DatasetVersion.number)))


def doi_name(prefix: str, dataset_id: str, version: int | None) -> str:
    """``10.x/srd-…`` for the concept, ``10.x/srd-….v2`` for version 2: stable, readable, no lookup needed."""
    return f"{prefix}/{dataset_id.lower()}" + (f".v{version}" if version is not None else "")


def plan(session: Session, settings: DoiSettings, entry: CatalogEntry) -> list[Doi]:
    """The rows the dataset should have: while published, the concept and every released version
    (target findable); once withdrawn, every existing row targets registered (hidden, still resolving)."""
    rows = dois_of(session, entry.dataset_id)
    if entry.published:
        have = {r.version for r in rows}
        for number in [None, *(v.number for v in _released(session, entry.dataset_id))]:
            if number not in have:
                row = Doi(doi=doi_name(settings.prefix, entry.dataset_id, number), dataset_id=entry.dataset_id,
                          version=number, kind="concept" if number is None else "version", state="new",
                          target="findable", attempts=0, created_at=utcnow(), updated_at=utcnow())
                session.add(row)
                rows.append(row)
        for row in rows:
            row.target = "findable"
    else:
        for row in rows:
            row.target = "registered"
    session.flush()
    return dois_of(session, entry.dataset_id)


# -- the metadata ------------------------------------------------------------------------------
def _formats(session: Session, version_id: int) -> list[str]:
    paths = session.scalars(select(ArchiveFile.path).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
                            .where(DatasetFile.version_id == version_id).limit(10_000))
    found: list[str] = []
    for path in paths:
        name = path.lower().removesuffix(".c4gh")
        kind = "application/dicom" if name.endswith((".dcm", ".dicom")) else mimetypes.guess_type(name)[0]
        if kind and kind not in found:
            found.append(kind)
    return found


def facts(session: Session, settings: Settings, entry: CatalogEntry, row: Doi, rows: list[Doi]) -> DoiFacts:
    """What the DOI's record says, from the entry (texts scrubbed as on the public pages) and the archive."""
    base = settings.base_url.rstrip("/")
    canonical = f"{base}/catalog/{entry.slug}"
    scrub = scrubber(session, [entry.title, entry.description, entry.access_conditions, entry.data_owner,
                               entry.terms_title, entry.withdrawn_reason or "", *entry.keywords, *entry.organs])
    versions = {v.number: v for v in _released(session, entry.dataset_id)}
    by_version = {r.version: r.doi for r in rows}
    version = versions.get(row.version) if row.version is not None else (max(versions.items())[1] if versions
                                                                         else None)
    related: list[Related] = []
    if row.version is None:
        related += [Related(doi, "HasVersion") for n, doi in sorted(by_version.items(), key=lambda x: x[0] or 0)
                    if n is not None]
    else:
        if None in by_version:
            related.append(Related(by_version[None], "IsVersionOf"))
        earlier = [n for n in by_version if n is not None and n < row.version]
        later = [n for n in by_version if n is not None and n > row.version]
        if earlier:
            related.append(Related(by_version[max(earlier)], "IsNewVersionOf"))
        if later:
            related.append(Related(by_version[min(later)], "IsPreviousVersionOf"))
    related += [Related(p, "IsSupplementTo", resource_type="JournalArticle") for p in entry.publications or []]
    issued = (version.released_at if row.version is not None and version and version.released_at
              else entry.published_at or (version.released_at if version else None) or entry.created_at)
    formats = _formats(session, version.id) if version else []
    if entry.instances and "application/dicom" not in formats:
        formats.insert(0, "application/dicom")
    size = version.total_bytes if row.version is not None and version else (
        entry.size_bytes if entry.size_bytes is not None else (version.total_bytes if version else None))
    return DoiFacts(
        doi=row.doi, url=canonical + (f"?version={row.version}" if row.version is not None else ""),
        title=scrub(entry.title) + (f" (version {row.version})" if row.version is not None else ""),
        description=scrub(entry.description), publisher=scrub(entry.data_owner) or settings.site_name,
        publisher_ror=ror_id(entry.data_owner_url), publication_year=issued.year, accession=entry.dataset_id,
        hosting_institution=settings.site_name,
        creators=[Creator(**c) for c in entry.creators or []],  # type: ignore[arg-type]
        version=row.version, modalities=entry.modalities, organs=[scrub(o) for o in entry.organs],
        keywords=[scrub(k) for k in entry.keywords], duo_codes=entry.duo_codes, terms_title=scrub(entry.terms_title),
        terms_url=f"{canonical}/terms", access_conditions=scrub(entry.access_conditions), size_bytes=size,
        file_count=version.file_count if version else None, subjects=entry.subjects, studies=entry.studies,
        series=entry.series, instances=entry.instances, annotations=entry.annotations, formats=formats,
        issued=issued.date(), updated=entry.updated_at.date() if entry.updated_at else None,
        collected=(entry.time_start, entry.time_end) if entry.time_start else None,
        withdrawn=entry.withdrawn_at.date() if entry.withdrawn_at and not entry.published else None,
        withdrawn_reason=scrub(entry.withdrawn_reason or "") if not entry.published else "",
        related=related)


def record_facts(session: Session, settings: Settings, entry: CatalogEntry, version: int | None = None
                 ) -> DoiFacts | None:
    """The DataCite record of the entry's effective DOI (the concept, or one version's), for
    ``datacite_attributes``/``datacite_xml`` elsewhere (content negotiation, OAI-PMH ``oai_datacite``);
    None when that DOI does not resolve (a DataCite record needs its DOI: none is ever made up)."""
    if entry.doi:  # the steward's own DOI: one record for the dataset, no version DOIs
        own = Doi(doi=entry.doi, dataset_id=entry.dataset_id, version=None, kind="concept", state="findable",
                  target="findable")
        return facts(session, settings, entry, own, [own]) if version is None else None
    rows = dois_of(session, entry.dataset_id)
    row = next((r for r in rows if r.version == version and r.state in RESOLVING), None)
    return facts(session, settings, entry, row, [r for r in rows if r.state != "new"]) if row else None


def metadata_hash(attrs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(attrs, sort_keys=True).encode()).hexdigest()


# -- the job's work ----------------------------------------------------------------------------
@dataclass
class Step:
    doi: str
    state: str
    target: str
    attrs: dict[str, Any]
    changed: bool


def push(client: DataCiteClient, step: Step) -> str:
    """Bring one DOI at DataCite to its target with the current metadata; DataCite's new state.
    Each call's answer is the truth for the next step, so a repeat run continues where one stopped."""
    state, attrs, changed = step.state, step.attrs, step.changed
    if state == "new":
        if step.target != "findable":
            return "gone"  # withdrawn before DataCite ever heard of it: nothing to hide
        try:
            state, changed = client.create(step.doi, attrs).state, False  # a draft
        except DoiTaken:  # created by a run that died before it could record it
            found = client.get(step.doi)
            if found is None:
                raise DataCiteError(f"DOI {step.doi} is taken at DataCite by another repository") from None
            state, changed = found.state, True
    if step.target == "findable":
        if state == "draft":
            state, changed = client.update(step.doi, attrs, event="register").state, False
        if state == "registered":
            state, changed = client.update(step.doi, attrs, event="publish").state, False
    elif state == "findable":
        state, changed = client.update(step.doi, attrs, event="hide").state, False
    elif state == "draft":  # never resolved, never cited: a withdrawn dataset's draft just goes
        client.delete_draft(step.doi)
        return "gone"
    if changed:
        state = client.update(step.doi, attrs).state
    return state


def sync(hub: Hub, dataset_id: str, *, client_factory: ClientFactory = client_for) -> dict[str, Any]:
    """The ``catalog.dois`` job: plan, then push each DOI (concept first), recording each answer in its
    own short transaction. Raises (so the job retries with backoff) if DataCite could not be reached."""
    settings = hub.settings
    if not settings.doi.configured:
        return {"minted": 0, "reason": "DataCite is not configured ([doi])"}
    with transaction(hub.sessions) as session:
        entry = _entry(session, dataset_id)
        if entry is None or entry.doi:
            return {"minted": 0, "reason": "no entry" if entry is None else "the entry has its own DOI"}
        rows = plan(session, settings.doi, entry)
        steps = []
        for row in rows:
            attrs = datacite_attributes(facts(session, settings, entry, row, rows))
            steps.append(Step(row.doi, row.state, row.target, attrs, metadata_hash(attrs) != row.sent_hash))
    results: dict[str, str] = {}
    retry: list[str] = []
    with client_factory(settings.doi) as client:
        for step in steps:
            if step.state == step.target and not step.changed:
                results[step.doi] = step.state
                continue
            try:
                state, error = push(client, step), None
            except DataCiteError as exc:
                state, error = None, str(exc)
                if exc.retry:
                    retry.append(error)
            _record(hub, dataset_id, step, state, error)
            results[step.doi] = state or f"error: {error}"
    if retry:
        raise RuntimeError("; ".join(retry))
    return {"dois": results}


def _record(hub: Hub, dataset_id: str, step: Step, state: str | None, error: str | None) -> None:
    with transaction(hub.sessions) as session:
        row = session.get(Doi, step.doi)
        if row is None:
            return
        row.attempts += 1
        row.updated_at = utcnow()
        if state is None:
            row.last_error = (error or "")[:4000]
            return
        entry = _entry(session, dataset_id)
        project_id = None
        if entry is not None:
            from ..archive.models import Dataset

            ds = session.get(Dataset, dataset_id)
            project_id = ds.project_id if ds else None
        if state == "gone":
            session.delete(row)
            audit.record(session, Actor.system("catalog.dois"), "catalog.doi.deleted", project_id=project_id,
                         target=f"dataset:{dataset_id}", details={"doi": step.doi})
            return
        before = row.state
        row.state, row.sent_hash, row.last_error = state, metadata_hash(step.attrs), None
        if state == "findable" and row.findable_at is None:
            row.findable_at = utcnow()
        if state != before:
            audit.record(session, Actor.system("catalog.dois"), f"catalog.doi.{state}", project_id=project_id,
                         target=f"dataset:{dataset_id}", details={"doi": step.doi, "was": before})


def unsettled(session: Session) -> list[str]:
    """Datasets whose DOIs are not where they should be (for the periodic sweep)."""
    rows = session.scalars(select(Doi.dataset_id).where((Doi.state != Doi.target) | Doi.last_error.is_not(None))
                           .distinct().limit(1000))
    return list(rows)
