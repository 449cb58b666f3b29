"""What opens data needs a fresh second factor (a class test).

Every decision that grants, widens or extends access to a dataset — a handler's approval (a renewal's too), a
decider's vote to approve (whether it completes the quorum or only counts towards it), an external owner's approval
(a first one, or one extending access already granted) — on the API and on the web form, is refused to a credential
whose second factor is older than `security.fresh_mfa_minutes`: a weeks-old API token or browser session. The API
answers 403 `mfa-required` (problem+json, as the other fresh-MFA routes), the web form sends the browser to confirm
it's them with a message saying what to do again, and nothing changes: no entitlement, no event, no application (the
refusal is audited). The same credential made fresh succeeds. What closes data (reject, return, revoke, close, a vote
against, an external revocation, switching applicants' downloads off) still works with the stale credential.

An external owner's system cannot re-authenticate: it approves with a decision token, minted on the dataset's access
page by a handler under fresh MFA, bound to that dataset, good for nothing else, and valid however old it is.
"""

# ruff: noqa: F811 - `world` is test_access's fixture, imported here and taken as the tests' argument

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from conftest import bearer, token_for, web_client
from helpers import csrf_for
from strongroom.access.models import AccessPolicy, Application, ApplicationEvent, Entitlement
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.identity.models import ApiToken, WebSession
from test_access import END, _as, _submitted, world  # noqa: F401 - world is the fixture
from test_access_separation import _policy, _with_token, person, user_id

STALE = dt.timedelta(days=20)
ALERT = re.compile(r'role="alert"[^>]*>\s*([^<]+)')
FLASH = re.compile(r'<p id="flash" class="flash flash-ok" role="status">([^<]+)</p>')
TOKEN = re.compile(r'<pre id="new-decision-token">(sr_[A-Za-z0-9]+_[A-Za-z0-9_-]+)</pre>')
SOON = (dt.date.today() + dt.timedelta(days=90)).isoformat()


# -- plumbing -----------------------------------------------------------------------------------
def _age(world, username: str) -> None:
    """Every API token of the user minted, and every browser session's second factor given, weeks ago."""
    then, uid = dt.datetime.now(dt.UTC) - STALE, user_id(world, username)
    with transaction(world["hub"].sessions) as s:
        s.execute(update(ApiToken).where(ApiToken.user_id == uid).values(created_at=then))
        s.execute(update(WebSession).where(WebSession.user_id == uid).values(mfa_at=then))


def _state(world) -> dict:
    """Everything a decision could change: entitlements, applications and their events."""
    with world["hub"].sessions() as s:
        return {
            "entitlements": sorted((str(e.user_id), e.dataset_id, e.ends_at.isoformat(), e.revoked_at is None)
                                   for e in s.scalars(select(Entitlement))),
            "applications": sorted((a.id, a.state) for a in s.scalars(select(Application))),
            "events": s.scalar(select(func.count()).select_from(ApplicationEvent)),
        }


def _live_entitlements(world, username: str) -> list[Entitlement]:
    now = dt.datetime.now(dt.UTC)
    with world["hub"].sessions() as s:
        return [e for e in s.scalars(select(Entitlement).where(Entitlement.user_id == user_id(world, username)))
                if e.active(now)]


def _mfa_refusals(world) -> list[AuditEvent]:
    with world["hub"].sessions() as s:
        return [e for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "access.decision.refused"))
                if "second factor" in e.details.get("reason", "")]


def _alert(r) -> str:
    found = ALERT.search(r.text)
    assert found, r.text[:2000]
    return html.unescape(found.group(1))


def assert_api_asks_for_mfa(r) -> None:
    """The answer every fresh-MFA route of the API gives."""
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["code"] == "mfa-required" and problem["type"].endswith("/mfa-required")
    assert "multi-factor login within the last 10 minutes" in problem["detail"] and problem["reauthenticate"]


def assert_web_asks_for_mfa(r, back_to: str, again: str) -> None:
    """The form sends the browser to confirm it's them, back to the page afterwards, saying what to do again."""
    assert r.url.path == "/login/reauth" and r.url.params["next"] == back_to, r.url
    alert = _alert(r)
    assert "multi-factor login within the last 10 minutes" in alert and f"confirm it's you, then {again}" in alert


