"""A hub-to-hub signature covers the hub it is meant for (RFC 9421 ``@authority``), so a peer cannot pass a request
it received on to another hub that trusts the signer.

The nonce stops a request from being used twice at the hub that received it, but only there: hub B, which
receives a signed request from A, could send it within the skew window to hub C, which trusts A too and has never
seen the nonce, and C would act on it as A's — a greeting, a catalogue or Beacon question, a push's manifest,
body or publishing, a notice. Now the signer covers the authority of the address it dials (the peer's registered
address) and the verifier rebuilds the signature base with its own, from its configured ``base_url``: a request
signed for B is refused at C (401, audited as refused with the reason).

- the pure signing module: how an address becomes its authority (case, default ports, IPv6, names), a signature
  for one hub verifying there however its address is spelt and nowhere else, an older hub's signature (no
  ``@authority``) refused saying so;
- three real hubs on loopback (tests/test_federation_sync.py's pair, A and B, and a third, C, that trusts A): what
  A really sent B — a push (manifest, bodies, publishing), a notice, a greeting, a harvest, a Beacon question —
  replayed to C is refused there and changes nothing, while A's own requests to C are accepted; a request signed
  for B on every signed route is refused at C and accepted at B.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from strongroom.app import create_app
from strongroom.archive.backend import storage_for
from strongroom.archive.models import ArchiveFile
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.config import Settings
from strongroom.db import transaction
from strongroom.federation import service, signing
from strongroom.federation.models import Incoming, Mirror, SeenNonce
from support.live import free_port, serving
from support.seaweed import seaweedfs  # noqa: F401 - session fixture
from test_federation import SIGNED_ROUTES
from test_federation_sync import (  # noqa: F401 - fixtures
    _push,
    _register,
    _run_notices_job,
    database_url,
    hubs,
    settings,
)

ANOTHER_HUB = "signed for another hub"


# -- the pure signing module ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "expected"), [
    ("https://hub.example.org", "hub.example.org"),
    ("https://Hub.EXAMPLE.org:443/strongroom/", "hub.example.org"),  # case, default port, path
    ("HTTPS://hub.example.org.:443", "hub.example.org"),  # scheme case, the root's trailing dot
    ("https://hub.example.org:8443", "hub.example.org:8443"),
    ("https://hub.example.org:80", "hub.example.org:80"),  # 80 is not https's default
    ("http://hub.example.org:80", "hub.example.org"),
    ("http://hub.example.org:443", "hub.example.org:443"),
    ("http://127.0.0.1:8000", "127.0.0.1:8000"),
    ("http://[::1]:8000", "[::1]:8000"),
    ("http://[0:0:0:0:0:0:0:1]:8000", "[::1]:8000"),  # one spelling of an IPv6 address (RFC 5952)
    ("https://[2001:DB8::A]", "[2001:db8::a]"),
    ("https://user@hub.example.org/x?y#z", "hub.example.org"),  # never the user, path, query or fragment
    ("https://bücher.example", "xn--bcher-kva.example"),  # an internationalised name in its ASCII form
])
def test_an_address_has_one_authority(url, expected):
    assert signing.authority(url) == expected


@pytest.mark.parametrize("url", ["ftp://hub.example.org", "hub.example.org:443", "https://", "https://:443",
                                 "https://hub.example.org:99999", "https://hub example.org", "http://[::zz]:80",
                                 "https://hub.example.org\n:443"])
def test_an_address_without_an_http_authority_is_refused(url):
    with pytest.raises(ValueError):
        signing.authority(url)


def _verify(key: signing.HubKey, headers: dict[str, str], recipient: str, path: str = "/x",
            body: bytes = b"") -> signing.Verified:
    return signing.verify(key.public, "POST", path, "", {k.lower(): v for k, v in headers.items()}, body,
                          recipient=recipient, max_skew=300)


def test_a_signature_verifies_at_the_hub_it_was_made_for_and_nowhere_else():
    key = signing.HubKey.generate()
    headers = key.sign("POST", "/x", "", b"{}", recipient="https://Hub-B.example.org:443/strongroom")
    assert headers["Signature-Input"].startswith('sr=("@method" "@authority" "@path" ')
    for spelt in ("https://hub-b.example.org", "HTTPS://HUB-B.EXAMPLE.ORG./", "https://hub-b.example.org:443/other"):
        assert _verify(key, headers, spelt, body=b"{}").key_id == key.key_id  # B, however its address is spelt
    for other in ("https://hub-c.example.org", "https://hub-b.example.org:8443", "http://hub-b.example.org:443",
                  "https://hub-b.example.org.evil.example", "https://example.org"):
        with pytest.raises(signing.SignatureError, match=ANOTHER_HUB) as refused:
            _verify(key, headers, other, body=b"{}")
        assert f"({signing.authority(other)})" in str(refused.value)  # the authority this hub expected
    v6 = key.sign("GET", "/x", recipient="http://[0::1]:8000")
    assert signing.verify(key.public, "GET", "/x", "", {k.lower(): x for k, x in v6.items()}, b"",
                          recipient="http://[::1]:8000").nonce
    # a streamed body (its digest signed up front) is bound the same way
    streamed = key.sign("PUT", "/f", body_sha256=hashlib.sha256(b"body").hexdigest(), recipient="https://b.example")
    lower = {k.lower(): v for k, v in streamed.items()}
    assert signing.verify(key.public, "PUT", "/f", "", lower, None, recipient="https://b.example").nonce
    with pytest.raises(signing.SignatureError, match=ANOTHER_HUB):
        signing.verify(key.public, "PUT", "/f", "", lower, None, recipient="https://c.example")


def test_a_signature_that_does_not_cover_the_recipient_is_refused():
    """An older hub's signature (no ``@authority``) is refused saying it must be upgraded; the covered components
    edited to leave it out break the signature's shape check first."""
    key = signing.HubKey.generate()
    created, nonce = int(time.time()), signing.new_nonce()
    params = (f'({" ".join(signing.UNBOUND_COMPONENTS)});created={created};nonce="{nonce}";keyid="{key.key_id}"'
              ';alg="ed25519"')
    date, digest = formatdate(created, usegmt=True), signing.content_digest(b"")
    old_base = "\n".join(['"@method": GET', '"@path": /x', '"@query": ?', f'"date": {date}',
                          f'"content-digest": {digest}', f'"@signature-params": {params}']).encode()
    old = {"date": date, "content-digest": digest, "signature-input": f"sr={params}",
           "signature": f"sr=:{base64.b64encode(key.private.sign(old_base)).decode()}:"}
    with pytest.raises(signing.SignatureError, match="does not cover the recipient hub .* must be upgraded"):
        signing.verify(key.public, "GET", "/x", "", old, b"", recipient="https://b.example")
    new = {k.lower(): v for k, v in key.sign("GET", "/x", recipient="https://b.example").items()}
    edited = {**new, "signature-input": new["signature-input"].replace('"@authority" ', '"@query" ', 1)}
    with pytest.raises(signing.SignatureError, match="does not cover method, authority"):
        signing.verify(key.public, "GET", "/x", "", edited, b"", recipient="https://b.example")


