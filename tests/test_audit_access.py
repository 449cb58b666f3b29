"""Who may read a project's audit events: its members with view-audit, and explicit auditors (whose
reads are audited). Platform admins are segmented: platform events only. Every route and command
that lists events, for every role."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from conftest import bearer, token_for, web_client
from strongroom.audit import service as audit
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.identity.models import ApiToken
from strongroom.projects import service as projects
from test_cli_and_ops import run_cli

END = dt.date.today() + dt.timedelta(days=365)


@pytest.fixture
def world(app, hub, people):
    """proj-a (PI alice, member carol without view-audit), proj-b (PI bob), admin root (no project),
    dpo (an auditor, granted by the operator), admin2 (a second admin)."""
    root, alice, bob, carol, dpo = (people("root", admin=True), people("alice"), people("bob"), people("carol"),
                                    people("dpo"))
    admin2 = people("admin2", admin=True)
    with transaction(hub.sessions) as s:
        a = projects.create_project(s, Actor.system("t"), slug="proj-a", name="A", pi="alice", ethics_ref="E-A",
                                    end_date=END)
        projects.create_project(s, Actor.system("t"), slug="proj-b", name="B", pi="bob", ethics_ref="E-B",
                                end_date=END)
        audit.record(s, Actor(alice.user.id, "alice"), "test.secret-project-thing", project_id=a.id)
        audit.record(s, Actor.system(), "test.platform-thing")
        audit.grant_auditor(s, Actor.system("operator"), dpo.user.id)
    tokens = {p.username: token_for(hub, p) for p in (root, alice, bob, carol, dpo, admin2)}
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    c.post("/api/v1/projects/proj-a/members", json={"user": "carol"}, headers=bearer(tokens["alice"]))
    return {"a": a.id, "tokens": tokens, "client": c, "people": {p.username: p for p in
                                                                   (root, alice, bob, carol, dpo, admin2)}}


# (who, status of /admin/audit?project_id=A, status of /projects/proj-a/audit)
ROLES = [
    ("root", 404, 404),    # platform admin, not a member
    ("carol", 404, 403),   # member without view-audit
    ("alice", 404, 200),   # the project's PI: through the project's own route
    ("bob", 404, 404),     # another project's PI
    ("dpo", 200, 404),     # the auditor: through the admin route, and the read is audited
]


@pytest.mark.parametrize(("who", "admin_route", "project_route"), ROLES, ids=[r[0] for r in ROLES])
def test_project_events_by_role_over_the_api(world, who, admin_route, project_route):
    c, token = world["client"], world["tokens"][who]
    r = c.get("/api/v1/admin/audit", params={"project_id": str(world["a"])}, headers=bearer(token))
    assert r.status_code == admin_route, r.text
    if r.status_code == 200:
        assert "test.secret-project-thing" in [e["action"] for e in r.json()]
    r = c.get("/api/v1/projects/proj-a/audit", headers=bearer(token))
    assert r.status_code == project_route, r.text
    if r.status_code == 200:
        assert "test.secret-project-thing" in [e["action"] for e in r.json()]


@pytest.mark.parametrize("who", ["root", "admin2"])
def test_admin_listing_shows_platform_events_only(world, who):
    c = world["client"]
    events = c.get("/api/v1/admin/audit", params={"limit": 500}, headers=bearer(world["tokens"][who])).json()
    actions = {e["action"] for e in events}
    assert "test.platform-thing" in actions
    assert all(e["project_id"] is None for e in events), [e["action"] for e in events if e["project_id"]]
    # filtering by a user or an action does not widen it
    alice_id = str(world["people"]["alice"].user.id)
    for params in ({"user_id": alice_id}, {"action": "test."}, {"action": "project."}):
        events = c.get("/api/v1/admin/audit", params=params, headers=bearer(world["tokens"][who])).json()
        assert all(e["project_id"] is None for e in events), params


def test_auditor_reads_are_audited_and_visible_to_the_project(world):
    c, t = world["client"], world["tokens"]
    everything = c.get("/api/v1/admin/audit", params={"limit": 500}, headers=bearer(t["dpo"])).json()
    assert "test.secret-project-thing" in {e["action"] for e in everything}
    c.get("/api/v1/admin/audit", params={"project_id": str(world["a"])}, headers=bearer(t["dpo"]))
    reads = [e for e in c.get("/api/v1/projects/proj-a/audit", headers=bearer(t["alice"])).json()
             if e["action"] == "audit.events.read"]
    assert len(reads) == 1 and reads[0]["actor_id"] == str(world["people"]["dpo"].user.id)
    assert reads[0]["details"]["via"] == "api"
    # both reads are in the chain (as platform events for the unfiltered one)
    platform = c.get("/api/v1/admin/audit", params={"action": "audit.events.read"},
                     headers=bearer(t["root"])).json()
    assert len(platform) == 1 and platform[0]["details"]["returned"] == len(everything)


def test_web_project_page_shows_audit_only_to_view_audit_members(app, hub, world):
    for who, status, shows in [("root", 404, False), ("carol", 200, False), ("alice", 200, True),
                               ("bob", 404, False), ("dpo", 404, False)]:
        page = web_client(app, hub, world["people"][who]).get("/projects/proj-a")
        assert page.status_code == status, who
        assert ("test.secret-project-thing" in page.text) is shows, who


def test_granting_the_auditor_role(world):
    c, t, ppl = world["client"], world["tokens"], world["people"]
    root_id, carol_id = str(ppl["root"].user.id), str(ppl["carol"].user.id)
    # not to yourself: segmentation would mean nothing
    r = c.put(f"/api/v1/admin/auditors/{root_id}", headers=bearer(t["root"]))
    assert r.status_code == 403
    # only admins, and they see the route only as admins
    assert c.put(f"/api/v1/admin/auditors/{carol_id}", headers=bearer(t["alice"])).status_code == 404
    assert c.put(f"/api/v1/admin/auditors/{carol_id}", headers=bearer(t["dpo"])).status_code == 404
    r = c.put(f"/api/v1/admin/auditors/{root_id}", headers=bearer(t["admin2"]))
    assert r.status_code == 200, r.text
    r = c.get("/api/v1/admin/audit", params={"project_id": str(world["a"])}, headers=bearer(t["root"]))
    assert r.status_code == 200
    assert {a["user_id"] for a in c.get("/api/v1/admin/auditors", headers=bearer(t["root"])).json()} == {
        root_id, str(ppl["dpo"].user.id)}
    assert c.delete(f"/api/v1/admin/auditors/{root_id}", headers=bearer(t["admin2"])).status_code == 204
    r = c.get("/api/v1/admin/audit", params={"project_id": str(world["a"])}, headers=bearer(t["root"]))
    assert r.status_code == 404
    grants = c.get("/api/v1/admin/audit", params={"action": "audit.auditor."}, headers=bearer(t["admin2"])).json()
    assert [e["action"] for e in grants] == ["audit.auditor.revoked", "audit.auditor.granted",
                                              "audit.auditor.granted"]


def test_granting_needs_fresh_mfa(hub, world):
    c, t = world["client"], world["tokens"]
    with transaction(hub.sessions) as s:  # the tokens were minted (under MFA) an hour ago
        s.execute(update(ApiToken).values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)))
    r = c.put(f"/api/v1/admin/auditors/{world['people']['carol'].user.id}", headers=bearer(t["admin2"]))
    assert r.status_code == 403 and r.json()["code"] == "mfa-required"


def test_cli_list_is_segmented_and_project_reads_are_audited(hub, settings, world):
    plain = run_cli(settings, "audit", "list", "--limit", "500")
    assert plain.returncode == 0, plain.stderr
    assert "test.platform-thing" in plain.stdout and "test.secret-project-thing" not in plain.stdout
    with hub.sessions() as s:
        assert not audit.query(s, action_prefix="audit.events.read")
    scoped = run_cli(settings, "audit", "list", "--project", "proj-a")
    assert scoped.returncode == 0, scoped.stderr
    assert "test.secret-project-thing" in scoped.stdout
    with hub.sessions() as s:
        reads = audit.query(s, action_prefix="audit.events.read")
        assert len(reads) == 1 and reads[0].project_id == world["a"] and reads[0].actor.startswith("cli:")


def test_cli_grant_and_revoke_auditor(hub, settings, world):
    c, t = world["client"], world["tokens"]
    r = run_cli(settings, "admin", "grant-auditor", "carol")
    assert r.returncode == 0 and "now an auditor" in r.stdout, r.stdout + r.stderr
    assert c.get("/api/v1/admin/audit", params={"project_id": str(world["a"])},
                 headers=bearer(t["carol"])).status_code == 200
    r = run_cli(settings, "admin", "revoke-auditor", "carol")
    assert r.returncode == 0, r.stderr
    assert c.get("/api/v1/admin/audit", params={"project_id": str(world["a"])},
                 headers=bearer(t["carol"])).status_code == 404
    with hub.sessions() as s:
        actions = [e.action for e in audit.query(s, action_prefix="audit.auditor.")]
    assert actions == ["audit.auditor.revoked", "audit.auditor.granted", "audit.auditor.granted"]
