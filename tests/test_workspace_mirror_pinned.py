"""A project's settings never name an address the hub's own machine or network opens toward: the workspace's
package mirror is picked by name from the operator's ``[workspaces.package_mirrors.<name>]`` (each serving the
projects it lists), and a project-entered C-MOVE destination may not be loopback, link-local, unspecified,
multicast or inside the workspaces' subnet."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from conftest import bearer, token_for
from imaging_support import make_project
from strongroom.config import Settings, WorkspaceSettings
from strongroom.db import transaction
from strongroom.projects import service as projects
from strongroom.projects.models import ProjectSetting
from strongroom.workspaces import netns
from strongroom.workspaces import service as ws_service

SITE = "http://10.0.0.5:3141/root/pypi/+simple/"
INTERNAL = ("http://169.254.169.254/latest/meta-data/", "http://10.213.0.1:5432/", "http://127.0.0.1:6379/",
            "http://[::1]:8333/", "http://localhost:6379/", "http://0.0.0.0:80/", "http://224.0.0.1/",
            "http://[::ffff:127.0.0.1]:5432/", "http://[fe80::1]:80/")


@pytest.fixture
def settings(database_url: str, tmp_path) -> Settings:
    return Settings(var_dir=tmp_path / "var", database_url=database_url, secret_key="test-secret-" + "x" * 32,
                    log_json=True, jobs={"embedded": False},
                    security={"cookie_secure": False, "login_attempts_per_window": 5},
                    workspaces={"package_mirrors": {"site": {"url": SITE, "projects": ["lung"]},
                                                    "theirs": {"url": "https://pypi.theirs.example/simple",
                                                               "projects": ["heart"]},
                                                    "unbound": {"url": "https://pypi.unbound.example/simple"}}})


def _rules(hub, slug: str) -> tuple[list[tuple[str, int]], str]:
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(projects.Project.id).where(projects.Project.slug == slug))
        allowed = ws_service.allowed_destinations(s, hub.settings, pid)
    plan = netns.plan_for(0, hub.settings.workspaces.subnet, hub_port=8000, allowed=allowed)
    return allowed, netns.nft_rules(plan)


def _save_raw(hub, slug: str, value: str) -> None:
    """A value saved by an older hub (the setting held a URL then), as its row stands in the database."""
    with transaction(hub.sessions) as s:
        project = s.scalar(select(projects.Project).where(projects.Project.slug == slug))
        row = s.get(ProjectSetting, (project.id, ws_service.ws_settings.KEY))
        if row is None:
            s.add(ProjectSetting(project_id=project.id, key=ws_service.ws_settings.KEY, value=value,
                                 changed_by=project.pi_id))
        else:
            row.value = value


def test_operator_mirrors_refuse_the_hub_machine_and_its_internals() -> None:
    for url in INTERNAL:
        with pytest.raises(ValidationError, match="package_mirrors.m"):
            WorkspaceSettings(package_mirrors={"m": {"url": url, "projects": ["lung"]}})
    # the workspaces' own subnet, wherever the operator put it
    with pytest.raises(ValidationError, match="subnet"):
        WorkspaceSettings(subnet="10.99.0.0/16", package_mirrors={"m": {"url": "http://10.99.3.1:3141/"}})
    for bad in ("ftp://x/simple", "https://user:pw@x/simple", "https://x/simple?a=1", "http://x:99999/"):
        with pytest.raises(ValidationError):
            WorkspaceSettings(package_mirrors={"m": {"url": bad}})
    ok = WorkspaceSettings(package_mirrors={"m": {"url": "https://pypi-mirror.example/simple", "projects": ["a"]},
                                            "n": {"url": SITE}})
    assert ok.package_mirrors["m"].url == "https://pypi-mirror.example/simple/"
    assert ok.package_mirrors["n"].projects == [] and not ok.package_mirrors["n"].serves("a")


def test_a_project_names_a_mirror_and_never_an_address(client, hub, people) -> None:
    alice = people("alice")
    people("bob")
    make_project(hub, "lung", "alice")
    make_project(hub, "heart", "bob")
    tok = bearer(token_for(hub, alice))
    url = "/api/v1/projects/lung/settings/workspace_package_mirror"
    for address in (*INTERNAL, SITE, "https://pypi.org/simple"):
        r = client.put(url, headers=tok, json={"value": address})
        assert r.status_code == 422, (address, r.text)
        assert _rules(hub, "lung")[0] == []
    r = client.put(url, headers=tok, json={"value": "site"})
    assert r.status_code == 200 and r.json()["value"] == "site", r.text
    allowed, rules = _rules(hub, "lung")
    assert allowed == [("10.0.0.5", 3141)] and "ip daddr 10.0.0.5 tcp dport 3141 accept" in rules
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(projects.Project.id).where(projects.Project.slug == "lung"))
        assert ws_service.mirror_url(s, hub.settings, pid) == SITE
    # another project's mirror, one serving nobody, one that does not exist: accepted as names, open nothing
    for name in ("theirs", "unbound", "nowhere"):
        r = client.put(url, headers=tok, json={"value": name})
        assert r.status_code == 200, r.text
        allowed, rules = _rules(hub, "lung")
        assert allowed == [] and "tcp dport 3141" not in rules
        with transaction(hub.sessions) as s:
            assert ws_service.mirror_url(s, hub.settings, pid) == ""
    assert client.put(url, headers=tok, json={"value": ""}).status_code == 200
    assert _rules(hub, "lung")[0] == []


def test_a_saved_url_opens_only_the_operator_mirror_with_that_url(hub, people) -> None:
    people("alice")
    people("bob")
    make_project(hub, "lung", "alice")
    make_project(hub, "heart", "bob")
    for saved in INTERNAL:
        _save_raw(hub, "lung", saved)
        allowed, rules = _rules(hub, "lung")
        assert allowed == [], saved
        assert "10.213.0.1 tcp dport 5432" not in rules and "169.254.169.254" not in rules
    _save_raw(hub, "lung", SITE.rstrip("/"))  # the configured mirror's URL, as the PI once typed it
    assert _rules(hub, "lung")[0] == [("10.0.0.5", 3141)]
    _save_raw(hub, "heart", SITE)  # the same URL, but the mirror does not serve heart
    assert _rules(hub, "heart")[0] == []


def test_project_entered_move_destinations_refuse_the_hub_and_its_internals(client, hub, people,
                                                                            monkeypatch) -> None:
    from strongroom.dicomweb.settings import KEY, check_entries

    # the registration dicomweb/__init__.py makes (add_setting_check("dicom_move_destinations", check_entries))
    monkeypatch.setitem(projects.SETTING_CHECKS, KEY, check_entries)
    alice = people("alice")
    make_project(hub, "lung", "alice")
    tok = bearer(token_for(hub, alice))
    url = "/api/v1/projects/lung/settings/dicom_move_destinations"
    entry = {"ae_title": "WS1_STORE", "host": "10.0.0.5", "port": 11112}
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost", "169.254.169.254", "fe80::1", "0.0.0.0", "::",
                 "10.213.0.1", "10.213.7.2", "224.0.0.251", "::ffff:127.0.0.1"):
        r = client.put(url, headers=tok, json={"value": [entry | {"host": host}]})
        assert r.status_code == 422, (host, r.text)
    r = client.put(url, headers=tok, json={"value": [entry]})
    assert r.status_code == 200 and r.json()["value"] == [entry], r.text
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(projects.Project.id).where(projects.Project.slug == "lung"))
        assert projects.get_setting(s, pid, KEY) == [entry]
