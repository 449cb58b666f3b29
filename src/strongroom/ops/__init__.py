"""Operations: health, readiness and metrics endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_api_router("strongroom.ops.api:router")
