"""X25519 key pairs and crypt4gh key files (interoperable with ``crypt4gh-keygen``)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import nacl.bindings
from crypt4gh.keys import c4gh as c4gh_keys  # type: ignore[import-untyped,unused-ignore]
from crypt4gh.keys import kdf as c4gh_kdf  # type: ignore[import-untyped,unused-ignore]
from crypt4gh.keys import ssh as c4gh_ssh  # type: ignore[import-untyped,unused-ignore]
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .errors import KeyFileError
from .format import NONCE_SIZE


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair (32 raw bytes each)."""

    secret: bytes = field(repr=False)
    public: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyPair:
        if len(secret) != 32:
            raise ValueError("an X25519 secret key is 32 bytes")
        return cls(bytes(secret), nacl.bindings.crypto_scalarmult_base(bytes(secret)))


def generate_keypair() -> KeyPair:
    return KeyPair.from_secret(os.urandom(32))


def fingerprint(public_key: bytes) -> str:
    """Short, stable identifier of a public key: first 16 hex chars of its SHA-256."""
    return hashlib.sha256(check_public(public_key)).hexdigest()[:16]


def check_public(public_key: bytes) -> bytes:
    if len(public_key) != 32:
        raise ValueError(f"an X25519 public key is 32 bytes, got {len(public_key)}")
    return bytes(public_key)


def _pem(kind: bytes, payload: bytes) -> bytes:
    return (b"-----BEGIN CRYPT4GH " + kind + b" KEY-----\n" + base64.b64encode(payload)
            + b"\n-----END CRYPT4GH " + kind + b" KEY-----\n")


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start: the secret never exists with looser permissions.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def private_key_file(keypair: KeyPair, passphrase: str | bytes | None, *, comment: str | None = None) -> bytes:
    """``keypair.secret`` as crypt4gh private key file content (scrypt + ChaCha20-Poly1305 if passphrase)."""
    comment_b = comment.encode("utf-8") if comment is not None else None
    if passphrase:
        payload = c4gh_keys.encode_private_key(keypair.secret, _as_bytes(passphrase), comment_b)
    else:  # built here: the reference helper prints a warning to stderr for unencrypted keys
        payload = (c4gh_keys.MAGIC_WORD + c4gh_keys.encode_string(None) + c4gh_keys.encode_string(None)
                   + c4gh_keys.encode_string(keypair.secret)
                   + (c4gh_keys.encode_string(comment_b) if comment_b is not None else b""))
    return _pem(b"PRIVATE", payload)


def write_private_key(path: str | os.PathLike[str], keypair: KeyPair, passphrase: str | bytes | None,
                      *, comment: str | None = None) -> None:
    """Write ``keypair.secret`` as a crypt4gh private key file (scrypt + ChaCha20-Poly1305 if passphrase)."""
    _write_private(Path(path), private_key_file(keypair, passphrase, comment=comment))


def load_private_key(path: str | os.PathLike[str], passphrase: str | bytes | None = None) -> KeyPair:
    """Read a crypt4gh private key file (as written by ``crypt4gh-keygen`` or ``write_private_key``)."""
    try:
        text = Path(path).read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read private key {path}: {e.strerror}") from e
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 3 or not lines[0].startswith(b"-----BEGIN ") or not lines[-1].startswith(b"-----END "):
        raise KeyFileError(f"{path} is not a PEM private key")
    try:
        blob = base64.b64decode(b"".join(lines[1:-1]), validate=True)
    except ValueError as e:
        raise KeyFileError(f"{path}: invalid base64 in private key") from e
    if not blob.startswith(c4gh_keys.MAGIC_WORD):
        if blob.startswith(c4gh_ssh.MAGIC_WORD):
            raise KeyFileError(f"{path}: OpenSSH private keys are not supported; use a crypt4gh key")
        raise KeyFileError(f"{path}: not a crypt4gh private key")
    # Parsed here rather than by crypt4gh.keys.c4gh.parse_private_key, which calls sys.exit() on a
    # wrong passphrase; the encodings and the KDF are the reference library's.
    stream = io.BytesIO(blob[len(c4gh_keys.MAGIC_WORD):])
    try:
        kdfname = c4gh_keys.decode_string(stream)
        if kdfname != b"none":
            if kdfname not in c4gh_kdf.KDFS:
                raise KeyFileError(f"{path}: unsupported key derivation {kdfname!r}")
            options = c4gh_keys.decode_string(stream)
            rounds, salt = int.from_bytes(options[:4], "big"), options[4:]
        cipher = c4gh_keys.decode_string(stream)
        data = c4gh_keys.decode_string(stream)
    except ValueError as e:
        raise KeyFileError(f"{path}: malformed crypt4gh private key") from e
    if cipher == b"none":
        secret = data
    elif cipher == b"chacha20_poly1305" and kdfname != b"none":
        if not passphrase:
            raise KeyFileError(f"{path} is passphrase-protected and no passphrase was given")
        key = c4gh_kdf.derive_key(kdfname, _as_bytes(passphrase), salt, rounds)
        try:
            secret = ChaCha20Poly1305(key).decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], None)
        except InvalidTag:
            raise KeyFileError(f"wrong passphrase for private key {path}") from None
    else:
        raise KeyFileError(f"{path}: unsupported key cipher {cipher!r}")
    if len(secret) != 32:
        raise KeyFileError(f"{path}: secret key is {len(secret)} bytes, expected 32")
    return KeyPair.from_secret(secret)


def public_key_file(public_key: bytes) -> bytes:
    """The crypt4gh PEM public key file content (what ``crypt4gh-keygen`` writes as ``.pub``)."""
    return _pem(b"PUBLIC", check_public(public_key))


def write_public_key(path: str | os.PathLike[str], public_key: bytes) -> None:
    Path(path).write_bytes(public_key_file(public_key))


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """Read a crypt4gh PEM public key file (or an ``ssh-ed25519`` public key line)."""
    try:
        return parse_public_key(Path(path).read_bytes())
    except OSError as e:
        raise KeyFileError(f"cannot read public key {path}: {e.strerror}") from e


def parse_public_key(data: str | bytes) -> bytes:
    """A recipient key from what clients send: 32 raw bytes, base64 of them, the crypt4gh PEM public key
    file, that file base64-encoded (SDA's ``X-C4GH-Public-Key``), or an ``ssh-ed25519`` line."""
    if isinstance(data, bytes | bytearray) and len(data) == 32:  # raw key (text never is)
        return bytes(data)
    raw = _as_bytes(data).strip()
    if raw.startswith(b"-----BEGIN CRYPT4GH PUBLIC KEY-----"):
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
        if len(lines) < 3 or not lines[-1].startswith(b"-----END CRYPT4GH PUBLIC KEY-----"):
            raise KeyFileError("truncated crypt4gh public key")
        return parse_public_key(b"".join(lines[1:-1]))
    if raw.startswith(b"ssh-ed25519 "):
        try:
            return check_public(c4gh_ssh.get_public_key(raw.split(b"\n", 1)[0]))
        except (ValueError, AssertionError) as e:
            raise KeyFileError("invalid ssh-ed25519 public key") from e
    try:
        decoded = base64.b64decode(raw, validate=True)
    except ValueError:
        raise KeyFileError("not a crypt4gh public key") from None
    if len(decoded) == 32:
        return decoded
    if decoded.lstrip().startswith((b"-----BEGIN CRYPT4GH PUBLIC KEY-----", b"ssh-ed25519 ")):
        return parse_public_key(decoded)
    raise KeyFileError("not a crypt4gh public key")
