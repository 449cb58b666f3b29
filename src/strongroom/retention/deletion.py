"""Carrying out an approved deletion (the ``retention.delete`` job), crash-safe and resumable.

The deletion's ``state`` says which step is done; each step is idempotent and runs from the state reached:

1. **mark** (one transaction): the files that go are those of the version in no other live version; the
   manifest (ids, the SHA-256 of each path, checksums, storage keys) is captured, the version becomes
   ``deleted``, its files unreadable and renamed to their accession (a path names pseudonyms and UIDs), the
   project's quota freed, the version's entitlements end (the dataset's too when no released version is left),
   and the catalogue entry is withdrawn through the catalogue (tombstone, DOIs hidden) when it was the last
   released version (its sample images deleted). What derived from the files goes too (``derived``): their
   airlock outbox copies stop being downloadable, their DICOMweb index rows are deleted and with them the
   key-store entries nothing left refers to; other records stop repeating their names (``_forget_names``), and
   the AI-validation predictions made on them their paths, UIDs and dates (``_forget_predictions``). A version of
   a read-only mirror (a dataset a peer hub pushed here) takes the records kept of the pushes that brought it along
   (``_forget_mirrored``: the manifests' crypt4gh headers and paths of the deleted files, their received bodies,
   a push still under way), as the origin's ``deleted`` notice does (``federation.sync.forget_version``).
2. **shred**: the crypt4gh headers are destroyed. A header holds the only copy of a file's data key (sealed
   to the hub's key), so from here no copy of a body this hub made — backup, replica, old S3 version — can be
   decrypted (crypto-shredding); so are the other copies of those keys (outbox headers, SFTP upload headers).
   A peer the dataset was pushed to holds a copy sealed to its own key: it is told by a signed ``deleted``
   notice (``federation.notices``) and deletes it the same way; the certificate lists those peers
   (``mirrored_to``).
3. **purge**: the bodies and their outbox copies are deleted from storage; on S3 every version and delete marker
   of each key, on a local disk unlink + fsync of the directory. Deleting what is gone already is no error.
4. **verify**: every key is looked up again (on S3: its version list must be empty); an outbox copy or index row
   made after the mark sends the run back to shred and purge it.
5. **certify**: a certificate (what, checksums, when, who requested and approved, the audit sequence numbers
   of every step) is signed with the hub's ES256 key (the visa key, published at /.well-known/jwks.json) and
   kept.

A run that crashes anywhere is resumed by the job's next attempt (or ``strongroom retention resume``).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import Select, delete, or_, select, update
from sqlalchemy.orm import Session

from ..access import visas
from ..access.models import Entitlement
from ..airlock.models import AirlockFile, AirlockRequest, OutboxItem
from ..archive.backend import storage_for
from ..archive.datasets import files_by_other_live_versions
from ..archive.models import DELETED, READY, ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..archive.storage.base import Storage
from ..archive.storage.s3 import S3Storage
from ..audit import service as audit
from ..audit.service import Actor
from ..catalog import entries as catalog
from ..catalog import images as catalog_images
from ..config import Settings
from ..db import rowcount, transaction, utcnow
from ..hub import Hub
from ..identity.models import User
from ..imaging import keystore
from ..imaging.models import ImportBatch, ImportedInstance
from ..projects import quota
from ..projects.models import Project
from ..sftp.models import SftpUpload
from ..vai.models import ID_COLUMNS, Evaluation, Prediction
from .models import APPROVED, CERTIFIED, MARKED, PURGED, REQUESTED, SHREDDED, VERIFIED, Deletion
from .rules import canonical

ACTOR = Actor.system("retention")
CERT_TYPE = "strongroom.deletion-certificate"
CERT_FORMAT = 2  # 2: files named by the SHA-256 of their path (``path_sha256``); 1 repeated the path
JWS_TYP = "strongroom-deletion+jws"


class Remaining(Exception):
    """Objects of a deleted version are still in storage."""


def run(hub: Hub, deletion_id: uuid.UUID) -> str:
    """Carry the deletion on from wherever it stands to its certificate; returns the final state."""
    steps: dict[str, Callable[[Hub, uuid.UUID], None]] = {
        APPROVED: mark, MARKED: shred, SHREDDED: purge, PURGED: verify, VERIFIED: certify}
    while True:
        with hub.sessions() as s:
            d = s.get(Deletion, deletion_id)
            state = d.state if d is not None else None
        step = steps.get(state or "")
        if step is None:
            return state or "missing"
        step(hub, deletion_id)


def give_up(session: Session, payload: dict[str, Any], error: str) -> None:
    """`retention.delete`'s ``on_given_up``: its job failed for good (its last attempt raised, or the worker died,
    hung or ran past its time limit). A deletion is never abandoned half-way, so it keeps the state it reached
    (which is the truth: what is marked stays unreadable) and says why it stopped in ``failure``, audited, for
    an operator to fix the cause and carry it on (``strongroom retention resume``; a step that succeeds clears
    it). Idempotent: a certified deletion, or one already saying it gave up, is left."""
    d = session.scalar(select(Deletion).where(Deletion.id == uuid.UUID(payload["deletion"])).with_for_update())
    if d is None or d.state in (REQUESTED, CERTIFIED) or (d.failure or "").startswith("gave up: "):
        return
    d.failure = f"gave up: {error}"[:4000]
    ds = session.get_one(Dataset, d.dataset_id)
    audit.record(session, ACTOR, "retention.deletion.stalled", outcome="failed", project_id=ds.project_id,
                 target=f"dataset:{ds.id}",
                 details={"version": d.number, "deletion": str(d.id), "state": d.state, "failure": d.failure[:500]})


def _advance(session: Session, d: Deletion, state: str, action: str, details: dict[str, Any]) -> None:
    ds = session.get_one(Dataset, d.dataset_id)
    event = audit.record(session, ACTOR, f"retention.deletion.{action}", project_id=ds.project_id,
                         target=f"dataset:{ds.id}", details={"version": d.number, "deletion": str(d.id), **details})
    d.audit_seqs = {**d.audit_seqs, action: event.seq}
    d.state, d.failure = state, None


def _claim(session: Session, deletion_id: uuid.UUID, state: str) -> Deletion | None:
    """The deletion locked for this step, or None when another run already took it further."""
    d = session.scalar(select(Deletion).where(Deletion.id == deletion_id).with_for_update())
    return d if d is not None and d.state == state else None


def mark(hub: Hub, deletion_id: uuid.UUID) -> None:
    with transaction(hub.sessions) as s:
        d = _claim(s, deletion_id, APPROVED)
        if d is None:
            return
        v = s.get_one(DatasetVersion, d.version_id)
        ds = s.get_one(Dataset, d.dataset_id)
        now = utcnow()
        manifest, kept = [], []
        for f, elsewhere in files_by_other_live_versions(s, v):
            if elsewhere:
                kept.append({"file": f.id, "path_sha256": path_digest(f.path), "in_versions": elsewhere})
                continue
            manifest.append({"file": f.id, "path_sha256": path_digest(f.path), "plaintext_size": f.plaintext_size,
                             "plaintext_sha256": f.plaintext_sha256, "plaintext_md5": f.plaintext_md5,
                             "body_size": f.body_size, "body_sha256": f.body_sha256, "object": f.body_key})
            if f.state == READY and f.body_size:
                quota.free(s, f.project_id, f.body_size)
            # the path went into the manifest as its digest: an imported instance's path is its patient's
            # pseudonym and its study, series and instance UIDs, which nothing may repeat once the data is gone
            f.state, f.failure, f.path = DELETED, f"deleted by retention (deletion {d.id})", f.id
        v.state = DELETED
        live = s.scalars(select(DatasetVersion.number).where(
            DatasetVersion.dataset_id == ds.id, DatasetVersion.state.in_(("released", "deprecated")))).all()
        ended = 0
        for e in s.scalars(select(Entitlement).where(Entitlement.dataset_id == ds.id,
                                                     Entitlement.revoked_at.is_(None))):
            if e.version == v.number or (e.version is None and not live):
                e.revoked_at = now
                ended += 1
        withdrawn, images = False, []
        entry = catalog.entry_for(s, ds.id)
        if entry is not None and not live:
            why = f"deleted at the end of its retention period (version {v.number})"
            withdrawn = catalog.withdraw(s, ACTOR, ds, entry, why)
            # sample images are pixels of the data: a republished entry must not bring them back
            images = catalog_images.remove_all(s, ACTOR, ds, entry, why)
        s.flush()  # the files' DELETED state, which _gone() selects on
        mirrored = _forget_mirrored(hub, s, d, frozenset(str(m["object"]) for m in manifest if m["object"]), now)
        outbox = _remove_outbox(s, v.id, now)
        _forget_names(s, v.id)
        forgotten = _forget_instances(s, v.id)
        predictions = _forget_predictions(s, v.id)
        if entry is not None:  # its counts (subjects, studies, …) no longer count what went
            for provider in catalog.INDEX_PROVIDERS:
                provider(s, entry)
        d.manifest, d.kept = manifest, kept
        d.derived = {"outbox": outbox, "dicomweb_index_rows": forgotten.index_rows, "catalog_images": images,
                     "keystore_entries": forgotten.keystore_entries, "vai_predictions": predictions,
                     **({MIRROR_RECORDS: mirrored} if mirrored is not None else {})}
        _advance(s, d, MARKED, "marked", {"files": len(manifest), "kept": len(kept), "entitlements_ended": ended,
                                          "catalogue_withdrawn": withdrawn, "outbox_removed": len(outbox),
                                          "dicomweb_index_rows": forgotten.index_rows, "catalogue_images": len(images),
                                          "keystore_entries": forgotten.keystore_entries,
                                          "import_batches_cleared": forgotten.batches_cleared,
                                          "vai_predictions_cleared": predictions,
                                          **({MIRROR_RECORDS: mirrored} if mirrored is not None else {})})


# a mirror's version (``federation/sync.py``): what its deletion did to the records kept of the pushes that brought it
MIRROR_RECORDS = "federation_push_records"
MIRROR_COUNTS = ("mirror_files_dropped", "push_entries_forgotten", "received_bodies_purged", "pushes_refused")


def _forget_mirrored(hub: Hub, session: Session, d: Deletion, objects: frozenset[str],
                     now: dt.datetime) -> dict[str, Any] | None:
    """When the dataset is a read-only mirror of a peer's (``federation.sync``): the records this hub kept of the
    pushes that brought the version — the manifests, which hold each file's crypt4gh header (a copy of its data
    key sealed to this hub) and its path, and the bodies received — stop holding the deleted files' keys, names
    and bodies (``sync.forget_version``, as when the origin's ``deleted`` notice deletes a version; the bodies of
    the mirror's copies, at ``objects``, are this deletion's to purge), and a push still receiving the version is
    refused; the deleted copies are no longer the origin's files here (a later push of a version holding one
    sends it again), and a mirror with no live version left is closed. Idempotent (``verify`` runs it again, for a
    push recorded meanwhile); None for a dataset of this hub's own."""
    from ..federation import sync
    from ..federation.models import Mirror, MirrorFile

    mirror = session.scalar(select(Mirror).where(Mirror.dataset_id == d.dataset_id))
    if mirror is None:
        return None
    dropped = rowcount(session.execute(
        delete(MirrorFile).where(MirrorFile.peer_id == mirror.peer_id, MirrorFile.file_id.in_(_gone(d.version_id)))
        .execution_options(synchronize_session=False)))
    forgotten = sync.forget_version(hub, session, mirror.peer_id, mirror.origin_dataset_id, d.number, objects,
                                    why=f"{sync.DELETED_HERE} (deletion {d.id})")
    live = session.scalar(select(DatasetVersion.id).where(DatasetVersion.dataset_id == d.dataset_id,
                                                          DatasetVersion.state.in_(("released", "deprecated")))
                          .limit(1))
    if live is None and mirror.withdrawn_at is None:  # closed, as a mirror its origin deleted the last version of
        mirror.withdrawn_at, mirror.withdrawn_reason = now, sync.DELETED_HERE
    return {"origin_dataset": mirror.origin_dataset_id, "mirror_files_dropped": dropped,
            "push_entries_forgotten": forgotten.entries, "received_bodies_purged": forgotten.bodies,
            "pushes_refused": forgotten.refused}


