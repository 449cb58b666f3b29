"""Medical imaging: DICOM de-identification engine (pure), verification, and (later) the DICOM receiver.

``deid``, ``deid_table`` and ``verify`` are pure engines: they import pydicom and the standard library only
(no web or database code), so they can be used as libraries and benchmarked alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_settings("imaging")
    config.add_models("strongroom.imaging.models")
    config.add_api_router("strongroom.imaging.api:router")
    config.add_web_router("strongroom.imaging.web:router")
    config.add_cli("strongroom.imaging.cli:dicom_app", name="dicom")
    config.add_cli("strongroom.imaging.cli:import_app", name="import")
    config.add_cli("strongroom.imaging.cli:keystore_app", into="admin")  # strongroom admin rotate-keystore-key
    config.add_project_setting("dicom_destination", "strongroom.imaging.settings:DESTINATION_SETTING")
    # one port and AE title per destination across the hub (a project must not take over another's scanners)
    config.add_setting_check("dicom_destination", "strongroom.imaging.settings:check_destination")
    config.add_project_setting("deid_profile", "strongroom.imaging.settings:PROFILE_SETTING")
    config.add_hold_rule("quarantine", "strongroom.imaging.service:QUARANTINE_RULE")  # review in-platform
    config.add_index_provider("strongroom.imaging.service:index_entry")  # import counts in the catalogue
