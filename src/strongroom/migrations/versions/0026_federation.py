"""Federation: peer hubs (pinned keys, directions) and the catalogue entries harvested from them.

Revision ID: 0026_federation
Revises: 0020_dicomweb
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0026_federation"
down_revision = "0025_vai"
branch_labels = None
depends_on = None

When = strongroom.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "federation_peers",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("base_url", sa.String(length=500), nullable=False),
        sa.Column("signing_key", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("archive_key", sa.Text(), nullable=False),
        sa.Column("visa_issuer", sa.String(length=500), nullable=False),
        sa.Column("jwks_url", sa.String(length=500), nullable=False),
        sa.Column("outbound", sa.Boolean(), nullable=False),
        sa.Column("inbound", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("updated_at", When, nullable=False),
        sa.Column("last_harvest_at", When, nullable=True),
        sa.Column("last_harvest_error", sa.Text(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_federation_peers_created_by_users"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federation_peers")),
        sa.UniqueConstraint("base_url", name=op.f("uq_federation_peers_base_url")),
        sa.UniqueConstraint("key_id", name=op.f("uq_federation_peers_key_id")),
        sa.UniqueConstraint("name", name=op.f("uq_federation_peers_name")),
    )
    op.create_table(
        "federation_remote_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("peer_id", sa.Uuid(), nullable=False),
        sa.Column("remote_id", sa.String(length=1000), nullable=False),
        sa.Column("landing_url", sa.String(length=1000), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("publisher", sa.String(length=300), nullable=False),
        sa.Column("keywords", sa.JSON(), nullable=False),
        sa.Column("search_text", sa.Text(), nullable=False),
        sa.Column("harvested_at", When, nullable=False),
        sa.ForeignKeyConstraint(["peer_id"], ["federation_peers.id"],
                                name=op.f("fk_federation_remote_entries_peer_id_federation_peers"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federation_remote_entries")),
        sa.UniqueConstraint("peer_id", "remote_id", name="uq_federation_remote_entries_peer_remote"),
    )
    op.create_index(op.f("ix_federation_remote_entries_peer_id"), "federation_remote_entries", ["peer_id"],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_federation_remote_entries_peer_id"), table_name="federation_remote_entries")
    op.drop_table("federation_remote_entries")
    op.drop_table("federation_peers")
