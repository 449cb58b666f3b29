"""Withdrawal propagation: the peers holding a mirror learn when the origin withdraws the dataset (its catalogue
entry unpublished, ``catalog.entries.withdraw``), deprecates one of its versions
(``archive.datasets.deprecate_version``) or deletes one at the end of its retention period
(``retention.deletion``).

Origin side (``discover``, ``send``; the ``federation.notices`` job runs both every minute): every peer a
dataset was pushed to (a finished ``SyncRun``) gets a ``Notice`` per withdrawal or deprecated version, and
every peer a push of it started to (a manifest may have reached it) one per deleted version, sent
as a signed request (RFC 9421-shaped, with a nonce, like every hub-to-hub call) and re-sent at each run until
the peer acknowledges it. Peer side (``receive``): the notice must come from the mirror's origin and be
addressed to this hub; a withdrawn mirror's catalogue entry is unpublished (its page becomes a tombstone
naming the origin) and the origin's visas no longer open it (``sync.mirror_aliases``), so downloads are refused;
a deprecated version is marked deprecated as at the origin; a deleted version is deleted here too — its copies'
headers destroyed and their bodies purged from this hub's storage (every S3 version), checked gone, and the
records kept of its pushes (manifests, received bodies) cleared of its files' headers and paths
(``sync.forget_version``) before the notice is acknowledged. Applying a notice twice changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .. import bounded_http
from ..archive.backend import storage_for
from ..archive.datasets import files_by_other_live_versions
from ..archive.models import DELETED, DatasetVersion
from ..audit import service as audit
from ..db import transaction, utcnow
from ..errors import Invalid, Unavailable
from ..hub import Hub
from . import service, sync
from .models import Mirror, MirrorFile, Notice, Peer, SyncRun

FORMAT = "strongroom.notice/1"
NOTICE_PATH = service.PEER_PATH + "/sync/notice"
KINDS = ("withdrawn", "deprecated", "deleted")


# -- origin ------------------------------------------------------------------------------------------
def discover(session: Session) -> int:
    """Queue a notice for every withdrawal and deprecated version of a dataset pushed to a peer, and every deleted
    version of one a push to a peer started of, that the peer has not been told of; returns how many were
    queued."""
    queued = 0
    mirrored = {(peer_id, dataset_id) for peer_id, dataset_id in session.execute(
        select(SyncRun.peer_id, SyncRun.dataset_id).where(SyncRun.state == "done").distinct())}
    # a deletion reaches every peer a push started to (a manifest, bodies) even if none was published there
    started = session.execute(select(SyncRun.peer_id, SyncRun.dataset_id).where(SyncRun.state != "queued")
                              .distinct()).all()
    for peer_id, dataset_id in started:
        wanted: list[tuple[str, int, str]] = []
        if (peer_id, dataset_id) in mirrored:
            wanted += _mirror_notices(session, peer_id, dataset_id)
        wanted += [(DELETED, n, "") for n in session.scalars(select(DatasetVersion.number).where(
            DatasetVersion.dataset_id == dataset_id, DatasetVersion.state == DELETED))]
        for kind, version, reason in wanted:
            if session.scalar(select(Notice.id).where(Notice.peer_id == peer_id, Notice.dataset_id == dataset_id,
                                                      Notice.kind == kind, Notice.version == version)) is None:
                session.add(Notice(peer_id=peer_id, dataset_id=dataset_id, kind=kind, version=version,
                                   reason=reason[:2000]))
                queued += 1
    session.flush()
    return queued


def _mirror_notices(session: Session, peer_id: Any, dataset_id: str) -> list[tuple[str, int, str]]:
    """The withdrawal and deprecations a peer holding a mirror of the dataset must know of (a dataset published
    again loses its withdrawal notice)."""
    from ..catalog.models import CatalogEntry

    wanted: list[tuple[str, int, str]] = []
    entry = session.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == dataset_id))
    if entry is not None and not entry.published and entry.withdrawn_at is not None:
        wanted.append(("withdrawn", 0, entry.withdrawn_reason or ""))
    elif entry is not None and entry.published:
        session.execute(delete(Notice).where(Notice.peer_id == peer_id, Notice.dataset_id == dataset_id,
                                             Notice.kind == "withdrawn"))
    return wanted + [("deprecated", n, "") for n in session.scalars(select(DatasetVersion.number).where(
        DatasetVersion.dataset_id == dataset_id, DatasetVersion.state == "deprecated"))]


def send(hub: Hub) -> dict[str, int]:
    """Send every unacknowledged notice to its (active, outbound) peer; a failure stays queued for the next run."""
    actor = audit.Actor.system("federation.notices")
    with transaction(hub.sessions) as session:
        pending = [(n.id, p.name, p.base_url, p.key_id, n.dataset_id, n.kind, n.version, n.reason)
                   for n, p in session.execute(select(Notice, Peer).join(Peer, Peer.id == Notice.peer_id).where(
                       Notice.acked_at.is_(None), Peer.active.is_(True), Peer.outbound.is_(True))
                       .order_by(Notice.id))]
    origin = service.base(hub.settings)
    sent = failed = 0
    for notice_id, name, url, key_id, dataset_id, kind, version, reason in pending:
        doc = {"format": FORMAT, "origin": origin, "origin_name": hub.settings.site_name,
               "recipient_key_id": key_id, "dataset": dataset_id, "kind": kind, "version": version,
               "reason": reason}
        bounds = service.answer_bounds(hub.settings, service.EXCHANGE_SECONDS, read_seconds=30)
        try:
            r = service.signed_post(hub.settings, url, NOTICE_PATH, json.dumps(doc).encode(), bounds)
            error = None if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as exc:  # also an answer refused (too large, too slow, compressed): sent again later
            error = bounded_http.describe(exc)
        with transaction(hub.sessions) as session:
            n = session.get(Notice, notice_id)
            if n is None:
                continue
            n.attempts += 1
            n.last_error = error
            if error is None:
                n.acked_at = utcnow()
                sent += 1
            else:
                failed += 1
            audit.record(session, actor, "federation.exchange.sent", outcome="ok" if error is None else "failed",
                         target=f"peer:{name}", details={"what": f"notice:{kind}", "dataset": dataset_id,
                                                         "version": version, **({"error": error} if error else {})})
    return {"sent": sent, "failed": failed}


# -- peer ---------------------------------------------------------------------------------------------
def _check(doc: Any, *, origin: str, recipient_key_id: str) -> dict[str, Any]:
    def need(cond: bool, why: str) -> None:
        if not cond:
            raise Invalid(f"notice refused: {why}")

    need(isinstance(doc, dict) and doc.get("format") == FORMAT, f"not a {FORMAT} notice")
    need(doc.get("origin") == origin, "the notice names another origin than the signing peer")
    need(doc.get("recipient_key_id") == recipient_key_id, "the notice is addressed to another hub")
    need(isinstance(doc.get("dataset"), str) and 0 < len(doc["dataset"]) <= 64, "bad dataset")
    need(doc.get("kind") in KINDS, "bad kind")
    need(isinstance(doc.get("version"), int) and not isinstance(doc["version"], bool) and doc["version"] >= 0,
         "bad version")
    need(isinstance(doc.get("reason", ""), str) and len(doc.get("reason", "")) <= 2000, "bad reason")
    return doc


def receive(hub: Hub, session: Session, peer: Peer, body: bytes, ip: str | None) -> dict[str, Any]:
    """Apply an origin's signed notice to the mirror of its dataset (idempotent)."""
    from ..catalog.models import CatalogEntry

    try:
        raw = json.loads(body)
    except ValueError:
        raise Invalid("notice refused: not JSON") from None
    doc = _check(raw, origin=peer.base_url, recipient_key_id=service.hub_key(hub.settings).key_id)
    mirror = session.scalar(select(Mirror).where(Mirror.peer_id == peer.id, Mirror.origin_dataset_id == doc["dataset"]))
    actor = audit.Actor(id=None, label=f"peer:{peer.name}", ip=ip)
    if mirror is None:
        if doc["kind"] == DELETED:  # a first push never published here: what it left goes all the same
            _forget_pushes(hub, session, peer, doc, actor, f"peer:{peer.name}")
        return {"status": "no mirror"}
    now, origin_name = utcnow(), str(doc.get("origin_name") or peer.name)[:200]
    if doc["kind"] == "withdrawn":
        if mirror.withdrawn_at is None:
            reason = " ".join(str(doc.get("reason", "")).split())
            mirror.withdrawn_at, mirror.withdrawn_reason = now, reason
            entry = session.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == mirror.dataset_id))
            if entry is not None:
                entry.published, entry.updated_at, entry.withdrawn_at = False, now, now
                entry.withdrawn_reason = f"Withdrawn at its origin, {origin_name}" + (f": {reason}" if reason else ".")
            audit.record(session, actor, "federation.mirror.withdrawn", target=f"dataset:{mirror.dataset_id}",
                         details={"origin": peer.base_url, "origin_dataset": doc["dataset"], "reason": reason[:500]})
    elif doc["kind"] == DELETED:
        _delete_version(hub, session, mirror, doc, actor, origin_name)
    else:
        version = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == mirror.dataset_id,
                                                              DatasetVersion.number == doc["version"]))
        if version is not None and version.state == "released":
            version.state = "deprecated"
            audit.record(session, actor, "federation.mirror.deprecated", target=f"dataset:{mirror.dataset_id}",
                         details={"origin": peer.base_url, "origin_dataset": doc["dataset"],
                                  "version": doc["version"]})
    return {"status": "applied", "dataset": mirror.dataset_id}


