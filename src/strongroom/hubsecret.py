"""The hub secret across rotations: which secret is current, and what is kept of the ones before it.

The hub secret keys the audit chain's HMAC and (without an explicit passphrase) protects the archive key
files. A rotation (``strongroom admin rotate-secret``) keeps, for each retired secret, only the keys derived
from it that the hub still needs — the audit key that verifies the chain's earlier events and the archive
passphrase a half-finished rotation's key files may still be under — never the secret itself. They live in
``<keys dir>/hub-secret-retired/<secret id>.json`` (0600), beside the other key files.

Standard library only at import (``hub`` and ``config`` import it; ``secret_settings`` reads pydantic models).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .keyfiles import replace
from .paths import private_dir

if TYPE_CHECKING:
    from .config import Settings

MIN_LENGTH = 32  # characters: what `openssl rand -hex 16` gives, the least a secret may be
PASSPHRASE_MIN_LENGTH = 16  # a configured archive key passphrase: the key files are backed up, off the hub
# what deployment examples put where a secret belongs: a hub still holding one runs on a published value
PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "replaceme", "replace_me")
# whole values that tutorials and images ship as defaults (compared case-insensitively): refused for every secret
# setting. Matched whole, never as a part: "s3cret-of-42-characters…" or "datacite-test-password" are not refused.
DEFAULTS = frozenset({"secret", "password", "passw0rd", "example", "changeit", "minioadmin", "postgres", "admin"})
# a template's marker never filled in: <secret>, ${VAR} left unexpanded, …, xxx, or `config show`'s mask copied back
TEMPLATE_MARKER = re.compile(r"<[^>]*>|\$\{[^}]*\}|\.\.\.|…|x{3,}|\*{3,}", re.IGNORECASE)


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
    if problem := placeholder(text, what):
        return problem
    if len(text) < min_length:
        return f"{what} is too short ({len(text)} characters; at least {min_length})"
    return None


def placeholder(value: str, what: str) -> str | None:
    """Why ``value`` is no secret at all — an example's placeholder, a well-known default, a template marker — or
    None. Length is not judged here: an empty value means "not configured", and short ones are the owner's call."""
    text = value.strip()
    if any(marker in text.lower() for marker in PLACEHOLDERS):
        return f"{what} is still a deployment example's placeholder"
    if text.lower() in DEFAULTS or TEMPLATE_MARKER.fullmatch(text):
        return f"{what} is a placeholder or a well-known default value"
    return None


def database_password(url: str) -> str:
    """The password in a database URL (``scheme://user:password@host/db``), percent-decoded; "" when none."""
    try:
        return unquote(urlsplit(url).password or "")
    except ValueError:  # not a URL the checks can read: SQLAlchemy says what is wrong with it when it connects
        return ""


def secret_settings(model: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every ``SecretStr`` setting under ``model`` that is set, as (dotted name, value): today's sections and any
    added later ([archive.storage], [oidc], [notify], [doi], [airlock.s3.<name>], [ops], …)."""
    from pydantic import BaseModel, SecretStr

    def walk(value: Any, name: str) -> Iterator[tuple[str, str]]:
        if isinstance(value, SecretStr):
            if value.get_secret_value():
                yield name, value.get_secret_value()
        elif isinstance(value, BaseModel):
            for field in type(value).model_fields:
                yield from walk(getattr(value, field), f"{name}.{field}" if name else field)
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, f"{name}.{key}")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                yield from walk(item, f"{name}.{index}")

    yield from walk(model, prefix)


def env_name(setting: str) -> str:
    return "STRONGROOM_" + setting.upper().replace(".", "__")


# checked with their own rules and messages in refuse_weak, before the others
_OWN_RULES = {"secret_key", "archive.key_passphrase", "ops.metrics_token"}


def refuse_weak(settings: Settings, secret: bytes) -> None:
    """Raise ``WeakSecret`` for the first weak secret a hub would run on, naming the command that replaces it.

    The hub secret and the archive key passphrase must be long and no placeholder; every other secret setting
    (and the database URL's password) must be no placeholder — an empty one is "not configured", and a short one
    may be what the service it opens was given."""
    if problem := weakness(secret.decode(errors="replace"), "the hub secret", MIN_LENGTH):
        raise WeakSecret("secret_key", f"{problem}: replace it with `strongroom admin rotate-secret` (it keeps "
                                       "the audit trail verifiable; `openssl rand -hex 32` makes a good one)")
    passphrase = settings.archive.key_passphrase.get_secret_value()
    if passphrase and (problem := weakness(passphrase, "the archive key passphrase", PASSPHRASE_MIN_LENGTH)):
        raise WeakSecret("archive.key_passphrase",
                         f"{problem}: rewrite the key files under a new one with `strongroom archive "
                         "rotate-passphrase --new-passphrase-file FILE`, then configure it")
    if problem := placeholder(database_password(settings.database_url), "the database password in database_url"):
        raise WeakSecret("database_url", f"{problem}: give the database role a real password (ALTER ROLE … "
                                         "PASSWORD) and put it in STRONGROOM_DATABASE_URL")
    token = settings.ops.metrics_token.get_secret_value()
    if token and (problem := weakness(token, "the metrics bearer token", MIN_LENGTH)):
        raise WeakSecret("ops.metrics_token", f"{problem}: configure a random one (`openssl rand -hex 32`) in "
                                              "STRONGROOM_OPS__METRICS_TOKEN and in Prometheus' scrape job")
    for name, value in secret_settings(settings):
        if name not in _OWN_RULES and (problem := placeholder(value, "this secret")):
            raise WeakSecret(name, f"{problem}: set the real one where it is issued (the S3 identity, the SMTP "
                                   f"account, the OpenID client, …) and configure it as {env_name(name)}")


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
    private_dir(folder)
    replace(folder / f"{kept.id}.json", json.dumps({
        "id": kept.id, "audit_key": kept.audit_key.hex(), "archive_passphrase": kept.archive_passphrase,
        "retired_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}, indent=1))
    return kept
