"""The web app's Prometheus `/metrics` is the operator's, not the world's.

Its figures name every route with its status and count (who is being refused where, how busy the hub is), and the
chart's Ingress publishes the web port. So it answers only a bearer token configured for Prometheus
(`[ops] metrics_token`, compared in constant time) and, with none configured, nobody: 404, as for a path that
does not exist. A hub API token, even an administrator's, is not that token.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from conftest import bearer, token_for
from strongroom.app import create_app
from strongroom.config import Settings
from strongroom.hub import Hub
from strongroom.hubsecret import WeakSecret

METRICS_TOKEN = "metrics-test-token-" + "m" * 32


def test_metrics_are_not_served_without_a_configured_token(client, hub, people) -> None:
    """The default: locked. No header, any bearer, an administrator's API token: all 404, the same answer as an
    unknown path gives."""
    admin = token_for(hub, people("root", admin=True))
    client.get("/api/v1/projects/secret-project/files")
    unknown = client.get("/no-such-path")
    for headers in ({}, bearer(admin), bearer(""), bearer("anything-at-all-" + "a" * 32)):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 404, (headers, r.status_code)
        assert r.headers["content-type"] == unknown.headers["content-type"]
        assert "strongroom_http_requests" not in r.text and "secret-project" not in r.text


@pytest.fixture
def scraped_app(settings: Settings):
    return create_app(settings.model_copy(update={"ops": settings.ops.model_copy(update={
        "metrics_token": SecretStr(METRICS_TOKEN)})}), run_jobs=False)


def test_metrics_answer_only_the_configured_bearer_token(scraped_app, people) -> None:
    hub = scraped_app.state.hub
    admin = token_for(hub, people("root", admin=True))
    with TestClient(scraped_app, base_url="http://127.0.0.1:8000") as c:
        c.get("/api/v1/projects")
        for headers in ({}, bearer(admin), bearer(METRICS_TOKEN[:-1]), bearer(METRICS_TOKEN + "x"),
                        {"Authorization": f"Basic {METRICS_TOKEN}"}, {"Authorization": METRICS_TOKEN}):
            assert c.get("/metrics", headers=headers).status_code == 404, headers
        r = c.get("/metrics", headers=bearer(METRICS_TOKEN))
        assert r.status_code == 200
        assert "strongroom_http_requests" in {f.name for f in text_string_to_metric_families(r.text)}
        assert c.get("/metrics", headers={"authorization": f"bearer {METRICS_TOKEN}"}).status_code == 200


@pytest.mark.parametrize("weak", ["change-me", "short-token"])
def test_a_weak_metrics_token_is_refused_at_start(weak, settings: Settings) -> None:
    bad = settings.model_copy(update={"ops": settings.ops.model_copy(update={"metrics_token": SecretStr(weak)})})
    with pytest.raises(WeakSecret) as refused:
        Hub.from_settings(bad)
    assert refused.value.setting == "ops.metrics_token"