def _delete_version(hub: Hub, session: Session, mirror: Mirror, doc: dict[str, Any], actor: audit.Actor,
                    origin_name: str) -> None:
    """The origin deleted a version at the end of its retention period: so does this mirror. Each copy of a file
    in no other live version of the mirror has its header (the archive's copy of its data key) destroyed and its
    body purged from this hub's storage, checked gone — a copy left anywhere would make the origin's deletion
    certificate untrue — before the notice is acknowledged (a failure is an error answer: the origin sends the
    notice again). With no live version left the mirror is closed like a withdrawn one. Then the records of the
    pushes that brought the version stop holding its files' data keys and names (``sync.forget_version``),
    also for a version this hub only ever received part of, and when a notice applied before did not."""
    version = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == mirror.dataset_id,
                                                          DatasetVersion.number == doc["version"]))
    if version is None or version.state == DELETED:
        _forget_pushes(hub, session, session.get_one(Peer, mirror.peer_id), doc, actor, f"dataset:{mirror.dataset_id}")
        return
    deleted, purged = _delete_copies(hub, session, version, origin_name)
    version.state = DELETED
    closed = _close_if_empty(session, mirror, origin_name)
    forgotten = sync.forget_version(hub, session, mirror.peer_id, doc["dataset"], doc["version"], purged)
    audit.record(session, actor, "federation.mirror.deleted", target=f"dataset:{mirror.dataset_id}",
                 details={"origin": mirror.origin_url, "origin_dataset": doc["dataset"], "version": doc["version"],
                          "files_deleted": deleted, "closed": closed, **_counts(forgotten)})


