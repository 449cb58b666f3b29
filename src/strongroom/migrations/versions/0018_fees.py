"""Fees: customers, price list versions, subscriptions, storage per day, waivers, issued statements.

Revision ID: 0018_fees
Revises: 0017_compute
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0018_fees"
down_revision = "0017_compute"
branch_labels = None
depends_on = None

Big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "fee_customers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("org_number", sa.String(length=40), nullable=False),
        sa.Column("invoice_ref", sa.String(length=120), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fee_customers")),
        sa.UniqueConstraint("name", name=op.f("uq_fee_customers_name")),
    )
    op.create_table(
        "fee_price_lists",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("note", sa.String(length=300), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_fee_price_lists_created_by_users")),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_fee_price_lists")),
        sa.UniqueConstraint("effective_from", name=op.f("uq_fee_price_lists_effective_from")),
    )
    op.create_table(
        "fee_project_customers",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["fee_customers.id"],
                                name=op.f("fk_fee_project_customers_customer_id_fee_customers")),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"],
                                name=op.f("fk_fee_project_customers_project_id_projects"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_fee_project_customers")),
    )
    op.create_index(op.f("ix_fee_project_customers_customer_id"), "fee_project_customers", ["customer_id"])
    op.create_table(
        "fee_subscriptions",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("item", sa.String(length=40), nullable=False),
        sa.Column("quantity", sa.Numeric(precision=12, scale=3), nullable=False),
        sa.Column("start", sa.Date(), nullable=False),
        sa.Column("end", sa.Date(), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_fee_subscriptions_created_by_users")),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_fee_subscriptions_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fee_subscriptions")),
    )
    op.create_index(op.f("ix_fee_subscriptions_project_id"), "fee_subscriptions", ["project_id"])
    op.create_table(
        "fee_storage_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("storage_class", sa.String(length=40), nullable=False),
        sa.Column("bytes", Big, nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_fee_storage_days_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("day", "project_id", "storage_class", name=op.f("pk_fee_storage_days")),
    )
    op.create_index(op.f("ix_fee_storage_days_project_id"), "fee_storage_days", ["project_id"])
    op.create_table(
        "fee_waivers",
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("category", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("percent", sa.Numeric(precision=5, scale=2), nullable=True),
        sa.Column("amount", sa.Numeric(precision=14, scale=2), nullable=True),
        sa.Column("project_id", sa.Uuid(), nullable=True),
        sa.Column("customer_id", sa.Uuid(), nullable=True),
        sa.Column("item", sa.String(length=40), nullable=True),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("valid_to", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=False),
        sa.Column("decided_by", sa.Uuid(), nullable=True),
        sa.Column("decided_at", strongroom.db.UtcDateTime(timezone=True), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["fee_customers.id"],
                                name=op.f("fk_fee_waivers_customer_id_fee_customers")),
        sa.ForeignKeyConstraint(["decided_by"], ["users.id"], name=op.f("fk_fee_waivers_decided_by_users")),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_fee_waivers_project_id_projects"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["requested_by"], ["users.id"], name=op.f("fk_fee_waivers_requested_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fee_waivers")),
    )
    op.create_index(op.f("ix_fee_waivers_customer_id"), "fee_waivers", ["customer_id"])
    op.create_index(op.f("ix_fee_waivers_project_id"), "fee_waivers", ["project_id"])
    op.create_table(
        "fee_statements",
        sa.Column("number", sa.String(length=60), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("subject", sa.String(length=80), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("credits_id", sa.Uuid(), nullable=True),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("total", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("issued_by", sa.Uuid(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["credits_id"], ["fee_statements.id"],
                                name=op.f("fk_fee_statements_credits_id_fee_statements")),
        sa.ForeignKeyConstraint(["issued_by"], ["users.id"], name=op.f("fk_fee_statements_issued_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fee_statements")),
        sa.UniqueConstraint("number", name=op.f("uq_fee_statements_number")),
        sa.UniqueConstraint("subject", "period_start", "period_end", "version", "kind",
                            name="uq_fee_statements_version"),
    )


def downgrade() -> None:
    op.drop_table("fee_statements")
    op.drop_index(op.f("ix_fee_waivers_project_id"), table_name="fee_waivers")
    op.drop_index(op.f("ix_fee_waivers_customer_id"), table_name="fee_waivers")
    op.drop_table("fee_waivers")
    op.drop_index(op.f("ix_fee_storage_days_project_id"), table_name="fee_storage_days")
    op.drop_table("fee_storage_days")
    op.drop_index(op.f("ix_fee_subscriptions_project_id"), table_name="fee_subscriptions")
    op.drop_table("fee_subscriptions")
    op.drop_index(op.f("ix_fee_project_customers_customer_id"), table_name="fee_project_customers")
    op.drop_table("fee_project_customers")
    op.drop_table("fee_price_lists")
    op.drop_table("fee_customers")
