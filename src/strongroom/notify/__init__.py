"""E-mail notifications: templated per role, sent by a durable job, with a daily digest for handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capabilities import Stage

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_settings("notify")
    config.add_models("strongroom.notify.models")
    config.add_api_router("strongroom.notify.api:router", stage=Stage.AFTER_PAGES)
    config.add_jobs("strongroom.notify.jobs")
