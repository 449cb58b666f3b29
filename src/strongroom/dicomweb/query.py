"""QIDO-RS in SQL over the imaging index (``imaging_instances``): nothing is decrypted to answer a query.

Who sees what (``open_scope``): a project member with the read-data right sees every instance of the
project that is archived or published (never a quarantined or discarded one); anyone else sees the
published versions of the project's import dataset their grants open (``archive.datasets.dataset_grant``: a
share into their project, an entitlement or a visa to the dataset opens every published version, one to version
N that version's files only), and a stranger gets NotFound.

A study or series query pages over the matching keys first (``GROUP BY`` on the per-project index,
stopping after ``offset + limit``), then computes the counts and attributes of that page only, so a page
costs the same on a thousand instances as on a million.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.orm import Session

from ..archive.authz import PUBLISHED_STATES
from ..archive.datasets import dataset_grant
from ..archive.models import READY, ArchiveFile, Dataset, DatasetFile
from ..errors import NotFound
from ..identity.principal import Principal
from ..imaging.models import ARCHIVED, PUBLISHED, ImagingProject, ImportedInstance
from ..projects import service as projects
from ..projects.models import Project
from . import attributes as attrs
from .attributes import INSTANCE, SERIES, STUDY, Attribute, BadQuery, Match

I = ImportedInstance  # noqa: E741 - the one table every query reads
MAX_LIMIT, DEFAULT_LIMIT = 1000, 100


@dataclass(frozen=True)
class Scope:
    """What one caller may see of one project: every visible instance, or only some published versions."""

    project_id: uuid.UUID
    slug: str
    versions: tuple[int, ...] | None  # None: the project's member with read-data
    version_ids: tuple[int, ...] = ()  # the rows of ``versions``: their files are what the caller sees

    def where(self) -> list[ColumnElement[bool]]:
        # the archive file must be ready too: retention deletes a deleted file's rows, this is the second lock
        ready = select(ArchiveFile.id).where(ArchiveFile.id == I.file_id, ArchiveFile.state == READY).exists()
        clauses = [I.project_id == self.project_id, I.file_id.is_not(None), ready]
        if self.versions is None:
            clauses.append(I.state.in_((ARCHIVED, PUBLISHED)))
        else:
            # exactly the granted versions' files: an instance first published earlier is in a later
            # (cumulative) version too, and one published later is in none of the granted ones
            clauses += [I.state == PUBLISHED, I.file_id.in_(
                select(DatasetFile.file_id).where(DatasetFile.version_id.in_(self.version_ids)))]
        return clauses


def open_scope(session: Session, principal: Principal, slug: str) -> Scope:
    """The caller's view of project ``slug``; NotFound (as for a made-up slug) when they may read nothing."""
    try:
        access = projects.open_project(session, principal, slug)
    except NotFound:
        access = None
    if access is not None:
        # What ``archive.authz.readable_projects`` decides for this project, from the rows open_project just
        # read (this membership, its rights; MFA and a token's project binding checked there), not re-read.
        if "read-data" in access.rights:
            return Scope(access.project.id, slug, None)
        raise NotFound(f"no project {slug!r}")
    project = session.scalar(select(Project).where(Project.slug == slug))
    row = session.get(ImagingProject, project.id) if project is not None else None
    ds = session.get(Dataset, row.dataset_id) if row is not None and row.dataset_id else None
    if project is None or ds is None:
        raise NotFound(f"no project {slug!r}")
    # Decided from the grants on the import dataset and the versions they name (a share, an entitlement or
    # visa to the dataset: every published version; to version N: version N only), never from a sampled file.
    grant = dataset_grant(session, principal, ds)
    versions = [v for v in ds.versions if v.state in PUBLISHED_STATES and grant.opens(v)] if grant else []
    if not versions:
        raise NotFound(f"no project {slug!r}")
    return Scope(project.id, slug, tuple(v.number for v in versions), tuple(v.id for v in versions))


@dataclass(frozen=True)
class Query:
    """A parsed QIDO request: the matches, the extra fields, paging."""

    matches: tuple[Match, ...]
    fields: tuple[str, ...]
    limit: int
    offset: int


