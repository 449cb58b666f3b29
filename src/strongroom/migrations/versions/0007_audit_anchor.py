"""Audit: platform auditors (the data protection officer's read right over every project's events).

Revision ID: 0007_audit_anchor
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0007_audit_anchor"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_auditors",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("granted_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("granted_by", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_audit_auditors_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_audit_auditors")),
    )


def downgrade() -> None:
    op.drop_table("audit_auditors")