# -- three real hubs ---------------------------------------------------------------------------------------
@dataclass
class Third:
    """Hub C: trusts A (and A it), never partnered with B."""

    hub: object
    url: str


@pytest.fixture
def hub_c(hubs, sqlite_template, tmp_path) -> Iterator[Third]:  # noqa: F811 - the fixture
    shutil.copy(sqlite_template, tmp_path / "c.db")
    port = free_port()
    settings_c = Settings(var_dir=tmp_path / "c" / "var", database_url=f"sqlite:///{tmp_path / 'c.db'}",
                          secret_key="test-secret-" + "c" * 32, base_url=f"http://127.0.0.1:{port}",
                          site_name="Hub C", log_json=True, jobs={"embedded": False}, security={"cookie_secure": False},
                          # not localhost, the default twin of a loopback hub: the test reaches C under that name
                          workspaces={"origin": "http://workspaces.hub-c.invalid"})
    app_c = create_app(settings_c, run_jobs=False)
    with serving(app_c, port) as url_c:
        _register(app_c.state.hub, "hub-a", hubs.url_a)
        _register(hubs.a, "hub-c", url_c)
        yield Third(app_c.state.hub, url_c)


@dataclass(frozen=True)
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None  # None: a streamed body


@pytest.fixture
def wire(monkeypatch) -> list[Sent]:
    """Every request this process sends through an async client (the hub-to-hub client, ``bounded_http``), as it
    went on the wire: what the hub it was sent to received. Passed on unchanged."""
    sent: list[Sent] = []
    send = httpx.AsyncClient.send

    async def tapped(self: httpx.AsyncClient, request: httpx.Request, **kw: object) -> httpx.Response:
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:
            body = None
        sent.append(Sent(request.method, str(request.url), {k.lower(): v for k, v in request.headers.items()}, body))
        return await send(self, request, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx.AsyncClient, "send", tapped)
    return sent


