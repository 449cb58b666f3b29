"""Datasets and their versions: drafts, releases, shares into other projects, and who may see them."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import delete, insert, literal, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from ..audit import service as audit
from ..audit.service import Actor
from ..db import utcnow
from ..errors import Conflict, Forbidden, Invalid, NotFound
from ..identity.principal import Principal
from ..identity.service import require_fresh_mfa
from ..projects import service as projects
from ..projects.models import Project
from .accession import new_accession
from .authz import VersionGrant, project_access, readable_projects, refuse_if_ended
from .models import (
    DELETED,
    READY,
    ArchiveFile,
    Dataset,
    DatasetFile,
    DatasetShare,
    DatasetVersion,
)


def _ready_files(session: Session, project_id: uuid.UUID, ids: list[str]) -> list[ArchiveFile]:
    if not ids:
        return []
    found = {f.id: f for f in session.scalars(select(ArchiveFile).where(ArchiveFile.id.in_(set(ids))))}
    bad = [i for i in ids if i not in found or found[i].project_id != project_id]
    if bad:
        raise Invalid(f"not files of this project: {bad[:10]}")
    held = [i for i in ids if found[i].hold is not None]
    if held:
        raise Invalid(f"files held in quarantine cannot be in a dataset (release them first): {held[:10]}")
    not_ready = [i for i in ids if found[i].state != READY]
    if not_ready:
        raise Invalid(f"files not archived yet: {not_ready[:10]}")
    return list(found.values())


def create_dataset(session: Session, principal: Principal, access: projects.ProjectAccess, *, title: str,
                   description: str = "", files: list[str] | None = None) -> Dataset:
    access.require("write-data")
    if not title.strip():
        raise Invalid("a dataset needs a title")
    ds = Dataset(id=new_accession("SRD"), project_id=access.project.id, title=title.strip(),
                 description=description.strip(), created_by=principal.user.id)
    session.add(ds)
    session.flush()
    version = DatasetVersion(dataset_id=ds.id, number=1, state="draft")
    session.add(version)
    session.flush()
    _add_files(session, version, _ready_files(session, access.project.id, files or []))
    audit.record(session, principal.actor, "archive.dataset.created", project_id=access.project.id,
                 target=f"dataset:{ds.id}", details={"title": ds.title, "files": version.file_count})
    return ds


def _add_files(session: Session, version: DatasetVersion, files: list[ArchiveFile]) -> None:
    present = set(session.scalars(select(DatasetFile.file_id).where(
        DatasetFile.version_id == version.id, DatasetFile.file_id.in_([f.id for f in files])))) if files else set()
    new = [f for f in files if f.id not in present]
    if new:
        session.execute(insert(DatasetFile), [{"version_id": version.id, "file_id": f.id} for f in new])
        version.file_count += len(new)
        version.total_bytes += sum(f.plaintext_size or 0 for f in new)


# Other capabilities add ways to see a dataset (access: entitlements, visas); each answers which versions its
# grants open (``VersionGrant``: every published version, or the ones named) or None.
DATASET_READERS: list[Callable[[Session, Principal, Dataset], VersionGrant | None]] = []


def dataset_grant(session: Session, principal: Principal, ds: Dataset) -> VersionGrant | None:
    """Which versions of ``ds`` the caller may see, or None: every version for the owning project's readers, every
    published one through a share into a project they read, and what the registered readers grant (the union)."""
    readable = readable_projects(session, principal)
    if ds.project_id in readable:
        return VersionGrant(drafts=True)
    if readable and session.scalar(select(DatasetShare.project_id).where(
            DatasetShare.dataset_id == ds.id, DatasetShare.project_id.in_(readable)).limit(1)) is not None:
        return VersionGrant()  # a share is of the whole dataset
    found: VersionGrant | None = None
    for reader in DATASET_READERS:
        grant = reader(session, principal, ds)
        if grant is not None:
            found = grant if found is None else found | grant
        if found is not None and found.numbers is None:
            break  # nothing wider to find
    return found


def _visible(session: Session, principal: Principal, dataset_id: str) -> tuple[Dataset, VersionGrant]:
    ds = session.get(Dataset, dataset_id)
    grant = dataset_grant(session, principal, ds) if ds is not None else None
    if ds is not None and grant is None:
        refuse_if_ended(session, principal, ds.project_id)  # its project's member: told the project ended
    if ds is None or grant is None:
        raise NotFound("no such dataset")
    if not grant.drafts:
        # The versions a caller may not see do not exist for them: every page, API object and bundle built from
        # ``ds.versions`` in this transaction lists only the granted ones (loaded as the committed state, so
        # nothing is written; the next transaction loads them all again).
        set_committed_value(ds, "versions", [v for v in ds.versions if grant.opens(v)])
    return ds, grant


def visible_dataset(session: Session, principal: Principal, dataset_id: str) -> tuple[Dataset, bool]:
    """The dataset and whether the caller is in its owning project; NotFound unless they are an
    owner, a member of a project it is shared into, or allowed by a registered reader. For anyone but the
    owning project, ``ds.versions`` then holds only the versions their grants open (``dataset_grant``)."""
    ds, grant = _visible(session, principal, dataset_id)
    return ds, grant.drafts


def may_publish(session: Session, principal: Principal, ds: Dataset) -> bool:
    """For pages: whether the caller may release the dataset's versions and edit its catalogue entry."""
    try:
        return "publish" in project_access(session, principal, ds.project_id).rights
    except (NotFound, Forbidden):  # not a member, or the project ended
        return False


