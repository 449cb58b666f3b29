"""What a release may hold, and what the verification always looks for (an audit's findings, as classes).

- A raw table is refused at release whatever its name and form: the release judges every file by its content
  (text by any name, compressed, archived, JSON/XML records, spreadsheets, data files, encrypted), through
  every way to release; what is not a table (prose, images, DICOM, a run's output) goes out.
- A data request gives the applicant exactly what its run verified: a file added to the draft since (by any
  member) or taken out refuses the release.
- A strategy cannot switch the scan for personnummer, e-mail addresses or telephone numbers off; a version
  saved when it could loads, and is scanned for every kind anyway (the run and the airlock's checks).
- The scan finds a personnummer in a column of any type (decimal, integers that lost their leading zero, …).
- A top-coded column holding text fails its check with the count of bad cells, never crashes it.
"""

from __future__ import annotations

import bz2
import codecs
import datetime as dt
import decimal
import gzip
import io
import json
import lzma
import os
import pickle
import sqlite3
import tempfile
import zipfile
from pathlib import Path

import openpyxl
import polars as pl
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import web_client
from helpers import form_post
from imaging_support import write_corpus
from strongroom.archive import service as archive
from strongroom.archive.cli import app as archive_cli
from strongroom.archive.models import Dataset, DatasetVersion
from strongroom.audit.service import Actor
from strongroom.catalog import png
from strongroom.db import transaction
from strongroom.errors import Conflict
from strongroom.identifiers import luhn_ok
from strongroom.imaging import bulk
from strongroom.imaging.models import ImagingProject
from strongroom.imaging.synthetic import make_ct
from strongroom.projects.models import Project
from strongroom.strategies import cli as strategy_cli
from strongroom.strategies import engine, synthetic
from strongroom.strategies import service as strategies
from strongroom.strategies.models import DataRequest, StrategyVersion
from support.live import free_port, serving
from test_data_requests import SEED, _apply, _save, applicant  # noqa: F401 - the fixture
from test_strategy_runs import (
    STRATEGY,
    _drain,
    _h,
    save,
    start,
    upload,
    world,  # noqa: F401 - the fixture: project A (PI alice, steward sam, member carol), project B
)

RAW = b"pin,birth_date,postcode,diagnosis\n19121212-1212,1912-12-12,11455,C50.9\n"
PLAIN = b"age;diagnosis;site\n41;C50.9;left\n52;C50.1;right\n63;C34.1;left\n"  # no direct identifier at all


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return buf.getvalue()


def _parquet() -> bytes:
    buf = io.BytesIO()
    pl.DataFrame({"age": [41, 52], "diagnosis": ["C50.9", "C50.1"]}).write_parquet(buf)
    return buf.getvalue()


def _xlsx() -> bytes:
    wb = openpyxl.Workbook()
    for row in (["age", "diagnosis"], [41, "C50.9"], [52, "C50.1"]):
        wb.active.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _sqlite() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lab.db"
        with sqlite3.connect(path) as db:
            db.execute("create table lab (age int, diagnosis text)")
            db.execute("insert into lab values (41, 'C50.9')")
        return path.read_bytes()


