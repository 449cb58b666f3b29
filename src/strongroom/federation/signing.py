"""Hub-to-hub request signatures (pure: ``cryptography`` only, no web or database imports).

The shape of HTTP Message Signatures (RFC 9421) with Ed25519: the signer covers the method, the recipient hub's
``@authority``, the path with its query, the ``Date`` header and the body's ``Content-Digest`` (SHA-256, RFC
9530); the signature base is written line by line as RFC 9421 writes it, and travels in ``Signature-Input`` /
``Signature`` under the label ``sr``. The signature parameters carry ``created`` and a random ``nonce`` (RFC
9421 §2.3), both covered by the signature. The verifier finds the peer by ``keyid`` (the pinned key the operator
registered), checks that ``created`` is within ``max_skew`` of its clock, that the digest matches the body it
received, and the signature, and returns the nonce: refusing a nonce seen before (a replayed request) is the
caller's job, with a store every web server shares (``service.verify_request``). Any failure is a
:class:`SignatureError` with the reason; nothing is half-accepted.

**The recipient.** A nonce is only ever seen by the hub that received it, so without more a peer B could send a
request hub A signed for B on to a hub C that trusts A too, within the skew window, and C would act on it. The
signature therefore covers ``@authority``: the signer writes the authority of the address it dials — the peer's
registered address — and the verifier rebuilds the signature base with its **own** authority, from its configured
``base_url`` (never from the request's ``Host``, which the sender chooses, and which a reverse proxy may rewrite),
so a request signed for another hub does not verify. Both sides write the authority with one function,
:func:`authority` (host in lower case, an IPv6 address in brackets, the scheme's default port left out).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

LABEL = "sr"
COMPONENTS = ('"@method"', '"@authority"', '"@path"', '"@query"', '"date"', '"content-digest"')
# what a hub from before the recipient was covered signs: refused, saying it must be upgraded
UNBOUND_COMPONENTS = ('"@method"', '"@path"', '"@query"', '"date"', '"content-digest"')
DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"^[a-z0-9._~%!$&'()*+,;=:-]+$")  # RFC 3986 reg-name / IP literal characters, lower case
MAX_SKEW_SECONDS = 300
_INPUT = re.compile(r'^sr=\(([^)]*)\);created=(\d{1,12})(?:;nonce="([A-Za-z0-9_-]{16,64})")?'
                    r';keyid="([0-9a-f]{16,64})";alg="ed25519"$')
_SIGNATURE = re.compile(r"^sr=:([A-Za-z0-9+/=]{1,200}):$")


class SignatureError(ValueError):
    """A request whose signature cannot be accepted; ``str()`` says why."""


@dataclass(frozen=True)
class Verified:
    """What a verified signature vouches for: when it was made and its one-time nonce."""

    key_id: str
    created: int
    nonce: str


def authority(url: str) -> str:
    """The ``@authority`` (RFC 9421 §2.2.3) of a hub whose address is ``url`` (its ``base_url``, or a peer's
    registered address): the host in lower case (an internationalised name in its ASCII form, without a trailing
    dot; an IPv6 address in brackets), then ``:port`` unless the port is the scheme's default (80 for http, 443
    for https). A path, query or user name in ``url`` is not part of it. ValueError for anything but an http(s)
    address with a host."""
    url = url.strip()
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):  # urlsplit would drop a tab or line break unseen
        raise ValueError(f"blanks or control characters in {url[:200]!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"not an http(s) address: {url[:200]!r}")
    host = (parts.hostname or "").rstrip(".")  # urlsplit: lower case, IPv6 brackets removed
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # UnicodeError (a ValueError) for a name IDNA refuses
    port = parts.port  # ValueError for a port that is not one
    if not host or not _HOST.match(host):
        raise ValueError(f"no host in {url[:200]!r}")
    if ":" in host:  # an IPv6 literal, in its one RFC 5952 spelling
        address, zone = host.partition("%")[::2]
        try:
            host = f"[{ipaddress.IPv6Address(address).compressed}{'%' + zone if zone else ''}]"
        except ValueError:
            raise ValueError(f"not an IPv6 address: {url[:200]!r}") from None
    return host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"


def new_nonce() -> str:
    """A random nonce for one request (192 bits, URL-safe base64)."""
    return secrets.token_urlsafe(24)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public(pem: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM; ValueError for anything else."""
    try:
        public = serialization.load_pem_public_key(pem.strip().encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("not a PEM public key") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return public


def content_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def digest_of_hex(sha256_hex: str) -> str:
    """The ``Content-Digest`` of a body whose SHA-256 (hex) is known without reading it."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"


def sign_document(private: Ed25519PrivateKey, canonical: bytes) -> str:
    """A detached Ed25519 signature (base64) over a canonical document (a sync manifest)."""
    return base64.b64encode(private.sign(b"strongroom-document-v1\n" + canonical)).decode()


def verify_document(public: Ed25519PublicKey, canonical: bytes, signature: str) -> None:
    try:
        public.verify(base64.b64decode(signature, validate=True), b"strongroom-document-v1\n" + canonical)
    except (InvalidSignature, ValueError):
        raise SignatureError("the manifest's signature does not verify with the origin's registered key") from None


def _base(method: str, recipient: str, path: str, query: str, date: str, digest: str, params: str) -> bytes:
    """The signature base (RFC 9421 §2.5) of a request to the hub at ``recipient`` (its address: the base covers
    its :func:`authority`)."""
    lines = [f'"@method": {method.upper()}', f'"@authority": {authority(recipient)}', f'"@path": {path}',
             f'"@query": ?{query}', f'"date": {date}', f'"content-digest": {digest}', f'"@signature-params": {params}']
    return "\n".join(lines).encode()


@dataclass(frozen=True)
class HubKey:
    """This hub's signing key (the private half stays in ``var/keys``)."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> HubKey:
        return cls(Ed25519PrivateKey.generate())

    def private_pem(self) -> str:
        return self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()).decode()

    @classmethod
    def from_pem(cls, text: str) -> HubKey:
        private = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError("the hub signing key file does not hold an Ed25519 key")
        return cls(private)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, method: str, path: str, query: str = "", body: bytes = b"", *, recipient: str,
             now: float | None = None, body_sha256: str | None = None, nonce: str | None = None) -> dict[str, str]:
        """The headers that sign this request to the hub at ``recipient`` (the address the request is sent to, as
        this hub registered that peer: the signature covers its :func:`authority`, and only that hub accepts it):
        ``Date``, ``Content-Digest``, ``Signature-Input``, ``Signature``. ``body_sha256`` (hex): the digest of a
        body streamed later, instead of ``body``. Every call draws a new nonce (``nonce`` only for tests): a
        signed request is good for one use, at one hub."""
        created = int(time.time() if now is None else now)
        nonce = new_nonce() if nonce is None else nonce
        digest = content_digest(body) if body_sha256 is None else digest_of_hex(body_sha256)
        date = formatdate(created, usegmt=True)
        params = (f'({" ".join(COMPONENTS)});created={created};nonce="{nonce}";keyid="{self.key_id}"'
                  ';alg="ed25519"')
        signature = self.private.sign(_base(method, recipient, path, query, date, digest, params))
        return {"Date": date, "Content-Digest": digest, "Signature-Input": f"{LABEL}={params}",
                "Signature": f"{LABEL}=:{base64.b64encode(signature).decode()}:"}


