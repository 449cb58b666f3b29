"""Federation API: this hub's identity for partners (public) and the operators' peer registry
(``/api/v1/federation/peers``: admin token; changes need a fresh second factor)."""

from __future__ import annotations

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ..deps import Admin, Db, HubDep
from ..schemas import Out
from . import service
from .models import Peer

router = APIRouter(prefix="/api/v1/federation", tags=["federation"])
NAME_PATH = Path(pattern=service.NAME.pattern, description="the peer's short name")


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


@router.get("/hub", response_model=HubOut, summary="This hub as a partner registers it (public keys, issuer)")
def hub_identity(db: Db, hub: HubDep) -> HubOut:
    return HubOut(**service.identity(hub, db))


@router.get("/peers", response_model=list[PeerOut], summary="Registered peer hubs (operators)")
def list_peers(db: Db, principal: Admin) -> list[PeerOut]:
    service.require_operator(principal)
    return [_peer_out(p) for p in service.peers(db)]


@router.post("/peers", response_model=PeerOut, status_code=201,
          summary="Register a peer hub (operators, fresh MFA): its pinned keys, visa issuer and directions")
def register_peer(db: Db, hub: HubDep, principal: Admin, body: PeerIn) -> PeerOut:
    return _peer_out(service.register_peer(db, hub.settings, principal, body.model_dump()))


@router.put("/peers/{name}", response_model=PeerOut, summary="Change a peer's directions or suspend it (fresh MFA)")
def change_peer(db: Db, hub: HubDep, principal: Admin, body: PeerChange,
                name: str = NAME_PATH) -> PeerOut:
    return _peer_out(service.set_peer(db, hub.settings, principal, name, **body.model_dump()))


@router.delete("/peers/{name}", status_code=204, response_class=Response,
            summary="Forget a peer and what was harvested from it (fresh MFA)")
def delete_peer(db: Db, hub: HubDep, principal: Admin, name: str = NAME_PATH) -> Response:
    service.remove_peer(db, hub.settings, principal, name)
    return Response(status_code=204)


