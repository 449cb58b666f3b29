"""After a retention deletion at the origin reaches a peer (its signed ``deleted`` notice), nothing the peer keeps
holds the deleted files' data keys or names: two real hubs on loopback (tests/test_federation_sync.py's pair),
the origin deleting through its retention flow, the notices job telling the peer. Every column of every table at
the peer is searched for the files' crypt4gh headers (as stored and as pushed), their data keys, their paths and
the pseudonyms and UIDs in them: the mirror's copies, the manifests of the pushes that brought them (finished or
not), a push still under way, its received bodies. Only the audit log may name them (``AUDITED``). Applying a
notice again changes nothing; a push of a deleted version is refused; a notice applied half-way (it failed) is
carried out when sent again; a first push never published is forgotten too."""

from __future__ import annotations

import base64
import json
import os
import uuid

import pytest
from sqlalchemy import func, select

from strongroom import models
from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import hub_keys
from strongroom.archive.models import ArchiveFile, DatasetVersion
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.db import Base, transaction
from strongroom.errors import Invalid
from strongroom.federation import manifest, notices, service, signing, sync
from strongroom.federation.models import Incoming, IncomingFile, Mirror, MirrorFile
from strongroom.jobs.runner import Runner
from strongroom.retention import deletion
from strongroom.retention.models import APPROVED, Deletion
from support.seaweed import seaweedfs  # noqa: F401 - session fixture
from test_federation_sync import NOW, _events, _person, _push, _run_notices_job, database_url, hubs, settings  # noqa: F401 - fixtures
from test_retention_traces import _traces

pytestmark = pytest.mark.slow
# Audit events of the peer that may name a deleted file's path, UID or header: none (its audit names files by
# their ids, pushes by theirs). Append-only, never rewritten: a name found there would be listed here.
AUDITED: set[str] = set()


class Interrupted(Exception):
    """The pushing worker stopped (as if killed) after the peer acknowledged every body, before publishing."""


# -- the data: versions whose files are named by a pseudonym and UIDs ---------------------------------------
def _named_path() -> tuple[str, list[str]]:
    """A path as an imaging import names a file: the patient's pseudonym, study and instance UIDs."""
    pseudonym, study, sop = uuid.uuid4().hex[:20].upper(), f"2.25.{uuid.uuid4().int}", f"2.25.{uuid.uuid4().int}"
    path = f"{pseudonym}/{study}/{sop}.dcm"
    return path, [path, pseudonym, study, sop]


def _release(h, number: int, path: str) -> str:
    """A new file uploaded at the origin and released as version ``number`` (with every earlier version's files)."""
    data = os.urandom(30_000)
    public = c4gh.parse_public_key(h.alice.get("/api/v1/archive/public-key").text)
    blob = b"".join(c4gh.encrypt_stream([data], public))
    up = h.alice.post("/api/v1/projects/lung/uploads", json={"path": path, "size": len(blob)}).json()
    assert h.alice.put(f"/api/v1/uploads/{up['id']}/parts/1", content=blob).status_code == 200
    assert h.alice.post(f"/api/v1/uploads/{up['id']}/complete").status_code == 200
    Runner(h.a, lease_seconds=10, name="test").run_until_idle()
    assert h.alice.post(f"/api/v1/datasets/{h.dataset}/draft", json={"add": [up["id"]]}).status_code == 200
    assert h.alice.post(f"/api/v1/datasets/{h.dataset}/versions/{number}/release").status_code == 200
    h.files[up["id"]] = data
    return up["id"]


def _push_until_published(h, version: int | None) -> uuid.UUID:
    """A push whose worker stops after the last body is acknowledged: the peer holds its manifest and bodies,
    nothing of it published."""
    with transaction(h.a.sessions) as s:
        run_id = sync.start_sync(s, h.a.settings, Actor.system("cli:operator"), h.dataset, "hub-b", version).id

    def progress(done: int, total: int, *_: int) -> None:
        if done == total:
            raise Interrupted

    with pytest.raises(Interrupted):
        sync.run_sync(h.a, run_id, progress)
    return run_id


