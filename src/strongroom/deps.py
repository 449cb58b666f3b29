"""Request-scoped dependencies shared by every capability's API and web routes."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

from fastapi import Depends, Request, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile
from starlette.requests import cookie_parser

from .config import Settings
from .db import WEB_BUSY_TIMEOUT_MS, open_session
from .errors import DomainError, Forbidden, Invalid, NotFound, Unauthenticated
from .hub import Hub
from .identity import service as identity
from .identity.models import User, WebSession
from .identity.principal import Principal
from .identity.secrets import equal_secrets, sha256_hex

# -- the hub's cookies ---------------------------------------------------------------------------
# Their base names. Read, set and delete them only through the functions below, which give each the name this hub
# uses: ``__Host-`` + the base name whenever cookies are Secure (``settings.cookie_secure``), the bare base name only
# in plain-http loopback development (browsers refuse the prefix there). A browser accepts a ``__Host-`` cookie only
# from this very host (Secure, Path=/, no Domain: RFC 6265bis), so no other host under the hub's parent domain (the
# workspaces' host, where a notebook's script runs) can toss one in: a ``Domain=`` cookie of the bare name reaches
# the hub, but the hub, when Secure, never reads the bare names at all.
SESSION_COOKIE = "sr_session"
CSRF_COOKIE = "sr_csrf"  # the pre-session cookie a form's CSRF token is bound to before login
FLASH_COOKIE = "sr_flash"  # the one-time message a form's redirect carries (web.templating)
OIDC_STATE_COOKIE = "sr_oidc_state"  # binds an OpenID Connect login to the browser that started it
HUB_COOKIES = (SESSION_COOKIE, CSRF_COOKIE, FLASH_COOKIE, OIDC_STATE_COOKIE)
HOST_PREFIX = "__Host-"
# every name a hub cookie has under any setting: what the workspace proxy withholds from (and never lets a notebook
# set for) the browser
EVERY_HUB_COOKIE_NAME = frozenset(name for base in HUB_COOKIES for name in (base, HOST_PREFIX + base))


def cookie_name(settings: Settings, base: str) -> str:
    """The name the hub's cookie ``base`` has on this hub: ``__Host-`` prefixed whenever cookies are Secure."""
    if base not in HUB_COOKIES:
        raise ValueError(f"{base!r} is not one of the hub's cookies")
    return HOST_PREFIX + base if settings.cookie_secure else base


def read_cookie(request: Request, base: str) -> str | None:
    """The value of the hub's cookie ``base`` this request carries, under this hub's name for it only: when cookies
    are Secure an unprefixed one (tossed in by a sibling host, or left from before the prefix) is not read, and a
    ``__Host-`` name sent twice is read as absent (one host, one path: only a browser's flaw could send a second,
    and the server could not tell which is the hub's), never as one of the two."""
    settings: Settings = request.app.state.hub.settings
    name = cookie_name(settings, base)
    if not settings.cookie_secure:
        return request.cookies.get(name)
    values = [value for header in request.headers.getlist("cookie") for chunk in header.split(";")
              if (value := cookie_parser(chunk).get(name)) is not None]
    return values[0] if len(values) == 1 else None


def set_cookie(response: Response, settings: Settings, base: str, value: str, *, max_age: int | None = None,
               samesite: Literal["lax", "strict"] = "lax") -> None:
    """Set the hub's cookie ``base``: HttpOnly, Path=/, host-only (no Domain), Secure and ``__Host-`` named
    whenever cookies are Secure; a session cookie (gone with the browser) unless ``max_age``."""
    response.set_cookie(cookie_name(settings, base), value, max_age=max_age, path="/", domain=None,
                        secure=settings.cookie_secure, httponly=True, samesite=samesite)


def delete_cookie(response: Response, settings: Settings, base: str) -> None:
    """Remove the hub's cookie ``base``. The removal carries Secure too: a browser ignores a ``__Host-`` Set-Cookie
    without it, removals included."""
    response.delete_cookie(cookie_name(settings, base), path="/", domain=None, secure=settings.cookie_secure,
                           httponly=True, samesite="lax")


def get_hub(request: Request) -> Hub:
    return request.app.state.hub


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
F = TypeVar("F")


