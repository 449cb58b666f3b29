"""Project storage quota, enforced without races.

Every change is one conditional UPDATE: the database row lock (PostgreSQL) or the write lock
(SQLite, ``BEGIN IMMEDIATE``) makes concurrent reservations queue, and the ``WHERE`` clause refuses
any that would overshoot. No read-then-write window exists to race through.
"""

from __future__ import annotations

import uuid

from sqlalchemy import update
from sqlalchemy.orm import Session

from ..db import rowcount
from ..errors import Conflict
from .models import Project


class QuotaExceeded(Conflict):
    code = "quota-exceeded"


def reserve(session: Session, project_id: uuid.UUID, nbytes: int) -> None:
    """Hold ``nbytes`` for an upload in flight, or raise QuotaExceeded."""
    if nbytes < 0:
        raise ValueError("negative reservation")
    result = session.execute(
        update(Project)
        .where(Project.id == project_id,
               Project.used_bytes + Project.reserved_bytes + nbytes <= Project.quota_bytes)
        .values(reserved_bytes=Project.reserved_bytes + nbytes)
        .execution_options(synchronize_session=False)
    )
    if rowcount(result) != 1:
        project = session.get(Project, project_id)
        free = 0 if project is None else project.quota_bytes - project.used_bytes - project.reserved_bytes
        raise QuotaExceeded(f"the project's storage quota does not allow {nbytes} more bytes "
                            f"({max(free, 0)} free)", free_bytes=max(free, 0))


def release(session: Session, project_id: uuid.UUID, nbytes: int) -> None:
    """Give back a reservation (upload cancelled or failed)."""
    session.execute(update(Project).where(Project.id == project_id)
                    .values(reserved_bytes=Project.reserved_bytes - nbytes)
                    .execution_options(synchronize_session=False))


def settle(session: Session, project_id: uuid.UUID, reserved: int, stored: int) -> None:
    """Turn a reservation into usage of what was actually stored."""
    session.execute(update(Project).where(Project.id == project_id)
                    .values(reserved_bytes=Project.reserved_bytes - reserved,
                            used_bytes=Project.used_bytes + stored)
                    .execution_options(synchronize_session=False))


def free(session: Session, project_id: uuid.UUID, nbytes: int) -> None:
    session.execute(update(Project).where(Project.id == project_id)
                    .values(used_bytes=Project.used_bytes - nbytes)
                    .execution_options(synchronize_session=False))
