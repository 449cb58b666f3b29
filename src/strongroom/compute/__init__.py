"""GPU booking: machines and their GPUs configured on the hub, each project's budget in GPU-weeks per period,
bookings on the earliest slot (ending Monday 09:00), drop-ins, a week calendar, and a Slurm reservation per
booking kept in step by a drift check. See docs/compute.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.compute.models")
    config.add_api_router("strongroom.compute.api:router")
    config.add_web_router("strongroom.compute.web:router")
    config.add_templates(Path(__file__).parent / "templates")
    config.add_cli("strongroom.compute.cli:app", name="compute")
    config.add_jobs("strongroom.compute.jobs")
    config.add_settings("compute")  # [compute], [compute.machines.<name>], [compute.slurm]
    config.add_hook("strongroom.fees.meters:METERS", "strongroom.compute.metering:gpu_week_meter")  # GPU-weeks billed
    config.add_project_listener("strongroom.compute.service:members_changed")  # who left leaves reservations
    config.add_hook("strongroom.identity.service:CREDENTIAL_REVOKERS",
                    "strongroom.compute.service:withdraw_reservations")  # a deactivated account leaves them too