def path_digest(path: str) -> str:
    """How the manifest and the certificate name a file: the SHA-256 of its path (UTF-8). Whoever holds the path
    can check it was deleted; the certificate does not repeat it (an imported instance's path is its patient's
    pseudonym and its study, series and instance UIDs)."""
    return hashlib.sha256(path.encode()).hexdigest()


def _gone(version_id: int) -> Select[str]:
    """The version's deleted files (the manifest), as a subquery: a version may hold millions of files."""
    return (select(DatasetFile.file_id).join(ArchiveFile, ArchiveFile.id == DatasetFile.file_id)
            .where(DatasetFile.version_id == version_id, ArchiveFile.state == DELETED))


def _remove_outbox(session: Session, version_id: int, now: dt.datetime) -> list[dict[str, Any]]:
    """The airlock outbox copies of the deleted files (a body copy + a header sealed to the recipient) stop
    being downloadable now, as the sweep's removal does; their headers go with the shred, their objects with the
    purge. Returns those not recorded yet (a late one: a transfer that finished after the mark)."""
    out = []
    for item in session.scalars(select(OutboxItem).where(
            OutboxItem.source_file_id.in_(_gone(version_id)),
            or_(OutboxItem.removed_at.is_(None), OutboxItem.body_key.is_not(None), OutboxItem.header != b""))
            .order_by(OutboxItem.created_at)):
        item.removed_at, item.path = item.removed_at or now, item.source_file_id
        out.append({"item": str(item.id), "request": item.request_id, "file": item.source_file_id,
                    "object": item.body_key})
    return out


