"""The current-password check of a password change is a password guess like a login's (audit finding: a session
holder could try passwords there without limit): it shares the login throttle under the account's username, and
every wrong or throttled attempt is audited as denied."""

from __future__ import annotations

from fastapi.testclient import TestClient

from conftest import PASSWORD, web_client
from helpers import form_post
from strongroom.audit import service as audit

BASE = "http://127.0.0.1:8000"
NEW_PASSWORD = "a brand new passphrase 1"


def _change(client: TestClient, current: str):
    return form_post(client, "/account/password", {"current_password": current, "new_password": NEW_PASSWORD,
                                                   "new_password_again": NEW_PASSWORD})


def test_current_password_guesses_are_throttled_like_logins(app, hub, people):
    alice = people("alice")
    c = web_client(app, hub, alice)  # a session within the fresh-MFA window (a stolen cookie, say)
    for i in range(5):  # the login limit per account and window
        r = _change(c, f"wrong guess number {i}")
        assert r.status_code == 422 and "current password is wrong" in r.text
    r = _change(c, PASSWORD)  # even the right one now: the account is held
    assert r.status_code == 429 and r.headers["retry-after"], r.text
    assert "too many failed logins" in r.text
    # the same count holds the login form for this account (and only this account's count)…
    login = TestClient(app, base_url=BASE)
    assert form_post(login, "/login", {"username": "alice", "password": PASSWORD}).status_code == 429
    with hub.sessions() as s:
        events = audit.query(s, action_prefix="user.password_changed", limit=20)
    reasons = [e.details.get("reason") for e in events if e.outcome == "denied"]
    assert reasons.count("current password wrong") == 5
    assert reasons.count("too many failed attempts") == 1
    assert not [e for e in events if e.outcome == "ok"]


def test_failed_logins_count_against_a_password_change_too(app, hub, people):
    bob = people("bob")
    c = web_client(app, hub, bob)
    login = TestClient(app, base_url=BASE)
    for i in range(5):
        assert form_post(login, "/login", {"username": "bob", "password": f"x wrong {i} password"}).status_code == 401
    assert _change(c, PASSWORD).status_code == 429
    # another account is not held by bob's count
    carol = people("carol")
    assert _change(web_client(app, hub, carol), PASSWORD).status_code == 200