# content kinds, each under a name that does not say "table" (the name is never what decides)
TABLES_BY_CONTENT = {
    "csv with a personnummer": ("raw/lab.txt", RAW),
    "semicolon-separated": ("raw/lab.dat", PLAIN),
    "tab-separated": ("raw/LAB", PLAIN.replace(b";", b"\t")),
    "pipe-separated": ("raw/lab.psv", PLAIN.replace(b";", b"|")),
    "a csv named as a pdf": ("raw/lab.pdf", PLAIN),
    "a csv in a zip": ("raw/lab.zip", _zip("lab.csv", RAW)),
    "gzip": ("raw/lab.bin", gzip.compress(PLAIN)),
    "gzip inside gzip": ("raw/lab.gz", gzip.compress(gzip.compress(PLAIN))),
    "bzip2": ("raw/lab.bz2", bz2.compress(PLAIN)),
    "xz": ("raw/lab.xz", lzma.compress(PLAIN)),
    "zstd (not opened)": ("raw/lab.zst", b"\x28\xb5\x2f\xfd" + os.urandom(64)),
    "parquet": ("raw/lab.pq", _parquet()),
    "a workbook": ("raw/lab.xlsx.bak", _xlsx()),
    "sqlite": ("raw/lab.db", _sqlite()),
    "a pickle": ("raw/frame.pkl", pickle.dumps({"age": [41, 52]}, protocol=4)),
    "encrypted": ("raw/lab.enc", b"Salted__" + os.urandom(64)),
    "json records": ("raw/lab.json", json.dumps([{"age": 41, "dx": "C50.9"}, {"age": 52, "dx": "C50.1"}]).encode()),
    "json lines": ("raw/lab.log", b'{"age": 41}\n{"age": 52}\n'),
    "xml records": ("raw/lab.xml", b"<lab><row><age>41</age><dx>C50.9</dx></row><row><age>52</age><dx>C50.1</dx>"
                                   b"</row></lab>"),
    "an html table": ("raw/lab.html", b"<!DOCTYPE html><html><body><table><tr><td>41</td><td>C50.9</td></tr>"
                                      b"</table></body></html>"),
    "excel unicode text (utf-16)": ("raw/lab-unicode.txt",
                                    codecs.BOM_UTF16_LE + PLAIN.decode().replace(";", "\t").encode("utf-16-le")),
    "a one-column list": ("raw/codes.txt", b"C50.9\nC50.1\nC34.1\nC18.0\n"),
    "fixed width": ("raw/lab.prn", b"age  diagnosis  site\n41   C50.9      left\n52   C50.1      right\n"),
    "a personnummer in prose": ("raw/letter.md", b"The patient, 19121212-1212, was seen on Monday.\n"),
    "e-mail addresses, one a line": ("raw/contacts.txt", b"anna@example.se\nbo@example.se\ncarl@example.se\n"),
}
NAME_FORMS = ["raw/lab.txt", "raw/lab.csv.", "raw/lab.csv..", "raw/LAB.CSV", "raw/lab", "raw/lab.psv",
              "raw/lab.dat", "raw/lab.csv.bak"]


def _dataset(w, files: list[str], who: str = "sam") -> str:
    r = w["api"].post("/api/v1/projects/proj-a/datasets", json={"title": "Release", "files": files},
                          headers=_h(w, who))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _release(w, ds: str, number: int = 1):
    return w["api"].post(f"/api/v1/datasets/{ds}/versions/{number}/release", headers=_h(w, "sam"))


def _state(w, ds: str, number: int = 1) -> str:
    with w["hub"].sessions() as s:
        return s.scalar(select(DatasetVersion.state).where(DatasetVersion.dataset_id == ds,
                                                           DatasetVersion.number == number))


# -- F1: a table is judged by its content, never by its name ---------------------------------------------------
@pytest.mark.parametrize("name", NAME_FORMS)
def test_a_raw_extract_is_refused_whatever_it_is_called(world, name: str) -> None:  # noqa: F811
    raw = upload(world, RAW, name)
    ds = _dataset(world, [raw])
    r = _release(world, ds)
    assert r.status_code == 409 and name in r.json()["detail"] and "Nothing unverified" in r.json()["detail"], r.text
    assert r.json()["unverified"] == [raw]
    assert _state(world, ds) == "draft"


@pytest.mark.parametrize("kind", list(TABLES_BY_CONTENT))
def test_a_table_in_any_form_is_refused_by_its_content(world, kind: str) -> None:  # noqa: F811
    name, data = TABLES_BY_CONTENT[kind]
    raw = upload(world, data, name)
    ds = _dataset(world, [raw])
    r = _release(world, ds)
    assert r.status_code == 409 and f"{name} ({raw}: " in r.json()["detail"], r.text
    assert _state(world, ds) == "draft"


