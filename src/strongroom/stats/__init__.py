"""Data-sharing metrics counted from the hub's own records: the public figures page (/stats, SVG charts),
the JSON and CSV API (/api/v1/metrics…), a data owner's figures per dataset, and privacy-preserving
landing-page view counts (COUNTER robots and double clicks excluded; no address kept)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.stats.models")
    config.add_api_router("strongroom.stats.api:router")
    config.add_web_router("strongroom.stats.web:router")
    config.add_templates(Path(__file__).parent / "templates")
    config.add_jobs("strongroom.stats.jobs")
    config.add_hook("strongroom.catalog.landing:VIEW_LISTENERS", "strongroom.stats.views:count_landing_view")
