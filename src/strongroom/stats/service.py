"""Metrics counted from the hub's own records: the archive (released versions, bytes), the DICOM import
(instances with their modality, body part, study, series and subject pseudonym), the catalogue (what is
published, and when), applications (their events), the audit log (completed downloads) and the
landing-page views recorded here. Nothing is typed in.

Each figure is one SQL aggregate over all datasets in scope (grouped by dataset or month), never a
query per dataset, so the public page costs the same handful of queries for 20 datasets or 20,000.
Public figures count published catalogue entries only; a data owner sees the same figures for one
dataset of theirs, published or not. Counts of people and their actions go through ``figures.shown``; in the
public figures, counts of their imaging (subjects, studies, scans, instances, annotations) go through the hub's
one small-count rule (``strongroom.small_counts``: "< 5", else rounded to 5, as the Beacon and the landing pages
show them), while a data owner sees them exactly. Every margin either kind forms (a total and its parts) goes
through ``figures.protect_all``, so that no hidden count can be worked out by subtraction. Every text published
(titles, modality and body-part values) goes through the catalogue's privacy scrubber, as landing pages do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, delete, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased

from ..access.applications import handled_datasets
from ..access.models import Application, ApplicationEvent
from ..archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..audit.models import AuditEvent
from ..catalog import generation
from ..catalog.models import CatalogEntry
from ..catalog.privacy import scrubber
from ..db import rowcount, utcnow
from ..errors import NotFound
from ..identity.models import User
from ..identity.principal import Principal
from ..imaging.models import ImportedInstance
from ..projects.models import Membership, Project
from . import figures
from .figures import Cell, Count, Margin, shown, shown_bytes
from .models import DaySalt, DayVisitor, LandingViews

DOUBLE_CLICK = dt.timedelta(seconds=30)  # COUNTER: repeated views of one page by one visitor within 30 s are one
CACHE_SECONDS = 60.0  # the public figures are recomputed at most this often per process (and on catalogue changes)
IMAGING = ("subjects", "studies", "scans", "instances", "annotations")  # counts of people's imaging


# -- landing-page views ------------------------------------------------------------------------------
def _insert(session: Session, model: type[Any]) -> Any:
    """INSERT … ON CONFLICT for the session's backend."""
    return (pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert)(model)


def visitor_key(secret: bytes, salt: bytes, day: dt.date, ip: str, user_agent: str) -> str:
    """Who a visitor is, for today only: HMAC of (address, browser) under a key from the hub's secret (not
    in the database) and the day's random salt (deleted with the day)."""
    key = hmac.new(secret, b"stats.visitor|" + day.isoformat().encode() + b"|" + salt, hashlib.sha256).digest()
    return hmac.new(key, f"{ip}\n{user_agent}".encode(), hashlib.sha256).hexdigest()


def prune_visitors(session: Session, today: dt.date) -> int:
    """Forget every visitor hash and salt of past days."""
    gone = rowcount(session.execute(delete(DayVisitor).where(DayVisitor.day < today)))
    session.execute(delete(DaySalt).where(DaySalt.day < today))
    return gone


def record_view(session: Session, secret: bytes, dataset_id: str, *, ip: str | None, user_agent: str,
                now: dt.datetime) -> bool:
    """Count one view of a published landing page. Robots and machines (the COUNTER list) are not
    counted, nor is a repeat by the same visitor within 30 s. Returns whether it counted."""
    import counter_robots  # type: ignore[import-untyped]

    if not user_agent.strip() or counter_robots.is_robot_or_machine(user_agent):
        return False
    day = now.date()
    salt = session.get(DaySalt, day)
    if salt is None:
        prune_visitors(session, day)
        session.execute(_insert(session, DaySalt).values(day=day, salt=os.urandom(32))
                        .on_conflict_do_nothing(index_elements=["day"]))
        salt = session.get(DaySalt, day)
        assert salt is not None
    visitor = visitor_key(secret, salt.salt, day, ip or "", user_agent)
    new = session.scalar(_insert(session, DayVisitor).values(day=day, dataset_id=dataset_id, visitor=visitor,
                                                             last_at=now)
                         .on_conflict_do_nothing(index_elements=["day", "dataset_id", "visitor"])
                         .returning(DayVisitor.visitor)) is not None  # RETURNING: rowcount is unreliable here
    if new:
        counted, visitors = True, 1
    else:
        row = session.get(DayVisitor, (day, dataset_id, visitor), with_for_update=True)
        assert row is not None
        counted, visitors = now - row.last_at >= DOUBLE_CLICK, 0
        row.last_at = now  # a run of clicks each within 30 s of the last is one view
    if counted:
        session.execute(_insert(session, LandingViews).values(day=day, dataset_id=dataset_id, views=0, visitors=0)
                        .on_conflict_do_nothing(index_elements=["day", "dataset_id"]))
        session.execute(update(LandingViews).where(LandingViews.day == day, LandingViews.dataset_id == dataset_id)
                        .values(views=LandingViews.views + 1, visitors=LandingViews.visitors + visitors))
    session.flush()
    return counted


