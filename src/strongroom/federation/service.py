"""Federation: peers (registered by an operator with fresh MFA, keys pinned), signed hub-to-hub requests
(checked here, audited on both sides), the Beacon's facts (published datasets only), federated search over
the peers' beacons, and harvesting the peers' public catalogues (DCAT) as remote entries."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlencode, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import and_, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import bounded_http, keyfiles
from ..archive.c4gh.keys import fingerprint, parse_public_key
from ..archive.models import DatasetFile, DatasetVersion
from ..audit import service as audit
from ..catalog.models import CatalogEntry
from ..config import Settings
from ..db import transaction, utcnow
from ..errors import Conflict, Invalid, MfaRequired, NotFound, Unauthenticated
from ..hub import Hub
from ..identity.principal import Principal
from ..identity.service import require_fresh_mfa
from ..imaging.models import ImportedInstance
from . import beacon, signing
from .manifest import url_under
from .models import Peer, RemoteEntry, SeenNonce

PEER_PATH = "/api/v1/federation/peer"  # the hub-to-hub endpoints (signed requests only)
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$")


# -- this hub ----------------------------------------------------------------------------------
def key_file(settings: Settings) -> Path:
    return settings.federation.key_file or settings.var_dir / "keys" / "federation-signing.pem"


def hub_key(settings: Settings) -> signing.HubKey:
    """This hub's signing key: created on first use, read again when its file changes (a rotation reaches every
    process at its next signature)."""
    return keyfiles.load(key_file(settings), lambda: signing.HubKey.generate().private_pem(), signing.HubKey.from_pem)


def rotate_hub_key(settings: Settings) -> tuple[str, str]:
    """A new signing key in place of the current one (whose private half is gone: partners check signatures when
    they receive them, never later). Returns (old key id, new key id). Partners refuse this hub's requests until
    they pin its new identity (``repin_peer``)."""
    old, new = hub_key(settings), signing.HubKey.generate()
    keyfiles.replace(key_file(settings), new.private_pem())
    return old.key_id, new.key_id


def base(settings: Settings) -> str:
    return settings.base_url.rstrip("/")


def beacon_of(settings: Settings) -> beacon.Beacon:
    host = urlsplit(settings.base_url).hostname or "localhost"
    f = settings.federation
    return beacon.Beacon(id=f.beacon_id or f"strongroom.{host}", name=f"{settings.site_name} imaging beacon",
                         base_url=base(settings), organization=f.organization or settings.site_name,
                         environment=f.environment,
                         description="Aggregate counts of imaging studies in the published datasets of "
                                     f"{settings.site_name}; counts below 5 are shown as \"< 5\".")


def identity(hub: Hub, session: Session) -> dict[str, Any]:
    """What a partner's operator registers for this hub (exchanged out of band and compared)."""
    from ..archive import c4gh
    from ..archive.models import ArchiveKey

    key = hub_key(hub.settings)
    archive = session.scalar(select(ArchiveKey.public_key).where(ArchiveKey.status == "active")
                             .order_by(ArchiveKey.created_at.desc()).limit(1))
    if archive is None:
        raise NotFound("this hub has no archive key yet")
    return {"name": hub.settings.site_name, "base_url": base(hub.settings),
            "beacon_url": beacon_of(hub.settings).url, "signing_key": signing.public_pem(key.public),
            "key_id": key.key_id, "archive_key": c4gh.public_key_file(archive).decode(),
            "visa_issuer": base(hub.settings), "jwks_url": base(hub.settings) + "/.well-known/jwks.json"}


