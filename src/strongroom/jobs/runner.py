"""Runs jobs: the same loop serves the in-process runner of `strongroom serve` and `strongroom worker`."""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
import uuid

import structlog

from ..audit.service import StaleSecret
from ..db import transaction
from ..hub import Hub
from . import registry, service
from .context import JobContext

log = structlog.get_logger("strongroom.jobs")
JOBS_RUN = service.JOBS_RUN
GIVEN_UP_SWEEP = 60  # seconds between two sweeps for failed jobs whose on_given_up has not run (a crash between)


class Runner:
    def __init__(self, hub: Hub, *, lease_seconds: int = 30, poll_seconds: float = 0.5,
                 extra_modules: list[str] | None = None, name: str | None = None) -> None:
        self.hub = hub
        self.sessions = hub.sessions
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.kinds = registry.load(extra_modules)
        self.worker_id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None  # start_thread's
        self.stale = False  # stopped because this process holds a hub secret the audit chain has moved on from

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
        """Claim and run one job. Returns False when there was nothing to do."""
        with transaction(self.sessions, deferred=True) as session:  # an idle poll takes no write lock
            job = service.claim(session, self.worker_id, self.lease_seconds, list(self.kinds))
            given_up = service.given_up_in(session)
            if job is not None:
                job_id, kind_name, payload, attempt = job.id, job.kind, dict(job.payload), job.attempts
        if given_up:  # the claim failed jobs whose last lease lapsed: committed, now their kinds' hooks
            self.run_given_up()
        if job is None:
            return False
        kind = self.kinds[kind_name]
        log.info("job.start", job_id=job_id, kind=kind_name, attempt=attempt)
        heartbeat_stop = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(job_id, kind, heartbeat_stop), daemon=True)
        heartbeat.start()
        started = time.monotonic()
        try:
            ctx = JobContext(job_id=job_id, attempt=attempt, worker_id=self.worker_id, hub=self.hub)
            result = kind.func(ctx, payload)
        except StaleSecret as exc:  # the hub secret was rotated: nothing this worker does can be audited
            heartbeat_stop.set()
            heartbeat.join()
            log.error("worker.stale_secret", job_id=job_id, kind=kind_name, error=str(exc))
            with transaction(self.sessions) as session:
                service.give_back(session, job_id, self.worker_id)
            self.stale = True
            self.stop_event.set()
            return False
        except Exception as exc:  # any failure is recorded and retried
            heartbeat_stop.set()
            heartbeat.join()
            log.warning("job.failed", job_id=job_id, kind=kind_name, error=repr(exc))
            with transaction(self.sessions) as session:
                status = service.fail(session, job_id, self.worker_id,
                                      "".join(traceback.format_exception_only(exc)).strip())
            JOBS_RUN.labels(kind_name, "failed").inc()
            if status == "failed":
                self.run_given_up()
            return True
        heartbeat_stop.set()
        heartbeat.join()
        with transaction(self.sessions) as session:
            finished = service.finish(session, job_id, self.worker_id, result)
        log.info("job.done", job_id=job_id, kind=kind_name, seconds=round(time.monotonic() - started, 3),
                 lost_lease=not finished)
        JOBS_RUN.labels(kind_name, "done" if finished else "lost").inc()
        return True

    def _heartbeat(self, job_id: int, kind: registry.JobKind, stop: threading.Event) -> None:
        """Renew the lease while the job runs, up to the kind's time limit; past it, give the attempt up."""
        interval = max(self.lease_seconds / 3, 0.2)
        deadline = time.monotonic() + kind.timeout_seconds
        while not stop.wait(max(min(interval, deadline - time.monotonic()), 0)):
            if time.monotonic() >= deadline:
                self._time_out(job_id, kind)
                return
            try:
                with transaction(self.sessions) as session:
                    if not service.renew(session, job_id, self.worker_id, self.lease_seconds):
                        log.warning("job.lease_lost", job_id=job_id)
                        return
            except Exception as exc:  # a missed heartbeat is retried next interval
                log.warning("job.heartbeat_failed", job_id=job_id, error=repr(exc))

    def _time_out(self, job_id: int, kind: registry.JobKind) -> None:
        """The attempt ran past ``kind.timeout_seconds``: record it as a failed attempt (retried with backoff, or
        failed for good). The job's thread cannot be stopped: if it ever returns, its result is dropped (the job
        is no longer this worker's); if it hangs, this worker stays busy until restarted, which the log says."""
        error = (f"attempt timed out: still running after {kind.timeout_seconds:g} s, the time limit of "
                 f"{kind.name} (worker {self.worker_id})")
        status = None
        try:
            with transaction(self.sessions) as session:
                status = service.fail(session, job_id, self.worker_id, error)
        except Exception as exc:  # the lease is no longer renewed either way: it lapses, and a claim takes over
            log.warning("job.heartbeat_failed", job_id=job_id, error=repr(exc))
        log.error("job.timed_out", job_id=job_id, kind=kind.name, seconds=kind.timeout_seconds, worker=self.worker_id,
                  now=status or "lapsing", detail="the worker stays busy until the job returns; restart it if hung")
        JOBS_RUN.labels(kind.name, "failed").inc()  # a failed attempt (StrongroomJobsFailing)
        if status == "failed":
            self.run_given_up()

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
        log.info("worker.stop", worker=self.worker_id)

    def run_until_idle(self, max_jobs: int = 10_000) -> int:
        """Run queued jobs until none is runnable (tests and `strongroom jobs run`)."""
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
        job in hand is finished and the loop has ended: nothing the runner does may outlive its owner (the app's
        shutdown; before, a runner could still be scheduling periodic jobs into a database its owner had moved
        on from). False: still running after ``timeout`` (its lease lapses and another worker takes the job)."""
        self.stop_event.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("worker.stop_timed_out", worker=self.worker_id, seconds=timeout)
            return False
        return True

