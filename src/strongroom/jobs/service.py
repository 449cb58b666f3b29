"""Enqueue, claim, renew and finish jobs.

Claiming is a lease: a runner owns a job until ``lease_expires_at`` and renews the lease while it
works. A runner that dies (or hangs, or runs past its kind's time limit) stops renewing and the lease
lapses. The next claim treats a lapsed lease as a failed attempt: the job is queued again, due from
the moment its lease lapsed, or failed once its ``max_attempts`` are used up, so a job that kills its
worker cannot crash-loop forever nor go ahead of the jobs that were due before it. A job failed for good, by
a claim or by its runner, has its kind's ``on_given_up`` hook run after that is committed (`give_up`), so the
record the job was working on does not stay half done (see `registry.job`). Claims then take
queued jobs only, oldest due first. The claim locks its rows with ``FOR UPDATE SKIP LOCKED``, so many
workers on many hosts never block one another on PostgreSQL; on SQLite ``FOR UPDATE`` takes the
database's write lock (see ``strongroom.db``). An idle poll looks first without locking, so it takes
no write lock at all.

Why not procrastinate: it only runs on PostgreSQL, and the embedded default must work with
nothing but a SQLite file. One lease-based table serves both, with the same semantics.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import rowcount, utcnow
from .models import Job

if TYPE_CHECKING:
    from .registry import GivenUpHook

log = structlog.get_logger("strongroom.jobs")
JOBS_RUN = Counter("strongroom_jobs_total", "Jobs finished by this process", ["kind", "outcome"])
# lapsed leases handled per claim: at most one per worker that died, so a small batch clears a host's worth
REAP_BATCH = 50
# session.info key: the ids of the jobs a claim failed for good in this transaction (`given_up_in`)
GIVEN_UP_INFO = "strongroom.jobs.given_up"


def enqueue(
    session: Session,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    dedup_key: str | None = None,
    run_after: dt.datetime | None = None,
    max_attempts: int = 5,
) -> Job:
    """Add a job in the caller's transaction; with ``dedup_key`` an existing job is returned instead."""
    if dedup_key is not None:
        existing = session.scalar(select(Job).where(Job.dedup_key == dedup_key))
        if existing is not None:
            return existing
    job = Job(kind=kind, payload=payload or {}, dedup_key=dedup_key, max_attempts=max_attempts,
              run_after=run_after or utcnow())
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:  # a concurrent producer won the race for the same key
        return session.scalars(select(Job).where(Job.dedup_key == dedup_key)).one()
    return job


PENDING = ("queued", "running")
# PostgreSQL: the transaction advisory lock (this class, the schema's hash) that serialises the runners' periodic
# scheduling; hubs in other schemas of the same database do not wait for it
PERIODIC_LOCK_CLASS = 0x5352


def enqueue_periodic(session: Session, runs: list[tuple[str, str, int]]) -> list[Job]:
    """Enqueue each periodic kind's run of the current period — ``runs`` holds (kind, the period's dedup key,
    max attempts) — unless that period's run exists already *or an earlier run of the kind is still queued or
    running*: a periodic job is never pending twice. Without the second rule, two schedulers on either side
    of a period boundary, or a run still waiting (or still working) when its period ends, put a second job of
    the same kind behind the first. Returns the jobs added.

    The usual call adds nothing and is answered by two reads without a lock. To add, it takes a lock that
    serialises the schedulers (PostgreSQL: a transaction advisory lock; SQLite: the write lock) and reads
    again, so two runners never both see a kind as missing."""

    def missing() -> list[tuple[str, str, int]]:
        kinds, keys = [run[0] for run in runs], [run[1] for run in runs]
        pending = set(session.scalars(select(Job.kind).where(Job.kind.in_(kinds), Job.status.in_(PENDING))))
        present = set(session.scalars(select(Job.dedup_key).where(Job.dedup_key.in_(keys))))
        return [run for run in runs if run[0] not in pending and run[1] not in present]

    if not runs or not missing():
        return []
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:class, hashtext(current_schema()))"),
                        {"class": PERIODIC_LOCK_CLASS})
    else:
        session.execute(select(Job.id).limit(1).with_for_update())  # SQLite: takes the database's write lock
    return [enqueue(session, kind, {}, dedup_key=key, max_attempts=attempts) for kind, key, attempts in missing()]