# -- the class: decisions that open data -------------------------------------------------------------
@dataclass
class Scene:
    actor: str  # who decides
    application: str | None  # the application the decision is about (external decisions name none)
    granted: Callable[[], None]  # checks what the successful decision did


@dataclass(frozen=True)
class Grant:
    name: str
    prepare: Callable[..., Scene]
    path: str  # the API route's (and the web form's, under /applications) command, or "external"
    body: dict
    again: str = ""  # the web message's "then …"


def _approve_scene(world, people) -> Scene:
    app_id = _submitted(world)
    return Scene("owner", app_id, lambda: _approved(world, app_id))


def _approved(world, app_id: str) -> None:
    with world["hub"].sessions() as s:
        assert s.get(Application, app_id).state == "approved"
    assert [e.application_id for e in _live_entitlements(world, "rita")] == [app_id]


def _renewal_scene(world, people) -> Scene:
    """rita holds access until END and applies for its renewal: approving it extends her access."""
    first = _submitted(world)
    r = world["c"].post(f"/api/v1/applications/{first}/approve", json={"ends": SOON}, headers=_as(world, "owner"))
    assert r.status_code == 200, r.text
    c = world["c"]
    renewal = c.post(f"/api/v1/datasets/{world['x']}/applications", json={"renewal_of": first},
                     headers=_as(world, "rita")).json()["id"]
    c.post(f"/api/v1/applications/{renewal}/accept-terms", headers=_as(world, "rita"))
    assert c.post(f"/api/v1/applications/{renewal}/submit", headers=_as(world, "rita")).status_code == 200

    def granted() -> None:
        assert [e.application_id for e in _live_entitlements(world, "rita")] == [renewal]

    return Scene("owner", renewal, granted)


def _quorum_scene(quorum: int) -> Callable[..., Scene]:
    def prepare(world, people) -> Scene:
        _with_token(world, people, "d1", "d2")
        _policy(world, {"workflow": "quorum", "quorum": quorum,
                        "roles": {"decider": ["d1", "d2"], "handler": ["owner"]}})
        app_id = _submitted(world)

        def granted() -> None:
            if quorum == 1:  # the vote completed the quorum
                _approved(world, app_id)
            else:  # the vote counts towards it
                got = world["c"].get(f"/api/v1/applications/{app_id}", headers=_as(world, "owner")).json()
                assert got["state"] == "submitted" and got["votes"] == {str(user_id(world, "d1")): True}
                assert _live_entitlements(world, "rita") == []

        return Scene("d1", app_id, granted)

    return prepare


def _external_scene(*, extend: bool) -> Callable[..., Scene]:
    """The dataset's external owner's system (its own account, named handler) with a token scoped `access`:
    granting access, or (``extend``) extending access it granted earlier."""

    def prepare(world, people) -> Scene:
        _with_token(world, people, "cohort-system")
        _policy(world, {"external_owner": "Cohort", "roles": {"handler": ["cohort-system"]}})
        if extend:
            r = world["c"].post(f"/api/v1/external/datasets/{world['x']}/decisions",
                                json={"applicant": "rita", "approve": True, "ends": SOON},
                                headers=_as(world, "cohort-system"))
            assert r.status_code == 200, r.text

        def granted() -> None:
            live = _live_entitlements(world, "rita")
            assert live and max(e.ends_at for e in live).date() == END

        return Scene("cohort-system", None, granted)

    return prepare


GRANTS = [
    Grant("approve", _approve_scene, "approve", {"ends": str(END)}, "approve the application again"),
    Grant("approve a renewal", _renewal_scene, "approve", {"ends": str(END)}, "approve the application again"),
    Grant("vote completing the quorum", _quorum_scene(1), "vote", {"approve": True}, "cast your vote again"),
    Grant("vote counting towards the quorum", _quorum_scene(2), "vote", {"approve": True}, "cast your vote again"),
    Grant("external approval", _external_scene(extend=False), "external",
          {"applicant": "rita", "approve": True, "ends": str(END)}),
    Grant("external extension", _external_scene(extend=True), "external",
          {"applicant": "rita@example.org", "approve": True, "ends": str(END)}),
]
CASES = [pytest.param(g, via, id=f"{via}: {g.name}") for g in GRANTS for via in ("api", "web")
         if via == "api" or g.path != "external"]  # external decisions are an API, for machines


