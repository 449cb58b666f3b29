"""Two hubs on loopback (separate databases, var dirs and keys) register each other as peers: a signed
request is accepted and audited on both sides, an unsigned, tampered or stranger's one refused; federated
search asks both beacons (and reports a peer that does not answer); harvesting shows B's published entry in
A's catalogue, marked remote and linking to B's landing page, never counted as A's."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from types import SimpleNamespace

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

import federation_support
from conftest import bearer, token_for, web_client
from strongroom.app import create_app
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.config import Settings
from strongroom.db import transaction, utcnow
from strongroom.federation import service, signing
from strongroom.federation.models import RemoteEntry, SeenNonce
from support.beacon_schema import validate
from support.live import free_port, serving

HELLO = f"{service.PEER_PATH}/hello"

# The CI machine is shared: registering a peer (which fetches the other hub's keys) can take longer than
# httpx's 5 s default there. A hung hub still fails the test, after a minute.
http = SimpleNamespace(**{verb: partial(getattr(httpx, verb), timeout=60) for verb in ("get", "post", "put", "delete")})


@pytest.fixture
def settings(database_url: str, tmp_path) -> Settings:
    port = free_port()
    s = Settings(var_dir=tmp_path / "a" / "var", database_url=database_url, secret_key="test-secret-" + "a" * 32,
                 base_url=f"http://127.0.0.1:{port}", site_name="Hub A", log_json=True, jobs={"embedded": False},
                 security={"cookie_secure": False},
                 # hub B answers from the same loaded 2-core CI machine; the silent peer refuses at once
                 federation={"peer_timeout_seconds": 30})
    s._port = port  # test plumbing
    return s


@dataclass
class Pair:
    a_app: object
    b_app: object
    a: object  # hubs
    b: object
    url_a: str
    url_b: str


@pytest.fixture
def pair(app, hub, settings, sqlite_template, tmp_path) -> Iterator[Pair]:
    (tmp_path / "b").mkdir()
    shutil.copy(sqlite_template, tmp_path / "b" / "hub.db")
    port_b = free_port()
    settings_b = Settings(var_dir=tmp_path / "b" / "var", database_url=f"sqlite:///{tmp_path / 'b' / 'hub.db'}",
                          secret_key="test-secret-" + "b" * 32, base_url=f"http://127.0.0.1:{port_b}",
                          site_name="Hub B", log_json=True, jobs={"embedded": False}, security={"cookie_secure": False})
    app_b = create_app(settings_b, run_jobs=False)
    federation_support.seed(hub, {"beaconct": "lung-ct"})
    federation_support.seed(app_b.state.hub, {"slides": "slides"}, {"secret": "secret-knee"})
    with serving(app, settings._port) as url_a, serving(app_b, port_b) as url_b:
        yield Pair(app, app_b, hub, app_b.state.hub, url_a, url_b)


def identity_of(url: str) -> dict:
    r = http.get(f"{url}/api/v1/federation/hub", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def events(hub, prefix: str) -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action.like(prefix + "%"))
                              .order_by(AuditEvent.seq)))


def register_each_other(p: Pair, people) -> str:
    pia = people("pia", admin=True)
    token = token_for(p.a, pia, scopes=["admin"])
    me_b = identity_of(p.url_b)
    body = {"name": "hub-b", **{k: me_b[k] for k in ("base_url", "signing_key", "archive_key", "visa_issuer",
                                                     "jwks_url")}}
    r = http.post(f"{p.url_a}/api/v1/federation/peers", json=body, headers=bearer(token))
    assert r.status_code == 201, r.text
    assert r.json()["key_id"] == me_b["key_id"] and r.json()["outbound"] and r.json()["inbound"]
    assert http.post(f"{p.url_a}/api/v1/federation/peers", json=body, headers=bearer(token)).status_code == 409
    # B's operator on B's host (the command line's actor)
    me_a = identity_of(p.url_a)
    with transaction(p.b.sessions) as s:
        service.register_peer(s, p.b.settings, Actor.system("cli:operator@hub-b"),
                              {"name": "hub-a", **{k: me_a[k] for k in ("base_url", "signing_key", "archive_key",
                                                                        "visa_issuer", "jwks_url")}})
    return token


def test_peers_need_an_operator_and_valid_keys(pair, people):
    token = register_each_other(pair, people)
    pia_id = token_owner(pair.a, token)
    listed = http.get(f"{pair.url_a}/api/v1/federation/peers", headers=bearer(token)).json()
    assert [p["name"] for p in listed] == ["hub-b"]
    rita = people("rita")  # not an operator: the registry does not exist for her
    r = http.get(f"{pair.url_a}/api/v1/federation/peers", headers=bearer(token_for(pair.a, rita)))
    assert r.status_code == 404
    bad = {"name": "hub-x", "base_url": "http://127.0.0.1:9", "signing_key": "not a key",
           "archive_key": identity_of(pair.url_b)["archive_key"]}
    r = http.post(f"{pair.url_a}/api/v1/federation/peers", json=bad, headers=bearer(token))
    assert r.status_code == 422 and "signing_key" in r.text
    registered = events(pair.a, "federation.peer.")
    assert [e.action for e in registered] == ["federation.peer.registered"]
    assert registered[0].target == "peer:hub-b" and registered[0].actor_id == pia_id


def token_owner(hub, token: str):
    from strongroom.identity.models import ApiToken

    with hub.sessions() as s:
        return s.scalar(select(ApiToken.user_id).where(ApiToken.prefix == token.split("_")[1]))


def test_signed_requests_accepted_others_refused_and_all_audited(pair, people):
    register_each_other(pair, people)
    r = service.signed_get(pair.a.settings, pair.url_b, HELLO)
    assert r.status_code == 200, r.text
    assert r.json() == {"hub": pair.url_b, "peer": "hub-a", "verified": True}

    assert http.get(pair.url_b + HELLO).status_code == 401  # unsigned
    signed = service.hub_key(pair.a.settings).sign("GET", HELLO, recipient=pair.url_b)
    tampered = http.get(f"{pair.url_b}{service.PEER_PATH}/catalog.ttl", headers=signed)  # another path
    assert tampered.status_code == 401 and "does not verify" in tampered.json()["detail"]
    with_query = http.get(pair.url_b + HELLO + "?x=1", headers=signed)  # a query the signature does not cover
    assert with_query.status_code == 401
    stranger = signing.HubKey(Ed25519PrivateKey.generate())
    r = http.get(pair.url_b + HELLO, headers=stranger.sign("GET", HELLO, recipient=pair.url_b))
    assert r.status_code == 401 and "not a registered peer" in r.json()["detail"]
    old = service.hub_key(pair.a.settings).sign("GET", HELLO, now=1_000_000_000, recipient=pair.url_b)
    assert http.get(pair.url_b + HELLO, headers=old).status_code == 401  # replayed long after

    received = [(e.outcome, e.actor, e.details.get("reason", "")) for e in events(pair.b, "federation.exchange.")]
    assert received[0] == ("ok", "peer:hub-a", "")
    assert [o for o, _, _ in received[1:]] == ["refused"] * 5
    assert received[1][2] == "the request is not signed" and "does not verify" in received[2][2]
    assert received[4][1] == "peer:unknown" and "too old" in received[5][2]

    # a suspended peer is refused although its signature holds
    with transaction(pair.b.sessions) as s:
        service.set_peer(s, pair.b.settings, Actor.system("cli:t"), "hub-a", outbound=True, inbound=True,
                         active=False)
    assert service.signed_get(pair.a.settings, pair.url_b, HELLO).status_code == 401


# every route that checks a peer's signature: (method, path template, the path sent, body)
SIGNED_ROUTES = [
    ("GET", f"{service.PEER_PATH}/hello", HELLO, b""),
    ("GET", f"{service.PEER_PATH}/catalog.ttl", f"{service.PEER_PATH}/catalog.ttl", b""),
    ("POST", f"{service.PEER_PATH}/sync/manifest", f"{service.PEER_PATH}/sync/manifest", b"{}"),
    ("PUT", f"{service.PEER_PATH}/sync/{{sync_id}}/files/{{file_id}}",
     f"{service.PEER_PATH}/sync/s1/files/f1", b"x"),
    ("POST", f"{service.PEER_PATH}/sync/notice", f"{service.PEER_PATH}/sync/notice", b"{}"),
    ("POST", f"{service.PEER_PATH}/sync/{{sync_id}}/files/{{file_id}}/fetch",
     f"{service.PEER_PATH}/sync/s1/files/f1/fetch", b'{"url": "http://127.0.0.1:9/x"}'),
    ("POST", f"{service.PEER_PATH}/sync/{{sync_id}}/publish", f"{service.PEER_PATH}/sync/s1/publish", b"{}"),
    ("GET", "/ga4gh/beacon/v2/datasets", "/ga4gh/beacon/v2/datasets", b""),  # signed when a peer asks
    ("GET", "/ga4gh/beacon/v2/imaging_studies", "/ga4gh/beacon/v2/imaging_studies", b""),
]


def test_every_signed_route_refuses_a_replayed_request(pair, people):
    """A signed request captured on the wire and sent again (within the clock-skew window) is refused on
    every route that accepts a peer's signature, with its reason, and audited as refused."""
    register_each_other(pair, people)
    def routes(items):  # included routers are walked into
        for r in items:
            inner = getattr(r, "original_router", None)
            yield from routes(inner.routes) if inner is not None else [r]

    hub_routes = {(m, r.path) for r in routes(pair.b_app.routes)
                  if getattr(r, "path", "").startswith(service.PEER_PATH + "/")
                  for m in getattr(r, "methods", ()) if m != "HEAD"}
    assert hub_routes == {(m, t) for m, t, _, _ in SIGNED_ROUTES if t.startswith(service.PEER_PATH)}
    key = service.hub_key(pair.a.settings)
    for method, _, path, body in SIGNED_ROUTES:
        if method == "PUT":
            import hashlib

            headers = key.sign(method, path, body_sha256=hashlib.sha256(body).hexdigest(), recipient=pair.url_b)
        else:
            headers = key.sign(method, path, "", body, recipient=pair.url_b)
        first = httpx.request(method, pair.url_b + path, content=body or None, headers=headers, timeout=30)
        assert first.status_code != 401, (path, first.text)
        again = httpx.request(method, pair.url_b + path, content=body or None, headers=headers, timeout=30)
        assert again.status_code == 401, (path, again.text)
        assert "replayed" in again.json()["detail"], again.text
    refused = [e for e in events(pair.b, "federation.exchange.received") if e.outcome == "refused"]
    assert len(refused) == len(SIGNED_ROUTES)
    assert all(e.actor == "peer:hub-a" and "replayed" in e.details["reason"] for e in refused)
    assert {e.details["what"] for e in refused} == {"hello", "catalog", "sync:manifest", "sync:body", "sync:notice",
                                                    "sync:fetch", "sync:publish", "beacon:dataset",
                                                    "beacon:imagingStudy"}
    # a signature without a nonce (a hub from before replay protection) is refused with why
    created = int(time.time())
    params = (f'({" ".join(signing.COMPONENTS)});created={created};keyid="{key.key_id}";alg="ed25519"')
    date, digest = formatdate(created, usegmt=True), signing.content_digest(b"")
    sig = key.private.sign(signing._base("GET", pair.url_b, HELLO, "", date, digest, params))
    old = {"Date": date, "Content-Digest": digest, "Signature-Input": f"sr={params}",
           "Signature": f"sr=:{base64.b64encode(sig).decode()}:"}
    r = http.get(pair.url_b + HELLO, headers=old)
    assert r.status_code == 401 and "no nonce" in r.json()["detail"]
    # the seen nonces are forgotten once their signatures are too old anyway (the periodic job)
    with transaction(pair.b.sessions) as s:
        assert s.scalar(select(func.count()).select_from(SeenNonce)) == len(SIGNED_ROUTES)
        assert service.sweep_nonces(s) == 0
        for row in s.scalars(select(SeenNonce)):
            row.expires_at = utcnow() - dt.timedelta(seconds=1)
    with transaction(pair.b.sessions) as s:
        assert service.sweep_nonces(s) == len(SIGNED_ROUTES)


