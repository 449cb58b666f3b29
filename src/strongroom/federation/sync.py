"""Dataset sync between hubs.

Origin side (``start_sync``, ``run_sync``): a push of one released version (or every released version) of a
dataset to a peer is a ``SyncRun``; its manifest (``manifest.py``) carries each file's checksums and header
re-encrypted from this hub's archive key to the peer's, signed with this hub's signing key; the bodies follow
byte for byte, one signed ``PUT`` each, straight from storage; each body the peer acknowledged is
checkpointed (``SyncFile``) and never sent again, so a killed worker's push resumes where it stopped.

Peer side (``check_manifest``, ``receive_manifest``, ``store_body``, ``publish``): the manifest must verify with
the origin's pinned key and be addressed to this hub; each body is hashed as it arrives (SHA-256 against the
manifest), then decrypted with this hub's archive key (the header was re-encrypted to it) to check the
plaintext's SHA-256 and size, and stored. Anything that does not match refuses the whole push, with the reason,
and nothing is published. Publishing makes (or extends) a read-only mirror: a dataset in the peer's mirror
project (a project with no active member, so nobody uploads to or edits it), its released versions, a published
catalogue entry whose page names the origin, and the origin's visas accepted for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import bounded_http
from ..archive import c4gh
from ..archive.accession import new_accession
from ..archive.backend import storage_for
from ..archive.keys import hub_keys
from ..archive.models import DELETED, READY, ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..archive.paths import is_archive_path
from ..audit import service as audit
from ..config import Settings
from ..db import transaction, utcnow
from ..errors import Conflict, Forbidden, Invalid, NotFound, Unavailable
from ..hub import Hub
from ..identity.principal import Principal
from . import manifest as mf
from . import service, signing
from .models import Incoming, IncomingFile, Mirror, MirrorFile, Peer, SyncFile, SyncRun

log = structlog.get_logger("strongroom.federation")
SYNC_PATH = service.PEER_PATH + "/sync"
CHUNK = 1024 * 1024
PUBLISHED = ("released", "deprecated")
MIRROR_ISSUER = "urn:strongroom:federation"


class SyncRefused(Exception):
    """The peer refused the push (a tampered body, a manifest that does not verify): final, with its reason."""


class SyncBusy(Exception):
    """Another worker (this host or another) holds the push's lease and is running it now."""


# -- origin: starting a push ----------------------------------------------------------------------
def _versions(session: Session, dataset_id: str, version: int | None) -> list[DatasetVersion]:
    stmt = (select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id,
                                         DatasetVersion.state.in_(PUBLISHED)).order_by(DatasetVersion.number))
    if version is not None:
        stmt = stmt.where(DatasetVersion.number == version)
    return list(session.scalars(stmt))


def may_push(session: Session, principal: Principal, dataset: Dataset) -> bool:
    """Operators, and the PI of the dataset's project (the data owner's side)."""
    from ..projects.models import Project

    if principal.user.is_admin and principal.can("admin"):
        return True
    project = session.get(Project, dataset.project_id)
    return project is not None and project.pi_id == principal.user.id


def mirror_origin(session: Session, dataset: Dataset) -> str | None:
    """The origin peer a dataset of this hub mirrors (its project belongs to that peer's mirror service account),
    None for the hub's own datasets. Read from the project, not the mirror row, so it stays true once the peer
    is removed (its mirror rows go with it)."""
    from ..identity.models import User
    from ..projects.models import Project

    subject = session.scalar(select(User.subject).join(Project, Project.pi_id == User.id).where(
        Project.id == dataset.project_id, User.issuer == MIRROR_ISSUER))
    return subject.removeprefix("peer:") if subject is not None else None


def refuse_mirror(session: Session, dataset: Dataset) -> None:
    """A mirror is never pushed on: its origin's data owner chose which hubs hold a copy (and only the origin's
    withdrawal and deletion notices reach them), so a copy at a third hub would be one nobody there approved."""
    origin = mirror_origin(session, dataset)
    if origin is not None:
        raise Forbidden(f"{dataset.id} is a mirror of a dataset at {origin}: only its origin pushes it to other hubs")


def published_entry(session: Session, dataset_id: str) -> Any:
    """The dataset's catalogue entry if it is published now (not withdrawn, not unpublished, not a draft); a
    push carries this entry's public texts, never the archive's internal title and description."""
    from ..catalog.models import CatalogEntry

    entry = session.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == dataset_id))
    return entry if entry is not None and entry.published and entry.withdrawn_at is None else None


def refuse_unpublished(session: Session, dataset_id: str) -> Any:
    """Deny by default: only a dataset its catalogue publishes now leaves for a peer (which publishes it there)."""
    entry = published_entry(session, dataset_id)
    if entry is None:
        raise Invalid(f"{dataset_id} is not published in the catalogue (withdrawn, unpublished or never published): "
                      "only a published dataset is pushed to a peer hub")
    return entry


def start_sync(session: Session, settings: Settings, who: Principal | audit.Actor, dataset_id: str, peer_name: str,
               version: int | None = None) -> SyncRun:
    """A push of ``dataset_id`` (one released version, or all) to a peer. An unfinished push of the same
    dataset and version to the same peer is returned instead of a new one (idempotent), also when two callers
    start one at the same moment (the database's unique ``active_key`` decides); one of another version is a
    Conflict until it finishes."""
    from ..identity.service import require_fresh_mfa

    dataset = session.get(Dataset, dataset_id)
    if isinstance(who, audit.Actor):
        actor, user_id = who, None
    else:
        if dataset is None or not may_push(session, who, dataset):
            raise NotFound("no such dataset")
        require_fresh_mfa(who, settings.security.fresh_mfa_minutes)
        actor, user_id = who.actor, who.user.id
    if dataset is None:
        raise NotFound("no such dataset")
    refuse_mirror(session, dataset)
    refuse_unpublished(session, dataset.id)
    peer = service.peer_by_name(session, peer_name)
    if not (peer.active and peer.outbound):
        raise Invalid(f"{peer.name} is suspended or outbound exchanges with it are not allowed")
    if not _versions(session, dataset.id, version):
        raise Invalid("no released version to push" if version is None else f"version {version} is not released")
    key = f"{peer.id}:{dataset.id}"

    def unfinished() -> SyncRun | None:
        pending = session.scalar(select(SyncRun).where(
            SyncRun.peer_id == peer.id, SyncRun.dataset_id == dataset.id,
            SyncRun.state.in_(("queued", "running", "failed"))).order_by(SyncRun.created_at).limit(1))
        if pending is not None and pending.version != version:
            which = "every version" if pending.version is None else f"version {pending.version}"
            raise Conflict(f"a push of {dataset.id} ({which}) to {peer.name} is not finished yet: "
                           "let it finish (or resume it) first")
        return pending

    pending = unfinished()
    if pending is not None:
        return pending
    run = SyncRun(peer_id=peer.id, dataset_id=dataset.id, version=version, created_by=user_id, active_key=key)
    try:
        with session.begin_nested():  # the unique active_key: one unfinished push even when started at once
            session.add(run)
            session.flush()
    except IntegrityError:
        pending = unfinished()
        if pending is None:
            raise
        return pending
    audit.record(session, actor, "federation.sync.started", project_id=dataset.project_id,
                 target=f"dataset:{dataset.id}", details={"peer": peer.name, "sync": str(run.id), "version": version})
    return run


