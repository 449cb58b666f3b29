"""Every form on the web answers with a message the user sees (issue 10).

A class test: it lists every POST route of the web pages (not the API) from the app itself, and
walks each one through one world: the success case must land on a page with the flash message
(``#flash``, role=status), the refusal on a page with an alert (role=alert); and every form route
sent without its CSRF token answers with an alert too. A new form route without a case here fails
``test_every_form_route_has_a_case``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pyotp
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import PASSWORD, Person, web_client
from helpers import csrf_for
from imaging_support import instances, make_project, ultrasound, write_corpus
from strongroom.archive import c4gh
from strongroom.archive import service as archive_service
from strongroom.archive.backend import storage_for
from strongroom.archive.models import ArchiveFile, Dataset, DatasetVersion, UserKey
from strongroom.audit.service import Actor
from strongroom.catalog.demo import DEMO_TITLE, seed_catalog_demo
from strongroom.catalog.entries import entry_for
from strongroom.catalog.fields import EntryFields
from strongroom.catalog.png import synthetic_ct_slice
from strongroom.db import transaction
from strongroom.identity.models import ApiToken
from strongroom.imaging import bulk
from strongroom.jobs.runner import Runner
from strongroom.projects.models import Membership
from strongroom.strategies.models import DataRequest

FLASH = re.compile(r'<p id="flash" class="flash flash-(ok|error)" role="(status|alert)">([^<]+)</p>')
ALERT = re.compile(r'role="alert"[^>]*>\s*([^<]+)')


def form_routes(app) -> set[str]:
    """Every POST route of the web pages (the API's routes are in the schema; pages are not)."""
    return {r.path_format for r in iter_route_contexts(app.routes)
            if isinstance(r.original_route, APIRoute) and "POST" in r.methods
            and not r.path_format.startswith(("/api/", "/ga4gh/", "/dicomweb/"))  # API: in the schema
            # a workspace's paths: on the hub's origin only opened (GET; anything else 404), JupyterLab's own on the
            # workspaces' origin (test_workspace_origin)
            and r.path_format not in ("/projects/{slug}/workspaces/{workspace_id}",
                                      "/projects/{slug}/workspaces/{workspace_id}/{path}")}


@dataclasses.dataclass
class World:
    app: object
    hub: object
    people: dict[str, Person]
    clients: dict[str, TestClient]
    ids: dict[str, str]
    tmp: Path

    def c(self, who: str) -> TestClient:
        return self.clients[who]

    def fresh(self) -> TestClient:
        return TestClient(self.app, base_url="http://127.0.0.1:8000")


def post(c: TestClient, url: str, data: dict | None = None, *, files: dict | None = None, csrf: bool = True):
    """Send a form as the browser does (with its token) and follow the redirect to the page shown."""
    body = dict(data or {})
    if csrf:
        body["csrf_token"] = csrf_for(c)
    return c.post(url, data=body, files=files, follow_redirects=True)


def flash_of(r) -> str:
    m = FLASH.search(r.text)
    assert m and m.group(1) == "ok" and m.group(2) == "status", \
        f"{r.request.method} {r.request.url.path} → {r.status_code}: no success message\n{r.text[:3000]}"
    return m.group(3).strip()


def alert_of(r) -> str:
    assert "text/html" in r.headers.get("content-type", ""), f"{r.request.url.path}: not a page: {r.text[:300]}"
    m = ALERT.search(r.text)
    assert m and m.group(1).strip(), f"{r.request.url.path} → {r.status_code}: no alert\n{r.text[:3000]}"
    assert r.status_code >= 400 or r.request.method == "GET", r.status_code
    return m.group(1).strip()


@pytest.fixture
def world(app, hub, people, tmp_path: Path) -> World:
    ppl = {name: people(name, admin=name == "pia") for name in ("pia", "memo", "rita", "pat")}
    ppl["newbie"] = people("newbie", mfa=False)
    make_project(hub, "chest", "pia")
    seed_catalog_demo(hub, project_slug="chest", steward="pia")
    write_corpus(tmp_path / "in", patients=1, studies=1, instances=1)
    (tmp_path / "in" / "us.dcm").write_bytes(ultrasound())
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "chest"), tmp_path / "in", workers=1)
    assert report.quarantined == 1
    with transaction(hub.sessions) as s:
        s.add(Membership(project_id=bulk.project_by_slug(hub, "chest"), user_id=ppl["memo"].user.id,
                         role="member", delegated_rights=["import", "reidentify"]))
        demo = s.scalar(select(Dataset).where(Dataset.title == DEMO_TITLE))
        ready = s.scalar(select(ArchiveFile.id).where(ArchiveFile.state == "ready",
                                                        ArchiveFile.hold.is_(None)).limit(1))  # not the held one
        ids = {"demo": demo.id, "ready_file": ready}
    clients = {name: web_client(app, hub, p) for name, p in ppl.items() if name != "newbie"}
    return World(app, hub, ppl, clients, ids, tmp_path)


# -- the cases: route → (success, refusal); each returns the page the browser ends on ------------
def _login(w: World, ok: bool):
    c = w.fresh()
    r = post(c, "/login", {"username": "pat", "password": PASSWORD if ok else "wrong password"})
    return r


