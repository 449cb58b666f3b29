"""Retention (issue 12): the last-use clock, review notices, extensions and legal holds, and deletion with
two-person approval — crypto-shredding, every stored version removed (SeaweedFS with versioning), catalogue
tombstone, entitlements ended, a signed certificate that `strongroom retention verify` checks."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import bearer, token_for, web_client
from strongroom.access.models import Entitlement
from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key
from strongroom.archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction, utcnow
from strongroom.jobs.models import Job
from strongroom.projects import service as projects
from strongroom.retention import clock, deletion, service
from strongroom.retention.models import ProjectClock, VersionClock
from strongroom.retention.rules import add_months, add_years
from support.seaweed import seaweedfs  # noqa: F401 - session fixture
from test_airlock import _drain, _put_file

END = dt.date.today() + dt.timedelta(days=365)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(settings, backend, request, tmp_path):
    if backend == "local":
        return settings
    s3 = request.getfixturevalue("seaweedfs")
    bucket = f"rt{os.getpid()}{tmp_path.name[-6:]}".lower().replace("_", "")
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    storage = {"kind": "s3", "endpoint_url": s3.endpoint_url, "access_key": s3.access_key,
               "secret_key": s3.secret_key, "region": s3.region, "bucket": bucket}
    archive = settings.archive.model_copy(update={"storage": settings.archive.storage.model_validate(storage)})
    return settings.model_copy(update={"archive": archive})


@pytest.fixture
def world(app, hub, people, client):
    ensure_key(hub)
    p = {n: people(n, admin=n.startswith("ops")) for n in ("pia", "ops1", "ops2", "rita", "mem", "out")}
    with transaction(hub.sessions) as s:
        project = projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="pia", ethics_ref="E",
                                          end_date=END)
        projects.create_project(s, Actor.system("t"), slug="other", name="Other", pi="out", ethics_ref="E",
                                end_date=END)
        project_id = project.id
    t = {n: token_for(hub, person) for n, person in p.items()}
    assert client.post("/api/v1/projects/lung/members", json={"user": "mem", "role": "member"},
                       headers=bearer(t["pia"])).status_code == 201
    files = {n: _put_file(hub, "lung", p["pia"], f"{n}.dcm", f"{n} pixels ".encode() * 500) for n in "abc"}
    with transaction(hub.sessions) as s:
        ds = Dataset(id="SRD-LUNG", project_id=project_id, title="Lung CT", created_by=p["pia"].user.id)
        s.add(ds)
        s.flush()
        for number, names in ((1, "ab"), (2, "bc")):
            v = DatasetVersion(dataset_id=ds.id, number=number, state="released", released_at=utcnow(),
                               file_count=len(names))
            s.add(v)
            s.flush()
            s.add_all(DatasetFile(version_id=v.id, file_id=files[n]) for n in names)
        s.add(CatalogEntry(dataset_id=ds.id, slug="lung-ct", title="Lung CT", created_by=p["pia"].user.id,
                           published=True, published_at=utcnow()))
    return {"c": client, "t": t, "p": p, "hub": hub, "files": files, "app": app}


def _h(w, who: str) -> dict[str, str]:
    return bearer(w["t"][who])


def _catch_up(hub) -> None:
    with transaction(hub.sessions) as s:
        clock.catch_up(s, hub.settings.retention)


def _clock(hub, number: int) -> VersionClock:
    with hub.sessions() as s:
        v = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == "SRD-LUNG",
                                                  DatasetVersion.number == number))
        c = s.get(VersionClock, v.id)
        s.expunge_all()
        return c


def _age(hub, number: int, years: int) -> None:
    """As if the version was last used ``years`` ago (the clock read everything there is first)."""
    _catch_up(hub)
    with transaction(hub.sessions) as s:
        v = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == "SRD-LUNG",
                                                  DatasetVersion.number == number))
        c = s.get(VersionClock, v.id)
        c.last_used_at = utcnow() - dt.timedelta(days=366 * years)
        clock.recompute(s, hub.settings.retention, c)


def _in_workspace(w) -> tuple[object, dict[str, str]]:
    """A client on loopback holding pia's live (unisolated, local) workspace token in lung: its plaintext reads
    are in-platform reads (archive.authz.plaintext_basis), not downloads."""
    from fastapi.testclient import TestClient

    from strongroom.identity import service as identity
    from strongroom.workspaces.models import RUNNING, Workspace

    hub, pia = w["hub"], w["p"]["pia"]
    with transaction(hub.sessions) as s:
        lung = s.scalar(select(projects.Project.id).where(projects.Project.slug == "lung"))
        token, secret = identity.create_project_token(s, Actor.system("t"), pia.user, project_id=lung,
                                                      name="workspace", scopes=["data:read"], minutes=5)
        s.add(Workspace(project_id=lung, user_id=pia.user.id, launcher="local", isolation="none", state=RUNNING,
                        token_prefix=token.prefix))
    return TestClient(w["app"], client=("127.0.0.1", 50000)), bearer(secret)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_clock_moves_with_a_read_and_an_application(world) -> None:
    w, hub, c = world, world["hub"], world["c"]
    _catch_up(hub)
    start1, start2 = _clock(hub, 1), _clock(hub, 2)
    assert start1.last_use == "release" and start1.keep_until == add_years(start1.last_used_at, 10)

    # an in-platform read (a workspace's) of file a (only in version 1) moves version 1 and the project, not version 2
    inside, headers = _in_workspace(w)
    r = inside.get(f"/api/v1/files/{w['files']['a']}/plaintext", headers=headers)
    assert r.status_code == 200 and r.content.startswith(b"a pixels")
    _catch_up(hub)
    after1, after2 = _clock(hub, 1), _clock(hub, 2)
    assert after1.last_use == "in-platform read" and after1.last_used_at > start1.last_used_at
    assert after2.last_used_at == start2.last_used_at
    with hub.sessions() as s:
        assert s.scalar(select(ProjectClock.last_use)) == "in-platform read"

    # a download (re-encrypted to the PI's key) of file c (only in version 2) moves version 2
    assert c.put("/api/v1/projects/lung/settings/download_allowed", json={"value": True},
                 headers=_h(w, "pia")).status_code == 200
    key = c4gh.generate_keypair()
    assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(key.public).decode()},
                  headers=_h(w, "pia")).status_code == 201
    r = c.get(f"/api/v1/files/{w['files']['c']}/content", headers=_h(w, "pia"))
    assert r.status_code == 200, r.text
    _catch_up(hub)
    assert _clock(hub, 2).last_use == "download" and _clock(hub, 2).last_used_at > start2.last_used_at
    assert _clock(hub, 1).last_used_at == after1.last_used_at

    # a new application is use of every released version of the dataset
    app = c.post("/api/v1/datasets/SRD-LUNG/applications", headers=_h(w, "rita"))
    assert app.status_code == 201, app.text
    _catch_up(hub)
    assert _clock(hub, 2).last_use == "application" and _clock(hub, 1).last_use == "application"

    # the class changes the period: clinical trials are kept 25 years
    r = c.put("/api/v1/datasets/SRD-LUNG/retention/class", json={"dataset_class": "clinical-trial"},
              headers=_h(w, "pia"))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["years"] == 25 and got["project_last_use"] == "application"
    v2 = next(v for v in got["versions"] if v["number"] == 2)
    assert v2["keep_until"].startswith(str(add_years(_clock(hub, 2).last_used_at, 25).date()))
    assert c.put("/api/v1/datasets/SRD-LUNG/retention/class", json={"dataset_class": "forever"},
                 headers=_h(w, "pia")).status_code == 422
    assert c.put("/api/v1/datasets/SRD-LUNG/retention/class", json={"dataset_class": "research"},
                 headers=_h(w, "mem")).status_code == 403


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_jobs_read_the_log_then_send_due_notices(world) -> None:
    w, hub = world, world["hub"]
    _age(hub, 2, 10)  # version 2 is due within months
    inside, headers = _in_workspace(w)
    assert inside.get(f"/api/v1/files/{w['files']['a']}/plaintext", headers=headers).status_code == 200
    with transaction(hub.sessions) as s:
        from strongroom.jobs import service as jobs

        jobs.enqueue(s, "retention.review")
    _drain(hub)
    assert _clock(hub, 1).last_use == "in-platform read"  # read by the review's own pass over the log
    with hub.sessions() as s:
        mails = [j.payload for j in s.scalars(select(Job).where(Job.kind == "notify.email"))]
    assert [(m["template"], m["context"]["version"]) for m in mails] == [("retention_due", 2)]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_review_notices_once_per_threshold_on_a_frozen_clock(world) -> None:
    hub = world["hub"]
    _catch_up(hub)
    keep = _clock(hub, 1).keep_until

    def notices(now: dt.datetime) -> int:
        with transaction(hub.sessions) as s:
            return service.send_notices(s, hub.settings.retention, now=now)

    assert notices(add_months(keep, -13)) == 0
    assert notices(add_months(keep, -11)) == 2  # the 12-month notice, for both versions
    assert notices(add_months(keep, -10)) == 0  # once per threshold
    assert notices(add_months(keep, -5)) == 2  # the 6-month notice
    assert notices(add_months(keep, -5)) == 0
    with hub.sessions() as s:
        mails = [j.payload for j in s.scalars(select(Job).where(Job.kind == "notify.email"))]
        events = s.scalars(select(AuditEvent.details).where(AuditEvent.action == "retention.notice")).all()
    assert len(mails) == 4 and {m["to"] for m in mails} == {"pia@example.org"}
    assert {m["template"] for m in mails} == {"retention_due"} and sorted(e["months"] for e in events) == [6, 6, 12, 12]
    # an operator's queue shows what falls due within [retention] queue_months
    w = world
    assert w["c"].get("/api/v1/retention/queue", headers=_h(w, "ops1")).json()["due"] == []
    _age(hub, 1, 10)
    due = w["c"].get("/api/v1/retention/queue", headers=_h(w, "ops1")).json()["due"]
    assert [(d["dataset_id"], d["number"]) for d in due] == [("SRD-LUNG", 1)]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_extend_and_legal_hold(world) -> None:
    w, hub, c = world, world["hub"], world["c"]
    _age(hub, 1, 11)
    keep = _clock(hub, 1).keep_until
    url = "/api/v1/datasets/SRD-LUNG/versions/1/retention"
    assert c.post(f"{url}/extend", json={"until": "2030-01-01", "reason": ""},
                  headers=_h(w, "pia")).status_code == 422  # a reason is required
    assert c.post(f"{url}/extend", json={"until": str(keep.date()), "reason": "Validation study"},
                  headers=_h(w, "pia")).status_code == 422  # must keep it longer
    assert c.post(f"{url}/extend", json={"until": "2031-06-30", "reason": "Validation study"},
                  headers=_h(w, "mem")).status_code == 403
    r = c.post(f"{url}/extend", json={"until": "2031-06-30", "reason": "Validation study of the 2026 model"},
               headers=_h(w, "pia"))
    assert r.status_code == 200, r.text
    assert _clock(hub, 1).keep_until.date() == dt.date(2031, 6, 30)
    with hub.sessions() as s:
        ev = s.scalar(select(AuditEvent).where(AuditEvent.action == "retention.extended"))
    assert ev.details["reason"] == "Validation study of the 2026 model" and ev.actor_id == w["p"]["pia"].user.id

    # a legal hold: operators only; nothing under hold is deleted, even when due
    _age(hub, 2, 11)
    hold = "/api/v1/datasets/SRD-LUNG/versions/2/retention/hold"
    assert c.put(hold, json={"reason": "Litigation 2026:14"}, headers=_h(w, "pia")).status_code == 403
    assert c.put(hold, json={"reason": "Litigation 2026:14"}, headers=_h(w, "ops1")).status_code == 200
    r = c.post("/api/v1/datasets/SRD-LUNG/versions/2/deletion", json={"reason": "Past its date"},
               headers=_h(w, "pia"))
    assert r.status_code == 409 and "legal hold" in r.json()["detail"]
    assert [h["number"] for h in c.get("/api/v1/retention/queue", headers=_h(w, "ops2")).json()["held"]] == [2]
    assert c.post(f"{hold}/lift", json={"reason": "Case closed"}, headers=_h(w, "ops2")).status_code == 200
    assert c.post("/api/v1/datasets/SRD-LUNG/versions/2/deletion", json={"reason": "Past its date"},
                  headers=_h(w, "pia")).status_code == 201
    # a hold set while a request waits for its approval ends that request
    assert c.put(hold, json={"reason": "Litigation 2026:15"}, headers=_h(w, "ops1")).status_code == 200
    v2 = next(v for v in c.get("/api/v1/datasets/SRD-LUNG/retention", headers=_h(w, "pia")).json()["versions"]
              if v["number"] == 2)
    assert v2["deletion"] is None and v2["legal_hold"] == "Litigation 2026:15"
    assert v2["legal_hold_by"] == str(w["p"]["ops1"].user.id)
    # version 1 is extended: not due
    r = c.post("/api/v1/datasets/SRD-LUNG/versions/1/deletion", json={"reason": "Past its date"},
               headers=_h(w, "pia"))
    assert r.status_code == 409 and "kept until 2031-06-30" in r.json()["detail"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_outsiders_get_404(world) -> None:
    w, c = world, world["c"]
    _age(w["hub"], 1, 11)
    d = c.post("/api/v1/datasets/SRD-LUNG/versions/1/deletion", json={"reason": "Past its date"},
               headers=_h(w, "pia")).json()
    for method, url, body in (
            ("get", "/api/v1/datasets/SRD-LUNG/retention", None),
            ("put", "/api/v1/datasets/SRD-LUNG/retention/class", {"dataset_class": "research"}),
            ("post", "/api/v1/datasets/SRD-LUNG/versions/1/retention/extend", {"until": "2099-01-01",
                                                                               "reason": "mine now"}),
            ("put", "/api/v1/datasets/SRD-LUNG/versions/1/retention/hold", {"reason": "mine now"}),
            ("post", "/api/v1/datasets/SRD-LUNG/versions/1/deletion", {"reason": "mine now"}),
            ("get", f"/api/v1/retention/deletions/{d['id']}", None),
            ("post", f"/api/v1/retention/deletions/{d['id']}/approve", None),
            ("get", f"/api/v1/retention/deletions/{d['id']}/certificate", None),
            ("get", "/api/v1/retention/queue", None),
            ("get", "/api/v1/datasets/SRD-NONE/retention", None)):
        r = getattr(c, method)(url, headers=_h(w, "out"), **({"json": body} if body is not None else {}))
        assert r.status_code == 404, (url, r.status_code, r.text)
    assert c.get("/api/v1/retention/queue", headers=_h(w, "pia")).status_code == 404  # a PI is no operator

    # the pages: the operator's queue lists the due version and the request; outsiders see nothing
    ops, pia, out = (web_client(w["app"], w["hub"], w["p"][n]) for n in ("ops1", "pia", "out"))
    page = ops.get("/retention")
    assert page.status_code == 200 and "SRD-LUNG" in page.text and f"/retention/deletions/{d['id']}" in page.text
    assert pia.get("/retention").status_code == 404
    assert "Request a deletion" in pia.get("/datasets/SRD-LUNG/retention").text
    assert "Legal hold" in ops.get("/datasets/SRD-LUNG/retention").text
    for url in ("/retention", "/datasets/SRD-LUNG/retention", f"/retention/deletions/{d['id']}",
                f"/retention/deletions/{d['id']}/certificate.json", "/retention/deletions/not-a-uuid"):
        assert out.get(url).status_code == 404, url


def _versions(w, key: str) -> list[str]:
    return deletion.remaining(storage_for(w["hub"]), key)


def test_two_person_deletion_leaves_nothing_behind_and_the_certificate_verifies(world, backend, tmp_path,
                                                                                monkeypatch) -> None:
    w, hub, c = world, world["hub"], world["c"]
    storage = storage_for(hub)
    with hub.sessions() as s:
        keys = {n: s.get(ArchiveFile, fid).body_key for n, fid in w["files"].items()}
    if backend == "s3":  # an older version of a body hides behind the current one on a versioned bucket
        storage._client.put_object(Bucket=storage.bucket, Key=keys["a"], Body=b"an older copy")
        assert len(_versions(w, keys["a"])) == 2
    with transaction(hub.sessions) as s:
        s.add(Entitlement(user_id=w["p"]["rita"].user.id, dataset_id="SRD-LUNG", version=1,
                          starts_at=utcnow(), ends_at=utcnow() + dt.timedelta(days=30)))
    _age(hub, 1, 11)

    # requested by the PI; the requester cannot approve, nor can a non-operator; a second operator can
    r = c.post("/api/v1/datasets/SRD-LUNG/versions/1/deletion", json={"reason": "Ten years unused"},
               headers=_h(w, "ops1"))
    assert r.status_code == 201, r.text
    d = r.json()["id"]
    r = c.post(f"/api/v1/retention/deletions/{d}/approve", headers=_h(w, "ops1"))
    assert r.status_code == 403 and "second person" in r.json()["detail"]
    assert c.post(f"/api/v1/retention/deletions/{d}/approve", headers=_h(w, "pia")).status_code == 403
    stale = token_for(hub, w["p"]["ops2"])
    with transaction(hub.sessions) as s:  # a token minted long ago: no fresh MFA
        from strongroom.identity.models import ApiToken
        for tok in s.scalars(select(ApiToken).where(ApiToken.user_id == w["p"]["ops2"].user.id)):
            tok.created_at = utcnow() - dt.timedelta(hours=5)
    assert c.post(f"/api/v1/retention/deletions/{d}/approve", headers=bearer(stale)).status_code in (401, 403)
    fresh = token_for(hub, w["p"]["ops2"])
    r = c.post(f"/api/v1/retention/deletions/{d}/approve", headers=bearer(fresh))
    assert r.status_code == 200 and r.json()["state"] == "approved", r.text

    # a crash between steps: the purge dies after the headers were shredded; the job's retry resumes
    real = deletion.purge_object
    monkeypatch.setattr(deletion, "purge_object", lambda *a: (_ for _ in ()).throw(OSError("power cut")))
    with pytest.raises(OSError):
        deletion.run(hub, __import__("uuid").UUID(d))
    got = c.get(f"/api/v1/retention/deletions/{d}", headers=_h(w, "pia")).json()
    assert got["state"] == "shredded", got
    with hub.sessions() as s:
        a = s.get(ArchiveFile, w["files"]["a"])
        assert a.header is None and a.state == "deleted" and a.body_key == keys["a"]
    monkeypatch.setattr(deletion, "purge_object", real)
    _drain(hub)  # the job runs it to the end
    got = c.get(f"/api/v1/retention/deletions/{d}", headers=_h(w, "pia")).json()
    assert got["state"] == "certified" and got["files"] == 1, got
    assert set(got["audit_seqs"]) == {"requested", "approved", "marked", "shredded", "purged", "verified",
                                      "certified"}

    # nothing of file a is left (every version on S3); file b stays: version 2 still has it
    assert _versions(w, keys["a"]) == []
    if backend == "s3":
        listed = storage._client.list_object_versions(Bucket=storage.bucket, Prefix=keys["a"])
        assert not listed.get("Versions") and not listed.get("DeleteMarkers")
    assert storage.exists(keys["b"]) and storage.exists(keys["c"])
    with hub.sessions() as s:
        assert s.get(ArchiveFile, w["files"]["a"]).body_key is None
        ent = s.scalar(select(Entitlement).where(Entitlement.version == 1))
        assert ent.revoked_at is not None
        assert s.scalar(select(DatasetVersion.state).where(DatasetVersion.number == 1)) == "deleted"
        assert s.scalar(select(CatalogEntry.published))  # version 2 is still released
    assert c.get(f"/api/v1/files/{w['files']['a']}/plaintext", headers=_h(w, "pia")).status_code in (404, 409)

    # the certificate: downloadable, what/when/who/checksums/audit numbers, signed; verify proves it
    r = c.get(f"/api/v1/retention/deletions/{d}/certificate", headers=_h(w, "pia"))
    assert r.status_code == 200
    cert = r.json()["certificate"]
    with hub.sessions() as s:
        a = s.get(ArchiveFile, w["files"]["a"])
        assert cert["files"] == [{"file": a.id, "path_sha256": deletion.path_digest("a.dcm"),
                                  "plaintext_size": a.plaintext_size,
                                  "plaintext_sha256": a.plaintext_sha256, "plaintext_md5": a.plaintext_md5,
                                  "body_size": a.body_size, "body_sha256": a.body_sha256, "object": keys["a"]}]
        seqs = {e.action.rsplit(".", 1)[-1]: e.seq for e in s.scalars(
            select(AuditEvent).where(AuditEvent.action.like("retention.deletion.%")))}
    assert cert["requested"]["id"] == str(w["p"]["ops1"].user.id)
    assert cert["approved"]["id"] == str(w["p"]["ops2"].user.id)
    assert cert["kept_in_other_versions"] == [{"file": w["files"]["b"], "path_sha256": deletion.path_digest("b.dcm"),
                                               "in_versions": [2]}]
    assert set(cert["audit_seqs"]) == set(seqs) - {"certified"}  # the certificate's own event comes after it
    assert all(seqs[step] == n for step, n in cert["audit_seqs"].items())
    path = tmp_path / "cert.json"
    path.write_text(r.text)
    ok = _verify(hub, str(path))
    assert ok.exit_code == 0 and "OK" in ok.output, ok.output
    assert _verify(hub, "SRD-LUNG:1").exit_code == 0
    tampered = json.loads(r.text)
    tampered["certificate"]["files"][0]["plaintext_sha256"] = "0" * 64
    path.write_text(json.dumps(tampered))
    bad = _verify(hub, str(path))
    assert bad.exit_code == 3 and "changed after it was signed" in bad.output, bad.output
    assert _verify(hub, "SRD-LUNG:2").exit_code == 4
    # and an object that came back is found
    storage.put_bytes(keys["a"], b"restored from a backup")
    path.write_text(r.text)
    back = _verify(hub, str(path))
    assert back.exit_code == 1 and keys["a"] in back.output, back.output


def _verify(hub, what: str):
    return _cli(hub, "verify", what)


def _cli(hub, *args: str):
    """`strongroom retention ARGS` against this test's hub (its settings through the environment)."""
    from strongroom.config import get_settings
    from strongroom.retention.cli import app as cli

    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args), env=_cli_env(hub))
    finally:
        get_settings.cache_clear()


