"""The hub's reverse proxy to a workspace, served on the workspaces' own origin only (``[workspaces] origin``; see
origin.py for why a notebook's pages never run on the hub's origin).

On the hub's origin, ``GET /projects/{slug}/workspaces/{id}/…`` checks the owner as ever — a page session, MFA fresh
when the workspace started, still a member with read-data, the project not ended; everyone else gets 404, as for a
workspace that does not exist — and sends the browser to the workspaces' origin with a one-time handoff code. Any
other method there is 404. On the workspaces' origin (``WorkspaceOrigin``, by the Host a request came to) the
handoff sets the workspace's cookie, and every request and websocket under the workspace's path is checked again
from the hub session that cookie names, then forwarded over HTTP (httpx) and websockets (the ``websockets``
client, for the kernel channels). Nothing else of the hub answers there, and the hub's cookies are never read.

The workspace's Jupyter token is added here, on the hub's side; it is never sent to the browser: the hub's and
the workspace's cookies are stripped from what goes to Jupyter, and the token is scrubbed from every header and
body coming back (and from websocket frames), should Jupyter ever echo it. What Jupyter sets as cookies stays
within the workspace's path on the workspaces' host (``origin.allowed_set_cookie``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote, unquote, urlencode

import httpx
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route, Router, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..db import transaction
from ..deps import EVERY_HUB_COOKIE_NAME, SAFE_METHODS, Db, HubDep, LoginRequired, client_ip, current_web_session
from ..errors import Conflict, DomainError, NotFound
from ..hub import Hub
from ..identity import service as identity
from . import origin, service

router = APIRouter()  # the hub's origin; the workspaces' origin is ``WorkspaceOrigin`` below

PATH = "/projects/{slug}/workspaces/{workspace_id:uuid}"
NOT_GET = ["HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
METHODS = ["GET", *NOT_GET]
HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                 "transfer-encoding", "upgrade", "host", "content-length", "content-encoding", "authorization",
                 "cookie"})
# never sent to Jupyter, never set by it: the hub's cookies under every name they have (``__Host-`` prefixed when the
# hub's cookies are Secure, bare in loopback development; on this host only ever one tossed in for the parent domain,
# never the hub's own, which are host-only) and the workspace cookie
WITHHELD = EVERY_HUB_COOKIE_NAME | {origin.WORKSPACE_COOKIE}
NO_TRACE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}  # a code in an address: not kept, not sent


# -- the hub's origin: open a workspace ------------------------------------------------------------
def _asked(request: Request) -> str:
    """The path and query the browser asked for, as it sent them."""
    raw = request.scope.get("raw_path") or b""
    path = raw.decode("latin-1")
    if unquote(path) != request.url.path:
        path = quote(request.url.path)
    return path + (f"?{request.url.query}" if request.url.query else "")


@router.api_route(PATH, methods=NOT_GET, include_in_schema=False)
@router.api_route(PATH + "/{path:path}", methods=NOT_GET, include_in_schema=False)
def not_on_the_hub(slug: str, workspace_id: uuid.UUID) -> Response:
    """A workspace answers on the workspaces' origin only: here, anything but opening it is not found."""
    raise NotFound("no such workspace")


@router.get(PATH, include_in_schema=False)
@router.get(PATH + "/{path:path}", include_in_schema=False)
def open_workspace(request: Request, db: Db, hub: HubDep, slug: str, workspace_id: uuid.UUID, path: str = ""
                   ) -> Response:
    """The owner's page session, checked as ever, is handed to the workspaces' origin with a one-time code."""
    found = current_web_session(request, db)
    if found is None or found[0].stage != "active":
        raise LoginRequired(_asked(request))
    session, user = found
    principal = identity.session_principal(session, user, client_ip(request))
    service.proxy_target(db, hub.settings, hub.secret, principal, slug, str(workspace_id))
    where = service.browser_origin(hub.settings)
    if not where:
        raise Conflict(service.NO_ORIGIN)
    next_path = _asked(request) if path else f"{service.base_path(slug, workspace_id)}lab"
    code = service.issue_handoff(db, hub.secret, workspace_id, user.id, session.id_hash, next_path)
    return RedirectResponse(origin.handoff_url(where, workspace_id, code), status_code=303, headers=NO_TRACE)


