"""Finding published entries: the search text and facet rows kept for each entry, and search by
words and facets with the counts the catalogue page shows. Hits are scrubbed of any person's
e-mail address."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, func, select
from sqlalchemy.orm import Session

from .models import CatalogEntry, CatalogFacet, CatalogImage
from .privacy import scrubber
from .vocab import ACCESS_LABELS, DUO, MODALITIES, NO_METHODS, USE_LABELS

PAGE_SIZE = 20


def facet_values(entry: CatalogEntry) -> set[tuple[str, str]]:
    values = {("modality", m) for m in entry.modalities}
    values |= {("organ", o.lower()[:100]) for o in entry.organs}
    values.add(("access", entry.apply_mode))
    values.add(("use", "no-methods" if NO_METHODS in entry.duo_codes else "methods-allowed"))
    return values


def reindex(session: Session, entry: CatalogEntry) -> None:
    session.execute(delete(CatalogFacet).where(CatalogFacet.entry_id == entry.id))
    session.add_all(CatalogFacet(entry_id=entry.id, facet=f, value=v) for f, v in sorted(facet_values(entry)))
    words = [entry.slug, entry.dataset_id, entry.title, entry.description, entry.why_apply, entry.data_owner,
             *entry.modalities, *(MODALITIES.get(m, "") for m in entry.modalities), *entry.organs,
             *entry.keywords, *entry.variables, *(DUO[c][0] + " " + DUO[c][1] for c in entry.duo_codes if c in DUO)]
    entry.search_text = " ".join(" ".join(words).lower().split())


# Entries of other catalogues shown beside ours, marked remote and never counted as ours (federation's harvest):
# ``source(session, query) -> [{title, url, publisher, peer, snippet, keywords}]``.
REMOTE_SOURCES: list[Callable[[Session, str], list[dict[str, Any]]]] = []


def remote_entries(session: Session, q: str) -> list[dict[str, Any]]:
    return [row for source in REMOTE_SOURCES for row in source(session, q)]


FACETS = ("modality", "organ", "access", "use")
FACET_HEADINGS = {"modality": "Modality", "organ": "Body part / organ", "access": "Access",
                  "use": "Permitted use"}


def facet_label(facet: str, value: str) -> str:
    if facet == "modality":
        return f"{MODALITIES.get(value, value)} ({value})"
    if facet == "access":
        return ACCESS_LABELS.get(value, value)
    if facet == "use":
        return USE_LABELS.get(value, value)
    return value[:1].upper() + value[1:]


@dataclass
class FacetValue:
    value: str
    label: str
    count: int
    selected: bool


@dataclass
class EntryCard:
    """One search hit as the public sees it (texts scrubbed of any person's e-mail address)."""

    slug: str
    title: str
    data_owner: str
    snippet: str
    modalities: list[str]
    organs: list[str]
    apply_mode: str
    no_methods: bool
    subjects: int | None
    series: int | None
    thumbnail: int | None  # position of the first sample image


@dataclass
class SearchResult:
    query: str
    selected: dict[str, list[str]]
    entries: list[EntryCard]
    total: int
    page: int
    pages: int
    facets: dict[str, list[FacetValue]]


def _like(token: str) -> str:
    return "%" + token.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search(session: Session, query: str = "", selected: dict[str, list[str]] | None = None, *,
           page: int = 1, per_page: int | None = None) -> SearchResult:
    """Published entries matching every word of ``query`` and, per facet, any selected value
    (values of different facets must all match). Facet counts follow the standard
    disjunctive rule: each facet is counted with every filter except its own."""
    query = " ".join((query or "").split())[:200]
    selected = {f: sorted({v.lower() if f == "organ" else v for v in vs if v})[:50]
                for f, vs in (selected or {}).items() if f in FACETS}
    selected = {f: vs for f, vs in selected.items() if vs}
    tokens = query.lower().split()[:8]
    per_page = per_page or PAGE_SIZE

    def matching(skip: str | None = None):  # a select of entry ids
        stmt = select(CatalogEntry.id).where(CatalogEntry.published.is_(True))
        for token in tokens:
            stmt = stmt.where(CatalogEntry.search_text.like(_like(token), escape="\\"))
        for facet, values in selected.items():
            if facet != skip:
                stmt = stmt.where(CatalogEntry.id.in_(select(CatalogFacet.entry_id).where(
                    CatalogFacet.facet == facet, CatalogFacet.value.in_(values))))
        return stmt

    ids = matching().subquery()
    total = session.scalar(select(func.count()).select_from(ids)) or 0
    pages = max(1, math.ceil(total / per_page))
    page = min(max(page, 1), pages)
    order: list[Any] = [CatalogEntry.title, CatalogEntry.id]
    if tokens:
        order.insert(0, case((func.lower(CatalogEntry.title).like(_like(tokens[0]), escape="\\"), 0), else_=1))
    entries = list(session.scalars(select(CatalogEntry).where(CatalogEntry.id.in_(select(ids.c.id)))
                                   .order_by(*order).offset((page - 1) * per_page).limit(per_page)))
    facets: dict[str, list[FacetValue]] = {}
    for facet in FACETS:
        rows = session.execute(
            select(CatalogFacet.value, func.count(CatalogFacet.entry_id))
            .where(CatalogFacet.facet == facet, CatalogFacet.entry_id.in_(matching(skip=facet)))
            .group_by(CatalogFacet.value)).all()
        counts = dict(rows)
        for value in selected.get(facet, []):
            counts.setdefault(value, 0)  # a selected value stays visible (to untick it) even at 0
        facets[facet] = sorted((FacetValue(v, facet_label(facet, v), n, v in selected.get(facet, []))
                                for v, n in counts.items()), key=lambda fv: (-fv.count, fv.label))
    thumbs: dict[int, int] = {}
    if entries:
        for entry_id, position in session.execute(
                select(CatalogImage.entry_id, func.min(CatalogImage.position))
                .where(CatalogImage.entry_id.in_([e.id for e in entries])).group_by(CatalogImage.entry_id)):
            thumbs[entry_id] = position
    scrub = scrubber(session, [t for e in entries for t in (e.title, e.description, e.data_owner, *e.organs)])
    cards = [EntryCard(slug=e.slug, title=scrub(e.title), data_owner=scrub(e.data_owner),
                       snippet=snippet(scrub(e.description)), modalities=list(e.modalities),
                       organs=[scrub(o) for o in e.organs], apply_mode=e.apply_mode,
                       no_methods=NO_METHODS in e.duo_codes, subjects=e.subjects, series=e.series,
                       thumbnail=thumbs.get(e.id)) for e in entries]
    return SearchResult(query, selected, cards, total, page, pages, facets)


def snippet(text: str, limit: int = 220) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rsplit(" ", 1)[0] + "…"

