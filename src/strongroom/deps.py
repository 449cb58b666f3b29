"""Request-scoped dependencies shared by every capability's API and web routes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from .errors import DomainError, Forbidden, NotFound, Unauthenticated
from .hub import Hub
from .identity import service as identity
from .identity.models import User, WebSession
from .identity.principal import Principal

SESSION_COOKIE = "sr_session"
CSRF_COOKIE = "sr_csrf"


def get_hub(request: Request) -> Hub:
    return request.app.state.hub


def _db(request: Request) -> Iterator[Session]:
    """One transaction per request, committed before the response is sent.

    A refused login or token still commits: its audit event and throttling count must survive the
    error. Every other error rolls back, so a failed action never leaves half its changes behind.
    """
    hub: Hub = request.app.state.hub
    session = hub.sessions()
    try:
        yield session
        session.commit()
    except DomainError as exc:
        if isinstance(exc, Unauthenticated):
            session.commit()
        else:
            session.rollback()
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


Db = Annotated[Session, Depends(_db, scope="function")]
HubDep = Annotated[Hub, Depends(get_hub)]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


# -- API: bearer tokens ------------------------------------------------------------------------
def _api_principal(request: Request, db: Db) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise Unauthenticated("send an API token as 'Authorization: Bearer sr_…'; create one on your "
                              "account page")
    principal = identity.authenticate_token(db, value, client_ip(request))
    db.commit()  # the token.used audit event stands even if the action then fails
    return principal


ApiPrincipal = Annotated[Principal, Depends(_api_principal)]


def scoped(scope: str):  # noqa: ANN201 - returns a dependency
    def check(principal: ApiPrincipal) -> Principal:
        if scope == "admin" and not principal.user.is_admin:
            raise NotFound("not found")  # administration is invisible to everyone else
        if not principal.can(scope):
            raise Forbidden(f"this token lacks the {scope!r} scope")
        return principal

    return Annotated[Principal, Depends(check)]


# -- web: session cookies ----------------------------------------------------------------------
class LoginRequired(Exception):
    """Raised by web routes; the app turns it into a redirect to the login page."""

    def __init__(self, next_url: str = "/") -> None:
        self.next_url = next_url


def current_web_session(request: Request, db: Db) -> tuple[WebSession, User] | None:
    hub: Hub = request.app.state.hub
    ws = identity.load_session(db, request.cookies.get(SESSION_COOKIE),
                               idle_minutes=hub.settings.security.session_idle_minutes)
    if ws is None:
        return None
    user = db.get(User, ws.user_id)
    if user is None or not user.is_active:
        return None
    return ws, user


def _web_principal(request: Request, db: Db) -> Principal:
    found = current_web_session(request, db)
    if found is None or found[0].stage != "active":
        raise LoginRequired(request.url.path)
    ws, user = found
    principal = identity.session_principal(ws, user, client_ip(request))
    show_viewer(request, user)
    return principal


@dataclass(frozen=True)
class Viewer:
    """What the page layout shows of the logged-in user. A plain copy, not an ORM row, so error
    pages can render it after the request's transaction was rolled back."""

    display_name: str
    is_admin: bool


def show_viewer(request: Request, user: User) -> None:
    request.state.user = Viewer(user.display_name, user.is_admin)


WebPrincipal = Annotated[Principal, Depends(_web_principal)]


def csrf_token(request: Request) -> str:
    token = getattr(request.state, "csrf", None)
    if token is None:
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        request.state.csrf = token
    return token


async def _check_csrf(request: Request) -> None:
    """Double-submit check for every form post: the hidden field must equal the cookie."""
    form = await request.form()
    sent = str(form.get("csrf_token", ""))
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(sent, cookie):
        raise Forbidden("the form expired or came from another site; reload the page and try again")


CsrfChecked = Depends(_check_csrf)
