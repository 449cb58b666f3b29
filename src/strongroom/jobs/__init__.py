"""Durable background jobs: the queue, runners and their housekeeping."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_settings("jobs")
    config.add_models("strongroom.jobs.models")
    config.add_api_router("strongroom.jobs.api:router")
    config.add_cli("strongroom.jobs.cli:app", name="jobs")
    config.add_jobs("strongroom.jobs.jobs")