def _forget_names(session: Session, version_id: int) -> None:
    """The deleted files' names where other records repeat them, replaced by the file's accession as the file's own
    was: the SFTP upload session, the airlock's records of an export (its file and its receipt; the outbox copies
    in ``_remove_outbox``). What they record otherwise (who, when, sizes, checksums) stays."""
    gone = _gone(version_id)
    session.execute(update(SftpUpload).where(SftpUpload.file_id.in_(gone)).values(path=SftpUpload.file_id)
                    .execution_options(synchronize_session=False))
    exported = list(session.scalars(select(AirlockFile).where(AirlockFile.file_id.in_(gone))))
    for af in exported:
        af.path = af.file_id
    ids = {af.file_id for af in exported}
    for r in session.scalars(select(AirlockRequest).where(AirlockRequest.id.in_({af.request_id for af in exported}),
                                                          AirlockRequest.receipt.is_not(None))):
        receipt = r.receipt or {}
        r.receipt = {**receipt, "files": [{**e, "path": e["file_id"]} if e.get("file_id") in ids else e
                                          for e in receipt.get("files", [])]}


@dataclass(frozen=True)
class Forgotten:
    """What ``_forget_instances`` deleted or cleared."""

    index_rows: int = 0
    keystore_entries: int = 0
    batches_cleared: int = 0


