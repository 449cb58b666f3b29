"""Workspaces: each local workspace's own uid (leased from ``[workspaces] uid_range`` at start, released at stop),
unique among live workspaces, and so is each live workspace's network slot (partial unique indexes: concurrent
starts cannot lease one uid or one slot twice).

Revision ID: 0037_ws_uid
Revises: 0036_deletion_derived
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0037_ws_uid"
down_revision = "0036_deletion_derived"
branch_labels = None
depends_on = None

LIVE = sa.text("state IN ('starting', 'running')")


def upgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("uid", sa.Integer(), nullable=True))
    op.create_index("uq_workspaces_live_uid", "workspaces", ["uid"], unique=True, sqlite_where=LIVE,
                    postgresql_where=LIVE)
    op.create_index("uq_workspaces_live_slot", "workspaces", ["slot"], unique=True, sqlite_where=LIVE,
                    postgresql_where=LIVE)


def downgrade() -> None:
    op.drop_index("uq_workspaces_live_slot", table_name="workspaces")
    op.drop_index("uq_workspaces_live_uid", table_name="workspaces")
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("uid")
