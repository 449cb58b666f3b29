"""A project that has ended hands its members none of its data (audit finding, MEDIUM).

A project ends when a platform administrator closes it or when its end date — its ethics approval's and
contract's — passes (``projects.service.project_ended``; the workspaces' check stops workspaces on the same two
conditions). From then on every route that would hand one of its members the project's data, or anything made
from it, refuses them with 403 naming the end (they know the project; an outsider still gets 404, as for a
made-up id). The rule sits in two places only: ``open_project`` (deny by default; the winding-up routes ask
``managing=True``) and ``archive.authz.readable_projects`` (the read check behind files, DRS, ZIPs, DICOMweb
retrieval, fsspec and SFTP), with the per-request and per-process decision caches keyed so that neither a close
(anywhere) nor a passing end date is missed.

What winding up needs stays open to the PI and operators: the project page (saying it ended), members and
settings, the audit log, fees, the retention of its datasets and its GPU bookings. What the project shared out
keeps working — an entitlement (its own end date and revocation) and a share into another project: a released
dataset outlives its project (docs: research data is kept for validation; retention decides when it goes).

- ``test_every_route_hands_a_closed_projects_member_nothing``: over the whole hub (test_web_messages' world,
  every GET route enumerated from the app): what a member reached before the close is refused after it, except
  the winding-up routes and the published dataset's public face; every write is refused; outsiders still 404.
- ``test_data_routes_refuse_an_ended_project``: each data route named (API, web, DRS, DICOMweb, the quarantine
  review read, a workspace's token, fsspec), for a project closed and for one past its end date: 200 before,
  403 after, 404 for an outsider throughout; entitlements and shares keep reading; reopened, it reads again.
- ``test_sftp_refuses_an_ended_project``: the real SFTP server and client: listing, reading, writing, and a
  file held open (refused at its next read).
- decision caches: a close made in another process, and an end date passing with nothing written.

Fails on the old code: only uploads and new workspaces looked at the project's status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import fsspec
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

import test_web_messages as walked
from conftest import bearer, token_for, web_client
from helpers import csrf_for
from imaging_support import make_project, ultrasound, write_corpus
from strongroom import decision_cache
from strongroom.access.models import AccessPolicy, Entitlement
from strongroom.archive import authz, c4gh
from strongroom.archive.models import ArchiveFile, DatasetShare
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.errors import Forbidden
from strongroom.fs import StrongroomFileSystem
from strongroom.identity import service as identity
from strongroom.identity.models import User
from strongroom.identity.principal import SCOPES, Principal
from strongroom.imaging import bulk
from strongroom.imaging.models import ImportedInstance
from strongroom.jobs.models import Job
from strongroom.projects import service as projects
from strongroom.projects.models import Project, ProjectSetting
from strongroom.vai.models import Release
from support.live import free_port, serving
from test_decision_cache import _elsewhere
from test_outsiders import (
    API,
    FORM_FILES,
    FORMS,
    JSON_BODIES,
    NOT_A_PROJECT_THING,
    OWN_RECORDS,
    QUERY,
    RAW_BODIES,
    SAME_FOR_EVERY_ID,
    _canaries,
    _filled,
    _refusals,
    _routes,
    _row_counts,
    _url,
    _values,
    _walk,
)
from test_sftp import Hubsftp, _allow_downloads, _ingest
from test_sftp import world as sftp_world  # noqa: F401 - the real SFTP server and its users, as a fixture
from test_web_messages import FLASH, form_routes

settings, world = walked.settings, walked.world  # the walked world's hub settings and the world itself

YESTERDAY = dt.date.today() - dt.timedelta(days=1)
ENDED = re.compile(r"is closed: its members no longer reach its data|ended on \d{4}-\d{2}-\d{2}: its members")
if "strongroom" not in fsspec.available_protocols():
    fsspec.register_implementation("strongroom", "strongroom.fs.StrongroomFileSystem")


def _refused_as_ended(r: httpx.Response) -> bool:
    return r.status_code == 403 and ENDED.search(r.text.replace("&#39;", "'")) is not None


def _end(c: TestClient, admin_token: str, slug: str, how: str) -> None:
    """End the project through the administrators' API: closed, or its end date moved into the past."""
    change = {"status": "closed"} if how == "closed" else {"end_date": YESTERDAY.isoformat()}
    r = c.patch(f"/api/v1/admin/projects/{slug}", json=change, headers=bearer(admin_token))
    assert r.status_code == 200, r.text


