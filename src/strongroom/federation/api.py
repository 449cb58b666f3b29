"""Federation API: the public GA4GH Beacon v2 (``/ga4gh/beacon/v2``), this hub's identity for partners, the
operators' peer registry (``/api/v1/federation/peers``) and the signed hub-to-hub endpoints
(``/api/v1/federation/peer/…``: signed requests of registered peers only, kept out of /openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..deps import Admin, Db, HubDep, client_ip
from ..schemas import Out
from . import beacon, service
from .models import Peer

router = APIRouter(prefix="/ga4gh/beacon/v2", tags=["GA4GH Beacon v2"])
api = APIRouter(prefix="/api/v1/federation", tags=["federation"])
peer_api = APIRouter(prefix=service.PEER_PATH)

Granularity = Literal["boolean", "count", "record"]
BeaconDoc = dict[str, Any]
FILTERS = Query("", max_length=2000, pattern=r"^[^\x00-\x1f]*$",
                description="filtering term ids (CURIEs from /filtering_terms), comma-separated; all must match")
NAME_PATH = Path(pattern=service.NAME.pattern, description="the peer's short name")
GRANULARITY = Query("count", description="boolean or count; a request for records is answered with counts")


def _filters(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()][:20]


def _signed_by(request: Request, db: Db, hub: HubDep, what: str) -> None:
    """A beacon question may come signed from a peer (federated search): then the signature must hold, and
    the question is audited as a peer's."""
    service.verify_request(db, hub.settings, method=request.method, path=request.url.path,
                           query=request.scope.get("query_string", b"").decode("latin-1"),
                           headers=request.headers, body=b"", what=what, ip=client_ip(request), required=False)


@router.get("", response_model=BeaconDoc, summary="Beacon info (beaconInfoResponse)")
@router.get("/info", response_model=BeaconDoc, summary="Beacon info (beaconInfoResponse)")
def info(hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).info()


@router.get("/service-info", response_model=BeaconDoc, summary="GA4GH service-info of the Beacon")
def service_info(hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).service_info()


@router.get("/configuration", response_model=BeaconDoc, summary="Beacon configuration (beaconConfigurationResponse)")
def configuration(hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).configuration()


@router.get("/map", response_model=BeaconDoc, summary="Beacon map of endpoints (beaconMapResponse)")
def beacon_map(hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).map()


@router.get("/entry_types", response_model=BeaconDoc, summary="Entry types: dataset and imagingStudy")
def entry_types(hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).entry_types_response()


@router.get("/filtering_terms", response_model=BeaconDoc,
            summary="Filtering terms present in the published data (DICOM modality, SNOMED CT body part, ICD-10)")
def filtering_terms(db: Db, hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).filtering_terms(service.studies(db))


class FilterIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=200)


class QueryIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    filters: list[FilterIn | str] = Field(default_factory=list, max_length=20)
    requestedGranularity: Granularity = "count"  # noqa: N815 (the Beacon's name)
    testMode: bool = False  # noqa: N815


class RequestIn(BaseModel):
    """A beaconRequestBody: ``query.filters`` (ids or {id}), ``query.requestedGranularity``."""

    model_config = ConfigDict(extra="allow")
    meta: dict[str, Any] = Field(default_factory=dict)
    query: QueryIn = Field(default_factory=QueryIn)


def _answer(db: Db, hub: HubDep, entry_type: str, filters: list[str], granularity: str, test: bool) -> BeaconDoc:
    return service.beacon_of(hub.settings).query(entry_type, service.studies(db), filters, requested=granularity,
                                                 test_mode=test)


def _ids(body: RequestIn) -> list[str]:
    return [f if isinstance(f, str) else f.id for f in body.query.filters][:20]


@router.get("/datasets", response_model=BeaconDoc,
            summary="Published datasets with an imaging study matching the filters (boolean or count)")
def datasets(request: Request, db: Db, hub: HubDep, filters: str = FILTERS,
             requestedGranularity: Granularity = GRANULARITY, testMode: bool = False) -> BeaconDoc:  # noqa: N803
    _signed_by(request, db, hub, "beacon:dataset")
    return _answer(db, hub, beacon.DATASET, _filters(filters), requestedGranularity, testMode)


@router.post("/datasets", response_model=BeaconDoc, summary="The same question as a beaconRequestBody")
def datasets_post(db: Db, hub: HubDep, body: RequestIn) -> BeaconDoc:
    return _answer(db, hub, beacon.DATASET, _ids(body), body.query.requestedGranularity, body.query.testMode)


@router.get("/imaging_studies", response_model=BeaconDoc,
            summary="Imaging studies of published datasets matching the filters (boolean or count)")
