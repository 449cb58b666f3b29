"""Public dataset catalogue: landing pages, search, JSON-LD, sitemaps, DCAT-AP and OAI-PMH."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capabilities import Stage

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.catalog.models")
    config.add_jobs("strongroom.catalog.jobs")  # DOIs at DataCite
    config.add_settings("doi")  # [doi]: the DataCite repository (docs/fair.md)
    config.add_hook("strongroom.archive.datasets:RELEASE_HOOKS", "strongroom.catalog.dois:on_release")
    # the cached public landing page, answered before routing (catalog/fast_path.py)
    config.add_hook("strongroom.app:PRE_ROUTING", "strongroom.catalog.fast_path:serve_cached_landing")
    # Last: its public pages (/catalog/…, /sitemap.xml, /robots.txt) come after everything else.
    config.add_api_router("strongroom.catalog.api:router", stage=Stage.LAST)
    # Before the landing pages: /catalog/{slug} would otherwise take /catalog/{slug}.ttl.
    config.add_web_router("strongroom.catalog.fair_web:router", stage=Stage.LAST)
    config.add_web_router("strongroom.catalog.web:router", stage=Stage.LAST)
    # A dataset's URL (a visa's value) leads the public to its landing page.
    config.add_hook("strongroom.archive.web:LANDING_PAGES", "strongroom.catalog.landing:landing_url")