# Whether approved applicants may download a dataset (access: its policy); none registered → no.
DATASET_DOWNLOAD_POLICIES: list[Callable[[Session, Dataset], bool]] = []


def dataset_downloadable(session: Session, principal: Principal, ds: Dataset, owner: bool) -> bool:
    """For pages: whether the caller may download the dataset's files to their own machine — the
    project setting for members (of the owning or a receiving project), the dataset's access policy
    for everyone else. ``authorize_download`` decides per file; this only chooses what to show."""
    if owner:
        return bool(projects.get_setting(session, ds.project_id, "download_allowed"))
    receiving = session.scalars(select(DatasetShare.project_id).where(
        DatasetShare.dataset_id == ds.id, DatasetShare.project_id.in_(readable_projects(session, principal))))
    if any(projects.get_setting(session, pid, "download_allowed") for pid in receiving):
        return True
    return any(policy(session, ds) for policy in DATASET_DOWNLOAD_POLICIES)


def _owner_access(session: Session, principal: Principal, dataset_id: str) -> tuple[Dataset,
                                                                                  projects.ProjectAccess]:
    ds = session.get(Dataset, dataset_id)
    if ds is None:
        raise NotFound("no such dataset")
    try:
        access = project_access(session, principal, ds.project_id)
    except NotFound:
        raise NotFound("no such dataset") from None
    return ds, access


def edit_draft(session: Session, principal: Principal, dataset_id: str, *, add: list[str],
               remove: list[str]) -> DatasetVersion:
    """Change the draft version; if the newest version is released, a new draft starts from it."""
    ds, access = _owner_access(session, principal, dataset_id)
    access.require("write-data")
    # locked: a release checking this draft (strategies: what it holds) finishes before the edit starts, and
    # an edit finishes before a release checks; an edit never lands in a version released meanwhile
    latest = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
                            .order_by(DatasetVersion.number.desc()).limit(1).with_for_update()
                            .execution_options(populate_existing=True))
    assert latest is not None
    if latest.state != "draft":
        draft = DatasetVersion(dataset_id=ds.id, number=latest.number + 1, state="draft",
                               file_count=latest.file_count, total_bytes=latest.total_bytes)
        session.add(draft)
        session.flush()
        # copy the membership by reference in the database: no file is touched
        session.execute(insert(DatasetFile).from_select(
            ["version_id", "file_id"],
            select(literal(draft.id, DatasetFile.version_id.type), DatasetFile.file_id)
            .where(DatasetFile.version_id == latest.id)))
        latest = draft
    if remove:
        gone = list(session.scalars(select(ArchiveFile).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
                                    .where(DatasetFile.version_id == latest.id, ArchiveFile.id.in_(remove))))
        session.execute(delete(DatasetFile).where(DatasetFile.version_id == latest.id,
                                                  DatasetFile.file_id.in_([f.id for f in gone])))
        latest.file_count -= len(gone)
        latest.total_bytes -= sum(f.plaintext_size or 0 for f in gone)
    _add_files(session, latest, _ready_files(session, ds.project_id, add))
    audit.record(session, principal.actor, "archive.dataset.edited", project_id=ds.project_id,
                 target=f"dataset:{ds.id}", details={"version": latest.number, "added": len(add),
                                                     "removed": len(remove)})
    return latest


