"""The hub's archive key pairs: created on first use, rotated by re-encrypting headers only.

Private keys are crypt4gh key files (passphrase-protected) under ``archive.keys_dir``; the
database holds only public keys and fingerprints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .. import hubsecret, keyfiles
from ..audit import service as audit
from ..audit.service import Actor
from ..db import transaction
from ..errors import Invalid
from ..hub import Hub
from ..paths import private_dir
from . import c4gh
from .models import ArchiveFile, ArchiveKey


def keys_dir(hub: Hub) -> Path:
    return hubsecret.keys_dir(hub.settings)


def _passphrase(hub: Hub) -> str:
    configured = hub.settings.archive.key_passphrase.get_secret_value()
    if configured:
        return configured
    return hubsecret.archive_passphrase(hub.secret)


def _load(hub: Hub, path: Path) -> c4gh.KeyPair:
    """A key file under the hub's passphrase or, when derived from the hub secret, under a retired secret's
    (a rotation of the hub secret that stopped before re-encrypting every key file)."""
    try:
        return c4gh.load_private_key(path, _passphrase(hub))
    except c4gh.KeyFileError:
        if hub.settings.archive.key_passphrase.get_secret_value():
            raise
        for retired in hub.retired:
            try:
                return c4gh.load_private_key(path, retired.archive_passphrase)
            except c4gh.KeyFileError:
                continue
        raise


def key_files(hub: Hub, session: Session) -> list[Path]:
    """Every archive private key file the database names (active and retired) that is still on disk."""
    return [Path(f) for f in session.scalars(select(ArchiveKey.private_key_file).order_by(ArchiveKey.created_at))
            if Path(f).is_file()]


def reencrypt_key_files(hub: Hub, session: Session, passphrase: str) -> int:
    """Write every archive key file again under ``passphrase``, each replaced atomically; one already under it
    (a run that was interrupted) is left as it is. Returns how many were rewritten."""
    rewritten = 0
    for path in key_files(hub, session):
        try:
            keypair = _load(hub, path)
        except c4gh.KeyFileError:
            c4gh.load_private_key(path, passphrase)  # already done; anything else is an error of its own
            continue
        keyfiles.replace(path, c4gh.private_key_file(keypair, passphrase).decode())
        rewritten += 1
    return rewritten


def rotate_passphrase(hub: Hub, new: str, actor: Actor) -> int:
    """Write every archive key file (active and retired) again under the passphrase ``new``; the operator then
    configures it (``archive.key_passphrase``) and restarts. Files already under ``new`` (a run that stopped) are
    left as they are, so running it again completes it. Returns how many files were rewritten."""
    if problem := hubsecret.weakness(new, "the new passphrase", hubsecret.PASSPHRASE_MIN_LENGTH):
        raise Invalid(problem)
    if new == _passphrase(hub):
        raise Invalid("the new passphrase is the one in use")
    with transaction(hub.sessions) as session:
        rewritten = reencrypt_key_files(hub, session, new)
        audit.record(session, actor, "archive.key_passphrase.rotated",
                     details={"key_files": rewritten, "of": len(key_files(hub, session))})
    return rewritten


@dataclass(frozen=True)
class HubKeys:
    """Every active key, newest first; uploads go to ``current``."""

    pairs: tuple[tuple[str, c4gh.KeyPair], ...]

    @property
    def current(self) -> tuple[str, c4gh.KeyPair]:
        return self.pairs[0]

    @property
    def secrets(self) -> list[bytes]:
        return [kp.secret for _, kp in self.pairs]

    def fingerprint_at(self, index: int) -> str:
        return self.pairs[index][0]


_cache: dict[tuple[str, tuple[str, ...]], HubKeys] = {}


def create_key(hub: Hub, session: Session, actor: Actor) -> ArchiveKey:
    keypair = c4gh.generate_keypair()
    fingerprint = c4gh.fingerprint(keypair.public)
    directory = keys_dir(hub)
    private_dir(directory)
    path = directory / f"archive-{fingerprint}.sec"
    c4gh.write_private_key(path, keypair, _passphrase(hub))
    c4gh.write_public_key(directory / f"archive-{fingerprint}.pub", keypair.public)
    row = ArchiveKey(fingerprint=fingerprint, public_key=keypair.public, private_key_file=str(path),
                     status="active")
    session.add(row)
    audit.record(session, actor, "archive.key.created", target=f"key:{fingerprint}")
    session.flush()
    return row


def ensure_key(hub: Hub) -> None:
    """Give a new hub its first archive key (at start-up: never inside another transaction)."""
    with transaction(hub.sessions) as session:
        if not session.scalar(select(ArchiveKey).where(ArchiveKey.status == "active")):
            create_key(hub, session, Actor.system("archive"))


def hub_keys(hub: Hub, session: Session) -> HubKeys:
    """The active keys, loading private key files once per process."""
    rows = list(session.scalars(select(ArchiveKey).where(ArchiveKey.status == "active")
                                .order_by(ArchiveKey.created_at.desc())))
    if not rows:
        raise RuntimeError("the hub has no archive key yet: run `strongroom init` or start `strongroom serve`")
    cache_key = (str(keys_dir(hub)), tuple(r.fingerprint for r in rows))
    if cache_key not in _cache:
        pairs = tuple((r.fingerprint, _load(hub, Path(r.private_key_file))) for r in rows)
        _cache[cache_key] = HubKeys(pairs)
    return _cache[cache_key]


def rotate(hub: Hub, actor: Actor, *, batch: int = 500) -> Iterator[tuple[int, int]]:
    """Create a new key, re-encrypt every stored header to it, retire the old keys.

    Bodies are not read: only the headers in the database change. Yields (done, total) progress.
    Safe to interrupt and run again: headers already under the new key are skipped.
    """
    with transaction(hub.sessions) as session:
        old = [r.fingerprint for r in session.scalars(select(ArchiveKey).where(ArchiveKey.status == "active"))]
        new = create_key(hub, session, actor)
        new_fp, new_public = new.fingerprint, new.public_key
    with hub.sessions() as session:
        keys = hub_keys(hub, session)
        total = session.scalar(select(func.count()).select_from(ArchiveFile)
                               .where(ArchiveFile.header.is_not(None), ArchiveFile.header_key != new_fp)) or 0
    done = 0
    while True:
        with transaction(hub.sessions) as session:
            rows = list(session.scalars(select(ArchiveFile).where(ArchiveFile.header.is_not(None),
                                                                  ArchiveFile.header_key != new_fp)
                                        .limit(batch)))
            if not rows:
                break
            sender = keys.current[1]
            for f in rows:
                assert f.header is not None
                f.header = c4gh.reencrypt_header(f.header, keys.secrets, new_public, sender)
                f.header_key = new_fp
            done += len(rows)
        yield done, total
    with transaction(hub.sessions) as session:
        session.execute(update(ArchiveKey).where(ArchiveKey.fingerprint.in_(old)).values(status="retired"))
        audit.record(session, actor, "archive.key.rotated", target=f"key:{new_fp}",
                     details={"retired": old, "headers": done})
    _cache.clear()
