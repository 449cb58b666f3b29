"""A notebook workspace is served from an origin of its own (``[workspaces] origin``), never the hub's. A page served
there — here by a stand-in HTTP server behind the real proxy, playing a Jupyter whose process the notebook's code
replaced (same uid: it can, and then serve any page it likes) — cannot read the hub's pages, mint a token, post a
CSRF-checked form or plant the hub's session cookie, and the hub session works on afterwards: with the workspaces'
host a sibling under the hub's own name (same site, the hub's SameSite cookie sent along) as with the loopback twins
of development (127.0.0.1 and localhost). A handoff code opens its workspace once, for seconds, for the session and
workspace it was issued for; the hub's session cookie alone opens nothing on the workspaces' origin, where nothing
else of the hub answers; logging out, leaving the project or the workspace's stop end access there."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, expect
from pydantic import ValidationError
from sqlalchemy import delete, select, update
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from conftest import browser_session
from imaging_support import make_project
from strongroom.app import create_app
from strongroom.audit.service import Actor
from strongroom.config import Settings, WorkspaceSettings
from strongroom.db import transaction
from strongroom.deps import SESSION_COOKIE, csrf_token_for
from strongroom.hub import Hub
from strongroom.identity import service as identity
from strongroom.identity.models import ApiToken, WebSession
from strongroom.identity.secrets import sha256_hex
from strongroom.projects.models import Membership, Project
from strongroom.workspaces import origin, service
from strongroom.workspaces.models import RUNNING, STOPPED, Handoff, Workspace

PAGE = b"<!doctype html><title>JupyterLab</title><p>a notebook's page"
# what a replaced Jupyter may say of itself: run anything, connect anywhere, post anywhere
ANYTHING_GOES = "default-src * 'unsafe-inline' 'unsafe-eval'; connect-src *; form-action *"


class StandIn(BaseHTTPRequestHandler):
    """A Jupyter the notebook's code replaced: any page, the laxest policy, and cookies for the hub."""

    server: ThreadingHTTPServer

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        self.server.seen.append({k.lower(): v for k, v in self.headers.items()})  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Security-Policy", ANYTHING_GOES)
        if self.path.endswith("/plant"):
            base = self.path.removesuffix("plant")
            for cookie in (f"{SESSION_COOKIE}=planted-by-workspace; Path=/; HttpOnly", "sr_csrf=planted; Path=/",
                           f"{SESSION_COOKIE}=tossed; Domain={self.server.parent}; Path=/",  # type: ignore[attr-defined]
                           f"{origin.WORKSPACE_COOKIE}=forged; Path={base}", "wide=1; Path=/",
                           f"deep=1; Domain={self.server.parent}; Path={base}",  # type: ignore[attr-defined]
                           f"_xsrf=jupyters-own; Path={base}"):
                self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    do_GET = do_POST = _answer


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "twins")


@pytest.fixture
def settings(settings: Settings, listen_socket: socket.socket, topology: str) -> Settings:
    """twins: the hub at 127.0.0.1, its workspaces at localhost (the default). sibling: the hub at hub.localhost, its
    workspaces at workspaces.hub.localhost — one site, as workspaces.hub.example is with hub.example. unset: a hub
    with a public name and no origin for its workspaces."""
    port = listen_socket.getsockname()[1]
    if topology == "sibling":
        return settings.model_copy(update={
            "base_url": f"http://hub.localhost:{port}",
            "workspaces": WorkspaceSettings(origin=f"http://workspaces.hub.localhost:{port}")})
    if topology == "unset":
        return settings.model_copy(update={"base_url": "https://hub.example"})
    return settings


@pytest.fixture
def stand_in(settings: Settings) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    server.seen = []  # type: ignore[attr-defined]
    server.parent = urlsplit(settings.base_url).hostname  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _workspace(hub: Hub, slug: str, user_id: uuid.UUID, server: ThreadingHTTPServer) -> uuid.UUID:
    """A running workspace whose Jupyter is the stand-in."""
    with transaction(hub.sessions) as s:
        project = s.scalar(select(Project.id).where(Project.slug == slug))
        ws = Workspace(id=uuid.uuid4(), project_id=project, user_id=user_id, launcher="local", isolation="namespace",
                       state=RUNNING, host="127.0.0.1", port=server.server_address[1],
                       started_at=dt.datetime.now(dt.UTC))
        s.add(ws)
        return ws.id


