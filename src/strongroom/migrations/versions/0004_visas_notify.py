"""notifications: per-user mode and held digest items

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_preferences",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("updated_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_notify_preferences_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_notify_preferences")),
    )
    op.create_table(
        "notify_digest_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("to", sa.String(length=320), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", strongroom.db.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_notify_digest_items_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_digest_items")),
    )
    with op.batch_alter_table("notify_digest_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notify_digest_items_user_id"), ["user_id"], unique=False)
        batch_op.create_index("ix_notify_digest_items_pending", ["sent_at", "user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("notify_digest_items", schema=None) as batch_op:
        batch_op.drop_index("ix_notify_digest_items_pending")
        batch_op.drop_index(batch_op.f("ix_notify_digest_items_user_id"))
    op.drop_table("notify_digest_items")
    op.drop_table("notify_preferences")
