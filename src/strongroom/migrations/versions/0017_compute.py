"""Compute: GPU budgets, bookings and the unique GPU-hour slots that make double booking impossible.

Revision ID: 0017_compute
Revises: 0016_airlock_sweep
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0017_compute"
down_revision = "0016_airlock_sweep"
branch_labels = None
depends_on = None

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "compute_budgets",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("klass", sa.String(length=20), nullable=False),
        sa.Column("gpu_weeks", sa.Float(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("updated_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_compute_budgets_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_compute_budgets")),
    )
    op.create_table(
        "compute_bookings",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("machine", sa.String(length=64), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("gpu_indices", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("start_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("end_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("booked_by", sa.Uuid(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("over_budget", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("reservation_state", sa.String(length=16), nullable=False),
        sa.Column("reservation_detail", sa.Text(), nullable=False),
        sa.Column("updated_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("created_at", strongroom.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["booked_by"], ["users.id"], name=op.f("fk_compute_bookings_booked_by_users")),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_compute_bookings_project_id_projects")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compute_bookings")),
    )
    with op.batch_alter_table("compute_bookings", schema=None) as batch_op:
        batch_op.create_index("ix_compute_bookings_machine_end", ["machine", "end_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_compute_bookings_project_id"), ["project_id"], unique=False)
    op.create_table(
        "compute_gpu_slots",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("machine", sa.String(length=64), nullable=False),
        sa.Column("gpu", sa.Integer(), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("booking_id", BIG, nullable=False),
        sa.ForeignKeyConstraint(["booking_id"], ["compute_bookings.id"],
                                name=op.f("fk_compute_gpu_slots_booking_id_compute_bookings"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compute_gpu_slots")),
        sa.UniqueConstraint("machine", "gpu", "hour", name="uq_compute_gpu_slots"),
    )
    with op.batch_alter_table("compute_gpu_slots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_compute_gpu_slots_booking_id"), ["booking_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("compute_gpu_slots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_compute_gpu_slots_booking_id"))
    op.drop_table("compute_gpu_slots")
    with op.batch_alter_table("compute_bookings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_compute_bookings_project_id"))
        batch_op.drop_index("ix_compute_bookings_machine_end")
    op.drop_table("compute_bookings")
    op.drop_table("compute_budgets")
