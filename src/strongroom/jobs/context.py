"""What a running job gets: its identity and a way to open transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from ..db import transaction


@dataclass
class JobContext:
    job_id: int
    attempt: int
    worker_id: str
    sessions: sessionmaker[Session]

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with transaction(self.sessions) as session:
            yield session