def _forget_instances(session: Session, version_id: int) -> Forgotten:
    """Delete the deleted files' DICOMweb index rows (pseudonyms, dates, UIDs: metadata of the data), then the
    key-store entries (pseudonym → original) nothing left in their project refers to — a patient's other, retained
    studies keep theirs —, and clear what an import batch recorded beyond its counts once none of its instances is
    left: its reasons (they may name a refused file, or a verification message) and a bulk import's folder."""
    rows = session.execute(select(ImportedInstance.project_id, ImportedInstance.batch_id,
                                  ImportedInstance.patient_pseudonym, ImportedInstance.study_uid,
                                  ImportedInstance.sop_instance_uid)
                           .where(ImportedInstance.file_id.in_(_gone(version_id)))).all()
    if not rows:
        return Forgotten()
    index_rows = rowcount(session.execute(
        delete(ImportedInstance).where(ImportedInstance.file_id.in_(_gone(version_id)))
        .execution_options(synchronize_session=False)))
    candidates: dict[uuid.UUID, dict[str, set[str]]] = {}
    for project_id, _batch, patient, study, sop in rows:
        of_project = candidates.setdefault(project_id, {"PatientID": set(), "StudyInstanceUID": set(),
                                                        "SOPInstanceUID": set()})
        of_project["PatientID"].add(patient)
        of_project["StudyInstanceUID"].add(study)
        of_project["SOPInstanceUID"].add(sop)
    entries = sum(keystore.drop_unreferenced(session, project_id, pseudonyms)
                  for project_id, pseudonyms in candidates.items())
    cleared = 0
    for batch in session.scalars(select(ImportBatch).where(
            ImportBatch.id.in_({r.batch_id for r in rows}),
            ~select(ImportedInstance.id).where(ImportedInstance.batch_id == ImportBatch.id).exists())):
        batch.reasons = {}
        if batch.source == "bulk":
            batch.origin = ""
        cleared += 1
    return Forgotten(index_rows, entries, cleared)


