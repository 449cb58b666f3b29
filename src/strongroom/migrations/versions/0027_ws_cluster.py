"""Workspaces: members' cluster accounts (the Slurm launcher submits as them) and the idle-stop warning.

Revision ID: 0027_ws_cluster
Revises: 0026_federation
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from strongroom.db import UtcDateTime

revision = "0027_ws_cluster"
down_revision = "0026_federation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workspace_cluster_accounts",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("set_at", UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_workspace_cluster_accounts_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_workspace_cluster_accounts")),
    )
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("idle_warned_at", UtcDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("idle_warned_at")
    op.drop_table("workspace_cluster_accounts")
