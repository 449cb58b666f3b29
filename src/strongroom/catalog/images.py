"""Sample images of an entry: de-identified PNG thumbnails (only the pixels are kept), added and
removed by the stewards."""

from __future__ import annotations

import hashlib

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..archive.models import Dataset
from ..audit import service as audit
from ..db import utcnow
from ..errors import Invalid, NotFound
from ..identity.principal import Principal
from . import png
from .entries import require_entry
from .fields import CONTROL
from .models import CatalogEntry, CatalogImage
from .privacy import EMAIL_RE, user_emails

MAX_IMAGES = 8
MAX_IMAGE_BYTES = 512 * 1024


def add_image(session: Session, principal: Principal, dataset_id: str, data: bytes, alt: str) -> CatalogImage:
    """Add a de-identified sample thumbnail. Only PNG pixels are kept (text/EXIF chunks dropped)."""
    ds, entry, access = require_entry(session, principal, dataset_id)
    if len(data) > MAX_IMAGE_BYTES:
        raise Invalid(f"a sample image may be at most {MAX_IMAGE_BYTES // 1024} kB")
    try:
        info = png.clean(data)
    except png.BadPng as exc:
        raise Invalid(f"sample images must be PNG thumbnails: {exc}") from None
    alt = (alt or "").strip()
    if CONTROL.search(alt) or "\n" in alt:
        raise Invalid("image description contains control characters")
    if len(alt) > 300:
        raise Invalid(f"image description may be at most 300 characters (it has {len(alt)})")
    if not alt:
        raise Invalid("describe the image (alternative text) for people who cannot see it")
    if user_emails(session, EMAIL_RE.findall(alt)):
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
    ds, entry, access = require_entry(session, principal, dataset_id)
    image = session.get(CatalogImage, (entry.id, position))
    if image is None:
        raise NotFound("no such image")
    session.delete(image)
    entry.updated_at = utcnow()
    audit.record(session, principal.actor, "catalog.image.removed", project_id=access.project.id,
                 target=f"dataset:{ds.id}", details={"position": position})


def remove_all(session: Session, actor: audit.Actor, ds: Dataset, entry: CatalogEntry, reason: str) -> list[dict]:
    """Delete every sample image of the entry (they are pixels of the data): retention deleting a dataset's
    last version. Audited once, naming each image; returns what went."""
    gone = [{"position": i.position, "sha256": i.sha256} for i in images_of(session, entry)]
    if not gone:
        return gone
    session.execute(delete(CatalogImage).where(CatalogImage.entry_id == entry.id))
    entry.updated_at = utcnow()
    audit.record(session, actor, "catalog.image.removed", project_id=ds.project_id, target=f"dataset:{ds.id}",
                 details={"images": gone, "reason": reason})
    return gone


def images_of(session: Session, entry: CatalogEntry) -> list[CatalogImage]:
    return list(session.scalars(select(CatalogImage).where(CatalogImage.entry_id == entry.id)
                                .order_by(CatalogImage.position)))


def steward_image(session: Session, principal: Principal, dataset_id: str, position: int) -> CatalogImage:
    _, entry, _ = require_entry(session, principal, dataset_id)
    image = session.get(CatalogImage, (entry.id, position))
    if image is None:
        raise NotFound("no such image")
    return image
