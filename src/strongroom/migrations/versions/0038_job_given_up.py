"""Jobs: ``given_up_at``, when a failed job's ``on_given_up`` hook ended the record its kind keeps (a strategy
run, an airlock request, a deletion, a push, an evaluation). NULL on a failed job of a hooked kind: the hook is
still to run, and a runner's sweep runs it; so the records left stuck by jobs that failed before this revision
are ended by the first sweep after the upgrade (each hook checks its record's state first).

Revision ID: 0038_job_given_up
Revises: 0037_ws_uid
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import strongroom.db

revision = "0038_job_given_up"
down_revision = "0037_ws_uid"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("given_up_at", strongroom.db.UtcDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("given_up_at")