def _login_mfa(w: World, ok: bool):
    c = w.fresh()
    post(c, "/login", {"username": "rita", "password": PASSWORD, "next": "/access"})
    r = post(c, "/login/mfa", {"code": w.people["rita"].code() if ok else "000000", "next": "/access"})
    if ok:
        assert r.url.path == "/access"
    return r


def _enrol(w: World, ok: bool):
    c = w.fresh()
    page = post(c, "/login", {"username": "newbie", "password": PASSWORD, "next": "/access"})
    assert page.url.path == "/mfa/enrol" and "next=/access" in str(page.url)
    if not ok:
        return post(c, "/mfa/enrol", {"code": "000000", "next": "/access"})
    seed = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.text).group(1)
    r = post(c, "/mfa/enrol", {"code": pyotp.TOTP(seed).now(), "next": "/access"})
    assert 'href="/access">I saved them' in r.text  # then on to where they were going
    return r


def _reauth(w: World, ok: bool):
    return post(w.c("pia"), "/login/reauth", {"code": w.people["pia"].code() if ok else "000000",
                                              "next": "/account"})


def _logout(w: World, ok: bool):
    return post(web_client(w.app, w.hub, w.people["memo"]), "/logout", csrf=ok)


def _token(w: World, ok: bool):
    return post(w.c("pia"), "/account/tokens", {"name": "ci", "scopes": ["projects:read"],
                                                "days": "30" if ok else "0"})


def _token_revoke(w: World, ok: bool):
    with w.hub.sessions() as s:
        prefix = s.scalar(select(ApiToken.prefix).where(ApiToken.user_id == w.people["pia"].user.id))
    return post(w.c("pia"), f"/account/tokens/{prefix if ok else 'nope'}/revoke")


def _country(w: World, ok: bool):
    return post(w.c("pia"), "/account/country", {"country": "SE" if ok else "Sweden"})


def _recovery(w: World, ok: bool):
    return post(w.c("pia"), "/account/recovery-codes", csrf=ok)


def _password(w: World, ok: bool):
    new = "another long passphrase 2026"
    return post(w.c("pat"), "/account/password", {"current_password": PASSWORD, "new_password": new,
                                                   "new_password_again": new if ok else new + "!"})


def _create_project(w: World, ok: bool):
    return post(w.c("pia"), "/projects", {"slug": "second", "name": "Second", "pi": "pia" if ok else "nobody",
                                          "ethics_ref": "E2",
                                          "end_date": (dt.date.today() + dt.timedelta(days=300)).isoformat()})


def _add_member(w: World, ok: bool):
    return post(w.c("pia"), "/projects/second/members", {"user": "rita" if ok else "nobody", "role": "member"})


def _member(w: World, what: str, data: dict, ok: bool):
    user = w.people["rita"].user.id if ok else uuid.uuid4()
    return post(w.c("pia"), f"/projects/second/members/{user}/{what}", data)


def _settings(w: World, ok: bool):
    return post(w.c("pia"), f"/projects/second/settings/{'external_sharing' if ok else 'nope'}", {"value": "on"})


def _upload(w: World, ok: bool):
    return post(w.c("pia"), "/projects/chest/data/upload", files={"file": ("notes.txt", b"hello" if ok else b"")})


def _create_dataset(w: World, ok: bool):
    return post(w.c("pia"), "/projects/chest/data/datasets",
                {"title": "Subset" if ok else "", "files": [w.ids["ready_file"]]})


def _subset(w: World) -> str:
    with w.hub.sessions() as s:
        return s.scalar(select(Dataset.id).where(Dataset.title == "Subset"))


def _release(w: World, ok: bool):
    return post(w.c("pia"), f"/datasets/{_subset(w)}/versions/{1 if ok else 99}/release")


def _draft(w: World, ok: bool):
    return post(w.c("pia"), f"/datasets/{_subset(w) if ok else 'SRD-NOPE'}/draft", {"add": [], "remove": []})


def _add_key(w: World, ok: bool):
    pub = c4gh.public_key_file(c4gh.generate_keypair().public).decode() if ok else "not a key"
    return post(w.c("rita"), "/account/keys", {"name": "laptop", "public_key": pub})


def _revoke_key(w: World, ok: bool):
    with w.hub.sessions() as s:
        fp = s.scalar(select(UserKey.fingerprint).where(UserKey.user_id == w.people["rita"].user.id))
    return post(w.c("rita"), f"/account/keys/{fp if ok else 'nope'}/revoke")


def _add_ssh_key(w: World, ok: bool):
    from strongroom.sftp.server import asyncssh

    pub = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode() if ok else "not a key"
    return post(w.c("rita"), "/account/ssh-keys", {"public_key": pub, "comment": "laptop"})


def _remove_ssh_key(w: World, ok: bool):
    from strongroom.sftp.models import SshKey

    with w.hub.sessions() as s:
        key_id = s.scalar(select(SshKey.id).where(SshKey.user_id == w.people["rita"].user.id)) if ok else uuid.uuid4()
    return post(w.c("rita"), f"/account/ssh-keys/{key_id}/remove")