SIGNATURE_HEADERS = ("date", "content-digest", "signature-input", "signature", "content-type")


def _replay(sent: Sent, to: str, body: bytes | None = None) -> httpx.Response:
    """The request sent again, its signature headers and body as they were, to the hub at ``to``."""
    parts = urlsplit(sent.url)
    target = to + parts.path + (f"?{parts.query}" if parts.query else "")
    content = sent.body if body is None else body
    return httpx.request(sent.method, target, content=content or None,
                         headers={k: v for k, v in sent.headers.items() if k in SIGNATURE_HEADERS}, timeout=60)


def _received(hub, outcome: str) -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "federation.exchange.received",
                                                       AuditEvent.outcome == outcome).order_by(AuditEvent.seq)))


def _what(sent: Sent) -> str:
    path = urlsplit(sent.url).path
    if path.startswith("/ga4gh/beacon/v2/"):
        return "beacon"
    tail = path.removeprefix(service.PEER_PATH + "/")
    for suffix, what in (("hello", "hello"), ("catalog.ttl", "catalog"), ("sync/manifest", "manifest"),
                         ("sync/notice", "notice"), ("/publish", "publish")):
        if tail.endswith(suffix):
            return what
    assert sent.method == "PUT" and "/files/" in tail, sent
    return "body"


def _stored_body(h, path: str) -> bytes:
    """The body A streamed in a push's ``PUT …/files/{file}`` (as A stores it)."""
    with h.a.sessions() as s:
        key = s.get(ArchiveFile, path.rsplit("/", 1)[1]).body_key
    with storage_for(h.a).open_reader(key) as reader:
        return reader.read()


def test_what_a_sent_b_is_refused_when_b_sends_it_on_to_c(hubs, hub_c, wire):  # noqa: F811 - the fixture
    """A pushes a dataset to B, deprecates a version (the notice), greets B, harvests it and asks its Beacon, every
    request signed by the real call sites; B, turned hostile, sends each on to C within the skew window: C, which
    trusts A, refuses every one (401, audited with the reason, as A's) and nothing of them is stored; A's own
    requests to C are accepted."""
    h, c = hubs, hub_c
    assert _push(h)["state"] == "done"
    assert h.alice.post(f"/api/v1/datasets/{h.dataset}/versions/1/deprecate").status_code == 200
    assert _run_notices_job(h.a) == {"queued": 1, "sent": 1, "failed": 0}
    assert service.hello(h.a, "hub-b", Actor.system("cli:operator")) == (True, "verified")
    assert "error" not in service.harvest(h.a, lambda: transaction(h.a.sessions))["hub-b"]
    with transaction(h.a.sessions) as s:
        answers = service.federated_search(s, h.a, Actor.system("cli:operator"), "imagingStudy", [])
    assert [a.ok for a in answers if a.peer == "hub-b"] == [True]

    to_b = [r for r in wire if r.url.startswith(h.url_b + "/") and "signature" in r.headers]
    assert sorted({_what(r) for r in to_b}) == ["beacon", "body", "catalog", "hello", "manifest", "notice", "publish"]
    assert sum(_what(r) == "body" for r in to_b) == len(h.files)
    assert len(_received(h.b, "ok")) == len(to_b)  # B accepted each

    with c.hub.sessions() as s:  # C was harvested and asked too (A's own requests to C: accepted)
        nonces_before = s.scalar(select(func.count()).select_from(SeenNonce))
    accepted_before = _received(c.hub, "ok")
    assert {e.details["what"] for e in accepted_before} == {"catalog", "beacon:imagingStudy"}
    for r in to_b:
        replayed = _replay(r, c.url, _stored_body(h, urlsplit(r.url).path) if r.body is None else None)
        assert replayed.status_code == 401, (r.method, r.url, replayed.status_code, replayed.text)
        assert ANOTHER_HUB in replayed.json()["detail"]
    refused = _received(c.hub, "refused")
    assert len(refused) == len(to_b)
    assert all(e.actor == "peer:hub-a" and ANOTHER_HUB in e.details["reason"] for e in refused)
    assert {e.details["what"] for e in refused} == {"sync:manifest", "sync:body", "sync:publish", "sync:notice",
                                                    "hello", "catalog", "beacon:imagingStudy"}
    with c.hub.sessions() as s:  # nothing of them was received, and no nonce was spent
        assert s.scalar(select(func.count()).select_from(Incoming)) == 0
        assert s.scalar(select(func.count()).select_from(Mirror)) == 0
        assert s.scalar(select(func.count()).select_from(SeenNonce)) == nonces_before
    assert len(_received(c.hub, "ok")) == len(accepted_before)

    # A's own requests to C (signed for C) are accepted: the partnership holds, only the recipient differs
    assert service.hello(h.a, "hub-c", Actor.system("cli:operator")) == (True, "verified")
    accepted = _received(c.hub, "ok")[-1]
    assert accepted.actor == "peer:hub-a" and accepted.details["what"] == "hello"


