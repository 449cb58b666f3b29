"""Job kinds are plain functions registered by name; capabilities register theirs on import."""

from __future__ import annotations

import importlib
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

# Capabilities whose modules register job kinds. Imported by every runner.
BUILTIN_MODULES = ["strongroom.jobs.builtin", "strongroom.archive.jobs", "strongroom.notify.jobs",
                   "strongroom.access.lifecycle"]


def job(name: str, *, max_attempts: int = 5, every_seconds: int | None = None) -> Callable[[JobFunc], JobFunc]:
    """Register ``func(ctx, payload)`` as job kind ``name``. It must be idempotent: a job whose
    worker died is run again, possibly after part of its work was done. It opens its own
    transactions with ``ctx.transaction()`` so long jobs never hold a database lock throughout."""

    def register(func: JobFunc) -> JobFunc:
        REGISTRY[name] = JobKind(name, func, max_attempts, every_seconds)
        return func

    return register


def load(extra_modules: list[str] | None = None) -> dict[str, JobKind]:
    for module in [*BUILTIN_MODULES, *(extra_modules or [])]:
        importlib.import_module(module)
    return REGISTRY