# -- beacon facts --------------------------------------------------------------------------------
def studies(session: Session) -> list[beacon.Study]:
    """One row per imaging study in the latest released version of every published dataset."""
    published = select(CatalogEntry.dataset_id).where(CatalogEntry.published.is_(True))
    newest = (select(DatasetVersion.dataset_id, func.max(DatasetVersion.number).label("number"))
              .where(DatasetVersion.state == "released", DatasetVersion.dataset_id.in_(published))
              .group_by(DatasetVersion.dataset_id).subquery())
    latest = (select(DatasetVersion.id, DatasetVersion.dataset_id)
              .join(newest, and_(newest.c.dataset_id == DatasetVersion.dataset_id,
                                 newest.c.number == DatasetVersion.number)).subquery())
    rows = session.execute(
        select(latest.c.dataset_id, ImportedInstance.study_uid, ImportedInstance.modality,
               func.upper(func.trim(ImportedInstance.body_part)))
        .join(DatasetFile, DatasetFile.version_id == latest.c.id)
        .join(ImportedInstance, ImportedInstance.file_id == DatasetFile.file_id)
        .where(ImportedInstance.study_uid != "").distinct())
    found: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
    for ds_id, study, modality, body_part in rows:
        modalities, parts = found.setdefault((ds_id, study), (set(), set()))
        if modality:
            modalities.add(modality)
        if body_part:
            parts.add(body_part.replace(" ", ""))
    diseases = {ds: beacon.disease_codes(keywords or []) for ds, keywords in session.execute(
        select(CatalogEntry.dataset_id, CatalogEntry.keywords).where(CatalogEntry.published.is_(True)))}
    return [beacon.Study(dataset=ds, modalities=frozenset(m), body_parts=frozenset(p),
                         diseases=diseases.get(ds, frozenset()))
            for (ds, _), (m, p) in sorted(found.items())]


# -- operators and peers ---------------------------------------------------------------------------
def require_operator(principal: Principal) -> None:
    if not (principal.user.is_admin and principal.can("admin")):
        raise NotFound("not found")
    if not principal.has_mfa:
        raise MfaRequired("federation needs a login with multi-factor authentication")


class PeerIdentity(BaseModel):
    """What a peer's operator pins (from the partner's ``/api/v1/federation/hub``, compared out of band)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    base_url: str = Field(max_length=500, description="the peer hub's address, e.g. https://hub.example.org")
    signing_key: str = Field(max_length=2000, description="its hub signing key (Ed25519 public key, PEM)")
    archive_key: str = Field(max_length=2000, description="its archive's crypt4gh public key")
    visa_issuer: str = Field(default="", max_length=500, description="the `iss` of its GA4GH visas")
    jwks_url: str = Field(default="", max_length=500, description="where its visa keys are published")

    @field_validator("base_url", "visa_issuer", "jwks_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment \
                or parts.username or parts.password:
            raise ValueError("an http(s) address without query, fragment or credentials")
        signing.authority(value)  # the recipient a signed request to it names (ValueError: it has none)
        return value.rstrip("/")

    @field_validator("signing_key")
    @classmethod
    def _signing(cls, value: str) -> str:
        signing.load_public(value)
        return value.strip() + "\n"

    @field_validator("archive_key")
    @classmethod
    def _archive(cls, value: str) -> str:
        try:
            parse_public_key(value)
        except Exception as exc:  # the crypt4gh parser raises several kinds
            raise ValueError("not a crypt4gh public key") from exc
        return value.strip() + "\n"

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Self:
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise Invalid(f"{where}: {first['msg']}", errors=[
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]) from None


class PeerFields(PeerIdentity):
    """A peer as its operator registers it: its identity, a name and the directions exchanges may take."""

    name: str = Field(pattern=NAME.pattern, description="a short name: lower case letters, digits, hyphens")
    outbound: bool = Field(default=True, description="we query and harvest it (and later push datasets to it)")
    inbound: bool = Field(default=True, description="it may query and harvest us (and later push to us)")


def _is_self(settings: Settings, url: str) -> bool:
    """Whether ``url`` is this hub's own address, however spelt (the same base URL, or the same authority: a request
    signed for it would be one addressed to this hub)."""
    try:
        return url.rstrip("/") == base(settings) or signing.authority(url) == signing.authority(settings.base_url)
    except ValueError:
        return False


def peers(session: Session) -> list[Peer]:
    return list(session.scalars(select(Peer).order_by(Peer.name)))


def peer_by_name(session: Session, name: str) -> Peer:
    peer = session.scalar(select(Peer).where(Peer.name == name))
    if peer is None:
        raise NotFound("no such peer")
    return peer


def _operator(settings: Settings, who: Principal | audit.Actor) -> tuple[audit.Actor, Any]:
    """An operator with a fresh second factor (pages, API), or the hub host's command line (an Actor)."""
    if isinstance(who, audit.Actor):
        return who, None
    require_operator(who)
    require_fresh_mfa(who, settings.security.fresh_mfa_minutes)
    return who.actor, who.user.id


