"""GA4GH visas over HTTP: the hub's JWKS, a user's visas and passport (REMS ``/api/permissions`` style),
revoking a visa, and the middleware that verifies visas a request carries in ``X-GA4GH-Passport``
(``verify_body_passports`` does the same for the ``passports`` of a DRS POST body).

Register with ``app.include_router(router)`` and ``app.add_middleware(PassportMiddleware)``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from ..deps import AccessScope, Db, HubDep
from ..errors import NotFound
from ..identity.models import User
from ..schemas import Body
from . import visas

router = APIRouter(tags=["ga4gh"])


class PassportOut(BaseModel):
    ga4gh_passport_v1: list[str] = Field(
        description="signed ControlledAccessGrants visas (JWS compact), one per active entitlement")
    passport: str = Field(description="the same visas as a GA4GH Passport 1.2 JWT (typ vnd.ga4gh.passport+jwt, "
                          "claim ga4gh_passport_v1), signed by this hub; valid for at most an hour")


class VisaRevocationIn(Body):
    visa: str = Field(min_length=20, max_length=16_384, description="the visa (JWS compact) this hub issued")
    reason: str = Field("", max_length=2000)


class VisaRevocationOut(BaseModel):
    jti: str


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
            summary="Your visas (ga4gh_passport_v1) and the same as a signed Passport 1.2 JWT")
def my_passport(db: Db, hub: HubDep, principal: AccessScope) -> dict[str, Any]:
    return visas.passport_of(db, hub.settings, principal.user)


@router.post("/api/v1/visas/revocations", response_model=VisaRevocationOut, status_code=201,
             summary="Revoke one visa this hub issued (yours, or anyone's for platform admins): refused from "
                     "the next request on")
def revoke_visa(db: Db, hub: HubDep, principal: AccessScope, body: VisaRevocationIn) -> dict[str, Any]:
    return {"jti": visas.revoke_visa(db, hub.settings, principal, body.visa, body.reason)}


def verifier_for(state: State) -> visas.PassportVerifier:
    """One verifier (and JWKS cache) per app, shared by the header middleware and DRS POST bodies."""
    verifier = getattr(state, "passport_verifier", None)
    if verifier is None:
        hub = state.hub
        verifier = state.passport_verifier = visas.PassportVerifier(
            hub.settings, extra_issuers=lambda: [e for source in visas.TRUSTED_ISSUER_SOURCES for e in source(hub)])
    return verifier


@asynccontextmanager
async def body_passports(request: Request, tokens: list[str]) -> AsyncIterator[None]:
    """`archive.drs.PASSPORT_VERIFIERS` entry: the visas of a DRS POST body's ``passports`` join those of
    the request's header for the read check, until the route returns (reset then: a keep-alive
    connection's next request must not inherit them)."""
    passport = await verifier_for(request.app.state).verify_tokens(tokens)
    header = visas.CURRENT_PASSPORT.get()
    if header is not None:
        passport.visas[:0] = header.visas
        passport.rejected[:0] = header.rejected
    token = visas.CURRENT_PASSPORT.set(passport)
    try:
        yield
    finally:
        visas.CURRENT_PASSPORT.reset(token)


class PassportMiddleware:
    """Verifies the visas of a request's ``X-GA4GH-Passport`` header (comma-separated visa JWTs, or a
    passport JWT holding ``ga4gh_passport_v1``) and exposes the result to the read check through
    `visas.CURRENT_PASSPORT` for the rest of the request.

    Verification may fetch an allowlisted issuer's JWKS, so it happens here, asynchronously and
    before any database transaction opens. Refused visas are simply not counted (the reasons go to
    the log); a request without the header costs nothing. One verifier (and JWKS cache) per app.

    Every request sets the variable, to None without the header: the server may start a keep-alive
    connection's next request from inside this one's context (uvicorn does, once a streamed body
    ends), and that request must not inherit these visas.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = b",".join(v for k, v in scope["headers"] if k == visas.PASSPORT_HEADER.encode())
        passport = await verifier_for(scope["app"].state).verify(raw.decode("latin-1")) if raw else None
        token = visas.CURRENT_PASSPORT.set(passport)
        try:
            await self.app(scope, receive, send)
        finally:
            visas.CURRENT_PASSPORT.reset(token)