def signer_key_id(headers: Mapping[str, str]) -> str | None:
    """The ``keyid`` a request claims (None when it carries no signature); SignatureError when malformed."""
    value = headers.get("signature-input")
    if value is None:
        return None
    m = _INPUT.match(value.strip())
    if m is None:
        raise SignatureError("the Signature-Input header is not one this hub understands")
    return m.group(4)


def verify(public: Ed25519PublicKey, method: str, path: str, query: str, headers: Mapping[str, str],
           body: bytes | None, *, recipient: str, now: float | None = None,
           max_skew: int = MAX_SKEW_SECONDS) -> Verified:
    """Accept the request (its ``created`` and ``nonce``, for the caller's replay check) or raise
    SignatureError. ``recipient``: this hub's own address (its configured ``base_url``), whose authority the
    signature must cover — a request signed for another hub does not verify. ``headers`` are looked up in lower
    case. ``body`` None: a streamed body the caller hashes itself and compares with the (signed)
    ``Content-Digest``."""
    try:
        own = authority(recipient)
    except ValueError:
        raise SignatureError("this hub's own base_url has no authority to check signatures against") from None
    value, sig = headers.get("signature-input"), headers.get("signature")
    if value is None or sig is None:
        raise SignatureError("the request is not signed")
    m, s = _INPUT.match(value.strip()), _SIGNATURE.match(sig.strip())
    if m is None or s is None:
        raise SignatureError("the signature headers are malformed")
    covered = tuple(m.group(1).split(" "))
    if covered == UNBOUND_COMPONENTS:
        raise SignatureError("the signature does not cover the recipient hub (@authority): the peer hub must be "
                             "upgraded")
    if covered != COMPONENTS:
        raise SignatureError("the signature does not cover method, authority, path, query, date and content digest")
    if m.group(3) is None:
        raise SignatureError("the signature carries no nonce (replay protection): the peer hub must be upgraded")
    created = int(m.group(2))
    if abs((time.time() if now is None else now) - created) > max_skew:
        raise SignatureError("the signature is too old or from the future (check both hubs' clocks)")
    digest = headers.get("content-digest", "")
    if body is None:
        if not digest.startswith("sha-256=:"):
            raise SignatureError("a streamed body needs a SHA-256 Content-Digest")
    elif digest != content_digest(body):
        raise SignatureError("the body does not match its Content-Digest")
    date = headers.get("date", "")
    params = value.strip()[len(LABEL) + 1:]
    try:
        public.verify(base64.b64decode(s.group(1), validate=True),
                      _base(method, recipient, path, query, date, digest, params))
    except (InvalidSignature, ValueError):
        raise SignatureError(f"the signature does not verify with the peer's registered key for a request to this "
                             f"hub ({own}): it was changed on the way, or signed for another hub") from None
    return Verified(key_id=m.group(4), created=created, nonce=m.group(3))
