"""Sibling-domain cookie tossing: when the workspaces' host (where a notebook's own JavaScript runs) and the hub share
a parent domain (hub.example.org, ws.example.org), script there can set ``sr_session=…; domain=example.org`` and the
browser sends it to the hub alongside, or instead of, the hub's own. So whenever its cookies are Secure the hub names
every cookie it sets with Path=/ ``__Host-…`` (a browser takes such a cookie only from the very host, Secure, Path=/,
no Domain: RFC 6265bis) and never reads the bare names; a ``__Host-`` name sent twice is read as absent. Plain-http
loopback development (where browsers refuse the prefix) keeps the bare names.

Shown here on a Secure hub (https://hub.example.org, its workspaces at https://ws.example.org): every cookie the login
sets is ``__Host-`` named, Secure, Path=/, host-only; a valid session, a pre-session CSRF cookie with its token and
an OpenID Connect state cookie, each tossed in under the bare name, log nobody in and pass no check; the catalogue's
page for such a visitor is the public one; the workspace proxy withholds both spellings from Jupyter and lets it set
neither; the API document names the prefixed cookie; logs mask the cookies under any name."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import PASSWORD, Person, browser_session
from helpers import extract
from imaging_support import make_project
from strongroom import logs
from strongroom.app import create_app
from strongroom.catalog import page_cache
from strongroom.config import OidcSettings, Settings, WorkspaceSettings
from strongroom.db import transaction
from strongroom.hub import Hub
from strongroom.identity.models import User, WebSession
from strongroom.projects.models import Project
from strongroom.workspaces import origin, proxy, service
from strongroom.workspaces.models import RUNNING, Workspace
from test_catalog import publish_entry, world  # noqa: F401  (world is a fixture)

HUB = "https://hub.example.org"
WORKSPACES = "https://ws.example.org"
PARENT = ".example.org"  # where a sibling's script can put a cookie: every host below it gets it
LOOPBACK = "http://127.0.0.1:8000"
CSRF_FIELD = r'name="csrf_token" value="([^"]+)"'
# the hub's cookies set with Path=/, by their bare names (spelt out: the test must not share the code's constants)
SESSION_COOKIE, CSRF_COOKIE, FLASH_COOKIE, OIDC_STATE_COOKIE = "sr_session", "sr_csrf", "sr_flash", "sr_oidc_state"
HUB_COOKIES = (SESSION_COOKIE, CSRF_COOKIE, FLASH_COOKIE, OIDC_STATE_COOKIE)
EVERY_HUB_COOKIE_NAME = frozenset(name for base in HUB_COOKIES for name in (base, f"__Host-{base}"))


@pytest.fixture
def settings(settings: Settings) -> Settings:  # overrides conftest's: every test here runs on a Secure hub
    secure = settings.model_copy(update={
        "base_url": HUB,
        "security": settings.security.model_copy(update={"cookie_secure": True}),
        "workspaces": WorkspaceSettings(origin=WORKSPACES),
    })
    assert secure.cookie_secure
    return secure


def browser(app: FastAPI, base: str = HUB) -> TestClient:
    return TestClient(app, base_url=base)


def set_cookies(response: httpx.Response) -> list[tuple[str, str, dict[str, str]]]:
    """Every Set-Cookie of a response as (name, value, attributes by lower-case name)."""
    found = []
    for header in response.headers.get_list("set-cookie"):
        pair, *attributes = [part.strip() for part in header.split(";")]
        name, _, value = pair.partition("=")
        attrs = {}
        for attribute in attributes:
            key, _, val = attribute.partition("=")
            attrs[key.strip().lower()] = val.strip()
        found.append((name, value, attrs))
    return found


def assert_host_only_secure(response: httpx.Response) -> dict[str, str]:
    """Every cookie the response sets is a ``__Host-`` cookie as a browser accepts it; returns name → value."""
    cookies = set_cookies(response)
    for name, _, attrs in cookies:
        assert name.startswith("__Host-") and name in EVERY_HUB_COOKIE_NAME, name
        assert "secure" in attrs and "httponly" in attrs and attrs.get("path") == "/", (name, attrs)
        assert "domain" not in attrs, (name, attrs)
    return {name: value for name, value, _ in cookies}


def toss(client: TestClient, base: str, value: str) -> None:
    """What a sibling host's script does: ``document.cookie = "<base>=<value>; domain=example.org; path=/"``."""
    client.cookies.set(base, value, domain=PARENT, path="/")


