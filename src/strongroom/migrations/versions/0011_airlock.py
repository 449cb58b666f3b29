"""Airlock: reviewed export and import (airlock_requests, airlock_files, airlock_reviews, airlock_outbox).

Revision ID: 0011_airlock
Revises: 0010_strategy_runs
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0011_airlock"
down_revision = "0010_strategy_runs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "airlock_requests",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("requester_id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("destination", sa.JSON(), nullable=True),
        sa.Column("dataset_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("approvals_needed", sa.Integer(), nullable=False),
        sa.Column("checks_passed", sa.Boolean(), nullable=True),
        sa.Column("override_reason", sa.Text(), nullable=True),
        sa.Column("override_by", sa.Uuid(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("receipt", sa.JSON(), nullable=True),
        sa.Column("expires_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_version_id"],
            ["dataset_versions.id"],
            name=op.f("fk_airlock_requests_dataset_version_id_dataset_versions"),
        ),
        sa.ForeignKeyConstraint(["override_by"], ["users.id"], name=op.f("fk_airlock_requests_override_by_users")),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_airlock_requests_project_id_projects")),
        sa.ForeignKeyConstraint(["requester_id"], ["users.id"], name=op.f("fk_airlock_requests_requester_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_airlock_requests")),
    )
    with op.batch_alter_table("airlock_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_airlock_requests_project_id"), ["project_id"], unique=False)
        batch_op.create_index("ix_airlock_requests_project_state", ["project_id", "state"], unique=False)

    op.create_table(
        "airlock_files",
        sa.Column("request_id", sa.String(length=32), nullable=False),
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("check_state", sa.String(length=8), nullable=False),
        sa.Column("checks", sa.JSON(), nullable=True),
        sa.Column("content_type", sa.String(length=40), nullable=True),
        sa.Column("delivered_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["file_id"], ["archive_files.id"], name=op.f("fk_airlock_files_file_id_archive_files")),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["airlock_requests.id"],
            name=op.f("fk_airlock_files_request_id_airlock_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", "file_id", name=op.f("pk_airlock_files")),
    )
    with op.batch_alter_table("airlock_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_airlock_files_file_id"), ["file_id"], unique=False)

    op.create_table(
        "airlock_outbox",
        sa.Column("request_id", sa.String(length=32), nullable=False),
        sa.Column("recipient_id", sa.Uuid(), nullable=False),
        sa.Column("source_file_id", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("header", sa.LargeBinary(), nullable=False),
        sa.Column("body_key", sa.String(length=300), nullable=False),
        sa.Column("body_size", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("plaintext_sha256", sa.String(length=64), nullable=False),
        sa.Column("stream_sha256", sa.String(length=64), nullable=False),
        sa.Column("downloaded_at", strongroom.db.UtcDateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["recipient_id"], ["users.id"], name=op.f("fk_airlock_outbox_recipient_id_users")),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["airlock_requests.id"],
            name=op.f("fk_airlock_outbox_request_id_airlock_requests"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_file_id"], ["archive_files.id"], name=op.f("fk_airlock_outbox_source_file_id_archive_files")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_airlock_outbox")),
    )
    with op.batch_alter_table("airlock_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_airlock_outbox_recipient_id"), ["recipient_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_airlock_outbox_request_id"), ["request_id"], unique=False)

    op.create_table(
        "airlock_reviews",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=32), nullable=False),
        sa.Column("reviewer_id", sa.Uuid(), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["airlock_requests.id"],
            name=op.f("fk_airlock_reviews_request_id_airlock_requests"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["reviewer_id"], ["users.id"], name=op.f("fk_airlock_reviews_reviewer_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_airlock_reviews")),
        sa.UniqueConstraint("request_id", "reviewer_id", name="uq_airlock_reviews_reviewer"),
    )
    with op.batch_alter_table("airlock_reviews", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_airlock_reviews_request_id"), ["request_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("airlock_reviews", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_airlock_reviews_request_id"))

    op.drop_table("airlock_reviews")
    with op.batch_alter_table("airlock_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_airlock_outbox_request_id"))
        batch_op.drop_index(batch_op.f("ix_airlock_outbox_recipient_id"))

    op.drop_table("airlock_outbox")
    with op.batch_alter_table("airlock_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_airlock_files_file_id"))

    op.drop_table("airlock_files")
    with op.batch_alter_table("airlock_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_airlock_requests_project_state")
        batch_op.drop_index(batch_op.f("ix_airlock_requests_project_id"))

    op.drop_table("airlock_requests")
