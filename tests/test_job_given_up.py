"""A job that fails for good ends the record its kind keeps: a strategy run, an airlock request's checks or
transfer, a retention deletion, a push to a peer, a VAI evaluation. Its kind's ``on_given_up`` hook runs once the
job is failed by any path — its last lease lapsed (the worker died: the claim fails it), its last attempt raised
(or timed out: the runner fails it) — exactly once, and again harmlessly; one a crashed runner left is run by
the next sweep, and a hook that raises is tried again."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from conftest import bearer, token_for
from strongroom.archive.keys import ensure_key
from strongroom.archive.models import Dataset, DatasetFile, DatasetVersion
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction, utcnow
from strongroom.jobs import registry, service
from strongroom.jobs.models import Job
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from test_airlock import _drain as _drain_airlock
from test_airlock import _export, _put_file, _review, world  # noqa: F401 - the airlock fixture
from test_vai import _evaluate, _register, vai  # noqa: F401 - the VAI fixture

END = dt.date.today() + dt.timedelta(days=365)
BOOM = "RuntimeError: the storage went away"
LAPSED = "attempt {n} of {n} lost: worker dead-worker stopped renewing its lease"


# -- how a job gives up -------------------------------------------------------------------------------
def _runner(hub, kind: str) -> Runner:
    """A runner of ``kind`` only: it claims nothing else the setup queued (e-mails)."""
    runner = Runner(hub, lease_seconds=30, name="test")
    runner.kinds = {kind: runner.kinds[kind]}
    return runner


def _job_id(hub, kind: str) -> int:
    with hub.sessions() as s:
        return s.scalars(select(Job.id).where(Job.kind == kind)).one()


def _job(hub, job_id: int) -> Job:
    with hub.sessions() as s:
        return s.get_one(Job, job_id)


def _worker_died_on_the_last_attempt(hub, job_id: int) -> None:
    """The job's last attempt was running when its worker died: the lease lapsed a minute ago."""
    with transaction(hub.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            status="running", attempts=Job.max_attempts, locked_by="dead-worker",
            lease_expires_at=utcnow() - dt.timedelta(minutes=1)))


def _give_up_by_lapse(hub, job_id: int) -> None:
    _worker_died_on_the_last_attempt(hub, job_id)
    job = _job(hub, job_id)
    assert _runner(hub, job.kind).run_one() is False  # the claim failed it: nothing left to run
    job = _job(hub, job_id)
    assert job.status == "failed" and LAPSED.format(n=job.max_attempts) in job.last_error


def _give_up_by_failure(hub, job_id: int, monkeypatch, module: Any, name: str) -> None:
    """The job's last attempt raises (``module.name``, what the job calls, fails)."""
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the storage went away")

    monkeypatch.setattr(module, name, broken)
    with transaction(hub.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            status="queued", attempts=Job.max_attempts - 1, run_after=utcnow() - dt.timedelta(seconds=1)))
    job = _job(hub, job_id)
    assert _runner(hub, job.kind).run_one() is True
    job = _job(hub, job_id)
    assert job.status == "failed" and job.last_error == BOOM
    monkeypatch.undo()


def _give_up(how: str, hub, job_id: int, monkeypatch, module: Any, name: str) -> str:
    """Fail the job for good ``how``; returns the message its record should end with."""
    if how == "lapse":
        _give_up_by_lapse(hub, job_id)
    else:
        _give_up_by_failure(hub, job_id, monkeypatch, module, name)
    return f"gave up: {_job(hub, job_id).last_error}"


def _again(hub, job_id: int) -> None:
    """The hook has run (marked on the job); a sweep does not run it again; run by hand it changes nothing."""
    job = _job(hub, job_id)
    assert job.given_up_at is not None
    assert _runner(hub, job.kind).run_given_up() == 0
    hook = registry.REGISTRY[job.kind].on_given_up
    assert hook is not None
    with transaction(hub.sessions) as s:
        hook(s, dict(job.payload), "a second time")


def _actions(hub, target: str, action: str) -> int:
    with hub.sessions() as s:
        return s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.target == target,
                                                                         AuditEvent.action == action)) or 0


