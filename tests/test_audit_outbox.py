"""Audit events written after the fact survive a real PostgreSQL outage (audit/outbox.py).

A server of the test's own (support/pg_instance.py) is stopped as in a crash while a download's end, a
refused download and a refused DICOM association are recorded: they wait in the outbox (fsync'd JSON
lines in the var dir) and reach the chain once the server is back, in the order they happened, exactly
once, with the chain verifying; a process that died with entries waiting has them replayed at the next
start-up; a replay whose file was not emptied (a crash after the commit) writes nothing twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from helpers import wait_until
from strongroom.archive.downloads import record_end
from strongroom.audit import outbox
from strongroom.audit import service as audit
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.config import Settings
from strongroom.db import engine_for
from strongroom.hub import Hub
from strongroom.migrate import upgrade
from support.pg_instance import PgInstance, missing

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))
SECRET = "outbox-test-secret-" + "x" * 32


@pytest.fixture(scope="module")
def pg() -> Iterator[PgInstance]:
    with PgInstance.create() as instance:
        upgrade(instance.url)
        yield instance
        engine_for(instance.url).dispose()


def make_hub(pg: PgInstance, var: Path) -> Hub:
    return Hub.from_settings(Settings(var_dir=var, database_url=pg.url, secret_key=SECRET, jobs={"embedded": False}))


def events(hub: Hub, action_prefix: str = "") -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action.startswith(action_prefix))
                              .order_by(AuditEvent.seq)))


def chain_ok(hub: Hub) -> bool:
    with hub.sessions() as s:
        report = audit.verify(s)
    assert report.ok, report.problems
    return True


def outbox_lines(hub: Hub) -> list[dict]:
    path = outbox.outbox_path(hub)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_events_after_the_fact_wait_out_an_outage_and_land_once_in_order(pg: PgInstance, tmp_path: Path) -> None:
    hub = make_hub(pg, tmp_path / "var")
    project = uuid.uuid4()
    alice = Actor(uuid.uuid4(), "alice", "10.0.0.7")
    before = len(events(hub))
    # while the database answers, the event goes straight into the chain
    assert outbox.record_after(hub, alice, "archive.download.started", project_id=project, target="file:a")
    assert not outbox.outbox_path(hub).exists()

    pg.stop()
    try:
        record_end(hub, alice, "archive.download.completed", project_id=project, target="file:a",
                   started={"started_seq": 1}, sent=10, expected=10, reason=None)
        assert not outbox.record_after(hub, alice, "archive.download.refused", outcome="denied", project_id=project,
                                       target="file:b", details={"reason": "download not allowed"})
        waiting = outbox_lines(hub)  # on disk (fsync'd) before the calls returned
        assert [e["action"] for e in waiting] == ["archive.download.completed", "archive.download.refused"]
        assert waiting[0]["details"]["bytes_sent"] == 10 and waiting[0]["actor"] == "alice"
    finally:
        pg.start()

    # the writing process's own retry thread replays them once the server answers again
    wait_until(lambda: not outbox.outbox_path(hub).stat().st_size, timeout=120, step=0.1)
    landed = events(hub)[before:]
    assert [e.action for e in landed] == ["archive.download.started", "archive.download.completed",
                                          "archive.download.refused"]
    completed, refused = landed[1], landed[2]
    assert completed.seq < refused.seq  # the order they happened in
    assert completed.outcome == "ok" and refused.outcome == "denied"
    assert completed.actor_id == alice.id and completed.ip == "10.0.0.7" and completed.project_id == project
    assert completed.details["bytes_sent"] == 10 and completed.details["outbox_key"] == waiting[0]["outbox_key"]
    assert completed.details["occurred_at"] == waiting[0]["occurred_at"]
    assert chain_ok(hub)

    # a crash after the replay's commit but before the file was emptied: the same lines again write nothing
    path = outbox.outbox_path(hub)
    path.write_text("".join(json.dumps(e) + "\n" for e in waiting))
    assert outbox.replay(hub) == 0
    assert not path.stat().st_size
    assert len(events(hub)) == before + 3
    assert chain_ok(hub)


def test_a_process_that_died_with_events_waiting_has_them_replayed_at_start_up(pg: PgInstance,
                                                                               tmp_path: Path) -> None:
    var = tmp_path / "var"
    hub = make_hub(pg, var)
    before = len(events(hub))
    code = f"""
import uuid
from strongroom.audit import outbox
from strongroom.audit.service import Actor
from strongroom.config import Settings
from strongroom.hub import Hub
hub = Hub.from_settings(Settings(var_dir={str(var)!r}, database_url={pg.url!r}, secret_key={SECRET!r},
                                 jobs={{"embedded": False}}))
for n in range(3):
    assert not outbox.record_after(hub, Actor.system("dicom-import"), "imaging.association.rejected",
                                   outcome="denied", target=f"dicom:AE{{n}}", details={{"n": n}})
"""  # the process ends right after: its retry thread dies with it, the entries stay on disk
    pg.stop()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(outbox_lines(hub)) == 3
    finally:
        pg.start()
    assert len(events(hub)) == before  # nobody replays until a process starts
    outbox.resume(hub)  # what serve, worker and dicom serve call at start-up
    wait_until(lambda: not outbox.outbox_path(hub).stat().st_size, timeout=120, step=0.1)
    landed = events(hub)[before:]
    assert [(e.action, e.target, e.details["n"]) for e in landed] == [
        ("imaging.association.rejected", f"dicom:AE{n}", n) for n in range(3)]
    assert chain_ok(hub)


def test_an_sftp_upload_interrupted_during_an_outage_is_audited_once_the_database_is_back(pg: PgInstance,
                                                                                          tmp_path: Path) -> None:
    """The connection of an SFTP upload drops while the database is away: its `interrupted` event (who, which
    project, how much was stored) waits in the outbox instead of being lost."""
    from strongroom.sftp.service import Writing

    hub = make_hub(pg, tmp_path / "var")
    before = len(events(hub))
    bob, project = Actor(uuid.uuid4(), "bob", "10.0.0.9"), uuid.uuid4()
    writing = Writing(hub, uuid.uuid4(), "10.0.0.9", "SRF-interrupted", b"", b"", received=8 << 20, parts=1,
                      actor=bob, project_id=project)
    pg.stop()
    try:
        writing.release(interrupted=True)
        assert [e["action"] for e in outbox_lines(hub)] == ["sftp.upload.interrupted"]
    finally:
        pg.start()
    wait_until(lambda: not outbox.outbox_path(hub).stat().st_size, timeout=120, step=0.1)
    (landed,) = events(hub)[before:]
    assert (landed.action, landed.actor_id, landed.project_id, landed.target) == (
        "sftp.upload.interrupted", bob.id, project, "file:SRF-interrupted")
    assert landed.details["stored"] == 8 << 20 and landed.ip == "10.0.0.9"
    assert chain_ok(hub)
