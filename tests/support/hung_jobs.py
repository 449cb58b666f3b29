"""A job kind whose attempt hangs in a socket read the test controls (tests/test_job_hung_attempt.py); loaded into
worker processes via STRONGROOM_JOBS__EXTRA_MODULES."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.orm import Session

from strongroom.audit import service as audit
from strongroom.audit.service import Actor
from strongroom.jobs.context import JobContext
from strongroom.jobs.registry import job

TIME_LIMIT = 2.0  # seconds: `test.hang`'s time limit per attempt


def _ask(port: int, who: str) -> bytes:
    """Say who is asking and wait for the answer with no timeout at all: a peer that never answers holds this read
    (in C, where no Python code can interrupt it) for ever."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(f"{who}\n".encode())
        return conn.recv(1)


def _given_up(session: Session, payload: dict[str, Any], error: str) -> None:
    audit.record(session, Actor.system("test"), "test.hang.given_up", target=f"hang:{payload['name']}",
                 details={"error": error[:200]})


@job("test.hang", timeout_seconds=TIME_LIMIT, on_given_up=_given_up)
def hang(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Ask the test's server (``port``) and record its answer. ``in_pool``: ask from a thread pool's thread, as
    much library code does (an ordinary interpreter exit waits for such a thread)."""
    who = f"{payload['name']}:{ctx.attempt}"
    if payload.get("in_pool"):
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(_ask, int(payload["port"]), who).result()
    else:
        answer = _ask(int(payload["port"]), who)
    with ctx.transaction() as session:  # what the attempt achieved: its record
        audit.record(session, Actor.system(ctx.worker_id), "test.hang.finished", target=f"hang:{payload['name']}",
                     details={"attempt": ctx.attempt})
    return {"attempt": ctx.attempt, "answer": answer.decode()}
