"""A job whose worker dies (or hangs) ends: a lapsed lease is a failed attempt, counted against max_attempts, and
waits its turn behind the jobs due before it; an attempt past its kind's time limit is given up by the runner."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from sqlalchemy import update

from strongroom.db import transaction
from strongroom.jobs import registry, service
from strongroom.jobs.context import JobContext
from strongroom.jobs.models import Job
from strongroom.jobs.runner import Runner

KIND = "notify.email"  # any registered kind: claim never runs it


def _job(hub, job_id: int) -> Job:
    with hub.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _die(hub, job_id: int, *, lapsed_at: dt.datetime) -> None:
    """The worker holding ``job_id`` stopped renewing: its lease ended at ``lapsed_at``."""
    with transaction(hub.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=lapsed_at))


def _due_now(hub, job_id: int) -> None:
    """Skip the backoff wait after a failed attempt."""
    with transaction(hub.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(run_after=dt.datetime.now(dt.UTC) - dt.timedelta(
            seconds=1)))


def test_a_job_whose_worker_keeps_dying_fails_after_its_attempts(hub):
    with transaction(hub.sessions) as s:
        poison = service.enqueue(s, KIND, {"x": 1}, max_attempts=2).id
    for attempt in (1, 2):  # each claim: a worker that took the job and died (OOM kill, segfault, SIGKILL)
        with transaction(hub.sessions) as s:
            job = service.claim(s, f"w{attempt}", 30, [KIND])
            assert job is not None and job.id == poison and job.attempts == attempt
        _die(hub, poison, lapsed_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    with transaction(hub.sessions) as s:
        assert service.claim(s, "w3", 30, [KIND]) is None  # its last attempt lapsed: failed, not claimed a third time
    j = _job(hub, poison)
    assert j.status == "failed" and j.attempts == 2 and j.finished_at is not None
    assert j.locked_by is None and j.lease_expires_at is None
    assert "attempt 2 of 2 lost" in j.last_error and "w2 stopped renewing its lease" in j.last_error


def test_a_lapsed_attempt_is_queued_again_with_its_error(hub):
    with transaction(hub.sessions) as s:
        job_id = service.enqueue(s, KIND, {}, max_attempts=3).id
    with transaction(hub.sessions) as s:
        service.claim(s, "w1", 30, [KIND])
    lapsed_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    _die(hub, job_id, lapsed_at=lapsed_at)
    with transaction(hub.sessions) as s:  # a worker of other kinds lapses nothing of this one
        assert service.claim(s, "other", 30, ["jobs.prune"]) is None
    assert _job(hub, job_id).status == "running"
    with transaction(hub.sessions) as s:
        service.lapse(s.get(Job, job_id), dt.datetime.now(dt.UTC))
    j = _job(hub, job_id)
    assert j.status == "queued" and j.attempts == 1 and j.locked_by is None and j.lease_expires_at is None
    assert j.run_after == lapsed_at and "attempt 1 of 3 lost: worker w1" in j.last_error


def test_a_lapsed_job_waits_behind_the_jobs_due_before_its_lease_lapsed(hub):
    now = dt.datetime.now(dt.UTC)
    with transaction(hub.sessions) as s:
        crashed = service.enqueue(s, KIND, {"n": "crashed"}, run_after=now - dt.timedelta(hours=2)).id
    with transaction(hub.sessions) as s:
        assert service.claim(s, "w1", 30, [KIND]).id == crashed
    with transaction(hub.sessions) as s:  # due an hour ago, while the crashed job's worker still held it
        waiting = service.enqueue(s, KIND, {"n": "waiting"}, run_after=now - dt.timedelta(hours=1)).id
    _die(hub, crashed, lapsed_at=now - dt.timedelta(minutes=10))
    with transaction(hub.sessions) as s:
        assert service.claim(s, "w2", 30, [KIND]).id == waiting
    with transaction(hub.sessions) as s:
        job = service.claim(s, "w3", 30, [KIND])  # its backoff after the lapse is long over: its turn now
        assert job is not None and job.id == crashed and job.attempts == 2


def test_an_attempt_past_its_time_limit_is_given_up_and_retried(hub):
    release = threading.Event()

    def hang_once(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        if ctx.attempt == 1:
            release.wait(30)  # hung: on a socket without a timeout, a deadlock, …
        return {"attempt": ctx.attempt}

    registry.job("test.hang_once", max_attempts=2, timeout_seconds=1)(hang_once)
    assert registry.REGISTRY["test.hang_once"].timeout_seconds == 1
    with transaction(hub.sessions) as s:
        job_id = service.enqueue(s, "test.hang_once", {}, max_attempts=2).id
    runner = Runner(hub, lease_seconds=2, name="hung")
    thread = threading.Thread(target=runner.run_one)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (_job(hub, job_id).attempts and _job(hub, job_id).last_error):
            time.sleep(0.1)
        j = _job(hub, job_id)  # given up while the hung attempt still runs: its lease is not renewed forever
        assert runner.hung_attempts == [(job_id, "test.hang_once", 1)]  # abandoned: the runner is free again
        assert j.status == "queued" and j.attempts == 1 and j.lease_expires_at is None
        assert "timed out" in j.last_error and "test.hang_once" in j.last_error
    finally:
        release.set()
        thread.join(30)
    assert _job(hub, job_id).status == "queued"  # the abandoned attempt's late result is not recorded
    _due_now(hub, job_id)
    assert Runner(hub, lease_seconds=2, name="next").run_one()
    j = _job(hub, job_id)
    assert j.status == "done" and j.attempts == 2 and j.result == {"attempt": 2}


def test_the_builtin_kinds_have_deliberate_time_limits():
    kinds = registry.load()
    assert set(registry.BUILTIN_TIMEOUTS) <= set(kinds), "a time limit names a kind that does not exist"
    hour = 3600
    for name in ("archive.ingest", "retention.delete", "federation.sync", "airlock.transfer", "vai.evaluate",
                 "dicomweb.backfill", "strategy.run", "airlock.check"):
        assert kinds[name].timeout_seconds >= 12 * hour, name  # large files, datasets and transfers
    for kind in kinds.values():
        assert 0 < kind.timeout_seconds <= 48 * hour, kind.name  # none unbounded
        if kind.every_seconds and kind.every_seconds <= hour:  # frequent periodic runs hold back their next run
            assert kind.timeout_seconds <= 6 * hour, kind.name
    assert kinds["notify.email"].timeout_seconds == hour
