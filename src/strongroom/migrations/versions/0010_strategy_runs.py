"""Strategy runs: a strategy version applied to an extract in the project's archive (by a job).

Revision ID: 0010_strategy_runs
Revises: 0009_strategies
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0010_strategy_runs"
down_revision = "0009_strategies"
branch_labels = None
depends_on = None

Big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "strategy_runs",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("strategy_version_id", sa.Uuid(), nullable=False),
        sa.Column("input_file_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("rows_in", Big, nullable=True),
        sa.Column("rows_out", Big, nullable=True),
        sa.Column("output_file_id", sa.String(length=32), nullable=True),
        sa.Column("report_file_id", sa.String(length=32), nullable=True),
        sa.Column("dataset_id", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=False),
        sa.Column("finished_at", strongroom.db.UtcDateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_strategy_runs_created_by_users")),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_strategy_runs_dataset_id_datasets")),
        sa.ForeignKeyConstraint(["input_file_id"], ["archive_files.id"],
                                name=op.f("fk_strategy_runs_input_file_id_archive_files")),
        sa.ForeignKeyConstraint(["output_file_id"], ["archive_files.id"],
                                name=op.f("fk_strategy_runs_output_file_id_archive_files")),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_strategy_runs_project_id_projects")),
        sa.ForeignKeyConstraint(["report_file_id"], ["archive_files.id"],
                                name=op.f("fk_strategy_runs_report_file_id_archive_files")),
        sa.ForeignKeyConstraint(["strategy_version_id"], ["strategy_versions.id"],
                                name=op.f("fk_strategy_runs_strategy_version_id_strategy_versions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_strategy_runs")),
    )
    op.create_index(op.f("ix_strategy_runs_project_id"), "strategy_runs", ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_strategy_runs_project_id"), table_name="strategy_runs")
    op.drop_table("strategy_runs")
