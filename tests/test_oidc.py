"""OpenID Connect login, end to end through our HTTP routes against a real OpenID Provider.

The provider is panva's ``oidc-provider`` (tests/support/oidc), started once per module on a free
loopback port. Each login drives: our ``/auth/oidc/login`` → the provider's authorize endpoint and
login form → its redirect to our ``/auth/oidc/callback`` → our code exchange, id_token validation,
MFA policy, user upsert, audit and session cookie.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey
from sqlalchemy import func, select

from helpers import csrf_for
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.config import OidcSettings, Settings
from strongroom.db import transaction
from strongroom.deps import SESSION_COOKIE
from strongroom.errors import Invalid, Unauthenticated
from strongroom.identity.models import ApiToken, OidcLoginState, User, WebSession
from strongroom.identity.oidc import OidcClient
from strongroom.projects.service import create_project
from support.oidc_provider import ACR_MFA, ACR_SFA, complete_login, running_oidc_provider

pytestmark = pytest.mark.slow

BASE_URL = "http://127.0.0.1:8000"
REDIRECT_URI = BASE_URL + "/auth/oidc/callback"
CLIENT_ID = "strongroom-test"
CLIENT_SECRET = "test-client-secret-" + "z" * 24


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def provider() -> Iterator:
    with running_oidc_provider(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI]) as op:
        yield op


@pytest.fixture
def settings(settings: Settings, provider) -> Settings:  # overrides conftest's
    """conftest's settings plus our OpenID Provider; ``app``, ``hub`` and ``client`` build on it."""
    configured = settings.model_copy(update={
        "base_url": BASE_URL,
        "oidc": OidcSettings(issuer=provider.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET),
    })
    assert configured.oidc.client_secret.get_secret_value() == CLIENT_SECRET
    assert configured.database_url == settings.database_url
    return configured


