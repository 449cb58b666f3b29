"""A retention deletion records what it removed beyond the version's own files (``derived``): the airlock
outbox copies of those files, the DICOMweb index rows and the catalogue's sample images, so the certificate
can list them and the purge and the check can find the outbox objects again after a crash.

Revision ID: 0036_deletion_derived
Revises: 0035_audit_key_id
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0036_deletion_derived"
down_revision = "0035_audit_key_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("retention_deletions", sa.Column("derived", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("retention_deletions") as batch:
        batch.drop_column("derived")