def test_what_is_not_a_table_is_released_beside_a_runs_output(world) -> None:  # noqa: F811
    """No false alarm: prose, code, a configuration, images (DICOM, PNG, NIfTI compressed), a PDF, binary content
    of no table format, and a passing run's output and report go out together."""
    save(world, STRATEGY)
    extract = upload(world, synthetic.extract(3_000).write_csv().encode(), "extracts/lis.csv")
    assert start(world, extract).status_code == 202
    _drain(world["hub"])
    run = world["api"].get("/api/v1/projects/proj-a/strategy/runs", headers=_h(world, "sam")).json()[0]
    assert run["state"] == "passed", run
    nifti = b"\x5c\x01\x00\x00" + b"\x00" * 340 + b"n+1\x00" + os.urandom(4000)
    others = {
        "README.md": b"# Lung CT cohort\n\nOne folder per patient, pseudonymised; see the protocol.\n\n- CT\n- MR\n\n"
                     b"Contact: data-office@hospital.example.org, ORCID 0000-0002-1825-0097\n",
        "notes.txt": b"just notes",
        "analysis.py": b"import polars as pl\n\n\ndef main():\n    return pl.read_parquet('x.parquet')\n",
        "config.json": json.dumps({"learning_rate": 0.001, "layers": [64, 128, 256], "seed": 7}).encode(),
        "slice-001.png": png.synthetic_ct_slice(3, size=32),
        "protocol.pdf": b"%PDF-1.4\n" + os.urandom(2000),
        "images/ct.dcm": make_ct(1, 0, 1, 1, rows=16, columns=16),
        "seg/mask.nii.gz": gzip.compress(nifti),
        "weights.bin": os.urandom(300_000),
    }
    files = [upload(world, data, name) for name, data in others.items()]
    ds = _dataset(world, [*files, run["output_file_id"], run["report_file_id"]])
    r = _release(world, ds)
    assert r.status_code == 200 and r.json()["state"] == "released", r.text


def test_every_way_to_release_reads_the_content(world, applicant) -> None:  # noqa: F811
    """The API, the page, the CLI, a publish by the hub itself and a data request's release: a raw extract named
    `.txt` is refused by each; nothing is released."""
    api, hub = world["api"], world["hub"]
    raw = upload(world, RAW, "raw/lab.txt")
    ds = _dataset(world, [raw])
    r = _release(world, ds)
    assert r.status_code == 409 and "raw/lab.txt" in r.json()["detail"]
    page = form_post(web_client(world["app"], hub, world["sam"]), f"/datasets/{ds}/versions/1/release", {})
    assert page.status_code == 409 and "not made by a passing strategy run" in page.text
    with serving(world["app"], free_port()) as url:
        env = {"STRONGROOM_URL": url, "STRONGROOM_TOKEN": world["tokens"]["sam"], "COLUMNS": "200"}
        out = CliRunner().invoke(archive_cli, ["datasets", "release", ds, "--version", "1"], env=env)
        assert out.exit_code != 0 and "passing strategy run" in out.output, out.output
    with pytest.raises(Conflict, match="raw/lab.txt"), transaction(hub.sessions) as s:
        archive.publish_version(s, Actor.system("t"), s.get(Dataset, ds), [raw], note="import")
    assert _state(world, ds) == "draft"

    # a data request: its run's draft with the raw extract added is refused (it holds more than the run made)
    app_id = _apply(world)
    req = api.post("/api/v1/projects/proj-a/requests", json={"application": app_id,
                                                             "strategy_version": _save(world, SEED)},
                   headers=_h(world, "sam")).json()
    extract = upload(world, synthetic.extract(20_000).write_csv().encode(), "extracts/lis-pacs.csv")
    api.post(f"/api/v1/projects/proj-a/requests/{req['id']}/runs", json={"file_id": extract},
             headers=_h(world, "sam"))
    _drain(hub)
    req = api.get(f"/api/v1/projects/proj-a/requests/{req['id']}", headers=_h(world, "sam")).json()
    api.post(f"/api/v1/datasets/{req['dataset_id']}/draft", json={"add": [raw], "remove": []},
             headers=_h(world, "sam"))
    ends = (dt.date.today() + dt.timedelta(days=120)).isoformat()
    api.post(f"/api/v1/applications/{app_id}/approve", json={"ends": ends}, headers=_h(world, "alice"))
    r = api.post(f"/api/v1/projects/proj-a/requests/{req['id']}/release", headers=_h(world, "sam"))
    assert r.status_code == 409 and "raw/lab.txt" in r.json()["detail"], r.text
    assert _state(world, req["dataset_id"]) == "draft"