def _reopen(c: TestClient, admin_token: str, slug: str) -> None:
    later = (dt.date.today() + dt.timedelta(days=90)).isoformat()
    r = c.patch(f"/api/v1/admin/projects/{slug}", json={"status": "active", "end_date": later},
                headers=bearer(admin_token))
    assert r.status_code == 200, r.text


# -- the whole hub ------------------------------------------------------------------------------------------------
# GET routes a member still reaches once the project ended: none of them hands out its data. The project's page,
# members and settings; its GPU bookings (see and cancel them: a closed project holds no GPUs it cannot use); the
# retention of its datasets and their deletions (what keeping and deleting its data needs).
WINDING_UP = {
    "/projects/{slug}", "/api/v1/projects/{slug}", "/api/v1/projects/{slug}/members",
    "/api/v1/projects/{slug}/settings", "/projects/{slug}/compute", "/api/v1/compute/projects/{slug}/bookings",
    "/api/v1/compute/projects/{slug}/budget", "/api/v1/compute/projects/{slug}/calendar",
    "/datasets/{dataset_id}/retention", "/api/v1/datasets/{dataset_id}/retention",
    "/retention/deletions/{deletion_id}", "/api/v1/retention/deletions/{deletion_id}",
}
WINDING_UP_WRITES = {  # (refused here for the member's missing right, or done: cancelling a booking)
    ("POST", "/api/v1/projects/{slug}/members"), ("PATCH", "/api/v1/projects/{slug}/members/{user_id}"),
    ("DELETE", "/api/v1/projects/{slug}/members/{user_id}"),
    ("PUT", "/api/v1/projects/{slug}/members/{user_id}/rights"),
    ("PUT", "/api/v1/projects/{slug}/settings/{key}"), ("POST", "/projects/{slug}/members"),
    ("POST", "/projects/{slug}/members/{user_id}/role"), ("POST", "/projects/{slug}/members/{user_id}/rights"),
    ("POST", "/projects/{slug}/members/{user_id}/remove"), ("POST", "/projects/{slug}/settings/{key}"),
    ("DELETE", "/api/v1/compute/projects/{slug}/bookings/{booking_id}"),
    ("POST", "/projects/{slug}/compute/bookings/{booking_id}/cancel"),
}
# Applying for a dataset — the project's own included — is the way to its data that does not go through the
# project: the dataset's access committee decides (an entitlement has its own end date). Its page shows the title.
APPLYING = {("POST", "/api/v1/datasets/{dataset_id}/applications"), ("POST", "/apply/{dataset_id}")}
APPLY_PAGE = "/apply/{dataset_id}"
# The published dataset's public face (anyone's: test_outsiders), which a member of its project is shown too.
PUBLIC_FACE = {"/datasets/{dataset_id}", "/datasets/{dataset_id}/versions/{number}"}
# Refused before the project is looked at (test_outsiders: a STOW-RS body that is no multipart DICOM).
BEFORE_ACCESS = {("POST", "/dicomweb/projects/{slug}/studies"): 415,
                 ("POST", "/dicomweb/projects/{slug}/studies/{study}"): 415,
                 # a workspace answers on the workspaces' own origin only: on the hub's, anything but opening it is
                 # not found, for every project alike (test_workspace_origin)
                 **{(method, f"/projects/{{slug}}/workspaces/{{workspace_id}}{rest}"): 404
                    for method in ("DELETE", "OPTIONS", "PATCH", "POST", "PUT", "HEAD")
                    for rest in ("", "/{path:path}")}}
CHANGED_BY_WRITES = {"compute_gpu_slots", "compute_bookings", "access_applications", "access_application_events",
                     "notify_outbox", "jobs"}


def _gets(app: Any, web: TestClient, headers: dict[str, str], values: dict[str, str], demo: dict[str, str]
          ) -> dict[tuple[str, str], httpx.Response]:
    """Every GET route taking an id, asked with chest's ids (and the published dataset's where it takes one)."""
    out = {}
    for method, template in _routes(app):
        if method != "GET" or "{" not in template or template in NOT_A_PROJECT_THING:
            continue
        for name, with_values in (("own", values), ("published", demo)) if "{dataset_id}" in template \
                else (("own", values),):
            out[template, name] = web.get(_url(template, with_values), params=QUERY.get(template),
                                          headers=headers if template.startswith(API) else {})
    return out


