"""Project security settings. Every one is locked by default; opening one is an explicit change
by the PI or a delegate, validated here and audited by the service."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter


def _ip_or_network(value: str) -> str:
    ipaddress.ip_network(value, strict=False)  # raises ValueError with a clear message
    return value


class DicomSender(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ae_title: str = Field(pattern=r"^[ -~]{1,16}$", description="calling AE title of the scanner or PACS")
    address: Annotated[str, AfterValidator(_ip_or_network)] = Field(description="source IP or network")
    # Deny by default: a scanner sends; only a workstation or viewer named so may also query and retrieve the
    # project's archive over DIMSE (C-FIND, C-GET, C-MOVE)
    query_retrieve: bool = Field(False, title="May also query and retrieve",
                                 description="a workstation or viewer (C-FIND, C-GET, C-MOVE), not a scanner")


@dataclass(frozen=True)
class SettingSpec:
    key: str
    title: str
    description: str
    locked: Any  # the default, closed value
    adapter: TypeAdapter[Any]
    item_model: type[BaseModel] | None = None  # for list settings: the shape of one entry
    edit_page: str | None = None  # structured settings are edited on their capability's page ("{slug}")


def _spec(key: str, title: str, description: str, locked: Any, type_: Any, edit_page: str | None = None
          ) -> SettingSpec:
    item = getattr(type_, "__args__", (None,))[0]
    item_model = item if isinstance(item, type) and issubclass(item, BaseModel) and edit_page is None else None
    return SettingSpec(key, title, description, locked, TypeAdapter(type_), item_model, edit_page)


def capability_setting(key: str, title: str, description: str, locked: Any, type_: Any, *, edit_page: str
                       ) -> SettingSpec:
    """A locked-by-default setting of another capability (edited on its own page); it joins ``SETTINGS``
    through ``config.add_project_setting`` in that capability's includeme."""
    return _spec(key, title, description, locked, type_, edit_page)


# (The export destinations, ``egress_destinations``, are the airlock's: see ``airlock/settings.py``.)
SETTINGS: dict[str, SettingSpec] = {
    s.key: s
    for s in [
        _spec("dicom_senders", "Allowed DICOM senders",
              "Scanners and PACS (calling AE title + address) allowed to store into the project.",
              [], list[DicomSender]),
        _spec("external_sharing", "Share datasets with other projects",
              "Whether the project's released datasets may be shared read-only into other projects.",
              False, bool),
        _spec("download_allowed", "Download to researchers' own machines",
              "Whether members may download data (re-encrypted to their key) instead of working "
              "on-platform only.", False, bool),
        _spec("internet_access", "Outbound internet from project compute",
              "Whether project compute may reach the internet (package mirrors etc.).", False, bool),
    ]
}