def login(app: FastAPI, person: Person) -> tuple[TestClient, list[httpx.Response]]:
    """The real login pages, password then TOTP; the client and every response that set cookies."""
    c = browser(app)
    page = c.get("/login")
    answers = [page]
    posted = c.post("/login", data={"username": person.username, "password": PASSWORD,
                                    "csrf_token": extract(CSRF_FIELD, page.text)}, follow_redirects=False)
    assert posted.status_code == 303 and posted.headers["location"].startswith("/login/mfa"), posted.text
    answers.append(posted)
    mfa_page = c.get(posted.headers["location"])
    answers.append(mfa_page)
    done = c.post("/login/mfa", data={"code": person.code(), "csrf_token": extract(CSRF_FIELD, mfa_page.text)},
                  follow_redirects=False)
    assert done.status_code == 303, done.text
    answers.append(done)
    return c, answers


def logged_in_as(c: TestClient, headers: dict[str, str] | None = None) -> str | None:
    """Whose account page this browser sees (the name it shows), or None when the hub sends it to log in."""
    r = c.get("/account", headers=headers, follow_redirects=False)
    if r.status_code == 303:
        assert r.headers["location"].startswith("/login")
        return None
    assert r.status_code == 200, r.text
    return extract(r"<dt>Name</dt><dd>([^<]+)</dd>", r.text)


def sessions(hub: Hub, person: Person) -> int:
    with hub.sessions() as s:
        return len(s.scalars(select(WebSession).where(WebSession.user_id == person.user.id)).all())


# -- the hub's own cookies --------------------------------------------------------------------------
def test_login_sets_only_host_prefixed_secure_cookies(app, hub, people) -> None:
    alice = people("alice")
    c, answers = login(app, alice)
    login_page, password_ok, _mfa_page, done = answers
    presession = assert_host_only_secure(login_page)  # the pre-session CSRF cookie, before anything else
    assert list(presession) == ["__Host-sr_csrf"]
    assert set_cookies(login_page)[0][2]["samesite"].lower() == "strict"
    first = assert_host_only_secure(password_ok)
    assert set(first) == {"__Host-sr_session", "__Host-sr_flash"}
    second = assert_host_only_secure(done)
    assert set(second) == {"__Host-sr_session", "__Host-sr_flash"} and second["__Host-sr_session"] != first[
        "__Host-sr_session"]
    assert {k: v["samesite"].lower() for k, _, v in set_cookies(done)} == {"__Host-sr_session": "lax",
                                                                          "__Host-sr_flash": "lax"}

    account = c.get("/account")  # logged in; the flash shown once and removed the way a browser honours
    assert account.status_code == 200 and "Logged in as Alice" in account.text
    assert account.headers["cache-control"] == "no-store"
    gone = assert_host_only_secure(account)
    assert gone == {"__Host-sr_flash": '""'} and 'max-age=0' in account.headers["set-cookie"].lower()
    assert "Logged in as Alice" not in c.get("/account").text

    bye = c.post("/logout", data={"csrf_token": extract(CSRF_FIELD, account.text)}, follow_redirects=False)
    removed = assert_host_only_secure(bye)  # a removal without Secure would be ignored for a __Host- cookie
    assert removed["__Host-sr_session"] == '""'
    assert logged_in_as(c) is None and sessions(hub, alice) == 0