def _writes(app: Any, web: TestClient, headers: dict[str, str], values: dict[str, str], demo: dict[str, str]
            ) -> list[str]:
    """Every write route with chest's ids, as a member would send it: what was not refused as it should be."""
    forms, wrong = form_routes(app), []
    for method, template in _routes(app):
        if method == "GET" or "{" not in template or template in NOT_A_PROJECT_THING \
                or (method, template) in SAME_FOR_EVERY_ID:
            continue
        for with_values in (values, demo) if "{dataset_id}" in template else (values,):
            url = _url(template, with_values)
            if (method, template) in RAW_BODIES:
                content, kind = RAW_BODIES[method, template]
                r = web.request(method, url, params=QUERY.get(template), headers=headers | {"Content-Type": kind},
                                content=content)
            elif template.startswith(API):
                r = web.request(method, url, headers=headers,
                                json=_filled(JSON_BODIES.get((method, template), {}), with_values))
            elif template in forms:
                r = web.post(url, data={**FORMS.get(template, {}), "csrf_token": csrf_for(web)},
                             files=FORM_FILES.get(template), follow_redirects=True)
            else:
                continue
            flash = FLASH.search(r.text)
            succeeded = r.status_code < 400 and not (flash and flash.group(1) == "error")
            if (method, template) in WINDING_UP_WRITES | APPLYING:
                if r.status_code >= 500:
                    wrong.append(f"{method} {url} → {r.status_code}")
            elif (method, template) in BEFORE_ACCESS:
                if r.status_code != BEFORE_ACCESS[method, template]:
                    wrong.append(f"{method} {url} → {r.status_code}")
            elif succeeded or r.status_code >= 500:
                wrong.append(f"{method} {url} → {r.status_code} (a write into an ended project) {r.text[:200]!r}")
            elif "{slug}" in template and "/admin/" not in template and not _refused_as_ended(r) \
                    and template != "/api/v1/compute/projects/{slug}/budget":  # (the operators' budget: 404)
                wrong.append(f"{method} {url} → {r.status_code} (want 403: the project ended) {r.text[:200]!r}")
    return wrong


def test_every_route_hands_a_closed_projects_member_nothing(app, hub, world, people) -> None:
    """memo works in chest (a member with read-data, write-data, import): every GET route he reached before an
    administrator closed chest answers 403 naming the close afterwards — the winding-up routes and the published
    dataset's public face excepted — and none he could not reach opens; every write into chest is refused; his
    lists across projects show nothing of chest's; eve, an outsider, still gets 404 everywhere."""
    _walk(world)
    with transaction(hub.sessions) as s:  # downloads open: the byte routes answer too, so their refusal is the close's
        chest = s.scalar(select(Project).where(Project.slug == "chest"))
        s.add(ProjectSetting(project_id=chest.id, key="download_allowed", value=True, changed_by=chest.pi_id))
    values, canaries = _values(world), _canaries(world)
    with hub.sessions() as s:  # a released report the evaluation made (the walk also adds one with no content)
        values["report_id"] = values["release_id"] = next(
            str(r.id) for r in s.scalars(select(Release).order_by(Release.id)) if "metrics" in (r.report or {}))
    demo = {**values, "dataset_id": world.ids["demo"]}
    web, headers = world.c("memo"), bearer(token_for(hub, world.people["memo"]))
    key = c4gh.public_key_file(c4gh.generate_keypair().public).decode()  # (re-encrypted downloads need his key)
    assert web.post("/api/v1/me/keys", json={"name": "laptop", "public_key": key}, headers=headers).status_code == 201
    before = _gets(app, web, headers, values, demo)
    reached = {key for key, r in before.items() if r.status_code < 300}
    bytes_routes = {"/api/v1/files/{file_id}/plaintext", "/api/v1/files/{file_id}/content",
                    "/ga4gh/drs/v1/objects/{object_id}/access/{access_id}",
                    "/datasets/{dataset_id}/versions/{number}/download.zip",
                    "/dicomweb/projects/{slug}/studies/{study}/series/{series}/instances/{sop}"}
    assert {t for t, _ in reached} >= WINDING_UP | bytes_routes, "the world no longer reaches these"

    _end(world.fresh(), token_for(hub, world.people["pia"]), "chest", "closed")
    after = _gets(app, web, headers, values, demo)
    wrong = []
    for (template, which), r in sorted(after.items()):
        was = before[template, which]
        if (template, which) not in reached:
            if r.status_code < 300:
                wrong.append(f"GET {r.request.url} → {r.status_code}: the close opened it (was {was.status_code})")
        elif template in WINDING_UP | {APPLY_PAGE} or (which == "published" and template in PUBLIC_FACE):
            if r.status_code >= 300:
                wrong.append(f"GET {r.request.url} → {r.status_code}: winding up needs it {r.text[:200]!r}")
        elif not _refused_as_ended(r):
            wrong.append(f"GET {r.request.url} → {r.status_code} (want 403: the project is closed) {r.text[:200]!r}")
    for method, template in _routes(app):  # his lists across projects: nothing of chest's (his own records aside)
        if method == "GET" and "{" not in template and template not in OWN_RECORDS | NOT_A_PROJECT_THING:
            r = web.get(template, params=QUERY.get(template), headers=headers if template.startswith(API) else {})
            if shown := {c for c in canaries if c in r.text}:
                wrong.append(f"GET {template} → {r.status_code} shows {sorted(shown)[:3]}")
    before_rows = _row_counts(world)
    wrong += _writes(app, web, headers, values, demo)
    changed = {t for t, n in _row_counts(world).items()
               if n != before_rows[t] and t not in CHANGED_BY_WRITES | {"audit_events", "audit_head", "web_sessions"}}
    assert not wrong, "\n".join(wrong)
    assert not changed, f"refused writes into a closed project changed rows: {changed}"

    eve = people("eve")  # another customer: every route still 404 for her, never "closed"
    make_project(hub, "eves", "eve")
    assert not _refusals(app, web_client(app, hub, eve), bearer(token_for(hub, eve)), values, demo, canaries)


