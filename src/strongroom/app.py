"""The FastAPI application factory: middleware, error handling and every capability's routers."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .archive.storage import StorageUnavailable
from .config import Settings, get_settings
from .db import is_busy
from .deps import CSRF_COOKIE, LoginRequired
from .errors import DomainError, TooManyRequests
from .hub import Hub
from .ops.api import HTTP_REQUESTS, HTTP_SECONDS
from .web.templating import templates

log = structlog.get_logger("strongroom.http")
STATIC_DIR = Path(__file__).parent / "web" / "static"
API_PREFIXES = ("/api/", "/ga4gh/", "/openapi.json", "/.well-known/")
BUSY_RETRY_AFTER = 2  # seconds; a busy database usually frees within one web busy timeout

DESCRIPTION = """\
Strongroom's HTTP API. Authenticate with an API token from your account page:
`Authorization: Bearer sr_…`. Errors are RFC 9457 problem documents. Anything outside your
projects answers 404.
"""


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIXES) or "application/json" in request.headers.get("accept", "")


def problem(status: int, title: str, detail: str, code: str, **extra: Any) -> JSONResponse:
    body = {"type": f"https://strongroom.dev/problems/{code}", "title": title, "status": status,
            "detail": detail, "code": code, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over the limit, whether declared by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int, large: tuple[re.Pattern[str], int] | None = None) -> None:
        self.app, self.max_bytes, self.large = app, max_bytes, large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        if self.large and self.large[0].match(scope["path"]):
            limit = self.large[1]  # upload parts: the route streams and checks the size itself
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._refuse(scope, receive, send, limit)
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response: Response
        if scope["path"].startswith(API_PREFIXES):
            response = problem(413, "Request body too large", f"the limit is {limit} bytes", "body-too-large")
        else:  # a form in a browser: say it in words, and where big files go instead
            response = HTMLResponse(
                '<!doctype html><html lang="en"><title>Too large</title><link rel="stylesheet" '
                'href="/static/style.css"><main id="main"><h1>Too large</h1><p role="alert">The form is '
                f"larger than the {limit // 1024} KiB a page accepts. Upload large files with "
                "<code>strongroom upload</code>, which encrypts them on your machine.</p>"
                '<p><a href="/">Back to the start</a></p></main></html>', status_code=413)
        await response(scope, receive, send)


def create_app(settings: Settings | None = None, *, run_jobs: bool | None = None) -> FastAPI:
    from .access import grants as _grants  # noqa: F401 - entitlements open the archive
    from .access.api import router as access_api
    from .access.visas_api import PassportMiddleware
    from .access.visas_api import router as visas_api
    from .access.web import router as access_web
    from .archive.api import router as archive_api
    from .archive.drs import router as drs_api
    from .archive.web import router as archive_web
    from .audit.api import router as audit_api
    from .catalog.api import router as catalog_api
    from .catalog.web import router as catalog_web
    from .identity.api import router as identity_api
    from .identity.web import router as identity_web
    from .imaging.api import router as imaging_api
    from .imaging.web import router as imaging_web
    from .jobs.api import router as jobs_api
    from .notify.api import router as notify_api
    from .ops.api import router as ops_router
    from .projects.api import router as projects_api
    from .projects.web import router as projects_web
    from .web.pages import router as pages

    settings = settings or get_settings()
    hub = Hub.from_settings(settings)
    run_jobs = settings.jobs.embedded if run_jobs is None else run_jobs

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from .archive.keys import ensure_key

        try:
            ensure_key(hub)
        except Exception as exc:  # noqa: BLE001 - start anyway: /readyz reports the database, uploads wait
            log.error("startup.archive_key_unavailable", error=type(exc).__name__)
        runner = None
        if run_jobs:
            from .jobs.runner import Runner

            runner = Runner(hub, lease_seconds=settings.jobs.lease_seconds,
                            poll_seconds=settings.jobs.poll_seconds, extra_modules=settings.jobs.extra_modules)
            runner.start_thread()
        app.state.runner = runner
        yield
        if runner is not None:
            runner.stop()

    app = FastAPI(title="Strongroom", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/api/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.hub = hub
    app.state.runner = None

    for router in (ops_router, identity_api, projects_api, archive_api, drs_api, access_api, audit_api, jobs_api,
                   imaging_api):
        app.include_router(router)
    for router in (pages, identity_web, projects_web, archive_web, access_web, imaging_web):
        app.include_router(router, include_in_schema=False)
    for router in (visas_api, notify_api):
        app.include_router(router)
    app.include_router(catalog_api)
    app.include_router(catalog_web, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - started
        HTTP_REQUESTS.labels(request.method, template, response.status_code).inc()
        HTTP_SECONDS.labels(request.method, template).observe(elapsed)
        # Only the route template is logged: paths and queries may carry codes or identifiers.
        log.info("http.request", method=request.method, route=template, status=response.status_code,
                 ms=round(elapsed * 1000, 1))
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("X-Frame-Options", "DENY")
        if not request.url.path.startswith("/api/docs"):
            headers.setdefault("Content-Security-Policy",
                               "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; frame-ancestors 'none'; form-action 'self' "
                               + (settings.oidc.issuer or ""))
        token = getattr(request.state, "csrf", None)
        if token and request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict",
                                secure=settings.cookie_secure, path="/")
        return response

    app.add_middleware(PassportMiddleware)  # verifies X-GA4GH-Passport visas for the read check
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.security.max_body_bytes,
                       large=(re.compile(r"^/api/v1/uploads/[^/]+/parts/\d+$"),
                              settings.archive.part_size + 65536))

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> Response:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else {}
        if _wants_json(request):
            response = problem(exc.status, exc.code.replace("-", " ").capitalize(), exc.detail, exc.code,
                               **{k: v for k, v in exc.extra.items() if k != "retry_after"})
            response.headers.update(headers)
            return response
        if exc.code == "mfa-required" and exc.extra.get("reauthenticate"):
            return RedirectResponse(f"/login/reauth?next={quote(request.url.path)}", status_code=303)
        return templates.TemplateResponse(request, "error.html",
                                          {"status": exc.status, "detail": exc.detail},
                                          status_code=exc.status, headers=headers)

    @app.exception_handler(StorageUnavailable)
    async def storage_down(request: Request, exc: StorageUnavailable) -> Response:
        log.warning("storage.unavailable", error=str(exc))
        return problem(503, "Storage unavailable", "object storage cannot be reached right now; retry shortly",
                       "storage-unavailable")

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> Response:
        if not is_busy(exc):
            return await unexpected(request, exc)
        # Another writer held the lock longer than a request may wait: say so, and when to retry,
        # instead of a 500 (or a request that hangs until a 30 s timeout).
        log.warning("database.busy", route=getattr(request.scope.get("route"), "path", "?"))
        headers = {"Retry-After": str(BUSY_RETRY_AFTER)}
        if _wants_json(request):
            response = problem(503, "Database busy", "the database is busy with other writes; retry shortly",
                               "database-busy")
            response.headers.update(headers)
            return response
        return templates.TemplateResponse(request, "error.html",
                                          {"status": 503, "detail": "The hub is busy; try again in a moment."},
                                          status_code=503, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                  for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return problem(400, "Malformed JSON", "the request body is not valid JSON", "malformed-json",
                           errors=errors)
        return problem(422, "Invalid request", "the request does not match the expected shape", "invalid",
                       errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _wants_json(request):
            return problem(exc.status_code, str(exc.detail), str(exc.detail),
                           "not-found" if exc.status_code == 404 else f"http-{exc.status_code}")
        return templates.TemplateResponse(request, "error.html",
                                          {"status": exc.status_code, "detail": exc.detail},
                                          status_code=exc.status_code)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(exc.next_url)}", status_code=303)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("http.unhandled", route=getattr(request.scope.get("route"), "path", "?"),
                  error=type(exc).__name__)
        return problem(500, "Internal error", "something went wrong on our side; it has been logged",
                       "internal")

    return app