# -- the workspaces' origin ------------------------------------------------------------------------
def _not_found() -> Response:
    return PlainTextResponse("not found", status_code=404)


def _refused(exc: DomainError) -> Response:
    return PlainTextResponse(exc.detail if exc.status != 404 else "not found", status_code=exc.status)


def _ip(request: Request | WebSocket) -> str | None:
    return request.client.host if request.client else None


def _sent_cookies(request: Request | WebSocket) -> str:
    return "; ".join(request.headers.getlist("cookie"))


def _session_of(hub: Hub, request: Request | WebSocket, workspace_id: str) -> str | None:
    """The hub session this workspace's cookie names, if the hub signed it for this workspace."""
    values = [v for k, v in origin.cookie_pairs(_sent_cookies(request)) if k == origin.WORKSPACE_COOKIE]
    return origin.cookie_session(hub.secret, workspace_id, values)


def _target(hub: Hub, session_hash: str, ip: str | None, slug: str, workspace_id: str) -> service.Target:
    with transaction(hub.sessions) as db:
        principal = service.hub_session_principal(db, hub.settings, session_hash, ip)
        return service.proxy_target(db, hub.settings, hub.secret, principal, slug, workspace_id)


def _redeem(hub: Hub, code: str, workspace_id: str, ip: str | None) -> tuple[service.Opened, str]:
    """(what the code opens, the project's slug): used up whatever the checks after it say."""
    with transaction(hub.sessions) as db:
        opened = service.redeem_handoff(db, hub.secret, code)
    found = origin.WORKSPACE_PATH.match(opened.next_path.partition("?")[0]) if opened is not None else None
    if opened is None or found is None or str(opened.workspace_id) != workspace_id:
        raise NotFound("no such workspace")
    slug = unquote(found.group(1))
    with transaction(hub.sessions) as db:
        principal = service.hub_session_principal(db, hub.settings, opened.session_hash, ip)
        if principal.user.id != opened.user_id:
            raise NotFound("no such workspace")
        service.proxy_target(db, hub.settings, hub.secret, principal, slug, workspace_id)
    return opened, slug


async def handoff(request: Request) -> Response:
    """The handoff code, once: the workspace's cookie (signed: this workspace, that hub session), then the lab.
    HttpOnly (the notebook's script never reads it), host-only (no Domain), only on this workspace's path, Secure on
    https, and SameSite=Lax: the hub's "open" link is a navigation from another site (127.0.0.1 to localhost, or a
    hub under another domain), which Strict would keep from the lab's own first page, while Lax still keeps it from
    every other site's requests but top-level GETs; its posts and websockets must also come from this origin."""
    hub: Hub = request.app.state.hub
    workspace_id = str(request.path_params["workspace_id"])
    if request.method != "GET":
        return _not_found()
    try:
        opened, slug = await run_in_threadpool(_redeem, hub, request.query_params.get("code", ""), workspace_id,
                                               _ip(request))
    except DomainError as exc:
        return _refused(exc)
    response = RedirectResponse(opened.next_path, status_code=303, headers=NO_TRACE)
    response.set_cookie(origin.WORKSPACE_COOKIE, origin.cookie_value(hub.secret, workspace_id, opened.session_hash),
                        path=service.base_path(slug, opened.workspace_id), httponly=True, samesite="lax",
                        secure=service.browser_origin(hub.settings).startswith("https:"))
    return response