def _handoff(live: str, path: str, cookie: str) -> str:
    """The hub's answer to opening ``path``: the handoff address on the workspaces' origin."""
    r = httpx.get(f"{live}{path}", cookies={SESSION_COOKIE: cookie})
    assert r.status_code == 303, r.text
    return r.headers["location"]


def _tokens(hub: Hub, user_id: uuid.UUID) -> int:
    with transaction(hub.sessions) as s:
        return len(s.scalars(select(ApiToken).where(ApiToken.user_id == user_id)).all())


ATTACKS = r"""async ({hub, csrf, base}) => {
  const out = {};
  const attempt = async (name, act) => { try { out[name] = await act(); } catch (e) { out[name] = 'blocked'; } };
  const form = new URLSearchParams({csrf_token: csrf, name: 'notebook', days: '90'});
  for (const s of ['projects:read', 'projects:write', 'data:read', 'data:write', 'access']) form.append('scopes', s);
  const read = async (path) => (await fetch(hub + path, {credentials: 'include'})).status;
  await attempt('read another project', async () => await read('/projects/heart'));
  await attempt('read the account page', async () => await read('/account'));
  await attempt('mint a token', async () => (await fetch(hub + '/account/tokens',
      {method: 'POST', body: form, credentials: 'include'})).status);
  await attempt('mint a token unseen', async () => (await fetch(hub + '/account/tokens',
      {method: 'POST', body: form, credentials: 'include', mode: 'no-cors'})).type);
  for (const path of ['/account', '/projects/heart', '/api/v1/me', '/login', '/static/style.css', '/healthz'])
    out['here ' + path] = (await fetch(path)).status;
  out['here mint'] = (await fetch('/account/tokens', {method: 'POST', body: form})).status;
  out.plant = (await fetch(base + 'plant')).status;
  document.cookie = 'sr_session=planted-by-script; path=/';
  document.cookie = 'sr_workspace=forged-by-script; path=/';
  out.cookies = document.cookie;
  return out;
}"""

POST_FORM = r"""({hub, csrf}) => {
  const form = document.createElement('form');
  form.method = 'post';
  form.action = hub + '/account/tokens';
  for (const [k, v] of [['csrf_token', csrf], ['name', 'notebook'], ['days', '90'], ['scopes', 'data:read']]) {
    const input = document.createElement('input');
    input.name = k; input.value = v; form.appendChild(input);
  }
  document.body.appendChild(form);
  form.submit();
}"""