def test_imaging_imports_keep_their_own_verification(world, tmp_path) -> None:  # noqa: F811
    """De-identified DICOM published by an import goes out as before (the import verified it; the release does not
    read it again); a raw table added to the import dataset is refused like anywhere else."""
    hub = world["hub"]
    with hub.sessions() as s:
        project_id = s.scalar(select(Project.id).where(Project.slug == "proj-a"))
    write_corpus(tmp_path / "in", patients=1, studies=1, instances=2)
    report = bulk.run_import(hub, project_id, tmp_path / "in", workers=1)
    assert report.archived == 2 and report.published_version == 1
    with hub.sessions() as s:
        ds = s.get(ImagingProject, project_id).dataset_id
    assert _state(world, ds) == "released"
    raw = upload(world, RAW, "raw/lab.txt")
    assert world["api"].post(f"/api/v1/datasets/{ds}/draft", json={"add": [raw], "remove": []},
                             headers=_h(world, "sam")).status_code == 200
    r = _release(world, ds, 2)
    assert r.status_code == 409 and r.json()["unverified"] == [raw], r.text
    world["api"].post(f"/api/v1/datasets/{ds}/draft", json={"add": [], "remove": [raw]}, headers=_h(world, "sam"))
    assert _release(world, ds, 2).status_code == 200


# -- F2: a data request releases exactly what its run verified --------------------------------------------------
def _request_with_a_passing_run(w) -> dict:
    api = w["api"]
    app_id = _apply(w)
    version = _save(w, SEED)
    req = api.post("/api/v1/projects/proj-a/requests", json={"application": app_id, "strategy_version": version},
                   headers=_h(w, "sam")).json()
    extract = upload(w, synthetic.extract(20_000).write_csv().encode(), "extracts/lis-pacs.csv")
    assert api.post(f"/api/v1/projects/proj-a/requests/{req['id']}/runs", json={"file_id": extract},
                    headers=_h(w, "sam")).status_code == 202
    _drain(w["hub"])
    ends = (dt.date.today() + dt.timedelta(days=120)).isoformat()
    assert api.post(f"/api/v1/applications/{app_id}/approve", json={"ends": ends},
                    headers=_h(w, "alice")).json()["state"] == "approved"
    req = api.get(f"/api/v1/projects/proj-a/requests/{req['id']}", headers=_h(w, "sam")).json()
    run = api.get(f"/api/v1/projects/proj-a/strategy/runs/{req['run_id']}", headers=_h(w, "sam")).json()
    return {**req, "output": run["output_file_id"], "report": run["report_file_id"]}


@pytest.mark.parametrize("edit", ["a member adds a raw extract", "the steward adds a note",
                                  "the report is taken out"])
