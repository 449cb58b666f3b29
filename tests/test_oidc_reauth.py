"""A fresh second factor from an OpenID Provider must be a *new* authentication, not the provider's own session
answering again (audit finding: /login/reauth for OIDC users sent neither ``prompt=login`` nor ``max_age`` and never
read ``auth_time``, so whoever sat at the browser got ``mfa_at`` = now without presenting anything).

Against the real test provider (tests/support/oidc): the re-authentication asks for ``prompt=login`` and
``max_age=0``; the callback refreshes the session's second factor only when the id_token's ``auth_time`` lies after
the request (within clock skew) and its ``acr`` is a multi-factor one; a login the provider answers from its session
(no ``auth_time``, or an old one) reads data but never passes a fresh-MFA check.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import select, update

from helpers import csrf_for
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.config import OidcSettings, Settings
from strongroom.db import transaction
from strongroom.errors import Unauthenticated
from strongroom.identity.models import ApiToken, OidcLoginState, User, WebSession
from strongroom.identity.oidc import OidcClient
from strongroom.projects.service import create_project
from support.oidc_provider import ACR_MFA, complete_login, running_oidc_provider

pytestmark = pytest.mark.slow

BASE_URL = "http://127.0.0.1:8000"
REDIRECT_URI = BASE_URL + "/auth/oidc/callback"
CLIENT_ID = "strongroom-test"
CLIENT_SECRET = "test-client-secret-" + "r" * 24


@pytest.fixture(scope="module")
def provider() -> Iterator:
    with running_oidc_provider(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI]) as op:
        yield op


@pytest.fixture
def settings(settings: Settings, provider) -> Settings:  # overrides conftest's
    return settings.model_copy(update={"base_url": BASE_URL, "oidc": OidcSettings(
        issuer=provider.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)})


class Browser:
    """One person's browser: the hub's cookies, the provider's cookies (its own session), and every form it
    posts to the provider (an empty list: the provider asked for nothing)."""

    def __init__(self, app) -> None:
        self.hub = TestClient(app, base_url=BASE_URL)
        self.provider_posts: list[str] = []
        self.op = httpx.Client(timeout=15, trust_env=False, event_hooks={"request": [
            lambda r: self.provider_posts.append(str(r.url)) if r.method == "POST" else None]})

    def provider_login(self, authorize_url: str, login: str, *, mfa: bool) -> httpx.Response:
        """Through the provider, back to our callback; the callback's answer."""
        self.provider_posts.clear()
        back = complete_login(self.op, authorize_url, login=login, mfa=mfa).headers["location"]
        assert back.startswith(REDIRECT_URI + "?"), back
        return self.hub.get(back, follow_redirects=False)

    def login(self, login: str, *, mfa: bool = True) -> httpx.Response:
        r = self.hub.get("/auth/oidc/login", params={"next": "/account"}, follow_redirects=False)
        return self.provider_login(r.headers["location"], login, mfa=mfa)

    def create_token(self) -> httpx.Response:
        return self.hub.post("/account/tokens", follow_redirects=False, data={
            "csrf_token": csrf_for(self.hub), "name": "laptop", "days": "30", "scopes": ["projects:read"]})

    def reauth_authorize_url(self) -> str:
        """A fresh-MFA action, sent on to re-authenticate: the provider's authorization URL it ends at."""
        r = self.create_token()
        assert r.status_code == 303 and r.headers["location"].startswith("/login/reauth"), r.text
        r = self.hub.get(r.headers["location"], follow_redirects=False)
        assert r.status_code == 303 and "reauth=1" in r.headers["location"]
        r = self.hub.get(r.headers["location"], follow_redirects=False)
        assert r.status_code == 303
        return r.headers["location"]


