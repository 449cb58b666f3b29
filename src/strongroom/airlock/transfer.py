"""The transfer of an approved request (a job): delivered to the destination, read back and checked
against the archive's SHA-256, with a receipt; imports land in the project. External destinations
(``s3``, ``sftp``) get each file re-encrypted to the partner's crypt4gh key (``egress`` moves the bytes)."""

from __future__ import annotations

import hashlib
import hmac
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive import c4gh
from ..archive import service as archive
from ..archive.backend import storage_for
from ..archive.keys import hub_keys
from ..archive.models import ArchiveFile, UserKey
from ..archive.storage.base import Storage
from ..audit import service as audit
from ..audit.service import Actor
from ..config import AirlockS3Credential, AirlockSftpCredential
from ..db import open_session, transaction, utcnow
from ..errors import Conflict
from ..hub import Hub
from ..identity.models import User
from ..identity.service import find_user
from ..projects.models import Project
from . import egress
from .models import (
    APPROVED,
    DONE,
    FAILED,
    TRANSFERRING,
    AirlockFile,
    AirlockRequest,
    OutboxItem,
)
from .plaintext import NotAsSent, TransferRefused, plaintext_copy, refs
from .service import (
    HOLD,
    PINNED_RECIPIENT,
    TRANSFER_ATTEMPTS,
    _everyone,
    _notify,
    _set_state,
    credential_for,
    destination_still_approved,
    request_files,
)
from .settings import S3Destination, SftpDestination

log = structlog.get_logger("strongroom.airlock")

# -- transfer (job) ----------------------------------------------------------------------------


def _verify_body(storage: Storage, body_key: str, header: bytes, secrets: list[bytes], expected: str) -> None:
    """Read what was delivered back, decrypt it and compare its SHA-256 with the archive's record."""
    opened = c4gh.open_header(header, secrets)
    digest = hashlib.sha256()
    with storage.open_reader(body_key) as reader:
        for segment in c4gh.decrypt_segments(reader, opened.session_keys):
            digest.update(segment)
    if not hmac.compare_digest(digest.hexdigest(), expected):
        raise NotAsSent(f"{body_key}: the delivered bytes do not match the recorded SHA-256")


def _deliver_to_project(hub: Hub, r: AirlockRequest, af: AirlockFile, dest: dict[str, Any]) -> dict[str, Any]:
    storage = storage_for(hub)
    with open_session(hub.sessions, deferred=True) as session:
        target = session.scalar(select(Project).where(Project.slug == dest["project"]))
        if target is None or target.status != "active":
            raise TransferRefused(f"the receiving project {dest['project']!r} does not exist or is closed")
        target_id = target.id
        keys = hub_keys(hub, session)
    ref = refs(hub, [af.file_id])[af.file_id]
    if ref is None:
        raise TransferRefused(f"{af.file_id}: the file is no longer ready in the archive")
    with plaintext_copy(hub, ref) as path:
        sealed = archive.seal_into_storage(keys, storage, target_id, archive.new_accession("SRF"), str(path))
    try:
        _verify_body(storage, sealed.body_key, sealed.header, list(ref.secrets), af.sha256)
        with transaction(hub.sessions) as session:
            try:
                archive.add_sealed_file(session, target_id, r.requester_id, af.path, sealed)
            except Conflict as exc:  # the receiving project's quota
                raise TransferRefused(f"{dest['project']}: {exc.detail}") from None
            row = session.get(AirlockFile, (r.id, af.file_id))
            assert row is not None
            row.delivered_id = sealed.file_id
            details = {"request": r.id, "source": af.file_id, "sha256": af.sha256}
            audit.record(session, Actor.system("airlock"), "airlock.file.delivered", project_id=r.project_id,
                         target=f"file:{af.file_id}", details={**details, "to_project": dest["project"],
                                                              "copy": sealed.file_id})
            audit.record(session, Actor.system("airlock"), "airlock.file.received", project_id=target_id,
                         target=f"file:{sealed.file_id}", details={**details, "from_request": r.id})
    except BaseException:
        storage.delete(sealed.body_key)
        raise
    return {"file_id": af.file_id, "path": af.path, "delivered_id": sealed.file_id, "sha256": af.sha256,
            "size": sealed.plaintext_size, "verified": True}


