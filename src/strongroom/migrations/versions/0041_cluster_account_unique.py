"""Workspaces: one cluster account per person, held by the database (``uq_workspace_cluster_accounts_account``).
The service refused a second member on an account already, but two operators mapping at the same moment could
both pass that check; two members' workspaces and GPU reservations on one POSIX identity read each other's files.

A hub whose table already holds an account twice stops here with the account's name: an operator removes one
mapping (``strongroom admin cluster-account USER ""``) and upgrades again.

Revision ID: 0041_cluster_account_unique
Revises: 0040_catalog_public_slug
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0041_cluster_account_unique"
down_revision = "0040_catalog_public_slug"
branch_labels = None
depends_on = None


def upgrade() -> None:
    shared = op.get_bind().execute(sa.text(
        "SELECT account FROM workspace_cluster_accounts GROUP BY account HAVING COUNT(*) > 1")).scalars().all()
    if shared:
        raise RuntimeError(f"cluster accounts mapped to more than one member: {', '.join(sorted(shared))}; "
                           "remove all but one mapping of each, then upgrade again")
    with op.batch_alter_table("workspace_cluster_accounts") as batch:
        batch.create_unique_constraint("uq_workspace_cluster_accounts_account", ["account"])


def downgrade() -> None:
    with op.batch_alter_table("workspace_cluster_accounts") as batch:
        batch.drop_constraint("uq_workspace_cluster_accounts_account", type_="unique")