def _cli_env(hub) -> dict[str, str]:
    s = hub.settings
    env = {"STRONGROOM_VAR_DIR": str(s.var_dir), "STRONGROOM_DATABASE_URL": s.database_url,
           "STRONGROOM_SECRET_KEY": s.secret_key.get_secret_value()}
    st = s.archive.storage
    if st.kind == "s3":
        env.update({"STRONGROOM_ARCHIVE__STORAGE__KIND": "s3", "STRONGROOM_ARCHIVE__STORAGE__BUCKET": st.bucket,
                    "STRONGROOM_ARCHIVE__STORAGE__ENDPOINT_URL": st.endpoint_url or "",
                    "STRONGROOM_ARCHIVE__STORAGE__ACCESS_KEY": st.access_key.get_secret_value(),
                    "STRONGROOM_ARCHIVE__STORAGE__SECRET_KEY": st.secret_key.get_secret_value()})
    return env


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_deleting_the_last_version_withdraws_the_catalogue_entry(world) -> None:
    w, hub, c = world, world["hub"], world["c"]
    for n in (1, 2):
        _age(hub, n, 11)
        d = c.post(f"/api/v1/datasets/SRD-LUNG/versions/{n}/deletion", json={"reason": "Unused"},
                   headers=_h(w, "pia")).json()["id"]
        assert c.post(f"/api/v1/retention/deletions/{d}/approve", headers=_h(w, "ops1")).status_code == 200
        if n == 1:
            _drain(hub)
        else:  # by hand on the hub host, as after a worker outage; the queued job then finds nothing to do
            done = _cli(hub, "resume", d)
            assert done.exit_code == 0 and "certified" in done.output, done.output
            _drain(hub)
    with hub.sessions() as s:
        entry = s.scalar(select(CatalogEntry))
        assert not entry.published and entry.withdrawn_at is not None
        assert s.scalar(select(AuditEvent.actor).where(AuditEvent.action == "catalog.entry.unpublished")) == "retention"
        gone = s.scalars(select(ArchiveFile.state)).all()
    assert gone == ["deleted"] * 3  # b went with version 2, the last version holding it
