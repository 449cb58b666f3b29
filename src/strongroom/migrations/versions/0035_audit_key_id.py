"""The audit chain's head names the hub secret its next event must be keyed by (``key_id``, a one-way id of
the secret): after a rotation of the hub secret a process still holding the old one is refused instead of
writing events no verifier accepts. Empty until the next event is written, which fills it in.

Revision ID: 0035_audit_key_id
Revises: 0034_publish_right
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0035_audit_key_id"
down_revision = "0034_publish_right"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_head", sa.Column("key_id", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("key_id")
