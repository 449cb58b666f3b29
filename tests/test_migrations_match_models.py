"""The migrations build exactly the schema the models declare, on SQLite and on PostgreSQL.

A model change without its migration (or a migration that drifted from the model) passes every other
test on a database built by the migrations only if no test touches the difference; this one fails.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from strongroom.db import Base, engine_for
from strongroom.migrate import current
from strongroom.models import load_all


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    # database_url: a fresh database upgraded to head by Alembic (conftest), on each backend
    load_all()
    assert current(database_url) is not None
    with engine_for(database_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], "the migrations and the models differ; add a migration:\n" + "\n".join(map(repr, diff))