# -- each data route, named -----------------------------------------------------------------------------------
@pytest.fixture
def lung(app, hub, people, tmp_path: Path) -> dict[str, Any]:
    """lung (alice, PI, no operator): sam a steward (import: reviews the quarantine), mia a member; an imaging
    import (a dataset, one instance held in quarantine); downloads open; the dataset shared into bob's project and
    granted to rita (an approved applicant); eve another customer; root an operator. Everyone has a crypt4gh key."""
    names = ("alice", "sam", "mia", "rita", "bob", "eve", "root")
    persons = {name: people(name, admin=name == "root") for name in names}
    for slug, pi in (("lung", "alice"), ("other", "bob"), ("eves", "eve")):
        make_project(hub, slug, pi)
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    tokens = {name: token_for(hub, p) for name, p in persons.items()}
    for user, role in (("sam", "steward"), ("mia", "member")):
        r = c.post("/api/v1/projects/lung/members", json={"user": user, "role": role},
                   headers=bearer(tokens["alice"]))
        assert r.status_code == 201, r.text
    write_corpus(tmp_path / "in", patients=1, studies=1, instances=2)
    (tmp_path / "in" / "us.dcm").write_bytes(ultrasound())
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "in", workers=1)
    assert (report.archived, report.quarantined) == (2, 1)
    dataset = c.get("/api/v1/projects/lung/imaging", headers=bearer(tokens["alice"])).json()["dataset_id"]
    now = dt.datetime.now(dt.UTC)
    with transaction(hub.sessions) as s:
        lung_id, other_id = (s.scalar(select(Project.id).where(Project.slug == slug)) for slug in ("lung", "other"))
        for pid in (lung_id, other_id):
            s.add(ProjectSetting(project_id=pid, key="download_allowed", value=True,
                                 changed_by=persons["root"].user.id))
        s.add(DatasetShare(dataset_id=dataset, project_id=other_id, shared_by=persons["alice"].user.id))
        s.add(Entitlement(user_id=persons["rita"].user.id, dataset_id=dataset, version=None,
                          starts_at=now - dt.timedelta(days=1), ends_at=now + dt.timedelta(days=30)))
        s.add(AccessPolicy(dataset_id=dataset, form_name="imaging-request", terms_name="standard-dua",
                           applicant_download=True))
        instance = s.scalar(select(ImportedInstance).where(ImportedInstance.project_id == lung_id,
                                                           ImportedInstance.state == "published").limit(1))
        held = s.scalar(select(ArchiveFile.id).where(ArchiveFile.project_id == lung_id, ArchiveFile.hold.is_not(None)))
        # a workspace's credential: bound to lung, minted for mia (workspaces.service.start does exactly this)
        mia = s.get(User, persons["mia"].user.id)
        _, workspace_token = identity.create_project_token(s, Actor.system("workspaces"), mia, project_id=lung_id,
                                                           name="workspace", scopes=["data:read", "projects:read"],
                                                           minutes=60)
    for name in tokens:
        key = c4gh.generate_keypair()
        assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(
            key.public).decode()}, headers=bearer(tokens[name])).status_code == 201
    return {"c": c, "t": tokens, "people": persons, "dataset": dataset, "file": instance.file_id, "held": held,
            "study": instance.study_uid, "series": instance.series_uid, "sop": instance.sop_instance_uid,
            "workspace_token": workspace_token, "key": tmp_path}


