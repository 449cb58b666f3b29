"""Background jobs: leases, a killed worker's job taken over, no double execution, retries."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import select, text

from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.jobs import service
from strongroom.jobs.models import Job
from strongroom.jobs.runner import Runner

TESTS = Path(__file__).parent


def _worker_env(settings, name: str) -> dict[str, str]:
    return {**os.environ,
            "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "STRONGROOM_DATABASE_URL": settings.effective_database_url,
            "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(),
            "STRONGROOM_VAR_DIR": str(settings.var_dir),
            "STRONGROOM_JOBS__EXTRA_MODULES": '["support.jobs_for_tests"]',
            "STRONGROOM_JOBS__LEASE_SECONDS": "2",
            "STRONGROOM_JOBS__POLL_SECONDS": "0.1",
            "STRONGROOM_JOBS__EMBEDDED": "false"}


def _start_worker(settings, name: str) -> subprocess.Popen:
    # its log goes to a file: a pipe nobody reads would block the worker once full, and a worker blocked so
    # cannot stop when asked
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    log = (settings.var_dir / f"worker-{name}.log").open("ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "strongroom.cli", "worker", "--name", name],
                                env=_worker_env(settings, name), stdout=subprocess.DEVNULL, stderr=log)
    finally:
        log.close()


def _stop(worker: subprocess.Popen | None) -> None:
    """SIGTERM (the worker finishes its job), SIGKILL if it has not exited in time: no worker of this test may
    outlive it, since on PostgreSQL the next test of this process uses the same schema."""
    if worker is None or worker.poll() is not None:
        return
    worker.terminate()
    try:
        worker.wait(60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(30)


def _wait(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _job(hub, job_id: int) -> Job:
    with hub.sessions() as s:
        return s.get(Job, job_id)


def test_killed_worker_job_is_taken_over_and_done_once(hub, settings):
    with transaction(hub.sessions) as s:
        job_id = service.enqueue(s, "test.mark", {"name": "slow", "seconds": 4}).id
    a = _start_worker(settings, "worker-a")
    b = None
    try:
        _wait(lambda: (j := _job(hub, job_id)).status == "running" and j.locked_by == "worker-a")
        a.send_signal(signal.SIGKILL)  # dies mid-job, holding the lease
        a.wait(10)
        b = _start_worker(settings, "worker-b")
        done = _wait(lambda: (j := _job(hub, job_id)).status == "done" and j, timeout=60)
        assert done.locked_by == "worker-b" and done.attempts == 2
        assert done.result["worker"] == "worker-b"
        with hub.sessions() as s:
            marks = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "test.marked")))
        assert len(marks) == 1
    finally:
        for p in (a, b):
            _stop(p)


def test_two_workers_share_a_queue_without_double_claims(hub, settings):
    with transaction(hub.sessions) as s:
        ids = [service.enqueue(s, "test.mark", {"name": f"n{i}", "seconds": 0.05}).id for i in range(24)]
    workers = [_start_worker(settings, f"w{i}") for i in range(2)]
    try:
        _wait(lambda: all(_job(hub, i).status == "done" for i in ids), timeout=90)
        with hub.sessions() as s:
            jobs = [s.get(Job, i) for i in ids]
            marks = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "test.marked")))
        assert all(j.attempts == 1 for j in jobs)  # nobody ran a job another worker held
        assert len(marks) == 24
        assert {j.locked_by for j in jobs} <= {"w0", "w1"}
    finally:
        for p in workers:
            _stop(p)


def test_stopping_a_runner_thread_waits_for_its_job_and_its_loop(hub, settings):
    """``Runner.stop`` returns once the job in hand is finished and the loop has ended (the app's shutdown calls it):
    nothing a runner does outlives its owner."""
    runner = Runner(hub, lease_seconds=5, poll_seconds=0.05, extra_modules=["support.jobs_for_tests"],
                    name="threaded")
    with transaction(hub.sessions) as s:
        job_id = service.enqueue(s, "test.mark", {"name": "stop", "seconds": 3.0}).id  # long enough to be seen running
    thread = runner.start_thread()
    _wait(lambda: _job(hub, job_id).status == "running")
    assert runner.stop() is True
    assert not thread.is_alive()
    assert _job(hub, job_id).status == "done"  # finished, not abandoned


def test_dedup_key_enqueues_once(hub):
    with transaction(hub.sessions) as s:
        first = service.enqueue(s, "test.mark", {"name": "x"}, dedup_key="same")
        second = service.enqueue(s, "test.mark", {"name": "y"}, dedup_key="same")
        assert first.id == second.id
        assert s.scalar(select(Job).where(Job.dedup_key == "same")).payload == {"name": "x"}


def test_failing_job_retries_with_backoff_then_fails(hub, settings):
    sys.path.insert(0, str(TESTS))
    runner = Runner(hub, lease_seconds=5, extra_modules=["support.jobs_for_tests"], name="inline")
    with transaction(hub.sessions) as s:
        job_id = service.enqueue(s, "test.explode", {}, max_attempts=2).id
    assert runner.run_one()
    j = _job(hub, job_id)
    assert j.status == "queued" and j.attempts == 1 and "boom" in j.last_error
    with transaction(hub.sessions) as s:  # skip the backoff wait
        s.get(Job, job_id).run_after = j.created_at
    assert runner.run_one()
    j = _job(hub, job_id)
    assert j.status == "failed" and j.attempts == 2


# A fixed time picks the periods, so that no test depends on where the clock falls: with the clock, a minute
# boundary between two calls gave a second `federation.notices` job (the only one-minute period). T is a multiple
# of 3600, and T + 60 crosses no period boundary but the minute's.
T = 1_800_000_000
BUILTIN_PERIODIC = ["access.entitlements", "airlock.expire", "airlock.sweep", "archive.cleanup_storage",
                    "audit.checkpoint", "audit.verify_chain", "catalog.dois_sweep", "compute.drift",
                    "federation.harvest", "federation.nonces", "federation.notices", "fees.snapshot",
                    "identity.purge_expired", "jobs.prune", "notify.digest",
                    "retention.clock", "retention.review", "stats.prune", "workspaces.access",
                    "workspaces.booking_end", "workspaces.idle"]


def _kinds(hub) -> list[str]:
    with hub.sessions() as s:
        return sorted(j.kind for j in s.scalars(select(Job)))


def _jobs(hub) -> list[tuple[object, ...]]:
    """Every job with what tells who made it (an assertion's message: a stray scheduler shows its period)."""
    with hub.sessions() as s:
        return [(j.id, j.kind, j.dedup_key, j.status, j.locked_by, j.created_at) for j in s.scalars(select(Job))]


def test_builtin_periodic_jobs_run(hub):
    runner = Runner(hub, lease_seconds=5, name="inline")
    assert _jobs(hub) == []
    added = runner.schedule_periodic(now=T)
    assert len(added) == len(BUILTIN_PERIODIC), _jobs(hub)  # all by this call: no other scheduler here
    assert runner.schedule_periodic(now=T) == []  # the same period: nothing new
    assert runner.schedule_periodic(now=T + 60) == []  # the next minute: federation.notices is still queued
    assert runner.schedule_periodic(now=T + 86_400) == []  # a day later: every kind still has its run queued
    assert _kinds(hub) == BUILTIN_PERIODIC, _jobs(hub)
    assert runner.run_until_idle() == len(BUILTIN_PERIODIC), _jobs(hub)
    with hub.sessions() as s:
        assert {(j.status, j.locked_by) for j in s.scalars(select(Job))} == {("done", "inline")}
    assert (hub.settings.var_dir / "audit-checkpoints.jsonl").read_text().count("\n") == 1
    with hub.sessions() as s:
        verified = s.scalar(select(AuditEvent).where(AuditEvent.action == "audit.verified"))
        assert verified is not None and verified.outcome == "ok"
    assert runner.schedule_periodic(now=T) == []  # the period's runs are done: not again
    again = runner.schedule_periodic(now=T + 60)  # the next minute, its run done: the next one
    with hub.sessions() as s:
        assert [s.get(Job, i).kind for i in again] == ["federation.notices"], _jobs(hub)


def test_periodic_jobs_are_not_pending_twice_across_a_period_boundary(hub):
    """Two runners scheduling at once on either side of a minute: the second waits for the first's transaction
    and then finds every kind pending; one federation.notices job, not two."""
    first, second = Runner(hub, name="first"), Runner(hub, name="second")
    runs = [(k.name, f"{k.name}@{T // k.every_seconds}", k.max_attempts)
            for k in first.kinds.values() if k.every_seconds]
    result: list[list[int]] = []
    with transaction(hub.sessions) as s:
        assert len(service.enqueue_periodic(s, runs)) == len(BUILTIN_PERIODIC)  # holds the lock until commit
        thread = threading.Thread(target=lambda: result.append(second.schedule_periodic(now=T + 60)))
        thread.start()
        if hub.settings.effective_database_url.startswith("postgresql"):
            _wait(lambda: _advisory_waiters(hub) == 1)  # the second runner waits for this transaction's lock
    thread.join(60)
    assert not thread.is_alive() and result == [[]]
    assert _kinds(hub) == BUILTIN_PERIODIC


def _advisory_waiters(hub) -> int:
    with hub.sessions() as s:
        return int(s.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = :class"
            " AND objid::bigint = (hashtext(current_schema())::bigint & 4294967295)"),
            {"class": service.PERIODIC_LOCK_CLASS}))


def test_finished_jobs_are_pruned_after_their_retention(hub):
    """Done jobs go after `keep_done_days`, failed ones after `keep_failed_days`; queued and running
    jobs, and recent ones, stay."""
    now = dt.datetime.now(dt.UTC)
    ages = {"old-done": ("done", 8), "new-done": ("done", 6), "old-failed": ("failed", 31),
            "new-failed": ("failed", 29), "queued": ("queued", None), "running": ("running", None)}
    with transaction(hub.sessions) as s:
        for name, (status, days) in ages.items():
            s.add(Job(kind="test.noop", payload={"name": name}, status=status,
                      finished_at=now - dt.timedelta(days=days) if days else None))
    runner = Runner(hub, lease_seconds=5, name="inline")
    with transaction(hub.sessions) as s:
        service.enqueue(s, "jobs.prune", {})
    assert runner.run_until_idle() == 1
    with hub.sessions() as s:
        left = sorted(j.payload.get("name", j.kind) for j in s.scalars(select(Job)))
    assert left == ["jobs.prune", "new-done", "new-failed", "queued", "running"]

