"""The ``publish`` right: releasing dataset versions and publishing catalogue entries (the landing page, the DOI)
is no longer every member's with write-data. The built-in roles that curate (``pi``, ``steward``) get it; a
researcher (``member``) does not, and a PI may delegate it to one.

Revision ID: 0034_publish_right
Revises: 0033_bundle_key
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0034_publish_right"
down_revision = "0033_bundle_key"
branch_labels = None
depends_on = None

CURATORS = ("pi", "steward")
roles = sa.table("roles", sa.column("name", sa.String), sa.column("rights", sa.JSON))


def _set(add: bool) -> None:
    bind = op.get_bind()
    for name, rights in bind.execute(sa.select(roles.c.name, roles.c.rights).where(roles.c.name.in_(CURATORS))):
        wanted = sorted(set(rights or []) | {"publish"}) if add else [r for r in rights or [] if r != "publish"]
        bind.execute(roles.update().where(roles.c.name == name).values(rights=wanted))


def upgrade() -> None:
    _set(add=True)


def downgrade() -> None:
    _set(add=False)