def _delete_copies(hub: Hub, session: Session, version: DatasetVersion, origin_name: str) -> tuple[int, frozenset[str]]:
    """Destroy the headers and purge the bodies of the version's copies in no other live version; returns how
    many, and the storage keys purged."""
    from ..retention.deletion import purge_object, remaining

    storage = storage_for(hub)
    deleted, purged = 0, set()
    for f, elsewhere in files_by_other_live_versions(session, version):
        if elsewhere:
            continue
        if f.body_key:
            purge_object(storage, f.body_key)
            if remaining(storage, f.body_key):
                raise Unavailable("a mirrored body is still in storage after its purge: the notice is retried")
            purged.add(f.body_key)
        f.header, f.header_key, f.body_key = None, None, None
        f.state, f.failure = DELETED, f"deleted at its origin, {origin_name}, at the end of its retention period"
        f.path = f.id  # as the origin does: a path names pseudonyms and UIDs of the data (docs/retention.md)
        # no longer a copy of the origin's file: a later push of a version that still holds it sends it again
        session.execute(delete(MirrorFile).where(MirrorFile.file_id == f.id))
        deleted += 1
    return deleted, frozenset(purged)


def _close_if_empty(session: Session, mirror: Mirror, origin_name: str) -> bool:
    """With no live version left the mirror is closed, its page a tombstone; whether none is left."""
    from ..catalog.models import CatalogEntry

    live = session.scalar(select(DatasetVersion.id).where(DatasetVersion.dataset_id == mirror.dataset_id,
                                                          DatasetVersion.state.in_(("released", "deprecated")))
                          .limit(1))
    now = utcnow()
    if live is None and mirror.withdrawn_at is None:
        mirror.withdrawn_at = now
        mirror.withdrawn_reason = "deleted at the end of its retention period"
        entry = session.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == mirror.dataset_id))
        if entry is not None:
            entry.published, entry.updated_at, entry.withdrawn_at = False, now, now
            entry.withdrawn_reason = f"Deleted at its origin, {origin_name}, at the end of its retention period."
    return live is None


def _forget_pushes(hub: Hub, session: Session, peer: Peer, doc: dict[str, Any], actor: audit.Actor,
                   target: str) -> None:
    """A version with no copy in the mirror (deleted here before, or only ever received in part): only the
    records of its pushes are left to forget; audited when there was any."""
    forgotten = sync.forget_version(hub, session, peer.id, doc["dataset"], doc["version"])
    if forgotten:
        audit.record(session, actor, "federation.mirror.deleted", target=target,
                     details={"origin": peer.base_url, "origin_dataset": doc["dataset"], "version": doc["version"],
                              "files_deleted": 0, **_counts(forgotten)})


def _counts(forgotten: sync.Forgotten) -> dict[str, int]:
    return {"push_entries_forgotten": forgotten.entries, "received_bodies_purged": forgotten.bodies,
            "pushes_refused": forgotten.refused}