def test_every_signed_route_refuses_a_request_signed_for_another_hub(hubs, hub_c):  # noqa: F811 - the fixture
    """On every route that checks a peer's signature (``test_federation.SIGNED_ROUTES``, which fails when a signed
    route is added without being listed): A's request signed for B is refused at C, which has never seen its
    nonce, and then accepted at B."""
    h, c = hubs, hub_c
    key = service.hub_key(h.a.settings)
    for method, _, path, body in SIGNED_ROUTES:
        digest = {"body_sha256": hashlib.sha256(body).hexdigest()} if method == "PUT" else {}
        headers = key.sign(method, path, "", b"" if digest else body, recipient=h.url_b, **digest)
        at_c = httpx.request(method, c.url + path, content=body or None, headers=headers, timeout=60)
        assert at_c.status_code == 401, (path, at_c.text)
        assert ANOTHER_HUB in at_c.json()["detail"] and f"(127.0.0.1:{urlsplit(c.url).port})" in at_c.text
        at_b = httpx.request(method, h.url_b + path, content=body or None, headers=headers, timeout=60)
        assert at_b.status_code != 401, (path, at_b.text)
    refused = _received(c.hub, "refused")
    assert [e.details["what"] for e in refused] == [
        "hello", "catalog", "sync:manifest", "sync:body", "sync:notice", "sync:fetch", "sync:publish",
        "beacon:dataset", "beacon:imagingStudy"]
    assert all(e.actor == "peer:hub-a" and ANOTHER_HUB in e.details["reason"] for e in refused)
    # the Host header the sender chose changes nothing: C checks against its own base_url
    headers = key.sign("GET", f"{service.PEER_PATH}/hello", recipient=h.url_b)
    r = httpx.get(f"{c.url}{service.PEER_PATH}/hello", timeout=60,
                  headers={**headers, "Host": signing.authority(h.url_b)})
    assert r.status_code == 401 and ANOTHER_HUB in r.json()["detail"]


def test_the_peers_registered_address_must_name_the_hubs_own_base_url(hubs, hub_c):  # noqa: F811 - the fixture
    """A registers C under another spelling of C's base_url (scheme and host case, a trailing slash): A's requests
    reach C and are accepted (one authority). Under another name for the same server (``localhost`` for C's
    ``127.0.0.1``), they are refused, naming the authority C expects: a hub accepts requests signed for its
    configured address only, whatever name it is also reachable at (behind a proxy, its public ``base_url``)."""
    h, c = hubs, hub_c
    port = urlsplit(c.url).port

    def repin(url: str) -> None:
        with transaction(h.a.sessions) as s:
            peer = service.peer_by_name(s, "hub-c")
            service.repin_peer(s, h.a.settings, Actor.system("cli:operator"), "hub-c", {
                "base_url": url, "signing_key": peer.signing_key, "archive_key": peer.archive_key})

    repin(f"HTTP://127.0.0.1:{port}/")
    assert service.hello(h.a, "hub-c", Actor.system("cli:operator")) == (True, "verified")
    repin(f"http://localhost:{port}")
    ok, said = service.hello(h.a, "hub-c", Actor.system("cli:operator"))
    assert not ok and "HTTP 401" in said and ANOTHER_HUB in said and f"(127.0.0.1:{port})" in said
    [refused] = _received(c.hub, "refused")
    assert refused.actor == "peer:hub-a" and ANOTHER_HUB in refused.details["reason"]