HOW = ["lapse", "failure"]


# -- strategy runs --------------------------------------------------------------------------------------
STRATEGY = '''name = "Lab extract"
person = "pin"
unlisted = "delete"
[columns.pin]
action = "pseudonymize"
'''


@pytest.fixture
def strategy_run(app, hub, people) -> dict[str, Any]:
    """A queued run of a saved strategy on an archived extract of proj-a (its PI, alice, started it)."""
    ensure_key(hub)
    alice = people("alice")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="proj-a", name="A", pi="alice", ethics_ref="E",
                                end_date=END)
    api, headers = TestClient(app, base_url="http://127.0.0.1:8000"), bearer(token_for(hub, alice))
    file_id = _put_file(hub, "proj-a", alice, "extracts/lab.csv", b"pin,age\nP1,41\nP2,52\n")
    assert api.put("/api/v1/projects/proj-a/strategy", json={"text": STRATEGY}, headers=headers).status_code in (
        200, 201)
    r = api.post("/api/v1/projects/proj-a/strategy/runs", json={"file_id": file_id}, headers=headers)
    assert r.status_code == 202, r.text
    return {"run": r.json()["id"], "job": _job_id(hub, "strategy.run")}


@pytest.mark.parametrize("how", HOW)
def test_a_strategy_run_whose_job_gave_up_ends_in_error(hub, strategy_run, monkeypatch, how) -> None:
    from strongroom.strategies import runs
    from strongroom.strategies.models import StrategyRun

    run_id = uuid.UUID(strategy_run["run"])
    with transaction(hub.sessions) as s:  # the attempt that died had begun it
        s.get_one(StrategyRun, run_id).state = "running"
    message = _give_up(how, hub, strategy_run["job"], monkeypatch, runs, "execute")
    with hub.sessions() as s:
        run = s.get_one(StrategyRun, run_id)
        assert run.state == "error" and run.finished_at is not None
        if how == "lapse":
            assert run.error == message
        else:  # an exception's text may quote the extract: the run shows its type only
            assert run.error == "gave up: internal error: RuntimeError"
    assert _actions(hub, f"strategy-run:{run_id}", "strategy.run.failed") == 1
    _again(hub, strategy_run["job"])
    with hub.sessions() as s:
        assert s.get_one(StrategyRun, run_id).error.startswith("gave up: ")
    assert _actions(hub, f"strategy-run:{run_id}", "strategy.run.failed") == 1


# -- the airlock: checks and transfer ------------------------------------------------------------------
def _airlock_request(w) -> str:
    table = _put_file(w["hub"], "lung", w["p"]["sam"], "out/ages.csv", b"id,age_band\nP001,40-49\n" * 20)
    r = _export(w, "sam", [table])
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _request(hub, request_id: str):
    from strongroom.airlock.models import AirlockRequest

    with hub.sessions() as s:
        return s.get_one(AirlockRequest, request_id)


@pytest.mark.parametrize("how", HOW)
def test_an_airlock_request_whose_checks_gave_up_fails(world, monkeypatch, how) -> None:  # noqa: F811
    from strongroom.airlock import checking
    from strongroom.airlock.models import AirlockRequest

    hub = world["hub"]
    request_id = _airlock_request(world)
    job_id = _job_id(hub, "airlock.check")
    with transaction(hub.sessions) as s:  # the attempt that died had begun the checks
        s.get_one(AirlockRequest, request_id).state = "checking"
    message = _give_up(how, hub, job_id, monkeypatch, checking, "run_checks")
    r = _request(hub, request_id)
    assert r.state == "failed" and r.reason == message[:500]
    assert _actions(hub, f"airlock:{request_id}", "airlock.request.failed") == 1
    _again(hub, job_id)
    assert _request(hub, request_id).reason == message[:500]
    assert _actions(hub, f"airlock:{request_id}", "airlock.request.failed") == 1


