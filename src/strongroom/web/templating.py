"""The Jinja2 environment shared by every capability's pages, and the flash message a form's
redirect carries to the page it lands on."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.background import BackgroundTask
from starlette.templating import _TemplateResponse

from .. import small_counts
from ..deps import FLASH_COOKIE, csrf_token, delete_cookie, read_cookie, set_cookie
from ..identity.secrets import equal_secrets
from ..text import human_bytes

FLASH_KINDS = ("ok", "error")
_FLASH_MAX = 500


def _flash_mac(secret: bytes, payload: str) -> str:
    return hmac.new(secret, b"flash:" + payload.encode(), hashlib.sha256).hexdigest()[:32]


def flash(request: Request, response: Response, text: str, kind: str = "ok") -> Response:
    """Put a one-time message on ``response`` (a redirect): the next page rendered shows it once.
    Signed with the hub's secret, so nobody else can make the hub's pages say something."""
    kind = kind if kind in FLASH_KINDS else "ok"
    payload = base64.urlsafe_b64encode(json.dumps([kind, text[:_FLASH_MAX]]).encode()).decode()
    secret: bytes = request.app.state.hub.secret
    set_cookie(response, request.app.state.hub.settings, FLASH_COOKIE, f"{payload}.{_flash_mac(secret, payload)}",
               max_age=300)
    return response


def redirect_with(request: Request, url: str, text: str, kind: str = "ok") -> RedirectResponse:
    """The 303 after a form, with the message the landing page shows."""
    response = RedirectResponse(url, status_code=303)
    flash(request, response, text, kind)
    return response


def _read_flash(request: Request) -> dict[str, str] | None:
    raw = read_cookie(request, FLASH_COOKIE)
    if not raw or "." not in raw:
        return None
    payload, mac = raw.rsplit(".", 1)
    if not equal_secrets(mac, _flash_mac(request.app.state.hub.secret, payload)):
        return None
    try:
        kind, text = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except (ValueError, TypeError):
        return None
    return {"kind": kind if kind in FLASH_KINDS else "ok", "text": str(text)}


class _Templates(Jinja2Templates):
    """Rendering a page shows the pending flash message, and so clears it."""

    def TemplateResponse(self, request: Request, name: str, context: dict[str, Any] | None = None,
                         status_code: int = 200, headers: Mapping[str, str] | None = None,
                         media_type: str | None = None, background: BackgroundTask | None = None
                         ) -> _TemplateResponse:
        response = super().TemplateResponse(request, name, context, status_code=status_code, headers=headers,
                                            media_type=media_type, background=background)
        if read_cookie(request, FLASH_COOKIE) is not None:
            delete_cookie(response, request.app.state.hub.settings, FLASH_COOKIE)
        return response


templates = _Templates(directory=Path(__file__).parent / "templates")


def _when(value: dt.datetime | dt.date | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


def _bytes(n: int | None) -> str:
    return "—" if n is None else human_bytes(n)


def _context(request: Request) -> dict[str, object]:
    hub = request.app.state.hub
    return {
        "site_name": hub.settings.site_name,
        "csrf_token": csrf_token(request),
        "current_user": getattr(request.state, "user", None),
        "oidc_enabled": bool(hub.settings.oidc.issuer),
        "oidc_name": hub.settings.oidc.display_name,
        "pending_flash": _read_flash(request),
    }


templates.context_processors.append(_context)
templates.env.filters["when"] = _when
templates.env.filters["bytes"] = _bytes
templates.env.filters["people_count"] = small_counts.text  # public counts of people and their imaging
