"""Catalogue: a withdrawn entry keeps what the public saw when it was withdrawn (``withdrawn_public``). Its stewards
may edit the row again as a draft; the tombstone page, the OAI-PMH deleted record and the hidden DOIs' records show
the snapshot, never the draft.

Entries withdrawn before this revision get their row as it is now (the best there is: a draft edited since their
withdrawal cannot be told apart from what was published).

Revision ID: 0042_catalog_withdrawn_public
Revises: 0041_cluster_account_unique
Create Date: 2026-12-11
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0042_catalog_withdrawn_public"
down_revision = "0041_cluster_account_unique"
branch_labels = None
depends_on = None

# catalog.models.PUBLIC_COLUMNS at this revision (a migration never imports the models: they move on)
LISTS = ("creators", "publications", "modalities", "organs", "keywords", "variables", "manufacturers", "duo_codes")
DATES = ("time_start", "time_end")
PLAIN = ("title", "description", "why_apply", "data_owner", "data_owner_url", "subjects", "studies", "series",
         "instances", "annotations", "size_bytes", "terms_title", "terms_text", "access_conditions", "how_to_cite",
         "doi", "contact_email", "apply_mode", "external_url")


def upgrade() -> None:
    with op.batch_alter_table("catalog_entries") as batch:
        batch.add_column(sa.Column("withdrawn_public", sa.JSON(), nullable=True))
    entries = sa.table("catalog_entries", sa.column("id"), sa.column("published", sa.Boolean()),
                       sa.column("published_at", sa.DateTime()), sa.column("withdrawn_public", sa.JSON()),
                       *(sa.column(n, sa.JSON()) for n in LISTS), *(sa.column(n, sa.Date()) for n in DATES),
                       *(sa.column(n) for n in PLAIN))
    bind = op.get_bind()
    withdrawn = bind.execute(sa.select(entries).where(entries.c.published.is_(False),
                                                      entries.c.published_at.is_not(None))).mappings().all()
    for row in withdrawn:
        snapshot = {n: row[n] for n in (*LISTS, *PLAIN)}
        snapshot.update({n: row[n].isoformat() if row[n] is not None else None for n in DATES})
        bind.execute(entries.update().where(entries.c.id == row["id"]).values(withdrawn_public=snapshot))


def downgrade() -> None:
    with op.batch_alter_table("catalog_entries") as batch:
        batch.drop_column("withdrawn_public")
