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
# what deployment examples put where a secret belongs: a hub still holding one runs on a published value
PLACEHOLDERS = ("change-me", "changeme", "change_me")


class WeakSecret(ValueError):
    """The hub secret may not protect a hub (too short, or an example's placeholder)."""


def weakness(secret: bytes) -> str | None:
    """Why ``secret`` must not be a hub's secret, or None. Anyone who learns it can forge the audit chain,
    CSRF tokens and recovery-code digests, so a short or published value is refused, not merely warned of."""
    text = secret.decode(errors="replace").strip()
    if any(marker in text.lower() for marker in PLACEHOLDERS):
        return "the hub secret is still a deployment example's placeholder"
    if len(text) < MIN_LENGTH:
        return f"the hub secret is too short ({len(text)} characters; at least {MIN_LENGTH})"
    return None


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