def parse(params: Sequence[tuple[str, str]], level: str) -> Query:
    """QIDO query parameters (repeated keys allowed) → a :class:`Query`; Invalid on anything unknown."""
    matches: list[Match] = []
    include: list[str] = []
    limit, offset = DEFAULT_LIMIT, 0
    for key, value in params:
        if key == "limit":
            limit = _int(key, value, 1, MAX_LIMIT)
        elif key == "offset":
            offset = _int(key, value, 0, 10**9)
        elif key == "includefield":
            include.append(value)
        elif key == "fuzzymatching":
            if value.lower() not in ("true", "false"):  # true: answered with exact matching (api adds a Warning)
                raise BadQuery("fuzzymatching is true or false")
        else:
            match = attrs.parse_match(attrs.lookup(key), value)
            if match is not None:
                matches.append(match)
    fields = list(attrs.DEFAULT[level]) + (list(attrs.DEFAULT[SERIES]) if level == INSTANCE else [])
    if level != STUDY:  # a series or instance found across studies names its study
        fields.append("StudyInstanceUID")
    for keyword in attrs.include_fields(include, level):
        if keyword not in fields:
            fields.append(keyword)
    return Query(tuple(matches), tuple(fields), limit, offset)


def _int(key: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise BadQuery(f"{key} must be a whole number") from None
    if not lo <= n <= hi:
        raise BadQuery(f"{key} must be between {lo} and {hi}")
    return n


def _clause(match: Match) -> ColumnElement[bool]:
    column = getattr(I, match.attribute.column or "")
    if match.kind == "list":
        return column.in_(match.values)
    if match.kind == "range":
        lo, hi = match.values
        parts = [column != ""]
        if lo is not None:
            parts.append(column >= lo)
        if hi is not None:
            parts.append(column <= hi)
        return and_(*parts)
    if match.kind == "wild":
        return column.like(attrs.like_pattern(match.values[0]), escape="\\")
    return column == match.values[0]


def _matching(scope: Scope, matches: Sequence[Match], **keys: str) -> Select[Any]:
    stmt = select(I.study_uid)  # columns are replaced by the caller
    stmt = stmt.where(*scope.where(), *(_clause(m) for m in matches))
    for column, value in keys.items():
        stmt = stmt.where(getattr(I, column) == value)
    return stmt


def studies(session: Session, scope: Scope, query: Query, base_url: str) -> list[dict[str, Any]]:
    page = list(session.scalars(
        _matching(scope, query.matches).with_only_columns(I.study_uid).group_by(I.study_uid)
        .order_by(I.study_uid).limit(query.limit).offset(query.offset)))
    if not page:
        return []
    columns = {a.column for k in query.fields if (a := attrs.BY_KEYWORD[k]).level == STUDY and a.column}
    columns.discard("modality")
    names = sorted(columns)
    rows = session.execute(
        select(I.study_uid, func.count(func.distinct(I.series_uid)), func.count(),
               *(func.max(getattr(I, c)) for c in names))
        .where(*scope.where(), I.study_uid.in_(page)).group_by(I.study_uid)).all()
    modalities: dict[str, list[str]] = {}
    for study, modality in session.execute(
            select(I.study_uid, I.modality).where(*scope.where(), I.study_uid.in_(page))
            .group_by(I.study_uid, I.modality).order_by(I.modality)):
        if modality:
            modalities.setdefault(study, []).append(modality)
    found = {}
    for study, n_series, n_instances, *values in rows:
        row: dict[str, Any] = dict(zip(names, values, strict=True))
        row |= {"study_uid": study, "NumberOfStudyRelatedSeries": n_series,
                "NumberOfStudyRelatedInstances": n_instances, "ModalitiesInStudy": modalities.get(study, [])}
        found[study] = _dataset(row, query.fields, f"{base_url}/studies/{study}")
    return [found[s] for s in page if s in found]


def series(session: Session, scope: Scope, query: Query, base_url: str, study: str | None = None
           ) -> list[dict[str, Any]]:
    keys = {"study_uid": study} if study else {}
    page = list(session.execute(
        _matching(scope, query.matches, **keys).with_only_columns(I.study_uid, I.series_uid)
        .group_by(I.study_uid, I.series_uid).order_by(I.study_uid, I.series_uid)
        .limit(query.limit).offset(query.offset)).tuples())
    if not page:
        return []
    columns = {a.column for k in query.fields if (a := attrs.BY_KEYWORD[k]).level in (STUDY, SERIES) and a.column}
    columns -= {"study_uid", "series_uid"}
    names = sorted(columns)
    rows = session.execute(
        select(I.series_uid, func.count(), *(func.max(getattr(I, c)) for c in names))
        .where(*scope.where(), I.series_uid.in_([s for _, s in page])).group_by(I.series_uid)).all()
    found = {}
    for series_uid, n_instances, *values in rows:
        found[series_uid] = dict(zip(names, values, strict=True)) | {"NumberOfSeriesRelatedInstances": n_instances}
    out = []
    for study_uid, series_uid in page:
        if series_uid in found:
            row = found[series_uid] | {"study_uid": study_uid, "series_uid": series_uid}
            if "modality" in row:
                row["ModalitiesInStudy"] = [row["modality"]]  # the series' own, if asked for at this level
            out.append(_dataset(row, query.fields, f"{base_url}/studies/{study_uid}/series/{series_uid}"))
    return out


def instances(session: Session, scope: Scope, query: Query, base_url: str, study: str | None = None,
              series_uid: str | None = None) -> list[dict[str, Any]]:
    keys = {k: v for k, v in (("study_uid", study), ("series_uid", series_uid)) if v}
    order = (I.instance_number, I.sop_instance_uid) if series_uid else (I.id,)  # by id: an index scan
    rows = session.scalars(_matching(scope, query.matches, **keys).with_only_columns(I)
                           .order_by(*order).limit(query.limit).offset(query.offset))
    out = []
    for inst in rows:
        row = {c.key: getattr(inst, c.key) for c in I.__table__.columns}
        row["ModalitiesInStudy"] = [inst.modality] if inst.modality else []
        url = f"{base_url}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/{inst.sop_instance_uid}"
        out.append(_dataset(row, query.fields, url))
    return out


def patients(session: Session, scope: Scope, matches: Sequence[Match], limit: int, offset: int
             ) -> list[tuple[str, str, int, int, int]]:
    """PATIENT level (DIMSE Patient Root C-FIND): per patient pseudonym its name and the numbers of its studies,
    series and instances, a page at a time."""
    rows = session.execute(
        _matching(scope, matches).with_only_columns(
            I.patient_pseudonym, func.max(I.patient_name), func.count(func.distinct(I.study_uid)),
            func.count(func.distinct(I.series_uid)), func.count())
        .group_by(I.patient_pseudonym).order_by(I.patient_pseudonym).limit(limit).offset(offset)).tuples()
    return [(p or "", n or "", studies, series, count) for p, n, studies, series, count in rows]


def retrievable(session: Session, scope: Scope, matches: Sequence[Match], limit: int) -> list[ImportedInstance]:
    """The visible instances matching ``matches`` in study, series and instance order, at most ``limit``
    (a DIMSE C-GET/C-MOVE: the same index, scope and matching as QIDO)."""
    return list(session.scalars(_matching(scope, matches).with_only_columns(I).order_by(
        I.study_uid, I.series_number, I.series_uid, I.instance_number, I.sop_instance_uid).limit(limit)))


def _dataset(row: Mapping[str, Any], fields: Sequence[str], retrieve_url: str) -> dict[str, Any]:
    """One result in DICOM JSON, keyed by tag in ascending order (PS3.18 F.2)."""
    out: dict[str, Any] = {}
    for keyword in fields:
        attribute: Attribute = attrs.BY_KEYWORD[keyword]
        value = row.get(keyword) if keyword in attrs.COMPUTED else row.get(attribute.column or "", None)
        out[attribute.tag] = attrs.element(attribute, value)
    out[attrs.RETRIEVE_URL.tag] = attrs.element(attrs.RETRIEVE_URL, retrieve_url)
    return dict(sorted(out.items()))
