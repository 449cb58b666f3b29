"""What a running job gets: its identity and a way to open transactions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from ..db import transaction

if TYPE_CHECKING:
    from ..hub import Hub


class AttemptAbandoned(RuntimeError):
    """The attempt ran past its kind's time limit and its runner abandoned it: its job was failed as an attempt
    (and may already run again), so whatever this attempt still does is not committed through ``ctx.transaction``."""


@dataclass
class JobContext:
    job_id: int
    attempt: int
    worker_id: str
    hub: Hub
    # set by the runner when it abandons the attempt past its time limit (`runner.Runner`)
    abandoned: threading.Event = field(default_factory=threading.Event)

    @property
    def sessions(self):  # sessionmaker[Session]
        return self.hub.sessions

    @contextmanager
    def transaction(self, *, deferred: bool = False) -> Iterator[Session]:
        """``deferred`` for read-mostly work: it holds no write lock until its first write (and its
        reads before that are not serialised with other writers; see ``strongroom.db``).

        Once the attempt is abandoned no transaction opens and none open commits (AttemptAbandoned, rolled back):
        a hung attempt that ends late changes nothing its job's next attempt or its ``on_given_up`` hook decided."""
        self._refuse_if_abandoned()
        with transaction(self.sessions, deferred=deferred) as session:
            yield session
            self._refuse_if_abandoned()

    def _refuse_if_abandoned(self) -> None:
        if self.abandoned.is_set():
            raise AttemptAbandoned(f"attempt {self.attempt} of job {self.job_id} was abandoned past its time limit: "
                                   "it commits nothing more")
