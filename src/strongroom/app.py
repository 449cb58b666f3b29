"""The FastAPI application factory: middleware, error handling and the routers the capabilities
declare (`capabilities.py`)."""

from __future__ import annotations

import gc
import importlib.util
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import iter_route_contexts
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, decision_cache, openapi
from .archive.storage.errors import StorageUnavailable
from .config import Settings, get_settings
from .db import is_busy
from .deps import CSRF_COOKIE, SESSION_COOKIE, LoginRequired, cookie_name, read_cookie, set_cookie
from .errors import DomainError, Invalid, TooManyRequests
from .hub import Hub
from .ops.api import HTTP_REQUESTS, HTTP_SECONDS
from .schemas import INT64_MAX, whole_number
from .web.templating import templates

log = structlog.get_logger("strongroom.http")
STATIC_DIR = Path(__file__).parent / "web" / "static"
API_PREFIXES = ("/api/", "/ga4gh/", "/dicomweb/", "/openapi.json", "/.well-known/")
PRIVATE_PREFIXES = ("/api/", "/ga4gh/", "/dicomweb/")  # never stored by a browser or proxy cache
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


DRS_PREFIX = "/ga4gh/drs/"
# ``await handler(scope, receive, send) -> bool``: a capability's pure-ASGI answer to a request it can serve
# without routing (True: answered). Runs inside ``observe`` (its headers, metrics and log line apply), before the
# router; the catalogue serves its cached public landing pages here (catalog/fast_path.py).
PRE_ROUTING: list[Any] = []


def error_for(path: str, status: int, title: str, detail: str, code: str, **extra: Any) -> JSONResponse:
    """An API error: RFC 9457 everywhere, except the GA4GH DRS routes, which answer the DRS ``Error``
    schema (``msg``, ``status_code``) as DRS clients expect; there an invalid request is 400, as in
    the DRS specification, not 422."""
    if not path.startswith(DRS_PREFIX):
        return problem(status, title, detail, code, **extra)
    status = 400 if status == 422 else status
    return JSONResponse({"msg": detail, "status_code": status}, status_code=status)


class PreRoutingMiddleware:
    """Offers each ``PRE_ROUTING`` handler an HTTP request before the router sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for handler in PRE_ROUTING:
                if await handler(scope, receive, send):
                    return
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over the limit, whether declared by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int,
                 large: Sequence[tuple[str, re.Pattern[str], int]] = ()) -> None:
        self.app, self.max_bytes, self.large = app, max_bytes, large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        for method, pattern, larger in self.large:  # routes that stream their body and need more
            if scope["method"] == method and pattern.match(scope["path"]):
                limit = larger
                break
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not self._declared_within(declared, limit):
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
        except BaseExceptionGroup as group:  # raised while a body streams, through a task group's receive
            too_large, rest = group.split(BodyTooLarge)
            if too_large is None or rest is not None:
                raise
            if not started:
                await self._refuse(scope, receive, send, limit)

    @staticmethod
    def _declared_within(declared: bytes, limit: int) -> bool:
        """A Content-Length of ASCII digits no larger than the limit (thousands of digits would make int() fail)."""
        try:
            return whole_number(declared, "Content-Length", minimum=0, maximum=INT64_MAX) <= limit
        except Invalid:
            return False

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response: Response
        if scope["path"].startswith(API_PREFIXES):
            response = error_for(scope["path"], 413, "Request body too large", f"the limit is {limit} bytes",
                                 "body-too-large")
        else:  # a form in a browser: say it in words, and where big files go instead
            response = HTMLResponse(
                '<!doctype html><html lang="en"><title>Too large</title><link rel="stylesheet" '
                'href="/static/style.css"><main id="main"><h1>Too large</h1><p role="alert">The form is '
                f"larger than the {limit // 1024} KiB a page accepts. Upload large files with "
                "<code>strongroom upload</code>, which encrypts them on your machine.</p>"
                '<p><a href="/">Back to the start</a></p></main></html>', status_code=413)
        await response(scope, receive, send)


API_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Strongroom API</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/static/swagger-ui/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/static/swagger-ui/swagger-ui-bundle.js"></script>
  <script src="/static/api-docs.js"></script>
</body>
</html>
"""
# Swagger UI ships inside the swagger-ui-py wheel: served from this hub, it works offline and under
# the ordinary CSP (the initialiser is our static api-docs.js, not an inline script).
SWAGGER_UI_FILES = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript",
                    "LICENSE": "text/plain"}


