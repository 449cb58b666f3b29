"""The OpenAPI document tells the truth: schemathesis, with every check, against a live hub.

A seeded hub (an admin with MFA and an all-scopes token, a project, a dataset, a user key, a file
named with non-ASCII characters) is served on a loopback port, on SQLite and on PostgreSQL, and
`st run` sends generated valid and invalid requests to every operation. It must find no server
error and no status, content type or header that the document does not declare.
"""

from __future__ import annotations

import datetime as dt
import os
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
EXAMPLES_PER_OPERATION = 20
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
               "--phases", "examples,coverage,fuzzing", "--request-timeout", "30", "--seed", "1",
               "--generation-database", "none", "--suppress-health-check", "all", "--no-color",
               "-H", f"Authorization: Bearer {token}"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path,
                                env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
        still_valid = httpx.get(f"{url}/api/v1/me", headers=bearer(token)).status_code
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert still_valid == 200, "the run revoked its own token: the authenticated operations were not exercised"
