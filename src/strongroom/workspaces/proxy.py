"""The hub's reverse proxy to a workspace: ``/projects/{slug}/workspaces/{id}/…`` over HTTP (httpx) and
websockets (the ``websockets`` client, for the kernel channels), for the workspace's owner only (a page
session, MFA fresh when it started): everyone else gets 404, as for a workspace that does not exist.

The workspace's Jupyter token is added here, on the hub's side; it is never sent to the browser: the hub's
cookies are stripped from what goes to Jupyter, and the token is scrubbed from every header and body coming
back (and from websocket frames), should Jupyter ever echo it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import RedirectResponse, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..db import transaction
from ..deps import CSRF_COOKIE, SAFE_METHODS, SESSION_COOKIE, _same_site
from ..errors import DomainError, NotFound
from ..hub import Hub
from ..identity import service as identity
from ..identity.models import User
from . import service

router = APIRouter()

PATH = "/projects/{slug}/workspaces/{workspace_id}"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                 "transfer-encoding", "upgrade", "host", "content-length", "content-encoding", "authorization",
                 "cookie"})
HUB_COOKIES = (SESSION_COOKIE, CSRF_COOKIE)


def _target(hub: Hub, cookies: dict[str, str], ip: str | None, slug: str, workspace_id: str) -> service.Target:
    with transaction(hub.sessions) as db:
        ws = identity.load_session(db, cookies.get(SESSION_COOKIE),
                                   idle_minutes=hub.settings.security.session_idle_minutes)
        user = db.get(User, ws.user_id) if ws is not None and ws.stage == "active" else None
        if ws is None or user is None or not user.is_active:
            raise NotFound("no such workspace")
        principal = identity.session_principal(ws, user, ip)
        return service.proxy_target(db, hub.settings, hub.secret, principal, slug, workspace_id)


def _cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items() if k not in HUB_COOKIES)


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


@router.get(PATH, include_in_schema=False)
async def workspace_root(request: Request, slug: str, workspace_id: str) -> Response:
    ip = request.client.host if request.client else None
    await run_in_threadpool(_target, request.app.state.hub, dict(request.cookies), ip, slug, workspace_id)
    return RedirectResponse(f"/projects/{slug}/workspaces/{workspace_id}/lab", status_code=303)


@router.api_route(PATH + "/{path:path}", methods=METHODS, include_in_schema=False)
async def proxy_http(request: Request, slug: str, workspace_id: str, path: str) -> Response:
    hub: Hub = request.app.state.hub
    ip = request.client.host if request.client else None
    if request.method not in SAFE_METHODS and not _same_site(request):
        raise NotFound("no such workspace")  # another site's form or script: Jupyter would take it as ours
    target = await run_in_threadpool(_target, hub, dict(request.cookies), ip, slug, workspace_id)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    if cookie := _cookie_header(dict(request.cookies)):
        headers["cookie"] = cookie
    headers["authorization"] = f"token {target.token}"
    url = f"http://{target.host}:{target.port}{request.url.path}"
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
        out_headers.append((k, v))
    response = Response(scrub(upstream.content, target.token), status_code=upstream.status_code,
                        background=answered)
    for k, v in out_headers:
        response.headers.append(k, v)
    response.headers["Cache-Control"] = "no-store"
    return response


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


@router.websocket(PATH + "/{path:path}")
async def proxy_ws(websocket: WebSocket, slug: str, workspace_id: str, path: str) -> None:
    hub: Hub = websocket.app.state.hub
    ip = websocket.client.host if websocket.client else None
    try:
        if not _same_site(websocket):  # type: ignore[arg-type]  # cross-site websocket hijacking
            raise NotFound("no such workspace")
        target = await run_in_threadpool(_target, hub, dict(websocket.cookies), ip, slug, workspace_id)
    except DomainError:
        await websocket.send_denial_response(Response("not found", status_code=404, media_type="text/plain"))
        return
    query = _upstream_query(websocket)
    url = f"ws://{target.host}:{target.port}{websocket.url.path}" + (f"?{query}" if query else "")
    headers: dict[str, str] = {"Authorization": f"token {target.token}"}
    if cookie := _cookie_header(dict(websocket.cookies)):
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