def certified_deletion(hub, dataset, number: int, *, second_approver: bool = False) -> dict:
    """``hub`` deletes version ``number`` of ``dataset`` through its retention flow (marked, shredded, purged,
    verified, certified), requested by one of its people and approved by the same or, ``second_approver``, another;
    the certificate."""
    ops = _person(hub, f"ops{number}").user.id
    approver = _person(hub, f"second{number}").user.id if second_approver else ops
    with transaction(hub.sessions) as s:
        version = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset,
                                                        DatasetVersion.number == number))
        d = Deletion(version_id=version.id, dataset_id=dataset, number=number, state=APPROVED, reason="retention",
                     requested_by=ops, approved_by=approver, approved_at=NOW)
        s.add(d)
        s.flush()
        deletion_id = d.id
    assert deletion.run(hub, deletion_id) == "certified"
    with hub.sessions() as s:
        return json.loads(s.get(Deletion, deletion_id).certificate)["certificate"]


def forgotten_in_kept_manifest(session, published: dict, deleted: str) -> dict:
    """The peer's push records (by sync id), having checked that the published push's kept manifest names the
    ``deleted`` file by its id only, with no header, and keeps every other file's header as pushed."""
    by_sync = {str(i.sync_id): i for i in session.scalars(select(Incoming))}
    kept = by_sync[published["sync_id"]].manifest
    assert [(f["id"], f["path"], f["header"]) for f in kept["files"] if f["id"] == deleted] == [(deleted, deleted, "")]
    assert {f["id"]: f["header"] for f in kept["files"] if f["id"] != deleted} \
        == {f["id"]: f["header"] for f in published["files"] if f["id"] != deleted}  # the other files' keys stay
    return by_sync


def _delete_at_origin(h, number: int) -> dict:
    return certified_deletion(h.a, h.dataset, number)


# -- what the peer keeps -------------------------------------------------------------------------------------
def _outside_the_audit_log(found: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], set[str]]:
    audited = {key: actions for key, actions in found.items() if key[0] == AuditEvent.__tablename__}
    assert set().union(*audited.values()) <= AUDITED, audited
    return {key: actions for key, actions in found.items() if key[0] != AuditEvent.__tablename__}


def _secrets(value: bytes) -> list[str]:
    """How a header or a data key may be kept: raw bytes, base64, hex."""
    return [value.decode("latin-1"), base64.b64encode(value).decode(), value.hex()]


def _peer_secrets(h, origin_ids: set[str]) -> list[str]:
    """Every header the peer holds of these origin files (in its pushes' manifests, in its archive) and the data
    keys inside them, in each form they could be kept in."""
    needles: list[str] = []
    with h.b.sessions() as s:
        keys = hub_keys(h.b, s)
        headers = [base64.b64decode(f["header"]) for m in s.scalars(select(Incoming.manifest))
                   for f in m["files"] if f["id"] in origin_ids]
        headers += [f.header for f in s.scalars(select(ArchiveFile).join(
            MirrorFile, MirrorFile.file_id == ArchiveFile.id).where(MirrorFile.origin_file_id.in_(origin_ids)))]
    for header in headers:
        needles += _secrets(header)
        for key in c4gh.open_header(header, keys.secrets).session_keys:
            needles += _secrets(key)
    assert needles
    return needles


def _received_bodies(h, origin_ids: set[str]) -> list[str]:
    """The storage keys of the bodies the peer holds of these origin files (received, or its archive's copies)."""
    with h.b.sessions() as s:
        keys = list(s.scalars(select(IncomingFile.body_key).where(IncomingFile.origin_file_id.in_(origin_ids))))
        keys += list(s.scalars(select(ArchiveFile.body_key).join(MirrorFile, MirrorFile.file_id == ArchiveFile.id)
                               .where(MirrorFile.origin_file_id.in_(origin_ids))))
    return sorted(set(keys))


def _snapshot(hub) -> dict[str, list]:
    """Everything the peer keeps but its audit log (and its head) and the spent nonces of signed requests."""
    models.load_all()
    with hub.sessions() as s:
        return {t.name: sorted(map(str, s.execute(select(t)).all())) for t in Base.metadata.sorted_tables
                if not t.name.startswith("audit_") and t.name != "federation_nonces"}


def _notice(h, version: int) -> dict:
    return {"format": notices.FORMAT, "origin": h.url_a, "origin_name": "Hub A", "dataset": h.dataset,
            "recipient_key_id": service.hub_key(h.b.settings).key_id, "kind": "deleted", "version": version,
            "reason": ""}


