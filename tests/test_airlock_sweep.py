"""The airlock's sweep (docs/airlock.md "Sweeping"), on local storage and on S3 (SeaweedFS).

Staged bodies of imports that ended rejected, expired or failed, and outbox bodies once downloaded (after a
grace) or past ``[airlock] outbox_days``, are deleted from storage: marked first (unreadable from then on,
quota freed, audited), then deleted; a run stopped between the two is finished by the next. Nothing of a
request in review, nor a landed import, is touched; the request page says when its content was removed.
"""

from __future__ import annotations

import datetime as dt
import os

import pytest
from sqlalchemy import select

from conftest import bearer, web_client
from strongroom.airlock import service as airlock
from strongroom.airlock import sweep
from strongroom.airlock.models import AirlockRequest, OutboxItem
from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.models import ArchiveFile
from strongroom.db import transaction, utcnow
from strongroom.projects.models import Project
from support.seaweed import seaweedfs  # noqa: F401 - session fixture
from test_airlock import (
    _actions,
    _drain,
    _export,
    _get,
    _plaintext,
    _put_file,
    _review,
    world,  # noqa: F401 - the fixture: projects, people, reviewers
)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(settings, backend, request, tmp_path):
    if backend == "local":
        return settings
    s3 = request.getfixturevalue("seaweedfs")
    storage = {"kind": "s3", "endpoint_url": s3.endpoint_url, "access_key": s3.access_key,
               "secret_key": s3.secret_key, "region": s3.region,
               "bucket": f"sw{os.getpid()}{tmp_path.name[-6:]}".lower().replace("_", "")}
    archive = settings.archive.model_copy(update={"storage": settings.archive.storage.model_validate(storage)})
    return settings.model_copy(update={"archive": archive})


def _stage(w, name: str, data: bytes) -> str:
    """A staged (held) upload of sam's, as the staging API leaves it once ingested."""
    fid = _put_file(w["hub"], "lung", w["p"]["sam"], name, data)
    with transaction(w["hub"].sessions) as s:
        s.get(ArchiveFile, fid).hold = airlock.HOLD
    return fid


def _import(w, files: list[str]) -> str:
    r = w["c"].post("/api/v1/projects/lung/airlock/imports", json={"files": files, "purpose": "Lab values"},
                    headers=bearer(w["t"]["sam"]))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _body(hub, file_id: str) -> str | None:
    with hub.sessions() as s:
        return s.get(ArchiveFile, file_id).body_key


def _used(hub) -> int:
    with hub.sessions() as s:
        return s.scalar(select(Project.used_bytes).where(Project.slug == "lung"))