def claim(session: Session, worker_id: str, lease_seconds: int, kinds: list[str]) -> Job | None:
    """Take the oldest due queued job, after handing the lapsed leases of ``kinds`` to `lapse`.

    A lapsed job is not claimed ahead of the others: `lapse` queues it again (due from when its lease
    lapsed) or fails it, and it then waits its turn like any queued job. Two index-ordered queries
    rather than one ``OR``: the ``OR`` makes the database sort the whole backlog on every claim, which
    grows quadratically with a burst of uploads.
    """
    now = utcnow()
    queued = (select(Job).where(Job.status == "queued", Job.run_after <= now, Job.kind.in_(kinds))
              .order_by(Job.run_after, Job.id).limit(1))
    lapsed = (select(Job).where(Job.status == "running", Job.lease_expires_at < now, Job.kind.in_(kinds))
              .order_by(Job.lease_expires_at, Job.id))
    if session.scalars(lapsed.limit(1)).first() is None and session.scalars(queued).first() is None:
        return None  # nothing to do: found without the lock an idle poll would otherwise take
    for expired in session.scalars(lapsed.limit(REAP_BATCH).with_for_update(skip_locked=True)).all():
        if lapse(expired, now) == "failed":  # its kind's on_given_up runs once this is committed (`given_up_in`)
            session.info.setdefault(GIVEN_UP_INFO, []).append(expired.id)
    session.flush()
    job = session.scalars(queued.with_for_update(skip_locked=True)).first()
    if job is None:
        return None
    job.status = "running"
    job.attempts += 1
    job.locked_by = worker_id
    job.lease_expires_at = now + dt.timedelta(seconds=lease_seconds)
    session.flush()
    return job


def backoff(attempts: int) -> dt.timedelta:
    """How long a job waits after its ``attempts``-th attempt failed: exponential, at most 5 minutes."""
    return dt.timedelta(seconds=min(2 ** attempts, 300))


def lapse(job: Job, now: dt.datetime) -> str:
    """A running job whose lease lapsed (its worker died, hung, or ran past the kind's time limit): that
    attempt failed. Queued again, due from when the lease lapsed (no backoff: the lease was the wait, and a
    restarted worker resumes its work at once), or failed when it was the last attempt. The row must be
    locked by the caller. Returns the job's new status."""
    worker, lapsed_at = job.locked_by, job.lease_expires_at or now
    error = (f"attempt {job.attempts} of {job.max_attempts} lost: worker {worker} stopped renewing its lease "
             f"(it died, hung or ran past its time limit); the lease lapsed at {lapsed_at.isoformat()}")
    job.last_error, job.lease_expires_at, job.locked_by = error, None, None
    if job.attempts >= job.max_attempts:
        job.status, job.finished_at = "failed", now
        log.error("job.failed", job_id=job.id, kind=job.kind, attempt=job.attempts, error=error)
    else:
        job.status, job.run_after = "queued", lapsed_at
        log.warning("job.lease_lapsed", job_id=job.id, kind=job.kind, attempt=job.attempts, worker=worker)
    JOBS_RUN.labels(job.kind, "failed").inc()  # a failed attempt, as the runner counts one that raised
    return job.status


def _held(worker_id: str, attempt: int | None) -> list[Any]:
    """The rows a worker's attempt may still change: running, locked by it and (given ``attempt``) still at that
    attempt — a job this worker failed, or lost, and claimed again is another attempt's (a fencing token)."""
    held = [Job.locked_by == worker_id, Job.status == "running"]
    return held if attempt is None else [*held, Job.attempts == attempt]


