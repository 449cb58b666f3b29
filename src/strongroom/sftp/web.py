"""The SSH keys page (linked from the Account page): list, register (fresh MFA), remove."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from ..deps import CsrfChecked, Db, HubDep, WebPrincipal
from ..errors import Conflict, Invalid
from ..web.templating import redirect_with, templates
from . import service

router = APIRouter()


def _page(request: Request, db: Db, principal: WebPrincipal, error: str | None = None, status: int = 200) -> Response:
    return templates.TemplateResponse(request, "sftp/keys.html", {
        "keys": service.list_keys(db, principal), "error": error, "principal": principal}, status_code=status)


@router.get("/account/ssh-keys")
def keys_page(request: Request, db: Db, principal: WebPrincipal) -> Response:
    return _page(request, db, principal)


@router.post("/account/ssh-keys", dependencies=[CsrfChecked])
def add_key(request: Request, db: Db, hub: HubDep, principal: WebPrincipal,
            public_key: Annotated[str, Form(max_length=16000)],
            comment: Annotated[str, Form(max_length=200)] = "") -> Response:
    try:
        key = service.add_key(db, principal, public_key, comment=comment or None,
                              fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    except (Invalid, Conflict) as exc:
        return _page(request, db, principal, exc.detail, 422 if isinstance(exc, Invalid) else 409)
    return redirect_with(request, "/account/ssh-keys",
                         f"SSH key {key.fingerprint} added: it logs you in to the hub's SFTP server.")


@router.post("/account/ssh-keys/{key_id}/remove", dependencies=[CsrfChecked])
def remove_key(request: Request, db: Db, principal: WebPrincipal, key_id: uuid.UUID) -> Response:
    key = service.remove_key(db, principal, key_id)
    return redirect_with(request, "/account/ssh-keys", f"SSH key {key.fingerprint} removed.")
