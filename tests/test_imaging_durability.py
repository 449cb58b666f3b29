"""The DICOM destination's C-STORE handler acknowledges an object only once it is durable: the de-identified
file, its sidecar and the directory naming them fsynced (one concurrent round of fsyncs); a failed fsync
means no success status; after a power cut, a spool pair whose fsyncs had not completed is dropped at the
next start (it was never acknowledged), not archived."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from imaging_support import make_project
from strongroom.imaging import scp, service
from strongroom.imaging.synthetic import make_ct
from strongroom.projects.models import Project
from support.live import free_port

SENDER = "SCANNER1"


@pytest.fixture
def receiver(hub, people):
    people("alice")
    make_project(hub, profile={"retain_longitudinal": "modified"},
                 destination={"ae_title": "LUNG_AE", "port": free_port()},
                 senders=[{"ae_title": SENDER, "address": "127.0.0.1"}])
    with hub.sessions() as s:
        project = s.scalars(select(Project).where(Project.slug == "lung")).one()
    svc = scp.DicomService(hub, workers=1)  # the pool's worker starts only when something is submitted
    dest = scp._Destination(project.id, "lung", None, None, None, service.load_context(hub, project.id))  # type: ignore[arg-type]
    yield svc, dest
    if not svc.stopping.is_set():
        svc.stop()


def _event(svc: scp.DicomService, n: int) -> SimpleNamespace:
    """What pynetdicom hands the handler: the received data set, streamed into the spool's incoming/."""
    path = svc.spool / "incoming" / f"received-{n}"
    path.write_bytes(make_ct(3, 0, 1, n, rows=32, columns=32))
    return SimpleNamespace(dataset_path=str(path),
                           assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title=SENDER, address="127.0.0.1")))


def test_success_only_after_the_files_and_their_directory_are_fsynced(receiver, monkeypatch) -> None:
    svc, dest = receiver
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", fsync)
    event = _event(svc, 1)
    assert svc._store(event, dest) == scp.SUCCESS  # type: ignore[arg-type]
    sidecars = list(svc.spool.rglob("*.json"))
    assert len(sidecars) == 1
    stem = sidecars[0].with_suffix("")
    # everything that makes the acknowledged object recoverable was fsynced before the status was returned
    assert {str(stem.with_suffix(".dcm")), str(stem.with_suffix(".json")), str(stem.parent)} <= set(synced)
    # the batch directory was new: the directories naming it too
    assert {str(stem.parent.parent), str(stem.parent.parent.parent)} <= set(synced)

    # a later object of the same association: its files and the directory again, nothing less
    synced.clear()
    assert svc._store(_event(svc, 2), dest) == scp.SUCCESS  # type: ignore[arg-type]
    second = next(p for p in svc.spool.rglob("*.json") if p != sidecars[0]).with_suffix("")
    assert {str(second.with_suffix(".dcm")), str(second.with_suffix(".json")), str(second.parent)} <= set(synced)


def test_a_failed_fsync_is_not_acknowledged_and_leaves_nothing_to_archive(receiver, monkeypatch) -> None:
    svc, dest = receiver

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing)
    status = svc._store(_event(svc, 1), dest)  # type: ignore[arg-type]
    assert not isinstance(status, int) and status.Status == scp.OUT_OF_RESOURCES
    assert not [p for p in svc.spool.rglob("*") if p.is_file() and p.parent.name != "incoming"]
    assert svc.queue.empty()


def test_an_incomplete_spool_pair_is_dropped_at_the_next_start(receiver, hub) -> None:
    svc, dest = receiver
    assert svc._store(_event(svc, 1), dest) == scp.SUCCESS  # type: ignore[arg-type]
    assert svc._store(_event(svc, 2), dest) == scp.SUCCESS  # type: ignore[arg-type]
    first, second = sorted(p.with_suffix("") for p in svc.spool.rglob("*.json"))
    # a power cut before the fsyncs completed: the output lost its tail (never acknowledged)
    dcm = first.with_suffix(".dcm")
    dcm.write_bytes(dcm.read_bytes()[:1000])
    svc.stop()

    again = scp.DicomService(hub, workers=1)
    try:
        again._recover()
        queued = []
        while not again.queue.empty():
            queued.append(again.queue.get_nowait())
        items = [q for q in queued if isinstance(q, scp._Item)]
        assert [i.stem for i in items] == [second]  # the complete pair is archived, the torn one is not
        assert not any(first.with_suffix(s).exists() for s in (".raw", ".dcm", ".json"))
        assert second.with_suffix(".json").exists()
    finally:
        again.stop()


