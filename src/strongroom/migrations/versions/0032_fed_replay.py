"""Federation: seen nonces of signed hub-to-hub requests (replay protection), withdrawal notices to peers
(origin) and withdrawn mirrors (peer), one unfinished push per dataset and peer with a worker lease.

Revision ID: 0032_fed_replay
Revises: 0031_perf_ingest
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0032_fed_replay"
down_revision = "0031_perf_ingest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("federation_nonces",
                    sa.Column("key_id", sa.String(length=64), nullable=False),
                    sa.Column("nonce", sa.String(length=64), nullable=False),
                    sa.Column("expires_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint("key_id", "nonce", name=op.f("pk_federation_nonces")))
    op.create_index(op.f("ix_federation_nonces_expires_at"), "federation_nonces", ["expires_at"], unique=False)
    op.create_table("federation_notices",
                    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
                    sa.Column("peer_id", sa.Uuid(), nullable=False),
                    sa.Column("dataset_id", sa.String(length=64), nullable=False),
                    sa.Column("kind", sa.String(length=12), nullable=False),
                    sa.Column("version", sa.Integer(), nullable=False),
                    sa.Column("reason", sa.Text(), nullable=False),
                    sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
                    sa.Column("attempts", sa.Integer(), nullable=False),
                    sa.Column("last_error", sa.Text(), nullable=True),
                    sa.Column("acked_at", strongroom.db.UtcDateTime(timezone=True), nullable=True),
                    sa.ForeignKeyConstraint(["peer_id"], ["federation_peers.id"],
                                            name=op.f("fk_federation_notices_peer_id_federation_peers"),
                                            ondelete="CASCADE"),
                    sa.PrimaryKeyConstraint("id", name=op.f("pk_federation_notices")),
                    sa.UniqueConstraint("peer_id", "dataset_id", "kind", "version", name="uq_federation_notices_what"))
    op.create_index(op.f("ix_federation_notices_peer_id"), "federation_notices", ["peer_id"], unique=False)
    with op.batch_alter_table("federation_syncs") as batch:
        batch.add_column(sa.Column("active_key", sa.String(length=120), nullable=True))
        batch.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_until", strongroom.db.UtcDateTime(timezone=True), nullable=True))
        batch.create_unique_constraint(op.f("uq_federation_syncs_active_key"), ["active_key"])
    with op.batch_alter_table("federation_mirrors") as batch:
        batch.add_column(sa.Column("withdrawn_at", strongroom.db.UtcDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("withdrawn_reason", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("federation_mirrors") as batch:
        batch.drop_column("withdrawn_reason")
        batch.drop_column("withdrawn_at")
    with op.batch_alter_table("federation_syncs") as batch:
        batch.drop_constraint(op.f("uq_federation_syncs_active_key"), type_="unique")
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
        batch.drop_column("active_key")
    op.drop_index(op.f("ix_federation_notices_peer_id"), table_name="federation_notices")
    op.drop_table("federation_notices")
    op.drop_index(op.f("ix_federation_nonces_expires_at"), table_name="federation_nonces")
    op.drop_table("federation_nonces")
