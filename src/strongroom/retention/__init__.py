"""Retention: a last-use clock per dataset version and project (derived from the audit log), "keep at least
N years after the last use" per dataset class, a review queue with notices, extensions and legal holds, and
deletion with two-person approval — crypto-shredding, every stored version of every body removed, catalogue
tombstones, entitlements ended, and a signed deletion certificate that ``strongroom retention verify``
checks against storage. See docs/retention.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.retention.models")
    config.add_api_router("strongroom.retention.api:router")
    config.add_web_router("strongroom.retention.web:router")
    config.add_templates(Path(__file__).parent / "templates")
    config.add_cli("strongroom.retention.cli:app", name="retention")
    config.add_jobs("strongroom.retention.jobs")
    config.add_settings("retention")