def test_spool_sizes_stay_out_of_the_summary(receiver) -> None:
    svc, dest = receiver
    assert svc._store(_event(svc, 1), dest) == scp.SUCCESS  # type: ignore[arg-type]
    stem = next(svc.spool.rglob("*.json")).with_suffix("")
    summary = svc._read_sidecar(stem)
    assert summary is not None and "spool_size" not in summary and summary["pseudonym_map"]
    assert isinstance(Path(stem.with_suffix(".dcm")).stat().st_size, int)


def test_a_killed_verification_worker_loses_nothing_and_the_pool_is_replaced(receiver, hub) -> None:
    """Verification starts in the pool as each object is acknowledged. A worker that dies (killed, out of
    memory) breaks the pool: the objects it held are verified again in a new pool, none is lost or
    quarantined for it, and the destination goes on acknowledging."""
    import signal

    from helpers import wait_until
    from imaging_support import instances

    svc, dest = receiver
    svc.dispatcher.start()
    svc.archiver.start()
    assert svc._store(_event(svc, 1), dest) == scp.SUCCESS  # type: ignore[arg-type]
    wait_until(lambda: len(instances(hub)) == 1, step=0.05)  # the first object archived
    workers = [p.pid for p in svc.pool._processes.values()]  # type: ignore[union-attr]
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    for n in range(2, 6):  # acknowledged while (and after) the pool is broken
        assert svc._store(_event(svc, n), dest) == scp.SUCCESS  # type: ignore[arg-type]
    wait_until(lambda: len(instances(hub)) == 5, timeout=120, step=0.05)  # every acknowledged object
    assert all(i.state == "archived" for i in instances(hub))  # verified, not quarantined for the pool's death
    wait_until(lambda: not list(svc.spool.rglob("*.json")), step=0.05)  # the spool emptied once committed
    assert all(pid not in [p.pid for p in svc.pool._processes.values()] for pid in workers)  # type: ignore[union-attr]


def test_an_embedded_database_commit_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    """The archiver deletes spool files once their rows commit, and senders and clients are told "stored"
    after a commit: on the embedded database a commit must survive a power cut (``synchronous=FULL``; WAL's
    usual NORMAL may roll the last commits back). Only a URL that asks for less gets less (the test suite's
    own choice, like ``synchronous_commit=off`` on PostgreSQL); anything unknown is refused."""
    from strongroom.config import Settings
    from strongroom.db import make_engine

    default_url = Settings(var_dir=tmp_path / "var").effective_database_url
    for url, expected in ((default_url, 2), (f"sqlite:///{tmp_path}/fast.db?synchronous=normal", 1)):
        engine = make_engine(url)
        try:
            connections = [engine.raw_connection() for _ in range(2)]  # each new one, not only the first
            assert [c.cursor().execute("PRAGMA synchronous").fetchone()[0] for c in connections] == \
                [expected, expected]
            for c in connections:
                c.close()
        finally:
            engine.dispose()
    with pytest.raises(ValueError, match="synchronous must be one of"):
        make_engine(f"sqlite:///{tmp_path}/bad.db?synchronous=off")


def test_an_object_whose_archiving_failed_five_times_is_tried_again_while_the_destination_runs(
        receiver, hub, monkeypatch) -> None:
    """The archive store is away for longer than the five quick tries (a volume down, under load): the object
    is parked, not left in the spool until the next start; once the store is back it is archived by the same
    process."""
    import shutil

    from helpers import wait_until
    from imaging_support import instances

    monkeypatch.setattr(scp, "PARKED_RETRY_SECONDS", 1, raising=False)  # (the code before had no parking)
    objects = hub.settings.var_dir / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    away = objects.with_name("objects-away")
    objects.rename(away)
    objects.write_bytes(b"")  # a file where the store's folder was: every write into it fails (root included)
    svc, dest = receiver
    svc.dispatcher.start()
    svc.archiver.start()
    try:
        assert svc._store(_event(svc, 1), dest) == scp.SUCCESS  # type: ignore[arg-type]
        # five failed tries: parked (counted as archived-or-given-up, so publishing is not held) and not archived
        wait_until(lambda: svc.unarchived[dest.project_id] == 0, timeout=120, step=0.05)
        assert instances(hub) == [] and list(svc.spool.rglob("*.json"))
    finally:
        objects.unlink()
        away.rename(objects)
    wait_until(lambda: len(instances(hub)) == 1, timeout=120, step=0.05)  # the store is back: archived now
    assert instances(hub)[0].state == "archived"
    wait_until(lambda: not list(svc.spool.rglob("*.json")), step=0.05)
    shutil.rmtree(away, ignore_errors=True)