@pytest.mark.parametrize("how", HOW)
def test_an_airlock_transfer_that_gave_up_fails_the_request(world, monkeypatch, how) -> None:  # noqa: F811
    from strongroom.airlock import transfer
    from strongroom.airlock.models import AirlockRequest

    hub = world["hub"]
    request_id = _airlock_request(world)
    _drain_airlock(hub)  # the checks pass
    for reviewer in ("rita", "ron"):
        assert _review(world, request_id, reviewer).status_code == 200
    job_id = _job_id(hub, "airlock.transfer")
    with transaction(hub.sessions) as s:  # the attempt that died had begun the transfer
        s.get_one(AirlockRequest, request_id).state = "transferring"
    message = _give_up(how, hub, job_id, monkeypatch, transfer, "transfer")
    r = _request(hub, request_id)
    assert r.state == "failed" and r.reason == message[:500]
    assert r.receipt["failed"] == message[:500] and r.receipt["all_verified"] is False
    assert _actions(hub, f"airlock:{request_id}", "airlock.request.failed") == 1
    _again(hub, job_id)
    assert _actions(hub, f"airlock:{request_id}", "airlock.request.failed") == 1


def test_an_attempt_still_running_when_its_transfer_gave_up_sends_no_more_and_never_ends_it_done(
        world, monkeypatch) -> None:  # noqa: F811
    """An attempt past its time limit is abandoned, not stopped: while it still runs, the job gives up and the
    request fails. That attempt then sends nothing more and never turns the request back to done (before, its
    last step set ``done`` over ``failed``)."""
    from strongroom.airlock import transfer
    from strongroom.airlock.models import AirlockRequest

    hub = world["hub"]
    request_id = _airlock_request(world)
    _drain_airlock(hub)
    for reviewer in ("rita", "ron"):
        assert _review(world, request_id, reviewer).status_code == 200
    deliver = transfer._deliver_to_project

    def given_up_meanwhile(*args, **kwargs):  # the give-up lands while this (late) attempt delivers
        entry = deliver(*args, **kwargs)
        with transaction(hub.sessions) as s:
            transfer.give_up(s, {"request_id": request_id}, "attempt 3 of 3 ran past its time limit")
        return entry

    monkeypatch.setattr(transfer, "_deliver_to_project", given_up_meanwhile)
    monkeypatch.setattr(transfer, "_deliver_to_recipient", given_up_meanwhile)
    assert transfer.transfer(hub, request_id) == "failed"
    with hub.sessions() as s:
        r = s.get_one(AirlockRequest, request_id)
        assert r.state == "failed" and r.reason.startswith("gave up: ")
        assert len(r.receipt["files"]) == 1  # what did leave is on the receipt
    assert _actions(hub, f"airlock:{request_id}", "airlock.request.failed") == 1
    assert _actions(hub, f"airlock:{request_id}", "airlock.request.done") == 0


# -- retention deletions and pushes to a peer: a released, published dataset ---------------------------------
@pytest.fixture
def dataset(app, hub, people) -> dict[str, Any]:
    ensure_key(hub)
    p = {n: people(n, admin=n.startswith("ops")) for n in ("pia", "ops1", "ops2")}
    with transaction(hub.sessions) as s:
        project = projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="pia", ethics_ref="E",
                                          end_date=END)
        project_id = project.id
    file_id = _put_file(hub, "lung", p["pia"], "a.dcm", b"pixels " * 500)
    with transaction(hub.sessions) as s:
        s.add(Dataset(id="SRD-LUNG", project_id=project_id, title="Lung CT", created_by=p["pia"].user.id))
        s.flush()
        v = DatasetVersion(dataset_id="SRD-LUNG", number=1, state="released", released_at=utcnow(), file_count=1)
        s.add(v)
        s.flush()
        s.add(DatasetFile(version_id=v.id, file_id=file_id))
        s.add(CatalogEntry(dataset_id="SRD-LUNG", slug="lung-ct", title="Lung CT", created_by=p["pia"].user.id,
                           published=True, published_at=utcnow()))
    return {"p": p, "api": TestClient(app, base_url="http://127.0.0.1:8000")}


