"""Separation of duties and step-up MFA in controlled access (a class test of two audit findings).

1. Nobody decides an application they applied for — its applicant, or a member they invited — by any
   route: the handler's commands (approve, reject, return, revoke…) on the API and the web form, a
   decider's vote, an external owner's decision. Only the dataset's named deciders vote and count
   towards a quorum, and a handler cannot ask anyone else (nor the applicant) for a decision.
2. Whatever opens a data path or names who decides needs a second factor within the last
   `security.fresh_mfa_minutes`: the access policy, the applicant download setting and registering a
   crypt4gh recipient key. A long-lived API token or an old browser session is refused (403
   `mfa-required`; the web forms send the browser to confirm it's them, saying why).
"""

# ruff: noqa: F811 - `world` is test_access's fixture, imported here and taken as the tests' argument

from __future__ import annotations

import datetime as dt
import re
import uuid

from sqlalchemy import select, update

from conftest import Person, token_for, web_client
from helpers import csrf_for
from strongroom.access import events
from strongroom.access.models import AccessPolicy, Application, DatasetRole, Entitlement
from strongroom.archive import c4gh
from strongroom.archive.models import UserKey
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.identity.models import ApiToken, User, WebSession
from strongroom.identity.service import find_user
from test_access import END, _as, _submitted, world  # noqa: F401 - world is the fixture

ALERT = re.compile(r'role="alert"[^>]*>\s*([^<]+)')


def user_id(world, username: str) -> uuid.UUID:
    with world["hub"].sessions() as s:
        return find_user(s, username).id


def person(world, username: str) -> Person:
    """One of the world's people, for a browser session or a new token."""
    with world["hub"].sessions() as s:
        return Person(user=s.get(User, user_id(world, username)), username=username, seed=None)


def _policy(world, body: dict) -> None:
    r = world["c"].put(f"/api/v1/datasets/{world['x']}/access-policy", json=body, headers=_as(world, "owner"))
    assert r.status_code == 204, r.text


def _with_token(world, people, *names: str) -> None:
    for name in names:
        world["t"][name] = token_for(world["hub"], people(name))


def _refusals(world, application_id: str | None = None) -> list[AuditEvent]:
    with world["hub"].sessions() as s:
        stmt = select(AuditEvent).where(AuditEvent.action == "access.decision.refused")
        if application_id:
            stmt = stmt.where(AuditEvent.target == f"application:{application_id}")
        return list(s.scalars(stmt.order_by(AuditEvent.seq)))


def _entitlements(world, username: str) -> list[dict]:
    return world["c"].get("/api/v1/me/entitlements", headers=_as(world, username)).json()


def _old(world, *, token: bool = True, session: bool = True) -> None:
    """Every API token minted, and every browser session's second factor given, 20 days ago."""
    then = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    with transaction(world["hub"].sessions) as s:
        if token:
            s.execute(update(ApiToken).values(created_at=then))
        if session:
            s.execute(update(WebSession).values(mfa_at=then))


# -- 1. nobody decides their own application ------------------------------------------------------
def test_a_handler_takes_no_part_in_their_own_application(world):
    """sam handles the dataset (named beside its PI) and applies for it: every handler command on his own
    application is refused with the reason and audited; the other handler decides it."""
    c = world["c"]
    _policy(world, {"roles": {"handler": ["sam", "owner"]}})
    app_id = _submitted(world, "sam")
    url = f"/api/v1/applications/{app_id}"
    commands = {"approve": {"ends": str(END)}, "reject": {"reason": "I withdraw"}, "return": {"comment": "x"},
                "assign": None, "remark": {"text": "mine is fine", "public": False},
                "request": {"users": ["rita"], "kind": "review"}}
    for command, body in commands.items():
        r = c.post(f"{url}/{command}", json=body, headers=_as(world, "sam"))
        assert r.status_code == 403, (command, r.text)
        assert r.json()["code"] == "forbidden" and "you applied for this application" in r.json()["detail"]
    assert _entitlements(world, "sam") == []
    # he sees his application as its applicant: no handler role, no internal view
    mine = c.get(url, headers=_as(world, "sam")).json()
    assert mine["your_roles"] == ["applicant"] and mine["state"] == "submitted" and mine["votes"] == {}
    refused = _refusals(world, app_id)
    assert [e.details["action"] for e in refused] == list(commands.keys())[:5] + ["request-review"]
    assert all(e.outcome == "denied" and e.actor_id == user_id(world, "sam") for e in refused)
    # the other handler decides; revoking his own approved access is not his call either
    r = c.post(f"{url}/approve", json={"ends": str(END)}, headers=_as(world, "owner"))
    assert r.status_code == 200 and r.json()["state"] == "approved"
    assert c.post(f"{url}/revoke", json={"reason": "x"}, headers=_as(world, "sam")).status_code == 403
    assert c.post(f"{url}/close", headers=_as(world, "sam")).json()["state"] == "closed"  # he may withdraw


