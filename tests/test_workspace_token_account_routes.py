"""A project-bound token (a notebook workspace's STRONGROOM_TOKEN, minted by the hub and held by the notebook's code)
never stands for a fresh second factor and cannot act on the whole account (audit finding: with ``mfa_at`` = its
minting it registered a crypt4gh recipient for the whole account and listed and revoked the user's other tokens).

Every account-wide API route (everything under /api/v1/me/, writes to /api/v1/me, /api/v1/tokens, and the airlock's
user-wide routes under /api/v1/airlock/: the outbox with its one-time downloads, the reviews across projects) refuses
it with 403, reads included; it may still ask who it acts for and read its project.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import bearer, token_for
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.identity import service as identity
from strongroom.identity.models import ApiToken, User
from strongroom.projects import service as projects
from strongroom.projects.models import Membership

BASE = "http://127.0.0.1:8000"
WORKSPACE_SCOPES = ["data:read", "data:write", "projects:read"]  # as workspaces.service mints them


def _ssh_key() -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


# Every account-wide API route, with a request that would succeed for the account's own token (each run of the
# test checks that the list is still complete).
ACCOUNT_ROUTES: list[tuple[str, str, object]] = [
    ("PATCH", "/api/v1/me", {"country": "SE"}),
    ("GET", "/api/v1/me/audit", None),
    ("GET", "/api/v1/me/entitlements", None),
    ("GET", "/api/v1/me/keys", None),
    ("POST", "/api/v1/me/keys", lambda: {"name": "recipient", "public_key": base64.b64encode(os.urandom(32)).decode()}),
    ("DELETE", "/api/v1/me/keys/{fingerprint}", None),
    ("GET", "/api/v1/me/notifications", None),
    ("PUT", "/api/v1/me/notifications", {"mode": "daily"}),
    ("GET", "/api/v1/me/passport", None),
    ("GET", "/api/v1/me/ssh-keys", None),
    ("POST", "/api/v1/me/ssh-keys", lambda: {"public_key": _ssh_key()}),
    ("DELETE", "/api/v1/me/ssh-keys/{key_id}", None),
    ("GET", "/api/v1/tokens", None),
    ("DELETE", "/api/v1/tokens/{prefix}", None),
    ("GET", "/api/v1/airlock/outbox", None),
    ("GET", "/api/v1/airlock/outbox/{item_id}/content", None),
    ("GET", "/api/v1/airlock/reviews", None),
]


def _account_routes(app) -> set[tuple[str, str]]:
    found = set()
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute):
            continue
        path = route.path_format
        for method in set(route.methods or ()) - {"HEAD", "OPTIONS"}:
            if (path.startswith(("/api/v1/me/", "/api/v1/tokens/", "/api/v1/airlock/")) or path == "/api/v1/tokens"
                    or (path == "/api/v1/me" and method != "GET")):
                found.add((method, path))
    return found


def _project(hub, pi: str, slug: str = "proj-a") -> uuid.UUID:
    with transaction(hub.sessions) as s:
        return projects.create_project(s, Actor.system("t"), slug=slug, name=slug, pi=pi, ethics_ref="E",
                                       end_date=dt.date.today() + dt.timedelta(days=365)).id


def _workspace_token(hub, person, project_id: uuid.UUID) -> str:
    """Exactly what workspaces.service does when a workspace starts."""
    with transaction(hub.sessions) as s:
        _, plaintext = identity.create_project_token(s, Actor.system("t"), s.get(User, person.user.id),
                                                     project_id=project_id, name="workspace x",
                                                     scopes=WORKSPACE_SCOPES, minutes=480)
    return plaintext


@pytest.mark.parametrize(("method", "path", "body"), ACCOUNT_ROUTES, ids=[f"{m} {p}" for m, p, _ in ACCOUNT_ROUTES])
def test_a_workspace_token_is_refused_on_every_account_route(app, hub, people, method, path, body) -> None:
    assert _account_routes(app) == {(m, p) for m, p, _ in ACCOUNT_ROUTES}  # a route added later is listed here
    alice = people("alice")
    workspace = _workspace_token(hub, alice, _project(hub, "alice"))
    personal = token_for(hub, alice)  # every scope, minted just now (a fresh second factor)
    prefix = personal.split("_")[1]
    url = path.format(fingerprint="SHA256:" + "A" * 43, key_id=uuid.uuid4(), prefix=prefix, item_id=uuid.uuid4())
    c = TestClient(app, base_url=BASE)

    def send(token: str):
        payload = body() if callable(body) else body
        return c.request(method, url, headers=bearer(token), **({"json": payload} if payload is not None else {}))

    r = send(workspace)
    assert r.status_code == 403, r.text
    assert r.json()["detail"].startswith("a workspace's token acts only inside its project")
    with hub.sessions() as s:  # nothing changed: the personal token stands
        assert s.scalar(select(ApiToken).where(ApiToken.prefix == prefix)).revoked_at is None
    # the account's own token is not refused (the route works, or answers on its own terms)
    r = send(personal)
    assert r.status_code in (200, 201, 204, 404), r.text


def test_a_workspace_token_never_counts_as_a_fresh_second_factor(app, hub, people) -> None:
    """Minted a moment ago, it still is no second factor: a member holding the reidentify right gets
    mfa-required with it, where their own token minted as long ago gets on to the lookup (404: no such pseudonym).
    It still reads its project and may ask who it acts for."""
    people("pia")
    sam = people("sam")
    project_id = _project(hub, "pia", "lung")
    with transaction(hub.sessions) as s:
        s.add(Membership(project_id=project_id, user_id=sam.user.id, role="member",
                         delegated_rights=["reidentify"]))
    workspace, personal = _workspace_token(hub, sam, project_id), token_for(hub, sam)
    with transaction(hub.sessions) as s:
        principal = identity.authenticate_token(s, workspace, "127.0.0.1")
        assert principal.project_id == project_id and principal.has_mfa  # it reads data
        assert not principal.mfa_is_fresh(10)
        assert identity.authenticate_token(s, personal, "127.0.0.1").mfa_is_fresh(10)
    ask = {"pseudonym": "NOPE", "reason": "incidental finding: the hospital must contact the patient"}
    c = TestClient(app, base_url=BASE)
    r = c.post("/api/v1/projects/lung/imaging/reidentify", json=ask, headers=bearer(workspace))
    assert r.status_code == 403 and r.json()["code"] == "mfa-required", r.text
    r = c.post("/api/v1/projects/lung/imaging/reidentify", json=ask, headers=bearer(personal))
    assert r.status_code == 404, r.text
    me = c.get("/api/v1/me", headers=bearer(workspace))
    assert me.status_code == 200 and me.json()["mfa"] is True  # a second factor once: it reads data
    assert c.get("/api/v1/projects/lung", headers=bearer(workspace)).status_code == 200