def _recipient(session: Session, dest: dict[str, Any]) -> User | None:
    """The account pinned when the request was made (requests from before that pinning: the name, as then)."""
    pinned = dest.get(PINNED_RECIPIENT)
    return session.get(User, uuid.UUID(pinned)) if pinned else find_user(session, dest["user"])


def _recipient_key(session: Session, dest: dict[str, Any]) -> tuple[User, UserKey]:
    user = _recipient(session, dest)
    if user is None or not user.is_active:
        raise TransferRefused(f"the recipient {dest['user']!r} is not an active user of this hub")
    stmt = select(UserKey).where(UserKey.user_id == user.id, UserKey.revoked_at.is_(None))
    if dest.get("key"):
        stmt = stmt.where(UserKey.fingerprint == dest["key"])
    key = session.scalar(stmt.order_by(UserKey.created_at.desc()).limit(1))
    if key is None:
        raise TransferRefused(f"the recipient {dest['user']!r} has no registered crypt4gh key"
                              + (f" {dest['key']}" if dest.get("key") else ""))
    return user, key


def _deliver_to_recipient(hub: Hub, r: AirlockRequest, af: AirlockFile, dest: dict[str, Any]) -> dict[str, Any]:
    """The header re-encrypted to the recipient's key (as downloads do), the body copied into the outbox."""
    storage = storage_for(hub)
    with open_session(hub.sessions, deferred=True) as session:
        user, key = _recipient_key(session, dest)
        user_id, public, fingerprint = user.id, key.public_key, key.fingerprint
        f = session.get(ArchiveFile, af.file_id)
        if f is None or f.header is None or f.body_key is None:
            raise TransferRefused(f"{af.file_id}: the file is no longer in the archive")
        keys = hub_keys(hub, session)
        source_header, source_body = f.header, f.body_key
    header = c4gh.reencrypt_header(source_header, keys.secrets, public, keys.current[1])
    body_key = f"outbox/{r.id}/{af.file_id}.{uuid.uuid4().hex[:8]}"
    stream = hashlib.sha256(header)
    writer = storage.open_writer(body_key)
    try:
        with storage.open_reader(source_body) as reader:
            while chunk := reader.read(4 * 1024 * 1024):
                stream.update(chunk)
                writer.write(chunk)
        stored = writer.commit()
    except BaseException:
        writer.abort()
        raise
    try:
        _verify_body(storage, body_key, source_header, keys.secrets, af.sha256)
        with transaction(hub.sessions) as session:
            item = OutboxItem(request_id=r.id, recipient_id=user_id, source_file_id=af.file_id, path=af.path,
                              key_fingerprint=fingerprint, header=header, body_key=body_key, body_size=stored.size,
                              plaintext_sha256=af.sha256, stream_sha256=stream.hexdigest())
            session.add(item)
            session.flush()
            row = session.get(AirlockFile, (r.id, af.file_id))
            assert row is not None
            row.delivered_id = str(item.id)
            audit.record(session, Actor.system("airlock"), "airlock.file.delivered", project_id=r.project_id,
                         target=f"file:{af.file_id}", subject_user_id=user_id,
                         details={"request": r.id, "outbox": str(item.id), "key": fingerprint, "sha256": af.sha256})
            item_id = str(item.id)
    except BaseException:
        storage.delete(body_key)
        raise
    return {"file_id": af.file_id, "path": af.path, "delivered_id": item_id, "sha256": af.sha256,
            "size": af.size, "stream_sha256": stream.hexdigest(), "recipient_key": fingerprint, "verified": True}


@dataclass(frozen=True)
class _Outgoing:
    """A file as it leaves for a partner: the header re-encrypted to their key, the archive's body as is."""

    header: bytes
    body_key: str
    session_keys: list[bytes]
    key_fingerprint: str
    name: str  # <request id>/<file id>-<file name>.c4gh under the destination's folder


