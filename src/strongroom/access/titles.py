"""Which title of a dataset a person is shown. A dataset's own title is the owning project's working name
(often internal: a ward, a doctor, a source list); applicants see the public catalogue entry's title instead
(scrubbed of persons' e-mail addresses as on the landing page), or only the accession when none is published.
The project's members, the dataset's named handlers, deciders and reviewers, and whoever was granted access to
it (an entitlement: the dataset's own page shows them its title anyway) see its own title."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive.models import Dataset
from ..catalog.models import CatalogEntry
from ..catalog.privacy import scrubber
from ..projects.models import Membership
from .models import DatasetRole, Entitlement


def titles_for(session: Session, user_id: uuid.UUID | None, dataset_ids: Iterable[str]) -> dict[str, str]:
    """{dataset id: the title ``user_id`` may be shown} (``None``: an outsider, e.g. an e-mail's reader)."""
    wanted = set(dataset_ids)
    if not wanted:
        return {}
    datasets = {d.id: d for d in session.scalars(select(Dataset).where(Dataset.id.in_(wanted)))}
    insiders: set[str] = set()
    if user_id is not None:
        projects = set(session.scalars(select(Membership.project_id).where(Membership.user_id == user_id)))
        named = set(session.scalars(select(DatasetRole.dataset_id).where(DatasetRole.user_id == user_id,
                                                                         DatasetRole.dataset_id.in_(wanted))))
        named |= set(session.scalars(select(Entitlement.dataset_id).where(Entitlement.user_id == user_id,
                                                                          Entitlement.dataset_id.in_(wanted))))
        insiders = {i for i, d in datasets.items() if d.project_id in projects or i in named}
    public = dict(session.execute(select(CatalogEntry.dataset_id, CatalogEntry.title).where(
        CatalogEntry.dataset_id.in_(wanted - insiders), CatalogEntry.published.is_(True))).tuples().all())
    scrub = scrubber(session, public.values())
    return {i: datasets[i].title if i in insiders and i in datasets else scrub(public[i]) if i in public else i
            for i in wanted}


def title_for(session: Session, user_id: uuid.UUID | None, dataset_id: str) -> str:
    return titles_for(session, user_id, [dataset_id])[dataset_id]