# what a forgotten prediction's read error says instead (the error may have quoted the file's path)
FORGOTTEN_ERROR = "the instance was deleted at the end of its retention period"


def _forget_predictions(session: Session, version_id: int) -> int:
    """What AI-validation evaluations recorded of the deleted files (``vai_predictions``, by the file's id) goes as
    the file's own path did: a prediction's path becomes the file's accession, its SOP UID and study date are
    cleared, its study UID becomes the accession of the study's first deleted file (unless the evaluation's other
    instances are of that study: then it still exists) and a read error a neutral text. The score and reference
    label stay (released reports are aggregates of them), and the evaluation's labels table and the clinic's
    failure lists name those cases by the same new names, so its cases, matched again for a later release's
    disclosure control, are the same. Idempotent; returns the number of predictions cleared."""
    forgotten = list(session.scalars(select(Prediction).where(
        Prediction.item.in_(_gone(version_id)),
        or_(Prediction.path != Prediction.item, Prediction.sop_uid != "", Prediction.study_date != "",
            Prediction.error.not_in(("", FORGOTTEN_ERROR))))))
    by_evaluation: dict[uuid.UUID, list[Prediction]] = {}
    for p in forgotten:
        by_evaluation.setdefault(p.evaluation_id, []).append(p)
    for evaluation_id, mine in by_evaluation.items():
        ev = session.get_one(Evaluation, evaluation_id)
        items = {p.item for p in mine}
        kept = [p for p in session.scalars(select(Prediction).where(Prediction.evaluation_id == evaluation_id))
                if p.item not in items]
        kept_names = {name for p in kept for name in _case_names(p)}
        kept_studies = {p.study_uid for p in kept}
        renamed: dict[str, str] = {}
        for p in sorted(mine, key=lambda p: p.item):
            for name in sorted(_case_names(p) - kept_names):
                renamed.setdefault(name, p.item)
            if p.study_uid and p.study_uid not in kept_studies:
                renamed.setdefault(p.study_uid, p.item)
        for p in mine:
            p.path, p.sop_uid, p.study_date = p.item, "", ""
            p.study_uid = renamed.get(p.study_uid, p.study_uid)
            p.error = FORGOTTEN_ERROR if p.error else ""
        ev.labels_csv = renamed_labels(ev.labels_csv, renamed)
        if ev.result is not None:
            ev.result = _renamed_result(ev.result, renamed, items)
    return len(forgotten)


def _case_names(p: Prediction) -> set[str]:
    """Every name a labels table may give a prediction's instance (as ``vai.service._match`` matches them)."""
    return {p.item, p.sop_uid, p.path, p.path.rsplit("/", 1)[-1]} - {""}