def recent(session: Session, limit: int = 20, dataset_id: str | None = None) -> list[tuple[SyncRun, str]]:
    """The latest pushes (of one dataset) with their peer's name, for the operators' and the dataset's pages."""
    stmt = select(SyncRun, Peer.name).join(Peer, Peer.id == SyncRun.peer_id)
    if dataset_id is not None:
        stmt = stmt.where(SyncRun.dataset_id == dataset_id)
    rows = session.execute(stmt.order_by(SyncRun.created_at.desc()).limit(limit))
    return [(run, name) for run, name in rows]


def enqueue(session: Session, run: SyncRun) -> None:
    from ..jobs import service as jobs

    jobs.enqueue(session, "federation.sync", {"sync_id": str(run.id)}, max_attempts=3)


def give_up(session: Session, payload: dict[str, Any], error: str) -> None:
    """`federation.sync`'s ``on_given_up``: its job failed for good without the push ending (the worker died, hung
    or ran past its time limit on the last attempt): the push is ``failed`` with the reason, as one the peer
    failed is, and audited. It stays resumable (its ``active_key`` and acknowledged bodies are kept: resuming
    continues after them); its row lease, if a dead worker held it, lapses by itself. Idempotent: a push that
    is done, refused or already failed is left."""
    run = session.get(SyncRun, uuid.UUID(str(payload["sync_id"])), with_for_update=True)
    if run is None or run.state not in ("queued", "running"):
        return
    run.state, run.error = "failed", f"gave up: {error}"[:2000]
    peer = session.get(Peer, run.peer_id)
    ds = session.get(Dataset, run.dataset_id)
    audit.record(session, audit.Actor.system("federation.sync"), "federation.sync.failed", outcome="failed",
                 project_id=ds.project_id if ds else None, target=f"dataset:{run.dataset_id}",
                 details={"peer": peer.name if peer else None, "sync": str(run.id), "reason": run.error[:500]})


# -- origin: the manifest --------------------------------------------------------------------------
def build_manifest(hub: Hub, session: Session, run: SyncRun, peer: Peer) -> tuple[dict[str, Any], list[ArchiveFile]]:
    """The manifest for ``run`` (deterministic: the same push always yields the same document, headers
    included, so a resumed push re-sends exactly what the peer already holds)."""
    from ..access.models import AccessPolicy
    from ..access.visas import dataset_url
    from ..catalog.privacy import scrubber

    dataset = session.get(Dataset, run.dataset_id)
    assert dataset is not None
    entry = refuse_unpublished(session, dataset.id)  # also when a queued or resumed push runs after a withdrawal
    keys = hub_keys(hub, session)
    recipient = c4gh.parse_public_key(peer.archive_key)
    versions, files = [], {}
    for v in _versions(session, dataset.id, run.version):
        members = list(session.scalars(select(ArchiveFile).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
                                       .where(DatasetFile.version_id == v.id).order_by(ArchiveFile.id)))
        versions.append({"number": v.number, "note": v.note, "files": [f.id for f in members],
                         "released_at": v.released_at.isoformat() if v.released_at else None})
        for f in members:
            files[f.id] = f
    entries = []
    for f in files.values():
        if f.state != READY or f.hold is not None or f.header is None:
            raise Invalid(f"file {f.id} is not ready to leave this hub")
        # The seed is keyed by the file's own data key, which never changes (not by the hub secret, which may
        # rotate between a push and its resumption: the peer refuses a second, different manifest).
        opened = c4gh.open_header(f.header, keys.secrets)
        seed = hmac.new(opened.session_keys[0], b"sync header|" + f.id.encode() + b"|" + recipient,
                        hashlib.sha256).digest()
        header = c4gh.make_header(opened.session_keys, recipient, keys.current[1], opened.edit_list, seed=seed)
        entries.append({"id": f.id, "path": f.path, "body_size": f.body_size, "body_sha256": f.body_sha256,
                        "plaintext_size": f.plaintext_size, "plaintext_sha256": f.plaintext_sha256,
                        "header": base64.b64encode(header).decode()})
    policy = session.get(AccessPolicy, dataset.id)
    # The peer publishes these texts: the curated public entry's, scrubbed as its landing page here is
    owner = entry.data_owner or hub.settings.site_name
    scrub = scrubber(session, [entry.title, entry.description, owner])
    doc = {"format": mf.FORMAT, "sync_id": str(run.id), "origin": service.base(hub.settings),
           "origin_name": hub.settings.site_name, "recipient_key_id": peer.key_id,
           "created": run.created_at.isoformat(),
           "dataset": {"id": dataset.id, "title": scrub(entry.title), "description": scrub(entry.description or ""),
                       "url": dataset_url(hub.settings.base_url, dataset.id), "owner": scrub(owner),
                       "published": True, "applicant_download": bool(policy and policy.applicant_download)},
           "versions": versions, "files": entries}
    return doc, list(files.values())


# -- origin: running a push --------------------------------------------------------------------------
Progress = Callable[[int, int, int, int], None]  # files done, files total, bytes done, bytes total


