"""Public dataset catalogue: landing pages, search, JSON-LD, sitemaps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capabilities import Stage

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.catalog.models")
    # Last: its public pages (/catalog/…, /sitemap.xml, /robots.txt) come after everything else.
    config.add_api_router("strongroom.catalog.api:router", stage=Stage.LAST)
    config.add_web_router("strongroom.catalog.web:router", stage=Stage.LAST)
    # A dataset's URL (a visa's value) leads the public to its landing page.
    config.add_hook("strongroom.archive.web:LANDING_PAGES", "strongroom.catalog.landing:landing_url")
