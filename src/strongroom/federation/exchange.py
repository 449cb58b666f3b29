"""Hub-to-hub endpoints (``/api/v1/federation/peer/…``): signed requests of registered, active, inbound peers
only (``service.verify_request``), audited; kept out of /openapi.json (they are for hubs, not clients)."""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from .. import bounded_http
from ..db import open_session, transaction
from ..deps import Db, HubDep, client_ip
from ..errors import Invalid, NotFound, Unauthenticated
from ..hub import Hub
from . import manifest, service, signing, sync
from .models import Peer

router = APIRouter(prefix=service.PEER_PATH)


def _verified(request: Request, db: Db, hub: HubDep, what: str) -> Peer:
    peer = service.verify_request(db, hub.settings, method=request.method, path=request.url.path,
                                  query=request.scope.get("query_string", b"").decode("latin-1"),
                                  headers=request.headers, body=b"", what=what, ip=client_ip(request))
    assert peer is not None
    db.commit()  # the nonce is spent whatever happens next (replay protection)
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


# -- dataset sync (a peer pushing a dataset to this hub; see sync.py) ---------------------------------
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def _verify_signed(hub: Hub, request: Request, body: bytes | None, what: str) -> uuid.UUID:
    """The pushing peer (its id), the refusal committed with its audit event when the signature fails."""
    with open_session(hub.sessions) as session:
        try:
            peer = service.verify_request(session, hub.settings, method=request.method, path=request.url.path,
                                          query=request.scope.get("query_string", b"").decode("latin-1"),
                                          headers=request.headers, body=body, what=what, ip=client_ip(request))
        except Unauthenticated:
            session.commit()
            raise
        assert peer is not None
        session.commit()
        return peer.id


def _in_transaction(hub: Hub, peer_id: uuid.UUID, work: Callable[[Session, Peer], dict[str, Any]]) -> dict[str, Any]:
    with transaction(hub.sessions) as session:
        peer = session.get(Peer, peer_id)
        if peer is None:
            raise Unauthenticated("hub-to-hub request refused: the peer is gone")
        return work(session, peer)


async def _small_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_MANIFEST_BYTES:
            raise Invalid("the manifest is too large")
    return bytes(body)


@router.post("/sync/manifest")
async def sync_manifest(request: Request, hub: HubDep) -> JSONResponse:
    """A push begins (or resumes): the origin's signed manifest; answers which bodies this hub already has."""
    body = await _small_body(request)
    peer_id = await anyio.to_thread.run_sync(_verify_signed, hub, request, body, "sync:manifest")
    ip = client_ip(request)
    doc, signature = await anyio.to_thread.run_sync(sync.check_manifest, hub, peer_id, body, ip)
    answer = await anyio.to_thread.run_sync(_in_transaction, hub, peer_id,
                                            lambda s, p: sync.receive_manifest(s, p, doc, signature, ip))
    return JSONResponse(answer)


@router.put("/sync/{sync_id}/files/{file_id}")
async def sync_body(request: Request, hub: HubDep, sync_id: str, file_id: str) -> JSONResponse:
    """One file's body, byte for byte as the origin stores it: hashed as it arrives, then decrypted with this
    hub's archive key to check the plaintext, both against the signed manifest."""
    peer_id = await anyio.to_thread.run_sync(_verify_signed, hub, request, None, "sync:body")

    def expected(session: Session, peer: Peer) -> dict[str, Any]:
        inc = sync.incoming_for(session, peer, sync_id)
        entry = manifest.file_entry(inc.manifest, file_id)
        if entry is None:
            raise NotFound("the manifest has no such file")
        return {"size": entry["body_size"]}

    size = (await anyio.to_thread.run_sync(_in_transaction, hub, peer_id, expected))["size"]
    digest, received = hashlib.sha256(), 0
    with tempfile.TemporaryFile(dir=sync.spool_dir(hub.settings)) as spooled:
        async for chunk in request.stream():
            received += len(chunk)
            if received > size:
                break  # longer than the manifest says: refused below, by size
            digest.update(chunk)
            await anyio.to_thread.run_sync(spooled.write, chunk)
        answer = await anyio.to_thread.run_sync(
            lambda: sync.store_body(hub, peer_id, sync_id, file_id, spooled, digest.hexdigest(), received,
                                    request.headers.get("content-digest", ""), client_ip(request)))
    return JSONResponse(answer)