def _post(hub: Hub, peer_url: str, path: str, doc: dict[str, Any], *,
          total_seconds: float | None = None) -> bounded_http.Reply:
    """A signed POST of ``doc`` to the peer, its answer bounded (`service.answer_bounds`): within
    ``total_seconds``, by default ``service.EXCHANGE_SECONDS``."""
    bounds = service.answer_bounds(hub.settings, total_seconds or service.EXCHANGE_SECONDS, read_seconds=60)
    return service.signed_post(hub.settings, peer_url, path, json.dumps(doc).encode(), bounds)


def _answer(r: bounded_http.Reply) -> dict[str, Any] | None:
    """The peer's answer as a JSON object, None when it is not one."""
    try:
        doc = r.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _reason(r: bounded_http.Reply) -> str:
    detail = (_answer(r) or {}).get("detail")
    return str(detail or r.text)[:500] or f"HTTP {r.status_code}"


def _body_chunks(reader: BinaryIO) -> Iterator[bytes]:
    with reader:
        while chunk := reader.read(CHUNK):
            yield chunk


def _offer_presigned(hub: Hub, storage: Any, peer_url: str, path: str, body_key: str | None,
                     size: int) -> bounded_http.Reply | str | None:
    """S3 to S3: offer the peer a short-lived presigned GET URL of the body in this hub's object store (when
    ``presign_bodies`` and the storage is S3). The peer's answer when it fetched (or refused) the body; None
    when it would not fetch (push it instead); a string: why there is no answer to use."""
    cfg = hub.settings.federation
    if not cfg.presign_bodies or body_key is None or not hasattr(storage, "presigned_get"):
        return None
    url = storage.presigned_get(body_key, cfg.presign_seconds)
    try:  # the peer fetches the body before it answers: as long as a push of it may take
        r = _post(hub, peer_url, path + "/fetch", {"url": url}, total_seconds=service.transfer_seconds(size))
    except httpx.HTTPError as exc:  # also an answer refused (too large, too slow, compressed)
        return bounded_http.describe(exc)
    answer = _answer(r)
    if r.status_code == 200 and answer is not None and answer.get("fetch") is False:
        log.info("sync.fetch_declined", reason=str(answer.get("reason"))[:300])
        return None
    return r


def run_sync(hub: Hub, sync_id: uuid.UUID | str, progress: Progress | None = None) -> dict[str, Any]:
    """Push (or resume pushing) a ``SyncRun``: manifest, the bodies not yet acknowledged, publish. Only one
    worker at a time runs a push (its lease): SyncBusy while another does."""
    sync_uuid = uuid.UUID(str(sync_id))
    with transaction(hub.sessions) as session:
        run = session.get(SyncRun, sync_uuid)
        if run is None:
            raise NotFound("no such push")
        if run.state in ("done", "refused"):
            return {"state": run.state, "files": run.files_total}
    lease = Lease(hub, sync_uuid)
    lease.claim()
    try:
        return _run_leased(hub, sync_uuid, lease, progress)
    finally:
        lease.release()