@pytest.mark.parametrize("how", HOW)
def test_a_deletion_whose_job_gave_up_says_so_and_keeps_its_state(hub, dataset, monkeypatch, how) -> None:
    from strongroom.retention import clock, deletion
    from strongroom.retention.models import Deletion, VersionClock

    with transaction(hub.sessions) as s:  # the version last used eleven years ago
        clock.catch_up(s, hub.settings.retention)
        v = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == "SRD-LUNG"))
        c = s.get_one(VersionClock, v.id)
        c.last_used_at = utcnow() - dt.timedelta(days=366 * 11)
        clock.recompute(s, hub.settings.retention, c)
    api, p = dataset["api"], dataset["p"]
    r = api.post("/api/v1/datasets/SRD-LUNG/versions/1/deletion", json={"reason": "Ten years unused"},
                 headers=bearer(token_for(hub, p["ops1"])))
    assert r.status_code == 201, r.text
    d = uuid.UUID(r.json()["id"])
    r = api.post(f"/api/v1/retention/deletions/{d}/approve", headers=bearer(token_for(hub, p["ops2"])))
    assert r.status_code == 200, r.text
    job_id = _job_id(hub, "retention.delete")
    deletion.mark(hub, d)  # the attempt that died got this far
    message = _give_up(how, hub, job_id, monkeypatch, deletion, "run")
    with hub.sessions() as s:
        row = s.get_one(Deletion, d)
        assert row.state == "marked" and row.failure == message  # never abandoned half-way: resumable
    assert _actions(hub, "dataset:SRD-LUNG", "retention.deletion.stalled") == 1
    _again(hub, job_id)
    assert _actions(hub, "dataset:SRD-LUNG", "retention.deletion.stalled") == 1
    assert deletion.run(hub, d) == "certified"  # resumed by an operator: the failure is cleared
    with hub.sessions() as s:
        assert s.get_one(Deletion, d).failure is None


@pytest.mark.parametrize("how", HOW)
def test_a_push_whose_job_gave_up_is_failed_and_resumable(hub, dataset, monkeypatch, how) -> None:
    from strongroom.federation import sync
    from strongroom.federation.models import Peer, SyncRun

    with transaction(hub.sessions) as s:
        s.add(Peer(name="hub-b", base_url="https://hub-b.example", signing_key="-", key_id="kid-b",
                   archive_key="-"))
        s.flush()
        run = sync.start_sync(s, hub.settings, Actor.system("t"), "SRD-LUNG", "hub-b")
        sync.enqueue(s, run)
        run.state, sync_id = "running", run.id  # the attempt that died had begun it
    job_id = _job_id(hub, "federation.sync")
    message = _give_up(how, hub, job_id, monkeypatch, sync, "run_sync")
    with hub.sessions() as s:
        row = s.get_one(SyncRun, sync_id)
        assert row.state == "failed" and row.error == message and row.active_key is not None
    assert _actions(hub, "dataset:SRD-LUNG", "federation.sync.failed") == 1
    _again(hub, job_id)
    assert _actions(hub, "dataset:SRD-LUNG", "federation.sync.failed") == 1
    with transaction(hub.sessions) as s:  # resuming it finds the same push
        assert sync.start_sync(s, hub.settings, Actor.system("t"), "SRD-LUNG", "hub-b").id == sync_id


# -- VAI evaluations ------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", HOW)
def test_an_evaluation_whose_job_gave_up_fails(vai, monkeypatch, how) -> None:  # noqa: F811
    from strongroom.vai import service as vai_service
    from strongroom.vai.models import Evaluation

    hub = vai["hub"]
    r = _evaluate(vai, _register(vai))
    assert r.status_code == 201, r.text
    evaluation_id = uuid.UUID(r.json()["id"])
    job_id = _job_id(hub, "vai.evaluate")
    with transaction(hub.sessions) as s:
        s.get_one(Evaluation, evaluation_id).state = "running"
    message = _give_up(how, hub, job_id, monkeypatch, vai_service, "run")
    with hub.sessions() as s:
        ev = s.get_one(Evaluation, evaluation_id)
        assert ev.state == "failed" and ev.error == message and ev.finished_at is not None
    _again(hub, job_id)
    with hub.sessions() as s:
        assert s.get_one(Evaluation, evaluation_id).error == message


