"""Your e-mail notification preference: one e-mail per event, or a daily digest of handler e-mails."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from ..deps import ApiPrincipal, Db, ProjectsWrite
from ..schemas import Body
from . import service

router = APIRouter(prefix="/api/v1", tags=["notifications"])


class NotifyPreferenceIn(Body):
    mode: Literal["immediate", "daily"]


class NotifyPreferenceOut(BaseModel):
    mode: Literal["immediate", "daily"]


@router.get("/me/notifications", response_model=NotifyPreferenceOut, summary="Your notification mode")
def get_mode(db: Db, principal: ApiPrincipal) -> NotifyPreferenceOut:
    return NotifyPreferenceOut(mode=service.preference(db, principal.user.id))


# Changing it changes the account, which needs projects:write (see identity.api); reading it, any token.
@router.put("/me/notifications", response_model=NotifyPreferenceOut,
            summary="Set your notification mode: handler e-mails one by one, or one daily digest")
def set_mode(db: Db, principal: ProjectsWrite, body: NotifyPreferenceIn) -> NotifyPreferenceOut:
    return NotifyPreferenceOut(mode=service.set_preference(db, principal, body.mode))
