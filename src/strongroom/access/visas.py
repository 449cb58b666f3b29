"""GA4GH Passport visas: the hub issues signed ``ControlledAccessGrants`` visas for a user's
active entitlements, and accepts visas from configured trusted issuers as a basis for download.

Issuing (Passport 1.2 "Visa Issuer"): one visa per active entitlement, ES256, signed with a key
generated once into ``<var_dir>/keys/visa-signing.jwk`` (0600); ``kid`` is the RFC 7638 thumbprint
and the header ``jku`` points at ``/.well-known/jwks.json``.

Accepting ("Passport Clearinghouse"): a request may carry visas in the ``X-GA4GH-Passport`` header,
or in the ``passports`` of a DRS POST body. `PassportVerifier` checks each one in this order, and stops
at the first failure: size → structure → (iss, jku) on the allowlist (nothing is fetched before this;
the hub's own issuer and JWKS URL are always on it, verified with the local key) → JWKS from that
jku (cached, timeouts) → signature → iat/exp → visa object (type, asserted, value, source, by,
shape of ``conditions``).

Revocation takes effect on the next request. A visa this hub issued names its entitlement in its
``jti`` (``<entitlement id>.<random>``), and every use checks that entitlement afresh (revoked, ended,
another user or dataset: refused), plus the short revocation list of single visas
(`VisaRevocation`). A foreign visa is bounded by its ``exp``: GA4GH AAI 1.2 defines no revocation
list for visas, and the trusted-issuer configuration has no such mechanism to honour (docs/ga4gh.md).

`granting_visas` keeps the ``ControlledAccessGrants`` visas whose
``conditions`` (DNF: outer list OR, inner list AND) are each met by another verified visa of the
same passport that has no conditions of its own.

Only the verification needs the network, so it runs in the async middleware before the request's
database transaction opens (`visas_api.PassportMiddleware`); the result travels to the read check
in `CURRENT_PASSPORT`, a context variable, because grant providers receive (session, principal,
file) and no request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .. import bounded_http, keyfiles
from ..archive.authz import VersionGrant
from ..archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..archive.service import ReadGrant
from ..audit import service as audit
from ..config import AccessSettings, Settings
from ..db import utcnow
from ..errors import Invalid, NotFound
from ..identity.models import User
from ..identity.principal import Principal
from ..parsing import whole_number_in
from ..paths import private_dir
from ..schemas import INT32_MAX
from .models import Entitlement, VisaRevocation

log = structlog.get_logger("strongroom.visas")

VISA_TYPE = "ControlledAccessGrants"
VISA_JWT_TYP = "vnd.ga4gh.visa+jwt"
PASSPORT_JWT_TYP = "vnd.ga4gh.passport+jwt"
PASSPORT_LIFETIME = dt.timedelta(hours=1)  # a passport is a bearer credential: short, visas inside end earlier
ALGORITHMS = ["ES256", "RS256"]  # what GA4GH AAI 1.2 names
CONDITION_FIELDS = {"type", "value", "source", "by"}  # string fields a clause may test (no timestamps)
PASSPORT_HEADER = "x-ga4gh-passport"


# -- the hub's signing key ---------------------------------------------------------------------
def key_path(settings: Settings) -> Path:
    return settings.access.visa_key_file or settings.var_dir / "keys" / "visa-signing.jwk"


def retired_dir(settings: Settings) -> Path:
    """Public halves of earlier signing keys (``<key file stem>-retired/<kid>.jwk``), kept by a scheduled
    rotation."""
    path = key_path(settings)
    return path.with_name(f"{path.stem}-retired")


def signing_key(settings: Settings) -> ECKey:
    """The visa signing key (P-256), generated on first use (safe when several processes start at once).
    Read again whenever the file changes: after ``rotate_signing_key`` on any host sharing the keys
    directory, every process signs with the new key from its next use, without a restart."""
    return keyfiles.load(key_path(settings),
                         lambda: json.dumps(ECKey.generate_key("P-256", private=True).as_dict(private=True)),
                         lambda text: ECKey.import_key(json.loads(text)))


def retired_keys(settings: Settings) -> list[ECKey]:
    """Earlier signing keys a scheduled rotation kept (public halves only): what they signed still verifies —
    this hub's visas until they expire, deletion certificates for good — and the JWKS still publishes them."""
    folder = retired_dir(settings)
    keys = []
    for path in sorted(folder.glob("*.jwk")) if folder.is_dir() else []:
        try:
            keys.append(ECKey.import_key(json.loads(path.read_text())))
        except (OSError, ValueError, JoseError):
            log.warning("visa.retired_key_unreadable", path=str(path))
    return keys