class Lease:
    """A push's worker lease in its row (``lease_owner``, ``lease_until``): taken with one conditional UPDATE
    (so two workers on any hosts cannot both hold it), renewed by a heartbeat thread while the push runs, let go
    at the end; a killed worker's lease lapses after ``federation.sync_lease_seconds``."""

    def __init__(self, hub: Hub, sync_id: uuid.UUID) -> None:
        self.hub, self.sync_id, self.owner = hub, sync_id, uuid.uuid4().hex
        self.seconds = hub.settings.federation.sync_lease_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _take(self) -> bool:
        import datetime as dt

        now = utcnow()
        with transaction(self.hub.sessions) as s:
            result = s.execute(update(SyncRun).where(
                SyncRun.id == self.sync_id,
                or_(SyncRun.lease_until.is_(None), SyncRun.lease_until < now, SyncRun.lease_owner == self.owner))
                .values(lease_owner=self.owner, lease_until=now + dt.timedelta(seconds=self.seconds)))
            return int(getattr(result, "rowcount", 0) or 0) == 1

    def claim(self) -> None:
        if not self._take():
            raise SyncBusy("another worker is running this push now")
        self._beat = threading.Thread(target=self._heartbeat, name=f"sync-lease-{self.sync_id}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(self.seconds / 3, 0.5)):
            try:
                if not self._take():
                    self.lost.set()
                    return
            except Exception:  # a database hiccup: the next beat tries again, the lease has time left
                log.warning("sync.lease_renew_failed", sync=str(self.sync_id))

    def check(self) -> None:
        if self.lost.is_set():
            raise SyncBusy("this worker lost the push's lease (another worker took it over)")

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        with transaction(self.hub.sessions) as s:
            s.execute(update(SyncRun).where(SyncRun.id == self.sync_id, SyncRun.lease_owner == self.owner)
                      .values(lease_owner=None, lease_until=None))


def _run_leased(hub: Hub, sync_uuid: uuid.UUID, lease: Lease, progress: Progress | None) -> dict[str, Any]:
    storage = storage_for(hub)
    actor = audit.Actor.system("federation.sync")
    with transaction(hub.sessions) as session:
        run = session.get(SyncRun, sync_uuid)
        if run is None:
            raise NotFound("no such push")
        if run.state in ("done", "refused"):  # another worker finished it while this one waited
            return {"state": run.state, "files": run.files_total}
        peer = session.get(Peer, run.peer_id)
        assert peer is not None
        if not (peer.active and peer.outbound):
            raise Invalid(f"{peer.name} is suspended or outbound exchanges with it are not allowed")
        peer_name, peer_url, dataset_id = peer.name, peer.base_url, run.dataset_id
        ds = session.get(Dataset, run.dataset_id)
        project_id = ds.project_id if ds else None
        withdrawn = published_entry(session, run.dataset_id) is None
        if not withdrawn:
            doc, files = build_manifest(hub, session, run, peer)
            signature = signing.sign_document(service.hub_key(hub.settings).private, mf.canonical(doc))
            done = set(session.scalars(select(SyncFile.file_id).where(SyncFile.sync_id == run.id)))
            run.state, run.error = "running", None
            run.files_total, run.bytes_total = len(files), sum(f.body_size or 0 for f in files)
            bodies = [(f.id, f.body_key, f.body_size or 0, f.body_sha256 or "") for f in files]

    def fail(state: str, reason: str, sent: bool = True) -> dict[str, Any]:
        with transaction(hub.sessions) as s:
            r = s.get(SyncRun, sync_uuid)
            assert r is not None
            r.state, r.error = state, reason[:2000]
            if state == "refused":
                r.finished_at, r.active_key = utcnow(), None
            audit.record(s, actor, "federation.sync.failed" if state == "failed" else "federation.sync.refused",
                         outcome="failed", project_id=project_id, target=f"dataset:{dataset_id}",
                         details={"peer": peer_name, "sync": str(sync_uuid), "reason": reason[:500]})
            if sent:
                audit.record(s, actor, "federation.exchange.sent", outcome="failed", target=f"peer:{peer_name}",
                             details={"what": "sync", "reason": reason[:500]})
        if state == "refused":
            raise SyncRefused(reason)
        raise RuntimeError(f"push to {peer_name} failed: {reason}")

    unpublished = (f"{dataset_id} is no longer published in the catalogue (withdrawn or unpublished since the push "
                   "was started): it is not pushed")
    if withdrawn:  # final: a retry or resumption would only be refused again
        return fail("refused", unpublished, sent=False)
    try:
        r = _post(hub, peer_url, f"{SYNC_PATH}/manifest", {"manifest": doc, "signature": signature})
    except httpx.HTTPError as exc:  # also an answer refused (too large, too slow, compressed)
        return fail("failed", f"manifest: {peer_name}: {bounded_http.describe(exc)}")
    if r.status_code != 200:
        return fail("refused" if r.status_code in (401, 403, 409, 422) else "failed",
                    f"manifest: HTTP {r.status_code}: {_reason(r)}")
    answer = _answer(r)
    if answer is None or not isinstance(answer.get("have", []), list):
        return fail("failed", f"manifest: {peer_name} answered something other than the bodies it holds")
    have = {fid for fid in answer.get("have", []) if isinstance(fid, str)} | done
    files_done = sum(1 for fid, *_ in bodies if fid in have)
    bytes_done = sum(size for fid, _, size, _ in bodies if fid in have)
    total_files, total_bytes = len(bodies), sum(size for _, _, size, _ in bodies)
    if progress:
        progress(files_done, total_files, bytes_done, total_bytes)
    for fid, body_key, size, sha in bodies:
        if fid in have:
            continue
        lease.check()
        path = f"{SYNC_PATH}/{sync_uuid}/files/{fid}"
        fetched = _offer_presigned(hub, storage, peer_url, path, body_key, size)
        if isinstance(fetched, str):
            return fail("failed", f"{fid}: {peer_name}: {fetched}")
        if fetched is not None:  # the peer fetched it from this hub's object store (or refused it)
            r = fetched
        else:
            headers = service.signature_headers(hub.settings, "PUT", peer_url, path, body_sha256=sha)
            bounds = service.answer_bounds(hub.settings, service.transfer_seconds(size), read_seconds=600)
            try:
                assert body_key is not None
                r = bounded_http.fetch("PUT", peer_url + path, bounds,
                                       content=_body_chunks(storage.open_reader(body_key)),
                                       headers={**headers, "Content-Type": "application/octet-stream",
                                                "Content-Length": str(size)})
            except httpx.HTTPError as exc:  # also an answer refused (too large, too slow, compressed)
                return fail("failed", f"{fid}: {peer_name}: {bounded_http.describe(exc)}")
        if r.status_code != 200:
            return fail("refused" if r.status_code in (401, 403, 409, 422) else "failed",
                        f"{fid}: HTTP {r.status_code}: {_reason(r)}")
        files_done, bytes_done = files_done + 1, bytes_done + size
        with transaction(hub.sessions) as s:  # the checkpoint: this body is never sent again in this push
            if s.get(SyncFile, (sync_uuid, fid)) is None:
                s.add(SyncFile(sync_id=sync_uuid, file_id=fid))
            run = s.get(SyncRun, sync_uuid)
            assert run is not None
            run.files_done, run.bytes_done = files_done, bytes_done
        if progress:
            progress(files_done, total_files, bytes_done, total_bytes)
    lease.check()
    with hub.sessions() as s:  # withdrawn while the bodies travelled: the peer never publishes it
        withdrawn = published_entry(s, dataset_id) is None
    if withdrawn:
        return fail("refused", unpublished, sent=False)
    try:
        r = _post(hub, peer_url, f"{SYNC_PATH}/{sync_uuid}/publish", {})
    except httpx.HTTPError as exc:  # also an answer refused (too large, too slow, compressed)
        return fail("failed", f"publish: {peer_name}: {bounded_http.describe(exc)}")
    if r.status_code != 200:
        return fail("refused" if r.status_code in (401, 403, 409, 422) else "failed",
                    f"publish: HTTP {r.status_code}: {_reason(r)}")
    answer = _answer(r) or {}  # where the peer published the mirror: recorded as it says, if it says
    published = {k: answer[k][:500] for k in ("dataset", "url") if isinstance(answer.get(k), str)}
    with transaction(hub.sessions) as s:
        run = s.get(SyncRun, sync_uuid)
        assert run is not None
        run.state, run.finished_at, run.files_done, run.bytes_done = "done", utcnow(), total_files, total_bytes
        run.active_key = None
        details = {"peer": peer_name, "sync": str(sync_uuid), "files": total_files, "bytes": total_bytes,
                   "mirror": published.get("dataset"), "url": published.get("url")}
        audit.record(s, actor, "federation.sync.completed", project_id=project_id, target=f"dataset:{dataset_id}",
                     details=details)
        audit.record(s, actor, "federation.exchange.sent", target=f"peer:{peer_name}",
                     details={"what": "sync", "files": total_files})
    return {"state": "done", "files": total_files, "bytes": total_bytes, **published}


# -- peer: receiving ---------------------------------------------------------------------------------
def _refuse(hub: Hub, peer_id: uuid.UUID, incoming_id: uuid.UUID | None, reason: str, ip: str | None,
            what: str) -> None:
    """Record a refusal in its own transaction (the request's rolls back with the error): the push stops."""
    with transaction(hub.sessions) as s:
        peer = s.get(Peer, peer_id)
        name = peer.name if peer else "unknown"
        if incoming_id is not None:
            inc = s.get(Incoming, incoming_id)
            if inc is not None and inc.state == "receiving":
                inc.state, inc.reason, inc.updated_at = "refused", reason[:2000], utcnow()
        audit.record(s, audit.Actor(id=None, label=f"peer:{name}", ip=ip), "federation.sync.refused",
                     outcome="refused", target=f"peer:{name}", details={"what": what, "reason": reason[:500]})


def check_manifest(hub: Hub, peer_id: uuid.UUID, body: bytes, ip: str | None) -> tuple[dict[str, Any], str]:
    """The manifest and its signature, verified with the origin's pinned key and addressed to this hub; a
    refusal is audited (in its own transaction: call this outside any other) and raised as Invalid."""
    with hub.sessions() as s:
        peer = s.get(Peer, peer_id)
        assert peer is not None
        public, origin = signing.load_public(peer.signing_key), peer.base_url
    try:
        envelope = json.loads(body)
        doc, signature = envelope["manifest"], str(envelope["signature"])
        signing.verify_document(public, mf.canonical(doc), signature)
        mf.check(doc, origin=origin, recipient_key_id=service.hub_key(hub.settings).key_id)
    except (ValueError, KeyError, TypeError, signing.SignatureError, mf.ManifestError) as exc:
        reason = str(exc) if isinstance(exc, signing.SignatureError | mf.ManifestError) else "not a manifest envelope"
        _refuse(hub, peer_id, None, reason, ip, "manifest")
        raise Invalid(f"manifest refused: {reason}") from None
    refuse_deleted_versions(hub, peer_id, doc, ip)
    return doc, signature


def receive_manifest(session: Session, peer: Peer, doc: dict[str, Any], signature: str,
                     ip: str | None) -> dict[str, Any]:
    """Record a verified manifest (``check_manifest``); answers which bodies this hub already holds."""
    inc = session.scalar(select(Incoming).where(Incoming.peer_id == peer.id, Incoming.sync_id == doc["sync_id"]))
    if inc is None:
        inc = Incoming(peer_id=peer.id, sync_id=doc["sync_id"], origin_dataset_id=doc["dataset"]["id"],
                       manifest=doc, signature=str(signature))
        session.add(inc)
        session.flush()
        audit.record(session, audit.Actor(id=None, label=f"peer:{peer.name}", ip=ip), "federation.sync.received",
                     target=f"peer:{peer.name}", details={"what": "manifest", "sync": doc["sync_id"],
                                                           "dataset": doc["dataset"]["id"],
                                                           "files": len(doc["files"])})
    elif inc.state == "refused":
        raise Conflict(f"this push was refused: {inc.reason}")
    elif mf.canonical(inc.manifest) != mf.canonical(doc):
        raise Conflict("this push already has another manifest")
    received = set(session.scalars(select(IncomingFile.origin_file_id).where(IncomingFile.incoming_id == inc.id)))
    mirrored = {m.origin_file_id: m.body_sha256 for m in session.scalars(select(MirrorFile).where(
        MirrorFile.peer_id == peer.id, MirrorFile.origin_file_id.in_([f["id"] for f in doc["files"]])))}
    have = sorted(received | {f["id"] for f in doc["files"] if mirrored.get(f["id"]) == f["body_sha256"]})
    return {"sync": inc.sync_id, "state": inc.state, "have": have}


def incoming_for(session: Session, peer: Peer, sync_id: str) -> Incoming:
    inc = session.scalar(select(Incoming).where(Incoming.peer_id == peer.id, Incoming.sync_id == sync_id))
    if inc is None:
        raise NotFound("no such push: send its manifest first")
    if inc.state == "refused":
        raise Conflict(f"this push was refused: {inc.reason}")
    return inc


def body_key_for(peer_name: str, sync_id: str, file_id: str) -> str:
    return f"mirrors/{peer_name}/{sync_id}/{file_id}"


def store_body(hub: Hub, peer_id: uuid.UUID, sync_id: str, file_id: str, spooled: BinaryIO, sha256: str,
               size: int, claimed_digest: str, ip: str | None, via: str = "push") -> dict[str, Any]:
    """A body spooled from the request: its digest, then its plaintext, checked against the manifest, then
    stored. A mismatch refuses the whole push (nothing is published) and says why."""
    with hub.sessions() as s:
        peer = s.get(Peer, peer_id)
        assert peer is not None
        inc = incoming_for(s, peer, sync_id)
        entry = mf.file_entry(inc.manifest, file_id)
        if entry is None:
            raise NotFound("the manifest has no such file")
        if forgotten(entry):
            raise Conflict(f"{file_id} was {DELETED_AT_ORIGIN}: it is not received again")
        inc_id, peer_name = inc.id, peer.name
        if s.get(IncomingFile, (inc.id, file_id)) is not None:
            return {"file": file_id, "status": "had"}
        keys = hub_keys(hub, s)

    def refuse(reason: str) -> Invalid:
        _refuse(hub, peer_id, inc_id, f"{file_id}: {reason}", ip, "body")
        return Invalid(f"body refused: {file_id}: {reason}")

    if size != entry["body_size"] or sha256 != entry["body_sha256"]:
        raise refuse("the body's SHA-256 (or size) does not match the manifest signed by the origin")
    if claimed_digest != signing.digest_of_hex(sha256):
        raise refuse("the body does not match its signed Content-Digest")
    try:
        opened = c4gh.open_header(base64.b64decode(entry["header"]), keys.secrets)
    except c4gh.C4ghError:
        raise refuse("the header is not encrypted to this hub's archive key") from None
    if opened.edit_list is not None:
        raise refuse("the header carries an edit list")
    key = body_key_for(peer_name, sync_id, file_id)
    storage = storage_for(hub)
    spooled.seek(0)
    writer = storage.open_writer(key)
    try:
        result = c4gh.ingest(spooled, opened.session_keys, writer.write, workers=0, md5=False)
        if result.plaintext_sha256 != entry["plaintext_sha256"] or result.plaintext_size != entry["plaintext_size"]:
            writer.abort()
            raise refuse("the plaintext's SHA-256 (or size) does not match the manifest signed by the origin")
        writer.commit()
    except (c4gh.TamperedSegment, c4gh.TruncatedBody) as exc:
        writer.abort()
        raise refuse(f"the encrypted body is damaged: {exc}") from None
    except Invalid:
        raise
    except BaseException:
        writer.abort()
        raise
    with transaction(hub.sessions) as s:
        # its version deleted at the origin while the body travelled (``forget_version``): not kept
        current = s.get(Incoming, inc_id, with_for_update=True)
        if current is None or current.state == "refused" or forgotten(mf.file_entry(current.manifest, file_id) or {}):
            from ..retention.deletion import purge_object

            purge_object(storage, key)
            raise Conflict(f"this push was refused: {current.reason if current is not None else 'it is gone'}")
        if s.get(IncomingFile, (inc_id, file_id)) is None:
            s.add(IncomingFile(incoming_id=inc_id, origin_file_id=file_id, body_key=key))
        audit.record(s, audit.Actor(id=None, label=f"peer:{peer_name}", ip=ip), "federation.sync.received",
                     target=f"peer:{peer_name}", details={"what": "body", "sync": sync_id, "file": file_id,
                                                           "bytes": size, "via": via})
    return {"file": file_id, "status": "stored", "fingerprint": keys.fingerprint_at(opened.key_index)}


def _mirror_owner(session: Session, peer: Peer) -> tuple[uuid.UUID, uuid.UUID]:
    """The peer's mirror project and its owner: an inactive service account nobody logs in as, so the
    project has no active member and nothing in it can be uploaded or edited."""
    import datetime as dt

    from ..identity.models import User
    from ..projects.models import Membership, Project

    user = session.scalar(select(User).where(User.issuer == MIRROR_ISSUER, User.subject == f"peer:{peer.name}"))
    if user is None:
        user = User(issuer=MIRROR_ISSUER, subject=f"peer:{peer.name}", display_name=f"Mirror of {peer.name}",
                    is_active=False)
        session.add(user)
        session.flush()
    slug = f"mirror-{peer.name}"[:40]
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        project = Project(slug=slug, name=f"Mirrored from {peer.name}", project_class="network-partner",
                          description=f"Read-only datasets mirrored from the peer hub {peer.base_url}",
                          ethics_ref=f"decided at {peer.base_url}"[:120], pi_id=user.id, quota_bytes=0,
                          end_date=dt.date(9999, 12, 31))
        session.add(project)
        session.flush()
        session.add(Membership(project_id=project.id, user_id=user.id, role="pi", delegated_rights=[]))
    return project.id, user.id


def _slug(session: Session, peer: Peer, origin_id: str) -> str:
    from ..catalog.models import CatalogEntry

    base = re.sub(r"[^a-z0-9-]+", "-", f"{peer.name}-{origin_id}".lower()).strip("-")[:70]
    slug, n = base, 1
    while session.scalar(select(CatalogEntry.id).where(CatalogEntry.slug == slug)) is not None:
        n += 1
        slug = f"{base}-{n}"
    return slug


def publish(hub: Hub, session: Session, peer: Peer, sync_id: str, ip: str | None) -> dict[str, Any]:
    """Publish a fully received push as (part of) the read-only mirror; idempotent."""
    from ..access.models import AccessPolicy
    from ..catalog.models import CatalogEntry

    inc = incoming_for(session, peer, sync_id)
    doc = inc.manifest
    mirror = session.scalar(select(Mirror).where(Mirror.peer_id == peer.id,
                                                 Mirror.origin_dataset_id == doc["dataset"]["id"]))
    if inc.state == "published" and mirror is not None:
        return {"dataset": mirror.dataset_id, "url": _landing(hub, session, mirror.dataset_id)}
    if any(forgotten(f) for f in doc["files"]):  # a version deleted at its origin: its keys are gone here
        raise Conflict(f"this push carries a version that was {DELETED_AT_ORIGIN}: not published")
    # Checked again: a manifest received before a rule was added (or before the peer was re-pinned elsewhere)
    # publishes nothing that the rule refuses now
    unsafe = next((f["path"] for f in doc["files"] if not is_archive_path(f["path"])), None)
    if unsafe is not None or not mf.url_under(doc["dataset"]["url"], peer.base_url):
        raise Conflict("this push's manifest does not pass this hub's rules now ("
                       + (f"file path {unsafe[:100]!r}" if unsafe is not None else "dataset.url") + "): not published")
    received = {f.origin_file_id: f for f in session.scalars(select(IncomingFile).where(
        IncomingFile.incoming_id == inc.id))}
    mirrored = {m.origin_file_id: m for m in session.scalars(select(MirrorFile).where(MirrorFile.peer_id == peer.id))}
    missing = [f["id"] for f in doc["files"] if f["id"] not in received
               and getattr(mirrored.get(f["id"]), "body_sha256", None) != f["body_sha256"]]
    if missing:
        raise Conflict(f"{len(missing)} file bodies have not arrived: {', '.join(missing[:5])}")
    project_id, owner_id = _mirror_owner(session, peer)
    keys = hub_keys(hub, session)
    ds_doc = doc["dataset"]
    if mirror is None:
        local_id = ds_doc["id"] if session.get(Dataset, ds_doc["id"]) is None else new_accession("SRD")
        session.add(Dataset(id=local_id, project_id=project_id, title=ds_doc["title"][:300],
                            description=ds_doc["description"], created_by=owner_id))
        session.flush()
        mirror = Mirror(dataset_id=local_id, peer_id=peer.id, origin_dataset_id=ds_doc["id"], origin_url=ds_doc["url"])
        session.add(mirror)
    else:
        ds = session.get(Dataset, mirror.dataset_id)
        assert ds is not None
        ds.title, ds.description = ds_doc["title"][:300], ds_doc["description"]
        mirror.origin_url, mirror.synced_at = ds_doc["url"], utcnow()
        mirror.withdrawn_at, mirror.withdrawn_reason = None, ""  # pushed again: the origin offers it again
    local_files: dict[str, ArchiveFile] = {}
    now = utcnow()
    for entry in doc["files"]:
        known = mirrored.get(entry["id"])
        if known is not None and known.body_sha256 == entry["body_sha256"]:
            f = session.get(ArchiveFile, known.file_id)
            assert f is not None
            local_files[entry["id"]] = f
            continue
        header = base64.b64decode(entry["header"])
        opened = c4gh.open_header(header, keys.secrets)
        f = ArchiveFile(id=new_accession("SRF"), project_id=project_id, uploader_id=owner_id, path=entry["path"],
                        state=READY, upload_size=len(header) + entry["body_size"], header=header,
                        header_key=keys.fingerprint_at(opened.key_index), body_key=received[entry["id"]].body_key,
                        body_size=entry["body_size"], body_sha256=entry["body_sha256"],
                        plaintext_size=entry["plaintext_size"], plaintext_sha256=entry["plaintext_sha256"],
                        ingested_at=now)
        session.add(f)
        session.flush()
        if known is not None:
            known.file_id, known.body_sha256 = f.id, entry["body_sha256"]
        else:
            session.add(MirrorFile(peer_id=peer.id, origin_file_id=entry["id"], file_id=f.id,
                                   body_sha256=entry["body_sha256"]))
        local_files[entry["id"]] = f
    for v in doc["versions"]:
        if session.scalar(select(DatasetVersion.id).where(DatasetVersion.dataset_id == mirror.dataset_id,
                                                          DatasetVersion.number == v["number"])) is not None:
            continue  # versions are immutable once released: the same number holds the same files
        members = [local_files[i] for i in v["files"]]
        version = DatasetVersion(dataset_id=mirror.dataset_id, number=v["number"], state="released",
                                 file_count=len(members), total_bytes=sum(f.plaintext_size or 0 for f in members),
                                 note=v.get("note", ""), released_at=now)
        session.add(version)
        session.flush()
        for f in members:
            session.add(DatasetFile(version_id=version.id, file_id=f.id))
    policy = session.get(AccessPolicy, mirror.dataset_id)
    if policy is None:
        policy = AccessPolicy(dataset_id=mirror.dataset_id, form_name="imaging-request", terms_name="standard-dua")
        session.add(policy)
    policy.applicant_download = bool(ds_doc["applicant_download"])
    policy.external_owner = (doc.get("origin_name") or peer.name)[:200]
    entry_row = session.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == mirror.dataset_id))
    if entry_row is None:
        entry_row = CatalogEntry(dataset_id=mirror.dataset_id, slug=_slug(session, peer, ds_doc["id"]),
                                 created_by=owner_id, title=ds_doc["title"][:300])
        session.add(entry_row)
    entry_row.title, entry_row.description = ds_doc["title"][:300], ds_doc["description"]
    entry_row.data_owner = ds_doc["owner"][:200]
    entry_row.access_conditions = f"Access is decided by {doc.get('origin_name') or peer.name} ({peer.base_url})."
    entry_row.published, entry_row.updated_at = True, now
    entry_row.published_at = entry_row.published_at or now
    inc.state, inc.updated_at = "published", now
    session.flush()
    audit.record(session, audit.Actor(id=None, label=f"peer:{peer.name}", ip=ip), "federation.sync.published",
                 project_id=project_id, target=f"dataset:{mirror.dataset_id}",
                 details={"sync": sync_id, "origin": peer.base_url, "origin_dataset": ds_doc["id"],
                          "versions": [v["number"] for v in doc["versions"]], "files": len(doc["files"])})
    return {"dataset": mirror.dataset_id, "url": _landing(hub, session, mirror.dataset_id)}


