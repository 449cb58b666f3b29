"""Site-wide pages that belong to no single capability."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ..deps import Db, current_web_session

router = APIRouter()


@router.get("/")
def home(request: Request, db: Db) -> Response:
    found = current_web_session(request, db)
    return RedirectResponse("/projects" if found and found[0].stage == "active" else "/login", status_code=303)
