"""A mirror hub's own retention deleting a mirrored version leaves no key or name of the deleted files in the records
it kept of the pushes that brought them — as the origin's ``deleted`` notice does (``sync.forget_version``).

Two real hubs on loopback (tests/test_federation_sync.py's pair): A pushes a dataset to B (published there as a
mirror), and starts a second push of a version B holds, which stops before publishing. Then B's own retention flow
(marked, shredded, purged, verified, certified: ``retention.deletion.run``) deletes the mirror's version 2, later its
version 1. Every column of every table at B is searched for the deleted files' crypt4gh headers (as stored and as
pushed), their data keys, their paths and the pseudonyms and UIDs in them (the table walk of
tests/test_retention_traces.py, as tests/test_federation_deletion_traces.py searches after an origin's deletion):
only the audit log may name them, and it names none. The push under way is refused, the copies are no longer the
origin's files at B, the received bodies are gone from B's bucket, a push of the deleted version is refused saying
B deleted it, and the mirror with no live version left is closed.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from strongroom.archive.backend import storage_for
from strongroom.archive.models import ArchiveFile, DatasetVersion
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.federation import sync
from strongroom.federation.models import Incoming, IncomingFile, Mirror, MirrorFile
from strongroom.retention import deletion
from support.seaweed import seaweedfs  # noqa: F401 - session fixture
from test_federation_deletion_traces import (
    _named_path,
    _outside_the_audit_log,
    _peer_secrets,
    _push_until_published,
    _received_bodies,
    _release,
    _send_manifest,
    certified_deletion,
    forgotten_in_kept_manifest,
)
from test_federation_sync import NOW, _events, _person, _push, database_url, hubs, settings  # noqa: F401 - fixtures
from test_retention_traces import _traces

pytestmark = pytest.mark.slow


def _delete_at_the_mirror(h, mirror: str, number: int) -> dict:
    """B's retention deletes version ``number`` of its mirror (two of B's people: requested, approved)."""
    return certified_deletion(h.b, mirror, number, second_approver=True)


def test_a_mirrors_retention_deletion_forgets_what_the_pushes_left(hubs):  # noqa: F811 - the fixture
    h = hubs
    named = {}
    with transaction(h.a.sessions) as s:  # version 1's files named by a pseudonym and UIDs, as an import's are
        for f in s.scalars(select(ArchiveFile).where(ArchiveFile.id.in_(h.files))):
            f.path, names = _named_path()
            named[f.id] = names
    v1 = set(h.files)
    u1_path, named_u1 = _named_path()
    u1 = _release(h, 2, u1_path)
    _push(h)  # versions 1 and 2: published at B
    unfinished = _push_until_published(h, 2)  # version 2 again: its manifest at B, not published
    with h.b.sessions() as s:
        mirror = s.scalar(select(Mirror)).dataset_id
        pushed = {str(i.sync_id): (i.state, i.manifest) for i in s.scalars(select(Incoming))}
        assert {state for state, _ in pushed.values()} == {"published", "receiving"}
        assert s.scalar(select(func.count()).select_from(MirrorFile)) == 4
    [published] = [doc for state, doc in pushed.values() if state == "published"]
    secrets_u1, secrets_v1 = _peer_secrets(h, {u1}), _peer_secrets(h, v1)
    bodies_u1, bodies_v1 = _received_bodies(h, {u1}), _received_bodies(h, v1)
    assert len(bodies_u1) == 1 and len(bodies_v1) == 3 and all(storage_for(h.b).exists(k) for k in bodies_u1)
    before = _traces(h.b, secrets_u1 + named_u1)
    assert {"federation_incoming", "archive_files"} <= {table for table, _ in before}  # something to find

    # B's retention deletes the mirror's version 2 (u1 is in no other version there)
    certificate = _delete_at_the_mirror(h, mirror, 2)
    assert len(certificate["files"]) == 1 and len(certificate["kept_in_other_versions"]) == 3

    # nothing at B holds u1's header, data key, path, pseudonym or UIDs, but its audit log, which names none
    assert _outside_the_audit_log(_traces(h.b, secrets_u1 + named_u1)) == {}
    records = certificate["derived"][deletion.MIRROR_RECORDS]  # the certificate says what went
    assert records == {"origin_dataset": h.dataset, "mirror_files_dropped": 1, "push_entries_forgotten": 2,
                       "received_bodies_purged": 0, "pushes_refused": 1}
    assert not any(storage_for(h.b).exists(key) for key in bodies_u1)
    with h.b.sessions() as s:
        by_sync = forgotten_in_kept_manifest(s, published, u1)  # version 1's keys stay
        assert by_sync[str(unfinished)].state == "refused"
        assert sync.DELETED_HERE in by_sync[str(unfinished)].reason
        assert s.scalar(select(func.count()).select_from(IncomingFile).where(IncomingFile.origin_file_id == u1)) == 0
        assert set(s.scalars(select(MirrorFile.origin_file_id))) == v1  # u1's copy is no longer A's file here
        states = dict(s.execute(select(DatasetVersion.number, DatasetVersion.state)
                                .where(DatasetVersion.dataset_id == mirror)).all())
        assert states == {1: "released", 2: "deleted"}
        assert s.scalar(select(Mirror)).withdrawn_at is None  # version 1 is still offered
    assert all(storage_for(h.b).exists(key) for key in bodies_v1)
    [marked] = _events(h.b, "retention.deletion.marked")
    assert marked.details[deletion.MIRROR_RECORDS] == records

    # the deleted version is not received again: the same manifest again (a restored backup at A, a stale job)
    again = _send_manifest(h, {**published, "sync_id": uuid.uuid4().hex})
    assert again.status_code == 422 and sync.DELETED_HERE in again.json()["detail"], again.text
    with pytest.raises(sync.SyncRefused, match="deleted on this hub"):  # A's push that stopped: refused for good
        sync.run_sync(h.a, unfinished)

    # then its version 1, the last: every file's header, key and name goes, the mirror is closed
    certificate = _delete_at_the_mirror(h, mirror, 1)
    assert len(certificate["files"]) == 3
    assert certificate["derived"][deletion.MIRROR_RECORDS]["push_entries_forgotten"] == 6  # in both manifests
    named_v1 = [n for names in named.values() for n in names]
    assert _outside_the_audit_log(_traces(h.b, secrets_u1 + secrets_v1 + named_u1 + named_v1)) == {}
    assert not any(storage_for(h.b).exists(key) for key in bodies_v1)
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(IncomingFile)) == 0
        assert s.scalar(select(func.count()).select_from(MirrorFile)) == 0
        closed = s.scalar(select(Mirror))
        assert closed.withdrawn_at is not None and closed.withdrawn_reason == sync.DELETED_HERE
    # a push of A's dataset now is refused at B (both versions deleted there), and changes nothing
    with transaction(h.a.sessions) as s:
        run = sync.start_sync(s, h.a.settings, Actor.system("cli:operator"), h.dataset, "hub-b")
    with pytest.raises(sync.SyncRefused, match="deleted on this hub"):
        sync.run_sync(h.a, run.id)
    assert _outside_the_audit_log(_traces(h.b, secrets_u1 + secrets_v1 + named_u1 + named_v1)) == {}
