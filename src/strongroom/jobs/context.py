"""What a running job gets: its identity and a way to open transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from ..db import transaction

if TYPE_CHECKING:
    from ..hub import Hub


@dataclass
class JobContext:
    job_id: int
    attempt: int
    worker_id: str
    hub: Hub

    @property
    def sessions(self):  # sessionmaker[Session]
        return self.hub.sessions

    @contextmanager
    def transaction(self, *, deferred: bool = False) -> Iterator[Session]:
        """``deferred`` for read-mostly work: it holds no write lock until its first write (and its
        reads before that are not serialised with other writers; see ``strongroom.db``)."""
        with transaction(self.sessions, deferred=deferred) as session:
            yield session
