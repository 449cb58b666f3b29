"""The airlock's project settings (locked by default, changed with fresh MFA and audited through
``projects.service.change_setting``): where data may go, who reviews, how many approvals, how long a
request waits, and which projects may export into this one.

A destination is one entry of a discriminated union on ``kind``: ``project`` (another project on this hub,
by slug, which must list this one in its ``airlock_sources``), ``recipient`` (a named user's registered crypt4gh
key), ``s3`` (a partner bucket) and ``sftp`` (a partner SFTP server). The external kinds carry the partner's
crypt4gh public key (every file leaves re-encrypted to it) and name a ``credential`` of the hub's configuration
(``[airlock.s3.<name>]``, ``[airlock.sftp.<name>]``), which pins where the hub connects and the projects it
serves: secrets and network addresses never enter project settings, only a folder under the credential's. A new
kind is one more model here and one more branch in ``transfer.transfer`` (a ``_deliver_to_…`` function).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..archive import c4gh
from ..projects.settings import capability_setting

_CREDENTIAL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_SLUG = r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$"
# A folder under the credential's: names of [A-Za-z0-9._-] that never begin with a dot (no "..", no ".", nothing
# hidden), no leading slash: what a destination adds can never climb out of where the operator pinned it.
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}"
FOLDER = rf"^({_SEGMENT}(/{_SEGMENT})*)?$"


class _Destination(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$",
                      description="what requesters choose, e.g. 'Registry team'")


class ProjectDestination(_Destination):
    kind: Literal["project"]
    project: str = Field(pattern=_SLUG, description="slug of the receiving project on this hub (which must "
                                                  "accept exports from this project: its airlock_sources)")


class RecipientDestination(_Destination):
    kind: Literal["recipient"]
    user: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$",
                      description="username or e-mail of the recipient (their registered crypt4gh key is used)")
    key: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$",
                            description="fingerprint of the recipient's key (default: their newest)")


class _ExternalDestination(_Destination):
    credential: str = Field(pattern=_CREDENTIAL,
                            description="name of the hub's configured credential for this destination")
    public_key: str = Field(min_length=32, max_length=2000,
                            description="the partner's crypt4gh public key: every file leaves encrypted to it")

    @field_validator("public_key")
    @classmethod
    def _crypt4gh_key(cls, value: str) -> str:
        try:
            c4gh.parse_public_key(value)
        except ValueError as exc:
            raise ValueError(f"not a crypt4gh public key: {exc}") from None
        return value


class S3Destination(_ExternalDestination):
    kind: Literal["s3"]
    prefix: str = Field(default="", max_length=200, pattern=rf"^({_SEGMENT}/)*$",
                        description="folder under the credential's bucket and prefix, e.g. 'lung/'")


class SftpDestination(_ExternalDestination):
    """The server, its host key and the account are the credential's (``[airlock.sftp.<name>]``), pinned by the
    hub's operator; the destination adds a folder under the credential's directory."""

    kind: Literal["sftp"]
    directory: str = Field(default="", max_length=500, pattern=FOLDER,
                           description="folder under the credential's directory, e.g. 'lung' (relative)")


Destination = Annotated[ProjectDestination | RecipientDestination | S3Destination | SftpDestination,
                        Field(discriminator="kind")]

DESTINATIONS_SETTING = capability_setting(
    "egress_destinations", "Approved export destinations",
    "Where members with the export right may send data, through the airlock's reviews. Empty: nothing leaves.",
    [], list[Destination], edit_page="/projects/{slug}/airlock/settings")
REVIEWERS_SETTING = capability_setting(
    "airlock_reviewers", "Airlock reviewers",
    "Members (user ids) who review export and import requests. Nobody reviews their own request.",
    [], list[uuid.UUID], edit_page="/projects/{slug}/airlock/settings")  # a real UUID, saved as its canonical text
APPROVALS_SETTING = capability_setting(
    "airlock_approvals", "Approvals needed",
    "How many reviewers must approve an airlock request (default 2).",
    2, Annotated[int, Field(ge=1, le=10)], edit_page="/projects/{slug}/airlock/settings")
SOURCES_SETTING = capability_setting(
    "airlock_sources", "Projects that may export into this one",
    "Slugs of the projects on this hub whose airlock may deliver approved exports into this project's archive "
    "(each export still passes its own project's checks and reviews). Empty: no project may.",
    [], list[Annotated[str, Field(pattern=_SLUG)]], edit_page="/projects/{slug}/airlock/settings")
EXPIRY_SETTING = capability_setting(
    "airlock_expiry_days", "Airlock request expiry",
    "Days an undecided airlock request waits before it expires (default 14).",
    14, Annotated[int, Field(ge=1, le=365)], edit_page="/projects/{slug}/airlock/settings")