Ask = Callable[[dict[str, Any], str], httpx.Response]  # (the world, who asks) -> the answer


def _api(method: str, path: str, headers: dict[str, str] | None = None) -> Ask:
    headers = headers or {}

    def ask(w: dict[str, Any], who: str) -> httpx.Response:
        token = w["workspace_token"] if who == "workspace" else w["t"][who]
        return w["c"].request(method, path.format(**w), headers=bearer(token) | headers)
    return ask


def _page(path: str) -> Ask:
    def ask(w: dict[str, Any], who: str) -> httpx.Response:
        return web_client(w["c"].app, w["c"].app.state.hub, w["people"][who]).get(path.format(**w))
    return ask


def _drs_bulk(w: dict[str, Any], who: str) -> httpx.Response:
    """The bulk object route answers 200 with the unresolved ids' statuses: shown as the file's status."""
    r = w["c"].post("/ga4gh/drs/v1/objects", json={"bulk_object_ids": [w["file"]]}, headers=bearer(w["t"][who]))
    body = r.json()
    if "summary" not in body or body["summary"]["resolved"] == 1:  # (none resolved: the answer is their status)
        return r
    (unresolved,) = body["unresolved_drs_objects"]
    return httpx.Response(unresolved["error_code"], json={"detail": unresolved.get("error_msg", "")},
                          request=r.request)


RANGE = {"Range": "bytes=0-99"}
SERIES = "/dicomweb/projects/lung/studies/{study}/series/{series}"
# (what, who asks: a member, the steward reviewing the quarantine, a workspace's own token) -> how
DATA_ROUTES: dict[tuple[str, str], Ask] = {
    ("file metadata", "mia"): _api("GET", "/api/v1/files/{file}"),
    ("crypt4gh download, a range", "mia"): _api("GET", "/api/v1/files/{file}/content", headers=RANGE),
    ("plaintext, a range", "mia"): _api("GET", "/api/v1/files/{file}/plaintext", headers=RANGE),
    ("the project's files", "mia"): _api("GET", "/api/v1/projects/lung/files"),
    ("the project's datasets", "mia"): _api("GET", "/api/v1/projects/lung/datasets"),
    ("a dataset", "mia"): _api("GET", "/api/v1/datasets/{dataset}"),
    ("a version's files", "mia"): _api("GET", "/api/v1/datasets/{dataset}/versions/1/files"),
    ("DRS object", "mia"): _api("GET", "/ga4gh/drs/v1/objects/{file}"),
    ("DRS bundle (the dataset)", "mia"): _api("GET", "/ga4gh/drs/v1/objects/{dataset}"),
    ("DRS access URL, crypt4gh", "mia"): _api("GET", "/ga4gh/drs/v1/objects/{file}/access/crypt4gh"),
    ("DRS access URL, plaintext", "mia"): _api("GET", "/ga4gh/drs/v1/objects/{file}/access/plaintext"),
    ("DRS bulk objects", "mia"): _drs_bulk,
    ("QIDO-RS studies", "mia"): _api("GET", "/dicomweb/projects/lung/studies"),
    ("QIDO-RS instances", "mia"): _api("GET", "/dicomweb/projects/lung/instances"),
    ("WADO-RS metadata", "mia"): _api("GET", SERIES + "/metadata"),
    ("WADO-RS instance", "mia"): _api("GET", SERIES + "/instances/{sop}"),
    ("WADO-RS rendered", "mia"): _api("GET", SERIES + "/instances/{sop}/rendered"),
    ("web download", "mia"): _page("/files/{file}/download"),
    ("web ZIP of a version", "mia"): _page("/datasets/{dataset}/versions/1/download.zip"),
    ("web dataset page", "mia"): _page("/datasets/{dataset}"),
    ("web files page", "mia"): _page("/projects/lung/data"),
    ("web image viewer", "mia"): _page("/projects/lung/viewer"),
    ("quarantine list", "sam"): _api("GET", "/api/v1/projects/lung/imaging/quarantine"),
    ("quarantine review read", "sam"): _api("GET", "/api/v1/files/{held}/plaintext"),
    ("a workspace's token", "workspace"): _api("GET", "/api/v1/files/{file}/plaintext", headers=RANGE),
}


