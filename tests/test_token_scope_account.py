"""A token holding only read scopes changes nothing (audit finding: a `projects:read` token revoked the user's
full token and changed their profile; a `data:read` token changed their notification mode, which asked for no
scope at all).

A class test over the whole route table: every route of the API (`/api/`, `/ga4gh/`, `/dicomweb/`) that is not a
read, asked with a token holding every read scope (`projects:read`, `audit:read`, `data:read`) by a platform
administrator (so administration answers 403 rather than its 404), is refused with 403 "this token lacks the …
scope", and afterwards no table has a row more or less. The few exceptions are listed here with their reason. The
account's own writes (profile, notification mode, revoking a token) need `projects:write`.

And an OpenID Connect login's `next` that is longer than the column keeping it until the callback is dropped (home),
never a database error: PostgreSQL checks the length, SQLite does not.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from conftest import bearer, token_for
from strongroom.app import create_app
from strongroom.audit.service import Actor
from strongroom.config import OidcSettings, Settings
from strongroom.db import Base, transaction
from strongroom.identity.models import ApiToken, OidcLoginState
from strongroom.projects import service as projects
from support.oidc_provider import complete_login, running_oidc_provider

BASE = "http://127.0.0.1:8000"
READ_SCOPES = ["projects:read", "audit:read", "data:read"]
TOKEN_ROUTES = ("/api/", "/ga4gh/", "/dicomweb/")
READS = frozenset({"GET", "HEAD", "OPTIONS"})

# Reads sent with POST: each needs a read scope and changes nothing.
READS_BY_POST = {
    ("POST", "/api/v1/strategies/check"),  # checks a strategy's text; stores nothing (docs/strategies.md)
    # a lookup of a pseudonym's original: data:read plus the `reidentify` right, fresh MFA and a reason, audited
    ("POST", "/api/v1/projects/{slug}/imaging/reidentify"),
    # GA4GH DRS 1.5's POST forms of its reads (passports in the body instead of a header)
    ("POST", "/ga4gh/drs/v1/objects"), ("POST", "/ga4gh/drs/v1/objects/access"),
    ("POST", "/ga4gh/drs/v1/objects/{object_id}"), ("POST", "/ga4gh/drs/v1/objects/{object_id}/access/{access_id}"),
    # Beacon v2's POST queries: public, no token
    ("POST", "/ga4gh/beacon/v2/datasets"), ("POST", "/ga4gh/beacon/v2/imaging_studies"),
}
# Writes of another hub, which take its signature and no token at all: 401 without one.
PEER_SIGNED = {
    ("POST", "/api/v1/federation/peer/sync/manifest"), ("POST", "/api/v1/federation/peer/sync/notice"),
    ("PUT", "/api/v1/federation/peer/sync/{sync_id}/files/{file_id}"),
    ("POST", "/api/v1/federation/peer/sync/{sync_id}/files/{file_id}/fetch"),
    ("POST", "/api/v1/federation/peer/sync/{sync_id}/publish"),
}
# Routes whose scope is checked by the service, after the body is read (the external owner's decision: a decision
# token carries no scope, an ordinary token needs `access`): a body that would do for the route's owner.
BODIES = {("POST", "/api/v1/external/datasets/{dataset_id}/decisions"): {"applicant": "ada", "approve": False}}
# Key routes a download token may use, on purpose: a crypt4gh key is what a download is re-encrypted to (registering
# one needs fresh MFA as well), and removing a key only takes access away.
KEY_ROUTES_ON_DATA_READ = {
    ("POST", "/api/v1/me/keys"), ("DELETE", "/api/v1/me/keys/{fingerprint}"),
    ("DELETE", "/api/v1/me/ssh-keys/{key_id}"),
}
# What a refused request may still write: the audit trail (refusals and token uses are audited).
BOOKKEEPING = {"audit_events", "audit_head"}


def _writes(app: Any) -> list[tuple[str, str, APIRoute]]:
    """(method, path template, route) of every token-taking route that is not a read."""
    found = {}
    for r in iter_route_contexts(app.routes):
        if isinstance(r.original_route, APIRoute) and r.path_format.startswith(TOKEN_ROUTES):
            for method in set(r.methods or ()) - READS:
                found[method, r.path_format] = r.original_route
    return [(m, p, route) for (m, p), route in sorted(found.items())]


def _url(template: str, route: APIRoute, known: dict[str, str]) -> str:
    """The template with every path parameter filled: a real value where we have one, else one of its type."""
    values = {}
    for param in route.dependant.path_params:
        kind = param.field_info.annotation
        values[param.name] = known.get(param.name) or (str(uuid.uuid4()) if kind is uuid.UUID
                                                       else "1" if kind is int else "x")
    return template.format(**values)


def _project(hub, pi: str, slug: str = "scoped") -> None:
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug=slug, name=slug, pi=pi, ethics_ref="E",
                                end_date=dt.date.today() + dt.timedelta(days=365))


def _row_counts(hub) -> dict[str, int]:
    with hub.sessions() as s:
        return {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables
                if t.name not in BOOKKEEPING}


def test_a_read_only_token_changes_nothing_on_any_route(app, hub, people) -> None:
    ada = people("ada", admin=True)
    _project(hub, "ada")
    full = token_for(hub, ada)  # every scope, admin included
    read_only = token_for(hub, ada, READ_SCOPES)
    prefix = full.split("_")[1]
    c = TestClient(app, base_url=BASE)
    routes = _writes(app)
    assert {(m, p) for m, p, _ in routes} >= READS_BY_POST | PEER_SIGNED | set(BODIES) | KEY_ROUTES_ON_DATA_READ
    before = _row_counts(hub)
    wrong = []
    for method, template, route in routes:
        if (method, template) in READS_BY_POST | KEY_ROUTES_ON_DATA_READ:
            continue
        url = _url(template, route, {"slug": "scoped", "prefix": prefix, "user_id": str(ada.user.id)})
        r = c.request(method, url, headers=bearer(read_only), json=BODIES.get((method, template)))
        want = 401 if (method, template) in PEER_SIGNED else 403
        if r.status_code != want or (want == 403 and not r.json()["detail"].startswith("this token lacks the")):
            wrong.append(f"{method} {url} → {r.status_code} {r.text[:120]} (want {want})")
    assert wrong == []
    assert _row_counts(hub) == before
    with hub.sessions() as s:  # the full token stands, and the account is as it was
        assert s.scalar(select(ApiToken.revoked_at).where(ApiToken.prefix == prefix)) is None
    me = c.get("/api/v1/me", headers=bearer(full)).json()
    assert me["country"] is None
    assert c.get("/api/v1/me/notifications", headers=bearer(full)).json() == {"mode": "immediate"}


def test_account_writes_need_projects_write(app, hub, people) -> None:
    """The audit's three: each refused to a read-only token, naming the scope it lacks; each done with
    projects:write. Reading the account still needs only a read scope (what `strongroom login` asks: GET /me)."""
    bo = people("bo")
    other = token_for(hub, bo, ["data:read", "data:write", "projects:read", "projects:write"])
    other_prefix = other.split("_")[1]
    c = TestClient(app, base_url=BASE)
    writes = [("DELETE", f"/api/v1/tokens/{other_prefix}", None), ("PATCH", "/api/v1/me", {"country": "SE"}),
              ("PUT", "/api/v1/me/notifications", {"mode": "daily"})]
    for scopes in (["projects:read"], ["data:read"], READ_SCOPES, ["data:write", "access", *READ_SCOPES]):
        token = token_for(hub, bo, scopes)
        for method, path, body in writes:
            r = c.request(method, path, headers=bearer(token), json=body)
            assert r.status_code == 403, (scopes, method, path, r.text)
            assert r.json()["detail"] == "this token lacks the 'projects:write' scope", r.text
    assert c.get("/api/v1/tokens", headers=bearer(other)).status_code == 200  # not revoked
    assert c.get("/api/v1/me", headers=bearer(other)).json()["country"] is None
    assert c.get("/api/v1/me/notifications", headers=bearer(other)).json() == {"mode": "immediate"}

    reader = token_for(hub, bo, ["projects:read"])
    assert c.get("/api/v1/me", headers=bearer(reader)).status_code == 200
    assert c.get("/api/v1/tokens", headers=bearer(reader)).status_code == 200
    assert c.get("/api/v1/me/notifications", headers=bearer(token_for(hub, bo, ["data:read"]))).status_code == 200
    # "who am I" answers any valid token: `strongroom login` with a download script's data-only token
    for scopes in (["data:read"], ["access"], ["audit:read"]):
        me = c.get("/api/v1/me", headers=bearer(token_for(hub, bo, scopes)))
        assert me.status_code == 200 and me.json()["scopes"] == scopes, (scopes, me.text)

    writer = token_for(hub, bo, ["projects:read", "projects:write"])
    r = c.patch("/api/v1/me", json={"country": "SE"}, headers=bearer(writer))
    assert r.status_code == 200 and r.json()["country"] == "SE", r.text
    r = c.put("/api/v1/me/notifications", json={"mode": "daily"}, headers=bearer(writer))
    assert r.status_code == 200 and r.json() == {"mode": "daily"}, r.text
    assert c.delete(f"/api/v1/tokens/{other_prefix}", headers=bearer(writer)).status_code == 204
    assert c.get("/api/v1/tokens", headers=bearer(other)).status_code == 401


# -- an OpenID Connect login's `next`, kept in oidc_login_states.next_url until the callback ----------------------
CLIENT_ID, CLIENT_SECRET = "strongroom-test", "test-client-secret-" + "z" * 24
REDIRECT_URI = BASE + "/auth/oidc/callback"
NEXT_URL_MAX = OidcLoginState.__table__.c.next_url.type.length  # what the column holds (512)


@pytest.fixture(scope="module")
def provider() -> Iterator:
    with running_oidc_provider(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI]) as op:
        yield op


@pytest.fixture
def oidc_app(settings: Settings, provider):
    return create_app(settings.model_copy(update={"base_url": BASE, "oidc": OidcSettings(
        issuer=provider.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)}), run_jobs=False)


def _stored_next(app, browser: TestClient, next_url: str) -> str:
    """Start a login with ``next_url`` (sent to the provider: a 303 there); the `next` kept for the callback."""
    r = browser.get("/auth/oidc/login", params={"next": next_url}, follow_redirects=False)
    assert r.status_code == 303 and "state" in parse_qs(urlsplit(r.headers["location"]).query), r.text[:300]
    with transaction(app.state.hub.sessions) as s:
        (kept,) = s.scalars(select(OidcLoginState.next_url)).all()
        s.execute(delete(OidcLoginState))
    return kept


@pytest.mark.slow
def test_an_overlong_oidc_next_is_dropped_not_a_database_error(oidc_app, provider) -> None:
    browser = TestClient(oidc_app, base_url=BASE, raise_server_exceptions=False)
    longest = "/projects?q=" + "a" * (NEXT_URL_MAX - len("/projects?q="))
    assert _stored_next(oidc_app, browser, longest) == longest  # as long as the column holds: kept
    wide = "/projects?q=" + "é" * (NEXT_URL_MAX - len("/projects?q="))  # characters, not bytes, count
    assert _stored_next(oidc_app, browser, wide) == wide
    for too_long in (longest + "a", "/" + "a" * 600, "/" + "a" * 1999):  # the login links take up to 2000
        assert _stored_next(oidc_app, browser, too_long) == "/"
    # the whole round trip: the login completes and carries on home, which leads a logged-in user to their projects
    authorize = browser.get("/auth/oidc/login", params={"next": "/" + "a" * 600}, follow_redirects=False)
    assert authorize.status_code == 303, authorize.text[:300]
    with httpx.Client(timeout=15, trust_env=False) as op_browser:
        back = complete_login(op_browser, authorize.headers["location"], login="grace", mfa=True).headers["location"]
    r = browser.get(back, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/", r.text[:300]