def _landing(hub: Hub, session: Session, dataset_id: str) -> str:
    from ..catalog.models import CatalogEntry

    slug = session.scalar(select(CatalogEntry.slug).where(CatalogEntry.dataset_id == dataset_id))
    return f"{service.base(hub.settings)}/catalog/{slug}"


# -- peer: a version deleted at its origin ------------------------------------------------------------
DELETED_AT_ORIGIN = "deleted at its origin at the end of its retention period"
DELETED_HERE = "deleted on this hub at the end of its retention period"  # the mirror's own retention


def forgotten(entry: dict[str, Any]) -> bool:
    """Whether a manifest's file entry was forgotten (``forget_version``): no header, its path its id."""
    return entry.get("deleted") is True


def deleted_versions(session: Session, peer_id: uuid.UUID, origin_dataset_id: str) -> set[int]:
    """The versions of an origin's dataset its ``deleted`` notices told this hub of: deleted in the mirror, or
    marked deleted in the manifests kept of its pushes (a version only ever pushed, never published here)."""
    marked = {v["number"] for m in session.scalars(select(Incoming.manifest).where(
        Incoming.peer_id == peer_id, Incoming.origin_dataset_id == origin_dataset_id))
        for v in m["versions"] if v.get("deleted") is True}
    return marked | set(session.scalars(select(DatasetVersion.number).join(
        Mirror, Mirror.dataset_id == DatasetVersion.dataset_id).where(
        Mirror.peer_id == peer_id, Mirror.origin_dataset_id == origin_dataset_id, DatasetVersion.state == DELETED)))


