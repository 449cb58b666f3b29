"""Retention: last-use clocks, dataset classes, deletions with their certificates.

Revision ID: 0019_retention
Revises: 0018_fees
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0019_retention"
down_revision = "0018_fees"
branch_labels = None
depends_on = None

Big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = strongroom.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "retention_cursor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("audit_seq", Big, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_cursor")),
    )
    op.create_table(
        "retention_datasets",
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("dataset_class", sa.String(length=40), nullable=False),
        sa.Column("changed_at", When, nullable=False),
        sa.Column("changed_by", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(["changed_by"], ["users.id"], name=op.f("fk_retention_datasets_changed_by_users"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_retention_datasets_dataset_id_datasets"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("dataset_id", name=op.f("pk_retention_datasets")),
    )
    op.create_table(
        "retention_versions",
        sa.Column("version_id", Big, nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("last_used_at", When, nullable=False),
        sa.Column("last_use", sa.String(length=40), nullable=False),
        sa.Column("keep_until", When, nullable=False),
        sa.Column("extended_until", When, nullable=True),
        sa.Column("extension_reason", sa.Text(), nullable=False),
        sa.Column("hold_reason", sa.Text(), nullable=True),
        sa.Column("hold_at", When, nullable=True),
        sa.Column("hold_by", sa.Uuid(), nullable=True),
        sa.Column("notified_months", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_retention_versions_dataset_id_datasets"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["hold_by"], ["users.id"], name=op.f("fk_retention_versions_hold_by_users"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["version_id"], ["dataset_versions.id"],
                                name=op.f("fk_retention_versions_version_id_dataset_versions"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_retention_versions")),
    )
    op.create_index(op.f("ix_retention_versions_dataset_id"), "retention_versions", ["dataset_id"])
    op.create_index(op.f("ix_retention_versions_keep_until"), "retention_versions", ["keep_until"])
    op.create_table(
        "retention_projects",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("last_used_at", When, nullable=False),
        sa.Column("last_use", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_retention_projects_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_retention_projects")),
    )
    op.create_table(
        "retention_deletions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("version_id", Big, nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=False),
        sa.Column("approved_by", sa.Uuid(), nullable=True),
        sa.Column("approved_at", When, nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("kept", sa.JSON(), nullable=False),
        sa.Column("audit_seqs", sa.JSON(), nullable=False),
        sa.Column("certificate", sa.Text(), nullable=True),
        sa.Column("finished_at", When, nullable=True),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["approved_by"], ["users.id"], name=op.f("fk_retention_deletions_approved_by_users")),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_retention_deletions_dataset_id_datasets")),
        sa.ForeignKeyConstraint(["requested_by"], ["users.id"], name=op.f("fk_retention_deletions_requested_by_users")),
        sa.ForeignKeyConstraint(["version_id"], ["dataset_versions.id"],
                                name=op.f("fk_retention_deletions_version_id_dataset_versions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_deletions")),
        sa.UniqueConstraint("version_id", name=op.f("uq_retention_deletions_version_id")),
    )
    op.create_index(op.f("ix_retention_deletions_dataset_id"), "retention_deletions", ["dataset_id"])
    op.create_index(op.f("ix_retention_deletions_state"), "retention_deletions", ["state"])


def downgrade() -> None:
    op.drop_index(op.f("ix_retention_deletions_state"), table_name="retention_deletions")
    op.drop_index(op.f("ix_retention_deletions_dataset_id"), table_name="retention_deletions")
    op.drop_table("retention_deletions")
    op.drop_table("retention_projects")
    op.drop_index(op.f("ix_retention_versions_keep_until"), table_name="retention_versions")
    op.drop_index(op.f("ix_retention_versions_dataset_id"), table_name="retention_versions")
    op.drop_table("retention_versions")
    op.drop_table("retention_datasets")
    op.drop_table("retention_cursor")
