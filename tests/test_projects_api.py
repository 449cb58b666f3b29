"""Projects over the API: tenant isolation, delegation, locked settings, tokens, bad input."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from conftest import bearer, token_for, web_client
from helpers import form_post
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.identity.models import ApiToken, User
from strongroom.projects import service as projects

END = dt.date.today() + dt.timedelta(days=365)


@pytest.fixture
def world(hub, people):
    """Two customers: project A (PI alice, member carol) and project B (PI bob)."""
    admin, alice, bob, carol = people("root", admin=True), people("alice"), people("bob"), people("carol")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="proj-a", name="A", pi="alice", ethics_ref="E-A",
                                end_date=END)
        projects.create_project(s, Actor.system("t"), slug="proj-b", name="B", pi="bob", ethics_ref="E-B",
                                end_date=END)
    tokens = {p.username: token_for(hub, p) for p in (admin, alice, bob, carol)}
    c = TestClient(hub_app(hub), base_url="http://127.0.0.1:8000")
    c.post("/api/v1/projects/proj-a/members", json={"user": "carol"}, headers=bearer(tokens["alice"]))
    return {"admin": admin, "alice": alice, "bob": bob, "carol": carol, "tokens": tokens, "client": c}


def hub_app(hub):
    return hub.app


@pytest.fixture(autouse=True)
def _link_app(app, hub):
    hub.app = app


def _bob_id(world) -> str:
    return str(world["bob"].user.id)


FOREIGN = [
    ("GET", "/api/v1/projects/proj-b", None),
    ("GET", "/api/v1/projects/proj-b/members", None),
    ("GET", "/api/v1/projects/proj-b/settings", None),
    ("GET", "/api/v1/projects/proj-b/audit", None),
    ("POST", "/api/v1/projects/proj-b/members", {"user": "alice"}),
    ("PATCH", "/api/v1/projects/proj-b/members/{bob}", {"role": "member"}),
    ("PUT", "/api/v1/projects/proj-b/members/{bob}/rights", {"rights": ["import"]}),
    ("DELETE", "/api/v1/projects/proj-b/members/{bob}", None),
    ("PUT", "/api/v1/projects/proj-b/settings/internet_access", {"value": True}),
]


@pytest.mark.parametrize(("method", "path", "body"), FOREIGN)
def test_member_of_a_gets_404_for_every_project_b_resource(world, method, path, body):
    c, token = world["client"], world["tokens"]["alice"]
    url = path.format(bob=_bob_id(world))
    r = c.request(method, url, json=body, headers=bearer(token))
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    # Identical to a project that does not exist: existence is not revealed.
    missing = c.request(method, url.replace("proj-b", "proj-zz"), json=body, headers=bearer(token))
    assert missing.status_code == 404
    assert missing.json()["detail"].replace("proj-zz", "proj-b") == r.json()["detail"]


def test_platform_admin_is_segmented_too(world):
    c, token = world["client"], world["tokens"]["root"]
    assert c.get("/api/v1/projects/proj-a", headers=bearer(token)).status_code == 404
    slugs = [p["slug"] for p in c.get("/api/v1/admin/projects", headers=bearer(token)).json()]
    assert slugs == ["proj-a", "proj-b"]
    # A non-admin cannot even see that admin routes exist.
    assert c.get("/api/v1/admin/projects", headers=bearer(world["tokens"]["alice"])).status_code == 404


def test_web_pages_of_other_projects_are_404(app, hub, world):
    wc = web_client(app, hub, world["alice"])
    assert wc.get("/projects/proj-a").status_code == 200
    page = wc.get("/projects/proj-b")
    assert page.status_code == 404 and "proj-b" not in wc.get("/projects").text
    r = form_post(wc, "/projects/proj-b/members", {"user": "alice", "role": "member"})
    assert r.status_code == 404
    r = form_post(wc, "/projects/proj-b/settings/internet_access", {"value": "on"})
    assert r.status_code == 404


def test_my_projects_lists_only_mine(world):
    c = world["client"]
    mine = c.get("/api/v1/projects", headers=bearer(world["tokens"]["carol"])).json()
    assert [(p["slug"], p["role"]) for p in mine] == [("proj-a", "member")]
    assert set(mine[0]["rights"]) == {"read-data", "write-data"}


def test_pi_delegates_named_rights(world):
    c, t = world["client"], world["tokens"]
    carol_id = str(world["carol"].user.id)
    # carol cannot manage members until the PI delegates the right
    r = c.post("/api/v1/projects/proj-a/members", json={"user": "bob"}, headers=bearer(t["carol"]))
    assert r.status_code == 403 and "manage-members" in r.json()["detail"]
    r = c.put(f"/api/v1/projects/proj-a/members/{carol_id}/rights", json={"rights": ["manage-members", "import"]},
              headers=bearer(t["alice"]))
    assert r.status_code == 200 and r.json()["delegated_rights"] == ["import", "manage-members"]
    r = c.post("/api/v1/projects/proj-a/members", json={"user": "bob"}, headers=bearer(t["carol"]))
    assert r.status_code == 201 and r.json()["role"] == "member"
    # but not as a steward: that role carries publish and view-audit, which the PI did not hand her
    r = c.patch(f"/api/v1/projects/proj-a/members/{_bob_id(world)}", json={"role": "steward"},
                headers=bearer(t["carol"]))
    assert r.status_code == 403 and "publish" in r.json()["detail"]
    # only the PI delegates; non-delegable rights are refused
    r = c.put(f"/api/v1/projects/proj-a/members/{carol_id}/rights", json={"rights": ["export"]},
              headers=bearer(t["carol"]))
    assert r.status_code == 403
    r = c.put(f"/api/v1/projects/proj-a/members/{carol_id}/rights", json={"rights": ["read-data"]},
              headers=bearer(t["alice"]))
    assert r.status_code == 422
    # the PI cannot be removed or demoted
    alice_id = str(world["alice"].user.id)
    assert c.delete(f"/api/v1/projects/proj-a/members/{alice_id}", headers=bearer(t["carol"])).status_code == 422
    events = c.get("/api/v1/projects/proj-a/audit", headers=bearer(t["alice"])).json()
    actions = [e["action"] for e in events]
    assert "project.rights.delegated" in actions and "project.member.added" in actions


@pytest.mark.parametrize("how", ["api", "web"])
def test_manage_members_is_no_way_to_rights_one_does_not_hold(hub, app, world, how):
    """The audit's escalation, as a class: a member holding ``manage-members`` (and nothing else) may not give
    themselves, or anyone, a role carrying rights they lack, nor step down or remove a member holding rights they lack;
    nobody changes their own role; and a role carrying
    more than a researcher's rights is handed out only with a fresh second factor, as delegation is."""
    c, t = world["client"], world["tokens"]
    carol, bob = world["carol"], world["bob"]
    carol_id, bob_id = str(carol.user.id), str(bob.user.id)
    assert c.put(f"/api/v1/projects/proj-a/members/{carol_id}/rights", json={"rights": ["manage-members"]},
                 headers=bearer(t["alice"])).status_code == 200

    if how == "api":
        def patch_role(token: str, user_id: str, role: str) -> int:
            return c.patch(f"/api/v1/projects/proj-a/members/{user_id}", json={"role": role},
                           headers=bearer(token)).status_code

        def add(token: str, user: str, role: str) -> int:
            return c.post("/api/v1/projects/proj-a/members", json={"user": user, "role": role},
                          headers=bearer(token)).status_code

        def remove(token: str, user_id: str) -> int:
            return c.delete(f"/api/v1/projects/proj-a/members/{user_id}", headers=bearer(token)).status_code
    else:
        browsers = {"carol": web_client(app, hub, carol), "alice": web_client(app, hub, world["alice"])}
        by_token = {t["carol"]: browsers["carol"], t["alice"]: browsers["alice"]}

        def patch_role(token: str, user_id: str, role: str) -> int:
            return form_post(by_token[token], f"/projects/proj-a/members/{user_id}/role", {"role": role}).status_code

        def add(token: str, user: str, role: str) -> int:
            return form_post(by_token[token], "/projects/proj-a/members", {"user": user, "role": role}).status_code

        def remove(token: str, user_id: str) -> int:
            return form_post(by_token[token], f"/projects/proj-a/members/{user_id}/remove", {}).status_code

    ok = 303 if how == "web" else 200
    assert patch_role(t["carol"], carol_id, "steward") == 403  # her own role
    assert patch_role(t["carol"], carol_id, "member") == 403  # not even a step down
    assert add(t["carol"], "bob", "steward") == 403  # a role carrying publish, import, view-audit
    assert add(t["carol"], "bob", "member") == (303 if how == "web" else 201)
    assert patch_role(t["carol"], bob_id, "steward") == 403
    assert patch_role(t["alice"], bob_id, "steward") == ok  # the PI holds every right of the role
    # nor does she take from the steward the PI chose rights she lacks herself: no step down, no removal
    assert patch_role(t["carol"], bob_id, "member") == 403
    assert remove(t["carol"], bob_id) == 403
    if how == "web":  # and her page offers neither
        page = browsers["carol"].get("/projects/proj-a").text
        assert f"/members/{bob_id}/remove" not in page and f"/members/{bob_id}/role" not in page
    assert patch_role(t["alice"], bob_id, "member") == ok  # the PI may
    rights = set(c.get("/api/v1/projects/proj-a", headers=bearer(t["carol"])).json()["rights"])
    assert rights == {"read-data", "write-data", "manage-members"}
    assert remove(t["carol"], bob_id) == (303 if how == "web" else 204)  # a researcher is within her reach
    assert add(t["carol"], "bob", "member") == (303 if how == "web" else 201)
    if how == "api":  # a steward role, even from the PI, needs a fresh second factor; a member role does not
        with transaction(hub.sessions) as s:
            s.execute(update(ApiToken).values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)))
        r = c.patch(f"/api/v1/projects/proj-a/members/{bob_id}", json={"role": "steward"},
                    headers=bearer(t["alice"]))
        assert r.status_code == 403 and r.json()["code"] == "mfa-required"
        assert patch_role(t["alice"], bob_id, "member") == 200


