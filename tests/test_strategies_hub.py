"""A project's strategy on the hub: versions over the API and the page, who may do what, checking a
sample with the project's own key, and `strongroom strategy apply --project` on the hub host."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import polars as pl
import pytest
from fastapi.testclient import TestClient

from conftest import bearer, token_for, web_client
from helpers import form_post
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.imaging.deid import Pseudonymizer
from strongroom.imaging.keystore import project_secret
from strongroom.projects import service as projects
from strongroom.projects.models import Project
from strongroom.strategies.spec import EXAMPLE

END = dt.date.today() + dt.timedelta(days=365)
STRATEGY = '''name = "Lab values"
person = "pin"
[columns.pin]
action = "pseudonymize"
[columns.age]
action = "stratify"
width = 5
[columns.value]
action = "keep"
'''


@pytest.fixture
def world(app, hub, people):
    """Project A: PI alice, steward sam, member carol. Project B: PI bob."""
    alice, bob, carol, sam = people("alice"), people("bob"), people("carol"), people("sam")
    with transaction(hub.sessions) as s:
        for slug, pi in (("proj-a", "alice"), ("proj-b", "bob")):
            projects.create_project(s, Actor.system("t"), slug=slug, name=slug.upper(), pi=pi, ethics_ref="E",
                                    end_date=END)
    tokens = {p.username: token_for(hub, p) for p in (alice, bob, carol, sam)}
    api = TestClient(app, base_url="http://127.0.0.1:8000")
    for user, role in (("carol", "member"), ("sam", "steward")):
        r = api.post("/api/v1/projects/proj-a/members", json={"user": user, "role": role},
                     headers=bearer(tokens["alice"]))
        assert r.status_code == 201, r.text
    return {"api": api, "tokens": tokens, "alice": alice, "carol": carol, "sam": sam, "bob": bob}


def put(world, who: str, text: str, slug: str = "proj-a", comment: str = ""):
    return world["api"].put(f"/api/v1/projects/{slug}/strategy", json={"text": text, "comment": comment},
                            headers=bearer(world["tokens"][who]))


def test_versions_over_the_api_and_who_may_save(world) -> None:
    api, tokens = world["api"], world["tokens"]
    assert api.get("/api/v1/projects/proj-a/strategy", headers=bearer(tokens["sam"])).status_code == 404
    first = put(world, "sam", STRATEGY, comment="first cut")
    assert first.status_code == 201 and first.json()["version"] == 1 and first.json()["name"] == "Lab values"
    assert put(world, "sam", STRATEGY).status_code == 200  # the same text again: no new version
    second = put(world, "alice", STRATEGY.replace("width = 5", "width = 10"))
    assert second.status_code == 201 and second.json()["version"] == 2
    versions = api.get("/api/v1/projects/proj-a/strategy/versions", headers=bearer(tokens["carol"])).json()
    assert [v["version"] for v in versions] == [2, 1] and versions[1]["comment"] == "first cut"
    assert api.get("/api/v1/projects/proj-a/strategy/versions/1",
                   headers=bearer(tokens["carol"])).json()["text"] == STRATEGY
    assert api.get("/api/v1/projects/proj-a/strategy/versions/9", headers=bearer(tokens["carol"])).status_code == 404
    # a member without the import right reads but may not save; outside the project it is 404
    assert put(world, "carol", STRATEGY + "\n").status_code == 403
    for method in ("get", "put"):
        r = (api.get("/api/v1/projects/proj-a/strategy", headers=bearer(tokens["bob"])) if method == "get"
             else put(world, "bob", STRATEGY))
        assert r.status_code == 404, (method, r.text)
    invalid = put(world, "sam", STRATEGY.replace('"stratify"', '"blur"'))
    assert invalid.status_code == 422 and invalid.json()["problems"][0]["where"].startswith("columns.age")


def test_check_endpoint_validates_without_saving(world) -> None:
    api, token = world["api"], world["tokens"]["carol"]
    ok = api.post("/api/v1/strategies/check", json={"text": EXAMPLE.read_text()}, headers=bearer(token)).json()
    assert ok["valid"] and "pin" not in ok["output_columns"] and "age" in ok["output_columns"]
    bad = api.post("/api/v1/strategies/check", json={"text": 'name = "x"\n[columns.a]\naction = "stratify"\n'},
                   headers=bearer(token)).json()
    assert not bad["valid"] and "width or edges" in bad["problems"][0]["problem"]


def test_the_page_saves_keeps_typed_text_on_errors_and_checks_a_sample(app, hub, world) -> None:
    web = web_client(app, hub, world["sam"])
    page = web.get("/projects/proj-a/strategy")
    assert page.status_code == 200 and "Project X pseudonymization strategy" in page.text  # the example to start from
    broken = STRATEGY.replace("width = 5", "")
    r = form_post(web, "/projects/proj-a/strategy", {"text": broken, "comment": "oops"})
    assert r.status_code == 422 and "Not saved" in r.text and "width or edges" in r.text
    assert "Lab values" in r.text and 'value="oops"' in r.text  # what was typed is still there
    r = form_post(web, "/projects/proj-a/strategy", {"text": STRATEGY, "comment": "first"})
    assert r.status_code == 303 and r.headers["location"] == "/projects/proj-a/strategy"
    assert "Saved as version 1." in web.get(r.headers["location"]).text
    again = form_post(web, "/projects/proj-a/strategy", {"text": STRATEGY})
    assert "No change: version 1" in web.get(again.headers["location"]).text

    sample = b"pin;age;value\n19121212-1212;41;3,5\n20080808-0008;7;4,0\n"
    r = form_post(web, "/projects/proj-a/strategy/check", files={"sample": ("lab.csv", sample, "text/csv")})
    assert r.status_code == 200 and "The sample passed" in r.text and "41-45" in r.text
    # the pseudonym is the project's own: the one its DICOM de-identification gives the same PatientID
    with transaction(hub.sessions) as s:
        project = s.query(Project).filter_by(slug="proj-a").one()
        pseudo = Pseudonymizer(project_secret(s, hub.settings, project.id))
        expected = pseudo.patient_pseudonym(pseudo.patient_key("19121212-1212"))
    assert expected in r.text and "19121212-1212" not in r.text
    wrong = form_post(web, "/projects/proj-a/strategy/check", files={"sample": ("scan.pdf", b"%PDF", "x/y")})
    assert wrong.status_code == 422 and "upload a table" in wrong.text
    # carol reads the strategy but gets no editor; bob, outside, gets 404
    assert "Save as a new version" not in web_client(app, hub, world["carol"]).get("/projects/proj-a/strategy").text
    assert web_client(app, hub, world["bob"]).get("/projects/proj-a/strategy").status_code == 404


def test_cli_applies_with_the_project_key_on_the_hub_host(settings, hub, world, tmp_path) -> None:
    extract = tmp_path / "lab.csv"
    extract.write_text("pin,age,value\n19121212-1212,41,3.5\n20080808-0008,7,4.0\n")
    strategy = tmp_path / "s.toml"
    strategy.write_text(STRATEGY)
    env = {**os.environ, "STRONGROOM_DATABASE_URL": settings.effective_database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(),
           "STRONGROOM_VAR_DIR": str(settings.var_dir), "COLUMNS": "200"}
    run = subprocess.run([sys.executable, "-m", "strongroom.cli", "strategy", "apply", "-s", str(strategy), "-i",
                          str(extract), "-o", str(tmp_path / "out.parquet"), "--project", "proj-a"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    with transaction(hub.sessions) as s:
        project = s.query(Project).filter_by(slug="proj-a").one()
        pseudo = Pseudonymizer(project_secret(s, hub.settings, project.id))
        expected = pseudo.patient_pseudonym(pseudo.patient_key("19121212-1212"))
    assert pl.read_parquet(tmp_path / "out.parquet").get_column("pin").to_list()[0] == expected
    events = world["api"].get("/api/v1/projects/proj-a/audit", headers=bearer(world["tokens"]["alice"])).json()
    assert any(e["action"] == "strategy.applied" for e in json.loads(json.dumps(events)))
    missing = subprocess.run([sys.executable, "-m", "strongroom.cli", "strategy", "apply", "-s", str(strategy), "-i",
                              str(extract), "-o", str(tmp_path / "o.parquet"), "--project", "nope"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no project 'nope'" in missing.stderr


def test_a_browser_textarea_and_the_api_save_the_same_text_alike(app, hub, world) -> None:
    assert put(world, "sam", STRATEGY).status_code == 201
    web = web_client(app, hub, world["sam"])
    r = form_post(web, "/projects/proj-a/strategy", {"text": STRATEGY.replace("\n", "\r\n") + "\r\n"})
    assert "No change: version 1" in web.get(r.headers["location"]).text
