"""Catalogue entries, one per dataset: the stewards (members of the dataset's owning project with
write-data) create, edit, publish and unpublish them; facts measured from the data (e.g. by the
DICOM import) are merged in. An entry is metadata only: nothing here ever points at data bytes."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..archive.models import Dataset, DatasetVersion
from ..audit import service as audit
from ..db import utcnow
from ..errors import Conflict, Invalid, NotFound
from ..identity.principal import Principal
from ..projects import service as projects
from ..projects.models import Project
from . import dois
from .fields import CONTROL, LABELS, LISTS, TEXTS, EntryFields
from .models import HOLDS_ADDRESS, CatalogEntry
from .privacy import EMAIL_RE, user_emails
from .search import reindex
from .vocab import DUO_PERMISSIONS, MODALITIES


def _no_personal_emails(session: Session, f: EntryFields) -> None:
    """No person's e-mail may reach a public page: not as the contact, not in any free text."""
    if f.contact_email and user_emails(session, [f.contact_email]):
        raise Invalid("the contact must be a role address (e.g. data-access@…), not a person's own e-mail",
                      errors=[{"loc": ["contact_email"], "msg": "a person's own e-mail", "type": "personal_email"}])
    for name in (*TEXTS, *LISTS):
        value = getattr(f, name)
        found = EMAIL_RE.findall(value if isinstance(value, str) else " ".join(value))
        if user_emails(session, found):
            message = (f"{LABELS[name]} contains a person's e-mail address; public pages may only show the "
                       "entry's role contact address")
            raise Invalid(message, errors=[{"loc": [name], "msg": message, "type": "personal_email"}])


def missing_for_publishing(entry: CatalogEntry) -> list[str]:
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


def steward_dataset(session: Session, principal: Principal, dataset_id: str) -> tuple[Dataset,
                                                                                    projects.ProjectAccess]:
    """The dataset for a member of its owning project with the ``publish`` right (its catalogue entry is its
    public face); Forbidden for its other members, NotFound for everyone else."""
    ds = session.get(Dataset, dataset_id)
    project = session.get(Project, ds.project_id) if ds else None
    if ds is None or project is None:
        raise NotFound("no such dataset")
    try:
        access = projects.open_project(session, principal, project.slug)
    except NotFound:
        raise NotFound("no such dataset") from None
    access.require("publish")
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
    return EntryFields.model_construct(slug=slug, title=ds.title, description=ds.description)


def save_entry(session: Session, principal: Principal, dataset_id: str,
               data: EntryFields | Mapping[str, Any]) -> CatalogEntry:
    """Create or update the dataset's catalogue entry from the steward's fields (an API body, a
    decoded form or an ``EntryFields``; validated here). A published entry must stay publishable."""
    ds, access = steward_dataset(session, principal, dataset_id)
    clean = EntryFields.parse(data.model_dump() if isinstance(data, EntryFields) else data)
    _no_personal_emails(session, clean)
    entry = entry_for(session, ds.id)
    _address_free(session, ds.id, clean.slug)
    created = entry is None
    if entry is None:
        entry = CatalogEntry(dataset_id=ds.id, created_by=principal.user.id, published=False)
        session.add(entry)
        changed = sorted(EntryFields.model_fields)
    else:
        if entry.published_at is not None and clean.slug != entry.slug:
            raise Conflict("the public address cannot change once the entry has been published: "
                           "links and citations point at it")
        changed = sorted(name for name in EntryFields.model_fields if getattr(entry, name) != clean.column(name))
    for name in EntryFields.model_fields:
        setattr(entry, name, clean.column(name))
    if entry.published:
        missing = missing_for_publishing(entry)
        if missing:
            raise Invalid("a published entry must stay complete; missing: " + "; ".join(missing))
    entry.updated_at = utcnow()
    session.flush()
    if created:
        for provider in INDEX_PROVIDERS:  # e.g. imaging: counts of what was imported so far
            provider(session, entry)
    reindex(session, entry)
    audit.record(session, principal.actor, "catalog.entry.created" if created else "catalog.entry.updated",
                 project_id=access.project.id, target=f"dataset:{ds.id}",
                 details={"slug": entry.slug, "fields": changed})
    if entry.published and changed:
        dois.schedule(session, ds.id)  # the DOIs' metadata follows the entry
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
    reindex(session, entry)