def verification_keys(settings: Settings) -> KeySet:
    """Every key a signature of this hub may verify with: the current one and the retired ones."""
    return KeySet(list(_published(settings)))


def _published(settings: Settings) -> list[ECKey]:
    return [signing_key(settings), *retired_keys(settings)]


def rotate_signing_key(settings: Settings, *, compromised: bool = False) -> tuple[str, str]:
    """A new signing key; returns (old kid, new kid). Scheduled (the default): the old key's public half is
    kept in ``retired_dir`` — its visas verify until they expire, its deletion certificates for good — and
    its private half is gone. ``compromised``: the old key is dropped altogether, so nothing it signed
    verifies any more (visas, passports and certificates alike: it may have signed forgeries)."""
    old = signing_key(settings)
    if not compromised:
        folder = retired_dir(settings)
        private_dir(folder)
        keyfiles.replace(folder / f"{key_id(old)}.jwk", json.dumps(old.as_dict(private=False)))
    new = ECKey.generate_key("P-256", private=True)
    keyfiles.replace(key_path(settings), json.dumps(new.as_dict(private=True)))
    return key_id(old), key_id(new)


def key_id(key: ECKey) -> str:
    return key.thumbprint()  # RFC 7638


def jwks_url(settings: Settings) -> str:
    return f"{settings.base_url.rstrip('/')}/.well-known/jwks.json"


def jwks(settings: Settings) -> dict[str, Any]:
    """The current key first, then the retired ones (public halves only)."""
    return {"keys": [{**key.as_dict(private=False), "kid": key_id(key), "use": "sig", "alg": "ES256"}
                     for key in _published(settings)]}


# -- issuing -----------------------------------------------------------------------------------
def dataset_url(base_url: str, dataset_id: str, version: int | None = None) -> str:
    """The stable identifier a visa's ``value`` carries: the dataset (all versions) or one version. Both
    resolve without a login: to the dataset's public catalogue page when it has one (archive.web)."""
    url = f"{base_url.rstrip('/')}/datasets/{dataset_id}"
    return url if version is None else f"{url}/versions/{version}"


def active_entitlements(session: Session, user_id: uuid.UUID, now: dt.datetime | None = None
                        ) -> list[Entitlement]:
    now = now or utcnow()
    rows = session.scalars(select(Entitlement).where(
        Entitlement.user_id == user_id, Entitlement.revoked_at.is_(None), Entitlement.starts_at <= now,
        Entitlement.ends_at > now).order_by(Entitlement.starts_at))
    return [e for e in rows if e.active(now)]


def issue_visa(settings: Settings, user: User, ent: Entitlement, now: dt.datetime | None = None) -> str:
    now = now or utcnow()
    base = settings.base_url.rstrip("/")
    key = signing_key(settings)
    header = {"alg": "ES256", "typ": VISA_JWT_TYP, "kid": key_id(key), "jku": jwks_url(settings)}
    claims = {
        "iss": base,
        "sub": user.subject,
        "iat": int(now.timestamp()),
        "exp": int(ent.ends_at.timestamp()),
        "jti": f"{ent.id.hex}.{secrets.token_hex(8)}",  # names the entitlement, checked on every use
        "ga4gh_visa_v1": {
            "type": VISA_TYPE,
            "asserted": int(ent.starts_at.timestamp()),
            "value": dataset_url(base, ent.dataset_id, ent.version),
            "source": base,
            "by": "dac",
        },
    }
    return jwt.encode(header, claims, key, algorithms=["ES256"])


