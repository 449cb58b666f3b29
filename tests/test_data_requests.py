"""Data requests follow the eight steps (issue 20 §2), and nothing unverified is published.

End to end over HTTP (and the CLI): a researcher's application carries its selection and parameters into the
owning project's data request; the steward runs the seed strategy (strategies/examples/project-x.toml) on a
generated extract uploaded into the project; the passing run's draft dataset is attached; the terms are agreed
through the application flow; the release gives the applicant exactly that version, marked with the strategy
and the run. A failing run blocks the release; a table no passing run made is refused by every way to release.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import token_for, web_client
from helpers import form_post
from strongroom.access.models import Entitlement
from strongroom.archive import service as archive
from strongroom.archive.cli import app as archive_cli
from strongroom.archive.models import Dataset, DatasetVersion
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction
from strongroom.errors import Conflict
from strongroom.projects.models import Project
from strongroom.strategies import requests_cli, synthetic
from support.live import free_port, serving
from test_strategy_runs import (
    _drain,
    _h,
    upload,
    world,  # noqa: F401 - the fixture: project A (PI alice, steward sam, member carol), project B
)

SEED = (Path(__file__).parents[1] / "src/strongroom/strategies/examples/project-x.toml").read_text()
STRICT = SEED.replace('on_violation = "suppress"', 'on_violation = "fail"', 1)
ANSWERS = {"study_name": "Breast cancer imaging cohort", "ethics": {"number": "Dnr 2026-04321-01"},
           "description": "Age band, year of request, diagnosis and site",
           "selection": "Women 40-74 with C50, 2016-2023",
           "variables": "age\nrequest_date\ndiagnosis\nanatomical_site", "period_start": "2016-01-01",
           "period_end": "2023-12-31", "pseudonymization": "Anonymized (no link back)",
           "sharing_plan": "Only the named team", "contact": "rita@uni.example"}


@pytest.fixture
def applicant(world, people):  # noqa: F811
    """rita, outside the project, and a catalogue dataset of proj-a she can apply for (alice handles it)."""
    rita = people("rita")
    world["tokens"]["rita"] = token_for(world["hub"], rita)
    with transaction(world["hub"].sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == "proj-a"))
        s.add(Dataset(id="SRD-CLINICAL", project_id=project.id, title="Clinical registry", created_by=project.pi_id))
        s.flush()
        s.add(DatasetVersion(dataset_id="SRD-CLINICAL", number=1, state="released"))
        s.add(CatalogEntry(dataset_id="SRD-CLINICAL", slug="clinical", title="Clinical registry",
                           created_by=project.pi_id, published=True, published_at=dt.datetime.now(dt.UTC)))
    return rita


def _apply(w) -> str:
    api, h = w["api"], _h(w, "rita")
    app = api.post("/api/v1/datasets/SRD-CLINICAL/applications", headers=h).json()
    r = api.put(f"/api/v1/applications/{app['id']}/answers", json={"answers": ANSWERS}, headers=h)
    assert r.status_code == 200, r.text
    api.post(f"/api/v1/applications/{app['id']}/accept-terms", headers=h)
    assert api.post(f"/api/v1/applications/{app['id']}/submit", headers=h).json()["state"] == "submitted"
    return app["id"]


def _save(w, text: str) -> int:
    r = w["api"].put("/api/v1/projects/proj-a/strategy", json={"text": text}, headers=_h(w, "sam"))
    assert r.status_code in (200, 201), r.text
    return r.json()["version"]


def _steps(request: dict) -> dict[str, str]:
    return {s["name"]: s["state"] for s in request["steps"]}


def test_a_request_carries_the_selection_from_the_application_to_the_released_version(
        world, applicant) -> None:  # noqa: F811
    api, hub = world["api"], world["hub"]
    app_id = _apply(world)
    version = _save(world, SEED)
    sam = web_client(world["app"], hub, world["sam"])
    assert app_id in sam.get("/projects/proj-a/requests").text  # waiting for a data request

    # step 2: the selection and parameters come from the application; the strategy version is named
    r = api.post("/api/v1/projects/proj-a/requests", json={"application": app_id, "strategy_version": version},
                 headers=_h(world, "sam"))
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["title"] == "Breast cancer imaging cohort" and "Women 40-74 with C50" in req["selection"]
    assert req["parameters"] == {"variables": ["age", "request_date", "diagnosis", "anatomical_site"],
                                 "period_start": "2016-01-01", "period_end": "2023-12-31"}
    assert _steps(req) == {"comply": "done", "selection": "done", "extract": "todo", "pseudonymize": "waiting",
                           "verify": "waiting", "encrypt": "waiting", "terms": "waiting", "transfer": "waiting"}
    assert "Dnr 2026-04321-01" in req["steps"][0]["evidence"] and req["strategy_sha256"] in req["steps"][1]["evidence"]
    assert api.post("/api/v1/projects/proj-a/requests", json={"application": app_id},
                    headers=_h(world, "sam")).status_code == 409  # one open request per application
    # outside the project a request does not exist; a member without the import right cannot open one
    assert api.get(f"/api/v1/projects/proj-a/requests/{req['id']}", headers=_h(world, "rita")).status_code == 404
    assert api.post("/api/v1/projects/proj-a/requests", json={"title": "t", "selection": "s"},
                    headers=_h(world, "carol")).status_code == 403

    # steps 3-6: the extract uploaded into the project, the named version run on it, verified, archived
    file_id = upload(world, synthetic.extract(20_000).write_csv().encode(), "extracts/lis-pacs.csv")
    run = api.post(f"/api/v1/projects/proj-a/requests/{req['id']}/runs", json={"file_id": file_id},
                   headers=_h(world, "sam"))
    assert run.status_code == 202 and run.json()["version"] == version, run.text
    _drain(hub)
    req = api.get(f"/api/v1/projects/proj-a/requests/{req['id']}", headers=_h(world, "sam")).json()
    assert req["dataset_id"] and req["dataset_version"] == 1
    assert _steps(req)["verify"] == "done" and _steps(req)["encrypt"] == "done" and _steps(req)["terms"] == "todo"
    verify = next(s for s in req["steps"] if s["name"] == "verify")
    assert verify["href"] == f"/projects/proj-a/strategy/runs/{req['run_id']}/report.html"

    # step 7 comes first: no release before the application's handlers agree the terms
    r = api.post(f"/api/v1/projects/proj-a/requests/{req['id']}/release", headers=_h(world, "sam"))
    assert r.status_code == 409 and "terms are not agreed" in r.json()["detail"]
    ends = (dt.date.today() + dt.timedelta(days=120)).isoformat()
    assert api.post(f"/api/v1/applications/{app_id}/approve", json={"ends": ends},
                    headers=_h(world, "alice")).json()["state"] == "approved"

    # step 8: released through the page (flash), and the applicant's access reaches exactly that version
    page = form_post(sam, f"/projects/proj-a/requests/{req['id']}/release", {})
    assert page.status_code == 303
    assert f"Released version 1 of dataset {req['dataset_id']}" in sam.get(page.headers["location"]).text
    req = api.get(f"/api/v1/projects/proj-a/requests/{req['id']}", headers=_h(world, "sam")).json()
    assert req["state"] == "released" and set(_steps(req).values()) == {"done"}
    with hub.sessions() as s:
        ent = s.scalar(select(Entitlement).where(Entitlement.dataset_id == req["dataset_id"]))
        assert ent.user_id == applicant.user.id and ent.version == 1 and ent.application_id == app_id
        assert ent.ends_at.date().isoformat() == ends
    seen = api.get(f"/api/v1/datasets/{req['dataset_id']}", headers=_h(world, "rita")).json()
    made_with = seen["versions"][0]["made_with"]
    assert [m["run"] for m in made_with] == [str(req["run_id"])]
    assert made_with[0]["strategy"] == "Project X pseudonymization strategy" and made_with[0]["strategy_version"] == "1"
    assert made_with[0]["strategy_sha256"] == req["strategy_sha256"]
    files = api.get(f"/api/v1/datasets/{req['dataset_id']}/versions/1/files", headers=_h(world, "rita")).json()
    assert {f["path"].rsplit(".", 1)[-1] for f in files["files"]} == {"parquet", "json"}

    # the pages: the applicant's application shows the selection and the steps; the owners' dataset page the
    # strategy and the report, which opens for the steward
    rita_page = web_client(world["app"], hub, applicant).get(f"/applications/{app_id}").text
    assert "Women 40-74 with C50" in rita_page and 'data-step="transfer"' in rita_page
    ds_page = sam.get(f"/datasets/{req['dataset_id']}").text
    assert "made with strategy Project X pseudonymization strategy v1" in ds_page
    assert f'href="/projects/proj-a/strategy/runs/{req["run_id"]}/report.html">verification report' in ds_page
    assert sam.get(f"/projects/proj-a/strategy/runs/{req['run_id']}/report.html").status_code == 200
    assert "verification report" in sam.get(f"/projects/proj-a/requests/{req['id']}").text
    actions = [e["action"] for e in api.get("/api/v1/projects/proj-a/audit", headers=_h(world, "sam")).json()]
    assert {"data_request.created", "data_request.run_started", "data_request.released"} <= set(actions)
    # published in the catalogue, its public landing page says what made it (not the report: members only)
    with transaction(hub.sessions) as s:
        s.add(CatalogEntry(dataset_id=req["dataset_id"], slug="breast-release", title="Breast release",
                           created_by=world["sam"].user.id, published=True, published_at=dt.datetime.now(dt.UTC)))
    landing = world["api"].get("/catalog/breast-release").text
    assert "made with strategy Project X pseudonymization strategy v1" in landing and "report.html" not in landing


def test_a_failing_run_blocks_the_release(world) -> None:  # noqa: F811
    api, hub = world["api"], world["hub"]
    _save(world, STRICT)
    r = api.post("/api/v1/projects/proj-a/requests",
                 json={"title": "Own cohort", "selection": "All 2016-2023", "parameters": {"variables": ["age"]}},
                 headers=_h(world, "sam"))
    assert r.status_code == 201, r.text
    req = r.json()
    assert _steps(req)["comply"] == "done" and _steps(req)["terms"] == "done"  # the project's own terms
    file_id = upload(world, synthetic.extract(20_000, rare_groups=True).write_csv().encode(), "rare.csv")
    api.post(f"/api/v1/projects/proj-a/requests/{req['id']}/runs", json={"file_id": file_id}, headers=_h(world, "sam"))
    _drain(hub)
    req = api.get(f"/api/v1/projects/proj-a/requests/{req['id']}", headers=_h(world, "sam")).json()
    steps = _steps(req)
    assert steps["pseudonymize"] == "done" and steps["verify"] == "failed"
    assert steps["encrypt"] == steps["transfer"] == "waiting" and req["dataset_id"] is None
    assert "has at least 11 rows" in next(s for s in req["steps"] if s["name"] == "verify")["evidence"]
    r = api.post(f"/api/v1/projects/proj-a/requests/{req['id']}/release", headers=_h(world, "sam"))
    assert r.status_code == 409 and "a passing run comes first" in r.json()["detail"]

    # the steward's CLI over the API: list, show, open, run, close
    cli = CliRunner()
    with serving(world["app"], free_port()) as url:
        env = {"STRONGROOM_URL": url, "STRONGROOM_TOKEN": world["tokens"]["sam"], "COLUMNS": "200"}
        shown = cli.invoke(requests_cli.app, ["show", "proj-a", req["id"]], env=env)
        assert shown.exit_code == 0 and "✗ verify" in shown.output, shown.output
        listed = cli.invoke(requests_cli.app, ["list", "proj-a"], env=env)
        assert req["id"] in listed.output and "next: verify" in listed.output
        refused = cli.invoke(requests_cli.app, ["release", "proj-a", req["id"]], env=env)
        assert refused.exit_code == 1 and "passing run" in refused.output
        opened = cli.invoke(requests_cli.app, ["open", "proj-a", "--title", "Second", "--variable", "age",
                                               "--period-start", "2016-01-01"], env=env)
        assert opened.exit_code == 1 and "selection" in opened.output  # a request states its selection
        closed = cli.invoke(requests_cli.app, ["close", "proj-a", req["id"], "--reason", "rare groups"], env=env)
        assert closed.exit_code == 0 and "closed" in closed.output


@pytest.mark.parametrize("name", ["raw/lab.csv.gz", "raw/LAB.TSV.XZ", "raw/lab.xls", "raw/lab.sav",
                                  "raw/lab.parquet.zst", "raw/lab.txt.bz2", "raw/lab.jsonl"])
def test_a_table_in_a_form_no_run_writes_is_never_released(world, name: str) -> None:  # noqa: F811
    """Compressing a raw table, or saving it as a spreadsheet or statistics file the hub does not read, is no way
    round "nothing unverified is published": no passing run ever wrote such a file, so its version is refused."""
    api = world["api"]
    raw = upload(world, b"pin,age\n19121212-1212,41\n", name)
    r = api.post("/api/v1/projects/proj-a/datasets", json={"title": "Raw", "files": [raw]}, headers=_h(world, "sam"))
    assert r.status_code == 201, r.text
    r = api.post(f"/api/v1/datasets/{r.json()['id']}/versions/1/release", headers=_h(world, "sam"))
    assert r.status_code == 409 and name in r.json()["detail"], r.text


def test_a_table_no_passing_run_made_is_refused_by_every_way_to_release(world, applicant) -> None:  # noqa: F811
    """The class: release over the API, the page and the CLI, a publish by the hub itself, and what only
    follows a release (a share, the catalogue, an entitlement's read) — a raw table never gets out."""
    api, hub = world["api"], world["hub"]
    assert archive.RELEASE_CHECKS, "the strategies capability registers the release check"
    raw = upload(world, b"pin,age\n19121212-1212,41\n", "raw/lab.csv")
    notes = upload(world, b"just notes", "raw/notes.txt")  # text, not a table: released as before
    r = api.post("/api/v1/projects/proj-a/datasets", json={"title": "Raw", "files": [raw, notes]},
                 headers=_h(world, "sam"))
    assert r.status_code == 201, r.text
    ds = r.json()["id"]

    r = api.post(f"/api/v1/datasets/{ds}/versions/1/release", headers=_h(world, "sam"))
    assert r.status_code == 409 and "raw/lab.csv" in r.json()["detail"] and "Nothing unverified" in r.json()["detail"]
    page = form_post(web_client(world["app"], hub, world["sam"]), f"/datasets/{ds}/versions/1/release", {})
    assert page.status_code == 409 and "not made by a passing strategy run" in page.text
    with serving(world["app"], free_port()) as url:
        env = {"STRONGROOM_URL": url, "STRONGROOM_TOKEN": world["tokens"]["sam"], "COLUMNS": "200"}
        out = CliRunner().invoke(archive_cli, ["datasets", "release", ds, "--version", "1"], env=env)
        assert out.exit_code != 0 and "passing strategy run" in out.output, out.output
    with pytest.raises(Conflict, match="raw/lab.csv"), transaction(hub.sessions) as s:  # and rolled back
        archive.publish_version(s, Actor.system("t"), s.get(Dataset, ds), [raw], note="import")

    # nothing released: no share, no catalogue entry, no read through an entitlement
    assert api.post(f"/api/v1/datasets/{ds}/catalog/publish", headers=_h(world, "alice")).status_code in (404, 422)
    with transaction(hub.sessions) as s:
        s.add(Entitlement(user_id=applicant.user.id, dataset_id=ds, version=None, starts_at=dt.datetime.now(dt.UTC),
                          ends_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=9)))
    assert api.get(f"/api/v1/files/{raw}", headers=_h(world, "rita")).status_code == 404
    with hub.sessions() as s:
        assert s.scalar(select(DatasetVersion.state).where(DatasetVersion.dataset_id == ds)) == "draft"

    # a passing run's output goes out; the raw table beside it does not, until it is taken out
    _save(world, SEED)
    extract = upload(world, synthetic.extract(20_000).write_csv().encode(), "lis.csv")
    api.post("/api/v1/projects/proj-a/strategy/runs", json={"file_id": extract}, headers=_h(world, "sam"))
    _drain(hub)
    run = api.get("/api/v1/projects/proj-a/strategy/runs", headers=_h(world, "sam")).json()[0]
    assert run["state"] == "passed"
    api.post(f"/api/v1/datasets/{ds}/draft", json={"add": [run["output_file_id"]], "remove": []},
             headers=_h(world, "sam"))
    r = api.post(f"/api/v1/datasets/{ds}/versions/1/release", headers=_h(world, "sam"))
    assert r.status_code == 409 and "1 table(s)" in r.json()["detail"]
    api.post(f"/api/v1/datasets/{ds}/draft", json={"add": [], "remove": [raw]}, headers=_h(world, "sam"))
    r = api.post(f"/api/v1/datasets/{ds}/versions/1/release", headers=_h(world, "sam"))
    assert r.status_code == 200 and r.json()["state"] == "released", r.text
    marks = api.get(f"/api/v1/datasets/{ds}", headers=_h(world, "sam")).json()["versions"][0]["made_with"]
    assert [m["run"] for m in marks] == [run["id"]]
    assert api.get(f"/api/v1/files/{run['output_file_id']}", headers=_h(world, "rita")).status_code == 200
