"""Data requests (selection and parameters, the strategy version, the run, the released version) and the
index the release check uses to find the passing run that wrote a table.

Revision ID: 0012_request_selection
Revises: 0011_airlock
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0012_request_selection"
down_revision = "0011_airlock"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_requests",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("application_id", sa.String(length=32), nullable=True),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("selection", sa.Text(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("strategy_version_id", sa.Uuid(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.Column("dataset_id", sa.String(length=32), nullable=True),
        sa.Column("dataset_version", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=False),
        sa.Column("updated_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["application_id"], ["access_applications.id"],
                                name=op.f("fk_data_requests_application_id_access_applications")),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_data_requests_created_by_users")),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_data_requests_dataset_id_datasets")),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_data_requests_project_id_projects")),
        sa.ForeignKeyConstraint(["run_id"], ["strategy_runs.id"], name=op.f("fk_data_requests_run_id_strategy_runs")),
        sa.ForeignKeyConstraint(["strategy_version_id"], ["strategy_versions.id"],
                                name=op.f("fk_data_requests_strategy_version_id_strategy_versions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_requests")),
    )
    op.create_index(op.f("ix_data_requests_project_id"), "data_requests", ["project_id"], unique=False)
    op.create_index(op.f("ix_data_requests_application_id"), "data_requests", ["application_id"], unique=False)
    op.create_index(op.f("ix_strategy_runs_output_file_id"), "strategy_runs", ["output_file_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_strategy_runs_output_file_id"), table_name="strategy_runs")
    op.drop_index(op.f("ix_data_requests_application_id"), table_name="data_requests")
    op.drop_index(op.f("ix_data_requests_project_id"), table_name="data_requests")
    op.drop_table("data_requests")