def entitlement_of(jti: str | None) -> uuid.UUID | None:
    """The entitlement a hub-issued visa's ``jti`` names; None for any other shape."""
    head = (jti or "").split(".", 1)[0]
    try:
        return uuid.UUID(hex=head) if len(head) == 32 else None
    except ValueError:
        return None


def issue_passport(settings: Settings, user: User, visa_tokens: list[str], now: dt.datetime) -> str:
    """A GA4GH Passport 1.2 JWT (``typ`` vnd.ga4gh.passport+jwt) holding the visas; it ends within the
    hour and never after the first visa inside it."""
    key = signing_key(settings)
    base = settings.base_url.rstrip("/")
    ends = [int((now + PASSPORT_LIFETIME).timestamp())]
    for token in visa_tokens:
        ends.append(int(json.loads(jws.extract_compact(token.encode()).payload)["exp"]))
    header = {"alg": "ES256", "typ": PASSPORT_JWT_TYP, "kid": key_id(key), "jku": jwks_url(settings)}
    claims = {"iss": base, "sub": user.subject, "iat": int(now.timestamp()), "exp": min(ends),
              "jti": uuid.uuid4().hex, "ga4gh_passport_v1": visa_tokens}
    return jwt.encode(header, claims, key, algorithms=["ES256"])


def passport_of(session: Session, settings: Settings, user: User) -> dict[str, Any]:
    """REMS-style permissions: one visa per active entitlement, in ``ga4gh_passport_v1`` form, and the
    same visas as a signed Passport 1.2 JWT (``passport``)."""
    now = utcnow()
    tokens = [issue_visa(settings, user, e, now) for e in active_entitlements(session, user.id, now)]
    return {"ga4gh_passport_v1": tokens, "passport": issue_passport(settings, user, tokens, now)}


def revoke_visa(session: Session, settings: Settings, principal: Principal, token: str, reason: str) -> str:
    """Put one visa this hub issued on the revocation list (its subject or a platform admin). Refused from
    the next request on; the entry goes once the visa would have expired. Returns the ``jti``."""
    try:
        claims = jwt.decode(token, verification_keys(settings), algorithms=["ES256"]).claims
    except (JoseError, ValueError, TypeError, KeyError):
        raise Invalid("not a visa signed by this hub") from None
    jti, sub, exp = claims.get("jti"), claims.get("sub"), claims.get("exp")
    if claims.get("iss") != settings.base_url.rstrip("/") or not isinstance(jti, str) or not isinstance(exp, int):
        raise Invalid("not a visa issued by this hub")
    ent = session.get(Entitlement, entitlement_of(jti)) if entitlement_of(jti) else None
    holder = ent.user_id if ent is not None else None
    if (sub != principal.user.subject or holder != principal.user.id) and not principal.user.is_admin:
        raise NotFound("not found")  # someone else's visa (its entitlement's user): as if it did not exist
    now = utcnow()
    session.execute(delete(VisaRevocation).where(VisaRevocation.expires_at < now))  # keep the list short
    if session.get(VisaRevocation, jti) is None:
        session.add(VisaRevocation(jti=jti[:100], expires_at=dt.datetime.fromtimestamp(exp, dt.UTC),
                                   revoked_by=principal.user.id, reason=reason[:2000]))
    audit.record(session, principal.actor, "access.visa.revoked", target=f"visa:{jti}",
                 details={"subject": sub, "reason": reason[:500]})
    return jti


# -- accepting ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Visa:
    """A visa whose signature, issuer and times have been verified."""

    iss: str
    sub: str
    exp: int
    jti: str | None
    type: str
    value: str
    source: str
    by: str | None
    asserted: int
    conditions: tuple[tuple[dict[str, str], ...], ...] = ()

    def field(self, name: str) -> str | None:
        return {"type": self.type, "value": self.value, "source": self.source, "by": self.by}.get(name)


