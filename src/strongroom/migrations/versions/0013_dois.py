"""DOIs: the dois table; catalogue entries get creators, publications and withdrawal (tombstone) fields.

Revision ID: 0013_dois
Revises: 0012_request_selection
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0013_dois"
down_revision = "0012_request_selection"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dois",
        sa.Column("doi", sa.String(length=200), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("target", sa.String(length=12), nullable=False),
        sa.Column("sent_hash", sa.String(length=64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("findable_at", strongroom.db.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_dois_dataset_id_datasets")),
        sa.PrimaryKeyConstraint("doi", name=op.f("pk_dois")),
        sa.UniqueConstraint("dataset_id", "version", name="uq_dois_dataset_version"),
    )
    with op.batch_alter_table("dois", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dois_dataset_id"), ["dataset_id"], unique=False)

    # Existing rows get empty values; the server defaults go again (the model sets them, like every column).
    with op.batch_alter_table("catalog_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("creators", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("publications", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("withdrawn_at", strongroom.db.UtcDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("withdrawn_reason", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("catalog_entries", schema=None) as batch_op:
        for name in ("creators", "publications", "withdrawn_reason"):
            batch_op.alter_column(name, server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("catalog_entries", schema=None) as batch_op:
        for name in ("withdrawn_reason", "withdrawn_at", "publications", "creators"):
            batch_op.drop_column(name)
    with op.batch_alter_table("dois", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dois_dataset_id"))
    op.drop_table("dois")
