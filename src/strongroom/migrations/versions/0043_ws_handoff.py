"""Workspaces: one-time handoff codes that carry a workspace's opening from the hub's origin to the workspaces'
own origin (only the code's HMAC is stored; used once, within seconds, by any web server sharing the database).

Revision ID: 0043_ws_handoff
Revises: 0042_catalog_withdrawn_public
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0043_ws_handoff"
down_revision = "0042_catalog_withdrawn_public"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("workspace_handoffs",
                    sa.Column("code_hash", sa.String(length=64), nullable=False),
                    sa.Column("workspace_id", sa.Uuid(), nullable=False),
                    sa.Column("user_id", sa.Uuid(), nullable=False),
                    sa.Column("session_hash", sa.String(length=64), nullable=False),
                    sa.Column("next_path", sa.Text(), nullable=False),
                    sa.Column("expires_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
                    sa.Column("used_at", strongroom.db.UtcDateTime(timezone=True), nullable=True),
                    sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_workspace_handoffs")))
    op.create_index(op.f("ix_workspace_handoffs_expires_at"), "workspace_handoffs", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_workspace_handoffs_expires_at"), table_name="workspace_handoffs")
    op.drop_table("workspace_handoffs")
