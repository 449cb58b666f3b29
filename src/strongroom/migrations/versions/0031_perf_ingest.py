"""Bundled small-file uploads: a file's stream may sit at an offset inside one inbox object.

Revision ID: 0031_perf_ingest
Revises: 0026_federation
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0031_perf_ingest"
down_revision = '0029_vai_ref'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("archive_files") as batch:
        batch.add_column(sa.Column("inbox_offset", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("archive_files") as batch:
        batch.drop_column("inbox_offset")