def test_the_owning_pi_does_not_decide_their_own_application(world):
    """With nobody named, the owning project's PI handles; if the PI applies, the PI cannot decide it
    (someone must be named), and the refusal says so."""
    c = world["c"]
    app_id = _submitted(world, "owner")
    r = c.post(f"/api/v1/applications/{app_id}/approve", json={"ends": str(END)}, headers=_as(world, "owner"))
    assert r.status_code == 403 and "access policy" in r.json()["detail"]
    assert _entitlements(world, "owner") == []


def test_a_handler_invited_to_an_application_does_not_decide_it(world):
    """The applying group: rita invites sam (by his e-mail); sam handles the dataset but not this application."""
    c = world["c"]
    _policy(world, {"roles": {"handler": ["sam", "owner"]}})
    app_id = _submitted(world, "rita")
    assert c.post(f"/api/v1/applications/{app_id}/invite", json={"email": "SAM@example.org"},
                  headers=_as(world, "rita")).status_code == 200
    r = c.post(f"/api/v1/applications/{app_id}/approve", json={"ends": str(END)}, headers=_as(world, "sam"))
    assert r.status_code == 403 and "invited" in r.json()["detail"]
    assert c.get(f"/api/v1/applications/{app_id}", headers=_as(world, "sam")).json()["your_roles"] == []
    # nor can the external-decision route approve it for him
    r = c.post(f"/api/v1/external/datasets/{world['x']}/decisions",
               json={"applicant": "rita", "approve": True, "ends": str(END)}, headers=_as(world, "sam"))
    assert r.status_code == 403
    assert _entitlements(world, "rita") == []
    assert {e.details["action"] for e in _refusals(world)} == {"approve", "external-approve"}


def test_an_external_owner_never_decides_about_themselves(world):
    c = world["c"]
    _policy(world, {"external_owner": "SCAPIS", "roles": {"handler": ["sam"]}})
    for applicant, approve in (("sam", True), ("sam@example.org", True), ("sam", False)):
        body = {"applicant": applicant, "approve": approve, "ends": str(END) if approve else None,
                "reason": "" if approve else "done"}
        r = c.post(f"/api/v1/external/datasets/{world['x']}/decisions", json=body, headers=_as(world, "sam"))
        assert r.status_code == 403 and "your own access" in r.json()["detail"], r.text
    assert _entitlements(world, "sam") == []
    with world["hub"].sessions() as s:  # no application was recorded on his behalf either
        assert s.scalar(select(Application.id).where(Application.applicant_id == user_id(world, "sam"))) is None
    assert [e.details["action"] for e in _refusals(world)] == ["external-approve", "external-approve",
                                                              "external-revoke"]
    # for someone else it works as before
    r = c.post(f"/api/v1/external/datasets/{world['x']}/decisions",
               json={"applicant": "rita", "approve": True, "ends": str(END)}, headers=_as(world, "sam"))
    assert r.status_code == 200 and r.json()["state"] == "approved"