# What must hold before a version is released (strategies: every table is a passing run's output). Each
# raises a DomainError to refuse. Every way to release goes through `_check_release`: `release_version`
# (API, page, CLI) and `publish_version` (imports, data requests); shares, the catalogue, entitlements and
# visas only ever reach released versions.
RELEASE_CHECKS: list[Callable[[Session, Dataset, DatasetVersion], None]] = []

# What a version is marked with (strategies: the runs that made its tables), for pages and the API: each
# returns dicts with at least "text" (and optionally "href", "link").
VERSION_MARKS: list[Callable[[Session, Dataset, DatasetVersion], list[dict[str, str]]]] = []


def _check_release(session: Session, ds: Dataset, version: DatasetVersion) -> None:
    session.flush()
    for check in RELEASE_CHECKS:
        check(session, ds, version)


def version_marks(session: Session, ds: Dataset, version: DatasetVersion) -> list[dict[str, str]]:
    return [mark for provider in VERSION_MARKS for mark in provider(session, ds, version)]


def _version(session: Session, ds: Dataset, number: int) -> DatasetVersion:
    v = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id,
                                                    DatasetVersion.number == number))
    if v is None:
        raise NotFound(f"no version {number}")
    return v


def release_version(session: Session, principal: Principal, dataset_id: str, number: int) -> DatasetVersion:
    ds, access = _owner_access(session, principal, dataset_id)
    access.require("publish")
    v = _version(session, ds, number)
    if v.state != "draft":
        raise Conflict(f"version {number} is {v.state}; released versions never change")
    if v.file_count == 0:
        raise Invalid("an empty version cannot be released")
    _check_release(session, ds, v)
    v.state, v.released_at = "released", utcnow()
    audit.record(session, principal.actor, "archive.dataset.released", project_id=ds.project_id,
                 target=f"dataset:{ds.id}", details={"version": number, "files": v.file_count})
    _released(session, v)
    return v


# Capabilities told of every released version, in the releasing transaction (e.g. the catalogue mints its DOI).
RELEASE_HOOKS: list[Callable[[Session, DatasetVersion], None]] = []


def _released(session: Session, version: DatasetVersion) -> None:
    for hook in RELEASE_HOOKS:
        hook(session, version)


def deprecate_version(session: Session, principal: Principal, dataset_id: str, number: int) -> DatasetVersion:
    ds, access = _owner_access(session, principal, dataset_id)
    access.require("publish")
    v = _version(session, ds, number)
    if v.state != "released":
        raise Conflict("only a released version can be deprecated")
    v.state = "deprecated"
    audit.record(session, principal.actor, "archive.dataset.deprecated", project_id=ds.project_id,
                 target=f"dataset:{ds.id}", details={"version": number})
    return v


def version_files(session: Session, principal: Principal, dataset_id: str, number: int, *,
                  after: str | None = None, limit: int = 1000) -> tuple[DatasetVersion, list[ArchiveFile]]:
    """One page of a version's files in id order (keyset: fast at any depth, any size); not the files retention
    deleted (a deleted version lists only those it shared with a version that stays)."""
    ds, grant = _visible(session, principal, dataset_id)
    v = _version(session, ds, number)
    if not grant.opens(v):  # a draft, or a version the caller's grant does not name: as if it did not exist
        raise NotFound(f"no version {number}")
    stmt = (select(ArchiveFile).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
            .where(DatasetFile.version_id == v.id, ArchiveFile.hold.is_(None), ArchiveFile.state != DELETED)
            .order_by(DatasetFile.file_id).limit(min(max(limit, 1), 5000)))
    if after:
        stmt = stmt.where(DatasetFile.file_id > after)
    return v, list(session.scalars(stmt))