def _apply(w: World, ok: bool):
    r = post(w.c("rita"), f"/apply/{w.ids['demo'] if ok else 'SRD-NOPE'}")
    if ok:
        w.ids["application"] = r.url.path.rsplit("/", 1)[-1]
    return r


GOOD = {"study_name": "Nodule AI", "ethics.number": "Dnr 2026-01234-01", "description": "Chest CT",
        "selection": "Adults", "pseudonymization": "Keyed pseudonyms, dates kept", "sharing_plan": "Team only",
        "contact": "lab@uni.example"}


def _save(w: World, ok: bool):
    data = {**GOOD, "then": "save"} | ({} if ok else {"contact": "not an e-mail", "study_name": "Kept typing"})
    r = post(w.c("rita"), f"/applications/{w.ids['application']}/save", data)
    if not ok:  # what was typed is shown again, and the error names the field's label
        assert 'value="Kept typing"' in r.text and "Contact e-mail for this application:" in r.text
    return r


def _command(w: World, ok: bool):
    app_url = f"/applications/{w.ids['application']}"
    if not ok:
        return post(w.c("rita"), f"{app_url}/submit")  # terms not accepted yet: refused, with the reason
    messages = [flash_of(post(w.c("rita"), f"{app_url}/accept-terms")),
                flash_of(post(w.c("rita"), f"{app_url}/submit")),
                flash_of(post(w.c("pia"), f"{app_url}/assign")),
                flash_of(post(w.c("pia"), f"{app_url}/remark", {"text": "looks fine"})),
                alert_of(post(w.c("pia"), f"{app_url}/reject"))]  # no reason: refused
    assert len(set(messages)) == len(messages), messages
    return post(w.c("pia"), f"{app_url}/approve",
                {"ends": (dt.date.today() + dt.timedelta(days=90)).isoformat()})


def _download_policy(w: World, ok: bool):
    return post(w.c("pia" if ok else "rita"), f"/datasets/{w.ids['demo']}/access/download", {"allowed": "yes"})


def _decision_token(w: World, ok: bool):
    return post(w.c("pia"), f"/datasets/{w.ids['demo']}/access/decision-tokens",
                {"name": "Cohort system", "days": "30" if ok else "0"})


def _catalog_save(w: World, ok: bool):
    with w.hub.sessions() as s:
        entry = entry_for(s, w.ids["demo"])
        fields = EntryFields.of(entry).model_dump()
    form = {k: ("\n".join(v) if k in ("organs", "keywords", "variables") else v) for k, v in fields.items()
            if v is not None}
    form = {k: (v if isinstance(v, list) else v.isoformat() if isinstance(v, dt.date) else str(v))
            for k, v in form.items()}
    if not ok:
        form["subjects"] = "many"
    return post(w.c("pia"), f"/datasets/{w.ids['demo']}/catalog", form)


def _unpublish(w: World, ok: bool):
    return post(w.c("pia" if ok else "rita"), f"/datasets/{w.ids['demo']}/catalog/unpublish")


def _publish(w: World, ok: bool):
    return post(w.c("pia" if ok else "rita"), f"/datasets/{w.ids['demo']}/catalog/publish")


def _add_image(w: World, ok: bool):
    files = {"image": ("ct.png", synthetic_ct_slice(7, z=0.5), "image/png")} if ok else None
    return post(w.c("pia"), f"/datasets/{w.ids['demo']}/catalog/images", {"alt": "Axial chest CT"}, files=files)


def _delete_image(w: World, ok: bool):
    return post(w.c("pia"), f"/datasets/{w.ids['demo']}/catalog/images/{1 if ok else 999}/delete")


def _destination(w: World, ok: bool):
    return post(w.c("pia"), "/projects/chest/imaging/destination",
                {"ae_title": "CHEST", "port": "11112" if ok else "many"})


def _profile(w: World, ok: bool):
    return post(w.c("pia"), "/projects/chest/imaging/profile", {"reset": "1"} if ok else {"pixel_rules": "{"})


def _quarantine(w: World, ok: bool):
    held = instances(w.hub, "quarantined")[0].id
    return post(w.c("pia"), "/projects/chest/imaging/quarantine",
                {"instance": [str(held)], "decision": "approve", "note": "checked: no burned-in text" if ok else ""})


def _reidentify(w: World, ok: bool):
    pseudonym = instances(w.hub, "published")[0].patient_pseudonym if ok else "NOPE"
    return post(w.c("memo"), "/projects/chest/imaging/reidentify",
                {"pseudonym": pseudonym, "reason": "incidental finding: the hospital must contact the patient"})


Case = Callable[[World, bool], object]
# In walking order: later cases use what earlier ones made.
STRATEGY = ('name = "Lab"\nperson = "pin"\n[columns.pin]\naction = "pseudonymize"\n'
            '[columns.age]\naction = "stratify"\nwidth = 5\n')


def _strategy_save(w: World, ok: bool):  # a refusal: a rule without its options, shown with the typed text
    text = STRATEGY if ok else STRATEGY.replace("width = 5", "")
    return post(w.c("pia"), "/projects/chest/strategy", {"text": text, "comment": "first"})


