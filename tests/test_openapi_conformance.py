"""The OpenAPI document tells the truth: schemathesis, with every check, against a live hub.

A seeded hub (an admin with MFA and an all-scopes token, a project, a dataset, a user key, a file
named with non-ASCII characters) is served on a loopback port, on SQLite and on PostgreSQL, and
`st run` sends generated valid and invalid requests to every operation. It must find no server
error and no status, content type or header that the document does not declare. With the operations'
`security` declared, its ignored-auth check also sends each secured operation without credentials.
Every operation declares its security, derived from the route's dependencies, and is refused without
credentials when it says so (the last test).

What each run sends (docs/testing.md): the coverage phase in full on both databases (schemathesis's
deterministic cases for every operation: boundary values, missing and wrong-typed parameters, ...), then
the fuzzing phase, EXAMPLES_PER_OPERATION random cases per operation with a seed of the database's own, so
the two runs together send 2 x EXAMPLES_PER_OPERATION different random cases to every operation.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import bearer, token_for
from strongroom.archive import c4gh
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.projects import service as projects
from support.live import free_port, serving

pytestmark = pytest.mark.slow

ST = Path(sys.executable).with_name("st")
# Random cases per operation and run, after the deterministic coverage phase. It was 20 on both databases with
# one seed (largely the same 20 cases sent twice); 10 with a seed per database sends 20 different cases per operation
# across the two runs and halves the fuzzing phase (about 40 % of a run).
EXAMPLES_PER_OPERATION = 10
SEEDS = {"sqlite": 1, "postgresql": 2}
END = dt.date.today() + dt.timedelta(days=365)


@pytest.fixture
def settings(settings):
    port = free_port()
    s = settings.model_copy(update={"base_url": f"http://127.0.0.1:{port}"})
    s._port = port  # test plumbing
    return s


def seed(url: str, token: str) -> dict[str, str]:
    """What the generated requests should find besides the project: a dataset and a key."""
    c = httpx.Client(base_url=url, headers=bearer(token), timeout=30)
    key = c4gh.generate_keypair()
    r = c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(key.public).decode()})
    assert r.status_code == 201, r.text
    fingerprint = r.json()["fingerprint"]
    r = c.post("/api/v1/projects/lung/datasets", json={"title": "Chest CT", "files": []})
    assert r.status_code == 201, r.text
    return {"dataset_id": r.json()["id"], "fingerprint": fingerprint}


def config_for(ids: dict[str, str]) -> str:
    """Path parameters that name real things, so operations get past "not found" into their work.
    The token and the user they may revoke or reset are spares, never the ones the run acts as.
    A schema cannot say "a date in the future" or "a parseable crypt4gh key": a request that is
    well-formed but breaks such a rule is answered 422 with the reason, so 422 counts as an answer
    for the positive-data check too."""
    params = "\n".join(f'"path.{name}" = "{value}"' for name, value in ids.items())
    return (f"[parameters]\n{params}\n\n[checks.positive_data_acceptance]\n"
            'expected-statuses = ["2xx", "3xx", 401, 403, 404, 409, 422, 429]\n')


def test_schemathesis_finds_no_server_error_and_nothing_undocumented(app, hub, people, settings, tmp_path):
    admin, spare = people("root", admin=True), people("spare")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="root", ethics_ref="E1",
                                end_date=END)
    token, spare_token = token_for(hub, admin), token_for(hub, admin)
    with serving(app, settings._port) as url:
        ids = seed(url, token)
        r = httpx.post(f"{url}/api/v1/projects/lung/members", json={"user": "spare"}, headers=bearer(token))
        assert r.status_code == 201, r.text
        ids |= {"slug": "lung", "user_id": str(spare.user.id), "prefix": spare_token.split("_")[1]}
        config = tmp_path / "schemathesis.toml"
        config.write_text(config_for(ids))
        cmd = [str(ST), "--config-file", str(config), "run", f"{url}/openapi.json",
               "--checks", "all", "--max-examples", str(EXAMPLES_PER_OPERATION), "--workers", "1",
               "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
               "--seed", str(SEEDS[settings.database_url.split(":")[0]]),
               "--generation-database", "none", "--suppress-health-check", "all", "--no-color",
               "-H", f"Authorization: Bearer {token}"]
        # the hooks add a serializer for STOW-RS's multipart/related bodies (support/st_hooks.py)
        tests = str(Path(__file__).parent)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path, env={
            **os.environ, "SCHEMATHESIS_HOOKS": "support.st_hooks",
            "PYTHONPATH": os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH", "")) if p)})
        still_valid = httpx.get(f"{url}/api/v1/me", headers=bearer(token)).status_code
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert still_valid == 200, "the run revoked its own token: the authenticated operations were not exercised"


# -- security: declared per operation, derived from the routes' dependencies (issue 18, point 11) ----
PUBLIC_OPERATIONS = {
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/api/v1/archive/public-key"),
    ("GET", "/ga4gh/drs/v1/service-info"), ("OPTIONS", "/ga4gh/drs/v1/objects/{object_id}"),
    ("GET", "/.well-known/jwks.json"), ("GET", "/api/v1/catalog"),
    ("GET", "/api/v1/metrics"), ("GET", "/api/v1/metrics.csv"),  # public data-sharing figures (stats)
    # the GA4GH Beacon v2 (aggregate counts of published data only) and the hub's public keys for partners
    *{("GET", f"/ga4gh/beacon/v2{p}") for p in ("", "/info", "/service-info", "/configuration", "/map",
                                                 "/entry_types", "/filtering_terms", "/datasets", "/imaging_studies")},
    ("POST", "/ga4gh/beacon/v2/datasets"), ("POST", "/ga4gh/beacon/v2/imaging_studies"),
    ("GET", "/api/v1/federation/hub"),
}


def _operations(doc: dict) -> dict[tuple[str, str], dict]:
    return {(method.upper(), path): op for path, item in doc["paths"].items() for method, op in item.items()}


def test_every_operation_declares_its_security_and_it_is_what_the_route_checks(app):
    """Generated clients learn how to authenticate: `securitySchemes` (the bearer token with its scopes, the
    page session and its CSRF header) and each operation's `security` with the scope it needs. Every
    operation declares it; only a short list is public; and each secured operation really refuses a
    request without credentials (401), so the document and the dependencies cannot drift apart."""
    from fastapi.testclient import TestClient

    from strongroom.identity.principal import SCOPES

    doc = app.openapi()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http" and schemes["bearerAuth"]["scheme"] == "bearer"
    assert all(f"`{scope}`" in schemes["bearerAuth"]["description"] for scope in SCOPES)
    assert schemes["sessionCookie"] == {**schemes["sessionCookie"], "type": "apiKey", "in": "cookie",
                                        "name": "sr_session"}
    ops = _operations(doc)
    assert all("security" in op for op in ops.values()), [k for k, op in ops.items() if "security" not in op]
    public = {k for k, op in ops.items() if op["security"] == []}
    assert public == PUBLIC_OPERATIONS
    for (method, path), op in ops.items():
        for requirement in op["security"]:
            assert set(requirement) <= set(schemes), (method, path)
            assert all(set(scopes) <= set(SCOPES) for scopes in requirement.values()), (method, path)
    # the scopes are those of the routes' dependencies (DataRead, DataWrite, ProjectsRead, Admin, UploadWrite …)
    assert ops[("GET", "/api/v1/files/{file_id}")]["security"] == [{"bearerAuth": ["data:read"]}]
    assert ops[("POST", "/api/v1/projects/{slug}/datasets")]["security"] == [{"bearerAuth": ["data:write"]}]
    assert ops[("GET", "/api/v1/projects")]["security"] == [{"bearerAuth": ["projects:read"]}]
    assert ops[("GET", "/api/v1/me/passport")]["security"] == [{"bearerAuth": ["access"]}]
    assert ops[("POST", "/ga4gh/drs/v1/objects/{object_id}")]["security"] == [{"bearerAuth": ["data:read"]}]
    assert ops[("PUT", "/api/v1/uploads/{file_id}/parts/{number}")]["security"] == [
        {"bearerAuth": ["data:write"]}, {"sessionCookie": [], "csrfHeader": []}]
    assert {tuple(op["security"][0]["bearerAuth"]) for op in ops.values() if op["security"]} >= {
        ("admin",), ("audit:read",), ("projects:write",)}
    # and what is declared secured is: no credentials, 401 (before anything else is looked at)
    client = TestClient(app)
    for (method, path), op in ops.items():
        if op["security"]:
            url = re.sub(r"\{[^}]+\}", "1", path)
            r = client.request(method, url)
            assert r.status_code == 401, (method, path, r.status_code)