def test_a_tossed_session_cookie_logs_nobody_in(app, hub, people) -> None:
    """Login CSRF / session fixation: the attacker's valid session under the bare name, for the parent domain."""
    alice, mallory = people("alice"), people("mallory")
    attackers = browser_session(hub, mallory)

    fresh = browser(app)  # a browser with no session of its own
    toss(fresh, SESSION_COOKIE, attackers)
    assert logged_in_as(fresh) is None
    assert fresh.get("/projects", follow_redirects=False).headers["location"].startswith("/login")
    assert fresh.get("/login").status_code == 200  # the login page itself: not redirected on as logged in
    upload = fresh.post("/api/v1/projects/lung/uploads", json={"path": "x.csv", "size": 1},
                        headers={"X-CSRF-Token": "x"})
    assert upload.status_code == 401  # the page-API routes read no bare name either

    victim, _ = login(app, alice)  # logged in herself, then the attacker's cookie arrives
    toss(victim, SESSION_COOKIE, attackers)
    assert logged_in_as(victim) == "Alice"

    # the prefixed name twice (only a browser's flaw could send it so): neither is believed
    own = victim.cookies.get("__Host-sr_session", domain="hub.example.org")
    assert own
    for header in (f"__Host-sr_session={attackers}; __Host-sr_session={own}",
                   f"__Host-sr_session={own}; __Host-sr_session={attackers}",
                   f"__Host-sr_session={own}; __Host-sr_session={own}"):
        assert logged_in_as(browser(app), {"Cookie": header}) is None
    assert logged_in_as(browser(app), {"Cookie": f"__Host-sr_session={own}"}) == "Alice"

    doc = app.openapi()  # generated clients are told the name the hub reads
    assert doc["components"]["securitySchemes"]["sessionCookie"]["name"] == "__Host-sr_session"


def test_a_tossed_presession_cookie_with_its_token_passes_no_form(app, hub, people) -> None:
    """The attacker reads a login page's token for their own pre-session cookie, tosses that cookie in under the bare
    name and makes the victim's browser post the login form with the attacker's password (a privacy tool may have
    stripped Origin and Referer): refused, and nobody is logged in."""
    people("mallory")
    attacker = browser(app)
    page = attacker.get("/login")
    token = extract(CSRF_FIELD, page.text)
    planted = attacker.cookies.get("__Host-sr_csrf") or attacker.cookies.get("sr_csrf")
    assert planted

    victim = browser(app)
    toss(victim, CSRF_COOKIE, planted)
    refused = victim.post("/login", data={"username": "mallory", "password": PASSWORD, "csrf_token": token},
                          follow_redirects=False)
    assert refused.status_code == 403 and set(assert_host_only_secure(refused)) <= {"__Host-sr_csrf"}
    assert victim.cookies.get("__Host-sr_session") is None and logged_in_as(victim) is None
    assert attacker.cookies.get("__Host-sr_csrf") == planted and attacker.cookies.get("sr_csrf") is None
    # the same value under the hub's own name is the attacker's own browser: it passes (so the name is what counts)
    ok = browser(app).post("/login", data={"username": "mallory", "password": PASSWORD, "csrf_token": token},
                           headers={"Cookie": f"__Host-sr_csrf={planted}"}, follow_redirects=False)
    assert ok.status_code == 303 and "__Host-sr_session" in assert_host_only_secure(ok)


def test_the_catalogue_shows_a_visitor_with_a_tossed_session_the_public_page(world, hub) -> None:  # noqa: F811
    publish_entry(world, world["ds"], "chest-ct")
    page_cache.clear()
    bobs = browser_session(hub, world["bob"])
    tossed = browser(world["app"])
    toss(tossed, SESSION_COOKIE, bobs)
    toss(tossed, FLASH_COOKIE, "anything.0")
    for _ in range(2):  # rendered, then from the rendered-page cache
        r = tossed.get("/catalog/chest-ct")
        assert r.status_code == 200 and "Log out" not in r.text
        assert r.headers["cache-control"] == page_cache.CACHE_CONTROL
    own = browser(world["app"])
    own.cookies.set("__Host-sr_session", bobs)
    r = own.get("/catalog/chest-ct")
    assert r.status_code == 200 and "Log out" in r.text and r.headers["cache-control"] == "no-store"


# -- OpenID Connect ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def provider() -> Iterator:
    from support.oidc_provider import running_oidc_provider

    with running_oidc_provider("strongroom-test", "test-client-secret-" + "z" * 24,
                               [f"{HUB}/auth/oidc/callback"]) as op:
        yield op


@pytest.fixture
def oidc_app(settings: Settings, provider) -> FastAPI:
    return create_app(settings.model_copy(update={"oidc": OidcSettings(
        issuer=provider.issuer, client_id="strongroom-test", client_secret="test-client-secret-" + "z" * 24)}),
        run_jobs=False)