def require_entry(session: Session, principal: Principal, dataset_id: str) -> tuple[Dataset, CatalogEntry,
                                                                                    projects.ProjectAccess]:
    ds, access = steward_dataset(session, principal, dataset_id)
    entry = entry_for(session, ds.id)
    if entry is None:
        raise NotFound("this dataset has no catalogue entry yet")
    return ds, entry, access


def _address_free(session: Session, dataset_id: str, slug: str) -> None:
    """Refuse an address another dataset's entry has published (public knowledge); never one a draft holds."""
    if session.scalar(select(CatalogEntry.id).where(CatalogEntry.slug == slug, HOLDS_ADDRESS,
                                                    CatalogEntry.dataset_id != dataset_id)) is not None:
        raise _address_taken(slug)


def _address_taken(slug: str) -> Conflict:
    return Conflict(f"the public address /catalog/{slug} is taken by another dataset")


def publish(session: Session, principal: Principal, dataset_id: str) -> CatalogEntry:
    ds, entry, access = require_entry(session, principal, dataset_id)
    missing = missing_for_publishing(entry)
    if latest_released(session, ds.id) is None:
        missing.append("a released version of the dataset")
    if missing:
        raise Invalid("before publishing, add " + "; ".join(missing))
    if not entry.published:
        if entry.published_at is None:  # its first publication takes the public address
            _address_free(session, ds.id, entry.slug)
        entry.published, entry.published_at, entry.updated_at = True, entry.published_at or utcnow(), utcnow()
        entry.withdrawn_at, entry.withdrawn_reason = None, ""
        try:
            with session.begin_nested():  # another steward publishing the same address at this moment
                session.flush()
        except IntegrityError:
            raise _address_taken(entry.slug) from None
        audit.record(session, principal.actor, "catalog.entry.published", project_id=access.project.id,
                     target=f"dataset:{ds.id}", details={"slug": entry.slug})
        dois.schedule(session, ds.id)  # concept and version DOIs, when DataCite is configured
    return entry


def unpublish(session: Session, principal: Principal, dataset_id: str, reason: str = "") -> CatalogEntry:
    """Withdraw the entry. Once it has a DOI, its page stays as a tombstone (410) saying when and why."""
    ds, entry, access = require_entry(session, principal, dataset_id)
    reason = " ".join(reason.split())
    if len(reason) > 2000 or CONTROL.search(reason):
        raise Invalid("the reason for withdrawing is plain text of at most 2000 characters")
    if EMAIL_RE.search(reason) and user_emails(session, EMAIL_RE.findall(reason)):
        raise Invalid("the reason for withdrawing contains a person's e-mail address; it is shown publicly")
    withdraw(session, principal.actor, ds, entry, reason)
    return entry


def withdraw(session: Session, actor: audit.Actor, ds: Dataset, entry: CatalogEntry, reason: str) -> bool:
    """Unpublish a published entry (its page becomes a tombstone once it has a DOI, the DOIs are hidden); the
    caller checked the right. Also used when retention deletes a dataset's last version."""
    if not entry.published:
        return False
    entry.published, entry.updated_at = False, utcnow()
    entry.withdrawn_at, entry.withdrawn_reason = utcnow(), reason
    audit.record(session, actor, "catalog.entry.unpublished", project_id=ds.project_id,
                 target=f"dataset:{ds.id}", details={"slug": entry.slug, "reason": reason})
    dois.schedule(session, ds.id)  # hidden at DataCite; they resolve to the tombstone
    return True


def latest_released(session: Session, dataset_id: str) -> DatasetVersion | None:
    return session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id,
                                                       DatasetVersion.state.in_(("released", "deprecated")))
                          .order_by(DatasetVersion.state == "deprecated", DatasetVersion.number.desc()).limit(1))
