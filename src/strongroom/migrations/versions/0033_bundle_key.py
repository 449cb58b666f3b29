"""A bundle's files found by their inbox object: group ingest and a retried bundle (same client key) look them
up by (inbox_key, inbox_offset), unique, instead of scanning every file. A project's file listing (keyset pages
in id order) becomes one range scan of (project_id, id), which replaces the index on project_id alone.

Revision ID: 0033_bundle_key
Revises: 0032_fed_replay
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0033_bundle_key"
down_revision = "0032_fed_replay"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ux_archive_files_inbox", "archive_files", ["inbox_key", "inbox_offset"], unique=True)
    op.create_index("ix_archive_files_project_files", "archive_files", ["project_id", "id"])
    op.drop_index("ix_archive_files_project_id", table_name="archive_files")


def downgrade() -> None:
    op.create_index("ix_archive_files_project_id", "archive_files", ["project_id"])
    op.drop_index("ix_archive_files_project_files", table_name="archive_files")
    op.drop_index("ux_archive_files_inbox", table_name="archive_files")
