"""Hub-to-hub request signatures (pure: ``cryptography`` only, no web or database imports).

The shape of HTTP Message Signatures (RFC 9421) with Ed25519: the signer covers the method, the path with
its query, the ``Date`` header and the body's ``Content-Digest`` (SHA-256, RFC 9530); the signature base is
written line by line as RFC 9421 writes it, and travels in ``Signature-Input`` / ``Signature`` under the
label ``sr``. The signature parameters carry ``created`` and a random ``nonce`` (RFC 9421 §2.3), both covered
by the signature. The verifier finds the peer by ``keyid`` (the pinned key the operator registered), checks
that ``created`` is within ``max_skew`` of its clock, that the digest matches the body it received, and
the signature, and returns the nonce: refusing a nonce seen before (a replayed request) is the caller's
job, with a store every web server shares (``service.verify_request``). Any failure is a
:class:`SignatureError` with the reason; nothing is half-accepted.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

LABEL = "sr"
COMPONENTS = ('"@method"', '"@path"', '"@query"', '"date"', '"content-digest"')
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


def _base(method: str, path: str, query: str, date: str, digest: str, params: str) -> bytes:
    lines = [f'"@method": {method.upper()}', f'"@path": {path}', f'"@query": ?{query}', f'"date": {date}',
             f'"content-digest": {digest}', f'"@signature-params": {params}']
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

    def sign(self, method: str, path: str, query: str = "", body: bytes = b"", *,
             now: float | None = None, body_sha256: str | None = None, nonce: str | None = None) -> dict[str, str]:
        """The headers that sign this request (``Date``, ``Content-Digest``, ``Signature-Input``, ``Signature``).
        ``body_sha256`` (hex): the digest of a body streamed later, instead of ``body``. Every call draws a
        new nonce (``nonce`` only for tests): a signed request is good for one use."""
        created = int(time.time() if now is None else now)
        nonce = new_nonce() if nonce is None else nonce
        digest = content_digest(body) if body_sha256 is None else digest_of_hex(body_sha256)
        date = formatdate(created, usegmt=True)
        params = (f'({" ".join(COMPONENTS)});created={created};nonce="{nonce}";keyid="{self.key_id}"'
                  ';alg="ed25519"')
        signature = self.private.sign(_base(method, path, query, date, digest, params))
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
           body: bytes | None, *, now: float | None = None, max_skew: int = MAX_SKEW_SECONDS) -> Verified:
    """Accept the request (its ``created`` and ``nonce``, for the caller's replay check) or raise
    SignatureError. ``headers`` are looked up in lower case. ``body`` None: a streamed body the caller hashes
    itself and compares with the (signed) ``Content-Digest``."""
    value, sig = headers.get("signature-input"), headers.get("signature")
    if value is None or sig is None:
        raise SignatureError("the request is not signed")
    m, s = _INPUT.match(value.strip()), _SIGNATURE.match(sig.strip())
    if m is None or s is None:
        raise SignatureError("the signature headers are malformed")
    if tuple(m.group(1).split(" ")) != COMPONENTS:
        raise SignatureError("the signature does not cover method, path, query, date and content digest")
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
        public.verify(base64.b64decode(s.group(1), validate=True), _base(method, path, query, date, digest, params))
    except (InvalidSignature, ValueError):
        raise SignatureError("the signature does not verify with the peer's registered key") from None
    return Verified(key_id=m.group(4), created=created, nonce=m.group(3))
