"""The authenticated caller of a request, whatever the way in (browser session or API token)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from ..audit.service import Actor
from ..db import utcnow
from .models import User

# Scopes a token may carry. A browser session holds all of them.
SCOPES: dict[str, str] = {
    "projects:read": "read projects, members, settings",
    "projects:write": "change members, rights and settings, and your own profile, notification mode and API tokens",
    "audit:read": "read audit events you are entitled to",
    "data:read": "read and download data",
    "data:write": "upload and import data",
    "access": "apply for data access, and handle applications you are a handler of",
    "admin": "platform administration (admins only)",
}


@dataclass
class Principal:
    user: User
    via: str  # session | token
    mfa_at: dt.datetime | None
    scopes: frozenset[str]
    credential_id: str  # session hash prefix or token prefix, for the audit trail
    ip: str | None = None
    # A token bound to one project (a notebook workspace's): every other project is invisible to it.
    project_id: uuid.UUID | None = None
    # False: whatever mfa_at says, this credential never stands for a *recent* second factor (a session whose OpenID
    # Provider did not show that it asked for one during the login). A project-bound token never does either.
    fresh_mfa_allowed: bool = True

    @property
    def has_mfa(self) -> bool:
        return self.mfa_at is not None

    def mfa_is_fresh(self, minutes: int) -> bool:
        """A second factor within the last ``minutes``. Never for a project-bound token: the hub minted it for a
        workspace, where the notebook's code holds it, so its minting proves nobody's presence."""
        if self.project_id is not None or not self.fresh_mfa_allowed or self.mfa_at is None:
            return False
        return utcnow() - self.mfa_at <= dt.timedelta(minutes=minutes)

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def actor(self) -> Actor:
        return Actor(id=self.user.id, label=self.user.label, ip=self.ip)