def _outgoing(hub: Hub, r: AirlockRequest, af: AirlockFile, dest: dict[str, Any]) -> _Outgoing:
    try:
        public = c4gh.parse_public_key(dest["public_key"])
    except ValueError:
        raise TransferRefused(f"{dest['name']}: the destination's public_key is not a crypt4gh key") from None
    with open_session(hub.sessions, deferred=True) as session:
        f = session.get(ArchiveFile, af.file_id)
        if f is None or f.header is None or f.body_key is None:
            raise TransferRefused(f"{af.file_id}: the file is no longer in the archive")
        keys = hub_keys(hub, session)
        source_header, body_key = f.header, f.body_key
    header = c4gh.reencrypt_header(source_header, keys.secrets, public, keys.current[1])
    session_keys = list(c4gh.open_header(source_header, keys.secrets).session_keys)
    return _Outgoing(header, body_key, session_keys, c4gh.fingerprint(public),
                     f"{r.id}/{af.file_id}-{egress.safe_name(af.path)}.c4gh")


def _stream(hub: Hub, out: _Outgoing, digest: Any) -> Iterator[bytes]:
    """The crypt4gh stream for the partner (header, then the body read from the archive), hashed as sent."""
    digest.update(out.header)
    yield out.header
    with storage_for(hub).open_reader(out.body_key) as reader:
        while chunk := reader.read(egress.CHUNK):
            digest.update(chunk)
            yield chunk


def _check_read_back(where: str, back: egress.ReadBack, sent_size: int, sent_sha256: str, af: AirlockFile) -> None:
    if back.size != sent_size or not hmac.compare_digest(back.stream_sha256, sent_sha256):
        raise NotAsSent(f"{where}: what was read back ({back.size} bytes) is not what was sent "
                        f"({sent_size} bytes)")
    if not hmac.compare_digest(back.plaintext_sha256, af.sha256):
        raise NotAsSent(f"{where}: the delivered body does not decrypt to the recorded SHA-256")


def _external_delivered(hub: Hub, r: AirlockRequest, af: AirlockFile, dest: dict[str, Any], out: _Outgoing,
                        location: str, size: int, stream_sha256: str) -> dict[str, Any]:
    with transaction(hub.sessions) as session:
        row = session.get(AirlockFile, (r.id, af.file_id))
        assert row is not None
        row.delivered_id = stream_sha256  # an external copy is known by the bytes that were sent
        audit.record(session, Actor.system("airlock"), "airlock.file.delivered", project_id=r.project_id,
                     target=f"file:{af.file_id}",
                     details={"request": r.id, "to": dest["kind"], "destination": dest["name"], "location": location,
                              "key": out.key_fingerprint, "sha256": af.sha256, "stream_sha256": stream_sha256})
    return {"file_id": af.file_id, "path": af.path, "delivered_id": stream_sha256, "sha256": af.sha256,
            "size": af.size, "location": location, "stream_size": size, "stream_sha256": stream_sha256,
            "recipient_key": out.key_fingerprint, "verified": True}


def _external(hub: Hub, r: AirlockRequest, dest: dict[str, Any], model: type[BaseModel]) -> tuple[Any, Any]:
    """(the destination as the rules read it now, the hub's credential it names) — refused when the destination
    no longer passes them (saved before a rule was tightened: the PI adds it again) or the credential does not
    exist or does not serve the request's project."""
    try:
        parsed = model.model_validate(dest)
    except ValidationError:
        raise TransferRefused(f"{dest.get('name')!r} no longer passes the rules for {dest.get('kind')} destinations "
                              "(saved before they changed): the PI removes it and adds it again") from None
    with open_session(hub.sessions, deferred=True) as session:
        slug = session.scalar(select(Project.slug).where(Project.id == r.project_id)) or ""
    cred = credential_for(hub.settings.airlock, dest["kind"], dest["credential"], slug)
    if cred is None:
        raise TransferRefused(f"{dest['name']}: no {dest['kind'].upper()} credential {dest['credential']!r} in the "
                              f"hub's configuration serves this project ([airlock.{dest['kind']}.<name>] projects)")
    return parsed, cred


def _deliver_to_s3(hub: Hub, r: AirlockRequest, af: AirlockFile, dest: dict[str, Any]) -> dict[str, Any]:
    """Upload the re-encrypted stream to the partner bucket named by the destination's credential, then
    HEAD + GET it back: size and SHA-256 of the stream, and its body decrypted, must match."""
    parsed, cred = _external(hub, r, dest, S3Destination)
    assert isinstance(cred, AirlockS3Credential)
    out = _outgoing(hub, r, af, dest)
    storage = egress.s3_storage(cred)
    base = cred.prefix if not cred.prefix or cred.prefix.endswith("/") else cred.prefix + "/"
    key = f"{base}{parsed.prefix}{out.name}"
    location = f"s3://{cred.bucket}/{key}"
    sent = hashlib.sha256()
    size = egress.s3_put(storage, key, _stream(hub, out, sent))
    back = egress.read_back(egress.s3_chunks(storage, key), len(out.header), out.session_keys)
    _check_read_back(location, back, size, sent.hexdigest(), af)
    return _external_delivered(hub, r, af, dest, out, location, size, sent.hexdigest())


