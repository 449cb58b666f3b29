"""Read holds and download policy: archive_files.hold (a file held in quarantine is readable only for
review, in-platform) and access_policies.applicant_download (whether approved applicants may download to
their own machines; locked by default).

Revision ID: 0008_read_holds
Revises: 0007_audit_anchor
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_read_holds"
down_revision = "0007_audit_anchor"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("archive_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hold", sa.String(length=20), nullable=True))
    with op.batch_alter_table("access_policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("applicant_download", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    # Instances already waiting in quarantine are held from now on.
    op.execute("UPDATE archive_files SET hold = 'quarantine' WHERE id IN "
               "(SELECT file_id FROM imaging_instances WHERE state = 'quarantined' AND file_id IS NOT NULL)")


def downgrade() -> None:
    with op.batch_alter_table("access_policies", schema=None) as batch_op:
        batch_op.drop_column("applicant_download")
    with op.batch_alter_table("archive_files", schema=None) as batch_op:
        batch_op.drop_column("hold")