def _request_session(request: Request, *, deferred: bool) -> Iterator[Session]:
    """One transaction per request, committed before the response is sent.

    A refused login or token still commits: its audit event and throttling count must survive the
    error. Every other error rolls back, so a failed action never leaves half its changes behind.
    A request waits at most WEB_BUSY_TIMEOUT_MS for a database lock; then it fails and the app
    answers 503 with Retry-After.
    """
    hub: Hub = request.app.state.hub
    session = open_session(hub.sessions, deferred=deferred, busy_timeout_ms=WEB_BUSY_TIMEOUT_MS)
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


def _db(request: Request) -> Iterator[Session]:
    """Reads (GET/HEAD) take no write lock unless they write. Other methods hold it from their first
    query, so their read-check-write stays serialised (as row locks serialise it on PostgreSQL),
    unless the route is marked :func:`read_first`."""
    endpoint = request.scope.get("endpoint") or getattr(request.scope.get("route"), "endpoint", None)
    deferred = request.method in SAFE_METHODS or getattr(endpoint, READ_FIRST, False)
    yield from _request_session(request, deferred=deferred)


READ_FIRST = "_strongroom_read_first"


def read_first(endpoint: F) -> F:
    """Mark a route that does slow work (storing a body, hashing) between its checks and its writes:
    its transaction takes the write lock at the first write, not at the first read. Its checks are
    then not serialised with other writers, so the writes must stay correct if a check went stale."""
    setattr(endpoint, READ_FIRST, True)
    return endpoint


Db = Annotated[Session, Depends(_db, scope="function")]
HubDep = Annotated[Hub, Depends(get_hub)]


def client_ip(request: Request) -> str | None:
    """The client's address, for login throttling and the audit trail: the socket's peer, or, when the peer is one
    of ``trusted_proxies`` (the reverse proxy in front of the hub), the right-most X-Forwarded-For hop that is not a
    trusted proxy. Each proxy appends the address it was called from, so hops further left are what the client
    itself claimed and are never believed. Without trusted proxies X-Forwarded-For is not read at all."""
    peer = request.client.host if request.client else None
    trusted = _trusted_networks(tuple(request.app.state.hub.settings.trusted_proxies))
    if peer is None or not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for value in request.headers.getlist("x-forwarded-for") for h in value.split(",")]
    client = peer
    for hop in reversed(hops[-MAX_FORWARDED_HOPS:]):
        address = _hop_address(hop)
        if address is None:  # not an address (a proxy that passes junk through): stop at what we know
            return client
        client = address
        if not _is_trusted(address, trusted):
            return address
    return client  # every hop a trusted proxy: the request began at one of them


MAX_FORWARDED_HOPS = 20
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _trusted_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return any(ip in net for net in trusted)


def _hop_address(hop: str) -> str | None:
    """An X-Forwarded-For hop's address without a port (``1.2.3.4:5678``, ``[2001:db8::1]:443``), or None."""
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


# -- API: bearer tokens ------------------------------------------------------------------------
def _api_principal(request: Request, db: Db) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise Unauthenticated("send an API token as 'Authorization: Bearer sr_…'; create one on your "
                              "account page")
    security = request.app.state.hub.settings.security
    principal = identity.authenticate_token(db, value, client_ip(request), use_audit=security.token_use_audit,
                                            window_seconds=security.token_use_window_seconds)
    db.commit()  # the token.used audit event (if this use wrote one) stands even if the action then fails
    if principal.project_id is not None and account_wide(request):
        raise Forbidden(WORKSPACE_TOKEN_ACCOUNT)
    return principal


# Routes that act on the whole account rather than on one project: the profile and notification mode, API tokens,
# crypt4gh recipient keys and SSH keys (every route under /api/v1/me/, and /api/v1/tokens), and the airlock's
# user-wide routes (the outbox of files exported to the user, with its one-time downloads, and the reviews waiting
# across the user's projects: /api/v1/airlock/…). A project-bound token (a workspace's STRONGROOM_TOKEN, which lives
# in the notebook, not with the person) is refused on all of them, reads included; it may still ask who it acts for
# (GET /api/v1/me). Checked here, where every API token is resolved, so a route added under these paths later is
# covered without asking for it.
ACCOUNT_PATHS = ("/api/v1/me/", "/api/v1/tokens/", "/api/v1/airlock/")
WORKSPACE_TOKEN_ACCOUNT = ("a workspace's token acts only inside its project: manage your account, API tokens and "
                           "keys from the hub's pages or with your own API token")