@dataclass
class Passport:
    """What the request's ``X-GA4GH-Passport`` header held: verified visas and why others were
    refused, plus the policy they are judged by (this hub's base URL, per-issuer dataset limits)."""

    visas: list[Visa] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    base_url: str = ""
    subject_must_match: bool = True
    issuer_datasets: dict[str, set[str]] = field(default_factory=dict)  # iss → accessions; empty = any
    subject_issuers: dict[str, set[str]] = field(default_factory=dict)  # iss → login issuers of its subs


# Issuers trusted for some datasets only, added by other capabilities (federation: each peer's visa issuer
# for the datasets mirrored from it): ``source(hub) -> [(iss, jku, dataset ids)]``, read on every request
# that carries visas (in a worker thread, before the request's transaction).
TRUSTED_ISSUER_SOURCES: list[Callable[[Any], list[tuple[str, str, frozenset[str]]]]] = []
# Other values a visa may name a local dataset by, each with the only issuer whose visas may use it
# (federation: a mirror is named by its origin's dataset URL): ``alias(session, dataset_id) -> [(value, iss)]``.
DATASET_ALIASES: list[Callable[[Session, str], list[tuple[str, str]]]] = []

# The verified passport of the request being served (set by `visas_api.PassportMiddleware`).
CURRENT_PASSPORT: ContextVar[Passport | None] = ContextVar("strongroom_passport", default=None)


class VisaRejected(Exception):
    pass


def open_passports(tokens: Iterable[str], settings: AccessSettings) -> list[str]:
    """Visa JWTs; any token that is a passport (has ``ga4gh_passport_v1``) is opened into its visas.
    The passport wrapper itself needs no trust: every visa inside is verified on its own."""
    out: list[str] = []
    for token in (t.strip() for t in tokens):
        if not token:
            continue
        try:
            payload = json.loads(jws.extract_compact(token.encode()).payload)
        except (JoseError, ValueError, TypeError):
            out.append(token)  # fails verification later, with a reason
            continue
        inner = payload.get("ga4gh_passport_v1") if isinstance(payload, dict) else None
        if isinstance(inner, list) and "ga4gh_visa_v1" not in payload:
            out.extend(str(v) for v in inner)
        else:
            out.append(token)
        if len(out) > settings.max_visas:
            break
    return out[: settings.max_visas]


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _check_jku_url(jku: str, settings: AccessSettings) -> None:
    parts = urlsplit(jku)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and settings.allow_insecure_loopback_jku and _is_loopback(parts.hostname):
        return
    raise VisaRejected("jku must be an https URL")


def _string(obj: dict[str, Any], name: str, *, required: bool = True, limit: int = 255) -> str | None:
    value = obj.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise VisaRejected(f"ga4gh_visa_v1.{name} must be a string of 1-{limit} characters")
    return value


def _parse_conditions(raw: Any) -> tuple[tuple[dict[str, str], ...], ...]:
    if raw is None or raw == []:
        return ()
    if not isinstance(raw, list) or not all(isinstance(group, list) and group for group in raw):
        raise VisaRejected("conditions must be a non-empty list of non-empty lists")
    out = []
    for group in raw:
        clauses = []
        for clause in group:
            if not isinstance(clause, dict) or not isinstance(clause.get("type"), str):
                raise VisaRejected("every condition clause needs a type")
            if not set(clause) <= CONDITION_FIELDS or len(clause) < 2:
                raise VisaRejected("condition clauses may test only type, value, source and by")
            if not all(isinstance(v, str) for v in clause.values()):
                raise VisaRejected("condition clause fields must be strings")
            clauses.append(dict(clause))
        out.append(tuple(clauses))
    return tuple(out)


@dataclass
class _CachedKeys:
    keys: KeySet
    fetched: float