def test_settings_are_locked_by_default_and_opening_is_audited(world):
    c, t = world["client"], world["tokens"]
    settings = c.get("/api/v1/projects/proj-a/settings", headers=bearer(t["carol"])).json()
    assert settings and all(s["locked"] for s in settings)
    dest = [{"kind": "project", "name": "Partner project", "project": "proj-b"}]
    r = c.put("/api/v1/projects/proj-a/settings/egress_destinations", json={"value": dest},
              headers=bearer(t["carol"]))
    assert r.status_code == 403
    # a project receives another's exports only once its PI agreed (airlock_sources)
    assert c.put("/api/v1/projects/proj-b/settings/airlock_sources", json={"value": ["proj-a"]},
                 headers=bearer(t["bob"])).status_code == 200
    r = c.put("/api/v1/projects/proj-a/settings/egress_destinations", json={"value": dest},
              headers=bearer(t["alice"]))
    assert r.status_code == 200 and r.json()["locked"] is False and r.json()["value"] == dest
    bad = c.put("/api/v1/projects/proj-a/settings/egress_destinations",
                json={"value": [{"kind": "ftp", "name": "x", "url": "ftp://insecure"}]}, headers=bearer(t["alice"]))
    assert bad.status_code == 422 and bad.json()["errors"]
    senders = c.put("/api/v1/projects/proj-a/settings/dicom_senders",
                    json={"value": [{"ae_title": "CT01", "address": "not-an-ip"}]}, headers=bearer(t["alice"]))
    assert senders.status_code == 422
    assert c.put("/api/v1/projects/proj-a/settings/nope", json={"value": 1},
                 headers=bearer(t["alice"])).status_code == 404
    # project B is untouched by A's change (but for the consent its PI gave above)
    b = c.get("/api/v1/projects/proj-b/settings", headers=bearer(t["bob"])).json()
    assert all(s["locked"] for s in b if s["key"] != "airlock_sources")
    # closing again restores the locked default
    r = c.put("/api/v1/projects/proj-a/settings/egress_destinations", json={"value": []}, headers=bearer(t["alice"]))
    assert r.json()["locked"] is True
    events = c.get("/api/v1/projects/proj-a/audit", headers=bearer(t["alice"])).json()
    opened = next(e for e in events if e["action"] == "project.setting.opened")
    assert opened["details"] == {"before": [], "after": dest}
    assert any(e["action"] == "project.setting.locked" for e in events)
    # a member without view-audit cannot read the project's log
    assert c.get("/api/v1/projects/proj-a/audit", headers=bearer(t["carol"])).status_code == 403


