"""Background jobs: leases, a killed worker's job taken over, no double execution, retries."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

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
    return subprocess.Popen([sys.executable, "-m", "strongroom.cli", "worker", "--name", name],
                            env=_worker_env(settings, name), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


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
            if p and p.poll() is None:
                p.terminate()
                p.wait(10)


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
            p.terminate()
            p.wait(10)


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


def test_builtin_periodic_jobs_run(hub):
    runner = Runner(hub, lease_seconds=5, name="inline")
    runner.schedule_periodic()
    runner.schedule_periodic()  # the same period: nothing new
    with hub.sessions() as s:
        kinds = sorted(j.kind for j in s.scalars(select(Job)))
    assert kinds == ["access.entitlements", "airlock.expire", "airlock.sweep", "archive.cleanup_storage",
                     "audit.checkpoint", "audit.verify_chain", "catalog.dois_sweep", "compute.drift",
                     "federation.harvest", "federation.nonces", "federation.notices", "fees.snapshot",
                     "identity.purge_expired", "jobs.prune", "notify.digest",
                     "retention.clock", "retention.review", "stats.prune", "workspaces.booking_end",
                     "workspaces.idle"]
    assert runner.run_until_idle() == 20
    assert (hub.settings.var_dir / "audit-checkpoints.jsonl").read_text().count("\n") == 1
    with hub.sessions() as s:
        verified = s.scalar(select(AuditEvent).where(AuditEvent.action == "audit.verified"))
        assert verified is not None and verified.outcome == "ok"


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