def _web_form(body: dict) -> dict:
    """The web form's fields for an API body."""
    return {"ends": body["ends"]} if "ends" in body else {"approve": "yes" if body["approve"] else "no"}


def _decide(world, grant: Grant, scene: Scene, via: str, browser: TestClient | None):
    if grant.path == "external":
        return world["c"].post(f"/api/v1/external/datasets/{world['x']}/decisions", json=grant.body,
                               headers=_as(world, scene.actor))
    if via == "api":
        return world["c"].post(f"/api/v1/applications/{scene.application}/{grant.path}", json=grant.body,
                               headers=_as(world, scene.actor))
    assert browser is not None
    return browser.post(f"/applications/{scene.application}/{grant.path}", follow_redirects=True,
                        data={**_web_form(grant.body), "csrf_token": csrf_for(browser)})


@pytest.mark.parametrize(("grant", "via"), CASES)
def test_a_stale_credential_opens_nothing_and_a_fresh_one_does(world, people, app, grant: Grant, via: str):
    scene = grant.prepare(world, people)
    browser = web_client(app, world["hub"], person(world, scene.actor)) if via == "web" else None
    _age(world, scene.actor)
    before = _state(world)

    r = _decide(world, grant, scene, via, browser)
    if via == "api":
        assert_api_asks_for_mfa(r)
    else:
        assert_web_asks_for_mfa(r, f"/applications/{scene.application}", grant.again)
    assert _state(world) == before  # no entitlement, no event, no application recorded on anyone's behalf
    refused = _mfa_refusals(world)
    assert len(refused) == 1 and refused[0].outcome == "denied" and refused[0].actor_id == user_id(world, scene.actor)

    # the same person with a second factor just given: a new token, or a new login
    if via == "api":
        world["t"][scene.actor] = token_for(world["hub"], person(world, scene.actor))
    else:
        browser = web_client(app, world["hub"], person(world, scene.actor))
    r = _decide(world, grant, scene, via, browser)
    if via == "api":
        assert r.status_code == 200, r.text
    else:
        assert r.url.path == f"/applications/{scene.application}" and FLASH.search(r.text), r.text[:2000]
    scene.granted()


def test_the_web_form_returns_to_the_application_after_the_second_factor(world, people, app):
    """The whole way a person goes: a stale session's approval → confirm it's you (TOTP) → back on the
    application → approve again → approved."""
    dac = people("dac")
    _policy(world, {"roles": {"handler": ["dac"]}})
    app_id = _submitted(world)
    browser = web_client(app, world["hub"], dac)
    _age(world, "dac")
    r = browser.post(f"/applications/{app_id}/approve", follow_redirects=True,
                     data={"ends": str(END), "csrf_token": csrf_for(browser)})
    assert_web_asks_for_mfa(r, f"/applications/{app_id}", "approve the application again")
    r = browser.post("/login/reauth", follow_redirects=True,
                     data={"code": dac.code(), "next": f"/applications/{app_id}", "csrf_token": csrf_for(browser)})
    assert r.url.path == f"/applications/{app_id}" and 'id="approve-form"' in r.text
    assert _live_entitlements(world, "rita") == []
    r = browser.post(f"/applications/{app_id}/approve", follow_redirects=True,
                     data={"ends": str(END), "csrf_token": csrf_for(browser)})
    assert "Application approved" in FLASH.search(r.text).group(1)
    assert len(_live_entitlements(world, "rita")) == 1


def test_an_outsider_hears_nothing_about_mfa(world):
    """Another dataset's owner with a stale token still gets the application's 404 first."""
    app_id = _submitted(world)
    _age(world, "otherowner")
    r = world["c"].post(f"/api/v1/applications/{app_id}/approve", json={"ends": str(END)},
                        headers=_as(world, "otherowner"))
    assert r.status_code == 404 and r.json()["code"] == "not-found"
    r = world["c"].post(f"/api/v1/external/datasets/{world['x']}/decisions", headers=_as(world, "otherowner"),
                        json={"applicant": "rita", "approve": True, "ends": str(END)})
    assert r.status_code == 404


