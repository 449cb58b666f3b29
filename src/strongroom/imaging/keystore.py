"""The pseudonym key store: each project's pseudonymization secret and the pseudonym → original map,
sealed with AES-256-GCM under a key kept outside the database (a file, mode 0600, by default beside
the hub's other keys; point ``imaging.keystore_key_file`` at separate storage on a real hub).

A database dump alone therefore reveals no original identifier and no pseudonymization secret.
Re-identification is one audited lookup by a member explicitly given the ``reidentify`` right,
with a fresh second factor and a stated reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from .. import keyfiles
from ..archive.models import DELETED, ArchiveFile
from ..audit import service as audit
from ..config import Settings
from ..db import rowcount, transaction, utcnow
from ..errors import Invalid
from ..identity.principal import Principal
from ..identity.service import require_fresh_mfa
from ..paths import private_dir
from ..projects import service as projects
from .deid import Pseudonymizer
from .deid.pseudonyms import CANONICAL, scheme_key
from .models import ImagingProject, ImportedInstance, PseudonymEntry

KINDS = ("PatientID", "StudyInstanceUID", "SOPInstanceUID")


def key_path(settings: Settings) -> Path:
    return settings.imaging.keystore_key_file or settings.var_dir / "keys" / "pseudonym-keystore.key"


def retired_dir(settings: Settings) -> Path:
    """Keys a rotation replaced (``<key file stem>-retired/<key id>.key``): what was sealed under them still
    opens — rows not re-sealed yet, spooled objects, database backups — until they are deleted."""
    path = key_path(settings)
    return path.with_name(f"{path.stem}-retired")


def key_id(key: bytes) -> str:
    """A public name for a key-store key (audit events, retired file names): a one-way digest."""
    return hashlib.sha256(b"strongroom keystore key id|" + key).hexdigest()[:16]


def _parse(text: str, path: Path) -> bytes:
    key = bytes.fromhex(text.strip())
    if len(key) != 32:
        raise ValueError(f"{path}: the key-store key must be 32 bytes (64 hex digits)")
    return key


def keystore_key(settings: Settings) -> bytes:
    """The sealing key, created on first use (0600) and read again when its file changes: a rotation reaches
    every process at its next seal, without a restart."""
    path = key_path(settings)
    return keyfiles.load(path, lambda: os.urandom(32).hex(), lambda text: _parse(text, path))


def retired_keys(settings: Settings) -> list[bytes]:
    folder = retired_dir(settings)
    return [_parse(f.read_text(), f) for f in sorted(folder.glob("*.key"))] if folder.is_dir() else []


def seal(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def unseal(key: bytes, sealed: bytes, context: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], context)


def open_sealed(settings: Settings, sealed: bytes, context: bytes) -> bytes:
    """Unseal with the current key or, for what was sealed before a rotation, a retired one."""
    try:
        return unseal(keystore_key(settings), sealed, context)
    except InvalidTag:
        for key in retired_keys(settings):
            try:
                return unseal(key, sealed, context)
            except InvalidTag:
                continue
        raise


def _context(project_id: uuid.UUID, kind: str, pseudonym: str) -> bytes:
    return f"strongroom/pseudonym|{project_id}|{kind}|{pseudonym}".encode()


def _secret_context(project_id: uuid.UUID) -> bytes:
    return f"strongroom/pseudonymization-secret|{project_id}".encode()


def project_secret(session: Session, settings: Settings, project_id: uuid.UUID) -> bytes:
    """The project's pseudonymization key as the engines take it (``pseudonyms.scheme_key``: its secret under
    its pseudonym scheme), the secret generated (and sealed) on first use.

    A new project gets ``CANONICAL`` (one patient however their personnummer is written). A project that had
    pseudonymised patients before schemes existed kept ``AS_RECEIVED`` (migration 0039): changing how its
    patients are keyed would split each of them in two across its old and new data. A table does not say
    when its values were written: its 10-digit personnummer are read against the day the key was made, near
    the project's extracts and never changing."""
    row = session.get(ImagingProject, project_id)
    if row is None:
        secret = Pseudonymizer.generate_secret()
        row = ImagingProject(project_id=project_id, key_fingerprint=Pseudonymizer(secret).fingerprint,
                             sealed_secret=seal(keystore_key(settings), secret, _secret_context(project_id)),
                             pseudonym_scheme=CANONICAL, created_at=utcnow())
        session.add(row)
        session.flush()
    else:
        secret = open_sealed(settings, row.sealed_secret, _secret_context(project_id))
    return scheme_key(secret, row.pseudonym_scheme, row.created_at.date())


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
    return sorted((r.kind, open_sealed(settings, r.sealed_original, _context(access.project.id, r.kind, r.pseudonym))
                   .decode()) for r in rows)


# -- forgetting --------------------------------------------------------------------------------
# Where a pseudonym of each kind is written in what the project keeps: its instances' index columns.
_REFERRERS = {"PatientID": ImportedInstance.patient_pseudonym, "StudyInstanceUID": ImportedInstance.study_uid,
              "SOPInstanceUID": ImportedInstance.sop_instance_uid}