def renamed_labels(text: str, renamed: dict[str, str]) -> str:
    """A labels table (CSV) with each case id in ``renamed`` replaced; a row whose new id an earlier row has
    already (the table named one instance twice, by two names) is dropped, as the table may label a case once."""
    rows = list(csv.reader(io.StringIO(text)))
    header = [h.strip() for h in rows[0]] if rows else []
    column = next((header.index(c) for c in ID_COLUMNS if c in header), None)
    if column is None or not renamed:
        return text
    out, seen, changed = [rows[0]], set(), False
    for row in rows[1:]:
        if column < len(row):
            case = row[column].strip()
            new = renamed.get(case, case)
            if new in seen:
                changed = True
                continue
            seen.add(new)
            if new != case:
                row, changed = [*row[:column], new, *row[column + 1:]], True
        out.append(row)
    if not changed:
        return text
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(out)
    return buf.getvalue()


def _renamed_result(result: dict[str, Any], renamed: dict[str, str], items: set[str]) -> dict[str, Any]:
    """An evaluation's result (the clinic's) with the case lists naming the deleted instances as renamed: the failure
    analysis, the labelled cases without a prediction and the unreadable instances. The figures stay."""
    out = {**result}
    if "missing_ids" in out:
        out["missing_ids"] = [renamed.get(case, case) for case in out["missing_ids"]]
    if "unreadable_items" in out:
        out["unreadable_items"] = [{**u, "path": u["item"], "error": FORGOTTEN_ERROR} if u.get("item") in items else u
                                   for u in out["unreadable_items"]]
    if isinstance(out.get("failures"), dict):
        failures = out["failures"]
        out["failures"] = {**failures, **{kind: [{**c, "id": renamed.get(c["id"], c["id"])} for c in failures[kind]]
                                          for kind in ("false_negatives", "false_positives") if kind in failures}}
    return out


def _derived(d: Deletion) -> dict[str, Any]:
    return d.derived or {"outbox": [], "dicomweb_index_rows": 0, "catalog_images": []}


def _keys(d: Deletion) -> list[str]:
    """Every object the deletion removes: the files' bodies and their outbox copies."""
    return ([item["object"] for item in d.manifest if item.get("object")]
            + [o["object"] for o in _derived(d)["outbox"] if o.get("object")])


def shred(hub: Hub, deletion_id: uuid.UUID) -> None:
    with transaction(hub.sessions) as s:
        d = _claim(s, deletion_id, MARKED)
        if d is None:
            return
        for item in d.manifest:
            f = s.get_one(ArchiveFile, item["file"])
            f.header, f.header_key = None, None
        # other copies of the data keys: outbox headers (sealed to a recipient) and an SFTP upload's header
        gone = _gone(d.version_id)
        outbox = rowcount(s.execute(
            update(OutboxItem).where(OutboxItem.source_file_id.in_(gone), OutboxItem.header != b"")
            .values(header=b"").execution_options(synchronize_session=False)))
        uploads = rowcount(s.execute(
            update(SftpUpload).where(SftpUpload.file_id.in_(gone), SftpUpload.header != b"")
            .values(header=b"").execution_options(synchronize_session=False)))
        _advance(s, d, SHREDDED, "shredded", {"headers_destroyed": len(d.manifest), "outbox_headers_destroyed": outbox,
                                              "upload_headers_destroyed": uploads})


def purge_object(storage: Storage, key: str) -> int:
    """Delete an object for good: every S3 version and delete marker; on disk unlink + fsync of the dir."""
    if isinstance(storage, S3Storage):
        return storage.delete_every_version(key)
    existed = storage.exists(key)
    storage.delete(key)
    return int(existed)


def remaining(storage: Storage, key: str) -> list[str]:
    """What of ``key`` is still stored: S3 version ids (delete markers too), or ["current"] on disk."""
    if isinstance(storage, S3Storage):
        return storage.object_versions(key)
    return ["current"] if storage.exists(key) else []


