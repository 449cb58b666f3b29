"""OpenID Connect login (authorization code + PKCE) against any OpenID Provider.

MFA is *verified*, not only requested: we ask for the REFEDS MFA profile with ``acr_values``,
then accept the login as multi-factor only when the signed id_token's ``acr`` is one of the
configured MFA values. The id_token's signature, issuer, audience, expiry and nonce are checked
with joserfc against the provider's published keys.

A re-authentication (the hub asks for a fresh second factor) sends ``prompt=login`` and ``max_age=0``, so the
provider must ask for the user's credentials again instead of answering from its own session; the id_token's
``auth_time`` then shows whether it did (``OidcIdentity.authenticated_since``).
"""

from __future__ import annotations

import datetime as dt
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import authlib.deprecate  # noqa: F401 - installs authlib's own "always" filter; ours must come after it
import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization

from .. import bounded_http
from ..config import OidcSettings
from ..errors import Invalid, Unauthenticated, Unavailable
from .secrets import equal_secrets

if TYPE_CHECKING:
    from authlib.integrations.httpx_client import OAuth2Client

# authlib announces a future move to httpx2 when its httpx client is imported: nothing for us to act on,
# and it would greet every command and server start.
warnings.filterwarnings("ignore", message="The httpx module is deprecated")

_DISCOVERY_TTL = 300.0
# what is read of the provider's answers (discovery, keys, tokens): bounded as any remote partner's (`bounded_http`)
PROVIDER_BOUNDS = bounded_http.Bounds(max_bytes=1024 * 1024, total_seconds=30.0, read_seconds=10.0)
_LEEWAY_SECONDS = 60
# How long before the authorization request the provider's ``auth_time`` may lie and still count as an
# authentication for that request: clock skew between the provider and the hub.
AUTH_TIME_SKEW = dt.timedelta(minutes=2)


@dataclass
class OidcIdentity:
    issuer: str
    subject: str
    name: str
    email: str | None
    affiliation: str | None
    acr: str | None
    mfa: bool
    auth_time: dt.datetime | None = None  # when the provider last authenticated the user, if it said so

    def authenticated_since(self, requested_at: dt.datetime) -> bool:
        """Whether the provider authenticated the user for the request made at ``requested_at`` (allowing
        ``AUTH_TIME_SKEW``), rather than answering from an earlier session of its own. Unknown is no."""
        return self.auth_time is not None and self.auth_time >= requested_at - AUTH_TIME_SKEW