# -- the figures -------------------------------------------------------------------------------------
@dataclass
class Applications:
    made: Count = 0
    approved: Count = 0
    rejected: Count = 0
    decision_days: dict[str, float | None] = field(default_factory=lambda: {"median": None, "p90": None})


@dataclass
class DatasetFigures:
    id: str
    slug: str | None
    title: str
    published_at: dt.datetime | None
    subjects: Count = 0
    studies: Count = 0
    scans: Count = 0
    instances: Count = 0
    annotations: Count = 0
    files: int = 0
    bytes: int = 0
    modalities: list[str] = field(default_factory=list)
    organs: list[str] = field(default_factory=list)
    pathology: bool = False
    radiology: bool = False
    annotated: bool = False
    views: int = 0
    visitors: int = 0
    applications: Applications = field(default_factory=Applications)
    downloads: Count = 0
    download_bytes: int | None = 0
    downloaders: Count = 0
    countries_shared_with: int = 0
    external_sharing_events: Count = 0
    countries: list[dict[str, Any]] = field(default_factory=list)  # country, name, approved (ranked)


@dataclass
class Split:
    datasets: int = 0
    scans: Count = 0


@dataclass
class Month:
    month: str
    datasets_published: int = 0
    datasets_total: int = 0
    applications: Count = 0
    approved: Count = 0
    downloads: Count = 0
    download_bytes: int | None = 0
    views: int = 0


@dataclass
class Metrics:
    generated_at: dt.datetime
    datasets: int = 0
    subjects: Count = 0
    studies: Count = 0
    scans: Count = 0
    instances: Count = 0
    annotations: Count = 0
    files: int = 0
    bytes: int = 0
    modalities: int = 0
    organs: int = 0
    annotated: Split = field(default_factory=Split)
    pathology: Split = field(default_factory=Split)
    radiology: Split = field(default_factory=Split)
    views: int = 0
    visitors: int = 0
    applications: Applications = field(default_factory=Applications)
    downloads: Count = 0
    download_bytes: int | None = 0
    downloaders: Count = 0
    countries_shared_with: int = 0
    external_sharing_events: Count = 0
    by_modality: list[dict[str, Any]] = field(default_factory=list)  # modality, name, datasets, scans, instances
    by_organ: list[dict[str, Any]] = field(default_factory=list)  # organ, datasets, scans
    countries: list[dict[str, Any]] = field(default_factory=list)  # country, name, approved (ranked)
    months: list[Month] = field(default_factory=list)
    per_dataset: list[DatasetFigures] = field(default_factory=list)