# -- what closes data never waits for a second factor ------------------------------------------------
def _closing(world, people, command: str) -> tuple[str, str, dict]:
    """(who, application, body) for a protective command on an application in the state it needs."""
    if command == "vote":  # quorum 2 of d1, d2: d1's rejection makes it unreachable
        _with_token(world, people, "d1", "d2")
        _policy(world, {"workflow": "quorum", "quorum": 2, "roles": {"decider": ["d1", "d2"], "handler": ["owner"]}})
        return "d1", _submitted(world), {"approve": False}
    app_id = _submitted(world)
    if command in ("revoke", "close"):
        r = world["c"].post(f"/api/v1/applications/{app_id}/approve", json={"ends": str(END)},
                            headers=_as(world, "owner"))
        assert r.status_code == 200, r.text
    body = {"reject": {"reason": "no ethics approval"}, "return": {"comment": "add the ethics number"},
            "revoke": {"reason": "breach of terms"}, "close": {"comment": "project over"}}[command]
    return "owner", app_id, body


EXPECTED = {"reject": "rejected", "return": "returned", "revoke": "revoked", "close": "closed", "vote": "rejected"}


@pytest.mark.parametrize("via", ["api", "web"])
@pytest.mark.parametrize("command", list(EXPECTED))
def test_what_closes_data_works_with_a_stale_credential(world, people, app, command: str, via: str):
    who, app_id, body = _closing(world, people, command)
    browser = web_client(app, world["hub"], person(world, who)) if via == "web" else None
    _age(world, who)
    if via == "api":
        r = world["c"].post(f"/api/v1/applications/{app_id}/{command}", json=body, headers=_as(world, who))
        assert r.status_code == 200 and r.json()["state"] == EXPECTED[command], r.text
    else:
        assert browser is not None
        form = {"approve": "no"} if command == "vote" else {k: v for k, v in body.items()}
        r = browser.post(f"/applications/{app_id}/{command}", follow_redirects=True,
                         data={**form, "csrf_token": csrf_for(browser)})
        assert r.url.path == f"/applications/{app_id}" and FLASH.search(r.text), r.text[:2000]
    with world["hub"].sessions() as s:
        assert s.get(Application, app_id).state == EXPECTED[command]
    assert _live_entitlements(world, "rita") == [] and _mfa_refusals(world) == []


def test_an_applicant_withdraws_with_a_stale_credential(world):
    app_id = _submitted(world)
    _age(world, "rita")
    r = world["c"].post(f"/api/v1/applications/{app_id}/close", headers=_as(world, "rita"))
    assert r.status_code == 200 and r.json()["state"] == "closed"


def test_an_external_revocation_works_with_a_stale_token(world, people):
    _external_scene(extend=True)(world, people)
    _age(world, "cohort-system")
    r = world["c"].post(f"/api/v1/external/datasets/{world['x']}/decisions", headers=_as(world, "cohort-system"),
                        json={"applicant": "rita", "approve": False, "reason": "consent withdrawn"})
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert _live_entitlements(world, "rita") == []


def test_switching_applicants_downloads_off_works_with_a_stale_session(world, app):
    _policy(world, {"applicant_download": True})
    browser = web_client(app, world["hub"], person(world, "owner"))
    _age(world, "owner")
    r = browser.post(f"/datasets/{world['x']}/access/download", follow_redirects=True,
                     data={"allowed": "no", "csrf_token": csrf_for(browser)})
    assert "no longer download" in FLASH.search(r.text).group(1)
    with world["hub"].sessions() as s:
        assert s.get(AccessPolicy, world["x"]).applicant_download is False
    r = browser.post(f"/datasets/{world['x']}/access/download", follow_redirects=True,
                     data={"allowed": "yes", "csrf_token": csrf_for(browser)})  # opening it again: not stale
    assert r.url.path == "/login/reauth"
    with world["hub"].sessions() as s:
        assert s.get(AccessPolicy, world["x"]).applicant_download is False


# -- decision tokens: how a machine approves -----------------------------------------------------
def _mint(world, app, username: str, *, dataset: str | None = None, days: str = "30"):
    browser = web_client(app, world["hub"], person(world, username))
    ds = dataset or world["x"]
    return browser, browser.post(f"/datasets/{ds}/access/decision-tokens", follow_redirects=True,
                                 data={"name": "cohort decisions", "days": days, "csrf_token": csrf_for(browser)})


