"""The public landing page's rendered-page cache and HTTP validators.

An anonymous visitor's landing page depends only on the published entry and what it shows of the dataset. Its
*revision* is the entry's row (``updated_at`` moves with every edit, image change, publish and withdrawal), the
dataset's released and deprecated versions, its DOIs' states and its access policy's download rule, read with one
indexed query (``revision``). The page rendered for a revision is kept in this process, keyed by hub, slug,
``?version`` and Accept header, with the e-mail addresses it shows and the *catalogue generation token* read before
its revision was (``generation``).

A request whose token equals the kept page's is answered from the cache with **no database read** (before routing
even: ``fast_path``): the token moves after every committed change to the tables the revision and the e-mail check
read (entries, images, facets, dataset versions, DOIs, access policies, users), in this process at once, in another
process when its signal arrives — SQLite: a shared counter file bumped before the writer's ``commit()`` returns;
PostgreSQL: a NOTIFY sent in the writing transaction, received by this process's listener thread (well under a
millisecond on one machine). When the token moved (or is unknown: the PostgreSQL listener is down) the revision is
read again, and the addresses the page shows are asked about (one indexed query, only for pages that show any):
an unchanged revision with no address become a person's keeps the page under the new token; otherwise it is
rendered anew, so a changed entry is never served, and an address that became a person's is withheld at once.
So no worker serves a page older than the database beyond the signal's travel time. ``MAX_AGE_SECONDS`` bounds
the remaining inputs outside the revision (a strategy mark, a mirror notice) and any write that bypasses the ORM
session. The ETag is the SHA-256 of the body: strong, and the same in every worker for the same page.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.orm import Session

from ..archive.models import DatasetVersion
from .models import HOLDS_ADDRESS, CatalogEntry, Doi

MAX_AGE_SECONDS = 30  # Cache-Control max-age, and the longest a page is reused in-process without re-rendering
CACHE_CONTROL = f"public, max-age={MAX_AGE_SECONDS}, must-revalidate"
MAX_PAGES = 512


def revision(session: Session, slug: str) -> tuple[Any, ...] | None:
    """What the anonymous landing page of ``slug`` is rendered from, as one comparable tuple (None: no entry)."""
    row = session.execute(_revision_statement(), {"slug": slug.lower()}).first()
    return tuple(row) if row is not None else None


@cache
def _revision_statement() -> Select[Any]:
    """Built once per process: constructing its six subqueries cost more than running them (it is asked on
    every anonymous landing-page request)."""
    from ..access.models import AccessPolicy  # the access capability owns the policy (as landing.py reads it)

    e = CatalogEntry
    shown = DatasetVersion.state.in_(("released", "deprecated"))
    return select(
        e.id, e.updated_at, e.published, e.withdrawn_at,
        select(func.max(DatasetVersion.id)).where(DatasetVersion.dataset_id == e.dataset_id, shown).scalar_subquery(),
        select(func.max(DatasetVersion.id)).where(DatasetVersion.dataset_id == e.dataset_id,
                                                  DatasetVersion.state == "deprecated").scalar_subquery(),
        select(func.count()).where(DatasetVersion.dataset_id == e.dataset_id, shown).scalar_subquery(),
        select(func.max(Doi.updated_at)).where(Doi.dataset_id == e.dataset_id).scalar_subquery(),
        select(func.count()).where(Doi.dataset_id == e.dataset_id).scalar_subquery(),
        select(AccessPolicy.applicant_download).where(AccessPolicy.dataset_id == e.dataset_id).scalar_subquery(),
    ).where(e.slug == bindparam("slug"), HOLDS_ADDRESS)


@dataclass(frozen=True)
class Page:
    revision: tuple[Any, ...]
    status: int
    body: bytes
    media_type: str
    headers: dict[str, str]
    etag: str
    dataset_id: str
    rendered_at: float
    emails: frozenset[str] = frozenset()  # the addresses the body shows (lower-cased): none may become a person's
    token: tuple[int, ...] | None = None  # the catalogue generation under which revision and emails were checked
    path: str = ""  # the request path it was rendered for (fast_path serves it only there)
    route: Any = None  # the route that rendered it (scope["route"]: the metrics' label when fast_path serves it)
    owner: Any = None  # the hub's session factory (its id is in the key: one cache per hub, tests make many)


Key = tuple[int, str, int | None, str]  # id(hub.sessions), slug (lower-cased), ?version, Accept
_PAGES: OrderedDict[Key, Page] = OrderedDict()
_LOCK = threading.Lock()


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:40] + '"'


def lookup(key: Key) -> Page | None:
    """The page kept for ``key`` if it was rendered less than MAX_AGE_SECONDS ago. The caller checks it is
    still current: its ``token`` equals the generation's, or else its revision equals the database's."""
    with _LOCK:
        page = _PAGES.get(key)
        if page is None:
            return None
        if time.monotonic() - page.rendered_at > MAX_AGE_SECONDS:
            del _PAGES[key]
            return None
        _PAGES.move_to_end(key)
        return page


def revalidated(key: Key, page: Page, token: tuple[int, ...] | None) -> Page:
    """``page`` found current by reading the database after the generation ``token`` was read: kept under it."""
    if page.token == token:
        return page
    checked = replace(page, token=token)
    with _LOCK:
        if _PAGES.get(key) is page:  # not if another request has since kept a newer page
            _PAGES[key] = checked
    return checked


def store(key: Key, page: Page) -> None:
    with _LOCK:
        _PAGES[key] = page
        _PAGES.move_to_end(key)
        while len(_PAGES) > MAX_PAGES:
            _PAGES.popitem(last=False)


def clear() -> None:
    with _LOCK:
        _PAGES.clear()


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match (weak comparison): ``*`` or any listed tag equal to ``etag``."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)