def _strategy_check(w: World, ok: bool):  # the saved strategy applied to a sample (or to a PDF)
    sample = ("lab.csv", b"pin,age\n19121212-1212,41\n", "text/csv") if ok else ("scan.pdf", b"%PDF", "x/y")
    return post(w.c("pia"), "/projects/chest/strategy/check", files={"sample": sample})


def _strategy_run(w: World, ok: bool):  # a run on an extract of the archive (or on a file that is not there)
    file_id = "SRF-NOPE"
    if ok:
        post(w.c("pia"), "/projects/chest/data/upload", files={"file": ("lab.csv", b"pin,age\n19121212-1212,41\n")})
        with w.hub.sessions() as s:
            file_id = s.scalar(select(ArchiveFile.id).where(ArchiveFile.path == "lab.csv"))
        assert archive_service.ingest(w.hub, storage_for(w.hub), file_id) == "ready"
    return post(w.c("pia"), "/projects/chest/strategy/runs", {"file_id": file_id})


def _request(w: World, title: str) -> str:
    with w.hub.sessions() as s:
        return s.scalar(select(DataRequest.id).where(DataRequest.title == title))


def _data_request(w: World, ok: bool):  # the project's own request (or one without its selection)
    return post(w.c("pia"), "/projects/chest/requests", {"title": "Own", "selection": "All 2020" if ok else ""})


def _data_request_run(w: World, ok: bool):  # the named strategy on the extract (or on no file)
    with w.hub.sessions() as s:
        file_id = s.scalar(select(ArchiveFile.id).where(ArchiveFile.path == "lab.csv"))
    return post(w.c("pia"), f"/projects/chest/requests/{_request(w, 'Own')}/runs", {"file_id": file_id if ok else ""})


def _data_request_release(w: World, ok: bool):  # once the run passed (before: nothing verified to release)
    if ok:
        Runner(w.hub, lease_seconds=30, name="test").run_until_idle()
    return post(w.c("pia"), f"/projects/chest/requests/{_request(w, 'Own')}/release")


def _data_request_close(w: World, ok: bool):  # closing needs a reason
    if ok:
        post(w.c("pia"), "/projects/chest/requests", {"title": "Second", "selection": "None"})
    return post(w.c("pia"), f"/projects/chest/requests/{_request(w, 'Second' if ok else 'Own')}/close",
                {"reason": "withdrawn" if ok else ""})


def _airlock_sources(w: World, ok: bool):  # pia, PI of "second" too, lets "chest" export into it
    return post(w.c("pia"), "/projects/second/airlock/settings/sources", {"sources": "chest" if ok else "Chest!"})


def _airlock_destination(w: World, ok: bool):  # the PI allows exports into the project "second"
    return post(w.c("pia"), "/projects/chest/airlock/settings/destinations",
                {"kind": "project", "name": "Second team", "target": "second" if ok else "nope"})


@pytest.fixture
def settings(settings):
    """A partner bucket configured on the hub (never contacted here): the page offers it by name."""
    from strongroom.config import AirlockSettings, ComputeSettings, WorkspaceSettings

    return settings.model_copy(update={"airlock": AirlockSettings.model_validate(
        {"s3": {"partner": {"bucket": "incoming", "endpoint_url": "https://s3.partner.example",
                            "projects": ["chest"]}}}),
        "compute": ComputeSettings.model_validate({"machines": {"dgx2": {"gpus": 16}},
                                                   "over_budget": "allow_and_notify"}),
        # real JupyterLab processes (test_workspaces has the namespaces and the proxy)
        # (no data mount: a workspace started here outlives the case; test_workspaces has the mount)
        "workspaces": WorkspaceSettings(isolation="none", allow_unisolated=True, run_as="", mount_data=False,
                                        scratch_dir=settings.var_dir.parent / "workspaces")})


def _airlock_external(w: World, ok: bool):  # an S3 bucket configured on the hub, chosen by name
    key = c4gh.public_key_file(c4gh.generate_keypair().public).decode()
    return post(w.c("pia"), "/projects/chest/airlock/settings/destinations/external",
                {"kind": "s3", "name": "Partner bucket", "credential": "partner" if ok else "typed-in",
                 "prefix": "chest/", "public_key": key})


def _airlock_reviewers(w: World, ok: bool):
    return post(w.c("pia"), "/projects/chest/airlock/settings/reviewers",
                {"reviewers": "memo, pia" if ok else "nobody", "approvals": "1", "expiry_days": "14"})


def _airlock_export(w: World, ok: bool):
    return post(w.c("pia"), "/projects/chest/airlock/exports",
                {"files": [w.ids["ready_file"]], "purpose": "Shared analysis",
                 "destination": "Second team" if ok else "Nowhere"})


def _airlock_stage(w: World, ok: bool):  # a leaking table: its checks fail (the override case needs that)
    data = b"pin,age\n19121212-1212,41\n" if ok else b""
    return post(w.c("memo"), "/projects/chest/airlock/staging", files={"file": ("lab.csv", data)})


