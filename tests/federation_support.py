"""Seeding published (and unpublished) imaging datasets for the Beacon and federation tests, through the
metrics scenario's dataset builder (DICOM facts as the import records them, an older version that must not count)."""

from __future__ import annotations

from sqlalchemy import select

import metrics_support as ms
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction, utcnow
from strongroom.identity import service as identity
from strongroom.projects import service as projects

# six CT chest studies of six subjects (a count shown as a number)
ms.FACTS.setdefault("beaconct", [("CT", "CHEST", f"B{i}", f"ST{i}", f"SE{i}", 2) for i in range(6)])
ms.TITLES.setdefault("beaconct", "Lung cancer CT")
ms.BYTES.setdefault("beaconct", 1000)


def seed(hub, published: dict[str, str], unpublished: dict[str, str] | None = None,
         keywords: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Datasets by name (``ms.FACTS``) with their slugs, in one project; returns name → dataset id."""
    now = utcnow()
    ids = {}
    with transaction(hub.sessions) as s:
        owner = identity.create_local_user(s, Actor.system("t"), username="olga",
                                           password="correct horse battery staple", display_name="Olga",
                                           email="olga@uu.se")
        s.flush()
        lung = projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="olga", ethics_ref="E1",
                                       end_date=ms.END)
        for group, is_published in ((published, True), (unpublished or {}, False)):
            for name, slug in group.items():
                ids[name] = ms.dataset(s, name, lung, owner, now, published=is_published, slug=slug)
        s.flush()
        for name, words in (keywords or {}).items():
            s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == ids[name])).keywords = words
    return ids