@dataclass(frozen=True)
class Forgotten:
    """What ``forget_version`` changed: manifest entries cleared, received bodies purged, pushes refused."""

    entries: int = 0
    bodies: int = 0
    refused: int = 0

    def __bool__(self) -> bool:
        return bool(self.entries or self.bodies or self.refused)


def forget_version(hub: Hub, session: Session, peer_id: uuid.UUID, origin_dataset_id: str, number: int,
                   purged: frozenset[str] = frozenset(), why: str = DELETED_AT_ORIGIN) -> Forgotten:
    """Version ``number`` was deleted — by the origin (its ``deleted`` notice), or by this hub's own retention
    deleting the mirror's copy (``retention.deletion``; ``why`` says which): what this hub kept of its pushes
    stops holding the data keys and names of the files it deleted (those of a deleted version in no live one, as
    the manifests list them: the origin's own rule). In every kept manifest of the dataset's pushes, finished or
    not, such a file's header is destroyed and its path becomes its id (its entry and the version are marked
    ``deleted``); its received bodies — and the rows of those at ``purged`` keys — are purged from storage,
    checked gone (a body an archive file of this hub still holds is left to whoever deletes that file); a push
    still receiving such a version is refused (nothing of it is published). The stored signature no longer
    verifies the manifest it was made over. Idempotent, also after an application that stopped half-way (it
    rolls back)."""
    from ..retention.deletion import purge_object, remaining

    pushes = list(session.scalars(select(Incoming).where(
        Incoming.peer_id == peer_id, Incoming.origin_dataset_id == origin_dataset_id)
        .order_by(Incoming.created_at).with_for_update()))  # a body stored meanwhile waits, then sees it
    deleted = deleted_versions(session, peer_id, origin_dataset_id) | {number}
    versions = [v for inc in pushes for v in inc.manifest["versions"]]
    live = {fid for v in versions if v["number"] not in deleted for fid in v["files"]}
    gone = {fid for v in versions if v["number"] in deleted for fid in v["files"]} - live
    storage, now = storage_for(hub), utcnow()
    entries = bodies = refused = 0
    for inc in pushes:
        doc = json.loads(json.dumps(inc.manifest))  # a new value: the JSON column sees the change
        touched = [v for v in doc["versions"] if v["number"] in deleted and v.get("deleted") is not True]
        for v in touched:
            v["deleted"] = True
        cleared = [f for f in doc["files"] if f["id"] in gone and not forgotten(f)]
        for f in cleared:
            f["header"], f["path"], f["deleted"] = "", f["id"], True
        if touched or cleared:
            inc.manifest, inc.updated_at, entries = doc, now, entries + len(cleared)
        if inc.state == "receiving" and any(v.get("deleted") is True for v in doc["versions"]):
            inc.state, inc.reason, inc.updated_at = "refused", f"version {number} was {why}", now
            refused += 1
        rows = [r for r in session.scalars(select(IncomingFile).where(IncomingFile.incoming_id == inc.id))
                if r.origin_file_id in gone or r.body_key in purged]
        in_use = _stored_as_archive_files(session, [r.body_key for r in rows])
        for row in rows:
            if row.body_key not in in_use:  # a body no live copy here is made of
                purge_object(storage, row.body_key)
                if remaining(storage, row.body_key):
                    raise Unavailable("a received body is still in storage after its purge: the notice is retried")
                bodies += 1
            session.delete(row)
    session.flush()
    return Forgotten(entries, bodies, refused)


