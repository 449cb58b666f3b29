"""Catalogue: a public address (slug) is held from an entry's first publication on, not from its first draft.
Drafts of different datasets may share a slug, so a steward no longer learns from a refusal that another project
prepares a dataset under that name; the first to publish keeps it (a partial unique index over the entries that
have been published, withdrawn ones included: their DOI may resolve to the tombstone at that address).

Revision ID: 0040_catalog_public_slug
Revises: 0039_pseudonym_scheme
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0040_catalog_public_slug"
down_revision = "0039_pseudonym_scheme"
branch_labels = None
depends_on = None

HOLDS_ADDRESS = sa.text("published_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("catalog_entries") as batch:
        batch.drop_constraint("uq_catalog_entries_slug", type_="unique")
    op.create_index("ix_catalog_entries_slug", "catalog_entries", ["slug"])
    op.create_index("uq_catalog_entries_public_slug", "catalog_entries", ["slug"], unique=True,
                    sqlite_where=HOLDS_ADDRESS, postgresql_where=HOLDS_ADDRESS)


def downgrade() -> None:
    # fails while two drafts share a slug: rename one first
    op.drop_index("uq_catalog_entries_public_slug", table_name="catalog_entries")
    op.drop_index("ix_catalog_entries_slug", table_name="catalog_entries")
    with op.batch_alter_table("catalog_entries") as batch:
        batch.create_unique_constraint("uq_catalog_entries_slug", ["slug"])