def test_a_decider_does_not_vote_on_their_own_application(world, people):
    """Quorum 2 of the named deciders sam and d2; sam applies: his vote is refused and does not count, so
    d2's approval alone does not approve (nor does the short quorum reject it: the PI can name another)."""
    c = world["c"]
    _with_token(world, people, "d2", "d3")
    _policy(world, {"workflow": "quorum", "quorum": 2, "roles": {"decider": ["sam", "d2"], "handler": ["owner"]}})
    app_id = _submitted(world, "sam")
    r = c.post(f"/api/v1/applications/{app_id}/vote", json={"approve": True}, headers=_as(world, "sam"))
    assert r.status_code == 403 and "you applied" in r.json()["detail"]
    r = c.post(f"/api/v1/applications/{app_id}/vote", json={"approve": True}, headers=_as(world, "d2"))
    assert r.status_code == 200 and r.json()["state"] == "submitted"
    assert _entitlements(world, "sam") == []
    # the PI names a third decider: the quorum is reached by two deciders who did not apply
    _policy(world, {"workflow": "quorum", "quorum": 2,
                    "roles": {"decider": ["sam", "d2", "d3"], "handler": ["owner"]}})
    r = c.post(f"/api/v1/applications/{app_id}/vote", json={"approve": True}, headers=_as(world, "d3"))
    assert r.json()["state"] == "approved"


def test_only_named_deciders_are_asked_and_counted(world, people):
    """Quorum 2 of d1, d2: the handler cannot add the applicant or anyone unnamed as a decider; a vote by
    someone asked before (an old request in the history) is refused and never counts."""
    c = world["c"]
    _with_token(world, people, "d1", "d2")
    _policy(world, {"workflow": "quorum", "quorum": 2, "roles": {"decider": ["d1", "d2"], "handler": ["owner"]}})
    app_id = _submitted(world, "rita")
    url = f"/api/v1/applications/{app_id}"
    for users, said in ((["rita"], "applied for this application"), (["sam"], "not a named decider"),
                        (["d1", "sam"], "not a named decider")):
        r = c.post(f"{url}/request", json={"users": users, "kind": "decision"}, headers=_as(world, "owner"))
        assert r.status_code == 403 and said in r.json()["detail"], r.text
    r = c.post(f"{url}/request", json={"users": ["rita"], "kind": "review"}, headers=_as(world, "owner"))
    assert r.status_code == 403  # nor a reviewer of her own application
    assert c.post(f"{url}/request", json={"users": ["d1"], "kind": "decision"},
                  headers=_as(world, "owner")).status_code == 200
    # what a handler could write before: sam and the applicant asked for a decision
    asked = [str(user_id(world, "sam")), str(user_id(world, "rita"))]
    with transaction(world["hub"].sessions) as s:
        events.append(s, None, s.get(Application, app_id), "decision_requested", {"decider_ids": asked})
    for outsider in ("sam", "rita"):
        r = c.post(f"{url}/vote", json={"approve": True}, headers=_as(world, outsider))
        assert r.status_code == 403, (outsider, r.text)
    assert c.post(f"{url}/vote", json={"approve": True}, headers=_as(world, "d1")).json()["state"] == "submitted"
    assert c.post(f"{url}/vote", json={"approve": True}, headers=_as(world, "d2")).json()["state"] == "approved"
    assert {e.details["action"] for e in _refusals(world, app_id)} == {"request-decision", "request-review",
                                                                       "vote"}


def test_the_web_form_refuses_deciding_ones_own_application_with_the_reason(world, app, people):
    _policy(world, {"roles": {"handler": ["sam", "owner"]}})
    app_id = _submitted(world, "sam")
    browser = web_client(app, world["hub"], person(world, "sam"))
    r = browser.post(f"/applications/{app_id}/approve", follow_redirects=True,
                     data={"ends": str(END), "csrf_token": csrf_for(browser)})
    assert r.status_code == 403
    alert = ALERT.search(r.text)
    assert alert and "you applied for this application" in alert.group(1)
    assert 'action="/applications/' + app_id + '/approve"' not in r.text  # no handler buttons on his own
    assert _entitlements(world, "sam") == []
    assert [e.details["action"] for e in _refusals(world, app_id)] == ["approve"]