def _deliver_to_sftp(hub: Hub, r: AirlockRequest, af: AirlockFile, dest: dict[str, Any]) -> dict[str, Any]:
    """Write the re-encrypted stream to the partner's SFTP server (address, account and pinned host key all the
    credential's, the destination's folder under its directory), then stat and read it back as for S3."""
    parsed, cred = _external(hub, r, dest, SftpDestination)
    assert isinstance(cred, AirlockSftpCredential)
    out = _outgoing(hub, r, af, dest)
    session = egress.SftpSession(cred)
    try:
        folder, name = out.name.split("/", 1)
        directory = posixpath.join(cred.directory, parsed.directory, folder)  # a relative folder: never climbs out
        path = posixpath.join(directory, name)
        location = f"sftp://{session.where}/{path.lstrip('/')}"
        session.makedirs(directory)
        sent = hashlib.sha256()
        size = session.put(path, _stream(hub, out, sent))
        if session.size(path) != size:
            raise NotAsSent(f"{location}: the server holds {session.size(path)} bytes of {size}")
        back = egress.read_back(session.chunks(path), len(out.header), out.session_keys)
        _check_read_back(location, back, size, sent.hexdigest(), af)
    finally:
        session.close()
    return _external_delivered(hub, r, af, dest, out, location, size, sent.hexdigest())


def _land_import(hub: Hub, r: AirlockRequest, af: AirlockFile) -> dict[str, Any]:
    """An approved import: the staged file's hold is cleared after its bytes are checked once more."""
    ref = refs(hub, [af.file_id])[af.file_id]
    if ref is None:
        raise TransferRefused(f"{af.file_id}: the staged file is no longer ready")
    with plaintext_copy(hub, ref):
        pass  # decrypts and compares the SHA-256 with the record
    with transaction(hub.sessions) as session:
        f = session.get(ArchiveFile, af.file_id)
        row = session.get(AirlockFile, (r.id, af.file_id))
        assert f is not None and row is not None
        if f.hold == HOLD:
            f.hold = None
        row.delivered_id = f.id
        audit.record(session, Actor.system("airlock"), "airlock.file.imported", project_id=r.project_id,
                     target=f"file:{f.id}", details={"request": r.id, "sha256": af.sha256})
    return {"file_id": af.file_id, "path": af.path, "delivered_id": af.file_id, "sha256": af.sha256,
            "size": af.size, "verified": True}


