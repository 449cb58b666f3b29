"""Strategy runs on extracts in the project's archive: an extract uploaded through the real (client-side
encrypted, resumable) upload path and ingested, a run started over the API and done by the job runner;
passed → a draft dataset holding the verified output and the report, encrypted to the hub key; failed → the
report on the run only, nothing archived; who may do what."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tempfile

import polars as pl
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from conftest import bearer, token_for, web_client
from helpers import form_post
from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key, hub_keys
from strongroom.archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.imaging.deid import Pseudonymizer
from strongroom.imaging.keystore import project_secret
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from strongroom.projects.models import Project
from strongroom.strategies import engine, runs_cli, synthetic
from strongroom.strategies.spec import load_strategy
from strongroom.strategies.tables import read_table
from support.live import free_port, serving

END = dt.date.today() + dt.timedelta(days=365)
STRATEGY = '''name = "Lab extract"
person = "pin"
unlisted = "delete"
[columns.pin]
action = "pseudonymize"
[columns.patient_name]
action = "delete"
[columns.age]
action = "stratify"
width = 10
[columns.request_date]
action = "generalize"
to = "year"
[columns.diagnosis]
action = "keep"
[columns.anatomical_site]
action = "keep"
[columns.sex]
action = "keep"
[[group_rules]]
columns = ["diagnosis", "anatomical_site", "request_date"]
min_rows = 11
on_violation = "suppress"
[identifier_scan]
names_from = ["patient_name"]
'''
STRICT = STRATEGY.replace('on_violation = "suppress"', 'on_violation = "fail"')


@pytest.fixture
def world(app, hub, people, tmp_path, monkeypatch):
    """Project A: PI alice, steward sam, member carol. Project B: PI bob. Runs decrypt into a temp dir
    of this test's own, so the test can see that nothing is left there."""
    run_tmp = tmp_path / "tmp"
    run_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(run_tmp))
    ensure_key(hub)  # what `strongroom serve` does at start-up
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
    return {"api": api, "tokens": tokens, "hub": hub, "app": app, "sam": sam, "carol": carol, "bob": bob,
            "tmp": run_tmp}


def _h(world, who: str) -> dict[str, str]:
    return bearer(world["tokens"][who])


def _drain(hub) -> None:
    Runner(hub, lease_seconds=30, name="test").run_until_idle()


def upload(world, data: bytes, name: str, *, slug: str = "proj-a", who: str = "sam") -> str:
    """Through the CLI's upload API: encrypted to the hub key on the client, sent in parts, ingested."""
    api, headers = world["api"], _h(world, who)
    hub_public = c4gh.parse_public_key(api.get("/api/v1/archive/public-key", headers=headers).text)
    blob = b"".join(c4gh.encrypt_stream([data], hub_public))
    up = api.post(f"/api/v1/projects/{slug}/uploads", headers=headers,
                  json={"path": name, "size": len(blob), "sha256": hashlib.sha256(data).hexdigest()})
    assert up.status_code == 201, up.text
    up = up.json()
    for number, start in enumerate(range(0, len(blob), up["part_size"]), start=1):
        r = api.put(f"/api/v1/uploads/{up['id']}/parts/{number}", headers=headers,
                    content=blob[start:start + up["part_size"]])
        assert r.status_code == 200, r.text
    assert api.post(f"/api/v1/uploads/{up['id']}/complete", headers=headers).status_code == 200
    _drain(world["hub"])
    with world["hub"].sessions() as s:
        assert s.get(ArchiveFile, up["id"]).state == "ready"
    return up["id"]


def decrypted(hub, file_id: str) -> bytes:
    """An archived file's plaintext, as the hub itself would read it."""
    with hub.sessions() as s:
        f = s.get(ArchiveFile, file_id)
        opened = c4gh.open_header(f.header, hub_keys(hub, s).secrets)
        body_key = f.body_key
    with storage_for(hub).open_reader(body_key) as reader:
        return b"".join(c4gh.decrypt_segments(reader, opened.session_keys))


