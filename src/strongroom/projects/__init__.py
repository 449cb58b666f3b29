"""Projects: members, rights, quotas and locked-by-default project settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.projects.models")
    config.add_api_router("strongroom.projects.api:router")
    config.add_web_router("strongroom.projects.web:router")
    config.add_cli("strongroom.projects.cli:app", into="admin")
    config.add_data_role_check("strongroom.projects.service:is_member_anywhere")  # members see data: MFA
