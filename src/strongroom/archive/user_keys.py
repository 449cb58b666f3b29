"""Users' registered crypt4gh public keys (the recipients of their downloads)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..db import utcnow
from ..errors import Invalid, NotFound
from ..identity.principal import Principal
from ..identity.service import require_fresh_mfa
from . import c4gh
from .models import (
    UserKey,
)


def add_user_key(session: Session, principal: Principal, name: str, public_key: bytes, *, fresh_minutes: int
                 ) -> UserKey:
    """Register (or re-activate) a recipient of the user's downloads: a fresh second factor first, since
    whoever holds the matching secret key reads every later download (a leaked token alone must not)."""
    require_fresh_mfa(principal, fresh_minutes)
    if len(public_key) != 32:
        raise Invalid("a crypt4gh public key is 32 bytes (X25519)")
    fp = c4gh.fingerprint(public_key)
    existing = session.scalar(select(UserKey).where(UserKey.user_id == principal.user.id,
                                                    UserKey.fingerprint == fp))
    if existing is not None:
        if existing.revoked_at is not None:  # a revoked recipient back in use is a registration too
            existing.revoked_at = None
            audit.record(session, principal.actor, "archive.user_key.added", subject_user_id=principal.user.id,
                         target=f"key:{fp}", details={"reactivated": True})
        return existing
    key = UserKey(user_id=principal.user.id, name=name.strip()[:100] or "key", fingerprint=fp,
                  public_key=public_key)
    session.add(key)
    audit.record(session, principal.actor, "archive.user_key.added", subject_user_id=principal.user.id,
                 target=f"key:{fp}")
    session.flush()
    return key


def user_key(session: Session, principal: Principal, fingerprint: str | None) -> UserKey:
    stmt = select(UserKey).where(UserKey.user_id == principal.user.id, UserKey.revoked_at.is_(None))
    if fingerprint:
        stmt = stmt.where(UserKey.fingerprint == fingerprint)
    keys = list(session.scalars(stmt.order_by(UserKey.created_at.desc())))
    if not keys:
        raise Invalid("register a crypt4gh public key first (`strongroom keys register`), "
                      "or name one of yours with ?key=FINGERPRINT")
    return keys[0]


def list_user_keys(session: Session, principal: Principal) -> list[UserKey]:
    return list(session.scalars(select(UserKey).where(UserKey.user_id == principal.user.id)
                                .order_by(UserKey.created_at.desc())))


def revoke_user_key(session: Session, principal: Principal, fingerprint: str) -> None:
    key = session.scalar(select(UserKey).where(UserKey.user_id == principal.user.id,
                                               UserKey.fingerprint == fingerprint))
    if key is None:
        raise NotFound("no such key")
    key.revoked_at = utcnow()
    audit.record(session, principal.actor, "archive.user_key.revoked", subject_user_id=principal.user.id,
                 target=f"key:{fingerprint}")