def account_wide(request: Request) -> bool:
    """Whether the matched route acts on the caller's whole account (by its path template, as routed)."""
    route = request.scope.get("route")
    path = str(getattr(route, "path", None) or request.scope.get("path", ""))
    if path == "/api/v1/me":
        return request.method not in SAFE_METHODS
    return path == "/api/v1/tokens" or path.startswith(ACCOUNT_PATHS)


ApiPrincipal = Annotated[Principal, Depends(_api_principal)]


# The scope each principal dependency below demands, by dependency: openapi.py declares every operation's
# `security` from these, so the document cannot drift from what the routes check.
TOKEN_SCOPES: dict[Callable[..., Principal], str] = {}
TOKEN_OR_PAGE_SCOPES: dict[Callable[..., Principal], str] = {}


# A project-bound token (a notebook workspace's STRONGROOM_TOKEN) holds data:write only to save results back
# as files: the upload routes (UploadWrite). Every other data:write route (datasets and their releases and
# shares, catalogue entries, airlock requests, strategy runs, SSH keys) refuses it.
WORKSPACE_TOKEN_WRITES = ("a workspace's token may upload files into its project, nothing more: create, release, "
                          "share or publish datasets from the hub's pages or with your own API token")


def require_scope(scope: str) -> Callable[[Principal], Principal]:
    """The dependency that lets a token through only with ``scope`` (``admin``: only an administrator's)."""

    def check(principal: ApiPrincipal) -> Principal:
        if scope == "admin" and not principal.user.is_admin:
            raise NotFound("not found")  # administration is invisible to everyone else
        if not principal.can(scope):
            raise Forbidden(f"this token lacks the {scope!r} scope")
        if scope == "data:write" and principal.project_id is not None:
            raise Forbidden(WORKSPACE_TOKEN_WRITES)
        return principal

    TOKEN_SCOPES[check] = scope
    return check


# The API's principals, one per scope: ``def route(principal: DataRead, ...)``.
DataRead = Annotated[Principal, Depends(require_scope("data:read"))]
DataWrite = Annotated[Principal, Depends(require_scope("data:write"))]
ProjectsRead = Annotated[Principal, Depends(require_scope("projects:read"))]
ProjectsWrite = Annotated[Principal, Depends(require_scope("projects:write"))]
AuditRead = Annotated[Principal, Depends(require_scope("audit:read"))]
AccessScope = Annotated[Principal, Depends(require_scope("access"))]
Admin = Annotated[Principal, Depends(require_scope("admin"))]


# -- web: session cookies ----------------------------------------------------------------------
class LoginRequired(Exception):
    """Raised by web routes; the app turns it into a redirect to the login page."""

    def __init__(self, next_url: str = "/") -> None:
        self.next_url = next_url


