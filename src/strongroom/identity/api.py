"""Identity API: who am I, my tokens, and user administration for platform admins."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import APIRouter, status
from pydantic import EmailStr, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..deps import Admin, ApiPrincipal, Db, HubDep, ProjectsRead, ProjectsWrite
from ..errors import Forbidden, NotFound
from ..hub import Hub
from ..schemas import Body, Out
from . import service
from .models import User
from .principal import Principal

router = APIRouter(prefix="/api/v1", tags=["identity"])


class UserOut(Out):
    id: uuid.UUID
    issuer: str
    subject: str
    display_name: str
    email: str | None
    affiliation: str | None
    country: str | None = Field(description="ISO 3166-1 alpha-2 of the home organisation, as the user gave it")
    is_admin: bool
    is_active: bool


class MeOut(UserOut):
    scopes: list[str]
    mfa: bool
    via: str


class TokenOut(Out):
    prefix: str
    name: str
    scopes: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class NewLocalUser(Body):
    username: str = Field(min_length=2, max_length=63)
    password: str = Field(min_length=12, max_length=1024)
    display_name: str = Field(min_length=1, max_length=200)
    email: EmailStr | None = None
    affiliation: str | None = Field(default=None, max_length=200)
    is_admin: bool = False


# The account has no scope of its own; it rides on the projects scopes: reading it (my tokens) needs
# projects:read, changing it (profile, notification mode, revoking a token) projects:write. A token holding only
# read scopes thus never changes the account it belongs to. "Who am I" answers any valid token: a data-only
# token (a download script's) must be able to say whose it is, and learns nothing it was not handed.
@router.get("/me", response_model=MeOut, summary="The caller: profile, token scopes, MFA")
def me(principal: ApiPrincipal) -> MeOut:
    if not principal.scopes:  # an external owner's decision token decides for its dataset, and does nothing else
        raise Forbidden("this token lacks the scopes of an account's tokens: it only decides for its dataset")
    return MeOut(**UserOut.model_validate(principal.user).model_dump(), scopes=sorted(principal.scopes),
                 mfa=principal.has_mfa, via=principal.via)


class ProfileChange(Body):
    country: str | None = Field(max_length=2, description="ISO 3166-1 alpha-2 of your home organisation; "
                                "null clears it")


@router.patch("/me", response_model=UserOut, summary="Change my profile: the country of my home organisation")
def change_me(db: Db, principal: ProjectsWrite, body: ProfileChange) -> UserOut:
    return UserOut.model_validate(service.set_country(db, principal, body.country))


@router.get("/tokens", response_model=list[TokenOut], summary="My API tokens (never their secrets)")
def list_tokens(db: Db, principal: ProjectsRead) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in service.list_tokens(db, principal.user)]


@router.delete("/tokens/{prefix}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke one of my tokens")
def revoke_token(db: Db, principal: ProjectsWrite, prefix: str) -> None:
    service.revoke_token(db, principal, prefix)


@router.get("/admin/users", response_model=list[UserOut], summary="All users (platform admins)")
def admin_users(db: Db, principal: Admin) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in db.scalars(select(User).order_by(User.display_name))]


@router.post("/admin/users", response_model=UserOut, status_code=201, summary="Create a local account")
def admin_create_user(db: Db, hub: HubDep, principal: Admin, body: NewLocalUser) -> UserOut:
    service.require_fresh_mfa(principal, hub.settings.security.fresh_mfa_minutes)
    user = service.create_local_user(db, principal.actor, **body.model_dump())
    return UserOut.model_validate(user)


@router.post("/admin/users/{user_id}/mfa-reset", status_code=204,
             summary="Reset a local user's MFA: they enrol again; their sessions and tokens end")
def admin_reset_mfa(db: Db, hub: HubDep, principal: Admin, user_id: uuid.UUID) -> None:
    service.reset_mfa(db, principal.actor, _user_for_admin_action(db, hub, principal, user_id))


@router.post("/admin/users/{user_id}/deactivate", status_code=204,
             summary="Deactivate a user: no more logins; their sessions and API tokens end")
def admin_deactivate_user(db: Db, hub: HubDep, principal: Admin, user_id: uuid.UUID) -> None:
    service.deactivate_user(db, principal.actor, _user_for_admin_action(db, hub, principal, user_id))


def _user_for_admin_action(db: Session, hub: Hub, principal: Principal, user_id: uuid.UUID) -> User:
    """The user an admin acts on, after the admin's fresh second factor is checked."""
    service.require_fresh_mfa(principal, hub.settings.security.fresh_mfa_minutes)
    user = db.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    return user
