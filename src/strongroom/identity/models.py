"""Identity tables: users keyed by (issuer, subject), local credentials, sessions and API tokens."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, ForeignKey, LargeBinary, String, UniqueConstraint, event
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..db import Base, CreatedMixin, IdMixin

LOCAL_ISSUER = "urn:strongroom:local"


class User(IdMixin, CreatedMixin, Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_users_issuer_subject"),)

    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str]
    email: Mapped[str | None] = mapped_column(index=True)
    affiliation: Mapped[str | None]
    # ISO 3166-1 alpha-2 of the home organisation, as the user gave it: the hub's "countries shared with".
    country: Mapped[str | None] = mapped_column(String(2))
    is_admin: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)
    last_login_at: Mapped[dt.datetime | None]

    credential: Mapped[LocalCredential | None] = relationship(back_populates="user", uselist=False)

    @property
    def is_local(self) -> bool:
        return self.issuer == LOCAL_ISSUER

    @property
    def label(self) -> str:
        return f"{self.display_name} <{self.subject}@{'local' if self.is_local else self.issuer}>"


class LocalCredential(Base):
    """Password + TOTP for a local account. The TOTP secret is encrypted with the hub key."""

    __tablename__ = "local_credentials"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    totp_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    totp_confirmed_at: Mapped[dt.datetime | None]
    totp_last_step: Mapped[int] = mapped_column(default=0)  # refuses replay of a used code

    user: Mapped[User] = relationship(back_populates="credential")

    @property
    def mfa_enrolled(self) -> bool:
        return self.totp_confirmed_at is not None


class RecoveryCode(IdMixin, CreatedMixin, Base):
    __tablename__ = "recovery_codes"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[dt.datetime | None]


class ApiToken(IdMixin, CreatedMixin, Base):
    """A named, scoped, expiring bearer token. Only a SHA-256 of the secret part is stored."""

    __tablename__ = "api_tokens"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]


class WebSession(CreatedMixin, Base):
    """A browser session. The cookie holds a random secret; the table holds its SHA-256."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # password-ok → waiting for a TOTP code; enrol → must enrol TOTP first; active → logged in
    stage: Mapped[str] = mapped_column(String(16))
    auth_method: Mapped[str] = mapped_column(String(16))  # local | oidc
    mfa_at: Mapped[dt.datetime | None]
    last_seen_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    ip: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LoginAttempt(IdMixin, CreatedMixin, Base):
    """Failed logins, counted per username and per client address for rate limiting."""

    __tablename__ = "login_attempts"

    key: Mapped[str] = mapped_column(String(255), index=True)


NEXT_URL_MAX = 512  # where an OpenID Connect login carries on to afterwards


class OidcLoginState(CreatedMixin, Base):
    """One pending authorization-code flow: single use, short lived."""

    __tablename__ = "oidc_login_states"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str] = mapped_column(String(128))
    next_url: Mapped[str] = mapped_column(String(NEXT_URL_MAX), default="/")


@event.listens_for(OidcLoginState.next_url, "set", retval=True)
def _next_url_that_fits(_state: OidcLoginState, value: str, _old: object, _initiator: object) -> str:
    """The login links take a longer `next` than the column holds: an overlong one is dropped (home, which sends a
    logged-in user on to their projects), never cut to another address, nor left to fail PostgreSQL's length check
    (a 500; SQLite checks no lengths)."""
    return value if len(value) <= NEXT_URL_MAX else "/"


from .. import decision_cache  # noqa: E402,F401  (the model layer's signal to the web processes' decision caches)