def test_a_data_request_releases_exactly_what_its_run_verified(world, applicant, edit: str) -> None:  # noqa: F811
    api = world["api"]
    req = _request_with_a_passing_run(world)
    if edit == "the report is taken out":
        change = {"add": [], "remove": [req["report"]]}
        undo = {"add": [req["report"]], "remove": []}
        who = "sam"
    else:
        who = "carol" if edit == "a member adds a raw extract" else "sam"
        extra = upload(world, RAW if who == "carol" else b"released with care\n",
                       "raw/lis-extract.txt" if who == "carol" else "NOTES.md", who=who)
        change, undo = {"add": [extra], "remove": []}, {"add": [], "remove": [extra]}
    r = api.post(f"/api/v1/datasets/{req['dataset_id']}/draft", json=change, headers=_h(world, who))
    assert r.status_code == 200 and r.json()["number"] == 1, r.text  # the run's draft itself

    r = api.post(f"/api/v1/projects/proj-a/requests/{req['id']}/release", headers=_h(world, "sam"))
    assert r.status_code == 409 and "no longer holds exactly what run" in r.json()["detail"], r.text
    assert api.get(f"/api/v1/datasets/{req['dataset_id']}/versions/1/files",
                   headers=_h(world, "rita")).status_code == 404  # the applicant got nothing
    assert _state(world, req["dataset_id"]) == "draft"

    api.post(f"/api/v1/datasets/{req['dataset_id']}/draft", json=undo, headers=_h(world, "sam"))
    r = api.post(f"/api/v1/projects/proj-a/requests/{req['id']}/release", headers=_h(world, "sam"))
    assert r.status_code == 200, r.text
    files = api.get(f"/api/v1/datasets/{req['dataset_id']}/versions/1/files", headers=_h(world, "rita")).json()
    assert {f["id"] for f in files["files"]} == {req["output"], req["report"]}


def test_a_data_request_releases_only_a_run_of_the_version_it_names(world, applicant) -> None:  # noqa: F811
    req = _request_with_a_passing_run(world)
    other = _save(world, SEED.replace("Project X", "Project Y"))
    with transaction(world["hub"].sessions) as s:  # the request now names another version than its run applied
        r = s.get(DataRequest, req["id"])
        r.strategy_version_id = s.scalar(select(StrategyVersion.id).where(StrategyVersion.version == other))
    r = world["api"].post(f"/api/v1/projects/proj-a/requests/{req['id']}/release", headers=_h(world, "sam"))
    assert r.status_code == 409 and "not a run of this request's strategy version" in r.json()["detail"], r.text
    assert _state(world, req["dataset_id"]) == "draft"


# -- F3: the identifier scan is not the strategy's to switch off ------------------------------------------------
LAX = '''name = "Lab (lax)"
person = "pin"
[columns.pin]
action = "keep"
[columns.email]
action = "keep"
[columns.phone]
action = "keep"
[columns.diagnosis]
action = "keep"
[identifier_scan]
{switches}
'''
SWITCHES = ["personnummer = false", "email = false", "phone = false",
            "personnummer = false\nemail = false\nphone = false"]
LEAKY = b"pin,email,phone,diagnosis\n19121212-1212,tolvan@example.se,070-123 45 67,C50.9\n"


@pytest.mark.parametrize("switches", SWITCHES)
def test_a_strategy_cannot_switch_an_identifier_kind_off(world, switches: str, tmp_path) -> None:  # noqa: F811
    text = LAX.format(switches=switches)
    r = world["api"].put("/api/v1/projects/proj-a/strategy", json={"text": text}, headers=_h(world, "sam"))
    assert r.status_code == 422 and "cannot turn the scan" in r.json()["detail"], r.text
    checked = world["api"].post("/api/v1/strategies/check", json={"text": text}, headers=_h(world, "sam")).json()
    assert checked["valid"] is False and "cannot turn the scan" in checked["problems"][0]["problem"]
    (tmp_path / "lax.toml").write_text(text)
    out = CliRunner().invoke(strategy_cli.app, ["check", str(tmp_path / "lax.toml")], env={"COLUMNS": "300"})
    assert out.exit_code != 0 and "cannot turn the scan" in " ".join(out.output.split()), out.output  # (wrapped)


