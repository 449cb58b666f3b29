"""Operations endpoints: liveness, readiness (database reachable), Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import text

from .. import __version__

router = APIRouter(tags=["operations"])

HTTP_REQUESTS = Counter("strongroom_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histogram("strongroom_http_request_seconds", "HTTP request duration", ["method", "route"])


@router.get("/healthz", summary="Liveness: the process serves requests")
def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/readyz", summary="Readiness: the database answers",
            responses={503: {"description": "not ready", "content": {"application/json": {}}}})
def readyz(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    try:
        with hub.sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}})
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