def _fsspec_reads(w: dict[str, Any], url: str) -> bytes | Exception:
    StrongroomFileSystem.clear_instance_cache()
    fs = StrongroomFileSystem(url=url, token=w["t"]["mia"])
    try:
        if "fsspec_path" not in w:  # (found while readable; fsspec's walk omits a folder it may not list)
            w["fsspec_path"] = fs.find(f"strongroom://lung/{w['dataset']}")[0]
        return fs.cat_file(f"strongroom://{w['fsspec_path']}", 0, 100)
    except (OSError, ValueError) as exc:
        return exc


@pytest.mark.parametrize("how", ["closed", "ended"])
def test_data_routes_refuse_an_ended_project(app, hub, lung, how) -> None:
    """Each data route: the member reads before; once the project is closed by an administrator (or its end date
    has passed) the member is refused with 403 naming it, while an outsider gets 404 before and after; what was
    shared out — rita's entitlement, the share into bob's project — keeps reading; reopened, it reads again."""
    w, c = lung, lung["c"]
    admin = w["t"]["root"]

    def answers(who_override: str | None = None) -> dict[str, httpx.Response]:
        return {what: ask(w, who_override or who) for (what, who), ask in DATA_ROUTES.items()
                if who_override is None or who != "workspace"}

    def kept() -> dict[str, int]:
        content = f"/api/v1/files/{w['file']}/content"
        return {"rita (entitlement)": c.get(content, headers=bearer(w["t"]["rita"]) | RANGE).status_code,
                "bob (share)": c.get(content, headers=bearer(w["t"]["bob"]) | RANGE).status_code,
                "rita's DRS access": c.get(f"/ga4gh/drs/v1/objects/{w['file']}/access/crypt4gh",
                                           headers=bearer(w["t"]["rita"])).status_code}

    with serving(app, free_port()) as url:
        before = answers()
        assert {what: r.status_code for what, r in before.items() if r.status_code not in (200, 206)} == {}
        assert isinstance(_fsspec_reads(w, url), bytes)
        outsider_before = {what: r.status_code for what, r in answers("eve").items()}
        assert kept() == {"rita (entitlement)": 206, "bob (share)": 206, "rita's DRS access": 200}

        _end(c, admin, "lung", how)
        after = answers()
        wrong = {what: (r.status_code, r.text[:160]) for what, r in after.items() if not _refused_as_ended(r)}
        assert wrong == {}, "\n".join(f"{k}: {v}" for k, v in wrong.items())
        word = "is closed" if how == "closed" else f"ended on {YESTERDAY.isoformat()}"
        assert word in after["plaintext, a range"].json()["detail"]
        refused = _fsspec_reads(w, url)
        assert isinstance(refused, PermissionError) and ENDED.search(str(refused)), refused
        outsider_after = {what: r.status_code for what, r in answers("eve").items()}
        assert outsider_before == outsider_after == dict.fromkeys(outsider_after, 404)
        assert kept() == {"rita (entitlement)": 206, "bob (share)": 206, "rita's DRS access": 200}
        with hub.sessions() as s:  # running workspaces are stopped by the check the change queued at once
            assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "workspaces.access")) >= 1

        _reopen(c, admin, "lung")
        again = answers()
        assert {what: r.status_code for what, r in again.items() if r.status_code not in (200, 206)} == {}
        assert isinstance(_fsspec_reads(w, url), bytes)
    StrongroomFileSystem.clear_instance_cache()


