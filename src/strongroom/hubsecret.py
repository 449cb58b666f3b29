"""The hub secret across rotations: which secret is current, and what is kept of the ones before it.

The hub secret keys the audit chain's HMAC and (without an explicit passphrase) protects the archive key
files. A rotation (``strongroom admin rotate-secret``) keeps, for each retired secret, only the keys derived
from it that the hub still needs — the audit key that verifies the chain's earlier events and the archive
passphrase a half-finished rotation's key files may still be under — never the secret itself. They live in
``<keys dir>/hub-secret-retired/<secret id>.json`` (0600), beside the other key files.

Standard library only (``hub`` and ``config`` import it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .keyfiles import replace

if TYPE_CHECKING:
    from .config import Settings

MIN_LENGTH = 32  # characters: what `openssl rand -hex 16` gives, the least a secret may be
PASSPHRASE_MIN_LENGTH = 16  # a configured archive key passphrase: the key files are backed up, off the hub
# what deployment examples put where a secret belongs: a hub still holding one runs on a published value
PLACEHOLDERS = ("change-me", "changeme", "change_me")


class WeakSecret(ValueError):
    """A configured secret may not protect a hub (too short, or an example's placeholder); ``setting`` names it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def weakness(value: str, what: str, min_length: int) -> str | None:
    """Why ``value`` must not protect a hub, or None. A guessed hub secret forges audit events, CSRF tokens and
    recovery-code digests; a guessed passphrase opens the archive key files in any backup of them: a short or
    published value is refused, not merely warned of."""
    text = value.strip()
    if any(marker in text.lower() for marker in PLACEHOLDERS):
        return f"{what} is still a deployment example's placeholder"
    if len(text) < min_length:
        return f"{what} is too short ({len(text)} characters; at least {min_length})"
    return None


def refuse_weak(settings: Settings, secret: bytes) -> None:
    """Raise ``WeakSecret`` for the first weak secret a hub would run on, naming the command that replaces it."""
    if problem := weakness(secret.decode(errors="replace"), "the hub secret", MIN_LENGTH):
        raise WeakSecret("secret_key", f"{problem}: replace it with `strongroom admin rotate-secret` (it keeps "
                                       "the audit trail verifiable; `openssl rand -hex 32` makes a good one)")
    passphrase = settings.archive.key_passphrase.get_secret_value()
    if passphrase and (problem := weakness(passphrase, "the archive key passphrase", PASSPHRASE_MIN_LENGTH)):
        raise WeakSecret("archive.key_passphrase",
                         f"{problem}: rewrite the key files under a new one with `strongroom archive "
                         "rotate-passphrase --new-passphrase-file FILE`, then configure it")


def secret_id(secret: bytes) -> str:
    """A public name for a secret (what the audit chain records at a rotation): a one-way digest, 16 hex."""
    return hashlib.sha256(b"strongroom hub secret id|" + secret).hexdigest()[:16]


def audit_key(secret: bytes) -> bytes:
    return hmac.new(secret, b"strongroom audit chain v1", hashlib.sha256).digest()


def archive_passphrase(secret: bytes) -> str:
    return hmac.new(secret, b"strongroom archive key passphrase", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Retired:
    """What is kept of a retired secret: derived keys only."""

    id: str
    audit_key: bytes
    archive_passphrase: str


@dataclass(frozen=True)
class Keyring:
    """The current secret's audit key and the retired ones', by secret id."""

    current_id: str
    audit_keys: dict[str, bytes]

    @classmethod
    def of(cls, secret: bytes, retired: tuple[Retired, ...] = ()) -> Keyring:
        keys = {r.id: r.audit_key for r in retired}
        keys[secret_id(secret)] = audit_key(secret)
        return cls(secret_id(secret), keys)

    @property
    def current(self) -> bytes:
        return self.audit_keys[self.current_id]


def keys_dir(settings: Settings) -> Path:
    return settings.archive.keys_dir or settings.var_dir / "keys"


def retired_dir(settings: Settings) -> Path:
    return keys_dir(settings) / "hub-secret-retired"


def load_retired(settings: Settings) -> tuple[Retired, ...]:
    folder = retired_dir(settings)
    if not folder.is_dir():
        return ()
    kept = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        kept.append(Retired(data["id"], bytes.fromhex(data["audit_key"]), data["archive_passphrase"]))
    return tuple(kept)


def retire(settings: Settings, secret: bytes) -> Retired:
    """Keep the derived keys of ``secret`` (idempotent: a second call rewrites the same content)."""
    kept = Retired(secret_id(secret), audit_key(secret), archive_passphrase(secret))
    folder = retired_dir(settings)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace(folder / f"{kept.id}.json", json.dumps({
        "id": kept.id, "audit_key": kept.audit_key.hex(), "archive_passphrase": kept.archive_passphrase,
        "retired_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}, indent=1))
    return kept
