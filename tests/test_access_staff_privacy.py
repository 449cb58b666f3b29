"""A data access committee's side of an application is staff's: it needs a second factor, and its deliberation
stays out of the applicant's own audit trail.

1. Whoever an access policy names (handler, decider, reviewer), or a handler asks to review one application, and a
   platform auditor, hold a data role: a single-factor OpenID Connect login is refused them (driven here through a
   real OpenID Provider, tests/support/oidc). A session from before they were named handles nothing until a second
   factor (every staff page and command sends it to re-authenticate), while an applicant with a single-factor
   session applies as before.
2. The personal audit trail (GET /api/v1/me/audit, the /account page) shows what the user did, and of what others did
   to them only the kinds meant for them (audit.service.SUBJECT_SEES), never another actor's address: an applicant
   reads there exactly what their application page shows, not the votes, assignment, review and decision requests
   or internal remarks. The chain itself keeps every event.
"""
# ruff: noqa: F811
from __future__ import annotations

import uuid
from urllib.parse import unquote

import pytest
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from helpers import form_post
from strongroom.access import applications, decisions, events, reports
from strongroom.access.models import Application, ApplicationEvent, Entitlement
from strongroom.audit import service as audit
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.deps import SESSION_COOKIE
from strongroom.errors import MfaRequired
from strongroom.identity.models import User
from strongroom.identity.principal import SCOPES, Principal
from test_access import END, GOOD, _as, _submitted, world  # noqa: F401
from test_access_separation import _policy, _with_token, person
from test_oidc_reauth import Browser, _last_oidc_login, _user, provider, settings  # noqa: F401

pytestmark = pytest.mark.slow  # the OpenID Provider is a node process

# every type of application event (access.events.replay)
EVENT_TYPES = ("created", "saved", "terms_accepted", "member_invited", "submitted", "returned", "assigned",
               "review_requested", "decision_requested", "voted", "remarked", "approved", "rejected", "closed",
               "revoked")
DELIBERATION = ("access.application.voted", "access.application.assigned", "access.application.review_requested",
                "access.application.decision_requested")


def _id(hub, subject: str) -> str:
    return str(_user(hub, subject).id)


def _state(hub, application_id: str) -> tuple[str, int]:
    with hub.sessions() as s:
        events_ = s.scalars(select(ApplicationEvent).where(ApplicationEvent.application_id == application_id))
        return s.get(Application, application_id).state, len(events_.all())