@pytest.mark.parametrize("how", ["closed", "ended"])
def test_winding_up_stays_open_to_the_pi(app, hub, lung, how) -> None:
    """alice, lung's PI (no operator), after the end: the project page says so, and its members, settings, audit
    log, fees statement, the retention of its dataset and its GPU bookings answer; data writes are refused."""
    w, c = lung, lung["c"]
    h = bearer(w["t"]["alice"])
    _end(c, w["t"]["root"], "lung", how)
    page = web_client(app, hub, w["people"]["alice"]).get("/projects/lung")
    assert page.status_code == 200 and 'id="project-ended"' in page.text
    assert ("is closed" if how == "closed" else "ended on") in page.text
    expected = {"/api/v1/projects/lung": 200, "/api/v1/projects/lung/members": 200,
                "/api/v1/projects/lung/settings": 200, "/api/v1/projects/lung/audit": 200,
                f"/api/v1/projects/lung/fees/statement?period={dt.date.today().year}": 200,
                f"/api/v1/datasets/{w['dataset']}/retention": 200, "/api/v1/compute/projects/lung/bookings": 200}
    assert {path: c.get(path, headers=h).status_code for path in expected} == expected
    assert c.get("/api/v1/projects/lung", headers=h).json()["status"] == ("closed" if how == "closed" else "active")
    audit = c.get("/api/v1/projects/lung/audit", headers=h).json()
    assert audit[0]["action"] == "project.updated"
    retention = web_client(app, hub, w["people"]["alice"]).get(f"/datasets/{w['dataset']}/retention")
    assert retention.status_code == 200
    # a data write is refused as the reads are; removing a member is winding up
    r = c.post("/api/v1/projects/lung/uploads", json={"path": "late.csv", "size": 3}, headers=h)
    assert _refused_as_ended(r), r.text
    assert c.delete(f"/api/v1/projects/lung/members/{w['people']['mia'].user.id}", headers=h).status_code == 204


# -- SFTP -----------------------------------------------------------------------------------------------------
def _end_as_admin(hub: Any, slug: str, how: str) -> None:
    """What the administrators' API runs (``admin_update_project``), as root with a fresh second factor."""
    with transaction(hub.sessions) as s:
        root = s.scalar(select(User).where(User.email == "root@example.org"))
        principal = Principal(user=root, via="session", mfa_at=dt.datetime.now(dt.UTC), scopes=frozenset(SCOPES),
                              credential_id="test", ip="127.0.0.1")
        change: dict[str, Any] = {"status": "closed"} if how == "closed" else {"end_date": YESTERDAY}
        projects.admin_update_project(s, principal, slug, fresh_minutes=10, **change)


SFTP_FILE = "/lung/uploads/scan.bin"


async def _as_alice(w: Hubsftp, then: Callable[[asyncssh.SFTPClient], Any]) -> Any:
    """``then`` over an asyncssh client logged in as alice (pinned host key): what it returned or raised."""
    key = asyncssh.read_private_key(str(w.keys["alice"]))
    async with asyncssh.connect("127.0.0.1", w.port, username="alice", client_keys=[key],
                                known_hosts=str(w.known_hosts)) as conn, conn.start_sftp_client() as sftp:
        try:
            return await then(sftp)
        except asyncssh.SFTPError as exc:
            return exc


async def _put(sftp: asyncssh.SFTPClient) -> Any:
    async with sftp.open("/lung/uploads/late.bin", "wb") as f:
        return await f.write(b"late")


async def _get(sftp: asyncssh.SFTPClient) -> Any:
    async with sftp.open(SFTP_FILE, "rb") as f:
        return await f.read(100)


# What alice asks of lung over SFTP; the real OpenSSH client shows her no reason ("not found"), so asyncssh asks.
SFTP_OPERATIONS: dict[str, Callable[[asyncssh.SFTPClient], Any]] = {
    "list the uploads": lambda sftp: sftp.listdir("/lung/uploads"),
    "list the datasets": lambda sftp: sftp.listdir("/lung/datasets"),
    "stat a file": lambda sftp: sftp.stat(SFTP_FILE),
    "read a file": _get,
    "write a file": _put,
}


@pytest.mark.parametrize("how", ["closed", "ended"])
def test_sftp_refuses_an_ended_project(sftp_world: Hubsftp, people, how: str) -> None:  # noqa: F811
    """Over the real SFTP server, as alice (lung's PI): before the end she lists, reads and writes; after it every
    one of those is refused naming the end (permission denied), and a file she held open is refused at its next
    read (the handle's re-check, ``Reading._authorize``); her projects' names stay listed, bob's door is untouched."""
    w = sftp_world
    people("root", admin=True)
    src = w.tmp / "scan.bin"
    src.write_bytes(b"x" * 200_000)
    assert w.sftp("alice", f"put {src} {SFTP_FILE}").returncode == 0
    _ingest(w.hub)
    _allow_downloads(w.hub, "lung", True)
    got = w.tmp / "got.bin"
    assert w.sftp("alice", f"get {SFTP_FILE} {got}").returncode == 0 and got.read_bytes() == src.read_bytes()
    for what, operation in SFTP_OPERATIONS.items():
        assert not isinstance(asyncio.run(_as_alice(w, operation)), asyncssh.SFTPError), what

    async def hold_open_then_read(sftp: asyncssh.SFTPClient) -> Any:
        async with sftp.open(SFTP_FILE, "rb") as f:
            assert await f.read(1000, 0) == b"x" * 1000
            await asyncio.to_thread(_end_as_admin, w.hub, "lung", how)
            return await f.read(1000, 1000)

    refused = asyncio.run(_as_alice(w, hold_open_then_read))
    assert isinstance(refused, asyncssh.SFTPPermissionDenied) and ENDED.search(refused.reason), refused
    wrong = {}
    for what, operation in SFTP_OPERATIONS.items():
        result = asyncio.run(_as_alice(w, operation))
        if not (isinstance(result, asyncssh.SFTPPermissionDenied) and ENDED.search(result.reason)):
            wrong[what] = result
    assert wrong == {}
    assert w.sftp("alice", f"get {SFTP_FILE} {w.tmp / 'again.bin'}").returncode != 0
    assert "lung" in w.sftp("alice", "ls /").stdout  # her projects by name only: nothing of lung's inside
    assert w.sftp("bob", "ls /heart/uploads").returncode == 0