def _swagger_ui_dir() -> Path:
    spec = importlib.util.find_spec("swagger_ui")  # locate without importing its framework handlers
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is missing; reinstall strongroom")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _add_api_docs(app: FastAPI) -> None:
    assets = _swagger_ui_dir()

    @app.get("/api/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return HTMLResponse(API_DOCS_PAGE)

    @app.get("/static/swagger-ui/{name}", include_in_schema=False)
    def swagger_asset(name: str) -> Response:
        if name not in SWAGGER_UI_FILES:
            raise StarletteHTTPException(404, "Not Found")
        return FileResponse(assets / name, media_type=SWAGGER_UI_FILES[name],
                            headers={"Cache-Control": "public, max-age=86400"})


def _form_errors(errors: list[dict[str, Any]]) -> str:
    """Validation errors of a submitted form as one sentence naming the fields ("end date: …")."""
    said = []
    for e in errors:
        field = " ".join(str(part) for part in e["loc"][1:]).replace("_", " ") or "the form"
        said.append(f"{field}: {str(e['msg']).replace('Input should be', 'should be')}")
    return "The form was not accepted. " + "; ".join(dict.fromkeys(said)) + "."


def _invalid_detail(path: str, errors: list[dict[str, Any]]) -> str:
    if not path.startswith(DRS_PREFIX):
        return "the request does not match the expected shape"
    # a DRS Error has only its message to say which field was wrong
    said = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5]]
    return "the request does not match the expected shape: " + "; ".join(said)


def _allowed_methods(app: FastAPI, scope: Scope) -> str:
    """Every method some route serves at this path. Starlette's own 405 names only the first
    route that matched the path, though GET and DELETE of one URL are often separate routes."""
    methods: set[str] = set()
    for route in iter_route_contexts(app.routes):
        pattern = getattr(route, "path_regex", None)
        if pattern is not None and pattern.match(scope["path"]):
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


_FROZEN = False


def _freeze_startup_objects() -> None:
    """Once per process, when the first app has started: everything built so far (modules, routes, mappers, the
    hub) lives as long as the process, so it is moved out of the cyclic collector's reach (``gc.freeze``) and a
    collection a request triggers does not walk it again. Once only: a process that builds many apps (the tests)
    does not keep each one's garbage."""
    global _FROZEN
    if not _FROZEN:
        _FROZEN = True
        gc.collect()
        gc.freeze()


def _back_to(request: Request) -> str:
    """Where re-authenticating returns to: the page itself for a GET; for a form's post, the page the form was
    on (a same-origin Referer), since the post's own address may answer POST only (405 after the login)."""
    if request.method != "GET" and (referer := request.headers.get("referer")):
        page = urlsplit(referer)
        if page.netloc == request.url.netloc and page.path.startswith("/") and not page.path.startswith("//"):
            return page.path + (f"?{page.query}" if page.query else "")
    return request.url.path


