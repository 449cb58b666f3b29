"""VAI: the reference standard read from DICOM SR/SEG (a label per SR/SEG instance, by study) and the
execution provider an evaluation ran on.

Revision ID: 0029_vai_ref
Revises: 0026_federation
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029_vai_ref"
down_revision = '0028_fed_sync'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vai_predictions") as batch:
        batch.add_column(sa.Column("reference", sa.Integer(), nullable=True))
    with op.batch_alter_table("vai_evaluations") as batch:
        batch.add_column(sa.Column("execution", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vai_evaluations") as batch:
        batch.drop_column("execution")
    with op.batch_alter_table("vai_predictions") as batch:
        batch.drop_column("reference")
