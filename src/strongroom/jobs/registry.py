"""Job kinds are plain functions registered by name with ``@job``. Which modules hold them is declared
by each capability's ``includeme`` (``config.add_jobs``); every runner imports those modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .context import JobContext

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

JobFunc = Callable[[JobContext, dict[str, Any]], dict[str, Any] | None]
# ``on_given_up(session, payload, error)``: the job failed for good (see `job`)
GivenUpHook = Callable[["Session", dict[str, Any], str], None]

HOUR = 3600
# How long one attempt of a job may run before its runner abandons it (retried with backoff, or failed once its
# attempts are used up; the runner takes other jobs): a hung attempt must hold neither its job nor its worker.
DEFAULT_TIMEOUT_SECONDS = 6 * HOUR

# The built-in kinds whose work is far longer, or far shorter, than the default allows for. A kind's own
# ``timeout_seconds`` (of ``job``) wins over this table (new kinds should say it there). Long kinds are all
# resumable: each attempt continues where the last committed step ended, so a limit is per attempt, not per job.
BUILTIN_TIMEOUTS: dict[str, int] = {
    # long: large files and datasets, wide-area transfers
    "archive.ingest": 24 * HOUR,       # one multi-terabyte file or bundle: decrypt, verify, hash, store
    "retention.delete": 24 * HOUR,     # shred and purge every stored version of a dataset (resumable)
    "federation.sync": 48 * HOUR,      # push a dataset to a peer over the WAN (resumes after acknowledged bodies)
    "airlock.transfer": 24 * HOUR,     # deliver an approved request's files (a retry continues)
    "airlock.check": 12 * HOUR,        # decrypt and check every file of a request
    "strategy.run": 12 * HOUR,         # decrypt an extract, apply a strategy, verify, archive the output
    "vai.evaluate": 24 * HOUR,         # predict every instance (batches commit; resumable)
    "dicomweb.backfill": 24 * HOUR,    # index every archived instance (batches commit; resumable)
    # short: one bounded step, network calls with their own timeouts. Periodic ones matter most: a run still
    # pending holds back the next period's run of its kind (`service.enqueue_periodic`).
    "notify.email": 1 * HOUR,
    "notify.digest": 1 * HOUR,
    "audit.checkpoint": 1 * HOUR,
    "catalog.dois": 1 * HOUR,
    "catalog.dois_sweep": 1 * HOUR,
    "compute.sync": 1 * HOUR,
    "compute.drift": 1 * HOUR,
    "workspaces.idle": 1 * HOUR,
    "workspaces.booking_end": 1 * HOUR,
    "workspaces.access": 1 * HOUR,
    "workspaces.egress": 1 * HOUR,
    "federation.nonces": 1 * HOUR,
    "federation.notices": 1 * HOUR,
    "identity.purge_expired": 1 * HOUR,
    "access.entitlements": 1 * HOUR,
    "airlock.expire": 1 * HOUR,
    "jobs.prune": 1 * HOUR,
    "stats.prune": 1 * HOUR,
    "fees.snapshot": 1 * HOUR,
}


@dataclass(frozen=True)
class JobKind:
    name: str
    func: JobFunc
    max_attempts: int = 5
    every_seconds: int | None = None  # periodic: runners enqueue one per period, deduplicated
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # one attempt's time limit (see DEFAULT_TIMEOUT_SECONDS)
    on_given_up: GivenUpHook | None = None  # the job failed for good (see `job`)


REGISTRY: dict[str, JobKind] = {}


def job(name: str, *, max_attempts: int = 5, every_seconds: int | None = None,
        timeout_seconds: float | None = None, on_given_up: GivenUpHook | None = None) -> Callable[[JobFunc], JobFunc]:
    """Register ``func(ctx, payload)`` as job kind ``name``. It must be idempotent: a job whose
    worker died is run again, possibly after part of its work was done. It opens its own
    transactions with ``ctx.transaction()`` so long jobs never hold a database lock throughout.

    ``timeout_seconds`` limits one attempt (default: ``BUILTIN_TIMEOUTS``, else 6 h). Past it the runner abandons
    the attempt and goes on with other jobs: the job is retried (possibly while the abandoned attempt still runs:
    Python cannot stop a thread; its ``ctx.transaction()`` commits nothing more) or failed; a kind that
    legitimately runs longer must say so here and be resumable. Writes outside ``ctx.transaction()`` (``ctx.hub``'s
    sessions) must check their record's state, as the long kinds' do.

    ``on_given_up(session, payload, error)`` is called once the job has failed for good, however it failed: its
    last attempt raised, timed out, or its worker died and the lease lapsed (`service.lapse`). The function
    itself never learns of the last two, so a kind that keeps a record of its own in an intermediate state
    (running, transferring, …) must register one that ends that record ("gave up: <error>") and lets go of what
    it holds. It runs in its own transaction after the job's failure was committed, with the job row marked in
    that same transaction (``given_up_at``), so it runs once; a runner that crashed in between leaves it to the
    next sweep (`Runner.run_given_up`). It must be idempotent and check the record's state: the record may have
    ended meanwhile (an abandoned attempt that finished late, an operator)."""
    timeout = timeout_seconds if timeout_seconds is not None else BUILTIN_TIMEOUTS.get(name, DEFAULT_TIMEOUT_SECONDS)
    if timeout <= 0:
        raise ValueError(f"job kind {name!r}: timeout_seconds must be positive")

    def register(func: JobFunc) -> JobFunc:
        REGISTRY[name] = JobKind(name, func, max_attempts, every_seconds, timeout, on_given_up)
        return func

    return register


def load(extra_modules: list[str] | None = None) -> dict[str, JobKind]:
    """Every job kind: the capabilities' job modules, then ``extra_modules`` (settings `jobs.extra_modules`)."""
    from ..capabilities import registry

    registry().load_job_modules(extra_modules)
    return REGISTRY
