"""Metrics: landing-page views by day (stats_landing_views), today's hashed visitors and salt, the
affiliation country of users, and an index from archive files to their DICOM instances.

Revision ID: 0014_metrics
Revises: 0013_dois
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0014_metrics"
down_revision = "0013_dois"
branch_labels = None
depends_on = None

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("country", sa.String(length=2), nullable=True))
    with op.batch_alter_table("imaging_instances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_imaging_instances_file_id"), ["file_id"], unique=False)

    op.create_table(
        "stats_landing_views",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("views", BIG, nullable=False),
        sa.Column("visitors", BIG, nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"],
                                name=op.f("fk_stats_landing_views_dataset_id_datasets"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("day", "dataset_id", name=op.f("pk_stats_landing_views")),
    )
    with op.batch_alter_table("stats_landing_views", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stats_landing_views_dataset_id"), ["dataset_id"], unique=False)

    op.create_table(
        "stats_day_visitors",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("visitor", sa.String(length=64), nullable=False),
        sa.Column("last_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"],
                                name=op.f("fk_stats_day_visitors_dataset_id_datasets"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("day", "dataset_id", "visitor", name=op.f("pk_stats_day_visitors")),
    )
    op.create_table(
        "stats_day_salts",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_stats_day_salts")),
    )


def downgrade() -> None:
    op.drop_table("stats_day_salts")
    op.drop_table("stats_day_visitors")
    with op.batch_alter_table("stats_landing_views", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stats_landing_views_dataset_id"))
    op.drop_table("stats_landing_views")
    with op.batch_alter_table("imaging_instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_imaging_instances_file_id"))
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("country")