def _with_query(url: str, **changes: str | None) -> str:
    """``url`` with query parameters replaced (None: removed): a provider that ignores what we asked for."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode({k: v for k, v in query.items() if v is not None})))


def _user(hub, subject: str) -> User:
    with hub.sessions() as s:
        return s.scalar(select(User).where(User.subject == subject))


def _session(hub, user: User) -> WebSession:
    with hub.sessions() as s:
        (ws,) = s.scalars(select(WebSession).where(WebSession.user_id == user.id)).all()
        return ws


def _age_second_factor(hub, user: User, minutes: int = 60) -> dt.datetime:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes)
    with transaction(hub.sessions) as s:
        s.execute(update(WebSession).where(WebSession.user_id == user.id).values(mfa_at=old))
    return old


def _with_data_role(hub, user: User) -> None:
    with transaction(hub.sessions) as s:
        create_project(s, Actor.system("t"), slug="proj-one", name="P1", pi=str(user.id), ethics_ref="E",
                       end_date=dt.date.today() + dt.timedelta(days=365))


def _last_oidc_login(hub) -> AuditEvent:
    with hub.sessions() as s:
        return s.scalars(select(AuditEvent).where(AuditEvent.action == "login.oidc")
                         .order_by(AuditEvent.seq.desc())).first()


def _tokens(hub) -> int:
    with hub.sessions() as s:
        return len(s.scalars(select(ApiToken)).all())


def test_reauth_makes_the_provider_ask_again_and_then_refreshes_the_second_factor(app, hub) -> None:
    carol = Browser(app)
    assert carol.login("carol").status_code == 303
    user = _user(hub, "carol")
    _with_data_role(hub, user)
    _age_second_factor(hub, user)

    authorize = carol.reauth_authorize_url()
    query = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
    assert query["prompt"] == "login" and query["max_age"] == "0"
    assert query["acr_values"].split() == [ACR_MFA]
    done = carol.provider_login(authorize, "carol", mfa=True)
    assert carol.provider_posts, "the provider answered from its own session instead of asking"
    assert done.status_code == 303 and done.headers["location"].startswith("/account"), done.text
    ws = _session(hub, user)
    assert dt.datetime.now(dt.UTC) - ws.mfa_at < dt.timedelta(minutes=1)
    event = _last_oidc_login(hub)
    assert event.outcome == "ok" and event.details["reauth"] is True and event.details["mfa"] is True

    r = carol.create_token()
    assert r.status_code == 200 and "sr_" in r.text


def test_a_provider_that_answers_from_its_session_does_not_refresh_the_second_factor(app, hub) -> None:
    """The audit's scenario, with a provider that ignores prompt and max_age: it answers at once from the session
    carol left in her browser, the id_token has no auth_time for this request, and the step-up is refused."""
    carol = Browser(app)
    assert carol.login("carol").status_code == 303
    user = _user(hub, "carol")
    _with_data_role(hub, user)
    old = _age_second_factor(hub, user)

    authorize = _with_query(carol.reauth_authorize_url(), prompt=None, max_age=None)
    done = carol.provider_login(authorize, "ignored", mfa=False)
    assert carol.provider_posts == []  # nothing was presented
    assert done.status_code == 403 and "did not ask for your password and second factor again" in done.text
    ws = _session(hub, user)  # the session stays, its second factor as old as it was
    assert ws.stage == "active" and abs(ws.mfa_at - old) < dt.timedelta(seconds=1)
    event = _last_oidc_login(hub)
    assert event.outcome == "denied" and event.details["reason"] == "no fresh multi-factor authentication"
    assert event.details["auth_time"] is None
    r = carol.create_token()
    assert r.status_code == 303 and r.headers["location"].startswith("/login/reauth")
    assert _tokens(hub) == 0


def test_an_auth_time_from_before_the_request_is_not_a_fresh_second_factor(app, hub) -> None:
    """A provider that honours max_age loosely: the id_token carries auth_time, but of an authentication long
    before this re-authentication was asked for."""
    carol = Browser(app)
    assert carol.login("carol").status_code == 303
    user = _user(hub, "carol")
    _with_data_role(hub, user)
    _age_second_factor(hub, user)

    authorize = _with_query(carol.reauth_authorize_url(), prompt=None, max_age="3600")
    with transaction(hub.sessions) as s:  # the request came 10 minutes after the provider's last login
        s.execute(update(OidcLoginState).values(created_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)))
    done = carol.provider_login(authorize, "carol", mfa=True)
    assert carol.provider_posts == []
    assert done.status_code == 403
    event = _last_oidc_login(hub)
    assert event.outcome == "denied" and event.details["auth_time"] is not None  # it said when, and that was old
    assert carol.create_token().status_code == 303 and _tokens(hub) == 0


def test_a_single_factor_reauth_is_refused_and_the_session_kept(app, hub) -> None:
    dora = Browser(app)
    assert dora.login("dora").status_code == 303  # MFA, no data role
    user = _user(hub, "dora")
    old = _age_second_factor(hub, user)
    done = dora.provider_login(dora.reauth_authorize_url(), "dora", mfa=False)
    assert dora.provider_posts and done.status_code == 403
    ws = _session(hub, user)
    assert ws.stage == "active" and abs(ws.mfa_at - old) < dt.timedelta(seconds=1)
    assert _last_oidc_login(hub).details["reason"] == "no fresh multi-factor authentication"


def test_only_a_login_the_provider_shows_it_just_authenticated_is_a_fresh_second_factor(app, hub) -> None:
    """Siblings of the re-authentication: logging in again while logged in, or logging out and in, in a browser the
    provider already knows, gives a session that reads data but must still re-authenticate for a fresh-MFA action."""
    erin = Browser(app)
    assert erin.login("erin").status_code == 303
    user = _user(hub, "erin")
    _with_data_role(hub, user)
    assert erin.hub.get("/projects/proj-one", follow_redirects=False).status_code == 200  # MFA for data
    # the provider gave no auth_time for this plain login (it was not asked for one): not shown to be fresh
    r = erin.create_token()
    assert r.status_code == 303 and r.headers["location"].startswith("/login/reauth")

    assert erin.login("erin").status_code == 303  # again, while logged in
    assert erin.provider_posts == []
    assert erin.create_token().status_code == 303

    erin.hub.post("/logout", data={"csrf_token": csrf_for(erin.hub)}, follow_redirects=False)
    assert erin.login("erin").status_code == 303  # out and in again
    assert erin.provider_posts == []
    assert erin.hub.get("/projects/proj-one", follow_redirects=False).status_code == 200
    assert erin.create_token().status_code == 303
    assert _tokens(hub) == 0

    # With an auth_time after the request (here the provider was asked for one with max_age), a plain login is as
    # fresh as a re-authentication: no extra step.
    fay = Browser(app)
    r = fay.hub.get("/auth/oidc/login", params={"next": "/account"}, follow_redirects=False)
    assert "prompt" not in parse_qs(urlsplit(r.headers["location"]).query)  # a plain login asks for nothing more
    done = fay.provider_login(_with_query(r.headers["location"], max_age="600"), "fay", mfa=True)
    assert fay.provider_posts and done.status_code == 303
    assert fay.create_token().status_code == 200


# -- the id_token's auth_time ------------------------------------------------------------------
def test_a_malformed_or_future_auth_time_is_refused(provider, monkeypatch: pytest.MonkeyPatch) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "trusted"})
    client = OidcClient(OidcSettings(issuer=provider.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET),
                        REDIRECT_URI)
    monkeypatch.setattr(client, "_key_set", lambda refresh=False: KeySet([key]))
    nonce = "n-" + "7" * 30
    now = int(time.time())

    def claims(**extra: object) -> str:
        body = {"iss": provider.issuer, "aud": CLIENT_ID, "sub": "zed", "iat": now, "exp": now + 300,
                "nonce": nonce, "acr": ACR_MFA, **extra}
        return jwt.encode({"alg": "RS256", "kid": "trusted"}, body, key)

    assert client._validated_claims(claims(auth_time=now - 5), nonce)["auth_time"] == now - 5
    assert "auth_time" not in client._validated_claims(claims(), nonce)  # absent is allowed: it proves nothing
    for bad in ("yesterday", True, None, [now], now + 3600, -1, 10**15):
        with pytest.raises(Unauthenticated):
            client._validated_claims(claims(auth_time=bad), nonce)
            pytest.fail(repr(bad))