@pytest.mark.browser
@pytest.mark.parametrize("topology", ["twins", "sibling"], indirect=True)
def test_a_notebook_page_cannot_act_on_the_hub(browser: Browser, live_server, hub: Hub, people, stand_in,
                                               topology: str) -> None:
    carol = people("carol")
    make_project(hub, "lung", pi="carol")
    make_project(hub, "heart", pi="carol")
    wid = _workspace(hub, "lung", carol.user.id, stand_in)
    cookie = browser_session(hub, carol)
    hub_url, where = hub.settings.base_url, service.browser_origin(hub.settings)
    hub_host, prefix = urlsplit(hub_url).hostname, service.base_path("lung", wid)
    context = browser.new_context()
    context.add_cookies([{"name": SESSION_COOKIE, "value": cookie, "url": hub_url, "httpOnly": True,
                          "sameSite": "Strict"}])
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        # the hub's "open" link lands on the workspaces' origin, past a one-time handoff
        answer = page.goto(f"{hub_url}{prefix}lab")
        assert answer is not None and answer.status == 200 and page.url == f"{where}{prefix}lab"
        expect(page).to_have_title("JupyterLab")
        # the page's script, as the notebook's would: the hub is another origin, and says nothing to it
        csrf = csrf_token_for(hub.secret, session_cookie=cookie)  # even the real form token does not help
        tried = page.evaluate(ATTACKS, {"hub": hub_url, "csrf": csrf, "base": prefix})
        assert tried["read another project"] == "blocked" and tried["read the account page"] == "blocked"
        assert tried["mint a token"] == "blocked" and tried["mint a token unseen"] == "opaque"
        assert {k: v for k, v in tried.items() if k.startswith("here ")} == {
            "here /account": 404, "here /projects/heart": 404, "here /api/v1/me": 404, "here /login": 404,
            "here /static/style.css": 404, "here /healthz": 404, "here mint": 404}
        assert tried["plant"] == 200
        # a form posted to the hub from there, with the real token: the hub refuses its origin
        with page.expect_response(lambda r: r.url.endswith("/account/tokens")) as posted:
            page.evaluate(POST_FORM, {"hub": hub_url, "csrf": csrf})
        assert posted.value.status == 403
        page.wait_for_url(f"{hub_url}/account/tokens")
        assert _tokens(hub, carol.user.id) == 0
        # the hub's cookie jar is untouched: what the workspace set stayed on its own host and path, or was dropped
        jar = [(c["domain"], c["name"], c["value"], c["path"]) for c in context.cookies()]
        assert (hub_host, SESSION_COOKIE, cookie, "/") in jar
        workspace_host = urlsplit(where).hostname
        assert {c[0] for c in jar} == {hub_host, workspace_host}  # host-only, every one
        hub_sessions = [c for c in jar if c[1] == SESSION_COOKIE and c[0] == hub_host]
        assert hub_sessions == [(hub_host, SESSION_COOKIE, cookie, "/")]
        names = {(c[1], c[2]) for c in jar}
        assert not names & {(SESSION_COOKIE, "planted-by-workspace"), (SESSION_COOKIE, "tossed"), ("wide", "1"),
                            ("sr_csrf", "planted"), (origin.WORKSPACE_COOKIE, "forged"), ("deep", "1")}
        assert (workspace_host, "_xsrf", "jupyters-own", prefix) in jar  # Jupyter's own cookies still work
        # the workspace goes on (the script's own cookie of that name does not shadow the hub's), and the hub too
        assert page.goto(f"{where}{prefix}lab").status == 200  # type: ignore[union-attr]
        assert page.goto(f"{hub_url}/account").status == 200  # type: ignore[union-attr]
        expect(page).to_have_url(f"{hub_url}/account")
        # a person who types the workspaces' host lands on the hub's own (a navigation only; scripts got 404)
        assert page.goto(f"{where}/account").status == 200  # type: ignore[union-attr]
        expect(page).to_have_url(f"{hub_url}/account")
        # Jupyter never saw the hub's cookies nor the workspace's, and always got its token from the proxy
        assert stand_in.seen and all("authorization" in h for h in stand_in.seen)
        sent = " ".join(h.get("cookie", "") for h in stand_in.seen)
        assert "_xsrf=jupyters-own" in sent
        assert f"{SESSION_COOKIE}=" not in sent and f"{origin.WORKSPACE_COOKIE}=" not in sent
    finally:
        context.close()


