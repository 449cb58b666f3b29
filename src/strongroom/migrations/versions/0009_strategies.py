"""Pseudonymization strategies: strategy_versions (a project's strategy, one row per saved version).

Revision ID: 0009_strategies
Revises: 0008_read_holds
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0009_strategies"
down_revision = "0008_read_holds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "strategy_versions",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=False),
        sa.Column("comment", sa.String(length=500), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_strategy_versions_created_by_users")),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"],
                                name=op.f("fk_strategy_versions_project_id_projects")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_strategy_versions")),
        sa.UniqueConstraint("project_id", "version", name="uq_strategy_versions_project_version"),
    )
    op.create_index(op.f("ix_strategy_versions_project_id"), "strategy_versions", ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_strategy_versions_project_id"), table_name="strategy_versions")
    op.drop_table("strategy_versions")
