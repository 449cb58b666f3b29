"""The tamper-evident audit log: hash chain, signed checkpoints, auditors."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_settings("audit")
    config.add_models("strongroom.audit.models")
    config.add_api_router("strongroom.audit.api:router")
    config.add_cli("strongroom.audit.cli:app", name="audit")
    config.add_cli("strongroom.audit.cli:admin_app", into="admin")  # grant-auditor, revoke-auditor
    config.add_jobs("strongroom.audit.jobs")