@router.post("/sync/{sync_id}/files/{file_id}/fetch")
async def sync_fetch(request: Request, hub: HubDep, sync_id: str, file_id: str) -> JSONResponse:
    """S3 to S3: the origin offers a short-lived presigned GET URL of a body in its object store; this hub
    fetches it from there (when ``fetch_from_origin_storage`` and the URL's host is one of ``fetch_hosts``),
    hashing as it streams, and checks and stores it as a pushed body. ``{"fetch": false}``: push it instead."""
    from urllib.parse import urlsplit

    import httpx

    body = await _small_body(request)
    peer_id = await anyio.to_thread.run_sync(_verify_signed, hub, request, body, "sync:fetch")
    cfg = hub.settings.federation
    try:
        url = str(json.loads(body)["url"])
    except (ValueError, KeyError, TypeError):
        raise Invalid("send {\"url\": …}") from None
    parts = urlsplit(url)
    if not cfg.fetch_from_origin_storage:
        return JSONResponse({"fetch": False, "reason": "this hub does not fetch from origin storage"})
    if parts.scheme not in ("http", "https") or parts.netloc not in cfg.fetch_hosts:
        return JSONResponse({"fetch": False, "reason": f"{parts.netloc} is not among this hub's fetch_hosts"})

    def expected(session: Session, peer: Peer) -> dict[str, Any]:
        entry = manifest.file_entry(sync.incoming_for(session, peer, sync_id).manifest, file_id)
        if entry is None:
            raise NotFound("the manifest has no such file")
        return {"size": entry["body_size"]}

    size = (await anyio.to_thread.run_sync(_in_transaction, hub, peer_id, expected))["size"]

    def fetch_and_store() -> dict[str, Any]:
        digest, received = hashlib.sha256(), 0
        with tempfile.TemporaryFile(dir=sync.spool_dir(hub.settings)) as spooled:
            def spool(chunk: bytes) -> None:
                nonlocal received
                received += len(chunk)
                digest.update(chunk)
                spooled.write(chunk)

            # at most the manifest's size, as sent (no decompression), in the time a push of it may take
            bounds = service.answer_bounds(hub.settings, service.transfer_seconds(size), read_seconds=600,
                                           max_bytes=size)
            try:
                r = bounded_http.fetch("GET", url, bounds, sink=spool)
            except httpx.HTTPError as exc:  # also a body refused (too large, too slow, compressed): push it instead
                return {"fetch": False, "reason": f"the origin's storage: {bounded_http.describe(exc)}"}
            if r.status_code != 200:
                return {"fetch": False, "reason": f"the origin's storage answered HTTP {r.status_code}"}
            sha = digest.hexdigest()
            return sync.store_body(hub, peer_id, sync_id, file_id, spooled, sha, received,
                                   signing.digest_of_hex(sha), client_ip(request), via="origin-storage")

    return JSONResponse(await anyio.to_thread.run_sync(fetch_and_store))


@router.post("/sync/notice")
async def sync_notice(request: Request, hub: HubDep) -> JSONResponse:
    """The origin withdrew a mirrored dataset, deprecated or deleted a version of it (``notices.py``): applied here."""
    from . import notices

    body = await _small_body(request)
    peer_id = await anyio.to_thread.run_sync(_verify_signed, hub, request, body, "sync:notice")
    ip = client_ip(request)
    answer = await anyio.to_thread.run_sync(_in_transaction, hub, peer_id,
                                            lambda s, p: notices.receive(hub, s, p, body, ip))
    return JSONResponse(answer)


@router.post("/sync/{sync_id}/publish")
async def sync_publish(request: Request, hub: HubDep, sync_id: str) -> JSONResponse:
    """Every body arrived and verified: publish the read-only mirror (idempotent)."""
    body = await _small_body(request)
    peer_id = await anyio.to_thread.run_sync(_verify_signed, hub, request, body, "sync:publish")
    ip = client_ip(request)
    answer = await anyio.to_thread.run_sync(_in_transaction, hub, peer_id,
                                            lambda s, p: sync.publish(hub, s, p, sync_id, ip))
    return JSONResponse(answer)
