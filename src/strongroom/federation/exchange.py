"""Hub-to-hub endpoints (``/api/v1/federation/peer/…``): signed requests of registered, active, inbound peers
only (``service.verify_request``), audited; kept out of /openapi.json (they are for hubs, not clients)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..deps import Db, HubDep, client_ip
from . import service
from .models import Peer

router = APIRouter(prefix=service.PEER_PATH)


def _verified(request: Request, db: Db, hub: HubDep, what: str) -> Peer:
    peer = service.verify_request(db, hub.settings, method=request.method, path=request.url.path,
                                  query=request.scope.get("query_string", b"").decode("latin-1"),
                                  headers=request.headers, body=b"", what=what, ip=client_ip(request))
    assert peer is not None
    return peer


@router.get("/hello")
def hello(request: Request, db: Db, hub: HubDep) -> JSONResponse:
    """A signed greeting: proves both hubs' keys and addresses are registered on this side."""
    peer = _verified(request, db, hub, "hello")
    return JSONResponse({"hub": service.base(hub.settings), "peer": peer.name, "verified": True})


@router.get("/catalog.ttl")
def peer_catalog(request: Request, db: Db, hub: HubDep) -> Response:
    """The public DCAT catalogue (published entries only), for a peer's harvest."""
    from ..catalog import dcat, fair

    _verified(request, db, hub, "catalog")
    cat, entries = fair.catalog_facts(db, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
    return Response(dcat.serialize(dcat.catalog_graph(cat, entries), "turtle"), media_type="text/turtle")