def _airlock_import(w: World, ok: bool):
    from strongroom.jobs.runner import Runner

    Runner(w.hub, lease_seconds=10, name="test").run_until_idle()  # the staged upload's ingest
    with w.hub.sessions() as s:
        staged = s.scalar(select(ArchiveFile.id).where(ArchiveFile.hold == "airlock"))
    return post(w.c("memo"), "/projects/chest/airlock/imports",
                {"files": [staged] if ok else [], "purpose": "Lab values"})


def _airlock_request(w: World) -> str:
    from strongroom.airlock.models import AirlockRequest
    from strongroom.jobs.runner import Runner

    Runner(w.hub, lease_seconds=10, name="test").run_until_idle()  # the checks
    with w.hub.sessions() as s:
        return s.scalar(select(AirlockRequest.id).where(AirlockRequest.direction == "import"))


def _airlock_override(w: World, ok: bool):
    return post(w.c("pia"), f"/projects/chest/airlock/{_airlock_request(w)}/override",
                {"reason": "synthetic test person" if ok else ""})


def _airlock_review(w: World, ok: bool):  # the requester may not review their own request
    return post(w.c("pia" if ok else "memo"), f"/projects/chest/airlock/{_airlock_request(w)}/review",
                {"decision": "approve"})


def _fees_waiver(w: World, ok: bool):  # the operator pia asks; a waiver needs its reason
    return post(w.c("pia"), "/fees/waivers", {"kind": "waiver", "category": "data-sharing", "project": "chest",
                                              "percent": "50", "reason": "shares its data" if ok else "",
                                              "valid_from": "2025-01-01", "valid_to": "2025-12-31"})


def _fees_decide(w: World, ok: bool):  # two-person rule: pia decides otto's request, never her own
    from strongroom.audit.service import Actor
    from strongroom.fees import service as fees
    from strongroom.identity import service as identity
    from strongroom.identity.principal import SCOPES, Principal

    with transaction(w.hub.sessions) as s:
        otto = identity.find_user(s, "otto") or identity.create_local_user(
            s, Actor.system("test"), username="otto", password=PASSWORD, display_name="Otto", email="otto@example.org",
            is_admin=True)
        requester = otto if ok else identity.find_user(s, "pia")
        waiver = fees.request_waiver(
            s, Principal(user=requester, via="session", mfa_at=dt.datetime.now(dt.UTC), scopes=frozenset(SCOPES),
                         credential_id="test"),
            kind="discount", category="other", project="chest", amount="1000", reason="pilot",
            valid_from=dt.date(2025, 1, 1), valid_to=dt.date(2025, 1, 31))
        waiver_id = waiver.id
    return post(w.c("pia"), f"/fees/waivers/{waiver_id}/decide", {"decision": "approve"})


def _fees_issue(w: World, ok: bool):  # a statement is issued for a period that has ended
    return post(w.c("pia"), "/fees/statements", {"project": "chest", "period": "2025" if ok else "2999"})
def _compute_book(w: World, ok: bool):  # 17 GPUs on a 16-GPU machine: refused
    return post(w.c("memo"), "/projects/chest/compute/bookings", {"machine": "dgx2", "gpus": "2" if ok else "17",
                                                                  "weeks": "1", "kind": "booking"})


def _compute_cancel(w: World, ok: bool):  # rita is no member of chest: no such booking for her
    from strongroom.compute.models import Booking

    post(w.c("memo"), "/projects/chest/compute/bookings", {"machine": "dgx2", "gpus": "1", "kind": "dropin"})
    with w.hub.sessions() as s:
        booking = s.scalar(select(Booking.id).order_by(Booking.id.desc()).limit(1))
    return post(w.c("memo" if ok else "rita"), f"/projects/chest/compute/bookings/{booking}/cancel")


def _live_workspace(w: World) -> str:
    from strongroom.workspaces.models import RUNNING, Workspace

    with w.hub.sessions() as s:
        return str(s.scalar(select(Workspace.id).where(Workspace.state == RUNNING)))


def _workspace_start(w: World, ok: bool):  # rita is no member of chest
    return post(w.c("memo" if ok else "rita"), "/projects/chest/workspaces")


def _workspace_stop(w: World, ok: bool):  # the owner stops it; a made-up id is refused
    return post(w.c("memo"), "/projects/chest/workspaces/stop", {"workspace": _live_workspace(w) if ok else "nope"})


def _workspace_operator_stop(w: World, ok: bool):  # an operator stops anyone's; memo is no operator
    if ok:
        post(w.c("memo"), "/projects/chest/workspaces")
    return post(w.c("pia" if ok else "memo"), "/admin/workspaces/stop", {"workspace": _live_workspace(w)})


def _compute_budget(w: World, ok: bool):  # an operator sets the class; a custom class needs its number
    return post(w.c("pia"), "/admin/compute/budget", {"project": "chest", "klass": "fellowship" if ok else "custom",
                                                     "gpu_weeks": "", "period_start": "2026-01-01", "months": "12"})
def _retention(w: World, what: str, who: str, data: dict):
    return post(w.c(who), f"/datasets/{w.ids['demo']}/retention/{what}", data)