def purge(hub: Hub, deletion_id: uuid.UUID) -> None:
    with hub.sessions() as s:
        keys = _keys(s.get_one(Deletion, deletion_id))
    storage = storage_for(hub)
    versions = sum(purge_object(storage, key) for key in keys)  # outside any transaction: storage is slow
    with transaction(hub.sessions) as s:
        claimed = _claim(s, deletion_id, SHREDDED)
        if claimed is None:
            return
        for item in claimed.manifest:
            s.get_one(ArchiveFile, item["file"]).body_key = None
        s.execute(update(OutboxItem).where(OutboxItem.source_file_id.in_(_gone(claimed.version_id)),
                                           OutboxItem.body_key.in_(keys)).values(body_key=None)
                  .execution_options(synchronize_session=False))
        _advance(s, claimed, PURGED, "purged", {"objects": len(keys), "object_versions_deleted": versions})


def verify(hub: Hub, deletion_id: uuid.UUID) -> None:
    with hub.sessions() as s:
        keys = _keys(s.get_one(Deletion, deletion_id))
    storage = storage_for(hub)
    left = {key: found for key in keys if (found := remaining(storage, key))}
    with transaction(hub.sessions) as s:
        d = _claim(s, deletion_id, PURGED)
        if d is None:
            return
        # an outbox copy or an index row made after the mark (a transfer or import that was under way): taken
        # now, and the run goes back to shred and purge again with it (it is marked removed: no loop)
        late = _remove_outbox(s, d.version_id, utcnow())
        late_rows = _forget_instances(s, d.version_id)
        # predictions an evaluation running at the mark made since: cleared now (no copy of the data, so nothing to
        # shred or purge again)
        late_predictions = _forget_predictions(s, d.version_id)
        # a mirror's push recorded after the mark (its manifest checked before, stored after): forgotten now too
        late_mirrored = _forget_mirrored(hub, s, d, frozenset(keys), utcnow())
        if late_mirrored is not None and any(late_mirrored[k] for k in MIRROR_COUNTS):
            derived = _derived(d)
            before = derived.get(MIRROR_RECORDS) or {}
            d.derived = {**derived, MIRROR_RECORDS: {
                **late_mirrored, **{k: before.get(k, 0) + late_mirrored[k] for k in MIRROR_COUNTS}}}
        if late_predictions:
            derived = _derived(d)
            d.derived = {**derived, "vai_predictions": derived.get("vai_predictions", 0) + late_predictions}
        if late or late_rows.index_rows:
            derived = _derived(d)
            d.derived = {**derived, "outbox": derived["outbox"] + late,
                         "dicomweb_index_rows": derived["dicomweb_index_rows"] + late_rows.index_rows,
                         "keystore_entries": derived.get("keystore_entries", 0) + late_rows.keystore_entries}
            d.state, d.failure = MARKED, (f"{len(late)} outbox copies, {late_rows.index_rows} index rows made after "
                                          "the mark")
            return
        if left:  # back one step: the next run purges again
            d.state, d.failure = SHREDDED, f"{len(left)} object(s) still in storage: purged again on the next run"
        else:
            _advance(s, d, VERIFIED, "verified", {"objects_checked": len(keys),
                                                  "every_version": versioned(storage)})
    if left:
        raise Remaining(f"still in storage after the purge: {sorted(left)}")


def versioned(storage: Storage) -> bool:
    return isinstance(storage, S3Storage)


def _who(session: Session, user_id: uuid.UUID | None) -> dict[str, Any]:
    user = session.get(User, user_id) if user_id else None
    return {"id": str(user_id) if user_id else None, "name": user.label if user else None}