def _stored_as_archive_files(session: Session, keys: list[str]) -> set[str]:
    """Which of ``keys`` hold the body of an archive file (a deleted file holds none)."""
    found: set[str] = set()
    for start in range(0, len(keys), 2000):  # bounded IN lists
        found.update(session.scalars(select(ArchiveFile.body_key).where(
            ArchiveFile.body_key.in_(keys[start:start + 2000]))))
    return found


def refuse_deleted_versions(hub: Hub, peer_id: uuid.UUID, doc: dict[str, Any], ip: str | None) -> None:
    """A push of a version its origin deleted (a restored backup there, a stale job), or this hub's retention
    deleted the mirror's copy of, is refused: the certificate the origin (or this hub) issued says no copy of it
    is left here."""
    from ..retention.models import APPROVED, REQUESTED, Deletion

    with hub.sessions() as s:
        again = deleted_versions(s, peer_id, doc["dataset"]["id"]) & {v["number"] for v in doc["versions"]}
        here = set(s.scalars(select(DatasetVersion.number).join(Mirror, Mirror.dataset_id == DatasetVersion.dataset_id)
                             .join(Deletion, Deletion.version_id == DatasetVersion.id)
                             .where(Mirror.peer_id == peer_id, Mirror.origin_dataset_id == doc["dataset"]["id"],
                                    Deletion.state.not_in((REQUESTED, APPROVED)))))  # marked here, or further
    if again:
        why = DELETED_HERE if min(again) in here else DELETED_AT_ORIGIN
        reason = f"version {min(again)} of {doc['dataset']['id']} was {why}: it is not received again"
        _refuse(hub, peer_id, None, reason, ip, "manifest")
        raise Invalid(f"manifest refused: {reason}")