def test_settings_accept_oidc_as_plain_data(settings: Settings, provider) -> None:
    """The same configuration given the way the TOML file / environment give it (nested data)."""
    s = Settings(var_dir=settings.var_dir, database_url=settings.database_url, base_url=BASE_URL,
                 oidc={"issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    assert s.oidc.issuer == provider.issuer and s.oidc.mfa_acr_values == [ACR_MFA]
    assert s.oidc.client_secret.get_secret_value() == CLIENT_SECRET
    assert CLIENT_SECRET not in json.dumps(s.masked())


# -- helpers -----------------------------------------------------------------------------------
def new_browser(app) -> TestClient:
    return TestClient(app, base_url=BASE_URL)


def start_login(browser: TestClient, provider, next_url: str = "/projects") -> str:
    """Our login route: returns the provider's authorize URL it redirected to."""
    r = browser.get("/auth/oidc/login", params={"next": next_url}, follow_redirects=False)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith(provider.issuer + "/"), location
    return location


def provider_redirect(authorize_url: str, login: str, *, mfa: bool, **claims) -> str:
    """Log in at the provider (a fresh provider session each time); the URL it sends the browser to."""
    with httpx.Client(timeout=15, trust_env=False) as op_browser:
        final = complete_login(op_browser, authorize_url, login=login, mfa=mfa, **claims)
    back = final.headers["location"]
    assert back.startswith(REDIRECT_URI + "?"), back
    query = parse_qs(urlsplit(back).query)
    assert "code" in query and "state" in query, back
    return back


def oidc_login(app, provider, login: str, *, mfa: bool, next_url: str = "/projects",
               browser: TestClient | None = None, **claims) -> tuple[TestClient, httpx.Response]:
    """The whole browser round trip; returns the browser and our callback's response."""
    browser = browser or new_browser(app)
    back = provider_redirect(start_login(browser, provider, next_url), login, mfa=mfa, **claims)
    return browser, browser.get(back, follow_redirects=False)


def events(hub, action: str) -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def users_for(hub, issuer: str, subject: str) -> list[User]:
    with hub.sessions() as s:
        return list(s.scalars(select(User).where(User.issuer == issuer, User.subject == subject)))


def sessions_of(hub, user_id: uuid.UUID) -> list[WebSession]:
    with hub.sessions() as s:
        return list(s.scalars(select(WebSession).where(WebSession.user_id == user_id)))


def pending_states(hub) -> int:
    with hub.sessions() as s:
        return s.scalar(select(func.count()).select_from(OidcLoginState))


def add_project(hub, slug: str, pi: uuid.UUID) -> None:
    with transaction(hub.sessions) as s:
        create_project(s, Actor.system("t"), slug=slug, name=f"Project {slug}", pi=str(pi),
                       ethics_ref="Dnr 2026-0001", end_date=dt.date.today() + dt.timedelta(days=365))


def assert_no_session(response: httpx.Response, browser: TestClient) -> None:
    assert SESSION_COOKIE not in response.cookies
    assert not any(SESSION_COOKIE in v for v in response.headers.get_list("set-cookie"))
    assert browser.cookies.get(SESSION_COOKIE) is None
    # …and the browser is not logged in.
    r = browser.get("/projects", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


# -- 1. multi-factor login ---------------------------------------------------------------------
def test_authorization_request_uses_pkce_nonce_state_and_asks_for_mfa(app, hub, provider) -> None:
    browser = new_browser(app)
    url = start_login(browser, provider)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    meta = httpx.get(provider.discovery_url, trust_env=False).json()
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == meta["authorization_endpoint"]
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT_URI
    assert "openid" in query["scope"].split()
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) >= 43
    assert len(query["nonce"]) >= 20 and len(query["state"]) >= 20
    assert query["acr_values"].split() == [ACR_MFA]
    # Only a hash of the state is stored; the verifier never leaves the server.
    with hub.sessions() as s:
        (pending,) = s.scalars(select(OidcLoginState)).all()
    assert pending.state_hash != query["state"] and len(pending.state_hash) == 64
    assert pending.nonce == query["nonce"]
    assert pending.code_verifier not in url
    assert pending.next_url == "/projects"
    # Every login gets fresh values.
    again = {k: v[0] for k, v in parse_qs(urlsplit(start_login(browser, provider)).query).items()}
    assert again["state"] != query["state"] and again["nonce"] != query["nonce"]
    assert again["code_challenge"] != query["code_challenge"]


def test_mfa_login_creates_user_from_claims_and_starts_an_mfa_session(app, hub, provider) -> None:
    browser, r = oidc_login(app, provider, "ada", mfa=True, name="Ada Lovelace", email="ada@uni.example",
                            affiliation=["member@uni.example", "staff@uni.example"])
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/projects"
    assert SESSION_COOKIE in r.cookies
    assert pending_states(hub) == 0  # the state was used up

    (user,) = users_for(hub, provider.issuer, "ada")
    assert user.display_name == "Ada Lovelace"
    assert user.email == "ada@uni.example"
    assert user.affiliation == "member@uni.example, staff@uni.example"
    assert not user.is_admin and user.is_active and not user.is_local
    assert user.last_login_at is not None

    (ws,) = sessions_of(hub, user.id)
    assert ws.stage == "active" and ws.auth_method == "oidc" and ws.mfa_at is not None

    page = browser.get("/projects", follow_redirects=False)
    assert page.status_code == 200
    assert "Project data needs a login with multi-factor" not in page.text

    created = events(hub, "user.created")
    assert [(e.outcome, e.subject_user_id, e.target) for e in created] == [("ok", user.id, "ada")]
    assert created[0].details == {"issuer": provider.issuer}
    logins = events(hub, "login.oidc")
    assert [(e.outcome, e.subject_user_id) for e in logins] == [("ok", user.id)]
    assert logins[0].details == {"method": "oidc", "acr": ACR_MFA, "mfa": True}

    # The same subject again (a new browser): the same row, profile claims refreshed, no new user.
    browser2, r2 = oidc_login(app, provider, "ada", mfa=True, name="Ada King", email="ada@uni.example")
    assert r2.status_code == 303 and SESSION_COOKIE in r2.cookies
    (again,) = users_for(hub, provider.issuer, "ada")
    assert again.id == user.id
    assert again.display_name == "Ada King"
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 1
    assert len(events(hub, "user.created")) == 1
    assert [e.outcome for e in events(hub, "login.oidc")] == ["ok", "ok"]
    assert len(sessions_of(hub, user.id)) == 2  # two browsers, two sessions
    assert browser2.get("/projects", follow_redirects=False).status_code == 200


def test_mfa_login_follows_next_and_refuses_offsite_next(app, hub, provider) -> None:
    _, r = oidc_login(app, provider, "grace", mfa=True, next_url="/account")
    assert r.status_code == 303 and r.headers["location"] == "/account"
    _, r = oidc_login(app, provider, "grace", mfa=True, next_url="//evil.example/x")
    assert r.status_code == 303 and r.headers["location"] == "/projects"


def test_same_subject_at_another_issuer_is_another_user(app, hub, provider) -> None:
    """Users are keyed by (issuer, subject): a local or other-issuer 'ada' is not this one."""
    with transaction(hub.sessions) as s:
        s.add(User(issuer="https://other-idp.example", subject="ada", display_name="Other Ada"))
    _, r = oidc_login(app, provider, "ada", mfa=True)
    assert r.status_code == 303
    (mine,) = users_for(hub, provider.issuer, "ada")
    (other,) = users_for(hub, "https://other-idp.example", "ada")
    assert mine.id != other.id and other.display_name == "Other Ada"


def test_claims_longer_than_their_columns_never_reach_the_database(app, hub, provider) -> None:
    """A provider's claims are the provider's to choose: an over-long subject is refused (never cut: a cut one
    could be another person's), a long name or affiliation shortened, a long e-mail dropped (a cut address would
    be someone else's) — never a database error (PostgreSQL checks lengths; a 500 before this)."""
    _, r = oidc_login(app, provider, "s" * 300, mfa=True)
    assert 400 <= r.status_code < 500 and "longer than this hub accepts" in r.text, (r.status_code, r.text[:300])
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 0
    long_mail = "a" * 250 + "@uni.example"
    _, r = oidc_login(app, provider, "bo", mfa=True, name="B" * 400, email=long_mail, affiliation="m@" + "x" * 300)
    assert r.status_code == 303, r.text
    (user,) = users_for(hub, provider.issuer, "bo")
    assert user.display_name == "B" * 255 and user.email is None and len(user.affiliation or "") == 255


# -- 2. a data role needs MFA ------------------------------------------------------------------
def test_single_factor_login_is_refused_for_a_project_member(app, hub, provider) -> None:
    _, first = oidc_login(app, provider, "bob", mfa=True)
    assert first.status_code == 303
    (bob,) = users_for(hub, provider.issuer, "bob")
    add_project(hub, "lung-ct", bob.id)
    sessions_before = {ws.id_hash for ws in sessions_of(hub, bob.id)}

    browser, r = oidc_login(app, provider, "bob", mfa=False)
    assert r.status_code == 403, r.text
    assert "multi-factor" in r.text
    assert_no_session(r, browser)
    assert {ws.id_hash for ws in sessions_of(hub, bob.id)} == sessions_before

    denied = events(hub, "login.oidc")[-1]
    assert denied.outcome == "denied" and denied.subject_user_id == bob.id
    assert denied.details == {"method": "oidc", "acr": ACR_SFA, "mfa": False,
                              "reason": "mfa required for data role"}

    # As a problem document for API clients.
    api = new_browser(app)
    back = provider_redirect(start_login(api, provider), "bob", mfa=False)
    r = api.get(back, headers={"Accept": "application/json"}, follow_redirects=False)
    assert r.status_code == 403
    assert r.json()["code"] == "forbidden" and r.json()["mfa_required"] is True
    assert_no_session(r, api)

    # MFA still works for them.
    _, ok = oidc_login(app, provider, "bob", mfa=True)
    assert ok.status_code == 303 and SESSION_COOKIE in ok.cookies


def test_single_factor_login_is_refused_for_an_admin(app, hub, provider) -> None:
    oidc_login(app, provider, "root", mfa=True)
    (root,) = users_for(hub, provider.issuer, "root")
    with transaction(hub.sessions) as s:
        s.get(User, root.id).is_admin = True
    browser, r = oidc_login(app, provider, "root", mfa=False)
    assert r.status_code == 403
    assert_no_session(r, browser)
    assert events(hub, "login.oidc")[-1].outcome == "denied"


def test_disabled_account_is_refused(app, hub, provider) -> None:
    oidc_login(app, provider, "eve", mfa=True)
    (eve,) = users_for(hub, provider.issuer, "eve")
    with transaction(hub.sessions) as s:
        s.get(User, eve.id).is_active = False
    browser, r = oidc_login(app, provider, "eve", mfa=True)
    assert r.status_code == 403
    assert_no_session(r, browser)
    last = events(hub, "login.oidc")[-1]
    assert last.outcome == "denied" and last.details["reason"] == "account disabled"


# -- 3. single factor without a data role ------------------------------------------------------
def test_single_factor_login_without_data_role_sees_no_project_data(app, hub, provider) -> None:
    browser, r = oidc_login(app, provider, "carol", mfa=False, email="carol@uni.example")
    assert r.status_code == 303 and r.headers["location"] == "/projects"
    assert SESSION_COOKIE in r.cookies
    (carol,) = users_for(hub, provider.issuer, "carol")
    (ws,) = sessions_of(hub, carol.id)
    assert ws.stage == "active" and ws.mfa_at is None
    login = events(hub, "login.oidc")[-1]
    assert login.outcome == "ok" and login.details == {"method": "oidc", "acr": ACR_SFA, "mfa": False}

    page = browser.get("/projects", follow_redirects=False)
    assert page.status_code == 200
    assert "Project data needs a login with multi-factor authentication" in page.text

    # Logging in again single-factor in the same browser does not turn the session into an MFA one.
    _, again = oidc_login(app, provider, "carol", mfa=False, browser=browser)
    assert again.status_code == 303
    (ws,) = sessions_of(hub, carol.id)
    assert ws.mfa_at is None
    assert "Project data needs a login with multi-factor" in browser.get("/projects").text

    # Later a PI adds them to a project: this single-factor session still sees none of it.
    add_project(hub, "secret-genomes", carol.id)
    page = browser.get("/projects", follow_redirects=False)
    assert page.status_code == 200
    assert "secret-genomes" not in page.text and "Project secret-genomes" not in page.text
    r = browser.get("/projects/secret-genomes", follow_redirects=False)
    assert r.status_code == 403 and "Project secret-genomes" not in r.text
    r = browser.get("/projects/secret-genomes", headers={"Accept": "application/json"},
                    follow_redirects=False)
    assert r.status_code == 403 and r.json()["code"] == "mfa-required"

    # Nor can it mint an API token to reach the data another way.
    r = browser.post("/account/tokens", data={"csrf_token": csrf_for(browser), "name": "sneaky", "days": "7",
                                              "scopes": ["projects:read", "data:read"]},
                     follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login/reauth")
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ApiToken)) == 0

    # Now that they hold a data role, a new single-factor login is refused…
    other, refused = oidc_login(app, provider, "carol", mfa=False)
    assert refused.status_code == 403
    assert_no_session(refused, other)

    # …and re-authenticating with MFA in the same browser upgrades this session to the project.
    reauth = browser.get("/login/reauth", params={"next": "/projects/secret-genomes"}, follow_redirects=False)
    assert reauth.status_code == 303 and reauth.headers["location"].startswith("/auth/oidc/login")
    authorize = browser.get(reauth.headers["location"], follow_redirects=False).headers["location"]
    back = provider_redirect(authorize, "carol", mfa=True)
    done = browser.get(back, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/projects/secret-genomes"
    assert browser.get("/projects/secret-genomes", follow_redirects=False).status_code == 200
    assert "Project secret-genomes" in browser.get("/projects").text


# -- 4. state: unknown, forged, replayed -------------------------------------------------------
def test_callback_with_unknown_or_missing_state_is_refused(app, hub, provider) -> None:
    browser = new_browser(app)
    start_login(browser, provider)  # a real pending login exists; a forged state must not match it
    for query in ("?state=forged-state-value&code=abc", "?code=abc", "?state=&code=abc", ""):
        r = browser.get("/auth/oidc/callback" + query, follow_redirects=False)
        assert r.status_code == 401, (query, r.text)
        assert_no_session(r, browser)
    r = browser.get("/auth/oidc/callback?state=forged&code=abc", headers={"Accept": "application/json"})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    assert pending_states(hub) == 1  # the real one is untouched
    assert events(hub, "login.oidc") == []


def test_callback_with_a_real_code_but_another_browsers_state_is_refused(app, hub, provider) -> None:
    """A code obtained for one login cannot be redeemed under another login's state (PKCE/nonce)."""
    victim = new_browser(app)
    victim_authorize = start_login(victim, provider)
    victim_state = parse_qs(urlsplit(victim_authorize).query)["state"][0]
    attacker = new_browser(app)
    attacker_back = provider_redirect(start_login(attacker, provider), "mallory", mfa=True)
    code = parse_qs(urlsplit(attacker_back).query)["code"][0]
    r = victim.get("/auth/oidc/callback", params={"state": victim_state, "code": code},
                   follow_redirects=False)
    assert r.status_code == 401
    assert_no_session(r, victim)
    assert users_for(hub, provider.issuer, "mallory") == []


def test_replayed_callback_is_refused(app, hub, provider) -> None:
    browser = new_browser(app)
    back = provider_redirect(start_login(browser, provider), "dave", mfa=True)
    assert browser.get(back, follow_redirects=False).status_code == 303
    for replayer in (new_browser(app), new_browser(app)):
        r = replayer.get(back, follow_redirects=False)
        assert r.status_code == 401, r.text
        assert_no_session(r, replayer)
    assert [e.outcome for e in events(hub, "login.oidc")] == ["ok"]


def test_callback_only_completes_in_the_browser_that_started_the_login(app, hub, provider) -> None:
    attacker = new_browser(app)
    back = provider_redirect(start_login(attacker, provider), "mallory", mfa=True)
    victim = new_browser(app)  # e.g. lured to the attacker's callback link
    r = victim.get(back, follow_redirects=False)
    assert r.status_code == 401
    assert_no_session(r, victim)


def test_state_is_used_up_even_when_the_code_is_bad(app, hub, provider) -> None:
    browser = new_browser(app)
    back = provider_redirect(start_login(browser, provider), "frank", mfa=True)
    query = parse_qs(urlsplit(back).query)
    bad = browser.get("/auth/oidc/callback", params={"state": query["state"][0], "code": "not-the-code"},
                      follow_redirects=False)
    assert bad.status_code == 401
    assert_no_session(bad, browser)
    assert pending_states(hub) == 0
    # The genuine code can no longer be redeemed with that state.
    r = browser.get(back, follow_redirects=False)
    assert r.status_code == 401
    assert_no_session(r, browser)
    assert users_for(hub, provider.issuer, "frank") == []


def test_provider_error_response_is_refused_and_uses_up_the_state(app, hub, provider) -> None:
    browser = new_browser(app)
    state = parse_qs(urlsplit(start_login(browser, provider)).query)["state"][0]
    r = browser.get("/auth/oidc/callback", params={"state": state, "error": "access_denied"},
                    follow_redirects=False)
    assert r.status_code == 401 and "access_denied" in r.text
    assert_no_session(r, browser)
    assert pending_states(hub) == 0


# -- 5. id_token validation --------------------------------------------------------------------
def _client(provider, **overrides) -> OidcClient:
    values = {"issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **overrides}
    settings = OidcSettings(**values)
    return OidcClient(settings, REDIRECT_URI)


def _claims(provider, nonce: str, /, **changes) -> dict:
    now = int(time.time())
    claims = {"iss": provider.issuer, "aud": CLIENT_ID, "sub": "zed", "iat": now, "exp": now + 300,
              "nonce": nonce, "acr": ACR_MFA, **changes}
    return {k: v for k, v in claims.items() if v is not None}


def _provider_kid(provider) -> str:
    meta = httpx.get(provider.discovery_url, trust_env=False).json()
    return httpx.get(meta["jwks_uri"], trust_env=False).json()["keys"][0]["kid"]


def test_id_token_signed_with_a_foreign_key_is_refused(provider) -> None:
    client = _client(provider)
    nonce = "n-" + "1" * 30
    foreign = RSAKey.generate_key(2048)
    provider_kid = _provider_kid(provider)
    for kid in (None, "attacker-key", provider_kid):  # even claiming to be the provider's key
        header = {"alg": "RS256", **({"kid": kid} if kid else {})}
        raw = jwt.encode(header, _claims(provider, nonce), foreign)
        with pytest.raises(Unauthenticated):
            client._validated_claims(raw, nonce)
    # HMAC with the client secret, and unsigned tokens, are refused too.
    for header, key in (({"alg": "HS256", "kid": provider_kid}, OctKey.import_key(CLIENT_SECRET)),
                        ({"alg": "HS256"}, OctKey.import_key(CLIENT_SECRET))):
        raw = jwt.encode(header, _claims(provider, nonce), key)
        with pytest.raises(Unauthenticated):
            client._validated_claims(raw, nonce)
    b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    unsigned = f"{b64({'alg': 'none'})}.{b64(_claims(provider, nonce))}."
    for raw in (unsigned, "not-a-jwt", "a.b.c", ""):
        with pytest.raises(Unauthenticated):
            client._validated_claims(raw, nonce)


def test_each_claim_check_refuses(provider, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a key the client trusts (stand-in for the provider's), every claim rule is enforced."""
    key = RSAKey.generate_key(2048, parameters={"kid": "trusted"})
    client = _client(provider)
    monkeypatch.setattr(client, "_key_set", lambda refresh=False: KeySet([key]))
    nonce = "n-" + "2" * 30
    sign = lambda claims: jwt.encode({"alg": "RS256", "kid": "trusted"}, claims, key)  # noqa: E731

    good = client._validated_claims(sign(_claims(provider, nonce)), nonce)  # the control
    assert good["sub"] == "zed"
    assert client._validated_claims(sign(_claims(provider, nonce, aud=[CLIENT_ID])), nonce)["sub"] == "zed"

    now = int(time.time())
    bad = {
        "wrong audience": _claims(provider, nonce, aud="another-client"),
        "wrong audiences": _claims(provider, nonce, aud=["another-client"]),
        "wrong azp": _claims(provider, nonce, aud=[CLIENT_ID, "another-client"], azp="another-client"),
        "wrong nonce": _claims(provider, "n-" + "3" * 30),
        "no nonce": _claims(provider, nonce, nonce=None),
        "nonce in a list": _claims(provider, nonce, nonce=[nonce, "n-" + "3" * 30]),
        "nonce not a string": _claims(provider, nonce, nonce={"value": nonce}),
        "wrong issuer": _claims(provider, nonce, iss="http://127.0.0.1:1"),
        "no subject": _claims(provider, nonce, sub=None),
        "expired": _claims(provider, nonce, iat=now - 3600, exp=now - 600),
        "no expiry": _claims(provider, nonce, exp=None),
        "no iat": _claims(provider, nonce, iat=None),
        "no audience": _claims(provider, nonce, aud=None),
    }
    for reason, claims in bad.items():
        with pytest.raises(Unauthenticated):
            client._validated_claims(sign(claims), nonce)
            pytest.fail(reason)


def _real_id_token(provider, client: OidcClient, nonce: str) -> str:
    """A genuine id_token from the provider, obtained by a code flow we drive by hand."""
    verifier = "v" * 50
    url = client.authorization_url(state="s" * 30, nonce=nonce, code_verifier=verifier)
    back = provider_redirect(url, "yvonne", mfa=False)
    code = parse_qs(urlsplit(back).query)["code"][0]
    token = httpx.post(client.metadata()["token_endpoint"], auth=(CLIENT_ID, CLIENT_SECRET), trust_env=False,
                       data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
                             "code_verifier": verifier})
    assert token.status_code == 200, token.text
    return token.json()["id_token"]


def test_real_id_token_with_wrong_nonce_or_audience_is_refused(provider) -> None:
    client = _client(provider)
    nonce = "n-" + "4" * 30
    raw = _real_id_token(provider, client, nonce)
    claims = client._validated_claims(raw, nonce)  # the control: genuine and as asked
    assert claims["sub"] == "yvonne" and claims["aud"] == CLIENT_ID and claims["acr"] == ACR_SFA
    with pytest.raises(Unauthenticated):
        client._validated_claims(raw, "n-" + "5" * 30)
    with pytest.raises(Unauthenticated):
        _client(provider, client_id="someone-else")._validated_claims(raw, nonce)
    header, payload, signature = raw.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["acr"] = ACR_MFA
    tampered = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated):
        client._validated_claims(f"{header}.{tampered}.{signature}", nonce)


def test_mfa_is_true_only_for_a_configured_acr(provider) -> None:
    """``complete`` reports MFA from the verified acr; a provider's other acr values are single factor."""
    for mfa_acrs, login_mfa, expected in (([ACR_MFA], True, True), ([ACR_MFA], False, False),
                                          (["https://example.org/acr/strong"], True, False)):
        client = _client(provider, mfa_acr_values=mfa_acrs)
        verifier, nonce = "w" * 50, "n-" + uuid.uuid4().hex
        url = client.authorization_url(state="t" * 30, nonce=nonce, code_verifier=verifier)
        code = parse_qs(urlsplit(provider_redirect(url, "zoe", mfa=login_mfa)).query)["code"][0]
        identity = client.complete(code=code, code_verifier=verifier, nonce=nonce)
        assert identity.issuer == provider.issuer and identity.subject == "zoe"
        assert identity.acr == (ACR_MFA if login_mfa else ACR_SFA)
        assert identity.mfa is expected


def test_code_exchange_needs_the_right_verifier_and_nonce(provider) -> None:
    client = _client(provider)
    nonce = "n-" + "6" * 30
    url = client.authorization_url(state="u" * 30, nonce=nonce, code_verifier="x" * 50)
    code = parse_qs(urlsplit(provider_redirect(url, "yan", mfa=True)).query)["code"][0]
    with pytest.raises(Unauthenticated):
        client.complete(code=code, code_verifier="y" * 50, nonce=nonce)

    url = client.authorization_url(state="u" * 30, nonce=nonce, code_verifier="x" * 50)
    code = parse_qs(urlsplit(provider_redirect(url, "yan", mfa=True)).query)["code"][0]
    with pytest.raises(Unauthenticated):
        client.complete(code=code, code_verifier="x" * 50, nonce="n-" + "7" * 30)


# -- 6. the issuer must be https (loopback excepted for development) ---------------------------
@pytest.mark.parametrize("issuer", [
    "http://idp.example.org",
    "http://10.0.0.5:8080",
    "http://localhost.evil.example",
    "http://127.0.0.1.nip.io",
    "ftp://idp.example.org",
    "idp.example.org",
])
def test_plain_http_issuer_is_refused(issuer: str) -> None:
    with pytest.raises(Invalid):
        OidcClient(OidcSettings(issuer=issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET),
                   REDIRECT_URI)


def test_loopback_http_issuer_needs_the_development_switch(provider) -> None:
    with pytest.raises(Invalid):
        _client(provider, allow_insecure_loopback=False)
    assert _client(provider).enabled
    assert OidcClient(OidcSettings(issuer="https://login.elixir-czech.org/oidc/", client_id=CLIENT_ID),
                      REDIRECT_URI).enabled


def test_app_with_a_plain_http_issuer_refuses_to_start_a_login(settings: Settings) -> None:
    from strongroom.app import create_app

    oidc = OidcSettings(issuer="http://idp.example.org", client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    bad = settings.model_copy(update={"oidc": oidc})
    with TestClient(create_app(bad, run_jobs=False), base_url=BASE_URL) as c:
        r = c.get("/auth/oidc/login", follow_redirects=False)
        assert r.status_code == 422 and "https" in r.text
        assert "location" not in r.headers
