"""The C-MOVE destinations a project registers (a locked-by-default project setting: empty).

A workstation asking the project's DICOM destination to C-MOVE images names a destination AE title; the
images go only to an entry of this list (AE title, host, port) — never to an address the request itself
supplies. Changed like every project setting (manage-settings right, fresh MFA, audited with before and
after) through the API or the project page, or by the operator with ``strongroom dicomweb
move-destinations`` on the hub host.

Each entry records who added it (``operator``; only the operator's command line sets it, and a project's
change can neither set it nor keep it on an entry it alters). The operator's entries are dialled as written:
they may name a Storage SCP on the hub host. A project's entries are resolved at each move and refused when
any address is the hub's machine or its internals; the checked address is dialled, never the name again.
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
    # Stored only when set, so a project's entries (and those saved before provenance existed) read the same.
    operator: bool = Field(False, exclude_if=lambda added_by_operator: not added_by_operator,
                           title="Added by the operator",
                           description="set only on the hub host (strongroom dicomweb move-destinations add); "
                                       "leave it off: a project's entry is one of its own")

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
    """A project's change (the settings API, the project page): one AE title once, and every entry it adds or alters
    is its own (never marked the operator's) and names no host that is, or now resolves to, the hub machine or its
    internals (loopback, link-local such as the cloud's metadata service, unspecified, multicast, the workspaces'
    subnet): a C-MOVE opens an association from the hub to that address. Each move checks again (``dial_address``),
    as a name may resolve elsewhere later. Entries already on the list stay as they are (the operator's may name a
    Storage SCP on the hub host)."""
    from ..config import NotOutside, get_settings, outside_addresses  # the settings every process is started with
    from ..errors import Invalid

    check_unique(session, project_id, value)
    row = session.get(ProjectSetting, (project_id, KEY))
    current = registered(row.value if row is not None else [])
    subnet = get_settings().workspaces.subnet
    for entry in registered(value):
        if entry in current:
            continue
        if entry.operator:
            raise Invalid(f"the entry {entry.ae_title!r} cannot be marked as added by the operator: only the operator "
                          "does that, on the hub host (strongroom dicomweb move-destinations add)")
        try:
            outside_addresses(entry.host, entry.port, subnet)  # no address yet: each move checks again
        except NotOutside as exc:
            raise Invalid(f"the host {entry.host!r} {exc}: a move destination must be a workstation or PACS of its "
                          "own, never the hub's machine or its internal networks") from None


def registered(value: list[dict[str, object]]) -> list[MoveDestination]:
    return [MoveDestination.model_validate(v) for v in value]


UNRESOLVED = "move destination does not resolve"
INTERNAL = "move destination resolves to the hub's machine or its internal networks"


class Undialable(Exception):
    """A project's move destination the hub will not dial now; ``reason`` (``UNRESOLVED`` or ``INTERNAL``) names no
    address, ``why`` says which kind of internal address (for the operator's log)."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(reason)
        self.reason, self.why = reason, why


def dial_address(destination: MoveDestination, subnet: str) -> str:
    """The address a move to ``destination`` dials: the operator's entry as written; a project's entry resolved now
    and checked address by address (``Undialable`` when any is internal, or there is none), then one of those
    addresses, so a name that resolves elsewhere a moment later (DNS rebinding) changes nothing."""
    from ..config import NotOutside, outside_addresses

    if destination.operator:
        return destination.host
    try:
        addresses = outside_addresses(destination.host, destination.port, subnet)
    except NotOutside as exc:
        raise Undialable(INTERNAL, str(exc)) from None
    if not addresses:
        raise Undialable(UNRESOLVED, "does not resolve to an address")
    return addresses[0]
