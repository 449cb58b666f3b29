"""The set-based statements of the bundle path, on each database (PostgreSQL runs its own: one
``INSERT … SELECT FROM unnest`` for a group's audit events, one ``UPDATE … FROM unnest`` to mark its files
ready): they write exactly what the per-row ORM code wrote, and the chain they extend still verifies."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid

from sqlalchemy import select

from strongroom.archive import c4gh
from strongroom.archive import ingest as ingest_module
from strongroom.archive.accession import new_accession
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key, hub_keys
from strongroom.archive.models import ArchiveFile
from strongroom.audit import service as audit
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.projects import service as projects
from strongroom.projects.models import Project


def test_record_many_writes_what_record_writes(hub):
    project = uuid.uuid4()
    actor = Actor(id=uuid.uuid4(), label="alice", ip="10.0.0.1")
    with transaction(hub.sessions) as s:
        audit.record(s, actor, "t.one", project_id=project, target="file:A", details={"n": 1})
    with transaction(hub.sessions) as s:
        audit.record_many(s, actor, "t.many", [(project, "file:B", {"path": "a/ü.txt", "size": 2}),
                                               (None, None, None),
                                               (project, "file:C", {"nested": {"k": [1, "x"]}})],
                          outcome="failed")
        audit.record_many(s, actor, "t.none", [])  # nothing to write: no event, no lock
    with transaction(hub.sessions) as s:
        audit.record(s, actor, "t.after", target="file:D")
    with hub.sessions() as s:
        events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        assert not audit.verify(s).problems
    assert [(e.seq, e.action, e.target) for e in events] == [
        (1, "t.one", "file:A"), (2, "t.many", "file:B"), (3, "t.many", None), (4, "t.many", "file:C"),
        (5, "t.after", "file:D")]
    many = events[1:4]
    assert [e.details for e in many] == [{"path": "a/ü.txt", "size": 2}, {}, {"nested": {"k": [1, "x"]}}]
    assert [e.project_id for e in many] == [project, None, project]
    assert {(e.outcome, e.actor_id, e.actor, e.ip, e.subject_user_id) for e in many} == {
        ("failed", actor.id, "alice", "10.0.0.1", None)}
    assert all(e.at.tzinfo is not None and abs(e.at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
               for e in many)
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]


def test_group_commit_marks_each_file_with_its_own_values(hub, people):
    """The one-statement UPDATE puts every value on its own row (not shifted, not shared), leaves the rows it
    is not given alone, and settles the quota once."""
    uploader = people("alice").user.id
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="alice", ethics_ref="E1",
                                end_date=dt.date.today() + dt.timedelta(days=365))
    ensure_key(hub)
    with hub.sessions() as s:
        public = hub_keys(hub, s).current[1].public
        project = s.scalar(select(Project).where(Project.slug == "lung"))
    plains = [bytes([i]) * (1000 + 500 * i) for i in range(5)]
    blobs = [b"".join(c4gh.encrypt_stream([p], public)) for p in plains]
    inbox_key = f"inbox/{project.id}/{new_accession('SRB')}"
    storage = storage_for(hub)
    storage.put_bytes(inbox_key, b"".join(blobs))
    with transaction(hub.sessions) as s:
        offset, ids = 0, []
        for i, blob in enumerate(blobs):
            ids.append(new_accession("SRF"))
            s.add(ArchiveFile(id=ids[-1], project_id=project.id, uploader_id=uploader, path=f"f{i}",
                              state="uploaded", upload_size=len(blob), reserved_bytes=len(blob),
                              inbox_key=inbox_key, inbox_offset=offset,
                              declared_sha256=hashlib.sha256(plains[i]).hexdigest()))
            offset += len(blob)
        s.get(Project, project.id).reserved_bytes = offset
    states = ingest_module.ingest_bundle(hub, storage, inbox_key, only=ids[3])
    assert states == {ids[3]: "ready"}
    states = ingest_module.ingest_bundle(hub, storage, inbox_key)
    assert states == dict.fromkeys(ids, "ready")
    with hub.sessions() as s:
        assert not audit.verify(s).problems
    with hub.sessions() as s:
        rows = {f.id: f for f in s.scalars(select(ArchiveFile))}
        project = s.get(Project, project.id)
        ingested = s.scalars(select(AuditEvent.target).where(AuditEvent.action == "archive.file.ingested")).all()
    assert sorted(ingested) == sorted(f"file:{i}" for i in ids)  # once each, the early one included
    for i, file_id in enumerate(ids):
        f = rows[file_id]
        assert (f.state, f.reserved_bytes, f.plaintext_size) == ("ready", 0, len(plains[i]))
        assert f.plaintext_sha256 == hashlib.sha256(plains[i]).hexdigest()
        assert f.plaintext_md5 == hashlib.md5(plains[i]).hexdigest()
        assert f.header == blobs[i][:len(f.header)] and f.header_key is not None
        assert f.body_key == f"archive/{project.id}/{file_id}" and f.ingested_at is not None
        assert f.body_size == len(blobs[i]) - len(f.header) == storage.size(f.body_key)
        with storage.open_reader(f.body_key) as body:
            assert hashlib.sha256(body.read()).hexdigest() == f.body_sha256
    assert project.reserved_bytes == 0 and project.used_bytes == sum(f.body_size for f in rows.values())
    assert list(storage.iter_keys("inbox/")) == []


def test_accessions_use_every_symbol():
    ids = {new_accession("SRF") for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"SRF-[0-9A-HJKMNP-TV-Z]{10}", i) for i in ids)
    assert {c for i in ids for c in i[4:]} == set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