def _send_manifest(h, doc: dict):
    signature = signing.sign_document(service.hub_key(h.a.settings).private, manifest.canonical(doc))
    return sync._post(h.a, h.url_b, f"{sync.SYNC_PATH}/manifest", {"manifest": doc, "signature": signature})


# -- the tests -----------------------------------------------------------------------------------------------
def test_a_deleted_version_leaves_no_key_or_name_at_the_peer_and_is_not_received_again(hubs):  # noqa: F811 - the fixture
    """Versions 1 (three files) and 2 (+ u1) pushed and published at B; version 3 (+ u2) pushed, every body
    received, not published. The origin deletes version 3, then 2 (u2, then u1 go there); the notices tell B.
    Nothing at B holds u1's or u2's headers, data keys, paths, pseudonyms or UIDs; version 1 stays downloadable;
    the unfinished push is refused; sending the notices again changes nothing; pushes of versions 2 and 3 are
    refused."""
    h = hubs
    u1_path, u1_names = _named_path()
    u1 = _release(h, 2, u1_path)
    _push(h)  # versions 1 and 2: published at B
    u2_path, u2_names = _named_path()
    u2 = _release(h, 3, u2_path)
    unfinished = _push_until_published(h, 3)
    with h.b.sessions() as s:
        pushed = {str(i.sync_id): (i.state, i.manifest) for i in s.scalars(select(Incoming))}
        mirror = s.scalar(select(Mirror)).dataset_id
    assert pushed[str(unfinished)][0] == "receiving"
    [published] = [doc for sid, (state, doc) in pushed.items() if state == "published"]
    secrets = _peer_secrets(h, {u1, u2})
    names = u1_names + u2_names
    bodies = _received_bodies(h, {u1, u2})
    assert len(bodies) == 2 and all(storage_for(h.b).exists(key) for key in bodies)
    found = _traces(h.b, secrets + names)
    assert {"federation_incoming", "archive_files"} <= {table for table, _ in found}  # something to find

    assert [f["file"] for f in _delete_at_origin(h, 3)["files"]] == [u2]
    assert [f["file"] for f in _delete_at_origin(h, 2)["files"]] == [u1]
    assert _run_notices_job(h.a) == {"queued": 2, "sent": 2, "failed": 0}

    # no header, data key, path, pseudonym or UID of u1 or u2 is kept at B, but in the audit log
    assert _outside_the_audit_log(_traces(h.b, secrets + names)) == {}
    assert not any(storage_for(h.b).exists(key) for key in bodies)  # the unfinished push's body too
    with h.b.sessions() as s:
        states = {n: state for n, state in s.execute(select(DatasetVersion.number, DatasetVersion.state)
                                                     .where(DatasetVersion.dataset_id == mirror))}
        assert states == {1: "released", 2: "deleted"}  # 3 was never published here
        assert s.scalar(select(Mirror)).withdrawn_at is None  # version 1 is still offered
        by_sync = forgotten_in_kept_manifest(s, published, u1)  # version 1's keys stay
        assert by_sync[str(unfinished)].state == "refused"
        assert "deleted at its origin" in by_sync[str(unfinished)].reason
        assert s.scalar(select(func.count()).select_from(IncomingFile).where(
            IncomingFile.origin_file_id.in_((u1, u2)))) == 0
        version_1 = [f.id for f in s.scalars(select(ArchiveFile).where(ArchiveFile.state == "ready"))]
        assert len(version_1) == 3
    told = _events(h.b, "federation.mirror.deleted")  # whichever came first: u1 in two manifests, u2 in one
    assert sorted(e.details["version"] for e in told) == [2, 3]
    assert sum(e.details["push_entries_forgotten"] for e in told) == 3

    # the notices applied again change nothing
    before, audited = _snapshot(h.b), len(_events(h.b, "federation.mirror."))
    for number in (2, 3):
        r = sync._post(h.a, h.url_b, notices.NOTICE_PATH, _notice(h, number))
        assert r.status_code == 200, r.text
    assert _snapshot(h.b) == before and len(_events(h.b, "federation.mirror.")) == audited

    # a push of a deleted version is refused: the same manifests again (a restored backup at the origin), and the
    # unfinished push resumed or published
    for doc in (published, pushed[str(unfinished)][1]):
        again = _send_manifest(h, {**doc, "sync_id": uuid.uuid4().hex})
        assert again.status_code == 422 and "deleted at its origin" in again.json()["detail"], again.text
    resent = _send_manifest(h, pushed[str(unfinished)][1])
    assert resent.status_code == 422 and "deleted at its origin" in resent.json()["detail"]
    publish = sync._post(h.a, h.url_b, f"{sync.SYNC_PATH}/{unfinished}/publish", {})
    assert publish.status_code == 409, publish.text
    with pytest.raises(sync.SyncRefused):
        sync.run_sync(h.a, unfinished)
    with transaction(h.a.sessions) as s, pytest.raises(Invalid):
        sync.start_sync(s, h.a.settings, Actor.system("cli:operator"), h.dataset, "hub-b", 2)
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Incoming)) == 2
    refusals = [e.details["reason"] for e in _events(h.b, "federation.sync.refused")]
    assert sum("deleted at its origin" in r for r in refusals) == 3
    assert _outside_the_audit_log(_traces(h.b, secrets + names)) == {}