def _reauth(response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith("/login/reauth")


# -- 1. a second factor for every access role --------------------------------------------------------
def test_every_access_role_and_the_auditor_need_a_second_factor_at_an_oidc_login(world, app, hub, people) -> None:
    c = world["c"]
    names = ("dac-handler", "dac-decider", "dac-reviewer", "dac-asked", "dpo")
    for name in names:  # no role yet: a single-factor login is let in, as before
        assert Browser(app).login(name, mfa=False).status_code == 303
    ids = {name: _id(hub, name) for name in names}
    _policy(world, {"roles": {"handler": ["owner", ids["dac-handler"]], "decider": [ids["dac-decider"]],
                              "reviewer": [ids["dac-reviewer"]]}})
    app_id = _submitted(world)
    # asked to review this one application, named nowhere else
    r = c.post(f"/api/v1/applications/{app_id}/request", json={"users": [ids["dac-asked"]], "kind": "review"},
               headers=_as(world, "owner"))
    assert r.status_code == 200, r.text
    root = people("root", admin=True)
    r = c.put(f"/api/v1/admin/auditors/{ids['dpo']}", headers=bearer(token_for(hub, root)))
    assert r.status_code == 200, r.text

    for name in names:
        browser = Browser(app)
        refused = browser.login(name, mfa=False)
        assert refused.status_code == 403 and "multi-factor" in refused.text, (name, refused.text)
        assert browser.hub.cookies.get(SESSION_COOKIE) is None
        denied = _last_oidc_login(hub)
        assert denied.outcome == "denied" and denied.details["reason"] == "mfa required for data role", name
        assert Browser(app).login(name, mfa=True).status_code == 303, name  # with MFA, as always

    # an applicant holds no such role: their single-factor login goes on working
    assert Browser(app).login("just-applying", mfa=False).status_code == 303


def test_a_session_from_before_the_naming_handles_nothing_until_a_second_factor(world, app, hub) -> None:
    c = world["c"]
    late = Browser(app)
    assert late.login("late", mfa=False).status_code == 303  # a single-factor session, then named
    uid = _id(hub, "late")
    _policy(world, {"roles": {"handler": ["owner", uid], "decider": [uid]}})
    a1 = _submitted(world)
    a2 = _submitted(world, "sam")
    r = c.post(f"/api/v1/applications/{a2}/approve", json={"ends": END.isoformat()}, headers=_as(world, "owner"))
    assert r.status_code == 200, r.text
    before = {a: _state(hub, a) for a in (a1, a2)}
    b = late.hub

    # reading: the application (the applicant's answers), the queue, the data owner's page, the usage figures
    page = b.get(f"/applications/{a1}", follow_redirects=False)
    assert _reauth(page) and "Dnr 2026-01234-01" not in page.text
    assert unquote(page.headers["location"]).endswith(f"next=/applications/{a1}")
    listing = b.get("/applications")
    assert listing.status_code == 200 and a1 not in listing.text and a2 not in listing.text
    assert "multi-factor" in listing.text
    assert _reauth(b.get(f"/datasets/{world['x']}/access", follow_redirects=False))
    assert _reauth(b.get(f"/datasets/{world['x']}/metrics", follow_redirects=False))
    # every command: what opens data and what closes it (reject, return, revoke, close, a vote against)
    for command, data in (("assign", {}), ("return", {"comment": "more"}), ("remark", {"text": "hm"}),
                          ("remark", {"text": "hm", "public": "on"}), ("approve", {"ends": END.isoformat()}),
                          ("reject", {"reason": "no"}), ("vote", {"approve": "no"}), ("vote", {"approve": "yes"}),
                          ("close", {"comment": "done"})):
        r = form_post(b, f"/applications/{a1}/{command}", data)
        assert _reauth(r), (command, r.status_code, r.text[:300])
    r = form_post(b, f"/applications/{a2}/revoke", {"reason": "revoked by a single-factor session"})
    assert _reauth(r), r.text[:300]
    assert {a: _state(hub, a) for a in (a1, a2)} == before
    with hub.sessions() as s:
        ent = s.scalar(select(Entitlement).where(Entitlement.application_id == a2))
        assert ent.revoked_at is None
        assert not s.scalars(select(ApplicationEvent).where(ApplicationEvent.actor_id == uuid.UUID(uid))).all()

    # the way on: a second factor at the provider, back to the application
    r = b.get(page.headers["location"], follow_redirects=False)
    r = b.get(r.headers["location"], follow_redirects=False)
    done = late.provider_login(r.headers["location"], "late", mfa=True)
    assert done.status_code == 303 and done.headers["location"] == f"/applications/{a1}", done.text
    assert "Dnr 2026-01234-01" in b.get(f"/applications/{a1}").text
    assert a1 in b.get("/applications").text
    assert form_post(b, f"/applications/{a1}/reject", {"reason": "no"}).headers["location"] == f"/applications/{a1}"
    assert _state(hub, a1)[0] == "rejected"


def test_an_applicant_with_a_single_factor_login_applies_as_before(world, app, hub) -> None:
    ann = Browser(app)
    assert ann.login("ann", mfa=False).status_code == 303
    b = ann.hub
    r = form_post(b, f"/apply/{world['x']}")
    assert r.status_code == 303, r.text
    app_id = r.headers["location"].removeprefix("/applications/")
    answers = {"study_name": GOOD["study_name"], "ethics.number": GOOD["ethics"]["number"],
               "description": GOOD["description"], "selection": GOOD["selection"],
               "pseudonymization": GOOD["pseudonymization"], "purposes": GOOD["purposes"],
               "sharing_plan": GOOD["sharing_plan"], "contact": "ann@uni.example", "start": GOOD["start"],
               "team": "Ann;Uni;analyst"}
    r = form_post(b, f"/applications/{app_id}/save", {**answers, "then": "accept-terms"})
    assert r.status_code == 303 and r.headers["location"] == f"/applications/{app_id}", r.text[:500]
    r = form_post(b, f"/applications/{app_id}/submit")
    assert r.status_code == 303 and r.headers["location"] == f"/applications/{app_id}", r.text[:500]
    assert app_id in b.get("/applications").text
    # the handler returns it; the applicant reads why, and changes and closes it, all single-factor
    r = world["c"].post(f"/api/v1/applications/{app_id}/return", json={"comment": "add the team's roles"},
                        headers=_as(world, "owner"))
    assert r.status_code == 200, r.text
    page = b.get(f"/applications/{app_id}")
    assert page.status_code == 200 and "add the team&#39;s roles" in page.text
    assert "access.application.returned" in b.get("/account").text
    assert form_post(b, f"/applications/{app_id}/close", {"comment": "later"}).status_code == 303
    assert _state(hub, app_id)[0] == "closed"


def test_staff_services_refuse_a_principal_without_a_second_factor(world, hub) -> None:
    """The API takes tokens only, and every token stands for a second factor (its minting): the services refuse
    staff without one whatever the way in, and let the applicant through."""
    app_id = _submitted(world)
    with transaction(hub.sessions) as s:
        def without_mfa(username: str) -> Principal:
            user = s.scalar(select(User).where(User.display_name == username.title()))
            return Principal(user=user, via="session", mfa_at=None, scopes=frozenset(SCOPES),
                             credential_id="session:nomfa000")

        owner, rita = without_mfa("owner"), without_mfa("rita")
        for staff_call in (lambda: events.load(s, owner, app_id),
                           lambda: applications.handled_datasets(s, owner),
                           lambda: reports.dataset_report(s, owner, world["x"]),
                           lambda: decisions.reject(s, owner, app_id, "no"),
                           lambda: decisions.close(s, owner, app_id),
                           lambda: decisions.external_decision(s, owner, world["x"], applicant="rita",
                                                               approve=False, ends=None, fresh_minutes=10)):
            with pytest.raises(MfaRequired):
                staff_call()
        assert applications.queue(s, owner) == []  # the landing pages list nothing, and do not fail
        assert events.load(s, rita, app_id).roles == {"applicant"}
        assert decisions.close(s, rita, app_id).state == "closed"


# -- 2. the personal audit trail ---------------------------------------------------------------------
def test_the_applicants_trail_shows_what_their_application_page_shows(world, people, app, hub) -> None:
    _with_token(world, people, "d1", "d2", "d3", "rev")
    _policy(world, {"workflow": "quorum", "quorum": 2,  # one vote against leaves it open
                    "roles": {"decider": ["d1", "d2", "d3"], "handler": ["owner"]}})
    c = world["c"]
    app_id = _submitted(world)
    owner = _as(world, "owner")
    for path, body in (("assign", None), ("remark", {"text": "secret note", "public": False}),
                       ("remark", {"text": "please add the protocol", "public": True}),
                       ("request", {"users": ["rev"], "kind": "review"}),
                       ("request", {"users": ["d1", "d2"], "kind": "decision"})):
        assert c.post(f"/api/v1/applications/{app_id}/{path}", json=body, headers=owner).status_code == 200
    r = c.post(f"/api/v1/applications/{app_id}/vote", json={"approve": False, "comment": "no"},
               headers=_as(world, "d2"))
    assert r.status_code == 200, r.text
    r = c.post(f"/api/v1/applications/{app_id}/return", json={"comment": "add the protocol"}, headers=owner)
    assert r.status_code == 200, r.text

    rita_id = str(world["rita"].user.id)
    trail = c.get("/api/v1/me/audit", headers=_as(world, "rita")).json()
    page = c.get(f"/api/v1/applications/{app_id}", headers=_as(world, "rita")).json()
    about = [e for e in trail if e["target"] == f"application:{app_id}"]
    # exactly the kinds of event the application page shows the applicant, the public remark included
    assert {e["action"] for e in about} == {f"access.application.{e['type']}" for e in page["events"]}
    assert [e["details"].get("public") for e in about if e["action"] == "access.application.remarked"] == [True]
    assert not {e["action"] for e in trail} & set(DELIBERATION)
    # the staff's doing without their address; the applicant's own as recorded
    others = [e for e in trail if e["actor_id"] != rita_id]
    assert {e["action"] for e in others} >= {"access.application.remarked", "access.application.returned"}
    assert all(e["ip"] is None for e in others)
    assert all(e["ip"] == "testclient" for e in about if e["actor_id"] == rita_id)

    account = web_client(app, hub, person(world, "rita")).get("/account").text
    assert "access.application.returned" in account and "access.application.remarked" in account
    assert not any(action in account for action in DELIBERATION)
    assert "public=False" not in account and "D2" not in account

    # each member of the committee still reads their own doing, and the chain keeps every event
    d2_trail = c.get("/api/v1/me/audit", headers=_as(world, "d2")).json()
    assert any(e["action"] == "access.application.voted" and e["details"] == {"approve": False} and e["ip"]
               for e in d2_trail)
    owner_trail = c.get("/api/v1/me/audit", headers=owner).json()
    assert {"access.application.assigned", "access.application.review_requested",
            "access.application.decision_requested"} <= {e["action"] for e in owner_trail}
    with hub.sessions() as s:
        stored = s.scalars(select(AuditEvent.action).where(AuditEvent.target == f"application:{app_id}")).all()
        assert set(DELIBERATION) <= set(stored)
        assert audit.verify(s).ok


def test_other_capabilities_subject_events_follow_the_same_rule(world, people, app, hub) -> None:
    c = world["c"]
    una = people("una")
    root = people("root", admin=True)
    # the owner (PI of scapis) adds una to the project: meant for her, without the PI's address
    r = c.post("/api/v1/projects/scapis/members", json={"user": "una"}, headers=_as(world, "owner"))
    assert r.status_code == 201, r.text
    # an administrator resets her second factor (her tokens end with it)
    r = c.post(f"/api/v1/admin/users/{una.user.id}/mfa-reset", headers=bearer(token_for(hub, root)))
    assert r.status_code == 204, r.text
    # an event of a kind not listed as meant for its subject stays out of her trail (deny by default)
    with transaction(hub.sessions) as s:
        audit.record(s, audit.Actor(root.user.id, "Root", "192.0.2.7"), "example.internal_review",
                     subject_user_id=una.user.id, details={"verdict": "watch"})

    una_token = bearer(token_for(hub, una))
    trail = c.get("/api/v1/me/audit", headers=una_token).json()
    actions = [e["action"] for e in trail]
    assert {"project.member.added", "mfa.reset", "user.access_revoked", "user.created"} <= set(actions)
    assert "example.internal_review" not in actions
    assert all(e["ip"] is None for e in trail if e["actor_id"] != str(una.user.id))
    added = next(e for e in trail if e["action"] == "project.member.added")
    assert added["actor"].startswith("Owner") and added["details"] == {"role": "member"}
    # the PI reads their own doing with their address
    mine = c.get("/api/v1/me/audit", headers=_as(world, "owner")).json()
    assert next(e for e in mine if e["action"] == "project.member.added")["ip"]

    # pages are cut after filtering: page by page, the same events as at once
    everything = [e["seq"] for e in trail]
    pages, before = [], None
    while True:
        params = {"limit": 2, **({"before": before} if before else {})}
        got = c.get("/api/v1/me/audit", params=params, headers=una_token).json()
        if not got:
            break
        pages += [e["seq"] for e in got if e["action"] != "token.used"]
        before = got[-1]["seq"]
    assert pages == [seq for seq, e in zip(everything, trail, strict=True) if e["action"] != "token.used"]


def test_the_trail_lists_exactly_the_application_events_the_applicant_is_shown() -> None:
    """One rule for the application page and the audit trail (access.events.shown_to_applicant)."""
    for type_ in EVENT_TYPES:
        kind = f"access.application.{type_}"
        if type_ == "remarked":
            assert audit.SUBJECT_SEES[kind] == "public"
            assert events.shown_to_applicant(type_, {"public": True})
            assert not events.shown_to_applicant(type_, {"public": False})
        else:
            assert (kind in audit.SUBJECT_SEES) == events.shown_to_applicant(type_, {}), kind