def transfer(hub: Hub, request_id: str, *, attempt: int = 1) -> str:
    """Deliver every approved file not delivered yet (idempotent: a retry continues), then write the receipt."""
    actor = Actor.system("airlock")
    with transaction(hub.sessions) as session:
        r = session.get(AirlockRequest, request_id)
        if r is None or r.state not in (APPROVED, TRANSFERRING):
            return r.state if r else "missing"
        still_approved = destination_still_approved(session, r)
        if r.state == APPROVED and still_approved:
            _set_state(session, actor, r, TRANSFERRING, destination=r.destination)
        session.expunge(r)
    if not still_approved:  # checked at every attempt: a retry after the PI took it off sends nothing more
        return _transfer_failed(hub, request_id, f"{(r.destination or {}).get('name')!r} is no longer one of the "
                                "project's approved export destinations (removed or changed after the request)")
    with open_session(hub.sessions, deferred=True) as session:
        pending = request_files(session, r)
        for af in pending:
            session.expunge(af)
    receipt: list[dict[str, Any]] = list((r.receipt or {}).get("files", []))
    try:
        for af in pending:
            if af.delivered_id is not None:
                continue
            if (ended := _ended(hub, request_id)) is not None:
                return ended
            if r.direction == "import":
                entry = _land_import(hub, r, af)
            elif r.destination and r.destination["kind"] == "project":
                entry = _deliver_to_project(hub, r, af, r.destination)
            elif r.destination and r.destination["kind"] == "recipient":
                entry = _deliver_to_recipient(hub, r, af, r.destination)
            elif r.destination and r.destination["kind"] == "s3":
                entry = _deliver_to_s3(hub, r, af, r.destination)
            elif r.destination and r.destination["kind"] == "sftp":
                entry = _deliver_to_sftp(hub, r, af, r.destination)
            else:
                raise TransferRefused(f"destination kind {r.destination and r.destination.get('kind')!r} "
                                      "is not delivered by this hub")
            receipt.append({**entry, "delivered_at": utcnow().isoformat()})
            with transaction(hub.sessions) as session:
                row = session.get(AirlockRequest, request_id, with_for_update=True)
                assert row is not None
                # (kept even when the request ended meanwhile: the receipt says what did leave)
                row.receipt = {**(row.receipt or {}), "files": receipt}
    except TransferRefused as exc:
        return _transfer_failed(hub, request_id, str(exc))
    except Exception as exc:
        if attempt >= TRANSFER_ATTEMPTS:
            # a network or library error's text (addresses, ports, what answered) is for the hub's log only
            log.warning("airlock.transfer.failed", request=request_id, attempt=attempt, error=repr(exc))
            return _transfer_failed(hub, request_id, str(exc)[:500] if isinstance(exc, NotAsSent) else
                                    f"the delivery failed {attempt} times (a network, server or storage error: "
                                    "the hub's log has the details)")
        raise  # the job retries with backoff; delivered files are not sent again
    with transaction(hub.sessions) as session:
        row = session.get(AirlockRequest, request_id, with_for_update=True)
        assert row is not None
        if row.state != TRANSFERRING:  # given up meanwhile (an attempt past its time limit): it stays failed
            return row.state
        row.receipt = {"files": receipt, "destination": row.destination, "direction": row.direction,
                       "completed_at": utcnow().isoformat(), "all_verified": all(e["verified"] for e in receipt)}
        _set_state(session, actor, row, DONE, files=len(receipt))
        _notify(session, row, "airlock_decided", _everyone(session, row))
        if row.destination and row.destination.get("kind") == "recipient":
            user = _recipient(session, row.destination)  # the account the files went to, never the name's holder now
            if user is not None:
                _notify(session, row, "airlock_delivered", [user.id], files=len(receipt))
    return DONE


def _ended(hub: Hub, request_id: str) -> str | None:
    """The request's state when it is no longer transferring (its job gave up while this attempt, past its time
    limit, still ran): nothing more is sent. None while it transfers."""
    with open_session(hub.sessions, deferred=True) as session:
        state = session.scalar(select(AirlockRequest.state).where(AirlockRequest.id == request_id))
    return None if state == TRANSFERRING else (state or "missing")


def _transfer_failed(hub: Hub, request_id: str, reason: str) -> str:
    with transaction(hub.sessions) as session:
        r = session.get(AirlockRequest, request_id, with_for_update=True)
        assert r is not None
        if r.state not in (APPROVED, TRANSFERRING):  # ended meanwhile (given up): not failed, told, twice
            return r.state
        _mark_failed(session, r, reason)
    return FAILED


def _mark_failed(session: Session, r: AirlockRequest, reason: str) -> None:
    _set_state(session, Actor.system("airlock"), r, FAILED, reason=reason)
    r.receipt = {"files": list((r.receipt or {}).get("files", [])), "destination": r.destination,
                 "direction": r.direction, "failed_at": utcnow().isoformat(), "failed": reason,
                 "all_verified": False}
    _notify(session, r, "airlock_decided", _everyone(session, r))


def give_up(session: Session, payload: dict[str, Any], error: str) -> None:
    """`airlock.transfer`'s ``on_given_up``: its job failed for good without the transfer ending the request (the
    worker died, hung or ran past its time limit on the last attempt): the request fails as a transfer that
    keeps failing does, its receipt keeping what was delivered, and everyone is told. Its staged or outbox
    bodies are then the sweep's (`sweep`). Idempotent: a request no longer approved or transferring is left."""
    r = session.get(AirlockRequest, payload["request_id"], with_for_update=True)
    if r is not None and r.state in (APPROVED, TRANSFERRING):
        _mark_failed(session, r, f"gave up: {error}"[:500])


