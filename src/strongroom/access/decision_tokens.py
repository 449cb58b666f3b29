"""Decision tokens: the one credential a machine may approve access with.

An approval opens a dataset, so it needs a second factor within ``security.fresh_mfa_minutes`` (decisions.py). An
external data owner's system (its own account, named handler of the dataset) posts its decisions through
``POST /api/v1/external/datasets/{id}/decisions`` and cannot re-authenticate. It posts them with a decision token
instead: minted on the dataset's access page by a handler of the dataset, from a browser session with a fresh second
factor, bound to that one dataset and marked as such (the scope entry ``access-decisions:<dataset>``). It carries no
scope the hub knows, so every route that asks for one refuses it (all but its own account's notification mode). A
stolen personal token or session cookie therefore approves nothing, and a stolen decision token decides for one
dataset only, until it expires (``security.token_max_days`` at most), is revoked on its owner's account page, or its
owner stops being a handler of the dataset."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive.models import Dataset
from ..audit import service as audit
from ..db import utcnow
from ..errors import Forbidden, Invalid, NotFound
from ..identity.models import ApiToken, User
from ..identity.principal import Principal
from ..identity.secrets import new_secret, sha256_hex
from ..identity.service import require_fresh_mfa
from .models import DatasetRole
from .policies import owner_pi, roles_of

DECISION_SCOPE = "access-decisions:"  # an ApiToken.scopes entry: f"{DECISION_SCOPE}{dataset_id}"


def mint(session: Session, principal: Principal, dataset_id: str, *, name: str, days: int, max_days: int,
         fresh_minutes: int) -> tuple[ApiToken, str]:
    """A decision token for the caller, a handler of the dataset; returns it and its plaintext (shown once)."""
    ds = session.get(Dataset, dataset_id)
    if ds is None or "handler" not in roles_of(session, principal.user.id, dataset_id):
        raise NotFound("no such dataset")
    if principal.via != "session":  # like every token: minted from a browser session, whose MFA it stands for
        raise Forbidden("decision tokens are minted on the dataset's access page")
    require_fresh_mfa(principal, fresh_minutes)
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise Invalid("token name must be 1-100 characters")
    if not 1 <= days <= max_days:
        raise Invalid(f"token lifetime must be 1-{max_days} days")
    prefix, secret = secrets.token_hex(6), new_secret(24)
    token = ApiToken(user_id=principal.user.id, name=name, prefix=prefix, secret_hash=sha256_hex(secret),
                     scopes=[f"{DECISION_SCOPE}{dataset_id}"], expires_at=utcnow() + dt.timedelta(days=days))
    session.add(token)
    session.flush()
    audit.record(session, principal.actor, "token.created", project_id=ds.project_id,
                 subject_user_id=principal.user.id, target=f"token:{prefix}",
                 details={"name": name, "scopes": token.scopes, "days": days, "purpose": "external decisions"})
    return token, f"sr_{prefix}_{secret}"


def decides_for(session: Session, principal: Principal, dataset_id: str) -> bool:
    """Whether the request's credential is a decision token bound to this dataset (read from its row: a principal's
    scopes hold only the known ones)."""
    if principal.via != "token" or not principal.credential_id.startswith("token:"):
        return False
    scopes = session.scalar(select(ApiToken.scopes).where(
        ApiToken.prefix == principal.credential_id.removeprefix("token:")))
    return f"{DECISION_SCOPE}{dataset_id}" in (scopes or [])


def live_tokens(session: Session, dataset_id: str) -> list[tuple[ApiToken, User]]:
    """The dataset's decision tokens that still work (not revoked or expired, their owner still a handler), with
    their owners: the data owner's page lists them."""
    ds = session.get(Dataset, dataset_id)
    named = set(session.scalars(select(DatasetRole.user_id).where(DatasetRole.dataset_id == dataset_id,
                                                                  DatasetRole.role == "handler")))
    if not session.scalar(select(DatasetRole.user_id).where(DatasetRole.dataset_id == dataset_id).limit(1)):
        named = {pi for pi in (owner_pi(session, ds) if ds else None,) if pi}  # nobody named: the PI handles
    if not named:
        return []
    rows = session.execute(select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(
        ApiToken.user_id.in_(named), ApiToken.revoked_at.is_(None), ApiToken.expires_at > utcnow(),
        User.is_active.is_(True))
        .order_by(ApiToken.created_at.desc()))
    scope = f"{DECISION_SCOPE}{dataset_id}"
    return [(token, user) for token, user in rows.tuples() if scope in token.scopes]
