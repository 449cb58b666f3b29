"""Operations endpoints: liveness, readiness (database reachable), Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..audit import service as audit
from ..db import WEB_BUSY_TIMEOUT_MS, open_session
from ..identity.secrets import equal_secrets

router = APIRouter(tags=["operations"])

HTTP_REQUESTS = Counter("strongroom_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histogram("strongroom_http_request_seconds", "HTTP request duration", ["method", "route"])


@router.get("/healthz", summary="Liveness: the process serves requests")
async def healthz() -> dict[str, str]:
    # On the event loop, not in the worker threads: it answers even while every thread waits on a
    # database lock. It never touches the database.
    return {"status": "ok", "version": __version__}


@router.get("/readyz", summary="Readiness: the database answers, and this process holds the hub's current secret",
            responses={503: {"description": "not ready", "content": {"application/json": {}}}})
def readyz(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    try:
        with open_session(hub.sessions, deferred=True, busy_timeout_ms=WEB_BUSY_TIMEOUT_MS) as session:
            stale = audit.holds_rotated_secret(session)  # a read: it takes no write lock
    except Exception as exc:  # any failure means not ready
        return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
    if stale:
        # After a rotation of the hub secret a process still holding the old one can write nothing: out of service.
        return JSONResponse({"status": "stale-secret", "database": "ok"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


def metrics_allowed(request: Request) -> bool:
    """Whether the request carries ``Authorization: Bearer <[ops] metrics_token>`` (compared in constant time).
    Without a configured token nobody is: the figures (routes, statuses, request counts) are the operator's."""
    token = request.app.state.hub.settings.ops.metrics_token.get_secret_value()
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and equal_secrets(sent.strip(), token)


@router.get("/metrics", summary="Prometheus metrics (for the bearer token [ops] metrics_token only)",
            response_class=Response,
            description="Needs `Authorization: Bearer <metrics_token>` (the `[ops] metrics_token` setting, not an "
                        "API token). Without it, or while no token is configured, the answer is 404 as for a path "
                        "that does not exist.",
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"},
                       # the answer of a path that does not exist: a page for a browser, a problem for anyone else
                       404: {"content": {"application/problem+json": {}, "text/html": {}},
                             "description": "Not found: no metrics token configured, or not the one sent"}})
def metrics(request: Request) -> Response:
    if not metrics_allowed(request):
        raise StarletteHTTPException(404, "Not Found")  # what a path that does not exist answers
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
