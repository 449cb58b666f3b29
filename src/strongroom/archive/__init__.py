"""The encrypted archive: uploads, files, datasets and versions, downloads, GA4GH DRS."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_settings("archive")
    config.add_models("strongroom.archive.models")
    config.add_api_router("strongroom.archive.api:router")
    config.add_api_router("strongroom.archive.drs:router")
    config.add_web_router("strongroom.archive.web:router")
    config.add_cli("strongroom.archive.cli:archive_app", name="archive")  # on the hub host
    config.add_cli("strongroom.archive.cli:app")  # upload, download, keys, datasets: over the API
    config.add_jobs("strongroom.archive.jobs")
