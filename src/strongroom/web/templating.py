"""The Jinja2 environment shared by every capability's pages."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from ..deps import csrf_token
from ..text import human_bytes

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


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
    }


templates.context_processors.append(_context)
templates.env.filters["when"] = _when
templates.env.filters["bytes"] = _bytes