class PassportVerifier:
    """Verifies visas against the trusted-issuer allowlist, caching each jku's JWKS."""

    def __init__(self, hub_settings: Settings, transport: httpx.AsyncBaseTransport | None = None,
                 extra_issuers: Callable[[], list[tuple[str, str, frozenset[str]]]] | None = None) -> None:
        self.hub_settings = hub_settings
        self.extra_issuers = extra_issuers
        self.settings: AccessSettings = hub_settings.access
        self.transport = transport
        self._cache: dict[str, _CachedKeys] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def trusted(self, iss: str, jku: str) -> bool:
        return any(t.issuer == iss and t.jku == jku for t in self.settings.trusted_visa_issuers)

    def own(self, iss: str, jku: str) -> bool:
        """The hub's own visas: verified with its local key, never fetched (their entitlement is
        checked on each use, `visa_in_force`)."""
        return iss == self.hub_settings.base_url.rstrip("/") and jku == jwks_url(self.hub_settings)

    async def _fetch(self, jku: str) -> KeySet:
        # an issuer (a partner hub) may be malicious: its key set is read up to 1 MB, as sent, in twice the timeout
        bounds = bounded_http.Bounds(1_000_000, 2 * self.settings.jwks_timeout_seconds,
                                     self.settings.jwks_timeout_seconds)
        try:
            response = await bounded_http.afetch("GET", jku, bounds, headers={"Accept": "application/json"},
                                                 transport=self.transport)
        except bounded_http.AnswerRefused as exc:
            raise VisaRejected(f"the issuer's JWKS was not read: {exc}") from None
        if response.status_code != 200:
            raise VisaRejected(f"the issuer's JWKS answered {response.status_code}")
        try:
            return KeySet.import_key_set(response.json())
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise VisaRejected("the issuer's JWKS is not a valid key set") from exc

    async def keys_for(self, jku: str, kid: str | None, budget: list[int]) -> KeySet:
        lock = self._locks.setdefault(jku, asyncio.Lock())
        async with lock:
            cached = self._cache.get(jku)
            age = time.monotonic() - cached.fetched if cached else None
            fresh = cached is not None and age is not None and age < self.settings.jwks_cache_seconds
            known = cached is not None and (kid is None or any(k.kid == kid for k in cached.keys.keys))
            # refetch when stale, or when an unknown kid suggests rotation (at most every 30 s)
            if cached is not None and fresh and (known or (age is not None and age < 30)):
                return cached.keys
            if budget[0] <= 0:
                raise VisaRejected("too many key sets to fetch for one request")
            budget[0] -= 1
            try:
                keys = await self._fetch(jku)
            except httpx.HTTPError as exc:
                log.warning("visa.jwks_unreachable", jku=jku, error=type(exc).__name__)
                raise VisaRejected("the issuer's JWKS cannot be fetched") from exc
            self._cache[jku] = _CachedKeys(keys, time.monotonic())
            return keys

    async def verify_one(self, token: str, now: int, budget: list[int],
                         extra: Iterable[tuple[str, str, frozenset[str]]] = ()) -> Visa:
        s = self.settings
        if len(token) > s.max_visa_bytes:
            raise VisaRejected("visa too large")
        try:
            unverified = jws.extract_compact(token.encode())
            payload = json.loads(unverified.payload)
        except (JoseError, ValueError, TypeError) as exc:
            raise VisaRejected("not a compact JWS") from exc
        header = unverified.protected
        if not isinstance(payload, dict):
            raise VisaRejected("the payload is not a JSON object")
        iss, jku, alg = payload.get("iss"), header.get("jku"), header.get("alg")
        if not isinstance(iss, str) or not iss:
            raise VisaRejected("no iss")
        if not isinstance(jku, str) or not jku:
            raise VisaRejected("no jku in the header (only jku-signed visas are accepted)")
        # the allowlist is checked before anything is fetched
        own = self.own(iss, jku)
        extra = list(extra)
        if not own and not any(t.issuer == iss for t in s.trusted_visa_issuers) and not any(
                e[0] == iss for e in extra):
            raise VisaRejected(f"untrusted issuer {iss[:100]!r}")
        if not own and not self.trusted(iss, jku) and (iss, jku) not in {(e[0], e[1]) for e in extra}:
            raise VisaRejected(f"jku {jku[:200]!r} is not allowed for issuer {iss[:100]!r}")
        if not own:
            _check_jku_url(jku, s)
        if alg not in ALGORITHMS:
            raise VisaRejected(f"algorithm {alg!r} not accepted")
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        keys = verification_keys(self.hub_settings) if own else await self.keys_for(jku, kid, budget)
        try:
            verified = jwt.decode(token, keys, algorithms=[alg])
        except JoseError as exc:
            raise VisaRejected(f"bad signature ({exc.error})") from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise VisaRejected("bad signature") from exc
        claims = verified.claims
        leeway = s.visa_leeway_seconds
        for name in ("iat", "exp"):
            if not isinstance(claims.get(name), int | float) or isinstance(claims.get(name), bool):
                raise VisaRejected(f"{name} must be a number")
        if claims["exp"] <= now - leeway:
            raise VisaRejected("expired")
        if claims["iat"] > now + leeway:
            raise VisaRejected("issued in the future")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise VisaRejected("no sub")
        obj = claims.get("ga4gh_visa_v1")
        if not isinstance(obj, dict):
            raise VisaRejected("no ga4gh_visa_v1 object")
        type_ = _string(obj, "type")
        value = _string(obj, "value")
        source = _string(obj, "source")
        by = _string(obj, "by", required=False)
        asserted = obj.get("asserted")
        if not isinstance(asserted, int | float) or isinstance(asserted, bool) or asserted > now + leeway:
            raise VisaRejected("asserted must be a time in the past")
        if type_ == VISA_TYPE and not by:
            raise VisaRejected("a ControlledAccessGrants visa must say who granted it (by)")
        conditions = _parse_conditions(obj.get("conditions"))
        assert type_ is not None and value is not None and source is not None
        return Visa(iss=iss, sub=sub, exp=int(claims["exp"]), jti=claims.get("jti"), type=type_, value=value,
                    source=source, by=by, asserted=int(asserted), conditions=conditions)

    def empty_passport(self, extra: Iterable[tuple[str, str, frozenset[str]]] = ()) -> Passport:
        limits: dict[str, set[str]] = {}
        for t in self.settings.trusted_visa_issuers:
            if not t.datasets:
                limits[t.issuer] = set()  # any entry without a limit lifts it for that issuer
            elif limits.get(t.issuer) != set():
                limits.setdefault(t.issuer, set()).update(t.datasets)
        for iss, _, datasets in extra:  # limited to their datasets; "" keeps the set from meaning "any"
            if limits.get(iss) != set():
                limits.setdefault(iss, {""}).update(datasets)
        return Passport(base_url=self.hub_settings.base_url.rstrip("/"),
                        subject_must_match=self.settings.visa_subject_must_match, issuer_datasets=limits,
                        subject_issuers=subject_issuers(self.settings))

    async def verify(self, raw: str) -> Passport:
        return await self.verify_tokens(raw.split(","))

    async def verify_tokens(self, tokens: Iterable[str]) -> Passport:
        import anyio

        extra = await anyio.to_thread.run_sync(self.extra_issuers) if self.extra_issuers else []
        passport = self.empty_passport(extra)
        now = int(time.time())
        budget = [self.settings.max_jwks_fetches]
        for token in open_passports(tokens, self.settings):
            try:
                passport.visas.append(await self.verify_one(token, now, budget, extra))
            except VisaRejected as exc:
                passport.rejected.append(str(exc))
        if passport.rejected:
            log.info("visa.rejected", count=len(passport.rejected),
                     reasons=sorted(set(passport.rejected))[:5])
        return passport