# the words of a file name a pseudonym could be: a UID (digits and dots) or a run of letters and digits
_WORDS = re.compile(r"[0-9]+(?:\.[0-9]+)+|[A-Za-z0-9]+")


def drop_unreferenced(session: Session, project_id: uuid.UUID, candidates: dict[str, set[str]]) -> int:
    """Delete the key-store entries among ``candidates`` (kind → pseudonyms) that nothing the project still holds
    refers to: no instance of it (in any state) and no name of its files that are not deleted. Retention calls
    this after deleting instances: the link from a pseudonym to an original is personal data kept only while there
    is data to re-identify. A patient with other, retained studies keeps their entry. Returns how many went."""
    loose = _loose_names(session, project_id)
    words = {word for name in loose for word in _WORDS.findall(name)}
    gone = 0
    for kind, pseudonyms in candidates.items():
        column = _REFERRERS.get(kind)
        if column is None:
            continue
        ordered = sorted(p for p in pseudonyms if p)
        for start in range(0, len(ordered), 1000):  # bounded IN lists
            chunk = ordered[start:start + 1000]
            held = set(session.scalars(select(column).where(ImportedInstance.project_id == project_id,
                                                           column.in_(chunk))))
            unused = [p for p in chunk if p not in held and not _named(p, words, loose)]
            if unused:
                gone += rowcount(session.execute(
                    delete(PseudonymEntry).where(PseudonymEntry.project_id == project_id, PseudonymEntry.kind == kind,
                                                 PseudonymEntry.pseudonym.in_(unused))
                    .execution_options(synchronize_session=False)))
    return gone


def _loose_names(session: Session, project_id: uuid.UUID) -> list[str]:
    """The names of the project's files that are not deleted and not imported instances (those are indexed):
    uploads, tables, results — a file named after a patient's pseudonym keeps that patient's entry."""
    return list(session.scalars(select(ArchiveFile.path).where(
        ArchiveFile.project_id == project_id, ArchiveFile.state != DELETED,
        ~select(ImportedInstance.id).where(ImportedInstance.file_id == ArchiveFile.id).exists())))


def _named(pseudonym: str, words: set[str], names: list[str]) -> bool:
    if _WORDS.fullmatch(pseudonym):
        return pseudonym in words
    return any(pseudonym in name for name in names)  # a pseudonym with a prefix of other characters


# -- rotation ----------------------------------------------------------------------------------
def rotate_key(settings: Settings) -> tuple[str, str]:
    """Put a new key in place of the current one, which moves to ``retired_dir`` (written there first, so no
    moment lacks it). Returns (previous, current) key ids. Every process seals with the new key from its next
    seal on; nothing is re-sealed yet (``reseal``)."""
    old = keystore_key(settings)
    folder = retired_dir(settings)
    private_dir(folder)
    keyfiles.replace(folder / f"{key_id(old)}.key", old.hex())
    new = os.urandom(32)
    keyfiles.replace(key_path(settings), new.hex())
    return key_id(old), key_id(new)


def _resealed(settings: Settings, key: bytes, sealed: bytes, context: bytes) -> bytes | None:
    """``sealed`` sealed again under ``key``, or None when it already is."""
    try:
        unseal(key, sealed, context)
        return None
    except InvalidTag:
        return seal(key, open_sealed(settings, sealed, context), context)


def reseal(sessions: sessionmaker[Session], settings: Settings, *, batch: int = 1000) -> Iterator[tuple[int, int, int]]:
    """Seal again under the current key every project secret and pseudonym original still sealed under a retired
    one, in short transactions of ``batch`` rows. Yields (checked, total, re-sealed). Safe to interrupt and run
    again: what is under the current key already is left as it is."""
    key = keystore_key(settings)
    with sessions() as session:
        total = ((session.scalar(select(func.count()).select_from(ImagingProject)) or 0)
                 + (session.scalar(select(func.count()).select_from(PseudonymEntry)) or 0))
    checked = changed = 0
    with transaction(sessions) as session:
        for project in session.scalars(select(ImagingProject)):
            checked += 1
            if (again := _resealed(settings, key, project.sealed_secret, _secret_context(project.project_id))):
                project.sealed_secret, changed = again, changed + 1
    yield checked, total, changed
    after = 0
    while True:
        with transaction(sessions) as session:
            rows = list(session.scalars(select(PseudonymEntry).where(PseudonymEntry.id > after)
                                        .order_by(PseudonymEntry.id).limit(batch)))
            for row in rows:
                context = _context(row.project_id, row.kind, row.pseudonym)
                if (again := _resealed(settings, key, row.sealed_original, context)):
                    row.sealed_original, changed = again, changed + 1
        if not rows:
            return
        after, checked = rows[-1].id, checked + len(rows)
        yield checked, total, changed