def _provider_redirect(c: TestClient, login: str) -> str:
    """Our /auth/oidc/login, then the provider's login as ``login``: the callback address it sends the browser to."""
    from support.oidc_provider import complete_login

    started = c.get("/auth/oidc/login", follow_redirects=False)
    assert started.status_code == 303, started.text
    with httpx.Client(timeout=15, trust_env=False) as op_browser:
        back = complete_login(op_browser, started.headers["location"], login=login, mfa=True).headers["location"]
    assert back.startswith(f"{HUB}/auth/oidc/callback?"), back
    return back


@pytest.mark.slow
def test_the_oidc_state_cookie_is_host_prefixed_and_a_tossed_one_completes_no_login(oidc_app, provider) -> None:
    """A state cookie tossed in from a sibling host, naming a login the attacker started and finished at the provider
    (its row is real, the code the attacker's), would log the victim into the attacker's account: so the state
    cookie is a ``__Host-`` cookie on Path=/ like the others (``__Secure-`` would not do: a sibling may set that)."""
    attacker = browser(oidc_app)
    back = _provider_redirect(attacker, "mallory")
    state = parse_qs(urlsplit(back).query)["state"][0]
    victim = browser(oidc_app)
    toss(victim, OIDC_STATE_COOKIE, state)
    refused = victim.get(back, follow_redirects=False)
    assert refused.status_code == 401 and not any(n.endswith(SESSION_COOKIE) for n, _, _ in set_cookies(refused))
    assert logged_in_as(victim) is None

    started = attacker.get("/auth/oidc/login", follow_redirects=False)
    assert [(n, a.get("max-age")) for n, _, a in set_cookies(started)] == [("__Host-sr_oidc_state", "600")]
    assert_host_only_secure(started)

    own = browser(oidc_app)  # the flow in its own browser: completed, its state cookie removed as browsers honour
    done = own.get(_provider_redirect(own, "olivia"), follow_redirects=False)
    assert done.status_code == 303, done.text
    cookies = assert_host_only_secure(done)
    assert cookies["__Host-sr_oidc_state"] == '""' and cookies["__Host-sr_session"]
    with oidc_app.state.hub.sessions() as s:
        assert s.scalar(select(User.display_name).where(User.subject == "olivia")) == logged_in_as(own)
        assert s.scalar(select(User).where(User.subject == "mallory")) is None  # the tossed login never ran


# -- the workspaces' origin --------------------------------------------------------------------------
class StandIn(BaseHTTPRequestHandler):
    """Jupyter, as far as cookies go: notes what it was sent, and tries to set the hub's cookies under every name."""

    server: ThreadingHTTPServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(self.headers.get_all("Cookie") or [])  # type: ignore[attr-defined]
        base = self.path.split("api/")[0]
        self.send_response(200)
        for name in sorted(EVERY_HUB_COOKIE_NAME):
            self.send_header("Set-Cookie", f"{name}=from-jupyter; Path={base}")
            self.send_header("Set-Cookie", f"{name}=from-jupyter; Path=/; Secure")
        self.send_header("Set-Cookie", f"_xsrf=jupyters-own; Path={base}")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


@pytest.fixture
def stand_in() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_workspace_proxy_withholds_every_spelling_of_the_hubs_cookies(app, hub, people, stand_in) -> None:
    carol = people("carol")
    make_project(hub, "lung", pi="carol")
    with transaction(hub.sessions) as s:
        wid = uuid.uuid4()
        s.add(Workspace(id=wid, project_id=s.scalar(select(Project.id).where(Project.slug == "lung")),
                        user_id=carol.user.id, launcher="local", isolation="namespace", state=RUNNING,
                        host="127.0.0.1", port=stand_in.server_address[1], started_at=dt.datetime.now(dt.UTC)))
    cookie = browser_session(hub, carol)
    path = service.base_path("lung", wid)

    hub_browser = browser(app)
    toss(hub_browser, SESSION_COOKIE, cookie)  # her own session, but under the bare name: not read
    assert hub_browser.get(f"{path}lab", follow_redirects=False).headers["location"].startswith("/login")
    hub_browser = browser(app)
    hub_browser.cookies.set("__Host-sr_session", cookie)
    handoff = hub_browser.get(f"{path}lab", follow_redirects=False)
    assert handoff.status_code == 303 and handoff.headers["location"].startswith(f"{WORKSPACES}/_strongroom/")
    opened = browser(app, WORKSPACES).get(handoff.headers["location"], follow_redirects=False)
    assert opened.status_code == 303
    workspace_cookie = opened.cookies[origin.WORKSPACE_COOKIE]

    # what reaches the workspaces' host: its own cookie, whatever siblings tossed for the parent domain, Jupyter's
    sent = "; ".join([f"{origin.WORKSPACE_COOKIE}={workspace_cookie}", "_xsrf=x",
                      *(f"{name}=tossed" for name in sorted(EVERY_HUB_COOKIE_NAME))])
    r = browser(app, WORKSPACES).get(f"{path}api/status", headers={"Cookie": sent})
    assert r.status_code == 200, r.text
    assert stand_in.seen == [["_xsrf=x"]]  # type: ignore[attr-defined]
    assert [(n, a["path"]) for n, _, a in set_cookies(r)] == [("_xsrf", path)]  # none of the hub's, any name


