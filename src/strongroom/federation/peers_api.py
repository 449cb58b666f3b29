"""Federation API: this hub's identity for partners (public) and the operators' peer registry
(``/api/v1/federation/peers``: admin token; changes need a fresh second factor)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import Field

from ..deps import Admin, DataWrite, Db, HubDep
from ..errors import NotFound
from ..schemas import Body, Int32, Out
from . import service, sync
from .models import Peer, SyncRun

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


# The service's models with the API's rules for a body (schemas.Body): NUL refused, JSON types taken as sent.
class PeerIn(service.PeerFields, Body):
    pass


class PeerIdentityIn(service.PeerIdentity, Body):
    pass


class PeerChange(Body):
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


@router.put("/peers/{name}/identity", response_model=PeerOut,
            summary="Pin a peer's new identity (after it rotated a key or moved; fresh MFA), keeping what it has")
def repin_peer(db: Db, hub: HubDep, principal: Admin, body: PeerIdentityIn,
               name: str = NAME_PATH) -> PeerOut:
    return _peer_out(service.repin_peer(db, hub.settings, principal, name, body.model_dump()))


@router.delete("/peers/{name}", status_code=204, response_class=Response,
            summary="Forget a peer and what was harvested from it (fresh MFA)")
def delete_peer(db: Db, hub: HubDep, principal: Admin, name: str = NAME_PATH) -> Response:
    service.remove_peer(db, hub.settings, principal, name)
    return Response(status_code=204)




class SyncIn(Body):
    dataset: str = Field(min_length=1, max_length=32, description="the dataset's accession")
    peer: str = Field(pattern=service.NAME.pattern, description="the peer hub to push to")
    version: Int32 | None = Field(default=None, ge=1, description="one released version; all when left out")


class SyncOut(Out):
    id: str
    dataset: str
    peer: str
    version: int | None
    state: str = Field(description="queued | running | done | failed (resumed by the next attempt) | refused")
    files_total: int
    files_done: int
    bytes_total: int
    bytes_done: int
    error: str | None


def _sync_out(db: Db, run: SyncRun) -> SyncOut:
    peer = db.get(Peer, run.peer_id)
    return SyncOut(id=str(run.id), dataset=run.dataset_id, peer=peer.name if peer else "", version=run.version,
                   state=run.state, files_total=run.files_total, files_done=run.files_done,
                   bytes_total=run.bytes_total, bytes_done=run.bytes_done, error=run.error)


@router.post("/syncs", response_model=SyncOut, status_code=202,
             summary="Push a released dataset to a peer hub (operators or the dataset's PI, fresh MFA)")
def start_sync(db: Db, hub: HubDep, principal: DataWrite, body: SyncIn) -> SyncOut:
    run = sync.start_sync(db, hub.settings, principal, body.dataset, body.peer, body.version)
    sync.enqueue(db, run)
    return _sync_out(db, run)


@router.get("/syncs/{sync_id}", response_model=SyncOut, summary="A push's progress")
def get_sync(db: Db, principal: DataWrite, sync_id: uuid.UUID) -> SyncOut:
    from ..archive.models import Dataset

    run = db.get(SyncRun, sync_id)
    dataset = db.get(Dataset, run.dataset_id) if run else None
    if run is None or dataset is None or not sync.may_push(db, principal, dataset):
        raise NotFound("no such push")
    return _sync_out(db, run)
