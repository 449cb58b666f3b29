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
    config.add_models("strongroom.strategies.models")
    config.add_jobs("strongroom.strategies.jobs")
    config.add_api_router("strongroom.strategies.api:router")
    config.add_web_router("strongroom.strategies.web:router")
    config.add_templates(Path(__file__).parent / "templates")
    config.add_cli("strongroom.strategies.cli:app", name="strategy")