# -- peer: the mirror's origin, for pages and the visa check ------------------------------------------
def mirror_notice(session: Session, dataset_id: str) -> dict[str, str] | None:
    """For a mirrored dataset's page: which hub it mirrors and who decides access (and ``withdrawn``, the date,
    once the origin withdrew it: the page is then its tombstone)."""
    row = session.execute(select(Mirror, Peer).join(Peer, Peer.id == Mirror.peer_id)
                          .where(Mirror.dataset_id == dataset_id)).first()
    if row is None:
        return None
    mirror, peer = row
    # a link on a public page: only to an address at the peer (a row stored before the rule links its address)
    url = mirror.origin_url if mf.url_under(mirror.origin_url, peer.base_url) else peer.base_url
    notice = {"origin": peer.name, "origin_base": peer.base_url, "url": url}
    if mirror.withdrawn_at is not None:
        notice["withdrawn"] = mirror.withdrawn_at.date().isoformat()
    return notice


def peer_visa_issuers(hub: Hub) -> list[tuple[str, str, frozenset[str]]]:
    """`access.visas.TRUSTED_ISSUER_SOURCES` entry: each active peer's visa issuer, trusted for the
    datasets mirrored from it only."""
    with hub.sessions() as s:
        rows = s.execute(select(Peer.visa_issuer, Peer.jwks_url, Mirror.dataset_id)
                         .join(Mirror, Mirror.peer_id == Peer.id)
                         .where(Peer.active.is_(True), Peer.visa_issuer != "", Peer.jwks_url != "",
                                Mirror.withdrawn_at.is_(None))).all()
    found: dict[tuple[str, str], set[str]] = {}
    for iss, jku, ds in rows:
        found.setdefault((iss, jku), set()).add(ds)
    return [(iss, jku, frozenset(ds)) for (iss, jku), ds in found.items()]


def mirror_aliases(session: Session, dataset_id: str) -> list[tuple[str, str]]:
    """`access.visas.DATASET_ALIASES` entry: a mirror is named by its origin's dataset URL (and its versions'),
    in visas of the origin's issuer only; a mirror its origin withdrew is named by nothing (no visa opens it)."""
    row = session.execute(select(Mirror.origin_url, Peer.visa_issuer).join(Peer, Peer.id == Mirror.peer_id)
                          .where(Mirror.dataset_id == dataset_id, Peer.active.is_(True),
                                 Mirror.withdrawn_at.is_(None))).first()
    if row is None or not row[1]:
        return []
    url, iss = row
    numbers = session.scalars(select(DatasetVersion.number).where(DatasetVersion.dataset_id == dataset_id))
    return [(url, iss)] + [(f"{url}/versions/{n}", iss) for n in numbers]


def spool_dir(settings: Settings) -> Path:
    path = settings.var_dir / "tmp" / "federation"
    path.mkdir(parents=True, exist_ok=True)
    return path
