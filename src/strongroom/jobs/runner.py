"""Runs jobs: the same loop serves the in-process runner of `strongroom serve` and `strongroom worker`.

Each attempt runs in a thread of its own while the loop renews its lease and watches its kind's time limit. Python
cannot stop a thread: an attempt still running past the limit (hung in a socket read, a C call, a lock) is
*abandoned*. Its job is failed as an attempt (retried with backoff, or failed for good and given up), its
``ctx.transaction()`` commits nothing more, whatever it returns or raises later is dropped, and the loop goes on to
the next job: one hung attempt no longer holds every other project's jobs. Its thread still holds what it holds
(memory, a socket, perhaps a database connection), which only a new process frees: a runner given
``max_hung_attempts`` stops once that many are hung at once, and `strongroom worker` then exits 4 at once (`exit_now`)
so that its supervisor starts a fresh one (compose's ``restart: unless-stopped``, a Deployment's pods).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, NoReturn

import structlog
from prometheus_client import Counter, Gauge

from ..audit import service as audit
from ..audit.service import StaleSecret
from ..db import transaction
from ..hub import Hub
from . import registry, service
from .context import JobContext

log = structlog.get_logger("strongroom.jobs")
JOBS_RUN = service.JOBS_RUN
JOBS_HUNG = Gauge("strongroom_jobs_hung_attempts",
                  "Attempts past their kind's time limit that this process abandoned and that still run")
JOBS_HUNG_TOTAL = Counter("strongroom_jobs_hung_total", "Attempts abandoned past their kind's time limit", ["kind"])
GIVEN_UP_SWEEP = 60  # seconds between two sweeps for failed jobs whose on_given_up has not run (a crash between)
HUNG_EXIT_CODE = 4  # `strongroom worker` (and `jobs drain`) after attempts hung: a supervisor starts a new process


@dataclass(eq=False)
class Attempt:
    """One attempt of a job, run in a thread of its own; ``done`` once it returned or raised."""

    job_id: int
    kind: registry.JobKind
    ctx: JobContext
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None

    @property
    def number(self) -> int:
        return self.ctx.attempt


class Runner:
    def __init__(self, hub: Hub, *, lease_seconds: int = 30, poll_seconds: float = 0.5,
                 extra_modules: list[str] | None = None, name: str | None = None,
                 max_hung_attempts: int | None = None) -> None:
        self.hub = hub
        self.sessions = hub.sessions
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.kinds = registry.load(extra_modules)
        self.worker_id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None  # start_thread's
        self.stale = False  # stopped because this process holds a hub secret the audit chain has moved on from
        # None: never stop for hung attempts (a web server's embedded runner cannot restart its process)
        self.max_hung_attempts = max_hung_attempts
        self.restart_needed = False  # stopped because max_hung_attempts were hung at once: only a new process helps
        self._hung: set[Attempt] = set()  # abandoned past their time limit, still running
        self._hung_lock = threading.Lock()

    @property
    def hung_attempts(self) -> list[tuple[int, str, int]]:
        """(job id, kind, attempt) of each attempt abandoned past its time limit that still runs."""
        with self._hung_lock:
            return sorted((a.job_id, a.kind.name, a.number) for a in self._hung)

    # -- one step ------------------------------------------------------------------------------
    def schedule_periodic(self, now: float | None = None) -> list[int]:
        """Enqueue the current period's run of each periodic job (``now``: the time that picks the period,
        default the clock), except a kind whose earlier run is still queued or running; safe for any number
        of runners doing it at once (``service.enqueue_periodic``). Returns the ids of the jobs added."""
        when = int(time.time() if now is None else now)
        runs = [(kind.name, f"{kind.name}@{when // kind.every_seconds}", kind.max_attempts)
                for kind in self.kinds.values() if kind.every_seconds]
        with transaction(self.sessions, deferred=True) as session:  # usually finds every job queued
            return [job.id for job in service.enqueue_periodic(session, runs)]

    def run_one(self) -> bool:
        """Claim and run one job (until it ends, or is abandoned past its kind's time limit). Returns False when
        there was nothing to do."""
        with transaction(self.sessions, deferred=True) as session:  # an idle poll takes no write lock
            job = service.claim(session, self.worker_id, self.lease_seconds, list(self.kinds))
            given_up = service.given_up_in(session)
            if job is not None:
                job_id, kind_name, payload, number = job.id, job.kind, dict(job.payload), job.attempts
        if given_up:  # the claim failed jobs whose last lease lapsed: committed, now their kinds' hooks
            self.run_given_up()
        if job is None:
            return False
        kind = self.kinds[kind_name]
        log.info("job.start", job_id=job_id, kind=kind_name, attempt=number)
        attempt = self._start(job_id, kind, number, payload)
        if not self._watch(attempt):  # abandoned past its time limit: this runner is free for the next job
            return True
        if isinstance(attempt.error, StaleSecret):  # the hub secret was rotated: nothing this worker does is audited
            log.error("worker.stale_secret", job_id=job_id, kind=kind_name, error=str(attempt.error))
            with transaction(self.sessions) as session:
                service.give_back(session, job_id, self.worker_id, attempt=number)
            self.stale = True
            self.stop_event.set()
            return False
        if attempt.error is not None and not isinstance(attempt.error, Exception):
            raise attempt.error  # SystemExit, KeyboardInterrupt: as if the job had run in this thread
        if attempt.error is not None:  # any failure is recorded and retried
            log.warning("job.failed", job_id=job_id, kind=kind_name, error=repr(attempt.error))
            with transaction(self.sessions) as session:
                status = service.fail(session, job_id, self.worker_id,
                                      "".join(traceback.format_exception_only(attempt.error)).strip(), attempt=number)
            JOBS_RUN.labels(kind_name, "failed").inc()
            if status == "failed":
                self.run_given_up()
            return True
        with transaction(self.sessions) as session:
            finished = service.finish(session, job_id, self.worker_id, attempt.result, attempt=number)
        log.info("job.done", job_id=job_id, kind=kind_name, seconds=round(time.monotonic() - attempt.started, 3),
                 lost_lease=not finished)
        JOBS_RUN.labels(kind_name, "done" if finished else "lost").inc()
        return True

    def _start(self, job_id: int, kind: registry.JobKind, number: int, payload: dict[str, Any]) -> Attempt:
        ctx = JobContext(job_id=job_id, attempt=number, worker_id=self.worker_id, hub=self.hub)
        attempt = Attempt(job_id, kind, ctx)
        # a daemon: a hung attempt must not keep its process from exiting
        threading.Thread(target=self._run_attempt, args=(attempt, payload), name=f"strongroom-job-{job_id}",
                         daemon=True).start()
        return attempt

    def _run_attempt(self, attempt: Attempt, payload: dict[str, Any]) -> None:
        """The attempt's thread: the job's function, its outcome left for the loop — or, abandoned, dropped."""
        try:
            attempt.result = attempt.kind.func(attempt.ctx, payload)
        except BaseException as exc:  # the loop decides what it means
            attempt.error = exc
        with self._hung_lock:
            attempt.done.set()
            late = attempt in self._hung
            if late:
                self._hung.discard(attempt)
                JOBS_HUNG.dec()
        if late:
            self._ended_late(attempt)

    def _watch(self, attempt: Attempt) -> bool:
        """Renew the attempt's lease while it runs, up to its kind's time limit. True: it ended, its outcome is the
        loop's to record; False: it ran past the limit and was abandoned, its job failed as an attempt."""
        interval = max(self.lease_seconds / 3, 0.2)
        deadline = attempt.started + attempt.kind.timeout_seconds
        renewing = True
        while not attempt.done.wait(max(min(interval, deadline - time.monotonic()), 0)):
            if time.monotonic() >= deadline:
                if not self._abandon(attempt):
                    return True  # it ended just now, within its limit
                self._time_out(attempt)
                return False
            if renewing:
                renewing = self._renew(attempt)
        return True

    def _renew(self, attempt: Attempt) -> bool:
        """Extend the attempt's lease; False once another runner has its job (no use renewing any more)."""
        try:
            with transaction(self.sessions) as session:
                if service.renew(session, attempt.job_id, self.worker_id, self.lease_seconds, attempt=attempt.number):
                    return True
        except Exception as exc:  # a missed heartbeat is retried next interval
            log.warning("job.heartbeat_failed", job_id=attempt.job_id, error=repr(exc))
            return True
        log.warning("job.lease_lost", job_id=attempt.job_id)
        return False

    def _abandon(self, attempt: Attempt) -> bool:
        """Count a running attempt past its time limit as hung and make it commit nothing more; False when it ended
        meanwhile. At ``max_hung_attempts`` hung at once the runner stops: only a new process frees their threads."""
        with self._hung_lock:
            if attempt.done.is_set():
                return False
            attempt.ctx.abandoned.set()
            self._hung.add(attempt)
            hung = len(self._hung)
            JOBS_HUNG.inc()
        JOBS_HUNG_TOTAL.labels(attempt.kind.name).inc()
        if self.max_hung_attempts is not None and hung >= self.max_hung_attempts:
            self.restart_needed = True
            self.stop_event.set()
            log.error("worker.too_many_hung_attempts", worker=self.worker_id, hung=self.hung_attempts,
                      detail="stopping: their threads cannot be stopped, a new worker process must replace this one")
        return True

    def _time_out(self, attempt: Attempt) -> None:
        """The attempt ran past ``kind.timeout_seconds`` and was abandoned: record it as a failed attempt (retried
        with backoff, or failed for good and given up). If it ever ends, `_ended_late` says so and drops its outcome."""
        kind = attempt.kind
        error = (f"attempt timed out: still running after {kind.timeout_seconds:g} s, the time limit of "
                 f"{kind.name}; abandoned by worker {self.worker_id}")
        now = "lapsing"  # the failure not recorded: the lease, no longer renewed, lapses and a claim records it
        try:
            with transaction(self.sessions) as session:
                status = service.fail(session, attempt.job_id, self.worker_id, error, attempt=attempt.number)
            now = status or "taken over"  # None: another runner holds the job (this one had lost its lease)
        except Exception as exc:
            log.warning("job.heartbeat_failed", job_id=attempt.job_id, error=repr(exc))
        log.error("job.timed_out", job_id=attempt.job_id, kind=kind.name, attempt=attempt.number,
                  seconds=kind.timeout_seconds, worker=self.worker_id, now=now, hung=len(self.hung_attempts),
                  detail="abandoned: its thread runs on until it returns, its outcome dropped; other jobs go on")
        JOBS_RUN.labels(kind.name, "failed").inc()  # a failed attempt (StrongroomJobsFailing)
        self._audit("jobs.attempt.timed_out", attempt,
                    {"limit_seconds": kind.timeout_seconds, "now": now, "hung_in_worker": len(self.hung_attempts)})
        if now == "failed":
            self.run_given_up()

    def _ended_late(self, attempt: Attempt) -> None:
        """An abandoned attempt returned or raised after all (in its own thread): its outcome is dropped — its job
        was failed as an attempt when it was abandoned, and may have been run again or given up since."""
        seconds = round(time.monotonic() - attempt.started, 3)
        ended = "returned" if attempt.error is None else f"raised {type(attempt.error).__name__}"
        log.warning("job.hung_attempt_ended", job_id=attempt.job_id, kind=attempt.kind.name, attempt=attempt.number,
                    seconds=seconds, ended=ended, detail="its outcome is dropped")
        self._audit("jobs.attempt.ended_late", attempt, {"seconds": seconds, "ended": ended, "outcome": "dropped"})

    def _audit(self, action: str, attempt: Attempt, details: dict[str, Any]) -> None:
        try:
            with transaction(self.sessions) as session:
                audit.record(session, audit.Actor.system(f"worker:{self.worker_id}"), action, outcome="failed",
                             target=f"job:{attempt.job_id}",
                             details={"kind": attempt.kind.name, "attempt": attempt.number, **details})
        except Exception as exc:  # the log line above says it; an audit failure must not stop the runner
            log.warning("job.audit_failed", action=action, job_id=attempt.job_id, error=repr(exc))

    def run_given_up(self) -> int:
        """Run the ``on_given_up`` hook of every failed job whose hook has not run yet (`service.give_up`), each in
        a transaction of its own: called after this runner failed a job for good, and every ``GIVEN_UP_SWEEP``
        seconds for those a crashed runner left (a failure committed, the hook not yet). A hook that raises is
        logged and tried again by the next sweep. Returns how many hooks ran."""
        hooks = {name: kind.on_given_up for name, kind in self.kinds.items() if kind.on_given_up is not None}
        if not hooks:
            return 0
        with transaction(self.sessions, deferred=True) as session:
            pending = service.given_up_pending(session, list(hooks))
        ran = 0
        for job_id in pending:
            try:
                with transaction(self.sessions) as session:
                    ran += service.give_up(session, job_id, hooks)
            except Exception as exc:  # the job stays marked not given up: the next sweep tries again
                log.error("job.given_up_hook_failed", job_id=job_id, error=repr(exc))
        return ran

    # -- loops ---------------------------------------------------------------------------------
    def run_forever(self) -> None:
        log.info("worker.start", worker=self.worker_id, kinds=sorted(self.kinds))
        last_schedule = last_given_up = 0.0
        while not self.stop_event.is_set():
            try:
                if time.monotonic() - last_schedule > 5:
                    self.schedule_periodic()
                    last_schedule = time.monotonic()
                if time.monotonic() - last_given_up > GIVEN_UP_SWEEP:
                    last_given_up = time.monotonic()
                    self.run_given_up()
                if not self.run_one():
                    self.stop_event.wait(self.poll_seconds)
            except Exception as exc:  # the database may be briefly away; keep going
                log.error("worker.loop_error", error=repr(exc))
                self.stop_event.wait(min(self.poll_seconds * 4, 5))
        log.info("worker.stop", worker=self.worker_id, hung=self.hung_attempts)

    def run_until_idle(self, max_jobs: int = 10_000) -> int:
        """Run queued jobs until none is runnable (tests and `strongroom jobs drain`)."""
        done = 0
        self.run_given_up()
        while done < max_jobs and self.run_one():
            done += 1
        return done

    def start_thread(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run_forever, name="strongroom-jobs", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 60) -> bool:
        """Ask the loop to stop and, for a loop in ``start_thread``'s thread, wait (up to ``timeout`` s) until the
        job in hand is finished (or abandoned past its time limit) and the loop has ended: nothing the runner does
        may outlive its owner (the app's shutdown; before, a runner could still be scheduling periodic jobs into a
        database its owner had moved on from). False: still running after ``timeout`` (its lease lapses and another
        worker takes the job)."""
        self.stop_event.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("worker.stop_timed_out", worker=self.worker_id, seconds=timeout)
            return False
        return True


def exit_now(code: int) -> NoReturn:
    """End this process at once with ``code``, its output flushed. After attempts hung, a normal exit could wait on
    one of them forever (``concurrent.futures`` joins its pools' threads at exit, whatever they wait for); nothing of
    the jobs is lost: each hung attempt's job was failed as an attempt when it was abandoned."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