# -- conditions and grants ---------------------------------------------------------------------
def _matches(spec: str, actual: str | None) -> bool:
    if actual is None:
        return False
    prefix, sep, rest = spec.partition(":")
    if not sep:
        return False
    if prefix == "const":
        return actual == rest
    if prefix == "pattern":
        return _pattern(rest, actual)
    if prefix == "split_pattern":
        return any(_pattern(rest, part) for part in actual.split(";"))
    return False  # unknown prefix: the clause fails


def _pattern(pattern: str, text: str) -> bool:
    """GA4GH pattern: ``?`` one character, ``*`` any run; everything else literal, case-sensitive.

    Matched piece by piece, never as a regular expression: ``*a*a*a…b`` as a regex backtracks polynomially
    in the number of stars. Between stars each piece is found at its leftmost place, which is always safe
    (a later place leaves less text for the pieces after it), so the work is at most len(text) × len(pattern)."""
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return len(text) == len(pattern) and _piece_at(pattern, text, 0)
    first, *middle, last = pieces
    if len(first) + len(last) > len(text) or not _piece_at(first, text, 0) \
            or not _piece_at(last, text, len(text) - len(last)):
        return False
    position, end = len(first), len(text) - len(last)
    for piece in middle:
        found = next((i for i in range(position, end - len(piece) + 1) if _piece_at(piece, text, i)), None)
        if found is None:
            return False
        position = found + len(piece)
    return True