def test_federated_search_over_both_hubs(pair, people):
    register_each_other(pair, people)
    # a third peer that never answers: reported as failed, the others still shown
    silent = signing.HubKey(Ed25519PrivateKey.generate())
    with transaction(pair.a.sessions) as s:
        service.register_peer(s, pair.a.settings, Actor.system("cli:t"), {
            "name": "hub-c", "base_url": f"http://127.0.0.1:{free_port()}",
            "signing_key": signing.public_pem(silent.public), "archive_key": identity_of(pair.url_b)["archive_key"]})
    c = web_client(pair.a_app, pair.a, people("rita"))
    page = c.get("/federation/search", params={"entry_type": "imagingStudy"})
    assert page.status_code == 200, page.text
    rows = page.text.split('class="fed-answer"')[1:]
    assert len(rows) == 3
    this, hub_b, hub_c = rows
    assert 'data-hub="this hub" data-ok="yes"' in this and '<td class="fed-count">5</td>' in this
    assert 'data-hub="hub-b" data-ok="yes"' in hub_b and '<td class="fed-count">&lt; 5</td>' in hub_b
    assert 'data-hub="hub-c" data-ok="no"' in hub_c and "no answer" in hub_c
    # filtered: B has no CT (the term is unknown there), A has six
    page = c.get("/federation/search", params={"entry_type": "imagingStudy", "filters": "DCM:CT"})
    this, hub_b, _ = page.text.split('class="fed-answer"')[1:]
    assert '<td class="fed-count">5</td>' in this and '<td class="fed-count">0</td>' in hub_b
    # B audited A's signed questions; A audited what it sent and what failed
    got = [e for e in events(pair.b, "federation.exchange.received") if e.details["what"] == "beacon:imagingStudy"]
    assert [(e.outcome, e.actor) for e in got] == [("ok", "peer:hub-a")] * 2
    sent = [(e.target, e.outcome) for e in events(pair.a, "federation.exchange.sent")]
    assert sent == [("peer:hub-b", "ok"), ("peer:hub-c", "failed")] * 2
    # B's beacon, asked directly, is valid Beacon v2 too
    validate(http.get(f"{pair.url_b}/ga4gh/beacon/v2/imaging_studies").json(), "beaconBooleanResponse")


