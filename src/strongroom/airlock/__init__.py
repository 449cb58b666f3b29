"""The airlock: reviewed export out of a project and reviewed import into it.

A request lists archive files; a job checks every file server-side (``checks``: a pure engine) before any
reviewer sees it; the project's named reviewers approve (N, set by the PI) or reject; on approval a job
delivers the files to a destination on the project's allow-list (the archive of another project that accepts
them, a named recipient's crypt4gh key through an outbox, or a partner's bucket or server the hub's operator
configured for the project) and writes a checksum receipt. See docs/airlock.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.airlock.models")
    config.add_api_router("strongroom.airlock.api:router")
    config.add_web_router("strongroom.airlock.web:router")
    config.add_templates(Path(__file__).parent / "templates")
    config.add_jobs("strongroom.airlock.jobs")
    config.add_settings("airlock")  # [airlock.s3.<name>], [airlock.sftp.<name>]: external destinations' credentials
    config.add_project_setting("egress_destinations", "strongroom.airlock.settings:DESTINATIONS_SETTING")
    config.add_project_setting("airlock_reviewers", "strongroom.airlock.settings:REVIEWERS_SETTING")
    config.add_project_setting("airlock_approvals", "strongroom.airlock.settings:APPROVALS_SETTING")
    config.add_project_setting("airlock_expiry_days", "strongroom.airlock.settings:EXPIRY_SETTING")
    config.add_project_setting("airlock_sources", "strongroom.airlock.settings:SOURCES_SETTING")  # who may send here
    config.add_setting_check("egress_destinations", "strongroom.airlock.service:check_destinations")
    config.add_setting_check("airlock_approvals", "strongroom.airlock.service:check_approvals")
    config.add_setting_check("airlock_reviewers", "strongroom.airlock.service:check_reviewers")
    config.add_project_listener("strongroom.airlock.service:check_coverage")  # reviewers who left: PI told
    config.add_nav_context("strongroom.airlock.web:nav_context")  # reviews waiting for me, in the top bar
    config.add_hold_rule("airlock", "strongroom.airlock.service:HOLD_RULE")  # staged imports, reviewed in-platform