def imaging_studies(request: Request, db: Db, hub: HubDep, filters: str = FILTERS,
                    requestedGranularity: Granularity = GRANULARITY, testMode: bool = False) -> BeaconDoc:  # noqa: N803
    _signed_by(request, db, hub, "beacon:imagingStudy")
    return _answer(db, hub, beacon.STUDY, _filters(filters), requestedGranularity, testMode)


@router.post("/imaging_studies", response_model=BeaconDoc, summary="The same question as a beaconRequestBody")
def imaging_studies_post(db: Db, hub: HubDep, body: RequestIn) -> BeaconDoc:
    return _answer(db, hub, beacon.STUDY, _ids(body), body.query.requestedGranularity, body.query.testMode)


# -- this hub, and its peers (operators) --------------------------------------------------------------
class HubOut(Out):
    name: str
    base_url: str
    beacon_url: str
    signing_key: str = Field(description="the hub signing key (Ed25519 public key, PEM): peers pin it")
    key_id: str
    archive_key: str = Field(description="the archive's crypt4gh public key")
    visa_issuer: str
    jwks_url: str


class PeerOut(Out):
    name: str
    base_url: str
    key_id: str
    visa_issuer: str
    jwks_url: str
    outbound: bool
    inbound: bool
    active: bool
    last_harvest_at: str | None
    last_harvest_error: str | None


class PeerIn(service.PeerFields):
    pass


class PeerChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outbound: bool
    inbound: bool
    active: bool


def _peer_out(p: Peer) -> PeerOut:
    return PeerOut(name=p.name, base_url=p.base_url, key_id=p.key_id, visa_issuer=p.visa_issuer,
                   jwks_url=p.jwks_url, outbound=p.outbound, inbound=p.inbound, active=p.active,
                   last_harvest_at=p.last_harvest_at.isoformat() if p.last_harvest_at else None,
                   last_harvest_error=p.last_harvest_error)


@api.get("/hub", response_model=HubOut, summary="This hub as a partner registers it (public keys, issuer)")
def hub_identity(db: Db, hub: HubDep) -> HubOut:
    return HubOut(**service.identity(hub, db))


@api.get("/peers", response_model=list[PeerOut], summary="Registered peer hubs (operators)")
def list_peers(db: Db, principal: Admin) -> list[PeerOut]:
    service.require_operator(principal)
    return [_peer_out(p) for p in service.peers(db)]


@api.post("/peers", response_model=PeerOut, status_code=201,
          summary="Register a peer hub (operators, fresh MFA): its pinned keys, visa issuer and directions")
def register_peer(db: Db, hub: HubDep, principal: Admin, body: PeerIn) -> PeerOut:
    return _peer_out(service.register_peer(db, hub.settings, principal, body.model_dump()))


@api.put("/peers/{name}", response_model=PeerOut, summary="Change a peer's directions or suspend it (fresh MFA)")
def change_peer(db: Db, hub: HubDep, principal: Admin, body: PeerChange,
                name: str = NAME_PATH) -> PeerOut:
    return _peer_out(service.set_peer(db, hub.settings, principal, name, **body.model_dump()))


@api.delete("/peers/{name}", status_code=204, response_class=Response,
            summary="Forget a peer and what was harvested from it (fresh MFA)")
def delete_peer(db: Db, hub: HubDep, principal: Admin, name: str = NAME_PATH) -> Response:
    service.remove_peer(db, hub.settings, principal, name)
    return Response(status_code=204)


# -- hub to hub (signed) -----------------------------------------------------------------------------
def _verified(request: Request, db: Db, hub: HubDep, what: str) -> Peer:
    peer = service.verify_request(db, hub.settings, method=request.method, path=request.url.path,
                                  query=request.scope.get("query_string", b"").decode("latin-1"),
                                  headers=request.headers, body=b"", what=what, ip=client_ip(request))
    assert peer is not None
    return peer


@peer_api.get("/hello")
def hello(request: Request, db: Db, hub: HubDep) -> JSONResponse:
    """A signed greeting: proves both hubs' keys and addresses are registered on this side."""
    peer = _verified(request, db, hub, "hello")
    return JSONResponse({"hub": service.base(hub.settings), "peer": peer.name, "verified": True})


@peer_api.get("/catalog.ttl")
def peer_catalog(request: Request, db: Db, hub: HubDep) -> Response:
    """The public DCAT catalogue (published entries only), for a peer's harvest."""
    from ..catalog import dcat, fair

    _verified(request, db, hub, "catalog")
    cat, entries = fair.catalog_facts(db, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
    return Response(dcat.serialize(dcat.catalog_graph(cat, entries), "turtle"), media_type="text/turtle")
