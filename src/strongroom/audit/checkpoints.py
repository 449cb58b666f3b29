"""Write and gather the audit chain's signed checkpoints (see ``anchor``): the append-only file, the
S3 bucket (Object Lock where the bucket has it) and the structured log."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from sqlalchemy import select

from ..config import Settings
from ..db import utcnow
from ..hub import Hub
from ..hubsecret import keys_dir
from ..paths import private_dir
from . import anchor
from .anchor import AnchorKey, Checkpoint
from .models import AuditEvent, AuditHead
from .service import GENESIS

log = structlog.get_logger("strongroom.audit")
S3_LATEST = 5  # how many of the newest S3 checkpoints `verify` reads (each is one GET)


class AnchorRefused(Exception):
    """The chain is shorter than, or differs from, what an earlier checkpoint anchored."""


def checkpoint_file(settings: Settings) -> Path:
    return settings.audit.checkpoint_file or settings.var_dir / "audit-checkpoints.jsonl"


def anchor_key_file(settings: Settings) -> Path:
    return settings.audit.anchor_key_file or keys_dir(settings) / "audit-anchor.key"


def anchor_key(settings: Settings) -> AnchorKey:
    """The signing key, read at every use: a rotation takes effect at the next checkpoint, in every process."""
    return AnchorKey.load_or_create(anchor_key_file(settings))


def retired_dir(settings: Settings) -> Path:
    """Public halves of earlier anchor keys (``<kid>.pem``), kept by ``rotate_anchor_key``."""
    path = anchor_key_file(settings)
    return path.with_name(f"{path.stem}-retired")


def verification_keys(settings: Settings) -> list[AnchorKey]:
    """The current key and the retired ones: checkpoints signed before a rotation still anchor the chain (and
    still forbid cutting its end off)."""
    keys = [anchor_key(settings)]
    folder = retired_dir(settings)
    for path in sorted(folder.glob("*.pem")) if folder.is_dir() else []:
        try:
            keys.append(AnchorKey.from_public_pem(path.read_bytes()))
        except (OSError, ValueError):
            log.warning("audit.retired_anchor_key_unreadable", path=str(path))
    return keys


def rotate_anchor_key(settings: Settings) -> tuple[str, str]:
    """A new anchor key; the old one's public half goes to ``retired_dir`` (its private half is gone).
    Returns (old key id, new key id)."""
    from .. import keyfiles

    old = anchor_key(settings)
    folder = retired_dir(settings)
    private_dir(folder)
    keyfiles.replace(folder / f"{old.key_id}.pem", old.public_pem())
    new = AnchorKey.generate()
    keyfiles.replace(anchor_key_file(settings), new.private_pem())
    return old.key_id, new.key_id


def _s3(settings: Settings):  # an S3Storage, or None
    if not settings.audit.checkpoint_to_s3 or settings.archive.storage.kind != "s3":
        return None
    from ..archive.backend import storage_from

    return storage_from(settings.archive.storage, settings.var_dir)


@dataclass
class Written:
    checkpoint: Checkpoint | None
    sinks: list[str] = field(default_factory=list)
    unchanged: bool = False


def write_checkpoint(hub: Hub) -> Written:
    """Sign the chain's current end and write it to every sink. A read only: takes no write lock.
    Nothing is written when the newest checkpoint already anchors this end; refused (and loud) when the
    chain is now shorter than, or different from, what the newest checkpoint anchored."""
    settings = hub.settings
    with hub.sessions() as session:
        head = session.get(AuditHead, 1)
        seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS)
        if seq:
            event = session.scalar(select(AuditEvent).where(AuditEvent.seq == seq))
            if event is None or event.hash != head_hash:
                raise AnchorRefused(f"the chain head names event {seq}, which is missing or different")
    key = anchor_key(settings)
    found, _ = gather(settings, verification_keys(settings))  # a rotation does not lift the earlier anchors
    newest = max(found, key=lambda c: (c.seq, c.at), default=None)
    if newest is not None:
        if seq < newest.seq:
            log.error("audit.checkpoint.refused", seq=seq, anchored_seq=newest.seq, anchored_at=newest.at)
            raise AnchorRefused(f"the chain has {seq} events but the checkpoint of {newest.at} anchored "
                                f"{newest.seq}: run `strongroom audit verify`")
        if seq == newest.seq:
            if newest.head != head_hash:
                raise AnchorRefused(f"event {seq} differs from the checkpoint of {newest.at}")
            return Written(newest, unchanged=True)
    cp = key.sign(seq, head_hash, utcnow())
    written = Written(cp)
    anchor.append(checkpoint_file(settings), cp)
    written.sinks.append(f"file {checkpoint_file(settings)}")
    s3 = _s3(settings)
    if s3 is not None:
        try:
            locked = s3.put_retained(anchor.s3_key(settings.audit.s3_prefix, cp), cp.to_json().encode(),
                                     utcnow() + dt.timedelta(days=settings.audit.s3_retention_days))
            written.sinks.append(f"s3://{s3.bucket}/{settings.audit.s3_prefix} "
                                 f"({'object lock' if locked else 'write-once key, no object lock'})")
        except Exception as exc:  # the file and log copies stand; say what is missing
            log.error("audit.checkpoint.s3_failed", error=str(exc))
    # the whole checkpoint as one JSON line, for a log shipper to keep ("key" names are masked in logs)
    log.info("audit.checkpoint", checkpoint=cp.to_json())
    written.sinks.append("log")
    return written


def gather(settings: Settings, key: AnchorKey | Sequence[AnchorKey]) -> tuple[list[Checkpoint], list[str]]:
    """Every checkpoint whose signature holds (under ``key``, or any of several: the keys before and after a
    rotation), and a description of every one that does not."""
    signers = [key] if isinstance(key, AnchorKey) else list(key)
    found, bad = anchor.read_file(checkpoint_file(settings))
    s3 = _s3(settings)
    if s3 is not None:
        keys = sorted(k for k in s3.iter_keys(settings.audit.s3_prefix) if k.endswith(".json"))
        for k in keys[-S3_LATEST:]:
            with s3.open_reader(k) as reader:
                more, broken = anchor.read_lines([reader.read().decode(errors="replace")], f"s3 {k}")
            found += more
            bad += broken
    valid: dict[tuple[int, str, str], Checkpoint] = {}
    for cp in found:
        if any(signer.valid(cp) for signer in signers):
            valid[(cp.seq, cp.head, cp.at)] = cp
        else:
            bad.append(f"checkpoint of {cp.at} (event {cp.seq}) has a bad signature or another key")
    return sorted(valid.values(), key=lambda c: (c.seq, c.at)), bad
