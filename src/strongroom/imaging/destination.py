"""Extension point of the DICOM destination (kept light: every process imports it when hooks are applied).

Other capabilities add DIMSE services to every project destination (dicomweb: Query/Retrieve). Each entry
of ``DESTINATION_SERVICES`` is called when a destination starts with the pynetdicom AE and a
:class:`DestinationRef`; it adds its presentation contexts to the AE and returns its event handlers. The
association is still accepted only from the project's allowed senders (calling AE title and address).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..archive.storage.base import Storage
    from ..hub import Hub


@dataclass(frozen=True)
class DestinationRef:
    """What a DIMSE service added to a project's destination knows of it."""

    hub: Hub
    storage: Storage
    project_id: uuid.UUID
    slug: str
    ae_title: str


DESTINATION_SERVICES: list[Callable[[Any, DestinationRef], list[Any]]] = []