def share_dataset(session: Session, principal: Principal, dataset_id: str, target_slug: str,
                  *, fresh_minutes: int) -> DatasetShare:
    """Share a released dataset read-only into another project (by reference, no quota)."""
    ds, access = _owner_access(session, principal, dataset_id)
    access.require("export")
    require_fresh_mfa(principal, fresh_minutes)
    if not projects.get_setting(session, ds.project_id, "external_sharing"):
        raise Forbidden("the project's 'Share datasets with other projects' setting is locked")
    if not session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id,
                                                       DatasetVersion.state == "released")):
        raise Invalid("release a version before sharing")
    target = session.scalar(select(Project).where(Project.slug == target_slug))
    if target is None or target.id == ds.project_id:
        raise Invalid(f"no other project {target_slug!r}")
    share = session.get(DatasetShare, (ds.id, target.id))
    if share is None:
        share = DatasetShare(dataset_id=ds.id, project_id=target.id, shared_by=principal.user.id)
        session.add(share)
        audit.record(session, principal.actor, "archive.dataset.shared", project_id=ds.project_id,
                     target=f"dataset:{ds.id}", details={"into": target_slug})
    return share


def unshare_dataset(session: Session, principal: Principal, dataset_id: str, target_slug: str) -> None:
    ds, access = _owner_access(session, principal, dataset_id)
    access.require("export")
    target = session.scalar(select(Project).where(Project.slug == target_slug))
    share = session.get(DatasetShare, (ds.id, target.id)) if target else None
    if share is None:
        raise NotFound("not shared with that project")
    session.delete(share)
    audit.record(session, principal.actor, "archive.dataset.unshared", project_id=ds.project_id,
                 target=f"dataset:{ds.id}", details={"from": target_slug})


def list_datasets(session: Session, principal: Principal, access: projects.ProjectAccess) -> list[Dataset]:
    """Datasets the project owns plus those shared into it."""
    owned = list(session.scalars(select(Dataset).where(Dataset.project_id == access.project.id)
                                 .order_by(Dataset.created_at)))
    shared = list(session.scalars(select(Dataset).join(DatasetShare, DatasetShare.dataset_id == Dataset.id)
                                  .where(DatasetShare.project_id == access.project.id)))
    return owned + shared


def publish_version(session: Session, actor: Actor, dataset: Dataset, file_ids: list[str], *,
                    note: str) -> DatasetVersion:
    """A new released version: the latest version's files plus ``file_ids`` (used by imports, which
    publish what passed verification without a person in the loop)."""
    latest = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
                            .order_by(DatasetVersion.number.desc()).limit(1))
    if latest is not None and latest.state == "draft" and latest.file_count == 0:
        version = latest  # the empty first version a new dataset starts with
    else:
        version = DatasetVersion(dataset_id=dataset.id, number=(latest.number + 1) if latest else 1,
                                 state="draft", file_count=latest.file_count if latest else 0,
                                 total_bytes=latest.total_bytes if latest else 0)
        session.add(version)
        session.flush()
        if latest is not None:
            session.execute(insert(DatasetFile).from_select(
                ["version_id", "file_id"],
                select(literal(version.id, DatasetFile.version_id.type), DatasetFile.file_id)
                .where(DatasetFile.version_id == latest.id)))
    for start in range(0, len(file_ids), 2000):  # bounded IN lists
        _add_files(session, version, _ready_files(session, dataset.project_id, file_ids[start:start + 2000]))
    _check_release(session, dataset, version)
    version.state, version.released_at, version.note = "released", utcnow(), note
    audit.record(session, actor, "archive.dataset.released", project_id=dataset.project_id,
                 target=f"dataset:{dataset.id}",
                 details={"version": version.number, "files": version.file_count, "added": len(file_ids)})
    _released(session, version)
    return version


def files_by_other_live_versions(session: Session, version: DatasetVersion
                                 ) -> list[tuple[ArchiveFile, list[int]]]:
    """The files of ``version`` (by path), each with the numbers of the other versions of its dataset, not
    deleted, that also hold it: a file is deleted with a version only when that list is empty."""
    files = session.scalars(select(ArchiveFile).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
                            .where(DatasetFile.version_id == version.id).order_by(ArchiveFile.path)).all()
    elsewhere: dict[str, list[int]] = {}
    ids = [f.id for f in files]
    for start in range(0, len(ids), 2000):  # bounded IN lists
        for file_id, number in session.execute(
                select(DatasetFile.file_id, DatasetVersion.number)
                .join(DatasetVersion, DatasetVersion.id == DatasetFile.version_id)
                .where(DatasetFile.file_id.in_(ids[start:start + 2000]), DatasetVersion.id != version.id,
                       DatasetVersion.state != DELETED)):
            elsewhere.setdefault(file_id, []).append(number)
    return [(f, sorted(elsewhere.get(f.id, []))) for f in files]
