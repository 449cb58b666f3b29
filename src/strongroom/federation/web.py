"""Federation pages: the operators' peer registry (/federation/peers: register, change, pin a new identity, remove,
push a dataset
— fresh MFA), a dataset's pushes (/datasets/{id}/federation: push a released version to a peer, for those
``sync.may_push`` allows, fresh MFA; the dataset page links to it) and the federated search
(/federation/search: this hub and every peer's beacon, asked in parallel)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive.models import Dataset, DatasetVersion
from ..deps import CsrfChecked, Db, HubDep, PostedForm, WebPrincipal
from ..errors import NotFound
from ..identity.principal import Principal
from ..schemas import whole_number
from ..web.templating import redirect_with, templates
from . import beacon, service, sync

router = APIRouter()
ENTRY_TYPES = {beacon.STUDY: "Imaging studies", beacon.DATASET: "Datasets"}
IDENTITY = tuple(service.PeerIdentity.model_fields)  # a peer's pinned fields, as the forms name them


@router.get("/federation/peers")
def peers_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal) -> Response:
    service.require_operator(principal)
    return templates.TemplateResponse(request, "federation/peers.html", {
        "peers": service.peers(db), "me": service.identity(hub, db), "pushes": sync.recent(db)})


def _flag(posted: PostedForm, name: str) -> bool:
    return posted.form.get(name) in ("on", "true", "1")


@router.post("/federation/peers", dependencies=[CsrfChecked])
def register(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal) -> Response:
    data = {k: str(posted.form.get(k, "") or "") for k in ("name", *IDENTITY)}
    peer = service.register_peer(db, hub.settings, principal, {**data, "outbound": _flag(posted, "outbound"),
                                                              "inbound": _flag(posted, "inbound")})
    return redirect_with(request, "/federation/peers", f"Peer {peer.name} registered; its key id is {peer.key_id}.")


@router.post("/federation/peers/{name}/identity", dependencies=[CsrfChecked])
def repin(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal, name: str) -> Response:
    """Pin a registered peer's new identity (it rotated a key or moved), keeping its mirrors and entries."""
    data = {k: str(posted.form.get(k, "") or "") for k in IDENTITY}
    peer = service.repin_peer(db, hub.settings, principal, name, data)
    return redirect_with(request, "/federation/peers", f"Peer {peer.name} now pinned to key {peer.key_id}.")


@router.post("/federation/peers/{name}", dependencies=[CsrfChecked])
def change(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
           name: str) -> Response:
    if posted.form.get("action") == "remove":
        service.remove_peer(db, hub.settings, principal, name)
        return redirect_with(request, "/federation/peers", f"Peer {name} removed with its harvested entries.")
    peer = service.set_peer(db, hub.settings, principal, name, outbound=_flag(posted, "outbound"),
                            inbound=_flag(posted, "inbound"), active=_flag(posted, "active"))
    return redirect_with(request, "/federation/peers", f"Peer {peer.name} changed.")


def _version(posted: PostedForm) -> int | None:
    """The released version a push form names, or None for every released version."""
    version = str(posted.form.get("version", "") or "").strip()
    return whole_number(version, "version", minimum=1) if version else None


@router.post("/federation/syncs", dependencies=[CsrfChecked])
def push(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal) -> Response:
    """Push a released dataset to a peer (operators, fresh MFA): a ``federation.sync`` job, progress on the page."""
    service.require_operator(principal)
    version = _version(posted)
    dataset, peer = str(posted.form.get("dataset", "") or "").strip(), str(posted.form.get("peer", "") or "")
    run = sync.start_sync(db, hub.settings, principal, dataset, peer, version)
    sync.enqueue(db, run)
    return redirect_with(request, "/federation/peers", f"Push of {dataset} to {peer} queued; its progress is below.")


def _outbound_peers(session: Session) -> list[str]:
    return [p.name for p in service.peers(session) if p.active and p.outbound]


def dataset_push_link(session: Session, principal: Principal, ds: Dataset) -> list[dict[str, str]]:
    """``archive.web.DATASET_VIEWERS``: the way to push this dataset to a peer hub, for those who may."""
    if not sync.may_push(session, principal, ds) or not _outbound_peers(session) or sync.mirror_origin(session, ds):
        return []
    return [{"href": f"/datasets/{ds.id}/federation", "text": "Push to a peer hub",
             "hint": "a read-only mirror there, access still decided here; the latest pushes and their progress"}]


def _pushable(session: Session, principal: Principal, dataset_id: str) -> Dataset:
    ds = session.get(Dataset, dataset_id)
    if ds is None or not sync.may_push(session, principal, ds):
        raise NotFound("no such dataset")
    sync.refuse_mirror(session, ds)
    return ds


@router.get("/datasets/{dataset_id}/federation")
def dataset_pushes(request: Request, db: Db, principal: WebPrincipal, dataset_id: str) -> Response:
    ds = _pushable(db, principal, dataset_id)
    released = list(db.scalars(select(DatasetVersion.number).where(
        DatasetVersion.dataset_id == ds.id, DatasetVersion.state.in_(sync.PUBLISHED)).order_by(DatasetVersion.number)))
    pushes = sync.recent(db, 20, dataset_id=ds.id)
    return templates.TemplateResponse(request, "federation/dataset.html", {
        "ds": ds, "peers": _outbound_peers(db), "released": released, "pushes": pushes,
        "published": sync.published_entry(db, ds.id) is not None,
        "busy": any(run.state in ("queued", "running") for run, _ in pushes)})


@router.post("/datasets/{dataset_id}/federation/push", dependencies=[CsrfChecked])
def dataset_push(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                 dataset_id: str) -> Response:
    """Push a released version (or all) of this dataset to a peer (``sync.may_push``, fresh MFA): a job."""
    ds = _pushable(db, principal, dataset_id)
    version = _version(posted)
    peer = str(posted.form.get("peer", "") or "")
    run = sync.start_sync(db, hub.settings, principal, ds.id, peer, version)
    sync.enqueue(db, run)
    return redirect_with(request, f"/datasets/{ds.id}/federation",
                         f"Push of {ds.id} to {peer} queued; its progress is below.")


@router.get("/federation/search")
def search(request: Request, db: Db, hub: HubDep, principal: WebPrincipal,
           filters: list[str] = Query(default_factory=list, max_length=20),
           entry_type: str = Query(beacon.STUDY, pattern=f"^({beacon.STUDY}|{beacon.DATASET})$")) -> Response:
    """The terms to choose from are this hub's; a peer that does not know a term answers nothing for it."""
    chosen = [f for f in filters if f][:20]
    asked = bool(request.query_params)
    answers = service.federated_search(db, hub, principal.actor, entry_type, chosen) if asked else []
    return templates.TemplateResponse(request, "federation/search.html", {
        "terms": beacon.terms(service.studies(db)), "chosen": chosen, "entry_type": entry_type,
        "entry_types": ENTRY_TYPES, "answers": answers, "asked": asked})
