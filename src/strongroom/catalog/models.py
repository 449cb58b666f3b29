"""Catalogue tables: one public entry per dataset, its sample images and its facet values.

An entry is metadata only: it never holds or links data. It is invisible to the public until a
steward of the owning project publishes it.
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, utcnow

Big = BigInteger().with_variant(Integer, "sqlite")


# A public address is held from an entry's first publication on (a withdrawn entry keeps it: its DOI may resolve
# to its tombstone). Drafts may share an address: a steward must not learn from a refusal that another project is
# preparing a dataset under a name it has not published (who takes it first at publication keeps it).
_HOLDS_ADDRESS_SQL = "published_at IS NOT NULL"


class CatalogEntry(CreatedMixin, Base):
    __tablename__ = "catalog_entries"
    __table_args__ = (Index("ix_catalog_entries_slug", "slug"),
                      Index("uq_catalog_entries_public_slug", "slug", unique=True,
                            sqlite_where=text(_HOLDS_ADDRESS_SQL), postgresql_where=text(_HOLDS_ADDRESS_SQL)))

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), unique=True)
    slug: Mapped[str] = mapped_column(String(80))
    published: Mapped[bool] = mapped_column(default=False)
    published_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))

    # what the data is
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    why_apply: Mapped[str] = mapped_column(Text, default="")
    data_owner: Mapped[str] = mapped_column(String(200), default="")  # an organisation, never a person
    data_owner_url: Mapped[str | None] = mapped_column(String(500))  # e.g. its ROR id
    # [{name, kind person|organisation, given_name, family_name, orcid, affiliation, ror}] (DataCite creators)
    creators: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    publications: Mapped[list[str]] = mapped_column(JSON, default=list)  # DOIs of papers about the data
    modalities: Mapped[list[str]] = mapped_column(JSON, default=list)  # DICOM modality codes
    organs: Mapped[list[str]] = mapped_column(JSON, default=list)
    keywords: Mapped[list[str]] = mapped_column(JSON, default=list)
    variables: Mapped[list[str]] = mapped_column(JSON, default=list)  # schema.org variableMeasured
    subjects: Mapped[int | None] = mapped_column(Big)
    studies: Mapped[int | None] = mapped_column(Big)
    series: Mapped[int | None] = mapped_column(Big)
    instances: Mapped[int | None] = mapped_column(Big)  # DICOM instances (measured by the import)
    manufacturers: Mapped[list[str]] = mapped_column(JSON, default=list)  # scanner makers (from the import)
    annotations: Mapped[int | None] = mapped_column(Big)
    size_bytes: Mapped[int | None] = mapped_column(Big)  # None → the released version's size
    time_start: Mapped[dt.date | None]
    time_end: Mapped[dt.date | None]  # None with a start → open interval

    # how to get it
    terms_title: Mapped[str] = mapped_column(String(200), default="Terms of use")
    terms_text: Mapped[str] = mapped_column(Text, default="")
    access_conditions: Mapped[str] = mapped_column(Text, default="")
    duo_codes: Mapped[list[str]] = mapped_column(JSON, default=list)  # e.g. ["DUO:0000006"]
    how_to_cite: Mapped[str] = mapped_column(Text, default="")
    doi: Mapped[str | None] = mapped_column(String(200))
    contact_email: Mapped[str | None] = mapped_column(String(254))  # a role address
    apply_mode: Mapped[str] = mapped_column(String(10), default="hub")  # hub | external
    external_url: Mapped[str | None] = mapped_column(String(1000))

    search_text: Mapped[str] = mapped_column(Text, default="")  # lower-cased, for the catalogue search
    # Unpublished after a DOI was minted: the landing page becomes a tombstone (410) the DOI resolves to.
    withdrawn_at: Mapped[dt.datetime | None]
    withdrawn_reason: Mapped[str] = mapped_column(Text, default="")
    # What the public saw when it was withdrawn (``PUBLIC_COLUMNS`` as published): the stewards may since be editing
    # the row as a draft, which the tombstone, the OAI-PMH deleted record and the hidden DOIs must never show.
    withdrawn_public: Mapped[dict[str, Any] | None] = mapped_column(JSON)


HOLDS_ADDRESS = CatalogEntry.published_at.is_not(None)  # the entries whose slug is a public address (see above)


class CatalogImage(Base):
    """A de-identified sample thumbnail (PNG, ancillary chunks stripped), served publicly."""

    __tablename__ = "catalog_images"

    entry_id: Mapped[int] = mapped_column(ForeignKey("catalog_entries.id", ondelete="CASCADE"),
                                          primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)  # 1, 2, …: the n in /images/{n}.png
    png: Mapped[bytes] = mapped_column(LargeBinary)
    width: Mapped[int]
    height: Mapped[int]
    alt: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CatalogFacet(Base):
    """One facet value of an entry (modality, organ, access, use), for filtering and counting in SQL."""

    __tablename__ = "catalog_facets"
    __table_args__ = (Index("ix_catalog_facets_facet_value", "facet", "value"),)

    entry_id: Mapped[int] = mapped_column(ForeignKey("catalog_entries.id", ondelete="CASCADE"),
                                          primary_key=True)
    facet: Mapped[str] = mapped_column(String(20), primary_key=True)
    value: Mapped[str] = mapped_column(String(100), primary_key=True)


class Doi(Base):
    """A DOI the hub mints at DataCite for a dataset: the concept (``version`` None: every version) or one
    released version. ``state`` is what DataCite holds (``new`` = not created there yet); ``target`` is
    what it should hold (findable while published, registered = hidden once withdrawn); the
    ``catalog.dois`` job brings the two together and sends the metadata whenever ``sent_hash`` differs."""

    __tablename__ = "dois"
    __table_args__ = (UniqueConstraint("dataset_id", "version", name="uq_dois_dataset_version"),)

    doi: Mapped[str] = mapped_column(String(200), primary_key=True)  # lower case: DOIs are case-insensitive
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    version: Mapped[int | None]  # None: the concept DOI
    kind: Mapped[str] = mapped_column(String(10))  # concept | version
    state: Mapped[str] = mapped_column(String(12), default="new")  # new | draft | registered | findable
    target: Mapped[str] = mapped_column(String(12), default="findable")  # findable | registered
    sent_hash: Mapped[str | None] = mapped_column(String(64))  # SHA-256 of the metadata DataCite has
    last_error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    findable_at: Mapped[dt.datetime | None]


# -- what the public saw of a withdrawn entry ---------------------------------------------------------------------
# Every column a published entry shows (its pages, exports, citations, DOI records) that its stewards can change
# afterwards; the rest are its identity (fixed once published), its lifecycle and the search text.
_NOT_SHOWN = frozenset({"id", "dataset_id", "slug", "published", "published_at", "updated_at", "created_by",
                        "created_at", "search_text", "withdrawn_at", "withdrawn_reason", "withdrawn_public"})
PUBLIC_COLUMNS = tuple(c.key for c in CatalogEntry.__table__.columns if c.key not in _NOT_SHOWN)
_DATE_COLUMNS = frozenset(c.key for c in CatalogEntry.__table__.columns if isinstance(c.type, Date))


def public_snapshot(entry: CatalogEntry) -> dict[str, Any]:
    """``PUBLIC_COLUMNS`` of ``entry`` as JSON (dates as ISO text; lists copied, never shared with the row)."""
    return {name: (value.isoformat() if isinstance(value, dt.date) else copy.deepcopy(value))
            for name in PUBLIC_COLUMNS for value in [getattr(entry, name)]}


def is_withdrawn(entry: CatalogEntry) -> bool:
    """Published once, not now: its address may be a tombstone, its DOIs hidden, its row a draft again."""
    return not entry.published and entry.published_at is not None


def public_face(entry: CatalogEntry) -> CatalogEntry:
    """What the public may know of ``entry``: the entry itself unless it is withdrawn; then a detached copy (never
    added to a session) holding the columns as they were when it was withdrawn, dated at its withdrawal."""
    if not is_withdrawn(entry):
        return entry
    face = CatalogEntry(**{c.key: getattr(entry, c.key) for c in CatalogEntry.__table__.columns})
    for name, value in (entry.withdrawn_public or {}).items():
        if name in PUBLIC_COLUMNS:  # a column dropped since the snapshot was taken is skipped
            setattr(face, name, dt.date.fromisoformat(value) if name in _DATE_COLUMNS and value else
                    copy.deepcopy(value))
    face.updated_at = entry.withdrawn_at or entry.updated_at
    return face


@event.listens_for(CatalogEntry.published, "set", active_history=True)
def _snapshot_when_withdrawn(entry: CatalogEntry, value: bool, old: Any, _initiator: Any) -> None:
    """Every way an entry goes from published to not (a steward's withdrawal, retention, a federation notice)
    keeps what was public at that moment; publishing again makes the row itself public again."""
    if value:
        entry.withdrawn_public = None
    elif old is True:
        entry.withdrawn_public = public_snapshot(entry)


__all__ = ["PUBLIC_COLUMNS", "CatalogEntry", "CatalogFacet", "CatalogImage", "Doi", "is_withdrawn", "public_face",
           "public_snapshot"]


from . import generation  # noqa: E402,F401  (the model layer's signal to the landing pages' cache)