def current_web_session(request: Request, db: Db) -> tuple[WebSession, User] | None:
    hub: Hub = request.app.state.hub
    ws = identity.load_session(db, read_cookie(request, SESSION_COOKIE),
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
    id: uuid.UUID | None = None  # for per-user counts in the navigation (e.g. reviews waiting)


def show_viewer(request: Request, user: User) -> None:
    request.state.user = Viewer(user.display_name, user.is_admin, user.id)


WebPrincipal = Annotated[Principal, Depends(_web_principal)]


# -- CSRF: a form token bound to the browser's session --------------------------------------------
def csrf_token_for(hub_secret: bytes, *, session_cookie: str | None = None, presession_cookie: str | None = None
                   ) -> str:
    """The token a form must carry: an HMAC of the session id hash, or before login of the random
    pre-session cookie. A new session id (login, MFA, password change) therefore means a new token,
    and a token read from one browser's page is worthless in another."""
    if session_cookie:
        binding = "session:" + sha256_hex(session_cookie)
    elif presession_cookie:
        binding = "pre:" + sha256_hex(presession_cookie)
    else:
        raise ValueError("a CSRF token needs a session or pre-session cookie")
    return hmac.new(hub_secret, b"csrf:" + binding.encode(), hashlib.sha256).hexdigest()


def _bound_cookie(request: Request) -> str | None:
    value = getattr(request.state, "session_cookie", None) or read_cookie(request, SESSION_COOKIE)
    return value if value and len(value) <= 200 else None


def csrf_token(request: Request) -> str:
    """The token for forms rendered in this response (templates call this)."""
    token = getattr(request.state, "csrf", None)
    if token is None:
        hub: Hub = request.app.state.hub
        session_cookie = _bound_cookie(request)
        presession = None
        if session_cookie is None:
            presession = read_cookie(request, CSRF_COOKIE)
            if not presession or len(presession) > 200:
                presession = secrets.token_urlsafe(24)
                request.state.new_csrf_cookie = presession  # the app's middleware sets it
        token = csrf_token_for(hub.secret, session_cookie=session_cookie, presession_cookie=presession)
        request.state.csrf = token
    return token


def use_session_cookie(request: Request, value: str) -> None:
    """A route that just issued a new session cookie renders its forms with that cookie's token."""
    request.state.session_cookie = value
    request.state.csrf = None


def _own_origins(request: Request) -> tuple[str, str]:
    hub: Hub = request.app.state.hub
    base = urlsplit(hub.settings.base_url)
    return f"{base.scheme}://{base.netloc}".lower(), request.headers.get("host", "").lower()


def _workspaces_host(request: Request) -> str | None:
    """The host notebook workspaces are served from (``[workspaces] origin``), or None."""
    settings = request.app.state.hub.settings
    return urlsplit(settings.workspaces.browser_origin(settings.base_url)).hostname


def _same_site(request: Request) -> bool:
    """Origin (or, without it, Referer) must name this hub when the browser sends one: the
    configured base_url, or the Host the request came to (a proxy must pass Host through or
    base_url must be the public address). Never the workspaces' host, as sender or as Host: its
    pages are a notebook's, and another host of the hub's own site (same-site is not same-origin)."""
    sent = request.headers.get("origin")
    if sent is None:
        referer = request.headers.get("referer")
        if not referer:
            return True  # some privacy tools strip both; the bound token still protects
        parts = urlsplit(referer)
        sent = f"{parts.scheme}://{parts.netloc}"
    sent = sent.lower()
    if sent == "null":
        return False
    base_origin, host = _own_origins(request)
    parts = urlsplit(sent)
    workspaces = _workspaces_host(request)
    if workspaces is not None and workspaces in (parts.hostname, urlsplit(f"//{host}").hostname):
        return False
    return sent == base_origin or (bool(host) and parts.scheme in ("http", "https") and parts.netloc == host)


async def _check_csrf(request: Request) -> None:
    """Every form post: from this hub's own pages, with the token bound to this browser's session, and with no
    NUL character anywhere (no database text can hold one; /login's form comes through here too)."""
    if not _same_site(request):
        raise Forbidden("this form was sent from another site; open the page on this hub and try again")
    form = await request.form()
    sent = str(form.get("csrf_token", ""))
    hub: Hub = request.app.state.hub
    session_cookie = _bound_cookie(request)
    presession = read_cookie(request, CSRF_COOKIE)
    if session_cookie is None and not presession:
        raise Forbidden("the form expired or came from another site; reload the page and try again")
    expected = csrf_token_for(hub.secret, session_cookie=session_cookie, presession_cookie=presession)
    # compared as bytes: compare_digest refuses str with non-ASCII characters (a TypeError, so a 500)
    if not equal_secrets(sent, expected):
        raise Forbidden("the form expired or came from another site; reload the page and try again")
    _refuse_nul(form)


def _refuse_nul(form: FormData) -> None:
    """A form with U+0000 in a field's name, a value or an uploaded file's name is refused whole (422),
    before any route reads it: on SQLite and PostgreSQL alike."""
    for key, value in form.multi_items():
        text = (value.filename or "") if isinstance(value, UploadFile) else value
        if "\x00" in key:
            raise Invalid("the form was not accepted: a field's name contains a NUL character")
        if "\x00" in text:
            field = key[:60].replace("_", " ")
            what = f"the name of the file sent as {field}" if isinstance(value, UploadFile) else field
            raise Invalid(f"the form was not accepted: {what} may not contain a NUL character")


CsrfChecked = Depends(_check_csrf)


# -- API routes a page's own script may call -------------------------------------------------------
CSRF_HEADER = "x-csrf-token"


def _browser_api_principal(request: Request, db: Db) -> Principal:
    """The logged-in browser calling an API route from the hub's own pages (the encrypted browser
    upload): an active session cookie, plus the page's CSRF token in the ``X-CSRF-Token`` header and
    a same-site Origin. A header other sites cannot set without a CORS preflight, which this hub
    never grants. Anything less is 401/403, never a redirect to the login page."""
    found = current_web_session(request, db)
    if found is None or found[0].stage != "active":
        raise Unauthenticated("log in again (the session ended), or send an API token as "
                              "'Authorization: Bearer sr_…'")
    if not _same_site(request):
        raise Forbidden("this request came from another site")
    session_cookie = _bound_cookie(request)
    sent = request.headers.get(CSRF_HEADER, "")
    assert session_cookie is not None  # a session was found, so its cookie is there
    expected = csrf_token_for(request.app.state.hub.secret, session_cookie=session_cookie)
    if not sent or not equal_secrets(sent, expected):
        raise Forbidden("the page expired; reload it and try again")
    ws, user = found
    principal = identity.session_principal(ws, user, client_ip(request))
    db.commit()  # like a token check: no transaction stays open while a body arrives
    return principal


def require_scope_or_page(scope: str) -> Callable[[Request, Session], Principal]:
    """Like :func:`require_scope`, for the few API routes the hub's own pages also call: an API token when
    the request carries ``Authorization``, otherwise the browser session with its CSRF header (above).
    Deny by default: a route accepts a session only if it asks for this dependency."""

    def check(request: Request, db: Db) -> Principal:
        if request.headers.get("authorization"):
            principal = _api_principal(request, db)
        else:
            principal = _browser_api_principal(request, db)
        if not principal.can(scope):
            raise Forbidden(f"this token lacks the {scope!r} scope")
        return principal

    TOKEN_OR_PAGE_SCOPES[check] = scope
    return check


# The upload routes are also called by the project's data page, which encrypts in the browser and sends
# the same parts as `strongroom upload`: they take a token, or the session cookie with X-CSRF-Token.
UploadWrite = Annotated[Principal, Depends(require_scope_or_page("data:write"))]


# -- request bodies, read before the transaction -----------------------------------------------
# FastAPI resolves dependencies in parameter order. An API route declares the body after its principal
# (the token check commits, so no transaction is open while the body arrives) and before anything
# else that queries; a web form was already parsed by the CSRF check. The route itself is then a plain
# ``def``, run in a worker thread: a wait for a database lock never blocks the event loop.
def raw_body(max_bytes: int | None = None, too_large: str = "") -> Callable[[Request], Awaitable[bytes]]:
    """The dependency that reads the request body; with ``max_bytes``, refused (422, ``too_large``) as
    soon as it grows past it. Use it as ``Annotated[bytes, Depends(raw_body(...))]``."""

    async def read(request: Request) -> bytes:
        if max_bytes is None:
            return await request.body()
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > max_bytes:
                raise Invalid(too_large or f"the body may be at most {max_bytes} bytes")
        return bytes(data)

    return read


@dataclass(frozen=True)
class Posted:
    """A submitted form, with the bytes of every uploaded file already read (up to the cap)."""

    form: FormData
    files: dict[str, tuple[str, str, bytes]]  # field → (filename, content type, bytes)


def posted_form(max_file_bytes: int | None = None) -> Callable[[Request], Awaitable[Posted]]:
    """The dependency that reads the form; with ``max_file_bytes``, also the first ``max_file_bytes + 1``
    bytes of each file (one more than allowed, so the service can tell a file that is too large). Use it as
    ``Annotated[Posted, Depends(posted_form(...))]``."""

    async def read(request: Request) -> Posted:
        form = await request.form()
        files = {}
        for key, value in form.multi_items():
            if max_file_bytes is not None and isinstance(value, UploadFile) and value.filename:
                files[key] = (value.filename, value.content_type or "", await value.read(max_file_bytes + 1))
        return Posted(form, files)

    return read


RawBody = Annotated[bytes, Depends(raw_body())]
PostedForm = Annotated[Posted, Depends(posted_form())]
