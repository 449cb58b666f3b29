"""The meters a statement reads (hook point ``strongroom.fees.meters:METERS``).

A meter is ``(session, project_id, start, end) -> list[pricing.Usage]``: what the project used of a metered
item on each day of [start, end]. Storage is measured here (``service.storage_meter``); another capability
adds its own with ``config.add_hook("strongroom.fees.meters:METERS", "package.module:function")`` (compute:
GPU-weeks booked, as ``Usage(project, "gpu-week", day, weeks)``).
"""

from __future__ import annotations

from .service import Meter, storage_meter

METERS: list[Meter] = [storage_meter]