class OidcClient:
    def __init__(self, settings: OidcSettings, redirect_uri: str) -> None:
        self.settings = settings
        self.redirect_uri = redirect_uri
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        _check_issuer_url(settings)

    @property
    def enabled(self) -> bool:
        return bool(self.settings.issuer)

    def metadata(self) -> dict[str, Any]:
        if self._metadata is None or time.monotonic() - self._metadata_at > _DISCOVERY_TTL:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            metadata = _fetch_json(url)
            if metadata.get("issuer") != self.settings.issuer:
                raise Invalid("OpenID Provider metadata names a different issuer")
            self._metadata, self._metadata_at, self._keys = metadata, time.monotonic(), None
        return self._metadata

    def _client(self, code_verifier: str | None = None) -> OAuth2Client:
        from authlib.integrations.httpx_client import OAuth2Client  # after the warnings filter above

        return OAuth2Client(
            client_id=self.settings.client_id,
            client_secret=self.settings.client_secret.get_secret_value(),
            scope=self.settings.scopes,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic",
            timeout=15,
            transport=bounded_http.BoundedTransport(PROVIDER_BOUNDS),
        )

    def authorization_url(self, *, state: str, nonce: str, code_verifier: str, reauth: bool = False) -> str:
        """The provider's authorization request. ``reauth``: the user must present their credentials (and second
        factor) again now: ``prompt=login`` and ``max_age=0``, which also make ``auth_time`` mandatory."""
        meta = self.metadata()
        extra = {"prompt": "login", "max_age": "0"} if reauth else {}
        with self._client() as client:
            url, _ = client.create_authorization_url(
                meta["authorization_endpoint"], state=state, nonce=nonce, code_verifier=code_verifier,
                acr_values=" ".join(self.settings.mfa_acr_values), **extra,
            )
        return url

    def complete(self, *, code: str, code_verifier: str, nonce: str) -> OidcIdentity:
        meta = self.metadata()
        try:
            with self._client() as client:
                token = client.fetch_token(meta["token_endpoint"], grant_type="authorization_code",
                                           code=code, code_verifier=code_verifier)
        except Exception as exc:  # authlib raises several types; all mean "refused"
            raise Unauthenticated(f"the identity provider refused the login ({type(exc).__name__})") from exc
        raw = token.get("id_token")
        if not raw:
            raise Unauthenticated("the identity provider sent no id_token")
        claims = self._validated_claims(raw, nonce)
        acr = claims.get("acr")
        affiliation = claims.get("eduperson_scoped_affiliation")
        if isinstance(affiliation, list):
            affiliation = ", ".join(str(a) for a in affiliation)
        return OidcIdentity(
            issuer=claims["iss"], subject=str(claims["sub"]),
            name=str(claims.get("name") or claims.get("preferred_username") or claims["sub"]),
            # Only a verified address: people are added to projects by e-mail.
            email=claims.get("email") if claims.get("email_verified") is True else None,
            affiliation=affiliation, acr=acr, mfa=acr in self.settings.mfa_acr_values,
            auth_time=_auth_time(claims),
        )

    def _key_set(self, refresh: bool = False) -> KeySet:
        if self._keys is None or refresh:
            self._keys = KeySet.import_key_set(cast(KeySetSerialization, _fetch_json(self.metadata()["jwks_uri"])))
        return self._keys

    def _validated_claims(self, raw: str, nonce: str) -> dict[str, Any]:
        algorithms = self.metadata().get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [a for a in algorithms if a != "none"]
        try:
            try:
                decoded = jwt.decode(raw, self._key_set(), algorithms=algorithms)
            except (JoseError, ValueError):  # keys may have rotated: refetch once
                decoded = jwt.decode(raw, self._key_set(refresh=True), algorithms=algorithms)
            registry = jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": self.settings.issuer},
                aud={"essential": True, "value": self.settings.client_id},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True, "value": nonce},
                leeway=_LEEWAY_SECONDS,
            )
            registry.validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise Unauthenticated(f"the id_token failed validation: {exc}") from exc
        # joserfc's "value" option also accepts a list that merely contains the value (it is made
        # for aud): the nonce must be exactly the single string we sent.
        sent = decoded.claims.get("nonce")
        if not isinstance(sent, str) or not equal_secrets(sent, nonce):
            raise Unauthenticated("the id_token failed validation: nonce does not match")
        azp = decoded.claims.get("azp")
        if azp is not None and azp != self.settings.client_id:
            raise Unauthenticated("the id_token was issued to another client")
        if "auth_time" in decoded.claims:
            auth_time = decoded.claims["auth_time"]
            if isinstance(auth_time, bool) or not isinstance(auth_time, int | float) or not 0 <= auth_time < 2**40:
                raise Unauthenticated("the id_token failed validation: auth_time is not a time")
            if auth_time > time.time() + _LEEWAY_SECONDS:
                raise Unauthenticated("the id_token failed validation: auth_time is in the future")
        return decoded.claims


def _auth_time(claims: dict[str, Any]) -> dt.datetime | None:
    value = claims.get("auth_time")
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


def _fetch_json(url: str) -> dict[str, Any]:
    try:
        response = bounded_http.fetch("GET", url, PROVIDER_BOUNDS, headers={"Accept": "application/json"})
        document = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:  # also an answer refused (too large, too slow, compressed)
        raise Unavailable("the identity provider cannot be reached; try again in a minute") from exc
    if not isinstance(document, dict):
        raise Unavailable("the identity provider cannot be reached; try again in a minute")
    return document


def _check_issuer_url(settings: OidcSettings) -> None:
    if not settings.issuer:
        return
    parts = urlsplit(settings.issuer)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (loopback and settings.allow_insecure_loopback):
        raise Invalid("the OIDC issuer must be an https URL")