def _piece_at(piece: str, text: str, start: int) -> bool:
    """``piece`` (literal characters and ``?``) matches ``text`` at ``start``."""
    return start + len(piece) <= len(text) and all(
        c == "?" or c == text[start + i] for i, c in enumerate(piece))


def clause_met(clause: dict[str, str], visas: Iterable[Visa]) -> bool:
    for visa in visas:
        if visa.conditions:  # visas carrying conditions never satisfy another's (no nesting)
            continue
        if visa.type != clause["type"]:
            continue
        if all(_matches(spec, visa.field(name)) for name, spec in clause.items() if name != "type"):
            return True
    return False


def conditions_met(visa: Visa, passport_visas: list[Visa]) -> bool:
    if not visa.conditions:
        return True
    others = [v for v in passport_visas if v is not visa]
    return any(all(clause_met(c, others) for c in group) for group in visa.conditions)


def granting_visas(passport: Passport, subject: str | None) -> list[Visa]:
    """The ControlledAccessGrants visas that hold: for ``subject`` (when binding is on) and with
    their conditions met by the passport's other verified visas."""
    visas = [v for v in passport.visas if subject is None or v.sub == subject]
    return [v for v in visas if v.type == VISA_TYPE and v.by and conditions_met(v, visas)]


# -- the read grant ----------------------------------------------------------------------------
PUBLISHED = ("released", "deprecated")


def visa_in_force(session: Session, visa: Visa, base_url: str, now: dt.datetime | None = None,
                  holder: uuid.UUID | None = None) -> bool:
    """Revocation, checked on every use. A visa this hub issued holds only while the entitlement its
    ``jti`` names is active, for the visa's subject and dataset, and the visa is not on the revocation
    list; with ``holder``, only for that user: a ``sub`` is unique per login issuer, not across them, so
    an account of another issuer with the same subject string is not the visa's subject. A foreign visa
    holds until its ``exp`` (already checked by the verifier)."""
    if not base_url or visa.iss != base_url:
        return True
    ent_id = entitlement_of(visa.jti)
    if ent_id is None or session.get(VisaRevocation, visa.jti) is not None:
        return False
    ent = session.get(Entitlement, ent_id)
    if ent is None or not ent.active(now or utcnow()) or (holder is not None and ent.user_id != holder):
        return False
    user = session.get(User, ent.user_id)
    return (user is not None and user.subject == visa.sub
            and visa.value == dataset_url(base_url, ent.dataset_id, ent.version))


def subject_issuers(settings: AccessSettings) -> dict[str, set[str]]:
    """Per trusted visa issuer, the login issuers whose ``sub`` its visas speak of (empty: not bound)."""
    bound: dict[str, set[str]] = {}
    for t in settings.trusted_visa_issuers:
        if t.subject_issuers:
            bound.setdefault(t.issuer, set()).update(t.subject_issuers)
    return bound


def _in_force(session: Session, passport: Passport, principal: Principal) -> list[Visa]:
    if not passport.subject_must_match:
        return [v for v in granting_visas(passport, None) if visa_in_force(session, v, passport.base_url)]
    user = principal.user
    granting = [v for v in granting_visas(passport, user.subject)
                if user.issuer in passport.subject_issuers.get(v.iss, {user.issuer})]
    return [v for v in granting if visa_in_force(session, v, passport.base_url, holder=user.id)]


