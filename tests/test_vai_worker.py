"""A VAI evaluation in real `strongroom worker` processes: the first is SIGKILLed once it has committed a
checkpoint batch (waited for on the prediction rows, never a sleep), a second takes the job over when its
lease expires, and the evaluation ends with every instance predicted exactly once and the same figures and
output checksum as a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

from sqlalchemy import func, select

from helpers import wait_until
from strongroom.jobs.models import Job
from strongroom.vai.models import Evaluation, Prediction
from test_vai import CASES, _drain, _evaluate, _register, vai  # noqa: F401  (vai: the fixture)


def _worker(settings, name: str, tmp_path) -> subprocess.Popen:
    env = {**os.environ, "STRONGROOM_DATABASE_URL": settings.effective_database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(),
           "STRONGROOM_VAR_DIR": str(settings.var_dir), "STRONGROOM_JOBS__LEASE_SECONDS": "2",
           "STRONGROOM_JOBS__POLL_SECONDS": "0.05", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    log = (tmp_path / f"{name}.log").open("w")  # a file, not a pipe nobody reads (a full pipe would block it)
    return subprocess.Popen([sys.executable, "-m", "strongroom.cli", "worker", "--name", name], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def _alive(worker: subprocess.Popen, tmp_path, name: str) -> bool:
    if worker.poll() is not None:
        raise AssertionError(f"worker {name} exited: {(tmp_path / f'{name}.log').read_text()[-2000:]}")
    return True


def _stop(worker: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it has not finished its turn in time (the machine may be slow)."""
    worker.terminate()
    try:
        worker.wait(120)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(30)


def _until(predicate, timeout: float = 900.0, step: float = 0.005):
    return wait_until(predicate, timeout, step)


def _count(hub, eid: uuid.UUID) -> int:
    with hub.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Prediction).where(Prediction.evaluation_id == eid)))


def _state(hub, eid: uuid.UUID) -> str:
    with hub.sessions() as s:
        return s.get_one(Evaluation, eid).state


def test_worker_killed_mid_evaluation_resumes_in_another(vai, settings, tmp_path) -> None:  # noqa: F811
    hub = vai["hub"]
    model_id = _register(vai)
    eid = uuid.UUID(_evaluate(vai, model_id, title="Killed mid-run").json()["id"])
    first = _worker(settings, "first", tmp_path)
    try:
        _until(lambda: _alive(first, tmp_path, "first") and _count(hub, eid) > 0)  # a batch is committed
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    kept = _count(hub, eid)
    # really killed mid-run: predictions committed, the evaluation unfinished (on a loaded machine the worker may have
    # predicted every case between the poll and the kill; the metrics and the state are then what is left to resume)
    assert 0 < kept <= CASES and _state(hub, eid) == "running"
    with hub.sessions() as s:
        kept_items = set(s.scalars(select(Prediction.item).where(Prediction.evaluation_id == eid)))
    second = _worker(settings, "second", tmp_path)
    try:
        _until(lambda: _alive(second, tmp_path, "second") and _state(hub, eid) in ("done", "failed"), step=0.2)
    finally:
        _stop(second)
    with hub.sessions() as s:
        ev = s.get_one(Evaluation, eid)
        assert ev.state == "done", ev.error
        items = list(s.scalars(select(Prediction.item).where(Prediction.evaluation_id == eid)))
        assert len(items) == len(set(items)) == CASES == ev.done  # each instance once
        assert kept_items <= set(items)  # the first worker's checkpoint was kept, not redone
        assert ev.result["predictions"] == CASES and ev.result["matched"] == CASES
        job = s.scalar(select(Job).where(Job.kind == "vai.evaluate"))
        assert job.attempts == 2 and job.locked_by == "second"
        assert ev.execution == {"providers": ["CPUExecutionProvider"]}
        resumed = (ev.result["metrics"], ev.outputs_sha256)
    # the same inputs run without interruption (in this process) give the same figures and checksum
    again = uuid.UUID(_evaluate(vai, model_id, title="In one go").json()["id"])
    _drain(hub)
    with hub.sessions() as s:
        ev = s.get_one(Evaluation, again)
        assert ev.state == "done" and (ev.result["metrics"], ev.outputs_sha256) == resumed