# -- the mechanism --------------------------------------------------------------------------------------
@pytest.fixture
def recorded(monkeypatch) -> list[tuple[dict[str, Any], str]]:
    """A kind of this test's own whose hook records its calls (and raises while ``calls`` says so)."""
    calls: list[tuple[dict[str, Any], str]] = []

    def hook(session, payload, error) -> None:
        if payload.get("raise") and not calls:
            calls.append(({"raised": True}, error))
            raise RuntimeError("the hook's database went away")
        calls.append((payload, error))

    monkeypatch.setitem(registry.REGISTRY, "test.given_up", registry.JobKind(
        "test.given_up", lambda ctx, payload: (_ for _ in ()).throw(RuntimeError("no")), max_attempts=1,
        on_given_up=hook))
    return calls


def _enqueue(hub, payload: dict[str, Any]) -> int:
    with transaction(hub.sessions) as s:
        return service.enqueue(s, "test.given_up", payload, max_attempts=1).id


def test_a_hook_a_crashed_runner_did_not_run_is_run_by_the_next_sweep(hub, recorded) -> None:
    job_id = _enqueue(hub, {"n": 1})
    _worker_died_on_the_last_attempt(hub, job_id)
    with transaction(hub.sessions) as s:  # a runner failed it, then crashed before it ran the hook
        assert service.claim(s, "w", 30, ["test.given_up"]) is None
        assert service.given_up_in(s) == [job_id]
    assert recorded == [] and _job(hub, job_id).given_up_at is None
    assert _runner(hub, "test.given_up").run_until_idle() == 0  # a runner's start sweeps
    assert recorded == [({"n": 1}, _job(hub, job_id).last_error)]
    assert _runner(hub, "test.given_up").run_given_up() == 0 and len(recorded) == 1


def test_a_hook_that_raises_is_tried_again_and_a_job_still_retried_is_not_given_up(hub, recorded) -> None:
    job_id = _enqueue(hub, {"raise": True})
    runner = _runner(hub, "test.given_up")
    assert runner.run_one() is True  # the job raised on its only attempt; its hook raised too
    assert _job(hub, job_id).status == "failed" and _job(hub, job_id).given_up_at is None
    assert runner.run_given_up() == 1 and recorded[-1] == ({"raise": True}, "RuntimeError: no")
    assert _job(hub, job_id).given_up_at is not None
    # a failed job whose record a newer job of its kind works on (the same payload): that one ends it
    old = _enqueue(hub, {"n": 2})
    with transaction(hub.sessions) as s:
        s.execute(update(Job).where(Job.id == old).values(status="failed", attempts=1, dedup_key=None))
        service.enqueue(s, "test.given_up", {"n": 2}, run_after=utcnow() + dt.timedelta(hours=1))
    assert runner.run_given_up() == 0 and _job(hub, old).given_up_at is not None
    assert ({"n": 2}, "RuntimeError: no") not in recorded


@pytest.mark.parametrize("how", HOW)
def test_an_upload_whose_ingest_gave_up_fails_and_gives_its_quota_back(hub, dataset, monkeypatch, how) -> None:
    """An uploaded file whose ``archive.ingest`` job gave up would stay *uploaded*, holding its reserved quota
    for good: it fails as a file that does not verify does, the quota given back, audited once."""
    import os

    from strongroom.archive import c4gh
    from strongroom.archive import service as archive_service
    from strongroom.archive.models import ArchiveFile
    from strongroom.projects.models import Project

    api, pia = dataset["api"], dataset["p"]["pia"]
    headers = bearer(token_for(hub, pia))
    hub_public = c4gh.parse_public_key(api.get("/api/v1/archive/public-key", headers=headers).text)
    blob = b"".join(c4gh.encrypt_stream([os.urandom(5000)], hub_public))
    with hub.sessions() as s:
        before = s.scalar(select(Project.reserved_bytes).where(Project.slug == "lung"))
    up = api.post("/api/v1/projects/lung/uploads", json={"path": "late.bin", "size": len(blob)}, headers=headers)
    assert up.status_code == 201, up.text
    file_id = up.json()["id"]
    assert api.put(f"/api/v1/uploads/{file_id}/parts/1", content=blob, headers=headers).status_code == 200
    assert api.post(f"/api/v1/uploads/{file_id}/complete", headers=headers).status_code == 200
    job_id = _job_id(hub, "archive.ingest")
    message = _give_up(how, hub, job_id, monkeypatch, archive_service, "ingest")
    with hub.sessions() as s:
        f = s.get_one(ArchiveFile, file_id)
        assert (f.state, f.reserved_bytes, f.failure) == ("failed", 0, message[:1000])
        assert s.scalar(select(Project.reserved_bytes).where(Project.slug == "lung")) == before
    assert _actions(hub, f"file:{file_id}", "archive.file.failed") == 1
    _again(hub, job_id)
    assert _actions(hub, f"file:{file_id}", "archive.file.failed") == 1


