"""Operations: health, readiness and metrics endpoints; the hub secret's rotation."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_settings("ops")  # [ops] metrics_token
    config.add_api_router("strongroom.ops.api:router")
    config.add_cli("strongroom.ops.cli:app", into="admin")  # strongroom admin rotate-secret