# -- the decision caches ----------------------------------------------------------------------------------------
def test_a_close_in_another_process_and_a_passing_end_date_reach_cached_decisions(app, hub, lung, tmp_path,
                                                                                  monkeypatch) -> None:
    """A web process's decisions come from its caches while nothing changed (``decision_cache``; per transaction,
    ``Session.info``): a close made by another process (the CLI, a worker) is refused on the next request, and so is
    a read on the day after the end date, with nothing written at all."""
    w, c = lung, lung["c"]
    decision_cache.enable(hub.sessions.kw["bind"])
    url, h = f"/api/v1/files/{w['file']}/plaintext", bearer(w["t"]["mia"]) | RANGE
    r = c.patch("/api/v1/admin/projects/lung", json={"end_date": dt.date.today().isoformat()},
                headers=bearer(w["t"]["root"]))
    assert r.status_code == 200, r.text
    for _ in range(3):  # today is its last day: readable, and cached
        assert c.get(url, headers=h).status_code == 206
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    with monkeypatch.context() as m:
        m.setattr(authz, "utcnow", lambda: tomorrow)
        m.setattr(projects, "utcnow", lambda: tomorrow)
        r = c.get(url, headers=h)
        assert _refused_as_ended(r) and "ended on" in r.json()["detail"], r.text
    assert c.get(url, headers=h).status_code == 206
    _elsewhere(hub, tmp_path, "p = s.scalar(select(Project).where(Project.slug == 'lung'))\np.status = 'closed'")
    r = c.get(url, headers=h)
    assert _refused_as_ended(r), r.text


def test_the_read_check_in_one_transaction_sees_its_own_close(app, hub, lung) -> None:
    """Within one transaction (a job that checks many files), the remembered decision is dropped when the session
    closes the project: the next check refuses."""
    w = lung
    with transaction(hub.sessions) as s:
        mia = s.get(User, w["people"]["mia"].user.id)
        principal = Principal(user=mia, via="token", mfa_at=dt.datetime.now(dt.UTC),
                              scopes=frozenset({"data:read"}), credential_id="t", ip="127.0.0.1")
        f = s.get(ArchiveFile, w["file"])
        assert authz.authorize_read(s, principal, f).basis == "owner"
        s.scalar(select(Project).where(Project.slug == "lung")).status = "closed"
        with pytest.raises(Forbidden, match="is closed"):
            authz.authorize_read(s, principal, f)
        s.rollback()


@pytest.mark.parametrize("ending", ["closed", "past its end date"])
def test_an_ended_projects_dicom_destination_is_not_served(hub, people, ending: str) -> None:
    """The DICOM destination (and with it the workstations' query/retrieve) of a project that ended is stopped at
    the service's next refresh: `DicomService._wanted` lists only projects that have not ended."""
    from strongroom.imaging import scp

    people("alice")
    make_project(hub, destination={"ae_title": "LUNG_AE", "port": free_port()},
                 senders=[{"ae_title": "CT01", "address": "127.0.0.1"}])
    svc = scp.DicomService(hub, workers=1)  # nothing is started: only what it would serve is asked
    with hub.sessions() as s:
        lung = s.scalars(select(Project).where(Project.slug == "lung")).one().id
    assert lung in svc._wanted()
    with transaction(hub.sessions) as s:
        project = s.get(Project, lung)
        if ending == "closed":
            project.status = "closed"
        else:
            project.end_date = dt.date.today() - dt.timedelta(days=1)
    assert lung not in svc._wanted()