def test_a_handoff_code_opens_its_workspace_once(live_server, hub: Hub, people, stand_in) -> None:
    carol, dave = people("carol"), people("dave")
    make_project(hub, "lung", pi="carol")
    make_project(hub, "heart", pi="dave")
    mine = _workspace(hub, "lung", carol.user.id, stand_in)
    theirs = _workspace(hub, "heart", dave.user.id, stand_in)
    carol_cookie, dave_cookie = browser_session(hub, carol), browser_session(hub, dave)
    live, where = live_server.url, service.browser_origin(hub.settings)
    path, other_path = service.base_path("lung", mine), service.base_path("heart", theirs)

    url = _handoff(live, f"{path}lab/tree/a%20b.ipynb?x=1", carol_cookie)
    assert url.startswith(f"{where}/_strongroom/workspaces/{mine}/handoff?code=")
    handed = httpx.get(url)
    assert handed.status_code == 303 and handed.headers["location"] == f"{path}lab/tree/a%20b.ipynb?x=1"
    set_cookie = handed.headers["set-cookie"]
    assert f"Path={path};" in set_cookie and "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie
    assert "Domain" not in set_cookie and "Secure" not in set_cookie  # http here; Secure on https
    opened = {origin.WORKSPACE_COOKIE: handed.cookies[origin.WORKSPACE_COOKIE]}
    assert httpx.get(f"{where}{path}api/status", cookies=opened).status_code == 200
    # replayed: refused
    assert httpx.get(url).status_code == 404
    # presented for another workspace: refused, and used up all the same
    url = _handoff(live, f"{path}lab", carol_cookie)
    assert httpx.get(url.replace(str(mine), str(theirs))).status_code == 404
    assert httpx.get(url).status_code == 404
    # expired (past its seconds): refused
    url = _handoff(live, f"{path}lab", carol_cookie)
    with transaction(hub.sessions) as s:
        s.execute(update(Handoff).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    assert httpx.get(url).status_code == 404
    # for another user: a code for dave's session naming carol's workspace, or carol's user with dave's session
    # (the hub issues neither; its checks come first)
    for user, session in ((dave.user.id, dave_cookie), (carol.user.id, dave_cookie)):
        with transaction(hub.sessions) as s:
            code = service.issue_handoff(s, hub.secret, mine, user, sha256_hex(session), f"{path}lab")
        assert httpx.get(origin.handoff_url(where, mine, code)).status_code == 404
    # and the hub hands over only the owner's: dave asking for carol's workspace gets 404 there
    assert httpx.get(f"{live}{path}lab", cookies={SESSION_COOKIE: dave_cookie}).status_code == 404
    anonymous = httpx.get(f"{live}{path}lab")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next=")

    # the hub's session cookie alone opens nothing there, and nothing else of the hub answers there
    for address in (f"{path}lab", f"{path}api/status", "/account", "/", "/projects/lung", "/api/v1/me"):
        assert httpx.get(f"{where}{address}", cookies={SESSION_COOKIE: carol_cookie}).status_code == 404
    # a workspace cookie for another workspace, or signed with another key: 404
    assert httpx.get(f"{where}{other_path}api/status", cookies=opened).status_code == 404
    forged = origin.cookie_value(b"another-secret" * 3, mine, sha256_hex(carol_cookie))
    assert httpx.get(f"{where}{path}api/status", cookies={origin.WORKSPACE_COOKIE: forged}).status_code == 404
    # a post there comes from the workspace's own page, or is not found
    assert httpx.post(f"{where}{path}api/kernels", cookies=opened).status_code == 404
    assert httpx.post(f"{where}{path}api/kernels", cookies=opened,
                      headers={"Origin": hub.settings.base_url}).status_code == 404
    assert httpx.post(f"{where}{path}api/kernels", cookies=opened, headers={"Origin": where}).status_code == 200
    # on the hub's origin: no method but opening, no websocket, no CORS for the workspaces' origin
    for method in ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
        assert httpx.request(method, f"{live}{path}api/kernels", cookies={SESSION_COOKIE: carol_cookie},
                             headers={"Origin": live}).status_code == 404
    for address in (live, where):
        ws_address = address.replace("http://", "ws://") + f"{path}api/kernels/x/channels"
        with pytest.raises(InvalidStatus):
            ws_connect(ws_address, additional_headers={"Cookie": f"{SESSION_COOKIE}={carol_cookie}"}, origin=address)
    with pytest.raises(InvalidStatus):  # the workspace's cookie from another origin: cross-site hijacking
        ws_connect(where.replace("http://", "ws://") + f"{path}api/kernels/x/channels", origin=live,
                   additional_headers={"Cookie": f"{origin.WORKSPACE_COOKIE}={opened[origin.WORKSPACE_COOKIE]}"})
    answer = httpx.get(f"{live}/account", cookies={SESSION_COOKIE: carol_cookie}, headers={"Origin": where})
    assert not any(k.lower().startswith("access-control-") for k in answer.headers)
    refused = httpx.post(f"{live}/account/tokens", cookies={SESSION_COOKIE: carol_cookie}, headers={"Origin": where},
                         data={"csrf_token": csrf_token_for(hub.secret, session_cookie=carol_cookie), "name": "x",
                               "days": "1", "scopes": "data:read"})
    assert refused.status_code == 403 and _tokens(hub, carol.user.id) == 0

    # every request is checked again from the hub session: leaving the project, the workspace's stop, logging out
    with transaction(hub.sessions) as s:
        lung = s.scalar(select(Project.id).where(Project.slug == "lung"))
        s.execute(delete(Membership).where(Membership.project_id == lung, Membership.user_id == carol.user.id))
    assert httpx.get(f"{where}{path}api/status", cookies=opened).status_code == 404
    dave_opened = {origin.WORKSPACE_COOKIE: httpx.get(_handoff(live, f"{other_path}lab", dave_cookie))
                   .cookies[origin.WORKSPACE_COOKIE]}
    assert httpx.get(f"{where}{other_path}api/status", cookies=dave_opened).status_code == 200
    with transaction(hub.sessions) as s:
        s.execute(update(Workspace).where(Workspace.id == theirs).values(state=STOPPED))
    assert httpx.get(f"{where}{other_path}api/status", cookies=dave_opened).status_code == 404
    with transaction(hub.sessions) as s:
        s.execute(update(Workspace).where(Workspace.id == theirs).values(state=RUNNING))
    assert httpx.get(f"{where}{other_path}api/status", cookies=dave_opened).status_code == 200
    with transaction(hub.sessions) as s:
        identity.end_session(s, s.get(WebSession, sha256_hex(dave_cookie)), Actor.system("test"))
    assert httpx.get(f"{where}{other_path}api/status", cookies=dave_opened).status_code == 404


@pytest.mark.parametrize("topology", ["unset"], indirect=True)
def test_without_an_origin_of_their_own_workspaces_do_not_open(live_server, hub: Hub, people, stand_in) -> None:
    carol = people("carol")
    make_project(hub, "lung", pi="carol")
    wid = _workspace(hub, "lung", carol.user.id, stand_in)
    cookie = browser_session(hub, carol)
    page = httpx.get(f"{live_server.url}/projects/lung/workspaces", cookies={SESSION_COOKIE: cookie})
    assert page.status_code == 200 and "[workspaces] origin" in page.text
    opened = httpx.get(f"{live_server.url}{service.base_path('lung', wid)}lab", cookies={SESSION_COOKIE: cookie})
    assert opened.status_code == 409 and "[workspaces] origin" in opened.text
    assert not stand_in.seen


def test_the_workspaces_origin_is_a_host_of_its_own(tmp_path) -> None:
    for base, wrong in (("https://hub.example", "https://hub.example:8443"), ("https://hub.example", "http://HUB.example."),
                        ("http://127.0.0.1:8000", "http://127.0.0.1:9000")):
        with pytest.raises(ValueError, match="own host"):
            WorkspaceSettings(origin=wrong).browser_origin(base)
        with pytest.raises(ValueError, match="own host"):  # at load: the hub does not start
            Settings(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path}/x.db", base_url=base,
                     secret_key="test-secret-" + "x" * 32, workspaces={"origin": wrong})
        settings = Settings(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path}/x.db", base_url=base,
                            secret_key="test-secret-" + "x" * 32)
        settings.workspaces.origin = wrong  # set after loading (as a test may): create_app refuses it too
        with pytest.raises(ValueError, match="own host"):
            create_app(settings, run_jobs=False)
    for bad in ("https://ws.example/lab", "ftp://ws.example", "https://me@ws.example", "https://ws.example:99999",
                "ws.example"):
        with pytest.raises(ValidationError, match="origin"):
            WorkspaceSettings(origin=bad)
    assert WorkspaceSettings(origin="HTTPS://Workspaces.Hub.Example/").origin == "https://workspaces.hub.example"
    assert WorkspaceSettings().browser_origin("http://127.0.0.1:8000") == "http://localhost:8000"
    assert WorkspaceSettings().browser_origin("http://localhost:8000") == "http://127.0.0.1:8000"
    assert WorkspaceSettings().browser_origin("https://hub.example") == ""
    assert WorkspaceSettings(origin="https://workspaces.hub.example").browser_origin(
        "https://hub.example") == "https://workspaces.hub.example"