def register_peer(session: Session, settings: Settings, who: Principal | audit.Actor,
                  data: Mapping[str, Any]) -> Peer:
    actor, user_id = _operator(settings, who)
    f = PeerFields.parse(data)
    kid = signing.key_id(signing.load_public(f.signing_key))
    if kid == hub_key(settings).key_id or _is_self(settings, f.base_url):
        raise Invalid("that is this hub itself")
    for column, value, what in ((Peer.name, f.name, "name"), (Peer.base_url, f.base_url, "address"),
                                (Peer.key_id, kid, "signing key")):
        if session.scalar(select(Peer.id).where(column == value)) is not None:
            raise Conflict(f"a peer with this {what} is registered already")
    peer = Peer(**f.model_dump(), key_id=kid, created_by=user_id)
    session.add(peer)
    session.flush()
    audit.record(session, actor, "federation.peer.registered", target=f"peer:{peer.name}",
                 details={"base_url": peer.base_url, "key_id": kid, "outbound": peer.outbound,
                          "inbound": peer.inbound, "visa_issuer": peer.visa_issuer})
    return peer


def repin_peer(session: Session, settings: Settings, who: Principal | audit.Actor, name: str,
               data: Mapping[str, Any]) -> Peer:
    """Pin a registered peer's new identity (after it rotated its archive key or changed its signing key or
    address), keeping its name, directions, harvested entries and mirrors. Audited with what changed."""
    actor, _ = _operator(settings, who)
    peer = peer_by_name(session, name)
    f = PeerIdentity.parse(data)
    kid = signing.key_id(signing.load_public(f.signing_key))
    if kid == hub_key(settings).key_id or _is_self(settings, f.base_url):
        raise Invalid("that is this hub itself")
    for column, value, what in ((Peer.base_url, f.base_url, "address"), (Peer.key_id, kid, "signing key")):
        if session.scalar(select(Peer.id).where(column == value, Peer.id != peer.id)) is not None:
            raise Conflict(f"another peer with this {what} is registered already")
    changed = sorted(k for k, v in f.model_dump().items() if getattr(peer, k) != v)
    if not changed:
        raise Invalid("nothing changed: this is the identity pinned already")
    details: dict[str, Any] = {"changed": changed, "key_id": {"before": peer.key_id, "after": kid}}
    if "archive_key" in changed:
        details["archive_key"] = {"before": fingerprint(parse_public_key(peer.archive_key)),
                                  "after": fingerprint(parse_public_key(f.archive_key))}
    for key, value in f.model_dump().items():
        setattr(peer, key, value)
    peer.key_id, peer.updated_at = kid, utcnow()
    audit.record(session, actor, "federation.peer.repinned", target=f"peer:{peer.name}", details=details)
    return peer


def set_peer(session: Session, settings: Settings, who: Principal | audit.Actor, name: str, *, outbound: bool,
             inbound: bool, active: bool) -> Peer:
    actor, _ = _operator(settings, who)
    peer = peer_by_name(session, name)
    peer.outbound, peer.inbound, peer.active, peer.updated_at = outbound, inbound, active, utcnow()
    audit.record(session, actor, "federation.peer.changed", target=f"peer:{peer.name}",
                 details={"outbound": outbound, "inbound": inbound, "active": active})
    return peer


def remove_peer(session: Session, settings: Settings, who: Principal | audit.Actor, name: str) -> None:
    """Forget a peer and everything harvested from it."""
    actor, _ = _operator(settings, who)
    peer = peer_by_name(session, name)
    session.execute(delete(RemoteEntry).where(RemoteEntry.peer_id == peer.id))
    session.delete(peer)
    audit.record(session, actor, "federation.peer.removed", target=f"peer:{name}",
                 details={"base_url": peer.base_url, "key_id": peer.key_id})


