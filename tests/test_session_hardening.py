"""Session hardening: CSRF tokens bound to the session and its origin, no-store on secrets and
personal data, and every way a user's access is withdrawn ends both their sessions and tokens."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import PASSWORD, Person, bearer, browser_session, token_for, web_client
from helpers import extract, form_post
from strongroom.audit import service as audit
from strongroom.deps import CSRF_COOKIE, SESSION_COOKIE
from strongroom.hub import Hub
from strongroom.identity.models import ApiToken, WebSession
from test_cli_and_ops import run_cli

BASE = "http://127.0.0.1:8000"
NEW_PASSWORD = "a brand new passphrase for alice"


def _page_token(client: TestClient, url: str = "/account") -> str:
    return extract(r'name="csrf_token" value="([^"]+)"', client.get(url).text)


def _login(app, person: Person, password: str = PASSWORD) -> TestClient:
    """Through the real login pages, with the tokens those pages carry."""
    c = TestClient(app, base_url=BASE)
    r = c.post("/login", data={"username": person.username, "password": password,
                               "csrf_token": _page_token(c, "/login")}, follow_redirects=False)
    assert r.status_code == 303, r.text
    r = c.post("/login/mfa", data={"code": person.code(), "csrf_token": _page_token(c, "/login/mfa")},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    return c


# -- CSRF --------------------------------------------------------------------------------------
def test_a_token_from_one_session_is_refused_in_another(app, hub, people):
    alice = people("alice")
    a, b = web_client(app, hub, alice), web_client(app, hub, alice)
    token_a = _page_token(a)
    assert token_a != _page_token(b)
    r = b.post("/account/tokens/abc/revoke", data={"csrf_token": token_a}, follow_redirects=False)
    assert r.status_code == 403
    # Even when B's browser also holds A's pre-session cookie (a tossed cookie, a shared machine):
    # a plain double-submit would pass here; the session decides.
    b_session = b.cookies.get(SESSION_COOKIE)
    a_presession = a.cookies.get(CSRF_COOKIE) or "x" * 24
    b.cookies.clear()
    b.cookies.set(SESSION_COOKIE, b_session)
    b.cookies.set(CSRF_COOKIE, a_presession)
    assert b.post("/logout", data={"csrf_token": token_a}, follow_redirects=False).status_code == 403
    assert b.post("/logout", data={"csrf_token": _page_token(b)}, follow_redirects=False).status_code == 303


def test_a_token_from_before_login_is_refused_after_login(app, people):
    bob = people("bob")
    c = TestClient(app, base_url=BASE)
    before = _page_token(c, "/login")
    r = c.post("/login", data={"username": "bob", "password": PASSWORD, "csrf_token": before},
               follow_redirects=False)
    assert r.status_code == 303
    mfa_token = _page_token(c, "/login/mfa")
    assert mfa_token != before
    # The password step's session is not the logged-in one either: MFA rotates the id, and the token.
    assert c.post("/login/mfa", data={"code": bob.code(), "csrf_token": before},
                  follow_redirects=False).status_code == 403
    assert c.post("/login/mfa", data={"code": bob.code(), "csrf_token": mfa_token},
                  follow_redirects=False).status_code == 303
    after = _page_token(c)
    assert after not in (before, mfa_token)
    for stale in (before, mfa_token):
        assert c.post("/logout", data={"csrf_token": stale}, follow_redirects=False).status_code == 403
    assert c.post("/logout", data={"csrf_token": after}, follow_redirects=False).status_code == 303


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:8001"},  # same host, another port: another origin
    {"Referer": "https://evil.example/page"},
    {"Origin": "https://evil.example", "Referer": f"{BASE}/account"},  # Origin wins
])
def test_a_cross_origin_post_with_a_valid_token_is_refused(app, hub, people, headers):
    carol = people("carol")
    c = web_client(app, hub, carol)
    token = _page_token(c)
    r = c.post("/logout", data={"csrf_token": token}, headers=headers, follow_redirects=False)
    assert r.status_code == 403 and "another site" in r.text
    # The login form too: a cross-site login (login CSRF) is refused.
    anon = TestClient(app, base_url=BASE)
    r = anon.post("/login", data={"username": "carol", "password": PASSWORD,
                                  "csrf_token": _page_token(anon, "/login")}, headers=headers,
                  follow_redirects=False)
    assert r.status_code == 403


@pytest.mark.parametrize("headers", [
    {"Origin": BASE}, {"Referer": f"{BASE}/account"}, {},
    {"Origin": "http://hub.example.org", "Host": "hub.example.org"},  # the Host it was sent to
])
def test_a_same_origin_post_passes(app, hub, people, headers):
    dave = people("dave")
    c = web_client(app, hub, dave)
    r = c.post("/logout", data={"csrf_token": _page_token(c)}, headers=headers, follow_redirects=False)
    assert r.status_code == 303


# -- Cache-Control -----------------------------------------------------------------------------
def test_secrets_and_personal_data_are_never_cached(app, hub, people):
    erin = people("erin")
    anon = TestClient(app, base_url=BASE)
    assert "no-store" not in anon.get("/catalog").headers.get("cache-control", "")  # public stays cacheable
    for r in (anon.get("/api/v1/me"), anon.get("/api/v1/me", headers=bearer(token_for(hub, erin)))):
        assert r.headers["cache-control"] == "no-store", r.status_code
    c = web_client(app, hub, erin)
    for url in ("/account", "/projects", "/catalog", "/account/keys"):
        assert c.get(url).headers["cache-control"] == "no-store", url
    new_token = form_post(c, "/account/tokens", {"name": "cli", "days": "7", "scopes": ["projects:read"]})
    assert "sr_" in new_token.text and new_token.headers["cache-control"] == "no-store"
    codes = form_post(c, "/account/recovery-codes")
    assert codes.status_code == 200 and codes.headers["cache-control"] == "no-store"

    # TOTP enrolment: the QR page and the recovery codes at its end.
    frank = people("frank", mfa=False)
    f = TestClient(app, base_url=BASE)
    r = form_post(f, "/login", {"username": "frank", "password": PASSWORD})
    assert r.headers["location"] == "/mfa/enrol" and r.headers["cache-control"] == "no-store"
    page = f.get("/mfa/enrol")
    assert "data:image/svg+xml" in page.text and page.headers["cache-control"] == "no-store"
    frank.seed = extract(r'id="totp-secret">([A-Z2-7]+)<', page.text)
    done = form_post(f, "/mfa/enrol", {"code": frank.code()})
    assert 'id="recovery-codes"' in done.text and done.headers["cache-control"] == "no-store"
    # The page after enrolment already carries the new session's token: its logout works.
    token = extract(r'name="csrf_token" value="([^"]+)"', done.text)
    assert f.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303


# -- withdrawing access ends sessions and tokens -------------------------------------------------
def _access(hub: Hub, person: Person) -> tuple[int, int]:
    with hub.sessions() as s:
        sessions = len(list(s.scalars(select(WebSession).where(WebSession.user_id == person.user.id))))
        tokens = len(list(s.scalars(select(ApiToken).where(ApiToken.user_id == person.user.id,
                                                           ApiToken.revoked_at.is_(None)))))
    return sessions, tokens


def _via_api(path: str) -> Callable:
    def act(app, hub, admin: Person, target: Person, settings) -> None:
        r = TestClient(app, base_url=BASE).post(f"/api/v1/admin/users/{target.user.id}/{path}",
                                                headers=bearer(token_for(hub, admin)))
        assert r.status_code == 204, r.text
    return act


def _via_cli(*args: str) -> Callable:
    def act(app, hub, admin: Person, target: Person, settings) -> None:
        r = run_cli(settings, "admin", *args, target.username)
        assert r.returncode == 0, r.stderr
    return act


def _via_password_page(app, hub, admin: Person, target: Person, settings) -> None:
    c = web_client(app, hub, target)  # a third session: this one lives on, under a new id
    old_cookie = c.cookies.get(SESSION_COOKIE)
    r = form_post(c, "/account/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                                            "new_password_again": NEW_PASSWORD})
    assert r.status_code == 200 and "Your password was changed" in r.text
    new_cookie = r.cookies[SESSION_COOKIE]
    assert new_cookie != old_cookie
    c.cookies.clear()  # web_client's cookie has no domain, so the new one would sit beside it
    c.cookies.set(SESSION_COOKIE, new_cookie)
    assert c.get("/account", follow_redirects=False).status_code == 200
    with hub.sessions() as s:
        s.execute(WebSession.__table__.delete().where(WebSession.user_id == target.user.id))
        s.commit()  # drop the survivor, so the check below counts what the change itself left


@pytest.mark.parametrize("withdraw", [
    pytest.param(_via_api("mfa-reset"), id="api-mfa-reset"),
    pytest.param(_via_cli("reset-mfa"), id="cli-reset-mfa"),
    pytest.param(_via_api("deactivate"), id="api-deactivate"),
    pytest.param(_via_cli("deactivate"), id="cli-deactivate"),
    pytest.param(_via_password_page, id="password-change"),
])
def test_withdrawing_access_ends_every_session_and_token(app, hub, people, settings, withdraw):
    admin, gina = people("root", admin=True), people("gina")
    browsers = [web_client(app, hub, gina), web_client(app, hub, gina)]
    tokens = [token_for(hub, gina), token_for(hub, gina)]
    for b in browsers:
        assert b.get("/account", follow_redirects=False).status_code == 200
    api = TestClient(app, base_url=BASE)
    for t in tokens:
        assert api.get("/api/v1/me", headers=bearer(t)).status_code == 200
    withdraw(app, hub, admin, gina, settings)
    for b in browsers:
        assert b.get("/account", follow_redirects=False).status_code == 303
    for t in tokens:
        r = api.get("/api/v1/me", headers=bearer(t))
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert _access(hub, gina) == (0, 0)
    with hub.sessions() as s:
        revoked = audit.query(s, action_prefix="user.access_revoked", limit=5)
    assert revoked and revoked[0].subject_user_id == gina.user.id


def test_a_deactivated_user_cannot_log_in_again(app, hub, people, settings):
    hana = people("hana")
    assert run_cli(settings, "admin", "deactivate", "hana").returncode == 0
    c = TestClient(app, base_url=BASE)
    assert form_post(c, "/login", {"username": "hana", "password": PASSWORD}).status_code == 401
    again = run_cli(settings, "admin", "deactivate", "hana")
    assert again.returncode == 2 and "already deactivated" in again.stderr
    assert "no" in run_cli(settings, "admin", "users").stdout
    del hana


# -- the password page ---------------------------------------------------------------------------
def test_password_change_end_to_end(app, hub, people):
    ivan = people("ivan")
    c = _login(app, ivan)
    page = c.get("/account")
    assert 'action="/account/password"' in page.text and 'autocomplete="current-password"' in page.text

    def change(current: str, new: str, again: str | None = None):
        return form_post(c, "/account/password", {"current_password": current, "new_password": new,
                                                  "new_password_again": new if again is None else again})

    for current, new, again, message in [
        ("wrong password here", NEW_PASSWORD, None, "current password is wrong"),
        (PASSWORD, NEW_PASSWORD, "something else entirely", "the two new passwords differ"),
        (PASSWORD, "short", None, "at least 12 characters"),
        (PASSWORD, "aaaaaaaaaaaaaaaa", None, "at least 5 different characters"),
        (PASSWORD, "my name is ivan, hello", None, "must not contain the username"),
        (PASSWORD, PASSWORD, None, "must differ"),
    ]:
        r = change(current, new, again)
        assert r.status_code == 422 and message in r.text, (message, r.text[:200])
    r = change(PASSWORD, NEW_PASSWORD)
    assert r.status_code == 200 and "Your password was changed" in r.text
    assert c.get("/account").status_code == 200  # this browser stays logged in, under a new id
    with hub.sessions() as s:
        events = audit.query(s, action_prefix="user.password_changed", limit=10)
    assert [e.outcome for e in events][0] == "ok" and "denied" in [e.outcome for e in events]

    # The old password no longer works; the new one does.
    old = TestClient(app, base_url=BASE)
    assert form_post(old, "/login", {"username": "ivan", "password": PASSWORD}).status_code == 401
    _login(app, ivan, NEW_PASSWORD)


def test_password_change_needs_a_fresh_second_factor(app, hub, people):
    jane = people("jane")
    c = TestClient(app, base_url=BASE)
    c.cookies.set(SESSION_COOKIE, browser_session(hub, jane, mfa=False))
    r = form_post(c, "/account/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                                            "new_password_again": NEW_PASSWORD})
    assert r.status_code == 303 and r.headers["location"].startswith("/login/reauth")
    assert c.get("/account/password", follow_redirects=False).headers["location"] == "/account#password"
    # after re-authenticating, the browser returns to the page the form was on, not to the POST-only address
    # (a 405); a post from another site's page is refused before that (the origin check)
    r = form_post(c, "/account/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                                            "new_password_again": NEW_PASSWORD},
                  headers={"Referer": f"{BASE}/account?tab=security"})
    assert r.headers["location"] == "/login/reauth?next=/account%3Ftab%3Dsecurity", r.headers["location"]
    old = TestClient(app, base_url=BASE)
    assert form_post(old, "/login", {"username": "jane", "password": PASSWORD}).status_code == 303
