"""Fees and statements: a versioned price list, per-project subscriptions, metered storage (and GPU-weeks
through the ``METERS`` hook), waivers and discounts under a two-person rule, and statements per project and
customer as a page, CSV and PDF; issued statements are frozen under a checksum."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.fees.models")
    config.add_api_router("strongroom.fees.api:router")
    config.add_web_router("strongroom.fees.web:router")
    config.add_templates(Path(__file__).parent / "templates")
    config.add_cli("strongroom.fees.cli:app", "fees")
    config.add_jobs("strongroom.fees.jobs")