@pytest.mark.parametrize("switches", SWITCHES)
def test_a_version_saved_with_a_kind_switched_off_is_scanned_for_every_kind(
        world, switches: str, tmp_path) -> None:  # noqa: F811
    """A version saved when a strategy could switch a kind off still loads and runs, and the run fails on the
    personnummer, e-mail address and telephone number it kept: nothing is archived, so nothing is released. The
    airlock's checks, which honour the strategy's scan, find them too."""
    text = LAX.format(switches=switches)
    with transaction(world["hub"].sessions) as s:  # as saved before the rule (the API refuses it now)
        project = s.scalar(select(Project).where(Project.slug == "proj-a"))
        s.add(StrategyVersion(project_id=project.id, version=1, name="Lab (lax)", text=text, sha256="0" * 64,
                              created_by=world["sam"].user.id))
    loaded = strategies.parse(text).identifier_scan
    assert (loaded.personnummer, loaded.email, loaded.phone) == (True, True, True)
    raw = upload(world, LEAKY, "raw/lab.csv")
    run = start(world, raw, version=1).json()
    _drain(world["hub"])
    run = world["api"].get(f"/api/v1/projects/proj-a/strategy/runs/{run['id']}", headers=_h(world, "sam")).json()
    assert run["state"] == "failed" and run["dataset_id"] is None, run
    scan = next(c for c in run["report"]["checks"] if c["name"] == "no identifier in any cell")
    assert not scan["passed"]
    assert {"personnummer", "e-mail", "telephone number"} <= {f["kind"] for f in run["report"]["identifiers"]}

    from strongroom.airlock import checks

    (tmp_path / "file.csv").write_bytes(LEAKY)
    report = checks.check_file(tmp_path / "file.csv", "out/lab.csv", max_bytes=10**9, strategy=strategies.parse(text))
    assert not report.passed and "personnummer" in json.dumps(report.as_json())


# -- F5: a personnummer in a column of any type ----------------------------------------------------------------
def _with_luhn(nine: str) -> str:
    """`nine` digits (YYMMDDNNN) and the Luhn digit that makes them a personnummer."""
    return next(nine + d for d in "0123456789" if luhn_ok(nine + d))


PNR12 = 191212121212
PNR10 = int(_with_luhn("850709123"))  # born 1985: ten digits
PNR_2005 = int(_with_luhn("050307000"))  # born 2005: the leading zero is lost, nine digits
PNR_2000 = int(_with_luhn("000101123"))  # born 2000-01-01: seven digits as a number
SAMORDNING = int(_with_luhn("850769123"))  # day + 60
TYPED = {
    "Int64": pl.Series([PNR12], dtype=pl.Int64),
    "Int64 10 digits": pl.Series([PNR10], dtype=pl.Int64),
    "Int64 born 2005": pl.Series([PNR_2005], dtype=pl.Int64),
    "Int64 born 2000-01": pl.Series([PNR_2000], dtype=pl.Int64),
    "Int64 samordningsnummer": pl.Series([SAMORDNING], dtype=pl.Int64),
    "Int32 born 2005": pl.Series([PNR_2005], dtype=pl.Int32),
    "UInt64": pl.Series([PNR12], dtype=pl.UInt64),
    "Float64": pl.Series([float(PNR12)], dtype=pl.Float64),
    "Float32 born 2000-01": pl.Series([float(PNR_2000)], dtype=pl.Float32),
    "Decimal(12,0)": pl.Series([decimal.Decimal(PNR12)], dtype=pl.Decimal(12, 0)),
    "Decimal(20,2)": pl.Series([decimal.Decimal(PNR10)], dtype=pl.Decimal(20, 2)),
    "Decimal(38,0) born 2005": pl.Series([decimal.Decimal(PNR_2005)], dtype=pl.Decimal(38, 0)),
    "String": pl.Series(["19121212-1212"]),
    "Categorical": pl.Series(["19121212-1212"], dtype=pl.Categorical),
    "Binary": pl.Series([b"19121212-1212"], dtype=pl.Binary),
    "List[Int64]": pl.Series([[PNR_2005]]),
    "Struct{Decimal}": pl.Series([{"id": decimal.Decimal(PNR12)}], dtype=pl.Struct({"id": pl.Decimal(12, 0)})),
}
KEEP = strategies.parse('name = "Lab"\n[columns.x]\naction = "keep"\n[columns.result]\naction = "keep"\n')


