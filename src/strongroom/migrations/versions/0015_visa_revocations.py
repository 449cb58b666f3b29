"""Visa revocations: the jti of each revoked hub-issued visa, until it would have expired.

Revision ID: 0015_visa_revocations
Revises: 0014_metrics
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0015_visa_revocations"
down_revision = "0014_metrics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_visa_revocations",
        sa.Column("jti", sa.String(length=100), nullable=False),
        sa.Column("expires_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("revoked_by", sa.Uuid(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["revoked_by"], ["users.id"], name=op.f("fk_access_visa_revocations_revoked_by_users"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_access_visa_revocations")),
    )
    op.create_index(op.f("ix_access_visa_revocations_expires_at"), "access_visa_revocations", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_access_visa_revocations_expires_at"), table_name="access_visa_revocations")
    op.drop_table("access_visa_revocations")
