"""Job kinds are plain functions registered by name with ``@job``. Which modules hold them is declared
by each capability's ``includeme`` (``config.add_jobs``); every runner imports those modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .context import JobContext

JobFunc = Callable[[JobContext, dict[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True)
class JobKind:
    name: str
    func: JobFunc
    max_attempts: int = 5
    every_seconds: int | None = None  # periodic: runners enqueue one per period, deduplicated


REGISTRY: dict[str, JobKind] = {}


def job(name: str, *, max_attempts: int = 5, every_seconds: int | None = None) -> Callable[[JobFunc], JobFunc]:
    """Register ``func(ctx, payload)`` as job kind ``name``. It must be idempotent: a job whose
    worker died is run again, possibly after part of its work was done. It opens its own
    transactions with ``ctx.transaction()`` so long jobs never hold a database lock throughout."""

    def register(func: JobFunc) -> JobFunc:
        REGISTRY[name] = JobKind(name, func, max_attempts, every_seconds)
        return func

    return register


def load(extra_modules: list[str] | None = None) -> dict[str, JobKind]:
    """Every job kind: the capabilities' job modules, then ``extra_modules`` (settings `jobs.extra_modules`)."""
    from ..capabilities import registry

    registry().load_job_modules(extra_modules)
    return REGISTRY
