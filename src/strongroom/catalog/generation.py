"""The catalogue generation: how every process learns, without asking the database, that something a public landing
page is rendered from may have changed — the ``catalog`` topic of ``strongroom.generation`` (the mechanism, its
SQLite counter file ``<database>-catalog`` and PostgreSQL channel ``strongroom_catalog``, are described there).

It changes after every committed change to a table the landing page's revision or its e-mail check reads
(``WATCHED_TABLES``: the entry and its images and facets, dataset versions, DOIs, access policies, and users — a
person's address must be withheld as soon as it is theirs; of an ORM update of a user, only a changed ``email``
counts, so logins do not). ``page_cache.MAX_AGE_SECONDS`` bounds any page's reuse regardless.
"""

from __future__ import annotations

from sqlalchemy import Engine

from .. import generation as _generation

WATCHED_TABLES = frozenset({"catalog_entries", "catalog_images", "catalog_facets", "dataset_versions", "dois",
                            "access_policies", "users"})
# Of these tables' rows, an ORM update matters only if it changes these columns (a login's ``last_login_at`` does
# not: the page asks ``users`` only about e-mail addresses). Inserts, deletes and bulk statements always do.
RELEVANT_COLUMNS = {"users": ("email",)}

CATALOG = _generation.register(_generation.Topic("catalog", WATCHED_TABLES, RELEVANT_COLUMNS))


def of(engine: Engine) -> _generation.Generation:
    """The catalogue generation of the database ``engine`` connects to (one per database per process)."""
    return _generation.of(engine, CATALOG)


def token(engine: Engine) -> tuple[int, ...] | None:
    """What this process knows of the catalogue now; None: unknown (read the database)."""
    return _generation.of(engine, CATALOG).token()
