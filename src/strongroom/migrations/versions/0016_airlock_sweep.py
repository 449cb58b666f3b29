"""Airlock: content sweeping (removal marks, outbox bodies that are gone) and reviewer shortfall.

Revision ID: 0016_airlock_sweep
Revises: 0015_visa_revocations
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0016_airlock_sweep"
down_revision = "0015_visa_revocations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("airlock_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_removed_at", strongroom.db.UtcDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("short_of_reviewers_at", strongroom.db.UtcDateTime(timezone=True),
                                      nullable=True))
    with op.batch_alter_table("airlock_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("removed_at", strongroom.db.UtcDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("airlock_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("removed_at", strongroom.db.UtcDateTime(timezone=True), nullable=True))
        batch_op.alter_column("body_key", existing_type=sa.String(length=300), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("airlock_outbox", schema=None) as batch_op:
        batch_op.alter_column("body_key", existing_type=sa.String(length=300), nullable=False)
        batch_op.drop_column("removed_at")
    with op.batch_alter_table("airlock_files", schema=None) as batch_op:
        batch_op.drop_column("removed_at")
    with op.batch_alter_table("airlock_requests", schema=None) as batch_op:
        batch_op.drop_column("short_of_reviewers_at")
        batch_op.drop_column("content_removed_at")