def renew(session: Session, job_id: int, worker_id: str, lease_seconds: int, *, attempt: int | None = None) -> bool:
    """Extend our lease; False means another runner took the job over (we lost it)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, *_held(worker_id, attempt))
        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_seconds))
    )
    return rowcount(result) == 1


def finish(session: Session, job_id: int, worker_id: str, result: dict[str, Any] | None, *,
           attempt: int | None = None) -> bool:
    outcome = session.execute(
        update(Job)
        .where(Job.id == job_id, *_held(worker_id, attempt))
        .values(status="done", result=result, finished_at=utcnow(), lease_expires_at=None, last_error=None)
    )
    return rowcount(outcome) == 1


def give_back(session: Session, job_id: int, worker_id: str, *, attempt: int | None = None) -> None:
    """Return a claimed job untried (the attempt not counted): this worker cannot run anything now."""
    job = session.scalars(select(Job).where(Job.id == job_id, *_held(worker_id, attempt)).with_for_update()).first()
    if job is None:
        return
    job.status, job.attempts, job.lease_expires_at, job.locked_by = "queued", max(job.attempts - 1, 0), None, None


def fail(session: Session, job_id: int, worker_id: str, error: str, *, attempt: int | None = None) -> str | None:
    """Record a failure; retry with exponential backoff until ``max_attempts`` is reached. Returns the job's
    new status (None: the job is not this worker's any more)."""
    # locked: not a claim lapsing it at the same time
    job = session.scalars(select(Job).where(Job.id == job_id, *_held(worker_id, attempt)).with_for_update()).first()
    if job is None:
        return None
    job.last_error = error[:4000]
    job.lease_expires_at = None
    if job.attempts >= job.max_attempts:
        job.status, job.finished_at = "failed", utcnow()
    else:
        job.status = "queued"
        job.run_after = utcnow() + backoff(job.attempts)
    return job.status


def given_up_in(session: Session) -> list[int]:
    """The jobs `claim` failed for good (their last lease lapsed) in ``session``, forgotten once asked: the caller
    runs their kinds' ``on_given_up`` after committing (`Runner.run_given_up`)."""
    ids: list[int] = session.info.pop(GIVEN_UP_INFO, [])
    return ids


def given_up_pending(session: Session, kinds: list[str], *, limit: int = REAP_BATCH) -> list[int]:
    """Failed jobs of ``kinds`` (those with an ``on_given_up`` hook) whose hook has not run yet, oldest first."""
    if not kinds:
        return []
    return list(session.scalars(
        select(Job.id).where(Job.status == "failed", Job.given_up_at.is_(None), Job.kind.in_(kinds))
        .order_by(Job.finished_at, Job.id).limit(limit)))


def give_up(session: Session, job_id: int, hooks: Mapping[str, GivenUpHook]) -> bool:
    """Run the ``on_given_up`` hook of failed job ``job_id`` in the caller's transaction and mark it run
    (``given_up_at``) in the same one: committed together, so it runs once. Not run for a job whose hook ran, nor
    while another job of its kind with the same payload is queued or running (the record was handed to a new
    job, e.g. a push resumed: that one finishes it, or gives up in turn). False when it did not run."""
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    hook = hooks.get(job.kind) if job is not None else None
    if job is None or hook is None or job.status != "failed" or job.given_up_at is not None:
        return False
    payload = dict(job.payload or {})
    successor = any(other.payload == payload for other in session.scalars(
        select(Job).where(Job.kind == job.kind, Job.status.in_(PENDING), Job.id != job.id)))
    job.given_up_at = utcnow()
    if successor:
        log.info("job.given_up_superseded", job_id=job.id, kind=job.kind)
        return False
    hook(session, payload, job.last_error or "the job failed")
    log.warning("job.given_up", job_id=job.id, kind=job.kind)
    return True


def stats(session: Session) -> dict[str, int]:
    from sqlalchemy import func

    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status: n for status, n in rows}


def prune_finished(session: Session, *, keep_done: dt.timedelta, keep_failed: dt.timedelta) -> dict[str, int]:
    """Delete jobs that ended long enough ago: the table holds work, not history (the audit log does)."""
    now = utcnow()
    counts = {}
    for status, keep in (("done", keep_done), ("failed", keep_failed)):
        result = session.execute(delete(Job).where(Job.status == status, Job.finished_at < now - keep))
        counts[status] = rowcount(result)
    return counts

