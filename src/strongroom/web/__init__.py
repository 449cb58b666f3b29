"""The site shell: templates, static files and the pages that belong to no single capability."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_web_router("strongroom.web.pages:router")  # "/": the first page of all