def test_sensitive_change_needs_fresh_mfa(hub, world):
    c, t = world["client"], world["tokens"]
    with transaction(hub.sessions) as s:  # the token was minted (under MFA) an hour ago
        s.execute(update(ApiToken).values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)))
    r = c.put("/api/v1/projects/proj-a/settings/internet_access", json={"value": True}, headers=bearer(t["alice"]))
    assert r.status_code == 403 and r.json()["code"] == "mfa-required"
    # reading still works
    assert c.get("/api/v1/projects/proj-a", headers=bearer(t["alice"])).status_code == 200


def test_expired_revoked_unknown_and_unscoped_tokens(hub, world):
    c, alice = world["client"], world["alice"]
    read_only = token_for(hub, alice, scopes=["projects:read"])
    assert c.get("/api/v1/projects", headers=bearer(read_only)).status_code == 200
    r = c.post("/api/v1/projects/proj-a/members", json={"user": "bob"}, headers=bearer(read_only))
    assert r.status_code == 403 and "projects:write" in r.json()["detail"]

    expired = token_for(hub, alice)
    prefix = expired.split("_")[1]
    with transaction(hub.sessions) as s:
        s.execute(update(ApiToken).where(ApiToken.prefix == prefix)
                  .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    r = c.get("/api/v1/projects", headers=bearer(expired))
    assert r.status_code == 401 and r.json()["detail"] == "token expired"

    revoked = token_for(hub, alice)
    rp = revoked.split("_")[1]
    assert c.delete(f"/api/v1/tokens/{rp}", headers=bearer(revoked)).status_code == 204
    r = c.get("/api/v1/projects", headers=bearer(revoked))
    assert r.status_code == 401 and r.json()["detail"] == "token revoked"

    for junk in ("sr_nothing", "Bearer", "sr_aaaaaaaaaaaa_" + "x" * 30, revoked[:-1] + "Z"):
        assert c.get("/api/v1/projects", headers=bearer(junk)).status_code == 401
    assert c.get("/api/v1/projects").status_code == 401

    with transaction(hub.sessions) as s:
        s.execute(update(User).where(User.id == alice.user.id).values(is_active=False))
    live = world["tokens"]["alice"]
    assert c.get("/api/v1/projects", headers=bearer(live)).status_code == 401

    with hub.sessions() as s:
        from strongroom.audit import service as audit

        denied = [e for e in audit.query(s, action_prefix="token.used", limit=50) if e.outcome == "denied"]
    assert {e.details["reason"] for e in denied} >= {"expired", "revoked", "account disabled"}


def test_token_list_never_shows_secrets(world):
    c, t = world["client"], world["tokens"]["alice"]
    listing = c.get("/api/v1/tokens", headers=bearer(t)).json()
    assert listing and all("secret" not in k for row in listing for k in row)
    assert t.split("_", 2)[2] not in c.get("/api/v1/tokens", headers=bearer(t)).text


BAD_INPUT = [
    ("POST", "/api/v1/projects/proj-a/members", b"{not json", 400),
    ("POST", "/api/v1/projects/proj-a/members", b'{"user": "bob", "rolee": "member"}', 422),
    ("POST", "/api/v1/projects/proj-a/members", b'{"user": 12}', 422),
    ("POST", "/api/v1/projects/proj-a/members", b"[]", 422),
    ("POST", "/api/v1/projects/proj-a/members", b'{"user": "nobody-here"}', 422),
    ("PUT", "/api/v1/projects/proj-a/members/not-a-uuid/rights", b'{"rights": []}', 422),
    ("PUT", "/api/v1/projects/proj-a/settings/internet_access", b'{"value": "maybe"}', 422),
    ("PUT", "/api/v1/projects/proj-a/settings/internet_access", b'{"value": true, "x": 1}', 422),
    ("GET", "/api/v1/projects/proj-a/audit?limit=100000", None, 422),
    ("GET", "/api/v1/projects/proj-a/audit?before=-3", None, 422),
    ("POST", "/api/v1/admin/projects", b'{"slug": "x"}', 404),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD_INPUT)
def test_bad_input_gets_a_clear_4xx(world, method, path, body, status):
    c = world["client"]
    r = c.request(method, path, content=body, headers={**bearer(world["tokens"]["alice"]),
                                                       "content-type": "application/json"})
    assert r.status_code == status, r.text
    problem = r.json()
    assert problem["status"] == status and problem["detail"]


def test_admin_create_project_validates(world):
    c, t = world["client"], world["tokens"]["root"]
    base = {"slug": "new-one", "name": "New", "pi": "carol", "ethics_ref": "E-1", "end_date": str(END)}
    assert c.post("/api/v1/admin/projects", json=base, headers=bearer(t)).status_code == 201
    assert c.post("/api/v1/admin/projects", json=base, headers=bearer(t)).status_code == 409
    for change in ({"slug": "Bad Slug!"}, {"pi": "ghost"}, {"end_date": "2001-01-01"},
                   {"project_class": "startup"}, {"quota_bytes": -1}, {"ethics_ref": ""}):
        r = c.post("/api/v1/admin/projects", json={**base, "slug": "other-" + uuid.uuid4().hex[:6], **change},
                   headers=bearer(t))
        assert r.status_code == 422, (change, r.text)


def test_oversized_body_is_refused(world):
    c = world["client"]
    big = b'{"user": "' + b"a" * 2_000_000 + b'"}'
    r = c.post("/api/v1/projects/proj-a/members", content=big,
               headers={**bearer(world["tokens"]["alice"]), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "body-too-large"


def test_a_sender_is_a_scanner_unless_the_form_ticks_query_and_retrieve(app, hub, world):
    """The allowed-senders form: a checkbox for a workstation's right to query and retrieve, unticked (a scanner)
    by default (``dimse._not_a_workstation`` reads it)."""
    browser = web_client(app, hub, world["alice"])
    page = browser.get("/projects/proj-a").text
    assert 'type="checkbox" id="dicom_senders-query_retrieve" name="query_retrieve"' in page
    for form in ({"ae_title": "CT01", "address": "10.0.0.4"},
                 {"ae_title": "WS1", "address": "10.0.0.5", "query_retrieve": "on"}):
        assert form_post(browser, "/projects/proj-a/settings/dicom_senders", form).status_code == 303
    got = world["client"].get("/api/v1/projects/proj-a/settings", headers=bearer(world["tokens"]["alice"])).json()
    senders = next(s["value"] for s in got if s["key"] == "dicom_senders")
    assert [(s["ae_title"], s["query_retrieve"]) for s in senders] == [("CT01", False), ("WS1", True)]
