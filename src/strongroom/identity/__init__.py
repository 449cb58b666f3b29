"""Identity: local accounts with TOTP, OIDC logins, browser sessions and API tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_settings("oidc")
    config.add_settings("security")
    config.add_models("strongroom.identity.models")
    config.add_api_router("strongroom.identity.api:router")
    config.add_web_router("strongroom.identity.web:router")
    config.add_cli("strongroom.identity.cli:app", into="admin")
    config.add_jobs("strongroom.identity.jobs")