def _decision_token(world, app, username: str = "cohort-system", dataset: str | None = None) -> str:
    _, r = _mint(world, app, username, dataset=dataset)
    assert r.status_code == 200 and "Decision token “cohort decisions” minted" in FLASH.search(r.text).group(1)
    return TOKEN.search(r.text).group(1)


def _external(world, token: str, *, approve: bool = True, dataset: str | None = None):
    body = {"applicant": "rita", "approve": approve, "ends": str(END) if approve else None,
            "reason": "" if approve else "consent withdrawn"}
    return world["c"].post(f"/api/v1/external/datasets/{dataset or world['x']}/decisions", json=body,
                           headers=bearer(token))


def test_a_decision_token_approves_however_old_it_is(world, people, app):
    people("cohort-system")
    people("d1")
    _policy(world, {"external_owner": "Cohort", "roles": {"handler": ["cohort-system"], "decider": ["d1"]}})
    token = _decision_token(world, app)
    page = web_client(app, world["hub"], person(world, "d1")).get(f"/datasets/{world['x']}/access")
    assert "cohort decisions" in page.text and token.split("_")[1] in page.text  # the committee sees it, by prefix
    assert token not in page.text
    _age(world, "cohort-system")  # weeks later, the system posts its decisions unattended
    r = _external(world, token)
    assert r.status_code == 200 and r.json()["state"] == "approved", r.text
    assert len(_live_entitlements(world, "rita")) == 1
    r = _external(world, token, approve=False)
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert _live_entitlements(world, "rita") == []
    with world["hub"].sessions() as s:
        created = s.scalar(select(AuditEvent).where(AuditEvent.action == "token.created",
                                                    AuditEvent.actor_id == user_id(world, "cohort-system")))
        assert created.details["purpose"] == "external decisions"
        assert created.details["scopes"] == [f"access-decisions:{world['x']}"]


def test_minting_a_decision_token_needs_a_fresh_second_factor_and_the_handler_role(world, people, app):
    people("cohort-system")
    people("d1")
    _policy(world, {"external_owner": "Cohort", "roles": {"handler": ["cohort-system"], "decider": ["d1"]}})
    browser = web_client(app, world["hub"], person(world, "cohort-system"))
    _age(world, "cohort-system")
    r = browser.post(f"/datasets/{world['x']}/access/decision-tokens", follow_redirects=True,
                     data={"name": "cohort decisions", "days": "30", "csrf_token": csrf_for(browser)})
    assert_web_asks_for_mfa(r, f"/datasets/{world['x']}/access", "mint the decision token again")
    # not a handler of the dataset (a decider, the PI once others are named, another dataset's owner): none
    for outsider in ("d1", "owner", "otherowner"):
        _, r = _mint(world, app, outsider)
        assert r.status_code == 404, (outsider, r.status_code)
    # a lifetime beyond the tokens' longest: said on the page
    _, r = _mint(world, app, "cohort-system", days="365")
    assert r.status_code == 422 and "Token lifetime must be 1-90 days." in _alert(r)
    with world["hub"].sessions() as s:
        assert not [t for t in s.scalars(select(ApiToken)) if any(sc.startswith("access-") for sc in t.scopes)]


def test_a_decision_token_decides_for_its_dataset_only_and_does_nothing_else(world, people, app):
    """Bound to one dataset: another dataset its owner handles too refuses it; every route that asks for a
    scope refuses it, even on its own dataset."""
    people("cohort-system")
    _policy(world, {"external_owner": "Cohort", "roles": {"handler": ["cohort-system"]}})
    r = world["c"].put(f"/api/v1/datasets/{world['y']}/access-policy", headers=_as(world, "otherowner"),
                       json={"external_owner": "Cohort", "roles": {"handler": ["cohort-system"]}})
    assert r.status_code == 204
    token = _decision_token(world, app)
    r = _external(world, token, dataset=world["y"])
    assert r.status_code == 403 and "decides only for the dataset it was minted for" in r.json()["detail"]
    app_id = _submitted(world)
    before = _state(world)
    for method, path, body in (
            ("POST", f"/api/v1/applications/{app_id}/approve", {"ends": str(END)}),
            ("POST", f"/api/v1/applications/{app_id}/vote", {"approve": True}),
            ("GET", f"/api/v1/applications/{app_id}", None),
            ("GET", "/api/v1/applications/queue", None),
            ("POST", f"/api/v1/datasets/{world['x']}/applications", None),
            ("PUT", f"/api/v1/datasets/{world['x']}/access-policy", {"applicant_download": True}),
            ("GET", f"/api/v1/datasets/{world['x']}/access-report", None),
            ("GET", "/api/v1/me/passport", None),
            ("GET", "/api/v1/me", None),
            ("GET", "/api/v1/tokens", None),
            ("GET", "/api/v1/projects", None),
            ("GET", f"/api/v1/datasets/{world['x']}", None)):
        r = world["c"].request(method, path, json=body, headers=bearer(token))
        assert r.status_code == 403 and "lacks the" in r.json()["detail"], (method, path, r.status_code, r.text)
    assert _state(world) == before