def _retention_due(w: World) -> None:  # the demo's version 1 as if last used eleven years ago, not extended
    from strongroom.retention import clock
    from strongroom.retention.models import VersionClock

    with transaction(w.hub.sessions) as s:
        clock.catch_up(s, w.hub.settings.retention)
        c = s.scalar(select(VersionClock).join(DatasetVersion, DatasetVersion.id == VersionClock.version_id)
                     .where(DatasetVersion.dataset_id == w.ids["demo"], DatasetVersion.number == 1))
        c.extended_until, c.last_used_at = None, c.last_used_at - dt.timedelta(days=11 * 366)
        clock.recompute(s, w.hub.settings.retention, c)


def _retention_deletion(w: World, ok: bool):  # the PI asks; a member without manage-settings may not
    _retention_due(w)
    return _retention(w, "deletion", "pia" if ok else "memo", {"version": "1", "reason": "Ten years unused"})


def _retention_approve(w: World, ok: bool):  # a second operator approves; the requester cannot
    from strongroom.identity.models import User
    from strongroom.retention.models import Deletion

    with transaction(w.hub.sessions) as s:
        s.get(User, w.people["pat"].user.id).is_admin = True  # pat becomes the second operator
        deletion = s.scalar(select(Deletion.id))
    return post(web_client(w.app, w.hub, w.people["pat"]) if ok else w.c("pia"),
                f"/retention/deletions/{deletion}/approve")


def _vai_review(w: World, ok: bool):  # memo asked for the release: pia (a named reviewer) decides, memo may not
    from strongroom.projects.models import ProjectSetting
    from strongroom.vai.models import Evaluation, ModelVersion, Release, Vendor

    with transaction(w.hub.sessions) as s:
        project_id = bulk.project_by_slug(w.hub, "chest")
        named = [str(w.people["memo"].user.id), str(w.people["pia"].user.id)]
        row = s.get(ProjectSetting, (project_id, "airlock_reviewers"))
        if row is None:
            s.add(ProjectSetting(project_id=project_id, key="airlock_reviewers", value=named,
                                 changed_by=w.people["pia"].user.id))
        else:
            row.value = named
        vendor = Vendor(slug=f"v{uuid.uuid4().hex[:8]}", name="Vendor")
        s.add(vendor)
        s.flush()
        mv = ModelVersion(vendor_id=vendor.id, name="M", version="1", mode="results-only", intended_use="x",
                          contract={}, output={"kind": "score", "index": 0}, created_by=w.people["pia"].user.id)
        s.add(mv)
        s.flush()
        ev = Evaluation(project_id=project_id, model_version_id=mv.id, title="Screening check", labels_csv="",
                        labels_sha256="0" * 64, protocol={}, state="done", inputs={},
                        created_by=w.people["memo"].user.id)
        s.add(ev)
        s.flush()
        release = Release(evaluation_id=ev.id, vendor_id=vendor.id, requested_by=w.people["memo"].user.id,
                          approvals_needed=1, report={}, sha256="0" * 64)
        s.add(release)
        s.flush()
        release_id = release.id
    return post(w.c("pia" if ok else "memo"), f"/projects/chest/vai/releases/{release_id}/review",
                {"decision": "approve"})


def _vai_results_only(w: World) -> str:
    """A results-only model version (the vendor runs it elsewhere), made once."""
    from strongroom.vai.models import ModelVersion, Vendor

    with transaction(w.hub.sessions) as s:
        mv = s.scalar(select(ModelVersion).where(ModelVersion.name == "Cloud"))
        if mv is None:
            vendor = Vendor(slug="v-forms", name="Forms Vendor")
            s.add(vendor)
            s.flush()
            mv = ModelVersion(vendor_id=vendor.id, name="Cloud", version="1", mode="results-only", intended_use="x",
                              contract={}, output={"kind": "score", "index": 0}, created_by=w.people["pia"].user.id)
            s.add(mv)
            s.flush()
        return str(mv.id)


VAI_LABELS = "case_id,label,site\n" + "".join(f"c{i},{i % 2},{'AB'[i % 3 == 0]}\n" for i in range(40))
VAI_SCORES = "case_id,score\n" + "".join(f"c{i},{(i % 2) * 0.5 + (i % 7) / 20}\n" for i in range(40))


def _vai_create(w: World, ok: bool):  # a results-only evaluation from the page; a label of 2 is refused
    labels = VAI_LABELS if ok else VAI_LABELS.replace(",0,", ",2,", 1)
    r = post(w.c("pia"), "/projects/chest/vai/evaluations", {
        "title": "Forms check", "model_version": _vai_results_only(w), "dataset": "", "labels_csv": labels,
        "reference_source": "labels", "threshold": "0.5", "subgroups": "site", "bootstrap": "100"},
        files={"predictions_file": ("scores.csv", VAI_SCORES.encode())})
    if ok:
        assert "/vai/evaluations/" in r.url.path and "Forms check" in r.text
    return r


def _vai_release(w: World, ok: bool):  # a finished evaluation goes to review; one not run yet is refused
    from strongroom.vai import service as vai
    from strongroom.vai.models import Evaluation

    with w.hub.sessions() as s:
        eid = s.scalar(select(Evaluation.id).where(Evaluation.title == "Forms check"))
    if ok:
        vai.run(w.hub, eid)
    return post(w.c("pia"), f"/projects/chest/vai/evaluations/{eid}/release")


