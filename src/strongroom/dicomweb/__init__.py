"""DICOMweb per project: QIDO-RS over the imaging index, WADO-RS from the encrypted archive.

``attributes`` (pure: the QIDO attribute table, matching and DICOM JSON), ``query`` (QIDO-RS in SQL over
``imaging_instances``: never decrypts), ``retrieve`` (WADO-RS: instances, metadata, frames and rendered
images decrypted in memory from the crypt4gh segments that cover them), ``render`` (pure: windowed PNG),
``backfill`` (indexes instances archived before the index existed), ``api`` and ``cli``; ``web``: the
viewer page (its script is ``web/static/viewer.js``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_api_router("strongroom.dicomweb.api:router")
    config.add_web_router("strongroom.dicomweb.web:router")  # the viewer page
    config.add_templates(Path(__file__).parent / "templates")
    config.add_hook("strongroom.archive.web:DATASET_VIEWERS", "strongroom.dicomweb.web:dataset_viewer")
    config.add_cli("strongroom.dicomweb.cli:dicomweb_app", name="dicomweb")
    config.add_jobs("strongroom.dicomweb.jobs")