@pytest.mark.parametrize("label", list(TYPED))
def test_the_scan_finds_a_personnummer_in_a_column_of_any_type(label: str, tmp_path) -> None:
    frame = pl.DataFrame({"x": TYPED[label].extend(TYPED[label]), "result": ["ok", "ok"]})
    frame.write_parquet(tmp_path / "lab.parquet")  # as an extract or an output carries it
    verification = engine.verify(pl.read_parquet(tmp_path / "lab.parquet"), KEEP)
    assert not verification.passed
    assert [(f["column"].split(".")[0], f["kind"], f["cells"]) for f in verification.identifiers] == [
        ("x", "personnummer", 2)]  # a struct's field is named as x.id


OTHER_TYPES = {
    "Date": pl.Series([dt.date(2019, 12, 12)] * 2), "Datetime": pl.Series([dt.datetime(2019, 12, 12, 12, 12)] * 2),
    "Time": pl.Series([dt.time(12, 12, 12)] * 2), "Duration": pl.Series([dt.timedelta(days=3)] * 2),
    "Boolean": pl.Series([True, False]), "ages": pl.Series([41, 97]), "counts": pl.Series([999_999, 1_000_000]),
    "lab values": pl.Series([5.5, 191212.5]), "a number that is no date": pl.Series([1_310_000_007, 9_999_999]),
    "Null": pl.Series([None, None]),
}


@pytest.mark.parametrize("label", list(OTHER_TYPES))
def test_other_types_are_read_as_their_text_without_false_alarms(label: str) -> None:
    verification = engine.verify(pl.DataFrame({"x": OTHER_TYPES[label], "result": ["ok", "ok"]}), KEEP)
    assert verification.passed, verification.identifiers


def test_a_run_fails_on_a_personnummer_kept_as_a_decimal_or_an_integer(world) -> None:  # noqa: F811
    frame = pl.DataFrame({"pin": ["19121212-1212"] * 3, "lab_ref": [decimal.Decimal(PNR12)] * 3,
                          "referral": [PNR_2005] * 3, "result": ["ok"] * 3},
                         schema={"pin": pl.String, "lab_ref": pl.Decimal(12, 0), "referral": pl.Int64,
                                 "result": pl.String})
    buf = io.BytesIO()
    frame.write_parquet(buf)
    save(world, 'name = "Lab"\nperson = "pin"\n[columns.pin]\naction = "pseudonymize"\n[columns.lab_ref]\n'
                'action = "keep"\n[columns.referral]\naction = "keep"\n[columns.result]\naction = "keep"\n')
    run = start(world, upload(world, buf.getvalue(), "extracts/lab.parquet")).json()
    _drain(world["hub"])
    run = world["api"].get(f"/api/v1/projects/proj-a/strategy/runs/{run['id']}", headers=_h(world, "sam")).json()
    assert run["state"] == "failed" and run["dataset_id"] is None, run
    assert {(f["column"], f["kind"]) for f in run["report"]["identifiers"]} == {
        ("lab_ref", "personnummer"), ("referral", "personnummer")}


# -- F11: text in a top-coded column is a bad cell, not a crash --------------------------------------------------
TOP = strategies.parse('name = "t"\n[columns.age]\naction = "top_code"\ntop = 90\nbottom = 0\n')


def test_text_in_a_top_coded_column_counts_as_bad_cells(tmp_path) -> None:
    ages = pl.DataFrame({"age": ["41", "41,5", "n/a", "90+", "95", None]})
    verification = engine.verify(ages, TOP)
    check = next(c for c in verification.checks if c.name == "age: top_code")
    assert not check.passed and check.detail == "3 value(s) do not follow the rule"  # n/a, 90+ and 95
    run = engine.apply(ages, TOP, b"k" * 32)  # a run reads what is no number as blank, then clamps
    assert run.passed and run.output.get_column("age").to_list() == [41.0, 41.5, None, None, 90.0, None]

    from strongroom.airlock import checks  # the airlock's check job verifies with the same engine

    (tmp_path / "file.csv").write_text("age\n41\nn/a\n90+\n")
    report = checks.check_file(tmp_path / "file.csv", "ages.csv", max_bytes=10**9, strategy=TOP)
    assert not report.passed and "age: top_code: 2 value(s) do not follow the rule" in json.dumps(report.as_json())