def save(world, text: str) -> int:
    r = world["api"].put("/api/v1/projects/proj-a/strategy", json={"text": text}, headers=_h(world, "sam"))
    assert r.status_code in (200, 201), r.text
    return r.json()["version"]


def start(world, file_id: str, version: int | None = None, who: str = "sam", slug: str = "proj-a"):
    body = {"file_id": file_id} | ({"version": version} if version is not None else {})
    return world["api"].post(f"/api/v1/projects/{slug}/strategy/runs", json=body, headers=_h(world, who))


def counts(hub) -> tuple[int, int]:
    with hub.sessions() as s:
        return s.scalar(select(func.count()).select_from(ArchiveFile)), s.scalar(select(func.count())
                                                                              .select_from(Dataset))


def test_a_passing_run_archives_the_verified_output_and_report_as_a_draft_dataset(world, tmp_path) -> None:
    hub, api = world["hub"], world["api"]
    frame = synthetic.extract(3000)
    csv = tmp_path / "lab.csv"
    frame.write_csv(csv)
    file_id = upload(world, csv.read_bytes(), "extracts/lab.csv")
    version = save(world, STRATEGY)
    r = start(world, file_id)
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["state"] == "queued" and run["version"] == version and run["input_path"] == "extracts/lab.csv"
    _drain(hub)
    run = api.get(f"/api/v1/projects/proj-a/strategy/runs/{run['id']}", headers=_h(world, "sam")).json()
    assert run["state"] == "passed", run
    assert run["rows_in"] == 3000 and run["rows_out"] == run["report"]["rows_out"] and run["report"]["passed"]
    assert run["report"]["run"]["strategy_version"] == version and run["error"] is None

    # a draft dataset with exactly the two files, marked with the strategy and the run
    with hub.sessions() as s:
        ds = s.get(Dataset, run["dataset_id"])
        v = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id))
        in_version = set(s.scalars(select(DatasetFile.file_id).where(DatasetFile.version_id == v.id)))
        project_id = s.scalar(select(Project.id).where(Project.slug == "proj-a"))
        secret = project_secret(s, hub.settings, project_id)
        out_row = s.get(ArchiveFile, run["output_file_id"])
        assert out_row.state == "ready" and out_row.hold is None and out_row.project_id == project_id
    assert v.state == "draft" and v.number == 1
    assert in_version == {run["output_file_id"], run["report_file_id"]}
    strategy_sha = hashlib.sha256(STRATEGY.encode()).hexdigest()
    for mark in ("Lab extract", f"version {version}", strategy_sha, run["id"], file_id):
        assert mark in ds.description, mark

    # the archived output is what the engine makes of the extract with the project's key, and passes verify
    output = pl.read_parquet(io.BytesIO(decrypted(hub, run["output_file_id"])))
    expected = engine.apply(read_table(csv), load_strategy(STRATEGY), secret)
    assert output.equals(expected.output)
    assert engine.verify(output, load_strategy(STRATEGY)).passed
    # table pseudonyms are the project's DICOM pseudonyms; no personnummer survives
    pseudonymizer = Pseudonymizer(secret)
    assert set(output.get_column("pin")) == {pseudonymizer.patient_pseudonym(pseudonymizer.patient_key(p))
                                             for p in frame.get_column("pin")}
    assert "patient_name" not in output.columns and not set(output.get_column("pin")) & set(frame.get_column("pin"))
    # the archived report is the run's report
    assert json.loads(decrypted(hub, run["report_file_id"])) == run["report"]
    assert list(world["tmp"].iterdir()) == []  # the decrypted extract and the output are gone

    listed = api.get("/api/v1/projects/proj-a/strategy/runs", headers=_h(world, "carol")).json()
    assert [x["id"] for x in listed] == [run["id"]] and listed[0]["report"] is None
    _drain(hub)  # running the queue again changes nothing
    assert counts(hub) == (3, 1)
    events = api.get("/api/v1/projects/proj-a/audit", headers=_h(world, "sam")).json()
    actions = [e["action"] for e in events]
    assert "strategy.run.started" in actions and "strategy.run.passed" in actions