def _fed_register(w: World, ok: bool):  # the operator registers a peer hub; its signing key must be Ed25519
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from strongroom.federation import signing

    key = signing.public_pem(Ed25519PrivateKey.generate().public_key()) if ok else "not a key"
    return post(w.c("pia"), "/federation/peers", {
        "name": "peer-w", "base_url": "https://peer-w.example.org", "signing_key": key,
        "archive_key": c4gh.public_key_file(c4gh.generate_keypair().public).decode(), "outbound": "on"})


def _fed_change(w: World, ok: bool):  # suspend the peer registered above; an unknown peer is not found
    return post(w.c("pia"), f"/federation/peers/{'peer-w' if ok else 'nope'}", {"action": "change", "inbound": "on"})


def _fed_repin(w: World, ok: bool):  # the peer registered above rotated its archive key; a bad key is refused
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from strongroom.federation import signing

    return post(w.c("pia"), "/federation/peers/peer-w/identity", {
        "base_url": "https://peer-w.example.org",
        "signing_key": signing.public_pem(Ed25519PrivateKey.generate().public_key()) if ok else "not a key",
        "archive_key": c4gh.public_key_file(c4gh.generate_keypair().public).decode()})


def _fed_sync(w: World, ok: bool):  # push the released demo dataset to a peer; an unknown dataset is not found
    _fed_peer(w)
    return post(w.c("pia"), "/federation/syncs", {"dataset": w.ids["demo"] if ok else "SRD-NOPE", "peer": "peer-s"})


def _fed_dataset_push(w: World, ok: bool):  # from the dataset's page: a version that is not released is refused
    _fed_peer(w)
    return post(w.c("pia"), f"/datasets/{w.ids['demo']}/federation/push",
                {"peer": "peer-s", "version": "" if ok else "99"})


def _fed_peer(w: World) -> None:
    from strongroom.federation import service as federation
    from strongroom.federation.models import Peer

    with transaction(w.hub.sessions) as s:
        if s.scalar(select(Peer).where(Peer.name == "peer-s")) is None:
            federation.register_peer(s, w.hub.settings, Actor.system("t"), {
                "name": "peer-s", "base_url": "https://peer-s.example.org",
                "signing_key": signing_pem(), "archive_key": c4gh.public_key_file(
                    c4gh.generate_keypair().public).decode()})


def signing_pem() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from strongroom.federation import signing

    return signing.public_pem(Ed25519PrivateKey.generate().public_key())