def visa_grant(session: Session, principal: Principal, f: ArchiveFile) -> ReadGrant | None:
    """`archive.service.GRANT_PROVIDERS` entry: the request's verified passport holds a visa that
    names a dataset (or the version) published with this file."""
    passport = CURRENT_PASSPORT.get()
    if passport is None or not passport.visas or not principal.has_mfa:
        return None
    granting = _in_force(session, passport, principal)
    if not granting:
        return None
    names: dict[str, str] = {}  # every way a visa may name a published dataset holding the file
    holding: dict[str, set[int]] = {}  # the published versions holding it, per dataset
    for dataset_id, number in session.execute(
            select(DatasetVersion.dataset_id, DatasetVersion.number)
            .join(DatasetFile, DatasetFile.version_id == DatasetVersion.id)
            .where(DatasetFile.file_id == f.id, DatasetVersion.state.in_(PUBLISHED))):
        names[dataset_id] = dataset_id
        holding.setdefault(dataset_id, set()).add(number)
        if passport.base_url:
            names[dataset_url(passport.base_url, dataset_id)] = dataset_id
            names[dataset_url(passport.base_url, dataset_id, number)] = dataset_id
    aliases = _aliases(session, set(names.values()))
    from .grants import applicant_download

    grants = []
    for visa in granting:
        named = names.get(visa.value)
        alias = aliases.get(visa.value)
        if named is None and alias is not None and alias[1] == visa.iss:
            # a mirror's alias of one version opens that version's files only, as a local version URL does
            version = _VERSION_ALIAS.search(visa.value)
            if version is None or int(version.group(1)) in holding.get(alias[0], set()):
                named = alias[0]
        if named is None:
            continue
        allowed = passport.issuer_datasets.get(visa.iss)
        if allowed and named not in allowed:
            continue
        grants.append(ReadGrant("visa", None, detail=f"{visa.iss} {visa.value}"[:500],
                                may_download=applicant_download(session, named)))
    # a visa for a dataset whose policy allows downloads wins over one that is in-platform only
    return max(grants, key=lambda g: g.may_download) if grants else None


_VERSION_ALIAS = re.compile(r"/versions/(\d+)$")


def _aliases(session: Session, dataset_ids: set[str]) -> dict[str, tuple[str, str]]:
    """value → (local dataset id, the only issuer whose visas may name it so), from `DATASET_ALIASES`."""
    out: dict[str, tuple[str, str]] = {}
    for source in DATASET_ALIASES:
        for dataset_id in dataset_ids:
            for value, iss in source(session, dataset_id):
                out[value] = (dataset_id, iss)
    return out


def visa_reader(session: Session, principal: Principal, ds: Dataset) -> VersionGrant | None:
    """`archive.service.DATASET_READERS` entry: a granting visa names this dataset (every published version) or
    one version of it (``…/versions/<n>``: that version only); the union over the passport's visas."""
    passport = CURRENT_PASSPORT.get()
    if passport is None or not passport.visas or not principal.has_mfa:
        return None
    whole = {ds.id}
    if passport.base_url:
        whole.add(dataset_url(passport.base_url, ds.id))
    prefix = dataset_url(passport.base_url, ds.id) + "/versions/" if passport.base_url else None
    aliases = _aliases(session, {ds.id})
    numbers: set[int] = set()
    for visa in _in_force(session, passport, principal):
        limit = passport.issuer_datasets.get(visa.iss)
        if limit and ds.id not in limit:
            continue
        if aliases.get(visa.value, ("", ""))[1] == visa.iss:
            # an alias names the dataset, or one version as ``<alias>/versions/<n>`` (federation's mirrors)
            base, _, number = visa.value.rpartition("/versions/")
            version = whole_number_in(number, 1, INT32_MAX)  # "²" is a digit to isdigit(), not to int()
            if version is not None and aliases.get(base, ("", ""))[1] == visa.iss:
                numbers.add(version)
                continue
            return VersionGrant()
        if visa.value in whole:
            return VersionGrant()
        if prefix and visa.value.startswith(prefix):
            version = whole_number_in(visa.value[len(prefix):], 1, INT32_MAX)
            if version is not None:
                numbers.add(version)
    return VersionGrant(frozenset(numbers)) if numbers else None