# -- signed exchanges: receiving -----------------------------------------------------------------
def _peer_actor(peer: Peer | None, ip: str | None) -> audit.Actor:
    return audit.Actor(id=None, label=f"peer:{peer.name}" if peer else "peer:unknown", ip=ip)


def verify_request(session: Session, settings: Settings, *, method: str, path: str, query: str,
                   headers: Mapping[str, str], body: bytes | None, what: str, ip: str | None,
                   required: bool = True) -> Peer | None:
    """The registered, active, inbound peer that signed this request; None when unsigned and not
    ``required``. A bad signature is refused (401) and the refusal is audited."""
    def refuse(reason: str, peer: Peer | None = None) -> Unauthenticated:
        audit.record(session, _peer_actor(peer, ip), "federation.exchange.received", outcome="refused",
                     target=f"peer:{peer.name}" if peer else None, details={"what": what, "reason": reason})
        return Unauthenticated(f"hub-to-hub request refused: {reason}")

    try:
        kid = signing.signer_key_id(headers)
    except signing.SignatureError as exc:
        raise refuse(str(exc)) from None
    if kid is None:
        if required:
            raise refuse("the request is not signed")
        return None
    peer = session.scalar(select(Peer).where(Peer.key_id == kid))
    if peer is None:
        raise refuse("the signing key is not a registered peer's")
    if not (peer.active and peer.inbound):
        raise refuse("this peer may not call this hub (inactive or inbound not allowed)", peer)
    max_skew = settings.federation.max_skew_seconds
    try:
        # addressed to this hub: the authority of its configured address (what the peers registered and dial),
        # never the request's Host header (the sender's choice, and a reverse proxy's)
        signed = signing.verify(signing.load_public(peer.signing_key), method, path, query, headers, body,
                                recipient=settings.base_url, max_skew=max_skew)
    except signing.SignatureError as exc:
        raise refuse(str(exc), peer) from None
    if not first_use(session, signed, max_skew):
        raise refuse("the request was replayed: its signature's nonce was used before", peer)
    audit.record(session, _peer_actor(peer, ip), "federation.exchange.received", target=f"peer:{peer.name}",
                 details={"what": what, "path": path})
    return peer


# how long after its signature's ``created`` a nonce is kept beyond the skew window (clock differences
# between this hub's web servers and its database)
NONCE_MARGIN = dt.timedelta(seconds=60)


def first_use(session: Session, signed: signing.Verified, max_skew: int) -> bool:
    """Record a verified signature's nonce; False when it was recorded before (a replay). The row stands as
    long as a signature ``created`` then could still pass the skew check, on every web server alike (the
    database's primary key decides between two servers receiving the same request at once)."""
    expires = dt.datetime.fromtimestamp(signed.created, dt.UTC) + dt.timedelta(seconds=max_skew) + NONCE_MARGIN
    try:
        with session.begin_nested():
            session.add(SeenNonce(key_id=signed.key_id, nonce=signed.nonce, expires_at=expires))
            session.flush()
    except IntegrityError:
        return False
    return True