def test_a_notice_that_failed_half_way_is_carried_out_when_sent_again(hubs, monkeypatch):  # noqa: F811 - the fixture
    """B's storage fails after the mirror's copy of u1 was purged, before the notice's work is committed: the
    notice is not acknowledged and nothing of its records changed; sent again at the next run, it is carried out
    in full."""
    h = hubs
    u1_path, names = _named_path()
    u1 = _release(h, 2, u1_path)
    _push(h)
    secrets = _peer_secrets(h, {u1})
    [body] = _received_bodies(h, {u1})
    _delete_at_origin(h, 2)
    purge, calls = deletion.purge_object, []

    def purge_then_fail(storage, key):
        calls.append(key)
        if len(calls) > 1:
            raise OSError("the storage went away")
        return purge(storage, key)

    monkeypatch.setattr(deletion, "purge_object", purge_then_fail)
    assert _run_notices_job(h.a) == {"queued": 1, "sent": 0, "failed": 1}
    assert not storage_for(h.b).exists(body)  # purged before it stopped
    assert {table for table, _ in _outside_the_audit_log(_traces(h.b, secrets + names))} \
        == {"archive_files", "federation_incoming"}  # rolled back: the records still say it is here
    monkeypatch.undo()

    assert _run_notices_job(h.a) == {"queued": 0, "sent": 1, "failed": 0}
    assert _outside_the_audit_log(_traces(h.b, secrets + names)) == {}
    with h.b.sessions() as s:
        assert s.scalar(select(DatasetVersion.state).where(DatasetVersion.number == 2)) == "deleted"
        assert s.scalar(select(func.count()).select_from(IncomingFile).where(IncomingFile.origin_file_id == u1)) == 0
    [event] = _events(h.b, "federation.mirror.deleted")
    assert event.details["files_deleted"] == 1 and event.details["push_entries_forgotten"] == 1


def test_a_first_push_never_published_is_forgotten_when_its_version_is_deleted(hubs):  # noqa: F811 - the fixture
    """The only push of the dataset stopped before publishing: B holds its manifest and bodies, no mirror. The
    origin deletes the version; its notice reaches B all the same, which refuses the push and purges what it
    received; the push resumed is refused."""
    h = hubs
    path, names = _named_path()
    with transaction(h.a.sessions) as s:  # version 1's files named by a pseudonym and UIDs, as an import's are
        for i, f in enumerate(s.scalars(select(ArchiveFile).where(ArchiveFile.id.in_(h.files)))):
            f.path = f"{path}.{i}"
    run = _push_until_published(h, None)
    secrets = _peer_secrets(h, set(h.files))
    bodies = _received_bodies(h, set(h.files))
    assert len(bodies) == len(h.files)
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Mirror)) == 0
    _delete_at_origin(h, 1)  # the last version: the catalogue entry is withdrawn there too
    assert _run_notices_job(h.a) == {"queued": 1, "sent": 1, "failed": 0}

    assert _outside_the_audit_log(_traces(h.b, secrets + names)) == {}
    assert not any(storage_for(h.b).exists(key) for key in bodies)
    with h.b.sessions() as s:
        inc = s.scalar(select(Incoming))
        assert inc.state == "refused" and s.scalar(select(func.count()).select_from(IncomingFile)) == 0
    [event] = _events(h.b, "federation.mirror.deleted")
    assert event.details["received_bodies_purged"] == len(h.files) and event.details["pushes_refused"] == 1
    with pytest.raises(sync.SyncRefused):
        sync.run_sync(h.a, run)