def _month(session: Session, column: Any, *, date: bool = False) -> ColumnElement[str]:
    """``YYYY-MM`` of a UTC timestamp (or a date) column, in SQL, whatever the session's time zone."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(column if date else func.timezone("UTC", column), "YYYY-MM")
    return func.strftime("%Y-%m", column)


def _published() -> Select[Any]:
    return select(CatalogEntry.dataset_id).where(CatalogEntry.published.is_(True))


def _annotation_file(path: Any) -> ColumnElement[bool]:
    lowered = func.lower(path)
    return or_(*[lowered.like(f"%{suffix}") for suffix in figures.ANNOTATION_SUFFIXES],
               *[lowered.like(f"{folder}/%") for folder in figures.ANNOTATION_FOLDERS],
               *[lowered.like(f"%/{folder}/%") for folder in figures.ANNOTATION_FOLDERS])


def compute(session: Session, scope: Select[Any], *, now: dt.datetime | None = None,
            exact_imaging: bool = False) -> Metrics:
    """Every figure over the datasets ``scope`` selects (a query of dataset ids). ``exact_imaging``: counts of
    people's imaging as they are (for the dataset's owner), not by the public small-count rule."""
    now = now or utcnow()
    m = Metrics(generated_at=now)
    rows = session.execute(select(Dataset.id, Dataset.title, CatalogEntry.slug, CatalogEntry.title,
                                  CatalogEntry.published_at, CatalogEntry.published)
                           .outerjoin(CatalogEntry, CatalogEntry.dataset_id == Dataset.id)
                           .where(Dataset.id.in_(scope)).order_by(Dataset.id)).all()
    per = {r[0]: DatasetFigures(id=r[0], slug=r[2] if r[5] else None, title=r[3] or r[1],
                                published_at=r[4] if r[5] else None) for r in rows}
    m.datasets = len(per)

    # the latest released version of each dataset: its files and bytes
    newest = (select(DatasetVersion.dataset_id, func.max(DatasetVersion.number).label("number"))
              .where(DatasetVersion.state == "released", DatasetVersion.dataset_id.in_(scope))
              .group_by(DatasetVersion.dataset_id).subquery())
    latest = (select(DatasetVersion.id, DatasetVersion.dataset_id, DatasetVersion.file_count,
                     DatasetVersion.total_bytes)
              .join(newest, and_(newest.c.dataset_id == DatasetVersion.dataset_id,
                                 newest.c.number == DatasetVersion.number)).subquery())
    for ds_id, files, size in session.execute(select(latest.c.dataset_id, latest.c.file_count,
                                                     latest.c.total_bytes)):
        per[ds_id].files, per[ds_id].bytes = int(files), int(size)

    # DICOM facts of the instances in those versions
    image = ImportedInstance.modality.notin_(figures.NOT_IMAGES) & (ImportedInstance.modality != "")
    annotation = ImportedInstance.modality.in_(figures.ANNOTATION_MODALITIES)
    instances = (select(latest.c.dataset_id, ImportedInstance.modality, ImportedInstance.body_part,
                        ImportedInstance.series_uid, ImportedInstance.study_uid, ImportedInstance.patient_pseudonym,
                        image.label("image"), annotation.label("annotation"))
                 .join(DatasetFile, DatasetFile.version_id == latest.c.id)
                 .join(ImportedInstance, ImportedInstance.file_id == DatasetFile.file_id).subquery())
    facts = select(
        instances.c.dataset_id, func.count(), func.count(func.distinct(instances.c.patient_pseudonym)),
        func.count(func.distinct(instances.c.study_uid)),
        func.count(func.distinct(case((instances.c.image, instances.c.series_uid)))),
        func.count(case((instances.c.annotation, 1))),
        func.count(case((instances.c.modality.in_(figures.PATHOLOGY), 1))),
        func.count(case((instances.c.image & instances.c.modality.notin_(figures.PATHOLOGY), 1))),
    ).group_by(instances.c.dataset_id)
    for ds_id, n, subjects, studies, scans, n_annotations, pathology, radiology in session.execute(facts):
        d = per[ds_id]
        d.instances, d.subjects, d.studies, d.scans, d.annotations = n, subjects, studies, scans, n_annotations
        d.pathology, d.radiology = pathology > 0, radiology > 0
    # annotation files that are not DICOM objects (GeoJSON, label masks …), by name
    annotation_files = (select(latest.c.dataset_id, func.count())
                        .join(DatasetFile, DatasetFile.version_id == latest.c.id)
                        .join(ArchiveFile, ArchiveFile.id == DatasetFile.file_id)
                        .where(_annotation_file(ArchiveFile.path),
                               ~exists().where(ImportedInstance.file_id == ArchiveFile.id))
                        .group_by(latest.c.dataset_id))
    for ds_id, n in session.execute(annotation_files):
        per[ds_id].annotations = _int(per[ds_id].annotations) + n
    for d in per.values():
        d.annotated = _int(d.annotations) > 0

    # modalities and organs: per dataset (for its row), and scans / datasets per value
    by_modality: dict[str, dict[str, Any]] = {}
    for ds_id, modality, n, series in session.execute(
            select(instances.c.dataset_id, instances.c.modality, func.count(),
                   func.count(func.distinct(instances.c.series_uid)))
            .where(instances.c.modality != "").group_by(instances.c.dataset_id, instances.c.modality)):
        per[ds_id].modalities.append(modality)
        row = by_modality.setdefault(modality, {"modality": modality, "datasets": 0, "scans": 0, "instances": 0})
        row["datasets"] += 1
        row["instances"] += n
        row["scans"] += series if figures.is_image(modality) else 0
    by_organ: dict[str, dict[str, Any]] = {}
    organ = func.upper(func.trim(instances.c.body_part))
    for ds_id, name, series in session.execute(
            select(instances.c.dataset_id, organ, func.count(func.distinct(instances.c.series_uid)))
            .where(instances.c.image, organ != "").group_by(instances.c.dataset_id, organ)):
        per[ds_id].organs.append(name)
        row = by_organ.setdefault(name, {"organ": name, "datasets": 0, "scans": 0})
        row["datasets"] += 1
        row["scans"] += series

    # landing-page views
    views_by_month: Counter[str] = Counter()
    view_month = _month(session, LandingViews.day, date=True)
    for ds_id, month, views, visitors in session.execute(
            select(LandingViews.dataset_id, view_month, func.sum(LandingViews.views),
                   func.sum(LandingViews.visitors)).where(LandingViews.dataset_id.in_(scope))
            .group_by(LandingViews.dataset_id, view_month)):
        per[ds_id].views += int(views)
        per[ds_id].visitors += int(visitors)
        views_by_month[month] += int(views)

    # applications: one row per submitted application, from its events
    submitted = func.max(case((ApplicationEvent.type == "submitted", ApplicationEvent.at)))
    first_submitted = func.min(case((ApplicationEvent.type == "submitted", ApplicationEvent.at)))
    decided = func.max(case((ApplicationEvent.type.in_(("approved", "rejected")), ApplicationEvent.at)))
    approved = func.max(case((ApplicationEvent.type == "approved", 1), else_=0))
    rejected = func.max(case((ApplicationEvent.type == "rejected", 1), else_=0))
    folded = (select(ApplicationEvent.application_id, submitted.label("submitted"),
                     first_submitted.label("first_submitted"), decided.label("decided"),
                     approved.label("approved"), rejected.label("rejected"))
              .group_by(ApplicationEvent.application_id).subquery())
    applicant, pi = aliased(User), aliased(User)
    member = exists().where(Membership.project_id == Dataset.project_id, Membership.user_id == Application.applicant_id)
    app_rows = session.execute(
        select(Application.dataset_id, folded.c.submitted, folded.c.first_submitted, folded.c.decided,
               folded.c.approved, folded.c.rejected, applicant.country, applicant.affiliation, applicant.email,
               pi.affiliation, pi.email, member, Application.applicant_id)
        .join(folded, folded.c.application_id == Application.id)
        .join(Dataset, Dataset.id == Application.dataset_id)
        .join(Project, Project.id == Dataset.project_id)
        .join(applicant, applicant.id == Application.applicant_id)
        .join(pi, pi.id == Project.pi_id)
        .where(Application.dataset_id.in_(scope), folded.c.first_submitted.is_not(None))).all()
    made: Counter[str] = Counter()
    n_approved: Counter[str] = Counter()
    n_rejected: Counter[str] = Counter()
    waits: dict[str, list[float]] = defaultdict(list)
    external: Counter[str] = Counter()
    countries: dict[str, Counter[str]] = defaultdict(Counter)
    apps_by_month: Counter[str] = Counter()
    approved_by_month: Counter[str] = Counter()
    for (ds_id, sub_at, first_at, dec_at, was_approved, was_rejected, country, affiliation, email,
         pi_affiliation, pi_email, is_member, _) in app_rows:
        made[ds_id] += 1
        apps_by_month[figures.month_of(first_at)] += 1
        if dec_at is not None and sub_at is not None and dec_at >= sub_at:
            waits[ds_id].append((dec_at - sub_at).total_seconds() / 86400)
        if was_approved:
            n_approved[ds_id] += 1
            approved_by_month[figures.month_of(dec_at or first_at)] += 1
            countries[ds_id][figures.person_country(country, affiliation, email) or "unknown"] += 1
            if figures.is_external(member_of_owner=bool(is_member),
                                   applicant_org=figures.organisation(affiliation, email),
                                   owner_org=figures.organisation(pi_affiliation, pi_email)):
                external[ds_id] += 1
        elif was_rejected:
            n_rejected[ds_id] += 1
    # completed downloads of the datasets' files (any version), from the audit log
    files = (select(DatasetFile.file_id, DatasetVersion.dataset_id)
             .join(DatasetVersion, DatasetVersion.id == DatasetFile.version_id)
             .where(DatasetVersion.dataset_id.in_(scope)).distinct().subquery())
    sent = AuditEvent.details["bytes_sent"].as_integer()
    dl_month = _month(session, AuditEvent.at)
    downloads: Counter[str] = Counter()
    download_bytes: Counter[str] = Counter()
    dl_by_month: Counter[str] = Counter()
    bytes_by_month: Counter[str] = Counter()
    for ds_id, month, n, size in session.execute(
            select(files.c.dataset_id, dl_month, func.count(), func.coalesce(func.sum(sent), 0))
            .join(files, files.c.file_id == func.substr(AuditEvent.target, 6))
            .where(AuditEvent.action == "archive.download.completed")
            .group_by(files.c.dataset_id, dl_month)):
        downloads[ds_id] += n
        download_bytes[ds_id] += int(size)
        dl_by_month[month] += n
        bytes_by_month[month] += int(size)
    downloaders: dict[str, int] = dict(session.execute(
        select(files.c.dataset_id, func.count(func.distinct(AuditEvent.actor_id)))
        .join(files, files.c.file_id == func.substr(AuditEvent.target, 6))
        .where(AuditEvent.action == "archive.download.completed").group_by(files.c.dataset_id)).tuples().all())
    all_downloaders = session.scalar(
        select(func.count(func.distinct(AuditEvent.actor_id)))
        .join(files, files.c.file_id == func.substr(AuditEvent.target, 6))
        .where(AuditEvent.action == "archive.download.completed")) or 0
    # Distinct downloaders are not additive (one person may download several datasets, in several months),
    # so no total minus parts gives one of them back: the small-count rule alone covers them.
    for ds_id, d in per.items():
        d.downloaders = shown(downloaders.get(ds_id, 0))
    m.downloaders = shown(all_downloaders)

    # totals, splits and the modality / organ tables (counts of imaging are exact ints until _protect_imaging)
    for d in per.values():
        for name in IMAGING:
            setattr(m, name, _int(getattr(m, name)) + _int(getattr(d, name)))
        m.files += d.files
        m.bytes += d.bytes
        m.views += d.views
        m.visitors += d.visitors
        if d.annotated:
            m.annotated.datasets += 1
            m.annotated.scans = _int(m.annotated.scans) + _int(d.scans)
        d.modalities.sort()
        d.organs.sort()
    for split, name in ((m.pathology, "pathology"), (m.radiology, "radiology")):
        split.datasets = sum(1 for d in per.values() if getattr(d, name))
        split.scans = sum(row["scans"] for mod, row in by_modality.items()
                          if (figures.is_pathology(mod) if name == "pathology" else figures.is_radiology(mod)))
    m.modalities = len(by_modality)
    m.organs = len(by_organ)
    if not exact_imaging:
        _protect_imaging(m, per, by_modality, by_organ)
    # by what is shown, so that the order of hidden or rounded counts does not tell them apart
    m.by_modality = sorted(by_modality.values(), key=lambda r: (*_order(r["scans"]), *_order(r["instances"]),
                                                                r["modality"]))
    m.by_organ = sorted(by_organ.values(), key=lambda r: (*_order(r["scans"]), r["organ"]))

    # months: datasets published (running total), applications, approvals, downloads, views
    published_by_month = Counter(figures.month_of(d.published_at) for d in per.values() if d.published_at)
    seen = (set(published_by_month) | set(apps_by_month) | set(approved_by_month) | set(dl_by_month)
            | set(views_by_month))
    months = figures.months_between(min(seen), max(max(seen), figures.month_of(now))) if seen else []

    # the people figures as cells, and every margin they form (figures.protect_all hides by subtraction too)
    fig_by_ds = {"made": made, "approved": n_approved, "rejected": n_rejected, "external": external,
                 "downloads": downloads}
    total = {name: Cell(sum(counts.values())) for name, counts in fig_by_ds.items()}
    cell = {ds_id: {name: Cell(counts[ds_id]) for name, counts in fig_by_ds.items()} for ds_id in per}
    by_month = {month: {"applications": Cell(apps_by_month[month]), "approved": Cell(approved_by_month[month]),
                        "downloads": Cell(dl_by_month[month])} for month in months}
    known = {ds_id: {c: Cell(n) for c, n in countries[ds_id].items() if c != "unknown"} for ds_id in per}
    all_countries: Counter[str] = Counter()
    for ds_id in per:
        all_countries.update({c: n for c, n in countries[ds_id].items() if c != "unknown"})
    country_total = {c: Cell(n) for c, n in all_countries.items()}
    margins = [Margin(total[name], [cell[ds_id][name] for ds_id in per]) for name in fig_by_ds]  # by dataset
    margins += [Margin(total[name], [by_month[month][column] for month in months])  # by month
                for name, column in (("made", "applications"), ("approved", "approved"), ("downloads", "downloads"))]
    # by country: approvals from unknown countries are in the totals but in no row
    margins += [Margin(total["approved"], list(country_total.values()), unpublished=True)]
    margins += [Margin(cell[ds_id]["approved"], list(known[ds_id].values()), unpublished=True) for ds_id in per]
    margins += [Margin(country_total[c], [known[ds_id][c] for ds_id in per if c in known[ds_id]])
                for c in country_total]
    # made holds approved + rejected (the rest pending), approved holds external: each difference is a count
    for figs in (total, *cell.values()):
        margins.append(Margin(figs["made"], [figs["approved"], figs["rejected"]], unpublished=True))
        margins.append(Margin(figs["approved"], [figs["external"]], unpublished=True))
    figures.protect_all(margins)

    for ds_id, d in per.items():
        c = cell[ds_id]
        d.applications = Applications(made=c["made"].out, approved=c["approved"].out, rejected=c["rejected"].out,
                                      decision_days=figures.decision_days(waits[ds_id]))
        d.external_sharing_events = c["external"].out
        d.countries_shared_with = len(known[ds_id])  # the countries are named in the list anyway
        d.countries = _country_rows(known[ds_id].items())
        d.downloads = c["downloads"].out
        d.download_bytes = shown_bytes(download_bytes[ds_id], d.downloads)
    m.applications = Applications(made=total["made"].out, approved=total["approved"].out,
                                  rejected=total["rejected"].out,
                                  decision_days=figures.decision_days([w for ws in waits.values() for w in ws]))
    m.external_sharing_events = total["external"].out
    m.countries_shared_with = len(country_total)
    m.countries = _country_rows(country_total.items())
    m.downloads = total["downloads"].out
    m.download_bytes = shown_bytes(sum(download_bytes.values()), m.downloads)
    running = 0
    for month in months:
        running += published_by_month[month]
        cells = by_month[month]
        m.months.append(Month(month=month, datasets_published=published_by_month[month], datasets_total=running,
                              applications=cells["applications"].out, approved=cells["approved"].out,
                              downloads=cells["downloads"].out,
                              download_bytes=shown_bytes(bytes_by_month[month], cells["downloads"].out),
                              views=views_by_month[month]))
    # every text published, with any person's e-mail address withheld as on the landing pages
    scrub = scrubber(session, [*(d.title for d in per.values()), *by_modality, *by_organ])
    for d in per.values():
        d.title, d.modalities, d.organs = scrub(d.title), [scrub(x) for x in d.modalities], [scrub(x) for x in d.organs]
    for row in m.by_modality:
        row["modality"] = scrub(row["modality"])
    for row in m.by_organ:
        row["organ"] = scrub(row["organ"])
    m.per_dataset = sorted(per.values(), key=lambda d: (d.title.lower(), d.id))
    return m


def _int(value: Count) -> int:
    assert isinstance(value, int), "counts of imaging are protected only once, after every sum"
    return value


def _order(value: Count) -> tuple[int, int]:
    """Most first; hidden counts ("< 5", withheld) after every number, among themselves in no order of size."""
    return (1, 0) if isinstance(value, str) else (0, -value)


def _protect_imaging(m: Metrics, per: dict[str, DatasetFigures], by_modality: dict[str, dict[str, Any]],
                     by_organ: dict[str, dict[str, Any]]) -> None:
    """The public small-count rule on every count of people's imaging, and every margin they form (each total by
    dataset, scans and instances by modality, scans by organ and by kind): "< 5", else rounded to 5, and more
    withheld wherever a small one could still be worked out. A lower bound a reader knows (a dataset that lists
    four modalities has at least four instances; a modality in four datasets has at least four scans) is part of
    each cell, so that "< 5" never pins a 4."""
    def cell(value: Count, at_least: int = 0) -> Cell:
        return Cell(_int(value), rounded=True, at_least=min(at_least, _int(value)))  # a bound is never above it

    ds_cells: dict[str, dict[str, Cell]] = {}
    for ds_id, d in per.items():
        present = 1 if d.modalities else 0  # a dataset with objects has a subject and a study
        n_images = sum(1 for x in d.modalities if figures.is_image(x))
        ds_cells[ds_id] = {
            "subjects": cell(d.subjects, present), "studies": cell(d.studies, present),
            "scans": cell(d.scans, max(n_images, len(d.organs))), "instances": cell(d.instances, len(d.modalities)),
            "annotations": cell(d.annotations, max(int(d.annotated), sum(
                1 for x in d.modalities if x in figures.ANNOTATION_MODALITIES)))}
    totals = {name: cell(getattr(m, name), sum(c[name].at_least for c in ds_cells.values())) for name in IMAGING}
    margins = [Margin(totals[name], [c[name] for c in ds_cells.values()]) for name in IMAGING]

    # a modality (or organ) of one dataset that has no other: its row is that dataset's cell, shown once
    def only(row: dict[str, Any], values: str, key: str) -> DatasetFigures | None:
        found = [d for d in per.values() if row[key] in getattr(d, values)]
        return found[0] if row["datasets"] == 1 and len(found) == 1 and getattr(found[0], values) == [row[key]] \
            else None

    mod_cells: dict[str, dict[str, Cell]] = {}
    for mod, row in by_modality.items():
        alone = only(row, "modalities", "modality")
        image = figures.is_image(mod)
        mod_cells[mod] = {
            "instances": ds_cells[alone.id]["instances"] if alone else cell(row["instances"], row["datasets"]),
            "scans": ds_cells[alone.id]["scans"] if alone and image
            else cell(row["scans"], row["datasets"] if image else 0)}
    images = [mod for mod in by_modality if figures.is_image(mod)]
    pathology = [mod for mod in images if figures.is_pathology(mod)]
    radiology = [mod for mod in images if figures.is_radiology(mod)]
    kinds = {"pathology": mod_cells[pathology[0]]["scans"] if len(pathology) == 1  # SM alone: the same figure
             else cell(m.pathology.scans, sum(mod_cells[x]["scans"].at_least for x in pathology)),
             "radiology": mod_cells[radiology[0]]["scans"] if len(radiology) == 1
             else cell(m.radiology.scans, sum(mod_cells[x]["scans"].at_least for x in radiology))}
    annotated = [c for ds_id, c in ds_cells.items() if per[ds_id].annotated]
    kinds["annotated"] = annotated[0]["scans"] if len(annotated) == 1 else \
        cell(m.annotated.scans, sum(c["scans"].at_least for c in annotated))
    with_modality = sum(_int(row["instances"]) for row in by_modality.values())
    margins += [Margin(totals["scans"], [mod_cells[x]["scans"] for x in images]),
                Margin(totals["instances"], [c["instances"] for c in mod_cells.values()],
                       unpublished=with_modality < _int(m.instances)),  # objects without a modality
                Margin(totals["scans"], [kinds["pathology"], kinds["radiology"]]),
                Margin(kinds["pathology"], [mod_cells[x]["scans"] for x in pathology]),
                Margin(kinds["radiology"], [mod_cells[x]["scans"] for x in radiology]),
                Margin(kinds["annotated"], [c["scans"] for c in annotated])]
    organ_cells: dict[str, Cell] = {}
    for organ, row in by_organ.items():
        alone = only(row, "organs", "organ")
        organ_cells[organ] = ds_cells[alone.id]["scans"] if alone and _int(alone.scans) == _int(row["scans"]) \
            else cell(row["scans"], row["datasets"])
    # a modality (or organ) in one dataset only is that dataset's part: the dataset's own count is a margin too
    for ds_id, d in per.items():
        mods = [x for x in d.modalities if by_modality[x]["datasets"] == 1]
        image_mods = [x for x in mods if figures.is_image(x)]
        n_images = sum(1 for x in d.modalities if figures.is_image(x))
        in_rows = sum(_int(by_modality[x]["instances"]) for x in mods)
        margins.append(Margin(ds_cells[ds_id]["instances"], [mod_cells[x]["instances"] for x in mods],
                              unpublished=len(mods) < len(d.modalities) or in_rows < _int(d.instances)))
        in_rows = sum(_int(by_modality[x]["scans"]) for x in image_mods)
        margins.append(Margin(ds_cells[ds_id]["scans"], [mod_cells[x]["scans"] for x in image_mods],
                              unpublished=len(image_mods) < n_images or in_rows < _int(d.scans)))
        organs = [x for x in d.organs if by_organ[x]["datasets"] == 1]
        in_rows = sum(_int(by_organ[x]["scans"]) for x in organs)
        if in_rows <= _int(d.scans):
            margins.append(Margin(ds_cells[ds_id]["scans"], [organ_cells[x] for x in organs],
                                  unpublished=len(organs) < len(d.organs) or in_rows < _int(d.scans)))
    in_organs = sum(_int(row["scans"]) for row in by_organ.values())
    if in_organs <= _int(m.scans):  # (a series of several body parts is in several rows: then no margin)
        margins.append(Margin(totals["scans"], list(organ_cells.values()), unpublished=in_organs < _int(m.scans)))
    figures.protect_all(margins)

    for name in IMAGING:
        setattr(m, name, totals[name].out)
        for ds_id, d in per.items():
            setattr(d, name, ds_cells[ds_id][name].out)
    for mod, row in by_modality.items():
        row["scans"], row["instances"] = mod_cells[mod]["scans"].out, mod_cells[mod]["instances"].out
    for organ, row in by_organ.items():
        row["scans"] = organ_cells[organ].out
    m.pathology.scans, m.radiology.scans = kinds["pathology"].out, kinds["radiology"].out
    m.annotated.scans = kinds["annotated"].out


def _country_rows(items: Iterable[tuple[str, Cell]]) -> list[dict[str, Any]]:
    """Countries by approvals, most first; the hidden ones ("< 5" or withheld) after them by code, so
    that their order does not tell their counts apart (nor place a withheld one between two shown)."""
    pairs = list(items)
    exact = sorted(((c, n) for c, n in pairs if not n.hidden), key=lambda p: (-p[1].value, p[0]))
    hidden = sorted(((c, n) for c, n in pairs if n.hidden), key=lambda p: p[0])
    return [{"country": c, "name": figures.country_name(c), "approved": n.out} for c, n in exact + hidden]


_cache: dict[str, tuple[float, tuple[int, ...], Metrics]] = {}
_cache_lock = threading.Lock()


def public_metrics(session: Session, *, cache_key: str = "") -> Metrics:
    """Figures over every published dataset, recomputed at most every ``CACHE_SECONDS`` per process and
    ``cache_key`` (the database), and at once when the catalogue changes (a withdrawal, a publication, a new
    release): the cache is keyed on the catalogue generation, as the landing pages are."""
    token = generation.token(session.get_bind().engine)  # before anything is read: a change meanwhile is seen next time
    with _cache_lock:
        hit = _cache.get(cache_key)
        if hit and token is not None and hit[1] == token and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[2]
    metrics = compute(session, _published())
    if token is not None:  # unknown (no listener yet): nothing to check a cached copy against
        with _cache_lock:
            _cache[cache_key] = (time.monotonic(), token, metrics)
    return metrics


def dataset_metrics(session: Session, principal: Principal, dataset_id: str) -> Metrics:
    """One dataset's figures for the people who handle its applications (the owning PI by default),
    published or not. Everyone else: NotFound."""
    if dataset_id not in handled_datasets(session, principal):
        raise NotFound("no such dataset")
    return compute(session, select(Dataset.id).where(Dataset.id == dataset_id), exact_imaging=True)


__all__ = ["Metrics", "compute", "dataset_metrics", "public_metrics", "record_view"]