def sweep_nonces(session: Session) -> int:
    """Forget nonces whose signatures are too old to pass anyway (``federation.nonces``)."""
    result = session.execute(delete(SeenNonce).where(SeenNonce.expires_at < utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


# -- signed exchanges: sending -------------------------------------------------------------------
@dataclass
class Answer:
    """What one peer (or this hub) answered: a Beacon document, or why not."""

    peer: str
    base_url: str
    ok: bool
    status: int | None = None
    error: str = ""
    document: dict[str, Any] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return bool(self.document.get("responseSummary", {}).get("exists"))

    @property
    def count(self) -> int | str | None:
        summary = self.document.get("responseSummary", {})
        if "numTotalResults" in summary:
            return int(summary["numTotalResults"])
        # "< 5" also when exists is false: a combination of terms below 5 (zero included) says so, never 0
        count = self.document.get("info", {}).get("count")
        return count if isinstance(count, int | str) else None


# What this hub reads of a peer's answer, however much it sends and however slowly (a registered peer may still
# be malicious), through `bounded_http` (never compressed, each wait at most the peer timeout unless said): its DCAT
# catalogue up to MAX_CATALOG_BYTES within CATALOG_SECONDS; every other answer — a Beacon answer, hello, a notice's,
# a push's manifest, body, fetch and publish — up to MAX_ANSWER_BYTES, within twice the peer timeout (a Beacon
# answer), EXCHANGE_SECONDS (hello, a notice, a push's manifest and publish) or `transfer_seconds` (one body, sent
# or fetched, with its answer).
MAX_CATALOG_BYTES = 20 * 1024 * 1024
CATALOG_SECONDS = 120.0
MAX_ANSWER_BYTES = 1024 * 1024
EXCHANGE_SECONDS = 300.0
TRANSFER_BASE_SECONDS = 600.0
MIN_TRANSFER_RATE = 256 * 1024  # bytes per second: a slower body is cut off


def transfer_seconds(size: int) -> float:
    """How long one body of ``size`` bytes may take to travel, the peer's answer included (it checks the body
    before it answers)."""
    return TRANSFER_BASE_SECONDS + size / MIN_TRANSFER_RATE


def answer_bounds(settings: Settings, total_seconds: float, *, read_seconds: float | None = None,
                  max_bytes: int | None = None) -> bounded_http.Bounds:
    """A peer's answer's bounds: ``MAX_ANSWER_BYTES`` unless said, each wait at least the peer timeout."""
    timeout = settings.federation.peer_timeout_seconds
    return bounded_http.Bounds(max_bytes=MAX_ANSWER_BYTES if max_bytes is None else max_bytes,
                               total_seconds=total_seconds, read_seconds=max(timeout, read_seconds or timeout))


def signature_headers(settings: Settings, method: str, peer_url: str, path: str, query: str = "",
                      body: bytes = b"", *, body_sha256: str | None = None) -> dict[str, str]:
    """The headers signing a request to the peer at ``peer_url`` (its registered address, which the request is
    sent to) with this hub's key: every signed hub-to-hub request is signed here. The signature covers the
    peer's authority, so only that peer accepts it (a peer cannot pass it on to another hub that trusts this one)."""
    return hub_key(settings).sign(method, path, query, body, recipient=peer_url, body_sha256=body_sha256)


def signed_get(settings: Settings, peer_url: str, path: str, params: Sequence[tuple[str, str]] = (), *,
               bounds: bounded_http.Bounds | None = None) -> bounded_http.Reply:
    """GET ``path`` on a peer, signed with this hub's key, its answer read within ``bounds`` (`bounded_http`:
    AnswerRefused beyond them; by default a peer's answer within ``EXCHANGE_SECONDS``). Blocking; callable from
    anywhere (jobs, federated search's pool, the CLI, a request handler)."""
    bounds = bounds or answer_bounds(settings, EXCHANGE_SECONDS)
    query = urlencode(list(params))
    headers = {**signature_headers(settings, "GET", peer_url, path, query),
               "Accept": "application/json, text/turtle;q=0.9"}
    url = peer_url.rstrip("/") + path + (f"?{query}" if query else "")
    return bounded_http.fetch("GET", url, bounds, headers=headers)


def signed_post(settings: Settings, peer_url: str, path: str, body: bytes,
                bounds: bounded_http.Bounds) -> bounded_http.Reply:
    """POST a JSON ``body`` to ``path`` on a peer, signed, its answer read within ``bounds``."""
    headers = {**signature_headers(settings, "POST", peer_url, path, "", body), "Content-Type": "application/json",
               "Accept": "application/json"}
    return bounded_http.fetch("POST", peer_url.rstrip("/") + path, bounds, headers=headers, content=body)


def hello(hub: Hub, name: str, actor: audit.Actor) -> tuple[bool, str]:
    """A signed greeting to a peer (both hubs' registrations checked end to end), audited here as sent."""
    with transaction(hub.sessions) as session:
        peer = peer_by_name(session, name)
        if not (peer.active and peer.outbound):
            raise Invalid(f"{name} is suspended or outbound exchanges with it are not allowed")
        url = peer.base_url
    try:
        # an operator's one-off check, not a fan-out query: a slow peer gets time to answer (as notices do)
        r = signed_get(hub.settings, url, f"{PEER_PATH}/hello",
                       bounds=answer_bounds(hub.settings, EXCHANGE_SECONDS, read_seconds=30))
        ok = r.status_code == 200
        said = "verified" if ok else f"HTTP {r.status_code}: {r.text[:300]}"
    except httpx.HTTPError as exc:  # also an answer refused (too large, too slow, compressed)
        ok, said = False, bounded_http.describe(exc)
    with transaction(hub.sessions) as session:
        audit.record(session, actor, "federation.exchange.sent", outcome="ok" if ok else "failed",
                     target=f"peer:{name}", details={"what": "hello", **({} if ok else {"error": said})})
    return ok, said


def _ask(settings: Settings, peer: Peer, entry_type: str, filters: Sequence[str]) -> Answer:
    path = beacon.Beacon(id="", name="", base_url="", organization="").root + "/" + beacon.ENTRY_PATHS[entry_type]
    params = [("requestedGranularity", "count")] + ([("filters", ",".join(filters))] if filters else [])
    try:
        r = signed_get(settings, peer.base_url, path, params,
                       bounds=answer_bounds(settings, 2 * settings.federation.peer_timeout_seconds))
    except httpx.HTTPError as exc:  # also an answer refused (too large, too slow, compressed)
        return Answer(peer.name, peer.base_url, ok=False, error=bounded_http.describe(exc))
    if r.status_code != 200:
        return Answer(peer.name, peer.base_url, ok=False, status=r.status_code, error=f"HTTP {r.status_code}")
    try:
        doc = r.json()
        summary, total = doc["responseSummary"], doc["responseSummary"].get("numTotalResults", 0)
        if not isinstance(summary.get("exists"), bool) or isinstance(total, bool) or not isinstance(total, int) \
                or not isinstance(doc.get("info", {}), dict):
            raise ValueError("no exists, or a count that is not one")
    except (ValueError, KeyError, TypeError, AttributeError):  # a shape that is not Beacon v2's
        return Answer(peer.name, peer.base_url, ok=False, status=200, error="not a Beacon v2 response")
    return Answer(peer.name, peer.base_url, ok=True, status=200, document=doc)


def federated_search(session: Session, hub: Hub, actor: audit.Actor, entry_type: str,
                     filters: Sequence[str]) -> list[Answer]:
    """This hub's answer first, then every active outbound peer's, asked in parallel (each with the peer
    timeout); every question sent is audited with its outcome."""
    settings = hub.settings
    own = Answer("this hub", base(settings), ok=True, status=200,
                 document=beacon_of(settings).query(entry_type, studies(session), filters))
    targets = [p for p in peers(session) if p.active and p.outbound]
    answers: list[Answer] = []
    if targets:
        with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
            answers = list(pool.map(lambda p: _ask(settings, p, entry_type, filters), targets))
    for a in answers:
        audit.record(session, actor, "federation.exchange.sent", outcome="ok" if a.ok else "failed",
                     target=f"peer:{a.peer}", details={"what": f"beacon:{entry_type}", "filters": list(filters),
                                                       **({"error": a.error} if a.error else {})})
    return [own, *answers]


# -- harvesting ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Harvested:
    remote_id: str
    landing_url: str
    title: str
    description: str
    publisher: str
    keywords: tuple[str, ...]


def parse_dcat(turtle: bytes, limit: int, base: str) -> list[Harvested]:
    """The dcat:Dataset entries of a DCAT catalogue (Turtle) harvested from the peer at ``base``: the landing
    page (a link on this hub's catalogue page) must be an http(s) address at the peer (``manifest.url_under``);
    an entry whose landing page is not is left out."""
    from rdflib import Graph, URIRef
    from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF

    g = Graph()
    g.parse(data=turtle, format="turtle")
    out = []
    for node in g.subjects(RDF.type, DCAT.Dataset):
        landing = g.value(node, DCAT.landingPage)
        title = g.value(node, DCTERMS.title)
        if not isinstance(landing, URIRef) or not url_under(str(landing), base) or title is None:
            continue
        publisher = g.value(node, DCTERMS.publisher)
        name = g.value(publisher, FOAF.name) if publisher is not None else None
        out.append(Harvested(remote_id=str(node)[:1000], landing_url=str(landing), title=str(title)[:300],
                             description=str(g.value(node, DCTERMS.description) or "")[:5000],
                             publisher=str(name or "")[:300],
                             keywords=tuple(sorted({str(k)[:100] for k in g.objects(node, DCAT.keyword)}))[:50]))
        if len(out) >= limit:
            break
    return sorted(out, key=lambda h: h.remote_id)


def store_harvest(session: Session, peer: Peer, entries: Sequence[Harvested]) -> dict[str, int]:
    """Replace what was harvested from ``peer`` with ``entries`` (in the caller's transaction)."""
    have = {e.remote_id: e for e in session.scalars(select(RemoteEntry).where(RemoteEntry.peer_id == peer.id))}
    now, seen = utcnow(), set()
    for h in entries:
        seen.add(h.remote_id)
        row = have.get(h.remote_id) or RemoteEntry(peer_id=peer.id, remote_id=h.remote_id)
        row.landing_url, row.title, row.description = h.landing_url, h.title, h.description
        row.publisher, row.keywords, row.harvested_at = h.publisher, list(h.keywords), now
        row.search_text = " ".join([h.title, h.description, h.publisher, *h.keywords, peer.name]).lower()
        session.add(row)
    gone = [r for rid, r in have.items() if rid not in seen]
    for r in gone:
        session.delete(r)
    peer.last_harvest_at, peer.last_harvest_error = now, None
    return {"entries": len(entries), "removed": len(gone)}


def harvest(hub: Hub, transaction: Callable[[], Any]) -> dict[str, Any]:
    """Fetch every active outbound peer's DCAT catalogue (signed) and keep its entries as remote ones. The
    network is used outside any transaction; each peer's result is stored in its own."""
    settings = hub.settings
    with transaction() as session:
        targets = [(p.id, p.name, p.base_url) for p in peers(session) if p.active and p.outbound]
    done: dict[str, Any] = {}
    for peer_id, name, url in targets:
        error, entries = "", []
        try:
            r = signed_get(settings, url, f"{PEER_PATH}/catalog.ttl",
                           bounds=answer_bounds(settings, CATALOG_SECONDS, max_bytes=MAX_CATALOG_BYTES))
            if r.status_code != 200:
                error = f"HTTP {r.status_code}"
            else:
                entries = parse_dcat(r.content, settings.federation.max_remote_entries, url)
        except bounded_http.AnswerRefused as exc:  # the entries harvested before stay
            error = f"catalogue not read: {exc}"
        except httpx.HTTPError as exc:
            error = f"no answer ({type(exc).__name__})"
        except Exception as exc:  # a malformed catalogue: rdflib raises many kinds
            error = f"not a DCAT catalogue ({type(exc).__name__})"
        with transaction() as session:
            peer = session.get(Peer, peer_id)
            if peer is None:
                continue
            actor = audit.Actor.system("federation.harvest")
            if error:
                peer.last_harvest_error = error
                done[name] = {"error": error}
            else:
                done[name] = store_harvest(session, peer, entries)
            audit.record(session, actor, "federation.exchange.sent", outcome="failed" if error else "ok",
                         target=f"peer:{name}", details={"what": "catalog", **done[name]})
    return done


def remote_entries(session: Session, q: str = "", *, limit: int = 50) -> list[dict[str, Any]]:
    """Harvested entries of active peers for the catalogue page (matching ``q``), marked remote."""
    stmt = (select(RemoteEntry, Peer.name, Peer.base_url).join(Peer, Peer.id == RemoteEntry.peer_id)
            .where(Peer.active.is_(True), Peer.outbound.is_(True)))
    for word in q.lower().split()[:10]:
        stmt = stmt.where(RemoteEntry.search_text.contains(word, autoescape=True))
    rows = session.execute(stmt.order_by(RemoteEntry.title, RemoteEntry.id).limit(limit)).all()
    # a link on the public catalogue page: only to an address at the peer (a row harvested before the rule is not)
    return [{"title": e.title, "url": e.landing_url, "publisher": e.publisher, "peer": name,
             "snippet": e.description[:280], "keywords": e.keywords} for e, name, base in rows
            if url_under(e.landing_url, base)]