# -- development and the names themselves ------------------------------------------------------------
def test_plain_http_loopback_development_keeps_the_bare_names(settings: Settings, people) -> None:
    from strongroom import deps
    from strongroom.deps import cookie_name

    assert deps.HUB_COOKIES == HUB_COOKIES and deps.EVERY_HUB_COOKIE_NAME == EVERY_HUB_COOKIE_NAME
    assert EVERY_HUB_COOKIE_NAME | {origin.WORKSPACE_COOKIE} == proxy.WITHHELD
    dev = settings.model_copy(update={"base_url": LOOPBACK, "workspaces": WorkspaceSettings(),
                                      "security": settings.security.model_copy(update={"cookie_secure": None})})
    assert not dev.cookie_secure  # decided from base_url: browsers refuse __Host- on plain http
    assert [cookie_name(dev, base) for base in HUB_COOKIES] == list(HUB_COOKIES)
    assert [cookie_name(settings, base) for base in HUB_COOKIES] == [f"__Host-{b}" for b in HUB_COOKIES]
    assert settings.model_copy(update={"base_url": "https://hub.example.org", "security": settings.security.model_copy(
        update={"cookie_secure": None})}).cookie_secure  # https: Secure, so prefixed, without saying so
    with pytest.raises(ValueError):
        cookie_name(settings, "sr_something_else")

    app = create_app(dev, run_jobs=False)
    frank = people("frank")
    c, (login_page, password_ok, _, done) = login(app, frank)
    for response, names in ((login_page, {"sr_csrf"}), (password_ok, {"sr_session", "sr_flash"}),
                            (done, {"sr_session", "sr_flash"})):
        cookies = set_cookies(response)
        assert {n for n, _, _ in cookies} == names
        assert all("secure" not in a and a["path"] == "/" and "domain" not in a for _, _, a in cookies)
    assert logged_in_as(c) == "Frank"
    with TestClient(app, base_url=LOOPBACK) as other:
        other.cookies.set("sr_session", browser_session(app.state.hub, frank))
        assert logged_in_as(other) == "Frank"
    assert app.openapi()["components"]["securitySchemes"]["sessionCookie"]["name"] == "sr_session"


def test_logs_mask_the_hubs_cookies_under_any_name(capsys) -> None:
    root = logging.getLogger()
    handlers, level, config = list(root.handlers), root.level, structlog.get_config()
    logs.configure("INFO", json=True)
    try:
        values = {name: f"value-of-{i}-0123456789" for i, name in enumerate(sorted(EVERY_HUB_COOKIE_NAME))}
        values[origin.WORKSPACE_COOKIE] = "workspace-cookie-value-0123456789"
        header = "; ".join(f"{k}={v}" for k, v in values.items())
        structlog.get_logger("t").warning("refused", detail=f"Cookie: {header}", cookies=values, sent={**values})
        logging.getLogger("uvicorn.error").error("bad request with %s", header)
    finally:
        text = capsys.readouterr().err
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(lines) == 2
    out = json.dumps(lines)
    assert not any(v in out for v in values.values()), out
    assert all(re.search(rf"\b{re.escape(name)}=\*+", lines[0]["detail"]) for name in values)
    assert set(lines[0]["sent"]) == set(values) and set(lines[0]["sent"].values()) == {logs.MASK}