def test_a_failing_run_keeps_only_its_report(world) -> None:
    hub, api = world["hub"], world["api"]
    data = synthetic.extract(3000, rare_groups=True).write_csv().encode()
    file_id = upload(world, data, "rare.csv")
    save(world, STRATEGY)
    strict = save(world, STRICT)
    before = counts(hub)
    run = start(world, file_id, version=strict).json()
    _drain(hub)
    run = api.get(f"/api/v1/projects/proj-a/strategy/runs/{run['id']}", headers=_h(world, "sam")).json()
    assert run["state"] == "failed" and run["version"] == strict
    assert run["output_file_id"] is None and run["report_file_id"] is None and run["dataset_id"] is None
    failed = [c for c in run["report"]["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["each (diagnosis, anatomical_site, request_date) has at least 11 rows"]
    assert failed[0]["groups"] and all(g["diagnosis"] == "Q21.1" and g["count"] < 11 for g in failed[0]["groups"])
    assert counts(hub) == before  # no file, no dataset
    assert list(world["tmp"].iterdir()) == []
    events = api.get("/api/v1/projects/proj-a/audit", headers=_h(world, "sam")).json()
    failed_event = next(e for e in events if e["action"] == "strategy.run.failed")
    assert failed_event["outcome"] == "failed" and "Q21.1" not in json.dumps(failed_event)

    # a strategy that does not fit the extract: state error, with the reason, nothing archived
    wrong = save(world, STRATEGY.replace("[columns.sex]", "[columns.height]"))
    run = start(world, file_id, version=wrong).json()
    _drain(hub)
    run = api.get(f"/api/v1/projects/proj-a/strategy/runs/{run['id']}", headers=_h(world, "sam")).json()
    assert run["state"] == "error" and "height" in run["error"] and counts(hub) == before


def test_who_may_start_runs_and_on_which_files(world) -> None:
    file_id = upload(world, b"pin,age\n19121212-1212,41\n", "small.csv")
    notes = upload(world, b"just notes", "notes.txt.gz")
    other = upload(world, b"pin,age\n19121212-1212,41\n", "b.csv", slug="proj-b", who="bob")
    save(world, STRATEGY)
    assert start(world, file_id, who="bob").status_code == 404  # outside the project
    assert world["api"].get("/api/v1/projects/proj-a/strategy/runs", headers=_h(world, "bob")).status_code == 404
    assert start(world, file_id, who="carol").status_code == 403  # a member without the import right
    for bad, why in ((other, "no file"), ("SRF-NOPE", "no file"), (notes, "not a table")):
        r = start(world, bad)
        assert r.status_code == 422 and why in r.json()["detail"], r.text
    with transaction(world["hub"].sessions) as s:
        s.get(ArchiveFile, file_id).hold = "quarantine"
    r = start(world, file_id)
    assert r.status_code == 422 and "held" in r.json()["detail"]
    assert start(world, file_id, version=9, who="alice").status_code == 404
    assert world["api"].get("/api/v1/projects/proj-a/strategy/runs", headers=_h(world, "alice")).json() == []


def test_the_page_starts_a_run_and_shows_its_report(world, tmp_path) -> None:
    hub = world["hub"]
    file_id = upload(world, synthetic.extract(3000).write_csv().encode(), "lab.csv")
    save(world, STRATEGY)
    web = web_client(world["app"], hub, world["sam"])
    page = web.get("/projects/proj-a/strategy")
    assert f'value="{file_id}"' in page.text and "Start the run" in page.text
    refused = form_post(web, "/projects/proj-a/strategy/runs", {"file_id": "SRF-NOPE"})
    assert refused.status_code == 422 and "Not started" in refused.text and 'role="alert"' in refused.text
    r = form_post(web, "/projects/proj-a/strategy/runs", {"file_id": file_id, "version": "1"})
    assert r.status_code == 303
    shown = web.get(r.headers["location"])
    assert "Run of version 1 on lab.csv queued" in shown.text and "queued" in shown.text
    _drain(hub)
    page = web.get("/projects/proj-a/strategy")
    link = next(line for line in page.text.splitlines() if "/report.html" in line)
    report_url = link.split('href="')[1].split('"')[0]
    report = web.get(report_url)
    assert report.status_code == 200 and "Passed" in report.text and "/datasets/SRD-" in report.text
    assert "3000" in report.text  # rows in, from the report
    # carol reads the runs but gets no form; bob, outside, gets 404
    carol = web_client(world["app"], hub, world["carol"])
    assert "Start the run" not in carol.get("/projects/proj-a/strategy").text
    assert carol.get(report_url).status_code == 200
    assert web_client(world["app"], hub, world["bob"]).get(report_url).status_code == 404


def test_the_cli_starts_lists_and_shows_runs_over_the_api(world) -> None:
    file_id = upload(world, synthetic.extract(3000).write_csv().encode(), "lab.csv")
    save(world, STRATEGY)
    cli = CliRunner()
    with serving(world["app"], free_port()) as url:
        env = {"STRONGROOM_URL": url, "STRONGROOM_TOKEN": world["tokens"]["sam"], "COLUMNS": "200"}
        started = cli.invoke(runs_cli.app, ["start", "proj-a", file_id], env=env)
        assert started.exit_code == 0 and "queued" in started.output, started.output
        run_id = started.output.split("run ")[1].split(" ")[0]
        _drain(world["hub"])
        shown = cli.invoke(runs_cli.app, ["show", "proj-a", run_id], env=env)
        assert shown.exit_code == 0 and "passed" in shown.output and "→ dataset SRD-" in shown.output
        assert "✓ no identifier in any cell" in shown.output
        out = cli.invoke(runs_cli.app, ["show", "proj-a", run_id, "--json"], env=env).output
        as_json = json.JSONDecoder().raw_decode(out, out.index('{\n  "id"'))[0]  # the live hub logs here too
        assert as_json["state"] == "passed" and as_json["report"]["rows_in"] == 3000
        listed = cli.invoke(runs_cli.app, ["list", "proj-a"], env=env)
        assert listed.exit_code == 0 and run_id in listed.output
        refused = cli.invoke(runs_cli.app, ["start", "proj-a", file_id],
                             env=env | {"STRONGROOM_TOKEN": world["tokens"]["carol"]})
        assert refused.exit_code == 1 and "import" in refused.output


def test_a_report_naming_dates_is_kept_as_json(world) -> None:
    """Groups over a shifted date name dates: the run's row keeps them as JSON text, like the report file."""
    file_id = upload(world, b"pin,request_date\n19121212-1212,2020-03-01\n20080808-0008,2021-05-02\n", "d.csv")
    version = save(world, 'name = "Dates"\nperson = "pin"\n[columns.pin]\naction = "pseudonymize"\n'
                          '[columns.request_date]\naction = "shift_date"\n[[group_rules]]\n'
                          'columns = ["request_date"]\nmin_rows = 2\non_violation = "fail"\n')
    run = start(world, file_id, version=version).json()
    _drain(world["hub"])
    run = world["api"].get(f"/api/v1/projects/proj-a/strategy/runs/{run['id']}", headers=_h(world, "sam")).json()
    assert run["state"] == "failed", run
    groups = next(c for c in run["report"]["checks"] if not c["passed"])["groups"]
    assert len(groups) == 2 and all(len(g["request_date"]) == 10 for g in groups)
