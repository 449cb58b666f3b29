"""The airlock's project settings (locked by default, changed with fresh MFA and audited through
``projects.service.change_setting``): where data may go, who reviews, how many approvals, how long a
request waits.

A destination is one entry of a discriminated union on ``kind``. ``project`` (another project on this hub,
by slug) and ``recipient`` (a named user's registered crypt4gh key) are delivered today; a new kind
(``s3``, ``sftp``) is one more model here and one more branch in ``transfer.transfer`` (a ``_deliver_to_…`` function).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..projects.settings import capability_setting


class _Destination(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$",
                      description="what requesters choose, e.g. 'Registry team'")


class ProjectDestination(_Destination):
    kind: Literal["project"]
    project: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$",
                         description="slug of the receiving project on this hub")


class RecipientDestination(_Destination):
    kind: Literal["recipient"]
    user: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$",
                      description="username or e-mail of the recipient (their registered crypt4gh key is used)")
    key: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$",
                            description="fingerprint of the recipient's key (default: their newest)")


Destination = Annotated[ProjectDestination | RecipientDestination, Field(discriminator="kind")]

DESTINATIONS_SETTING = capability_setting(
    "egress_destinations", "Approved export destinations",
    "Where members with the export right may send data, through the airlock's reviews. Empty: nothing leaves.",
    [], list[Destination], edit_page="/projects/{slug}/airlock/settings")
REVIEWERS_SETTING = capability_setting(
    "airlock_reviewers", "Airlock reviewers",
    "Members (user ids) who review export and import requests. Nobody reviews their own request.",
    [], list[Annotated[str, Field(pattern=r"^[0-9a-f-]{36}$")]], edit_page="/projects/{slug}/airlock/settings")
APPROVALS_SETTING = capability_setting(
    "airlock_approvals", "Approvals needed",
    "How many reviewers must approve an airlock request (default 2).",
    2, Annotated[int, Field(ge=1, le=10)], edit_page="/projects/{slug}/airlock/settings")
EXPIRY_SETTING = capability_setting(
    "airlock_expiry_days", "Airlock request expiry",
    "Days an undecided airlock request waits before it expires (default 14).",
    14, Annotated[int, Field(ge=1, le=365)], edit_page="/projects/{slug}/airlock/settings")
