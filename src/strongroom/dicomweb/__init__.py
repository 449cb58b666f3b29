"""DICOMweb per project: QIDO-RS over the imaging index, WADO-RS from the encrypted archive, STOW-RS into it.

``attributes`` (pure: the QIDO attribute table, matching and DICOM JSON), ``query`` (QIDO-RS in SQL over
``imaging_instances``: never decrypts), ``retrieve`` (WADO-RS: instances, metadata, frames and rendered
images decrypted in memory from the crypt4gh segments that cover them), ``store`` (STOW-RS through the
DICOM destination's pipeline), ``multipart`` (pure: the incremental multipart/related reader), ``render``
(pure: windowed PNG), ``backfill`` (indexes instances archived before the index existed), ``api`` and ``cli``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_settings("dicomweb")
    config.add_api_router("strongroom.dicomweb.api:router")
    config.add_cli("strongroom.dicomweb.cli:dicomweb_app", name="dicomweb")
    config.add_jobs("strongroom.dicomweb.jobs")
