"""Local accounts: password + TOTP, enrolment, recovery codes, throttling, sessions, CSRF."""

from __future__ import annotations

import pyotp
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import PASSWORD
from helpers import extract, form_post
from strongroom.audit import service as audit
from strongroom.identity.models import WebSession


def _events(hub, action: str):
    with hub.sessions() as s:
        return audit.query(s, action_prefix=action, limit=100)


def test_first_login_forces_totp_enrolment_then_second_factor_on_next_login(app, hub, people):
    alice = people("alice", mfa=False)
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    r = form_post(c, "/login", {"username": "alice", "password": PASSWORD})
    assert r.status_code == 303 and r.headers["location"] == "/mfa/enrol"
    # Before enrolment nothing else is reachable.
    assert c.get("/projects", follow_redirects=False).headers["location"].startswith("/login")
    page = c.get("/mfa/enrol")
    assert page.status_code == 200 and "data:image/svg+xml" in page.text
    seed = extract(r'id="totp-secret">([A-Z2-7]+)<', page.text)
    alice.seed = seed
    bad = form_post(c, "/mfa/enrol", {"code": "000000"})
    assert bad.status_code == 422 and "not valid" in bad.text
    done = form_post(c, "/mfa/enrol", {"code": alice.code()})
    assert done.status_code == 200
    codes = [c_.strip() for c_ in extract(r'id="recovery-codes">(.*?)</ul>', done.text).split("<li>") if "code" in c_]
    assert len(codes) == 10
    assert c.get("/projects").status_code == 200

    # A new browser: password, then a TOTP code; a replayed code is refused.
    c2 = TestClient(app, base_url="http://127.0.0.1:8000")
    r = form_post(c2, "/login", {"username": "alice", "password": PASSWORD, "next": "/account"})
    assert r.headers["location"].startswith("/login/mfa")
    assert c2.get("/account", follow_redirects=False).status_code == 303  # not logged in yet
    code = alice.code()
    ok = form_post(c2, "/login/mfa", {"code": code, "next": "/account"})
    assert ok.status_code == 303 and ok.headers["location"] == "/account"
    assert "Your account" in c2.get("/account").text

    c3 = TestClient(app, base_url="http://127.0.0.1:8000")
    form_post(c3, "/login", {"username": "alice", "password": PASSWORD})
    replay = form_post(c3, "/login/mfa", {"code": code})
    assert replay.status_code == 401
    assert [e.outcome for e in _events(hub, "login.mfa")][:1] == ["denied"]
    assert any(e.outcome == "ok" for e in _events(hub, "mfa.enrol"))


def test_recovery_code_works_once(app, hub, people):
    bob = people("bob")
    with hub.sessions() as s:
        from strongroom.identity import service
        from strongroom.identity.models import User

        codes = service.regenerate_recovery_codes(s, s.get(User, bob.user.id), hub.secret)
        s.commit()
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    form_post(c, "/login", {"username": "bob", "password": PASSWORD})
    assert form_post(c, "/login/mfa", {"code": codes[0]}).status_code == 303
    c2 = TestClient(app, base_url="http://127.0.0.1:8000")
    form_post(c2, "/login", {"username": "bob", "password": PASSWORD})
    assert form_post(c2, "/login/mfa", {"code": codes[0]}).status_code == 401


def test_wrong_password_is_throttled_and_audited(app, hub, people):
    people("carol")
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    for _ in range(5):
        r = form_post(c, "/login", {"username": "carol", "password": "wrong password!!"})
        assert r.status_code == 401 and "wrong username or password" in r.text
    r = form_post(c, "/login", {"username": "carol", "password": PASSWORD})
    assert r.status_code == 429 and r.headers["retry-after"]
    denied = [e for e in _events(hub, "login.password") if e.outcome == "denied"]
    assert len(denied) == 5
    # An unknown user gets the same message (no account enumeration).
    r = form_post(c, "/login", {"username": "nobody", "password": "whatever12345"})
    assert r.status_code == 401 and "wrong username or password" in r.text


def test_forms_without_csrf_token_are_refused(app, people):
    people("dave")
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    r = c.post("/login", data={"username": "dave", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 403
    c.cookies.set("sr_csrf", "a" * 24)
    r = c.post("/login", data={"username": "dave", "password": PASSWORD, "csrf_token": "b" * 24},
               follow_redirects=False)
    assert r.status_code == 403


def test_session_cookie_flags_and_logout(app, hub, people):
    erin = people("erin")
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    r = form_post(c, "/login", {"username": "erin", "password": PASSWORD})
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    r = form_post(c, "/login/mfa", {"code": erin.code()})
    assert r.status_code == 303
    with hub.sessions() as s:
        assert s.scalar(select(WebSession).where(WebSession.stage == "active")) is not None
    # The pre-MFA cookie was rotated away: only the active session exists now.
    with hub.sessions() as s:
        assert [w.stage for w in s.scalars(select(WebSession))] == ["active"]
    form_post(c, "/logout")
    assert c.get("/projects", follow_redirects=False).status_code == 303
    with hub.sessions() as s:
        assert s.scalar(select(WebSession)) is None


def test_open_redirect_is_not_possible(app, people):
    frank = people("frank")
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    form_post(c, "/login", {"username": "frank", "password": PASSWORD, "next": "https://evil.example/"})
    r = form_post(c, "/login/mfa", {"code": frank.code(), "next": "//evil.example/x"})
    assert r.headers["location"] == "/projects"


def test_totp_enrolment_uri_names_the_hub(hub, people):
    gina = people("gina", mfa=False)
    from strongroom.identity import service
    from strongroom.identity.models import User

    with hub.sessions() as s:
        enrolment = service.begin_totp_enrolment(s, s.get(User, gina.user.id), hub.secret)
        s.commit()
    parsed = pyotp.parse_uri(enrolment.uri)
    assert parsed.issuer == "Strongroom" and parsed.name == "gina"


def test_a_hub_on_the_defaults_hashes_passwords_at_the_production_argon2id_cost(tmp_path, monkeypatch):
    """The suite hashes cheaply (tests/conftest.py sets security.password_hash through the environment);
    the defaults must stay argon2-cffi's, RFC 9106's low-memory profile, and a hub built on them use them."""
    from argon2 import PasswordHasher, Type, extract_parameters

    from strongroom.config import SecuritySettings, Settings
    from strongroom.hub import Hub
    from strongroom.identity import secrets

    defaults = SecuritySettings().password_hash
    library = PasswordHasher()
    assert (defaults.time_cost, defaults.memory_kib, defaults.parallelism) == (3, 65536, 4) \
        == (library.time_cost, library.memory_cost, library.parallelism)
    for name in ("TIME_COST", "MEMORY_KIB", "PARALLELISM"):
        monkeypatch.delenv(f"STRONGROOM_SECURITY__PASSWORD_HASH__{name}", raising=False)
    suite = secrets.password_hash_parameters()
    try:
        Hub.from_settings(Settings(var_dir=tmp_path, secret_key="test-secret-" + "x" * 32))
        for stored in (secrets.hash_password(PASSWORD), secrets.dummy_hash()):
            params = extract_parameters(stored)
            assert params.type is Type.ID
            assert (params.time_cost, params.memory_cost, params.parallelism) == (3, 65536, 4)
        assert secrets.verify_password(stored, "x" * 12) is False
    finally:
        secrets.configure_password_hashing(**dict(zip(("time_cost", "memory_kib", "parallelism"), suite,
                                                      strict=True)))
