"""A hung job attempt does not hold its worker: real `strongroom worker` processes, and a job kind
(`support.hung_jobs`) whose attempt waits in a socket read on a server of the test's that answers only when told.

- Past its kind's time limit the attempt is abandoned: its job is failed as an attempt (given up, or run again),
  the worker goes on with every other job while the attempt's thread still hangs, and the metrics, the log and the
  audit log say so.
- When the hang ends late, the attempt's outcome changes nothing: the job stays as its runner (or its next attempt)
  left it, and what the attempt still tries to commit is refused.
- Once ``jobs.max_hung_attempts`` hang at once the worker exits 4, promptly even though their threads still wait
  (one in a thread pool, which an ordinary interpreter exit would wait for), and a fresh worker takes over.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.jobs import service
from strongroom.jobs.models import Job
from support.live import free_port

TESTS = Path(__file__).parent
GENEROUS = 90.0  # seconds: the bound of every wait below (each is over in a few seconds)


class SilentPeer:
    """A TCP server that takes every connection and answers only when told (or at once, where ``answer_at_once``
    says): each connection it holds is an attempt hung in its read."""

    def __init__(self, answer_at_once: Callable[[str], bool]) -> None:
        self.answer_at_once = answer_at_once
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.arrived: queue.Queue[str] = queue.Queue()
        self.held: dict[str, socket.socket] = {}
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            line = b""
            while not line.endswith(b"\n") and (part := conn.recv(100)):
                line += part
            who = line.decode().strip()
            self.held[who] = conn
            if self.answer_at_once(who):
                conn.sendall(b"y")
            self.arrived.put(who)

    def wait_for(self, who: str) -> None:
        """Until the attempt ``who`` (name:attempt) is in its read."""
        deadline = time.monotonic() + GENEROUS
        while True:
            try:
                if self.arrived.get(timeout=max(deadline - time.monotonic(), 0.01)) == who:
                    return
            except queue.Empty:
                raise AssertionError(f"not within {GENEROUS:g} s: attempt {who} asks") from None

    def answer(self, who: str) -> None:
        self.held[who].sendall(b"x")

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (closing alone does not)
        self.listener.close()
        self._thread.join(10)
        for conn in self.held.values():
            conn.close()


@contextmanager
def silent_peer(answer_at_once: Callable[[str], bool]) -> Iterator[SilentPeer]:
    peer = SilentPeer(answer_at_once)
    try:
        yield peer
    finally:
        peer.close()


def _start_worker(settings, name: str, *, max_hung: int, metrics_port: int = 0) -> subprocess.Popen:
    env = {**os.environ,
           "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "STRONGROOM_DATABASE_URL": settings.effective_database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(),
           "STRONGROOM_VAR_DIR": str(settings.var_dir),
           "STRONGROOM_JOBS__EXTRA_MODULES": '["support.jobs_for_tests", "support.hung_jobs"]',
           "STRONGROOM_JOBS__LEASE_SECONDS": "2",
           "STRONGROOM_JOBS__POLL_SECONDS": "0.1",
           "STRONGROOM_JOBS__EMBEDDED": "false",
           "STRONGROOM_JOBS__MAX_HUNG_ATTEMPTS": str(max_hung),
           "STRONGROOM_JOBS__METRICS_PORT": str(metrics_port)}
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    log = (settings.var_dir / f"worker-{name}.log").open("ab")  # a file: a pipe nobody reads would block it
    try:
        return subprocess.Popen([sys.executable, "-m", "strongroom.cli", "worker", "--name", name],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)
    finally:
        log.close()


def _stop(worker: subprocess.Popen | None) -> None:
    """SIGTERM, SIGKILL if it has not exited in time: no worker may outlive its test (PostgreSQL reuses the schema)."""
    if worker is None or worker.poll() is not None:
        return
    worker.terminate()
    try:
        worker.wait(60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(30)


def _wait(predicate, what: str):
    deadline = time.monotonic() + GENEROUS
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {GENEROUS:g} s: {what}")


def _job(hub, job_id: int) -> Job:
    with hub.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _events(hub, action: str) -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def _metric(port: int, line: str) -> float:
    for row in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


def _enqueue(hub, kind: str, payload: dict, max_attempts: int = 3) -> int:
    with transaction(hub.sessions) as s:
        return service.enqueue(s, kind, payload, max_attempts=max_attempts).id


@pytest.mark.parametrize("attempts", [1, 2], ids=["given-up", "run-again"])
def test_other_jobs_run_while_an_attempt_hangs_and_its_late_end_changes_nothing(hub, settings, attempts):
    metrics = free_port()
    with silent_peer(answer_at_once=lambda who: not who.endswith(":1")) as peer:  # only first attempts hang
        worker = _start_worker(settings, "w-hung", max_hung=3, metrics_port=metrics)
        try:
            stuck = _enqueue(hub, "test.hang", {"port": peer.port, "name": "stuck"}, max_attempts=attempts)
            peer.wait_for("stuck:1")  # its read: nothing will answer it
            others = [_enqueue(hub, "test.mark", {"name": f"other-{i}"}) for i in range(5)]
            _wait(lambda: all(_job(hub, i).status == "done" for i in others), "the other jobs are done")
            assert worker.poll() is None and _metric(metrics, "strongroom_jobs_hung_attempts") == 1  # still hangs
            assert _metric(metrics, 'strongroom_jobs_hung_total{kind="test.hang"}') == 1
            if attempts == 1:  # its only attempt timed out: failed for good, its hook ran
                job = _wait(lambda: (j := _job(hub, stuck)).given_up_at is not None and j, "the job is given up")
                assert job.status == "failed" and "attempt timed out" in job.last_error
                assert len(_events(hub, "test.hang.given_up")) == 1
            else:  # run again after its backoff, answered at once
                job = _wait(lambda: (j := _job(hub, stuck)).status == "done" and j, "the second attempt is done")
                assert job.attempts == 2 and job.result == {"attempt": 2, "answer": "y"}
            [timed_out] = _events(hub, "jobs.attempt.timed_out")
            assert timed_out.target == f"job:{stuck}" and timed_out.outcome == "failed"
            assert timed_out.details["kind"] == "test.hang" and timed_out.details["attempt"] == 1
            before = (job.status, job.attempts, job.result, job.last_error, job.given_up_at)

            peer.answer("stuck:1")  # the hang ends, long after the attempt was abandoned
            [late] = _wait(lambda: _events(hub, "jobs.attempt.ended_late"), "the late end is audited")
            assert late.target == f"job:{stuck}" and late.details["attempt"] == 1
            assert late.details["ended"] == "raised AttemptAbandoned"  # its commit was refused
            job = _job(hub, stuck)
            assert (job.status, job.attempts, job.result, job.last_error, job.given_up_at) == before
            finished = [e.details["attempt"] for e in _events(hub, "test.hang.finished")]
            assert finished == ([] if attempts == 1 else [2])  # the abandoned attempt recorded nothing
            assert _metric(metrics, "strongroom_jobs_hung_attempts") == 0
            assert worker.poll() is None
            with hub.sessions() as s:
                assert s.scalar(select(func.count()).select_from(AuditEvent)
                                .where(AuditEvent.action == "test.marked")) == len(others)
        finally:
            _stop(worker)


def test_a_worker_with_too_many_hung_attempts_exits_and_a_fresh_one_takes_over(hub, settings):
    with silent_peer(answer_at_once=lambda who: False) as peer:  # a peer that never answers anyone
        first = _start_worker(settings, "w-first", max_hung=2)
        second = None
        try:
            hung = [_enqueue(hub, "test.hang", {"port": peer.port, "name": name, "in_pool": True}, max_attempts=1)
                    for name in ("a", "b")]
            peer.wait_for("a:1")
            peer.wait_for("b:1")  # taken while a's attempt still hangs
            assert first.wait(GENEROUS) == 4  # two hung at once: it leaves, though both threads still wait
            for job_id in hung:
                job = _job(hub, job_id)
                assert job.status == "failed" and "attempt timed out" in job.last_error and job.given_up_at
            assert len(_events(hub, "jobs.attempt.timed_out")) == 2
            log = (settings.var_dir / "worker-w-first.log").read_text()
            assert "worker.too_many_hung_attempts" in log and "2 job attempts hung past their time limit" in log

            after = _enqueue(hub, "test.mark", {"name": "after"})  # the supervisor starts a fresh worker
            second = _start_worker(settings, "w-second", max_hung=2)
            _wait(lambda: _job(hub, after).status == "done", "the fresh worker runs the queue")
        finally:
            _stop(first)
            _stop(second)