def create_app(settings: Settings | None = None, *, run_jobs: bool | None = None) -> FastAPI:
    from .access.visas_api import PassportMiddleware
    from .capabilities import registry
    from .workspaces.proxy import WorkspaceOrigin

    settings = settings or get_settings()
    hub = Hub.from_settings(settings)
    run_jobs = settings.jobs.embedded if run_jobs is None else run_jobs

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from .archive.keys import ensure_key
        from .audit import outbox

        try:
            ensure_key(hub)
        except Exception as exc:  # start anyway: /readyz reports the database, uploads wait
            log.error("startup.archive_key_unavailable", error=type(exc).__name__)
        outbox.resume(hub)  # audit events a process on this host could not write before it stopped
        runner = None
        if run_jobs:
            from .jobs.runner import Runner

            runner = Runner(hub, lease_seconds=settings.jobs.lease_seconds,
                            poll_seconds=settings.jobs.poll_seconds, extra_modules=settings.jobs.extra_modules)
            runner.start_thread()
        app.state.runner = runner
        _freeze_startup_objects()
        yield
        if runner is not None:
            runner.stop()

    app = FastAPI(title="Strongroom", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.hub = hub
    app.state.runner = None
    engine = hub.sessions.kw["bind"]
    use_cache = settings.security.decision_cache
    if use_cache if use_cache is not None else engine.dialect.name == "sqlite":  # see config.SecuritySettings
        decision_cache.enable(engine)

    registry().install_routers(app)  # every capability's routers, in capabilities.CAPABILITIES order
    _add_api_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    openapi.install(app)  # documents the error responses every operation can really give

    csp = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
           "frame-ancestors 'none'; form-action 'self' " + (settings.oidc.issuer or "")).strip()

    app.add_middleware(PreRoutingMiddleware)  # added before observe, so it runs inside it
    # The workspaces' own origin (by Host) reaches the workspace proxy and nothing else of the hub, the pre-routed
    # pages included; a notebook's pages never run on the hub's origin. Refused: one on the hub's own host.
    app.add_middleware(WorkspaceOrigin, where=settings.workspaces.browser_origin(settings.base_url))

    session_cookie_set = cookie_name(settings, SESSION_COOKIE).encode() + b"="  # a Set-Cookie issuing a session

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        if "\x00" in request.url.path or "\x00" in unquote_plus(request.url.query):
            # no database text can hold U+0000: refuse it here rather than fail in the driver
            response: Response = error_for(request.url.path, 422, "Invalid request",
                                           "the address contains a NUL character", "invalid")
        else:
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
        # One policy for every page, the API docs included: no inline script or style anywhere.
        headers.setdefault("Content-Security-Policy", csp)
        path = request.url.path
        if path.startswith(PRIVATE_PREFIXES):
            headers["Cache-Control"] = "no-store"  # API answers carry personal data
        elif read_cookie(request, SESSION_COOKIE) is not None or any(
                k == b"set-cookie" and v.startswith(session_cookie_set) for k, v in response.raw_headers):
            # a logged-in (or logging-in) browser: pages may show tokens, codes or a TOTP seed
            headers.setdefault("Cache-Control", "no-store")
        new_cookie = getattr(request.state, "new_csrf_cookie", None)
        if new_cookie:
            set_cookie(response, settings, CSRF_COOKIE, new_cookie, samesite="strict")
        return response

    app.add_middleware(PassportMiddleware)  # verifies X-GA4GH-Passport visas for the read check
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.security.max_body_bytes, large=[
        # upload parts: the route streams and checks the size itself
        ("PUT", re.compile(r"^/api/v1/uploads/[^/]+/parts/\d+$"), settings.archive.part_size + 65536),
        # a bundle of small files: at most one part's worth, plus its manifest
        ("POST", re.compile(r"^/api/v1/projects/[^/]+/bundles$"), settings.archive.part_size + 2 * 1048576),
        # STOW-RS: a study streamed part by part into the spool, never held in memory
        ("POST", re.compile(r"^/dicomweb/projects/[^/]+/studies(/[^/]+)?$"), settings.dicomweb.stow_max_bytes),
    ])

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> Response:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else {}
        if exc.status == 401 and _wants_json(request):
            headers["WWW-Authenticate"] = 'Bearer realm="strongroom"'  # RFC 9110: a 401 names its scheme
        if _wants_json(request):
            response = error_for(request.url.path, exc.status, exc.code.replace("-", " ").capitalize(), exc.detail,
                                 exc.code, **{k: v for k, v in exc.extra.items() if k != "retry_after"})
            response.headers.update(headers)
            return response
        if exc.code == "mfa-required" and exc.extra.get("reauthenticate"):
            return RedirectResponse(f"/login/reauth?next={quote(_back_to(request))}", status_code=303)
        return templates.TemplateResponse(request, "error.html",
                                          {"status": exc.status, "detail": exc.detail},
                                          status_code=exc.status, headers=headers)

    @app.exception_handler(StorageUnavailable)
    async def storage_down(request: Request, exc: StorageUnavailable) -> Response:
        log.warning("storage.unavailable", error=str(exc))
        return error_for(request.url.path, 503, "Storage unavailable",
                         "object storage cannot be reached right now; retry shortly", "storage-unavailable")

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> Response:
        if not is_busy(exc):
            return await unexpected(request, exc)
        # Another writer held the lock longer than a request may wait: say so, and when to retry,
        # instead of a 500 (or a request that hangs until a 30 s timeout).
        log.warning("database.busy", route=getattr(request.scope.get("route"), "path", "?"))
        headers = {"Retry-After": str(BUSY_RETRY_AFTER)}
        if _wants_json(request):
            response = error_for(request.url.path, 503, "Database busy",
                                 "the database is busy with other writes; retry shortly", "database-busy")
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
            return error_for(request.url.path, 400, "Malformed JSON", "the request body is not valid JSON",
                             "malformed-json", errors=errors)
        if not _wants_json(request):  # a browser's form: say which field, in words, on a page
            return templates.TemplateResponse(request, "error.html", {"status": 422, "detail": _form_errors(errors)},
                                              status_code=422)
        return error_for(request.url.path, 422, "Invalid request", _invalid_detail(request.url.path, errors),
                         "invalid", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # The exception's headers are part of the answer (WWW-Authenticate, Retry-After, Allow).
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(app, request.scope)
        if _wants_json(request):
            response = error_for(request.url.path, exc.status_code, str(exc.detail), str(exc.detail),
                                 "not-found" if exc.status_code == 404 else f"http-{exc.status_code}")
            response.headers.update(headers)
            return response
        return templates.TemplateResponse(request, "error.html",
                                          {"status": exc.status_code, "detail": exc.detail},
                                          status_code=exc.status_code, headers=headers)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(exc.next_url)}", status_code=303)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("http.unhandled", route=getattr(request.scope.get("route"), "path", "?"),
                  error=type(exc).__name__)
        return error_for(request.url.path, 500, "Internal error",
                         "something went wrong on our side; it has been logged", "internal")

    return app
