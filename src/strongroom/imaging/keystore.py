"""The pseudonym key store: each project's pseudonymization secret and the pseudonym → original map,
sealed with AES-256-GCM under a key kept outside the database (a file, mode 0600, by default beside
the hub's other keys; point ``imaging.keystore_key_file`` at separate storage on a real hub).

A database dump alone therefore reveals no original identifier and no pseudonymization secret.
Re-identification is one audited lookup by a member explicitly given the ``reidentify`` right,
with a fresh second factor and a stated reason.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..config import Settings
from ..errors import Invalid
from ..identity.principal import Principal
from ..identity.service import require_fresh_mfa
from ..keyfiles import read_or_create
from ..projects import service as projects
from .deid import Pseudonymizer
from .models import ImagingProject, PseudonymEntry

KINDS = ("PatientID", "StudyInstanceUID", "SOPInstanceUID")
_keys: dict[Path, bytes] = {}


def key_path(settings: Settings) -> Path:
    return settings.imaging.keystore_key_file or settings.var_dir / "keys" / "pseudonym-keystore.key"


def keystore_key(settings: Settings) -> bytes:
    """The sealing key, created on first use (0600)."""
    path = key_path(settings)
    key = _keys.get(path)
    if key is not None:
        return key
    key = bytes.fromhex(read_or_create(path, lambda: os.urandom(32).hex()).strip())
    if len(key) != 32:
        raise ValueError(f"{path}: the key-store key must be 32 bytes (64 hex digits)")
    _keys[path] = key
    return key


def seal(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def unseal(key: bytes, sealed: bytes, context: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], context)


def _context(project_id: uuid.UUID, kind: str, pseudonym: str) -> bytes:
    return f"strongroom/pseudonym|{project_id}|{kind}|{pseudonym}".encode()


def project_secret(session: Session, settings: Settings, project_id: uuid.UUID) -> bytes:
    """The project's pseudonymization secret, generated (and sealed) on first use."""
    key = keystore_key(settings)
    context = f"strongroom/pseudonymization-secret|{project_id}".encode()
    row = session.get(ImagingProject, project_id)
    if row is None:
        secret = Pseudonymizer.generate_secret()
        row = ImagingProject(project_id=project_id, sealed_secret=seal(key, secret, context),
                             key_fingerprint=Pseudonymizer(secret).fingerprint)
        session.add(row)
        session.flush()
        return secret
    return unseal(key, row.sealed_secret, context)


def record(session: Session, settings: Settings, project_id: uuid.UUID,
           pairs: list[tuple[str, str, str]]) -> None:
    """Store (kind, original, pseudonym) triples; pseudonyms already known are left as they are."""
    key = keystore_key(settings)
    rows = [{"project_id": project_id, "kind": kind, "pseudonym": pseudonym,
             "sealed_original": seal(key, original.encode(), _context(project_id, kind, pseudonym))}
            for kind, original, pseudonym in {(k, o, p) for k, o, p in pairs if o and p and k in KINDS}]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(insert(PseudonymEntry).on_conflict_do_nothing(
        index_elements=["project_id", "kind", "pseudonym"]), rows)


def reidentify(session: Session, settings: Settings, principal: Principal, access: projects.ProjectAccess,
               pseudonym: str, *, reason: str, fresh_minutes: int) -> list[tuple[str, str]]:
    """(kind, original) for a pseudonym of this project. Needs the ``reidentify`` right (delegated
    explicitly by the PI), a fresh second factor and a reason; every lookup is audited, found or not.
    An empty list means the pseudonym is unknown."""
    access.require("reidentify")
    require_fresh_mfa(principal, fresh_minutes)
    reason, pseudonym = reason.strip(), pseudonym.strip()
    if len(reason) < 10:
        raise Invalid("state why re-identification is needed (at least 10 characters)")
    if not pseudonym:
        raise Invalid("give the pseudonym to look up")
    rows = list(session.scalars(select(PseudonymEntry).where(
        PseudonymEntry.project_id == access.project.id, PseudonymEntry.pseudonym == pseudonym)))
    audit.record(session, principal.actor, "imaging.reidentified", project_id=access.project.id,
                 target=f"pseudonym:{pseudonym}", outcome="ok" if rows else "not-found",
                 details={"reason": reason, "kinds": sorted(r.kind for r in rows)})
    if not rows:
        return []  # the caller answers 404; the audit event above still commits
    key = keystore_key(settings)
    return sorted((r.kind, unseal(key, r.sealed_original, _context(access.project.id, r.kind, r.pseudonym))
                   .decode()) for r in rows)
