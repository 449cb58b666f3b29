"""DICOMweb per project: QIDO-RS over the imaging index, WADO-RS from the encrypted archive, STOW-RS into it.

``attributes`` (pure: the QIDO attribute table, matching and DICOM JSON), ``query`` (QIDO-RS in SQL over
``imaging_instances``: never decrypts), ``retrieve`` (WADO-RS: instances, metadata, frames and rendered
images decrypted in memory from the crypt4gh segments that cover them), ``store`` (STOW-RS through the
DICOM destination's pipeline), ``multipart`` (pure: the incremental multipart/related reader), ``render``
(pure: windowed PNG), ``backfill`` (indexes instances archived before the index existed), ``dimse`` (C-FIND,
C-GET and C-MOVE SCP on each project's DICOM destination, over the same index and archive reads),
``settings`` (the project's registered C-MOVE destinations), ``api`` and ``cli``; ``web``: the viewer page
(its script is ``web/static/viewer.js``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..capabilities import Config
    from ..imaging.destination import DestinationRef


def includeme(config: Config) -> None:
    config.add_settings("dicomweb")
    config.add_api_router("strongroom.dicomweb.api:router")
    config.add_web_router("strongroom.dicomweb.web:router")  # the viewer page
    config.add_templates(Path(__file__).parent / "templates")
    config.add_hook("strongroom.archive.web:DATASET_VIEWERS", "strongroom.dicomweb.web:dataset_viewer")
    config.add_cli("strongroom.dicomweb.cli:dicomweb_app", name="dicomweb")
    config.add_jobs("strongroom.dicomweb.jobs")
    config.add_project_setting("dicom_move_destinations", "strongroom.dicomweb.settings:MOVE_DESTINATIONS_SETTING")
    config.add_setting_check("dicom_move_destinations", "strongroom.dicomweb.settings:check_entries")
    config.add_hook("strongroom.imaging.destination:DESTINATION_SERVICES", query_retrieve)


def query_retrieve(ae: Any, ref: DestinationRef) -> list[Any]:
    """DIMSE Query/Retrieve (C-FIND, C-GET, C-MOVE SCP) on a project's DICOM destination; imported only by
    the process that runs the destinations (``strongroom dicom serve``)."""
    from .dimse import add_query_retrieve

    return add_query_retrieve(ae, ref)