def certificate_document(session: Session, settings: Settings, d: Deletion, issued: dt.datetime) -> dict[str, Any]:
    ds = session.get_one(Dataset, d.dataset_id)
    project = session.get_one(Project, ds.project_id)
    cfg = settings.archive.storage
    named_by_path = any("path" in f for f in [*d.manifest, *d.kept])  # marked before format 2
    return {
        "type": CERT_TYPE, "format": 1 if named_by_path else CERT_FORMAT, "hub": settings.base_url.rstrip("/"),
        "deletion": str(d.id),
        "dataset": {"id": ds.id, "title": ds.title, "version": d.number, "project": project.slug},
        "files": d.manifest, "kept_in_other_versions": d.kept,
        # what derived from those files went with them: the recipients' outbox copies (objects purged as above,
        # headers destroyed), the DICOMweb index rows and the key-store entries only they used, the catalogue's
        # sample images (when no version is left); the AI-validation predictions made on them that were cleared
        "derived": _derived(d),
        "storage": {"kind": cfg.kind, "bucket": cfg.bucket if cfg.kind == "s3" else None,
                    "every_version_deleted": cfg.kind == "s3"},
        "headers_destroyed": True,
        # Copies this hub pushed to peers are not covered by the steps above: each peer is told by a signed
        # notice (``federation.notices``) and deletes its copy the same way before acknowledging it.
        "mirrored_to": _mirrors(session, ds.id, d.number),
        "requested": {**_who(session, d.requested_by), "at": d.created_at.isoformat(), "reason": d.reason},
        "approved": {**_who(session, d.approved_by), "at": d.approved_at.isoformat() if d.approved_at else None},
        "audit_seqs": d.audit_seqs, "issued_at": issued.isoformat(),
    }


def _mirrors(session: Session, dataset_id: str, version: int) -> list[dict[str, Any]]:
    """The peers holding a copy of the dataset (pushed to them), each told to delete this version's copy, and
    when each confirmed it (None: not yet when the certificate was signed; the audit shows it later)."""
    from ..federation.models import Notice, Peer, SyncRun

    out = []
    for peer in session.scalars(select(Peer).where(Peer.id.in_(select(SyncRun.peer_id).where(
            SyncRun.dataset_id == dataset_id, SyncRun.state == "done"))).order_by(Peer.name)):
        acked = session.scalar(select(Notice.acked_at).where(Notice.peer_id == peer.id, Notice.dataset_id == dataset_id,
                                                             Notice.kind == DELETED, Notice.version == version))
        out.append({"peer": peer.name, "hub": peer.base_url,
                    "deletion_confirmed_at": acked.isoformat() if acked else None})
    return out


def sign(settings: Settings, document: dict[str, Any]) -> str:
    """The certificate as kept and downloaded: the document and a compact JWS (ES256) over its canonical bytes."""
    key = visas.signing_key(settings)
    header = {"alg": "ES256", "typ": JWS_TYP, "kid": visas.key_id(key), "jku": visas.jwks_url(settings)}
    token = jws.serialize_compact(header, canonical(document), key, algorithms=["ES256"])
    return json.dumps({"certificate": document, "signature": token}, indent=2, sort_keys=True)


def check_signature(text: str, key: ECKey | KeySet) -> dict[str, Any]:
    """The certificate document if its signature verifies with ``key`` and covers exactly this document;
    raises ValueError otherwise."""
    try:
        outer = json.loads(text)
        document, token = outer["certificate"], outer["signature"]
        assert isinstance(document, dict) and isinstance(token, str)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise ValueError("not a deletion certificate (JSON with 'certificate' and 'signature')") from e
    try:
        signed = jws.deserialize_compact(token, key, algorithms=["ES256"])
    except JoseError as e:
        raise ValueError(f"the signature does not verify with the hub's key: {e.error}") from e
    if signed.payload != canonical(document) or document.get("type") != CERT_TYPE:
        raise ValueError("the certificate was changed after it was signed")
    return document


def certify(hub: Hub, deletion_id: uuid.UUID) -> None:
    with transaction(hub.sessions) as s:
        d = _claim(s, deletion_id, VERIFIED)
        if d is None:
            return
        now = utcnow()
        text = sign(hub.settings, certificate_document(s, hub.settings, d, now))
        d.certificate, d.finished_at = text, now
        _advance(s, d, CERTIFIED, "certified", {"certificate_sha256": hashlib.sha256(text.encode()).hexdigest()})