def test_harvesting_shows_the_peers_published_entries_as_remote(pair, people):
    register_each_other(pair, people)
    result = service.harvest(pair.a, lambda: transaction(pair.a.sessions))
    assert result == {"hub-b": {"entries": 1, "removed": 0}}
    with pair.a.sessions() as s:
        (entry,) = s.scalars(select(RemoteEntry))
        assert entry.title == "Breast pathology slides" and entry.landing_url == f"{pair.url_b}/catalog/slides"
    page = http.get(f"{pair.url_a}/catalog")
    assert page.status_code == 200
    local, remote = page.text.split('id="remote-entries"')
    assert '1 dataset</p>' in local.replace("\n", "") or "1 dataset" in local  # only A's own is counted
    assert "Lung cancer CT" in local and "Breast pathology slides" not in local
    assert '<span class="tag cat-remote-tag">remote</span>' in remote
    assert f'href="{pair.url_b}/catalog/slides"' in remote and "Secret knee" not in page.text
    assert "at hub-b" in remote
    # searching the catalogue searches the remote entries too; B withdrawing its entry removes it at the next harvest
    assert "Breast pathology slides" in http.get(f"{pair.url_a}/catalog", params={"q": "breast"}).text
    assert "Breast pathology slides" not in http.get(f"{pair.url_a}/catalog", params={"q": "knee"}).text
    from strongroom.catalog.models import CatalogEntry

    with transaction(pair.b.sessions) as s:
        s.scalar(select(CatalogEntry).where(CatalogEntry.slug == "slides")).published = False
    assert service.harvest(pair.a, lambda: transaction(pair.a.sessions)) == {"hub-b": {"entries": 0, "removed": 1}}
    assert 'id="remote-entries"' not in http.get(f"{pair.url_a}/catalog").text
    assert [e.details["what"] for e in events(pair.b, "federation.exchange.received")] == ["catalog", "catalog"]


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`strongroom federation ARGS` on a hub's host (its settings through the environment)."""
    env = {**os.environ, "STRONGROOM_DATABASE_URL": settings.effective_database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(), "STRONGROOM_VAR_DIR": str(settings.var_dir),
           "STRONGROOM_BASE_URL": settings.base_url, "STRONGROOM_SITE_NAME": settings.site_name, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "strongroom.cli", "federation", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_operators_pair_hubs_on_the_command_line(pair, people, tmp_path):
    shown = run_cli(pair.a.settings, "identity")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == identity_of(pair.url_a)
    (tmp_path / "hub-a.json").write_text(shown.stdout)
    added = run_cli(pair.b.settings, "add", "hub-a", "--identity", str(tmp_path / "hub-a.json"), "--no-inbound")
    assert added.returncode == 0, added.stderr
    assert "hub-a" in run_cli(pair.b.settings, "list").stdout
    listed = run_cli(pair.b.settings, "list").stdout.split()
    assert listed[0] == "hub-a" and listed[2] == "outbound"
    # B's greeting to A is refused until A registers B too, then verified; both sides audit it
    refused = run_cli(pair.b.settings, "hello", "hub-a")
    assert refused.returncode == 1 and "HTTP 401" in refused.stdout
    token = token_for(pair.a, people("pia", admin=True), scopes=["admin"])
    me_b = identity_of(pair.url_b)
    r = http.post(f"{pair.url_a}/api/v1/federation/peers", headers=bearer(token), json={
        "name": "hub-b", **{k: me_b[k] for k in ("base_url", "signing_key", "archive_key")}})
    assert r.status_code == 201, r.text
    said = run_cli(pair.b.settings, "hello", "hub-a")
    assert said.returncode == 0, said.stdout + said.stderr
    assert [(e.outcome, e.details["what"]) for e in events(pair.a, "federation.exchange.received")] == [
        ("refused", "hello"), ("ok", "hello")]
    assert [(e.outcome, e.details["what"]) for e in events(pair.b, "federation.exchange.sent")] == [
        ("failed", "hello"), ("ok", "hello")]

    # B rotates its signing key: its running server publishes the new identity at once; A refuses B's greeting
    # until A's operator pins it (the API here; `federation repin` and the page do the same), then verifies it.
    old_id = me_b["key_id"]
    rotated = run_cli(pair.b.settings, "rotate-key")
    assert rotated.returncode == 0, rotated.stderr
    me_b = identity_of(pair.url_b)
    assert me_b["key_id"] != old_id and me_b["key_id"] in rotated.stdout
    stale = run_cli(pair.b.settings, "hello", "hub-a")
    assert stale.returncode == 1 and "HTTP 401" in stale.stdout
    r = http.put(f"{pair.url_a}/api/v1/federation/peers/hub-b/identity", headers=bearer(token),
                 json={k: me_b[k] for k in ("base_url", "signing_key", "archive_key")})
    assert r.status_code == 200 and r.json()["key_id"] == me_b["key_id"], r.text
    said = run_cli(pair.b.settings, "hello", "hub-a")
    assert said.returncode == 0, said.stdout + said.stderr
    [rotation] = events(pair.b, "federation.key.rotated")
    assert rotation.details == {"previous": old_id, "current": me_b["key_id"]}
    [repinned] = events(pair.a, "federation.peer.repinned")
    assert repinned.details["changed"] == ["signing_key"] and repinned.details["key_id"]["after"] == me_b["key_id"]
    assert run_cli(pair.b.settings, "remove", "hub-a").returncode == 0
    assert run_cli(pair.b.settings, "list").stdout.strip() == ""
