"""Small cryptographic helpers for identity: password hashing, secret tokens, field encryption."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken

# argon2id, library defaults (RFC 9106 low-memory profile: t=3, m=64 MiB, p=4) until the hub applies
# ``security.password_hash`` from its settings (same defaults; the test suite configures cheaper ones).
_hasher = PasswordHasher()
_dummy_hash: str | None = None
MIN_PASSWORD_LENGTH = 12


def configure_password_hashing(*, time_cost: int, memory_kib: int, parallelism: int) -> None:
    """New hashes use these argon2id parameters; a stored hash with others is rehashed at its next login."""
    global _hasher, _dummy_hash
    if (_hasher.time_cost, _hasher.memory_cost, _hasher.parallelism) == (time_cost, memory_kib, parallelism):
        return
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
    _dummy_hash = None


def password_hash_parameters() -> tuple[int, int, int]:
    """(time_cost, memory_kib, parallelism) that new hashes get."""
    return _hasher.time_cost, _hasher.memory_cost, _hasher.parallelism


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def dummy_hash() -> str:
    """A valid hash, made with the current parameters, to verify against when the username is unknown,
    so timing does not reveal it. Made on first use, not at import (every CLI start would pay for it)."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
    return _dummy_hash


def equal_secrets(sent: str, expected: str) -> bool:
    """Whether ``sent`` (a code, token, MAC or cookie someone sent) is ``expected``, in constant time. Compared as
    UTF-8 bytes: ``compare_digest`` refuses two str holding a non-ASCII character (a TypeError, so a 500 for
    whoever sends "²" or a Latin-1 byte in a header or cookie), and bytes of any text compare."""
    return secrets.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


class FieldCipher:
    """Encrypts small secrets (TOTP seeds) at rest with a key derived from the hub secret."""

    def __init__(self, hub_secret: bytes, purpose: str) -> None:
        key = hmac.new(hub_secret, f"strongroom field {purpose}".encode(), hashlib.sha256).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken as exc:
            raise ValueError("stored secret cannot be decrypted with this hub's key") from exc


def keyed_digest(hub_secret: bytes, purpose: str, value: str) -> str:
    return hmac.new(hub_secret + purpose.encode(), value.encode(), hashlib.sha256).hexdigest()
