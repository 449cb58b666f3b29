"""GA4GH visas over HTTP: the hub's JWKS, a user's visas (REMS ``/api/permissions`` style), and the
middleware that verifies visas a request carries in ``X-GA4GH-Passport``.

Register with ``app.include_router(router)`` and ``app.add_middleware(PassportMiddleware)``.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from ..deps import AccessScope, Db, HubDep
from ..errors import NotFound
from ..identity.models import User
from . import visas

router = APIRouter(tags=["ga4gh"])


class PassportOut(BaseModel):
    ga4gh_passport_v1: list[str] = Field(
        description="signed ControlledAccessGrants visas (JWS compact), one per active entitlement")


@router.get("/.well-known/jwks.json", summary="The public keys that sign this hub's GA4GH visas",
            response_model=None)
def jwks(hub: HubDep) -> JSONResponse:
    return JSONResponse(visas.jwks(hub.settings), headers={"Cache-Control": "public, max-age=300"})


@router.get("/api/v1/permissions/{user_id}", response_model=PassportOut,
            summary="A user's visas (REMS-style permissions API): yourself, or anyone for platform admins")
def permissions(db: Db, hub: HubDep, principal: AccessScope, user_id: str) -> dict[str, Any]:
    try:
        uid = uuid.UUID(user_id)
    except ValueError:
        raise NotFound("not found") from None
    if uid != principal.user.id and not principal.user.is_admin:
        raise NotFound("not found")
    user = db.get(User, uid)
    if user is None:
        raise NotFound("not found")
    return visas.passport_of(db, hub.settings, user)


@router.get("/api/v1/me/passport", response_model=PassportOut,
            summary="Your visas, in ga4gh_passport_v1 form")
def my_passport(db: Db, hub: HubDep, principal: AccessScope) -> dict[str, Any]:
    return visas.passport_of(db, hub.settings, principal.user)


class PassportMiddleware:
    """Verifies the visas of a request's ``X-GA4GH-Passport`` header (comma-separated visa JWTs, or a
    passport JWT holding ``ga4gh_passport_v1``) and exposes the result to the read check through
    `visas.CURRENT_PASSPORT` for the rest of the request.

    Verification may fetch an allowlisted issuer's JWKS, so it happens here, asynchronously and
    before any database transaction opens. Refused visas are simply not counted (the reasons go to
    the log); a request without the header costs nothing. One verifier (and JWKS cache) per app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.verifier: visas.PassportVerifier | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = b",".join(v for k, v in scope["headers"] if k == visas.PASSPORT_HEADER.encode())
        if not raw:
            return await self.app(scope, receive, send)
        if self.verifier is None:
            self.verifier = visas.PassportVerifier(scope["app"].state.hub.settings)
        passport = await self.verifier.verify(raw.decode("latin-1"))
        token = visas.CURRENT_PASSPORT.set(passport)
        try:
            await self.app(scope, receive, send)
        finally:
            visas.CURRENT_PASSPORT.reset(token)
