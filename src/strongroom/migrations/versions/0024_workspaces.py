"""Notebook workspaces.

Revision ID: 0024_workspaces
Revises: 0020_dicomweb
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from strongroom.db import UtcDateTime

revision = "0024_workspaces"
down_revision = "0023_sftp"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("launcher", sa.String(length=10), nullable=False),
        sa.Column("isolation", sa.String(length=10), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("booking_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("ends_at", UtcDateTime(timezone=True), nullable=True),
        sa.Column("warned_at", UtcDateTime(timezone=True), nullable=True),
        sa.Column("token_prefix", sa.String(length=16), nullable=False),
        sa.Column("scratch", sa.Text(), nullable=False),
        sa.Column("started_at", UtcDateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", UtcDateTime(timezone=True), nullable=True),
        sa.Column("stop_reason", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["booking_id"], ["compute_bookings.id"], name=op.f("fk_workspaces_booking_id_compute_bookings")),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_workspaces_project_id_projects")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_workspaces_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
    )
    op.create_index("ix_workspaces_state", "workspaces", ["state"], unique=False)
    op.create_index(op.f("ix_workspaces_project_id"), "workspaces", ["project_id"], unique=False)
    op.create_index(op.f("ix_workspaces_user_id"), "workspaces", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_workspaces_user_id"), table_name="workspaces")
    op.drop_index(op.f("ix_workspaces_project_id"), table_name="workspaces")
    op.drop_index("ix_workspaces_state", table_name="workspaces")
    op.drop_table("workspaces")