# -- 2. step-up MFA for what opens a data path or names who decides ----------------------------
def test_an_old_token_changes_no_access_policy_and_registers_no_key(world):
    c = world["c"]
    key = c4gh.generate_keypair()
    pub = c4gh.public_key_file(key.public).decode()
    revoked = c.post("/api/v1/me/keys", json={"name": "old laptop", "public_key": pub}, headers=_as(world, "rita"))
    assert revoked.status_code == 201
    assert c.delete(f"/api/v1/me/keys/{revoked.json()['fingerprint']}",
                    headers=_as(world, "rita")).status_code == 204
    _old(world)
    attempts = [
        c.put(f"/api/v1/datasets/{world['x']}/access-policy", json={"applicant_download": True},
              headers=_as(world, "owner")),
        c.put(f"/api/v1/datasets/{world['x']}/access-policy", json={"roles": {"handler": ["sam"]}},
              headers=_as(world, "owner")),
        c.post("/api/v1/me/keys", json={"name": "attacker", "public_key": c4gh.public_key_file(
            c4gh.generate_keypair().public).decode()}, headers=_as(world, "rita")),
        c.post("/api/v1/me/keys", json={"name": "again", "public_key": pub}, headers=_as(world, "rita")),
    ]
    for r in attempts:
        assert r.status_code == 403, r.text
        assert r.json()["code"] == "mfa-required" and "multi-factor login within the last 10 minutes" in r.json()[
            "detail"]
    # another project's PI still gets the dataset's 404 first: nothing is said about MFA
    assert c.put(f"/api/v1/datasets/{world['x']}/access-policy", json={"applicant_download": True},
                 headers=_as(world, "otherowner")).status_code == 404
    with world["hub"].sessions() as s:
        assert s.get(AccessPolicy, world["x"]) is None and not list(s.scalars(select(DatasetRole)))
        keys = list(s.scalars(select(UserKey)))
        assert len(keys) == 1 and keys[0].revoked_at is not None  # not re-activated either
    # with a token minted after a second factor, the same changes go through
    world["t"]["owner"] = token_for(world["hub"], person(world, "owner"))
    world["t"]["rita"] = token_for(world["hub"], person(world, "rita"))
    _policy(world, {"applicant_download": True})
    assert c.post("/api/v1/me/keys", json={"name": "again", "public_key": pub},
                  headers=_as(world, "rita")).status_code == 201
    with world["hub"].sessions() as s:
        assert s.get(AccessPolicy, world["x"]).applicant_download is True
        assert s.scalar(select(UserKey.revoked_at)) is None
        reactivated = s.scalars(select(AuditEvent).where(AuditEvent.action == "archive.user_key.added")).all()
        assert [e.details.get("reactivated") for e in reactivated] == [None, True]


def test_the_web_forms_ask_for_a_second_factor_and_say_why(world, app):
    owner = web_client(app, world["hub"], person(world, "owner"))
    rita = web_client(app, world["hub"], person(world, "rita"))
    _old(world, token=False)
    r = owner.post(f"/datasets/{world['x']}/access/download", follow_redirects=True,
                   data={"allowed": "yes", "csrf_token": csrf_for(owner)})
    assert r.url.path == "/login/reauth" and r.url.params["next"] == f"/datasets/{world['x']}/access"
    assert "then change the download policy again" in ALERT.search(r.text).group(1)
    pub = c4gh.public_key_file(c4gh.generate_keypair().public).decode()
    r = rita.post("/account/keys", follow_redirects=True,
                  data={"name": "laptop", "public_key": pub, "csrf_token": csrf_for(rita)})
    assert r.url.path == "/login/reauth" and r.url.params["next"] == "/account/keys"
    assert "then add the key again" in ALERT.search(r.text).group(1)
    with world["hub"].sessions() as s:
        assert s.get(AccessPolicy, world["x"]) is None and s.scalar(select(UserKey.id)) is None
        assert s.scalar(select(Entitlement.id)) is None