def test_an_ingest_attempt_still_running_when_its_job_gave_up_never_makes_the_file_ready(
        hub, dataset, monkeypatch) -> None:
    """An attempt past its time limit is abandoned, not stopped. When it finishes after the give-up, the file
    stays failed (as audited), its body is deleted and the quota given back is not counted again (it turned
    the file ready and added its size to the used bytes with nothing reserved)."""
    import os
    import threading

    from strongroom.archive import c4gh
    from strongroom.archive import ingest as ingest_mod
    from strongroom.archive.backend import storage_for
    from strongroom.archive.models import ArchiveFile
    from strongroom.projects.models import Project

    api, pia = dataset["api"], dataset["p"]["pia"]
    headers = bearer(token_for(hub, pia))
    hub_public = c4gh.parse_public_key(api.get("/api/v1/archive/public-key", headers=headers).text)
    blob = b"".join(c4gh.encrypt_stream([os.urandom(5000)], hub_public))
    up = api.post("/api/v1/projects/lung/uploads", json={"path": "late.bin", "size": len(blob)}, headers=headers)
    file_id = up.json()["id"]
    assert api.put(f"/api/v1/uploads/{file_id}/parts/1", content=blob, headers=headers).status_code == 200
    assert api.post(f"/api/v1/uploads/{file_id}/complete", headers=headers).status_code == 200
    with hub.sessions() as s:
        used_before = s.scalar(select(Project.used_bytes).where(Project.slug == "lung"))
    gate, entered = threading.Event(), threading.Event()
    real = c4gh.ingest

    def held(*args: Any, **kwargs: Any) -> Any:  # the attempt is slow (storage), past the kind's time limit
        entered.set()
        gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(c4gh, "ingest", held)
    out: dict[str, str] = {}
    late = threading.Thread(target=lambda: out.setdefault(
        "state", ingest_mod.ingest(hub, storage_for(hub), file_id, workers=0)))
    late.start()
    assert entered.wait(10)
    with transaction(hub.sessions) as s:  # meanwhile the job gave up (`Runner.run_given_up` runs the hook)
        ingest_mod.give_up(s, {"file_id": file_id}, "attempt 5 of 5 ran past its time limit")
    gate.set()
    late.join(30)
    assert out["state"] == "failed"
    with hub.sessions() as s:
        f = s.get_one(ArchiveFile, file_id)
        assert (f.state, f.reserved_bytes, f.body_key) == ("failed", 0, None)
        assert s.scalar(select(Project.used_bytes).where(Project.slug == "lung")) == used_before
        assert s.scalar(select(Project.reserved_bytes).where(Project.slug == "lung")) == 0
    assert not storage_for(hub).exists(f"archive/{f.project_id}/{file_id}")
    assert _actions(hub, f"file:{file_id}", "archive.file.ingested") == 0


def test_kinds_that_keep_a_record_register_a_hook() -> None:
    kinds = registry.load()
    hooked = {name for name, kind in kinds.items() if kind.on_given_up is not None}
    assert {"strategy.run", "airlock.check", "airlock.transfer", "retention.delete", "federation.sync",
            "vai.evaluate", "archive.ingest"} <= hooked