def test_what_the_workspace_may_set_as_cookies() -> None:
    prefix, reserved = "/projects/lung/workspaces/1/", frozenset({SESSION_COOKIE, "sr_csrf", origin.WORKSPACE_COOKIE})
    for header in (f"_xsrf=a; Path={prefix}", f"username-1=b; HttpOnly; Path={prefix}api", f"y=1; Path={prefix[:-1]}"):
        assert origin.allowed_set_cookie(header, prefix, reserved) == header  # within the workspace's path
    assert origin.allowed_set_cookie("x=1", prefix, reserved) == f"x=1; Path={prefix}"  # made explicit
    for header in (f"{SESSION_COOKIE}=x; Path={prefix}", "sr_csrf=x", f"{origin.WORKSPACE_COOKIE}=x",
                   "a=1; Path=/", "a=1; Path=/projects/lung/workspaces/10/", f"a=1; Domain=localhost; Path={prefix}",
                   f"a=1; path={prefix}; PATH=/", "__Host-a=1; Path=/", f"a=1; Path={prefix}../../"):
        assert origin.allowed_set_cookie(header, prefix, reserved) is None, header
    assert json.dumps(origin.cookie_pairs("a=1; b=2; a=3")) == '[["a", "1"], ["b", "2"], ["a", "3"]]'