def _not_opened(request: Request, hub: Hub) -> Response:
    """No workspace cookie for this workspace (never opened in this browser, or it went): 404, and to a person, the
    way to open it from the hub."""
    if request.method != "GET":
        return _not_found()
    again = escape(hub.settings.base_url.rstrip("/") + _asked(request))
    return HTMLResponse('<!doctype html><html lang="en"><title>Not found</title><p>No open workspace here. Open it '
                        f'from the hub: <a href="{again}">{again}</a></p></html>', status_code=404)


async def workspace_root(request: Request) -> Response:
    slug, workspace_id = request.path_params["slug"], request.path_params["workspace_id"]
    return RedirectResponse(f"{service.base_path(slug, workspace_id)}lab", status_code=303)


async def workspace_http(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    slug, path = request.path_params["slug"], request.path_params["path"]
    workspace_id = str(request.path_params["workspace_id"])
    if request.method not in SAFE_METHODS and not origin.sent_from(request.headers.get("origin"),
                                                                   service.browser_origin(hub.settings)):
        return _not_found()  # another site's form or script (Jupyter would take it as ours: the token is ours)
    session_hash = _session_of(hub, request, workspace_id)
    if session_hash is None:
        return _not_opened(request, hub)
    try:
        target = await run_in_threadpool(_target, hub, session_hash, _ip(request), slug, workspace_id)
    except DomainError as exc:
        return _refused(exc)
    return await _forward(request, target, service.base_path(slug, workspace_id), workspace_id, path)


async def _forward(request: Request, target: service.Target, prefix: str, workspace_id: str, path: str) -> Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    if cookie := origin.upstream_cookie_header(_sent_cookies(request), WITHHELD):
        headers["cookie"] = cookie
    headers["authorization"] = f"token {target.token}"
    url = f"http://{service.authority(target.host, target.port)}{request.url.path}"
    query = httpx.QueryParams([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
    body = await request.body()
    try:
        async with _ordered(request, workspace_id, path) as answered:
            upstream = await _client(request).request(request.method, url, params=query, headers=headers,
                                                      content=body)
    except httpx.HTTPError:
        return Response("the workspace does not answer", status_code=502, media_type="text/plain")
    out_headers: list[tuple[str, str]] = []
    for k, v in upstream.headers.multi_items():
        if k.lower() in HOP or target.token in v:
            continue
        if k.lower() == "set-cookie":
            allowed = origin.allowed_set_cookie(v, prefix, WITHHELD)
            if allowed is None:
                continue  # beyond the workspace's path or host, or a name of the hub's
            v = allowed
        out_headers.append((k, v))
    response = Response(scrub(upstream.content, target.token), status_code=upstream.status_code,
                        background=answered)
    for k, v in out_headers:
        response.headers.append(k, v)
    response.headers["Cache-Control"] = "no-store"
    return response


def _client(request: Request) -> httpx.AsyncClient:
    """One connection pool per app (JupyterLab loads a hundred files at once): plain HTTP to the workspace on
    the hub's own veth, never through an environment's proxy, no cookie jar of its own."""
    client: httpx.AsyncClient | None = getattr(request.app.state, "workspace_proxy_client", None)
    if client is None:
        client = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0), trust_env=False,
                                   limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
                                   cookies=None, follow_redirects=False)
        request.app.state.workspace_proxy_client = client
    return client


# JupyterLab polls the lists of sessions and kernels (GET …/api/sessions, …/api/kernels) and drops every
# session or kernel connection that a list lacks, as shut down elsewhere. A list Jupyter produced while a
# session was being created (POST …/api/sessions: the kernel starts first, seconds) but that reaches the
# browser after the creation's answer — easily, through a proxy on a busy hub, where a small answer can wait
# seconds for the event loop — makes Lab drop the session it has just opened: its kernel websocket closes, and
# a cell run then is silently not sent (no kernel), or Lab starts a second kernel. Directly on Jupyter the
# list is answered in milliseconds and the window is closed. So, per workspace, reads and changes of those
# lists are ordered as a readers-writer lock: a read waits while a change is in flight, a change waits until
# the reads in flight have been answered to the browser.
KERNEL_STATE = re.compile(r"(^|/)api/(sessions|kernels)(/|$)")
CHANGE_WAIT_SECONDS = 150.0  # a read waits at most this for a change (Jupyter's kernel start timeout is 60 s)
READ_WAIT_SECONDS = 10.0  # a change waits at most this for reads in flight (answered in milliseconds)


@dataclass
class _Gate:
    reading: int = 0
    changing: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


def _gate(request: Request, workspace_id: str) -> _Gate:
    gates: dict[str, _Gate] | None = getattr(request.app.state, "workspace_proxy_gates", None)
    if gates is None:
        gates = request.app.state.workspace_proxy_gates = {}
    return gates.setdefault(workspace_id, _Gate())


async def _wait(gate: _Gate, ready: Callable[[], bool], seconds: float) -> None:
    async with gate.changed:
        with contextlib.suppress(TimeoutError):  # never stuck: past the bound, unordered as before
            await asyncio.wait_for(gate.changed.wait_for(ready), seconds)


async def _done(gate: _Gate, what: str) -> None:
    async with gate.changed:
        setattr(gate, what, getattr(gate, what) - 1)
        gate.changed.notify_all()


@contextlib.asynccontextmanager
async def _ordered(request: Request, workspace_id: str, path: str) -> AsyncIterator[BackgroundTask | None]:
    """Yields the background task that ends a read once its answer has been sent (None: nothing to end)."""
    if not KERNEL_STATE.search(path):
        yield None
        return
    gate = _gate(request, workspace_id)
    if request.method in SAFE_METHODS:
        await _wait(gate, lambda: gate.changing == 0, CHANGE_WAIT_SECONDS)
        gate.reading += 1
        ended = BackgroundTask(_done, gate, "reading")
        try:
            yield ended
        except BaseException:
            await _done(gate, "reading")
            raise
        return
    await _wait(gate, lambda: gate.reading == 0, READ_WAIT_SECONDS)
    gate.changing += 1
    try:
        yield None
    finally:
        await _done(gate, "changing")


def scrub(data: bytes, token: str) -> bytes:
    return data.replace(token.encode(), b"") if token else data


# Jupyter answers a kernel websocket's handshake only once the kernel has answered a kernel_info request
# (jupyter_server's ``prepare``, up to its ``kernel_info_timeout``, 60 s): a kernel still starting on a busy
# machine easily takes tens of seconds. The proxy waits that long before it accepts the browser's websocket,
# so the browser can send nothing before the upstream websocket is open, and it gets the subprotocol Jupyter
# chose (``v1.kernel.websocket.jupyter.org``).
UPSTREAM_OPEN_SECONDS = 90.0


def _upstream_query(websocket: WebSocket) -> str:
    """The browser's query (``session_id`` — Jupyter keys a kernel connection and its replay buffer by it),
    encoded again, without any ``token``."""
    return urlencode([(k, v) for k, v in websocket.query_params.multi_items() if k != "token"])


async def workspace_ws(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    slug = websocket.path_params["slug"]
    workspace_id = str(websocket.path_params["workspace_id"])
    try:
        if not origin.sent_from(websocket.headers.get("origin"), service.browser_origin(hub.settings)):
            raise NotFound("no such workspace")  # cross-site websocket hijacking
        session_hash = _session_of(hub, websocket, workspace_id)
        if session_hash is None:
            raise NotFound("no such workspace")
        target = await run_in_threadpool(_target, hub, session_hash, _ip(websocket), slug, workspace_id)
    except DomainError:
        await websocket.send_denial_response(_not_found())
        return
    query = _upstream_query(websocket)
    url = f"ws://{service.authority(target.host, target.port)}{websocket.url.path}" + (f"?{query}" if query else "")
    headers: dict[str, str] = {"Authorization": f"token {target.token}"}
    if cookie := origin.upstream_cookie_header(_sent_cookies(websocket), WITHHELD):
        headers["Cookie"] = cookie
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    try:
        # No keepalive pings of our own: Jupyter pings this connection (and the answers are automatic), and a
        # missed pong on a loaded machine would cut a running kernel's channels. Never through an
        # environment's HTTP proxy: the workspace is on the hub's own veth.
        upstream = await ws_connect(url, additional_headers=headers, subprotocols=offered or None,  # type: ignore[arg-type]
                                    max_size=None, open_timeout=UPSTREAM_OPEN_SECONDS, ping_interval=None,
                                    close_timeout=10, compression=None, proxy=None)
    except (OSError, InvalidStatus, InvalidHandshake, TimeoutError):
        await websocket.send_denial_response(Response("the workspace does not answer", status_code=502,
                                                      media_type="text/plain"))
        return
    await websocket.accept(subprotocol=upstream.subprotocol)
    token = target.token
    closed: dict[str, int | str] = {}

    async def down() -> None:  # workspace → browser
        try:
            async for message in upstream:
                if isinstance(message, bytes):
                    await websocket.send_bytes(scrub(message, token))
                else:
                    await websocket.send_text(message.replace(token, ""))
        except ConnectionClosed:
            pass
        if upstream.close_code is not None:
            closed.update(code=upstream.close_code, reason=upstream.close_reason or "")

    async def up() -> None:  # browser → workspace, in order, binary frames as binary and text as text
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                closed.setdefault("code", int(message.get("code") or 1000))
                return
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, WebSocketDisconnect, RuntimeError):
                await t
        code = int(closed.get("code", 1000))
        code = code if code in (1000, 1001, 1011) or 3000 <= code <= 4999 else 1000  # sendable close codes
        with contextlib.suppress(ConnectionClosed):
            await upstream.close(code)
        with contextlib.suppress(RuntimeError):
            await websocket.close(code, str(closed.get("reason", ""))[:120])


async def _nothing_else(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await WebSocket(scope, receive, send).send_denial_response(_not_found())
        return
    request = Request(scope, receive)
    if request.method == "GET" and request.headers.get("sec-fetch-mode") == "navigate" \
            and request.headers.get("sec-fetch-dest") == "document":
        # a person who typed the workspaces' host (localhost for a hub at 127.0.0.1) is sent to the hub's own; a
        # script's fetch is no navigation and still gets 404, and a redirect reads no cookie of the hub's
        hub: Hub = request.app.state.hub
        await RedirectResponse(hub.settings.base_url.rstrip("/") + _asked(request), status_code=303)(
            scope, receive, send)
        return
    await _not_found()(scope, receive, send)


ON_WORKSPACE_ORIGIN = Router(routes=[
    Route(origin.HANDOFF_PREFIX + "{workspace_id:uuid}/handoff", handoff, methods=METHODS),
    Route(PATH, workspace_root, methods=METHODS),
    Route(PATH + "/{path:path}", workspace_http, methods=METHODS),
    WebSocketRoute(PATH + "/{path:path}", workspace_ws),
], default=_nothing_else)


def _host(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"host":
            return origin.host_of(value.decode("latin-1"))
    return ""


class WorkspaceOrigin:
    """Requests that came to the workspaces' host reach the workspace routes above and nothing else of the hub (404);
    every other request, whatever its Host, goes on to the hub as before."""

    def __init__(self, app: ASGIApp, where: str) -> None:
        self.app = app
        self.host = origin.origin_host(where) if where else ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.host and scope["type"] in ("http", "websocket") and _host(scope) == self.host:
            if scope["type"] == "http" and scope["method"] not in METHODS:
                await _nothing_else(scope, receive, send)  # not a 405 (an error outside the app's handlers)
                return
            await ON_WORKSPACE_ORIGIN(scope, receive, send)
        else:
            await self.app(scope, receive, send)
