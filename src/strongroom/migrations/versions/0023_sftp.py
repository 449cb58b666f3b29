"""SFTP: users' SSH public keys and resumable uploads received over SFTP.

Revision ID: 0023_sftp
Revises: 0020_dicomweb
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0023_sftp"
down_revision = "0020_dicomweb"
branch_labels = None
depends_on = None

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = strongroom.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sftp_ssh_keys",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("fingerprint", sa.String(length=100), nullable=False),
        sa.Column("algorithm", sa.String(length=60), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("comment", sa.String(length=200), nullable=False),
        sa.Column("last_used_at", When, nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
    )
    op.create_index("ix_sftp_ssh_keys_user_id", "sftp_ssh_keys", ["user_id"], unique=False)
    op.create_table(
        "sftp_uploads",
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("header", sa.LargeBinary(), nullable=False),
        sa.Column("received", BIG, nullable=False),
        sa.Column("parts", sa.Integer(), nullable=False),
        sa.Column("completed_at", When, nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.ForeignKeyConstraint(["file_id"], ["archive_files.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("file_id"),
    )
    op.create_index("ix_sftp_uploads_project_path", "sftp_uploads", ["project_id", "path"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_sftp_uploads_project_path", table_name="sftp_uploads")
    op.drop_table("sftp_uploads")
    op.drop_index("ix_sftp_ssh_keys_user_id", table_name="sftp_ssh_keys")
    op.drop_table("sftp_ssh_keys")
