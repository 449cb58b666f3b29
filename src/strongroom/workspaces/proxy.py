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

import httpx
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

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
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0)) as client:
        try:
            upstream = await client.request(request.method, url, params=query, headers=headers,
                                            content=await request.body())
        except httpx.HTTPError:
            return Response("the workspace does not answer", status_code=502, media_type="text/plain")
    out_headers: list[tuple[str, str]] = []
    for k, v in upstream.headers.multi_items():
        if k.lower() in HOP or target.token in v:
            continue
        out_headers.append((k, v))
    response = Response(scrub(upstream.content, target.token), status_code=upstream.status_code)
    for k, v in out_headers:
        response.headers.append(k, v)
    response.headers["Cache-Control"] = "no-store"
    return response


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
    query = "&".join(f"{k}={v}" for k, v in websocket.query_params.multi_items() if k != "token")
    url = f"ws://{target.host}:{target.port}{websocket.url.path}" + (f"?{query}" if query else "")
    headers: dict[str, str] = {"Authorization": f"token {target.token}"}
    if cookie := _cookie_header(dict(websocket.cookies)):
        headers["Cookie"] = cookie
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    try:
        upstream = await ws_connect(url, additional_headers=headers, subprotocols=offered or None,  # type: ignore[arg-type]
                                    max_size=None, open_timeout=10, compression=None)
    except (OSError, InvalidStatus, TimeoutError):
        await websocket.send_denial_response(Response("the workspace does not answer", status_code=502,
                                                      media_type="text/plain"))
        return
    await websocket.accept(subprotocol=upstream.subprotocol)
    token = target.token

    async def down() -> None:  # workspace → browser
        async for message in upstream:
            if isinstance(message, bytes):
                await websocket.send_bytes(scrub(message, token))
            else:
                await websocket.send_text(message.replace(token, ""))

    async def up() -> None:  # browser → workspace
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
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
        await upstream.close()
        with contextlib.suppress(RuntimeError):
            await websocket.close()