CASES: dict[str, Case] = {
    "/login": _login,
    "/login/mfa": _login_mfa,
    "/mfa/enrol": _enrol,
    "/login/reauth": _reauth,
    "/logout": _logout,
    "/account/tokens": _token,
    "/account/tokens/{prefix}/revoke": _token_revoke,
    "/account/recovery-codes": _recovery,
    "/account/country": _country,
    "/account/password": _password,
    "/projects": _create_project,
    "/projects/{slug}/members": _add_member,
    "/projects/{slug}/members/{user_id}/role": lambda w, ok: _member(w, "role", {"role": "steward"}, ok),
    "/projects/{slug}/members/{user_id}/rights": lambda w, ok: _member(w, "rights", {"rights": ["import"]}, ok),
    "/projects/{slug}/settings/{key}": _settings,
    "/projects/{slug}/members/{user_id}/remove": lambda w, ok: _member(w, "remove", {}, ok),
    "/projects/{slug}/data/upload": _upload,
    "/projects/{slug}/data/datasets": _create_dataset,
    "/datasets/{dataset_id}/draft": _draft,
    "/datasets/{dataset_id}/versions/{number}/release": _release,
    "/account/keys": _add_key,
    "/account/keys/{fingerprint}/revoke": _revoke_key,
    "/account/ssh-keys": _add_ssh_key,
    "/account/ssh-keys/{key_id}/remove": _remove_ssh_key,
    "/apply/{dataset_id}": _apply,
    "/applications/{application_id}/save": _save,
    "/applications/{application_id}/{command}": _command,
    "/datasets/{dataset_id}/access/download": _download_policy,
    "/datasets/{dataset_id}/access/decision-tokens": _decision_token,
    "/datasets/{dataset_id}/catalog": _catalog_save,
    "/datasets/{dataset_id}/catalog/unpublish": _unpublish,
    "/datasets/{dataset_id}/catalog/publish": _publish,
    "/datasets/{dataset_id}/catalog/images": _add_image,
    "/datasets/{dataset_id}/catalog/images/{position}/delete": _delete_image,
    "/projects/{slug}/imaging/destination": _destination,
    "/projects/{slug}/imaging/profile": _profile,
    "/projects/{slug}/imaging/quarantine": _quarantine,
    "/projects/{slug}/imaging/reidentify": _reidentify,
    "/projects/{slug}/strategy": _strategy_save,
    "/projects/{slug}/strategy/check": _strategy_check,
    "/projects/{slug}/strategy/runs": _strategy_run,
    "/projects/{slug}/requests": _data_request,
    "/projects/{slug}/requests/{request_id}/runs": _data_request_run,
    "/projects/{slug}/requests/{request_id}/release": _data_request_release,
    "/projects/{slug}/requests/{request_id}/close": _data_request_close,
    "/projects/{slug}/airlock/settings/sources": _airlock_sources,
    "/projects/{slug}/airlock/settings/destinations": _airlock_destination,
    "/projects/{slug}/airlock/settings/destinations/external": _airlock_external,
    "/projects/{slug}/airlock/settings/reviewers": _airlock_reviewers,
    "/projects/{slug}/airlock/exports": _airlock_export,
    "/projects/{slug}/airlock/staging": _airlock_stage,
    "/projects/{slug}/airlock/imports": _airlock_import,
    "/projects/{slug}/airlock/{request_id}/override": _airlock_override,
    "/projects/{slug}/airlock/{request_id}/review": _airlock_review,
    "/fees/waivers": _fees_waiver,
    "/fees/waivers/{waiver_id}/decide": _fees_decide,
    "/fees/statements": _fees_issue,
    "/projects/{slug}/compute/bookings": _compute_book,
    "/projects/{slug}/compute/bookings/{booking_id}/cancel": _compute_cancel,
    "/admin/compute/budget": _compute_budget,
    "/projects/{slug}/workspaces": _workspace_start,
    "/projects/{slug}/workspaces/stop": _workspace_stop,
    "/admin/workspaces/stop": _workspace_operator_stop,
    "/datasets/{dataset_id}/retention/class": lambda w, ok: _retention(
        w, "class", "pia", {"dataset_class": "validation" if ok else "forever"}),
    "/datasets/{dataset_id}/retention/extend": lambda w, ok: _retention(
        w, "extend", "pia", {"version": "1", "until": "2099-01-01", "reason": "Validation study" if ok else ""}),
    "/datasets/{dataset_id}/retention/deletion": _retention_deletion,
    "/retention/deletions/{deletion_id}/approve": _retention_approve,
    "/datasets/{dataset_id}/retention/hold": lambda w, ok: _retention(
        w, "hold", "pia" if ok else "memo", {"version": "1", "action": "set", "reason": "Litigation 2026:14"}),
    "/projects/{slug}/vai/evaluations": _vai_create,
    "/projects/{slug}/vai/evaluations/{evaluation_id}/release": _vai_release,
    "/projects/{slug}/vai/releases/{release_id}/review": _vai_review,
    "/federation/peers": _fed_register,
    "/federation/peers/{name}": _fed_change,
    "/federation/peers/{name}/identity": _fed_repin,
    "/federation/syncs": _fed_sync,
    "/datasets/{dataset_id}/federation/push": _fed_dataset_push,
}


def test_every_form_route_has_a_case(app) -> None:
    assert form_routes(app) == set(CASES), "a new web form needs its case in CASES (and a message)"


def test_every_form_answers_with_a_message(world: World) -> None:
    """Each form: the refusal first (the page shows an alert, nothing changes), then the success
    (the page it lands on shows what was done)."""
    said: dict[str, tuple[str, str]] = {}
    for route, case in CASES.items():
        refusal = alert_of(case(world, False))
        success = flash_of(case(world, True))
        said[route] = (refusal, success)
    # the messages say something specific, not a field id
    assert all("_" not in ok for _, ok in said.values()), said
    assert said["/applications/{application_id}/save"][1] == "Draft saved."
    # a flash is shown once: the next page no longer carries it
    r = world.c("pia").get("/projects")
    assert 'id="flash"' not in r.text
    # a refusal shown on the error page leads back to the form it came from (same site only)
    c, form_page = world.c("pia"), "http://127.0.0.1:8000/projects/chest/data"
    for referer, shown in ((form_page, True), (None, False)):  # another site's Referer fails CSRF first
        r = c.post("/projects/chest/data/upload", data={"csrf_token": csrf_for(c)},
                   files={"file": ("empty.txt", b"")}, headers={"Referer": referer} if referer else {})
        assert r.status_code == 422 and (f'href="{form_page}">Back to the form' in r.text) is shown


def test_every_form_without_its_token_is_refused_with_a_message(app, world: World) -> None:
    values = {"slug": "chest", "dataset_id": world.ids["demo"], "user_id": str(world.people["memo"].user.id),
              "key": "external_sharing", "prefix": "x", "fingerprint": "x", "number": "1", "position": "1",
              "application_id": "x", "command": "submit", "request_id": "x", "booking_id": "1",
              "waiver_id": str(uuid.uuid4()), "deletion_id": "00000000-0000-0000-0000-000000000000",
              "release_id": str(uuid.uuid4()), "evaluation_id": str(uuid.uuid4()), "key_id": str(uuid.uuid4()),
              "name": "peer-w"}
    for route in sorted(form_routes(app)):
        url = route.format(**{k: v for k, v in values.items() if "{" + k + "}" in route})
        r = post(world.c("pia"), url, {}, csrf=False)
        assert r.status_code == 403, (url, r.status_code)
        assert "form expired or came from another site" in alert_of(r), url