def test_a_decision_token_stops_when_its_owner_stops_handling(world, people, app):
    people("cohort-system")
    _policy(world, {"external_owner": "Cohort", "roles": {"handler": ["cohort-system"]}})
    token = _decision_token(world, app)
    _policy(world, {"roles": {"handler": ["owner"]}})
    assert _external(world, token).status_code == 404
    assert _live_entitlements(world, "rita") == []
    page = web_client(app, world["hub"], person(world, "owner")).get(f"/datasets/{world['x']}/access")
    assert page.status_code == 200
    assert "No decision tokens" in page.text  # listed only while it can decide


def test_a_decision_token_is_marked_on_its_owners_account_page_and_revoked_there(world, people, app):
    people("cohort-system")
    _policy(world, {"external_owner": "Cohort", "roles": {"handler": ["cohort-system"]}})
    token = _decision_token(world, app)
    browser = web_client(app, world["hub"], person(world, "cohort-system"))
    assert f"access-decisions:{world['x']}" in browser.get("/account").text
    r = browser.post(f"/account/tokens/{token.split('_')[1]}/revoke", follow_redirects=True,
                     data={"csrf_token": csrf_for(browser)})
    assert FLASH.search(r.text).group(1) == "Token revoked."
    assert _external(world, token).status_code == 401
    assert _live_entitlements(world, "rita") == []


def test_a_personal_token_approves_externally_only_while_fresh(world, people):
    """A person (here the PI, who handles by default) may post an external decision with a token minted
    minutes ago; the refusal of an old one points to decision tokens."""
    _age(world, "owner")
    r = world["c"].post(f"/api/v1/external/datasets/{world['x']}/decisions", headers=_as(world, "owner"),
                        json={"applicant": "rita", "approve": True, "ends": str(END)})
    assert_api_asks_for_mfa(r)
    assert "decision token" in r.json()["detail"]
    with world["hub"].sessions() as s:
        assert s.scalar(select(Application.id)) is None
    world["t"]["owner"] = token_for(world["hub"], person(world, "owner"))
    r = world["c"].post(f"/api/v1/external/datasets/{world['x']}/decisions", headers=_as(world, "owner"),
                        json={"applicant": "rita", "approve": True, "ends": str(END)})
    assert r.status_code == 200 and r.json()["state"] == "approved"


def test_the_stale_refusal_names_the_reauthentication_page(world, app):
    """The problem document is the one the other fresh-MFA routes answer; the page's link is the same too."""
    app_id = _submitted(world)
    _age(world, "owner")
    api = world["c"].post(f"/api/v1/applications/{app_id}/approve", json={"ends": str(END)},
                          headers=_as(world, "owner"))
    other = world["c"].put(f"/api/v1/datasets/{world['x']}/access-policy", json={"applicant_download": True},
                           headers=_as(world, "owner"))
    assert {k: v for k, v in api.json().items() if k != "detail"} == \
        {k: v for k, v in other.json().items() if k != "detail"}
    assert api.json()["detail"] == other.json()["detail"]
    browser = web_client(app, world["hub"], person(world, "owner"))
    _age(world, "owner")
    r = browser.post(f"/applications/{app_id}/approve", follow_redirects=False,
                     data={"ends": str(END), "csrf_token": csrf_for(browser)})
    assert r.status_code == 303 and r.headers["location"] == f"/login/reauth?next={quote(f'/applications/{app_id}')}"
