"""The C-MOVE destinations a project registers (a locked-by-default project setting: empty).

A workstation asking the project's DICOM destination to C-MOVE images names a destination AE title; the
images go only to an entry of this list (AE title, host, port) — never to an address the request itself
supplies. Changed like every project setting (manage-settings right, fresh MFA, audited with before and
after) through the API or the project page, or by the operator with ``strongroom dicomweb
move-destinations`` on the hub host.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from ..projects.models import ProjectSetting
from ..projects.settings import SettingSpec

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

AE_TITLE = r"^[ -\[\]-~]{1,16}$"  # printable ASCII without backslash; 1-16 characters
HOST = r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9])?$"  # a host name or an IPv4/IPv6 address


class MoveDestination(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ae_title: str = Field(pattern=AE_TITLE, description="the AE title workstations name as move destination")
    host: str = Field(pattern=HOST, description="host name or IP address of the receiving Storage SCP")
    port: int = Field(ge=1, le=65535, description="its TCP port")

    @model_validator(mode="after")
    def _strip(self) -> MoveDestination:
        self.ae_title = self.ae_title.strip()
        if not self.ae_title:
            raise ValueError("the AE title is blank")
        return self


KEY = "dicom_move_destinations"
# A list setting without a page of its own: the project page offers add / remove for its entries.
MOVE_DESTINATIONS_SETTING = SettingSpec(
    KEY, "DICOM move destinations",
    "Where workstations may have the project's DICOM destination send images with C-MOVE (AE title, host, "
    "port). Nothing else is ever a move destination.",
    [], TypeAdapter(list[MoveDestination]), MoveDestination)


def check_unique(_session: object, _project_id: object, value: list[dict[str, object]]) -> None:
    """Refuse two entries with one AE title (a move names its destination by AE title)."""
    from ..errors import Invalid

    titles = [str(v.get("ae_title", "")).strip() for v in value]
    duplicate = next((t for t in titles if titles.count(t) > 1), None)
    if duplicate is not None:
        raise Invalid(f"the AE title {duplicate!r} is registered twice")


def check_entries(session: Session, project_id: uuid.UUID, value: list[dict[str, object]]) -> None:
    """A project's change (the settings API, the project page): one AE title once, and no entry it adds may name
    the hub machine or its internals (loopback, link-local such as the cloud's metadata service, unspecified,
    multicast, the workspaces' subnet): a C-MOVE opens an association from the hub to that address. Entries
    already on the list stay as they are (the operator's, ``strongroom dicomweb move-destinations``, may name a
    Storage SCP on the hub host)."""
    from ..config import get_settings, internal_address  # the settings every process of this hub is started with
    from ..errors import Invalid

    check_unique(session, project_id, value)
    row = session.get(ProjectSetting, (project_id, KEY))
    current = row.value if row is not None else []
    subnet = get_settings().workspaces.subnet
    for entry in value:
        if entry in current:
            continue
        host = str(entry.get("host", ""))
        if (why := internal_address(host, subnet)) is not None:
            raise Invalid(f"the host {host!r} is {why}: a move destination must be a workstation or PACS of its "
                          "own, never the hub's machine or its internal networks")


def registered(value: list[dict[str, object]]) -> list[MoveDestination]:
    return [MoveDestination.model_validate(v) for v in value]
