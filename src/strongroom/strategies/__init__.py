"""Pseudonymization strategies for clinical tables: a declarative rule per column, group rules,
k-anonymity and l-diversity, applied and then verified by a pure columnar engine (Polars).

``spec``, ``engine``, ``transforms``, ``scan``, ``tables``, ``report`` and ``synthetic`` are pure (no web or
database imports); ``models``, ``service``, ``runs``, ``jobs``, ``api``, ``web`` and ``cli`` are the hub side.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    from ..capabilities import RELEASE_CHECKS, VERSION_MARKS  # here: the pure engines import no hub code
    config.add_models("strongroom.strategies.models")
    config.add_jobs("strongroom.strategies.jobs")
    config.add_api_router("strongroom.strategies.api:router")
    config.add_web_router("strongroom.strategies.web:router")
    config.add_web_router("strongroom.strategies.requests_web:router")
    config.add_templates(Path(__file__).parent / "templates")
    config.add_cli("strongroom.strategies.cli:app", name="strategy")
    # Nothing unverified is published: every release checks its tables' runs; versions show what made them.
    config.add_hook(RELEASE_CHECKS, "strongroom.strategies.provenance:release_check")
    config.add_hook(VERSION_MARKS, "strongroom.strategies.provenance:version_marks")