def test_sweep_removes_ended_imports_and_taken_or_old_outbox_files(world) -> None:  # noqa: F811
    w, hub, c = world, world["hub"], world["c"]
    storage = storage_for(hub)
    staged = {state: _stage(w, f"{state}.csv", f"id,v\n{state},1\n".encode() * 40)
              for state in ("rejected", "expired", "failed", "in_review", "done")}
    req = {state: _import(w, [fid]) for state, fid in staged.items()}
    key = c4gh.generate_keypair()
    assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(key.public).decode()},
                  headers=bearer(w["t"]["carl"])).status_code == 201
    taken = _put_file(hub, "lung", w["p"]["sam"], "taken.txt", b"counts per region\n" * 100)
    waiting = _put_file(hub, "lung", w["p"]["sam"], "waiting.txt", b"more counts\n" * 100)
    export = _export(w, "sam", [taken, waiting], "Carl at the registry").json()["id"]
    _drain(hub)
    assert _review(w, req["rejected"], "rita", "reject", "Not needed").json()["state"] == "rejected"
    for rid in (req["done"], export):
        _review(w, rid, "rita")
        assert _review(w, rid, "ron").json()["state"] == "approved"
    with transaction(hub.sessions) as s:
        s.get(AirlockRequest, req["expired"]).expires_at = utcnow() - dt.timedelta(minutes=1)
        s.get(AirlockRequest, req["failed"]).state = "failed"  # as a transfer that gave up leaves it
    with transaction(hub.sessions) as s:
        assert airlock.expire_due(s) == 1
    _drain(hub)
    assert _get(w, req["done"])["state"] == "done" and _get(w, export)["state"] == "done"
    box = {i["path"]: i["id"] for i in c.get("/api/v1/airlock/outbox", headers=bearer(w["t"]["carl"])).json()}
    assert c.get(f"/api/v1/airlock/outbox/{box['taken.txt']}/content",
                 headers=bearer(w["t"]["carl"])).status_code == 200
    bodies = {state: _body(hub, fid) for state, fid in staged.items()}
    with hub.sessions() as s:
        outbox = {i.path: i.body_key for i in s.scalars(select(OutboxItem))}
    assert all(storage.exists(k) for k in [*bodies.values(), *outbox.values()])
    used = _used(hub)

    # the next day: the ended imports' staged bodies and the downloaded outbox file go
    day = sweep.sweep(hub, now=utcnow() + dt.timedelta(hours=25))
    assert day == {"marked": 4, "deleted": 4}
    for state in ("rejected", "expired", "failed"):
        assert not storage.exists(bodies[state]) and _body(hub, staged[state]) is None
        got = _get(w, req[state])
        assert got["content_removed_at"] and got["files"][0]["removed_at"], got
        assert "airlock.content.removed" in _actions(hub, req[state])
    assert storage.exists(bodies["in_review"]) and storage.exists(bodies["done"])
    assert _plaintext(hub, staged["done"]).startswith(b"id,v\ndone,1")  # a landed import is the project's
    assert not storage.exists(outbox["taken.txt"]) and storage.exists(outbox["waiting.txt"])
    assert _get(w, export)["content_removed_at"] is None  # one outbox file is still waiting for Carl
    assert used - _used(hub) == sum(_size(hub, staged[s]) for s in ("rejected", "expired", "failed"))
    # a removed staged file can no longer be looked at
    assert c.get(f"/api/v1/projects/lung/airlock/requests/{req['rejected']}/files/{staged['rejected']}/preview",
                 headers=bearer(w["t"]["rita"])).status_code == 404

    # a month later: the outbox file nobody downloaded goes too; the request in review is still untouched
    month = sweep.sweep(hub, now=utcnow() + dt.timedelta(days=400))
    assert month == {"marked": 1, "deleted": 1}
    assert not storage.exists(outbox["waiting.txt"]) and storage.exists(bodies["in_review"])
    assert _get(w, export)["content_removed_at"] is not None
    late = c.get(f"/api/v1/airlock/outbox/{box['waiting.txt']}/content", headers=bearer(w["t"]["carl"]))
    assert late.status_code == 409 and "removed" in late.json()["detail"]
    assert "removed" in web_client(w["c"].app, hub, w["p"]["carl"]).get("/airlock/outbox").text
    page = web_client(w["c"].app, hub, w["p"]["alice"]).get(f"/projects/lung/airlock/{export}")
    assert 'id="content-removed"' in page.text and "content removed on" in page.text
    # idempotent: nothing left to do
    assert sweep.sweep(hub, now=utcnow() + dt.timedelta(days=400)) == {"marked": 0, "deleted": 0}


def _size(hub, file_id: str) -> int:
    with hub.sessions() as s:
        return s.get(ArchiveFile, file_id).body_size


def test_a_sweep_stopped_after_marking_is_finished_by_the_next(world) -> None:  # noqa: F811
    w, hub = world, world["hub"]
    storage = storage_for(hub)
    fid = _stage(w, "lab.csv", b"id,v\nA,1\n")
    rid = _import(w, [fid])
    _drain(hub)
    _review(w, rid, "rita", "reject", "Wrong extract")
    body = _body(hub, fid)
    with transaction(hub.sessions) as s:  # step one only, as if the worker died right after it
        assert sweep.mark(s, utcnow(), outbox_days=30) == 1
    assert storage.exists(body) and _get(w, rid)["content_removed_at"] is None
    with hub.sessions() as s:
        assert s.get(ArchiveFile, fid).state == "failed"  # unreadable from the mark on
    assert sweep.sweep(hub) == {"marked": 0, "deleted": 1}
    assert not storage.exists(body) and _get(w, rid)["content_removed_at"] is not None
    assert _actions(hub, rid).count("airlock.content.removed") == 1
