"""Rotating the hub secret (``strongroom admin rotate-secret``), with every other Strongroom process stopped.

What the secret protects, and what a rotation does to each:

- the audit chain's HMAC: the chain moves to the new key at an event of its own (``hub.secret.rotated``, keyed by
  the old secret); the old secret's audit key is kept (``hubsecret.retire``) so the earlier events still verify,
  and nothing after the rotation verifies under it;
- TOTP seeds: re-encrypted under the new secret, in the same transaction as that event;
- recovery codes: stored only as digests keyed by the old secret, so they cannot be carried over; the unused
  ones are deleted in that transaction and their users are told by e-mail to generate new ones;
- archive key files (when their passphrase is derived from the secret): rewritten under the new passphrase
  after that transaction, each atomically; a file still under the old one keeps opening (``archive.keys``);
- the secret file itself (``var/secret.key``, when the secret is not configured): replaced last, from a pending
  copy written first (``var/secret.key.new``), so a rotation interrupted anywhere completes when run again;
- short-lived values (CSRF tokens, flash messages, OAI-PMH resumption tokens, today's visitor keys of the view
  counts, download headers' random seeds) simply change: an open form is submitted again. A federation push's
  manifest does not depend on the secret (its headers' seeds are keyed by each file's data key), so a push
  interrupted by the rotation resumes with the manifest the peer already holds.

Running workspaces are refused: their notebook servers were started with a token derived from the secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from .. import hubsecret, keyfiles
from ..archive import keys as archive_keys
from ..audit import service as audit
from ..audit.service import Actor
from ..db import transaction
from ..errors import Conflict, Invalid
from ..hub import Hub
from ..identity import service as identity
from ..notify.service import notify_user
from ..workspaces.models import LIVE, Workspace


@dataclass(frozen=True)
class Rotated:
    from_id: str
    to_id: str
    key_files: int  # archive key files rewritten under the new passphrase
    totp_seeds: int
    recovery_codes: int  # unused codes deleted
    users_told: int  # users whose codes those were, each sent an e-mail
    secret_file: Path | None  # the file now holding the new secret, when the hub keeps it in one
    resumed: bool  # the database had moved already: an interrupted run was completed


def pending_file(hub: Hub) -> Path:
    return hub.settings.secret_key_path.with_name("secret.key.new")


def new_secret(hub: Hub, given: str | None) -> bytes:
    """The secret to rotate to: ``given`` (required when the secret is configured: the operator's secret
    manager is where it must end up) or, for a hub keeping its secret in a file, a random one, written first to
    a pending file so that an interrupted rotation resumes with the same one."""
    if given is not None:
        value = given.strip()
    elif hub.settings.secret_key.get_secret_value():
        raise Invalid("this hub's secret is configured (STRONGROOM_SECRET_KEY or the TOML file): put the new one "
                      "in a file only you can read and pass it with --new-secret-file")
    else:
        value = keyfiles.read_or_create(pending_file(hub), lambda: os.urandom(32).hex()).strip()
    if problem := hubsecret.weakness(value, "the new secret", hubsecret.MIN_LENGTH):
        raise Invalid(f"{problem} (make one with `openssl rand -hex 32`)")
    if value.encode() == hub.secret:
        if given is None:  # an earlier run replaced the secret file and stopped before removing its pending copy
            pending_file(hub).unlink()
            raise Invalid("the rotation is already complete: the hub holds the new secret")
        raise Invalid("the new secret is the one in use")
    return value.encode()


def rotate(hub: Hub, new: bytes, actor: Actor) -> Rotated:
    """Move everything the hub secret protects to ``new``. Safe to run again after an interruption at any point
    (with the same new secret)."""
    old_id, new_id = hubsecret.secret_id(hub.secret), hubsecret.secret_id(new)
    with hub.sessions() as session:
        live = session.scalar(select(func.count()).select_from(Workspace).where(Workspace.state.in_(LIVE))) or 0
    if live:
        raise Conflict(f"{live} workspace(s) are running; their notebook servers hold a token derived from the "
                       "hub secret: stop them first (they can be started again after the rotation)")
    hubsecret.retire(hub.settings, hub.secret)  # first: from here on the old secret's audit key is kept
    derived = not hub.settings.archive.key_passphrase.get_secret_value()  # the key files' passphrase follows it
    rekeyed = identity.Rekeyed(0, 0, [])
    with transaction(hub.sessions) as session:
        moved = audit.chain_key_id(session) == new_id
        if not moved:
            rekeyed = identity.rekey_second_factors(session, hub.secret, new)
            for user_id in rekeyed.users_without_codes:
                notify_user(session, user_id, "recovery_codes_reset", {})
            audit.record_secret_rotation(session, actor, new_id, {
                "from": old_id, "archive_key_files": len(archive_keys.key_files(hub, session)) if derived else 0,
                "totp_seeds": rekeyed.totp_seeds, "recovery_codes_deleted": rekeyed.recovery_codes,
                "users_without_recovery_codes": len(rekeyed.users_without_codes)})
    # After the commit: a run refused before it (an unreadable TOTP seed, say) leaves the key files as they were.
    # A file still under the old passphrase opens with the retired one until then (archive.keys._load).
    key_files = 0
    if derived:
        with hub.sessions() as session:
            key_files = archive_keys.reencrypt_key_files(hub, session, hubsecret.archive_passphrase(new))
    secret_file = None
    if not hub.settings.secret_key.get_secret_value():
        secret_file = hub.settings.secret_key_path
        keyfiles.replace(secret_file, new.decode())
        pending_file(hub).unlink(missing_ok=True)
    return Rotated(old_id, new_id, key_files, rekeyed.totp_seeds, rekeyed.recovery_codes,
                   len(rekeyed.users_without_codes), secret_file, moved)
