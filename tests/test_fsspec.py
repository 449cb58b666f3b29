"""strongroom:// through fsspec (issue 13) against a live hub on loopback: pandas reads a CSV archived in a
project, pydicom reads a de-identified DICOM of an imported dataset (bytes equal to the archived plaintext),
a ranged read in the middle of a large file asks only for the covering crypt4gh segments (as the hub
audited it), another project's paths are FileNotFoundError and a locked download is PermissionError."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
import tomllib
from importlib import import_module
from pathlib import Path

import fsspec
import httpx
import pandas
import pydicom
import pytest
from sqlalchemy import select

from conftest import bearer, token_for
from imaging_support import END, archived_bytes, make_project, write_corpus
from strongroom.archive import c4gh
from strongroom.archive.transfer import UploadPlan, upload_file
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.fs import StrongroomFileSystem
from strongroom.hubclient import HubClient
from strongroom.imaging import bulk
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from support.live import free_port, serving

ROOT = Path(__file__).resolve().parents[1]
CSV = b"patient,age,fev1\nP1,61,2.1\nP2,57,2.9\nP3,70,1.8\n"
SEG, PLAIN_SEG = c4gh.CIPHER_SEGMENT_SIZE, c4gh.SEGMENT_SIZE

if "strongroom" not in fsspec.available_protocols():
    # An installed package finds the class through its `fsspec.specs` entry point (checked below); a
    # checkout run with PYTHONPATH=src has no entry points of its own, so it is registered the same way here.
    fsspec.register_implementation("strongroom", "strongroom.fs.StrongroomFileSystem")


def test_the_package_publishes_the_filesystem_as_an_fsspec_entry_point() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = pyproject["project"]["entry-points"]["fsspec.specs"]["strongroom"]
    module, _, name = target.partition(":")
    assert getattr(import_module(module), name) is StrongroomFileSystem
    assert fsspec.get_filesystem_class("strongroom") is StrongroomFileSystem


def test_the_filesystem_is_a_client_without_server_modules() -> None:
    code = ("import sys, strongroom.fs; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('fastapi', 'sqlalchemy', 'starlette', 'uvicorn') or m.startswith(('strongroom.db', 'strongroom.app', "
            "'strongroom.web', 'strongroom.archive.models', 'strongroom.archive.service'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.stdout.strip() == "[]"


@pytest.fixture
def world(app, hub, people, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """lung (alice's): a CSV and a 3 MiB file uploaded to its archive, and a DICOM import published as a
    dataset; other (bob's): a file of its own. The credentials come from the environment, as in a workspace."""
    alice, bob = people("alice"), people("bob")
    make_project(hub, "lung", "alice", profile={"retain_longitudinal": "modified"})
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="other", name="Other", pi="bob", ethics_ref="E2",
                                end_date=END)
    write_corpus(tmp_path / "dicom", patients=1, studies=1, series=1, instances=2)
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "dicom", workers=1)
    assert report.archived == 2 and report.published_version == 1
    tokens = {"alice": token_for(hub, alice), "bob": token_for(hub, bob)}
    big = os.urandom(3 * 1024 * 1024 + 123)
    key = c4gh.generate_keypair()
    c4gh.write_private_key(tmp_path / "me.sec", key, None)
    StrongroomFileSystem.clear_instance_cache()
    with serving(app, free_port()) as url:
        http = httpx.Client(base_url=url, headers=bearer(tokens["alice"]), timeout=60)
        assert http.put("/api/v1/projects/lung/settings/download_allowed", json={"value": True}).status_code == 200
        assert http.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(
            key.public).decode()}).status_code == 201
        hub_public = c4gh.parse_public_key(http.get("/api/v1/archive/public-key").text)
        ids = {}
        for who, project, name, data in (("alice", "lung", "tables/visits.csv", CSV),
                                         ("alice", "lung", "raw/big.bin", big),
                                         ("bob", "other", "secret.csv", CSV)):
            source = tmp_path / name.replace("/", "_")
            source.write_bytes(data)
            record = upload_file(HubClient(url, tokens[who]), project, UploadPlan(source, name, len(data)),
                                 hub_public, state_dir=tmp_path / "state")
            ids[name] = record["id"]
        Runner(hub, lease_seconds=10, name="test").run_until_idle()
        monkeypatch.setenv("STRONGROOM_CLI_CONFIG", str(tmp_path / "no-login.json"))
        monkeypatch.setenv("STRONGROOM_URL", url)
        monkeypatch.setenv("STRONGROOM_TOKEN", tokens["alice"])
        monkeypatch.setenv("STRONGROOM_CRYPT4GH_KEY", str(tmp_path / "me.sec"))
        (dataset,) = http.get("/api/v1/projects/lung/datasets").json()
        yield {"url": url, "http": http, "tokens": tokens, "big": big, "ids": ids, "dataset": dataset["id"],
               "key": tmp_path / "me.sec"}
    StrongroomFileSystem.clear_instance_cache()


def _download_events(hub, file_id: str) -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.target == f"file:{file_id}",
                                                       AuditEvent.action.like("archive.download.%"))
                              .order_by(AuditEvent.seq)))


def _wait_for(predicate, timeout: float = 30.0):
    """Poll until the server has written the end-of-download event (it does so after the last byte)."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return found


def test_pandas_and_pydicom_read_through_strongroom_urls(hub, world) -> None:
    frame = pandas.read_csv("strongroom://lung/files/tables/visits.csv")
    assert list(frame.columns) == ["patient", "age", "fev1"] and frame["age"].sum() == 188
    fs = fsspec.filesystem("strongroom")
    assert fs.via == "encrypted"  # the secret key was found: nothing plaintext crossed the network
    assert {"lung"} <= set(fs.ls("", detail=False)) and "other" not in fs.ls("", detail=False)
    assert set(fs.ls("strongroom://lung", detail=False)) == {"lung/files", f"lung/{world['dataset']}"}
    assert {"lung/files/raw", "lung/files/tables"} <= set(fs.ls("strongroom://lung/files", detail=False))
    info = fs.info("strongroom://lung/files/tables/visits.csv")
    assert info["type"] == "file" and info["size"] == len(CSV) and info["id"] == world["ids"]["tables/visits.csv"]
    assert fs.cat_file("strongroom://lung/files/tables/visits.csv") == CSV

    # the imported dataset: de-identified DICOM instances, read by pydicom straight from the hub
    listed = fs.find(f"strongroom://lung/{world['dataset']}", detail=True)
    assert len(listed) == 2
    for name, entry in listed.items():
        expected = archived_bytes(hub, entry["id"])
        with fsspec.open(f"strongroom://{name}").open() as fh:
            ds = pydicom.dcmread(fh)
        assert ds.PixelData == pydicom.dcmread(io.BytesIO(expected)).PixelData
        assert ds.PatientID != "" and ds.SOPInstanceUID == pydicom.dcmread(io.BytesIO(expected)).SOPInstanceUID
        with fsspec.open(f"strongroom://{name}", "rb") as fh:
            assert fh.read() == expected
    versioned = fs.ls(f"strongroom://lung/{world['dataset']}@1", detail=False)
    assert len(versioned) == 1 and fs.isdir(versioned[0])  # the same files under the version's own folder


def test_put_uploads_into_the_projects_files(hub, world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "results.csv"
    source.write_bytes(CSV * 1000)
    fs = StrongroomFileSystem()
    fs.put(str(source), "strongroom://lung/files/derived/results.csv")
    Runner(hub, lease_seconds=10, name="test").run_until_idle()  # the hub ingests it
    fs.invalidate_cache()
    assert fs.cat_file("strongroom://lung/files/derived/results.csv") == CSV * 1000
    with pytest.raises(PermissionError, match="datasets are read-only"):
        fs.put(str(source), f"strongroom://lung/{world['dataset']}/results.csv")


@pytest.mark.parametrize("via", ["encrypted", "plaintext"])
def test_a_range_in_the_middle_asks_only_for_its_segments(hub, world, via: str) -> None:
    fs = StrongroomFileSystem(via=via)
    file_id, big = world["ids"]["raw/big.bin"], world["big"]
    start = 20 * PLAIN_SEG + 1000  # 100 bytes in segment 20, the next 50 in segment 21 … of 49
    before = len(_download_events(hub, file_id))
    with fs.open("strongroom://lung/files/raw/big.bin", cache_type="none") as fh:
        fh.seek(start)
        assert fh.read(PLAIN_SEG) == big[start:start + PLAIN_SEG]
    started, ended = _wait_for(lambda: _download_events(hub, file_id)[before:] if len(
        _download_events(hub, file_id)) >= before + 2 else None)  # the end is written after the last byte
    assert started.action == "archive.download.started" and ended.action == "archive.download.completed"
    if via == "encrypted":
        # the hub sent a re-encrypted header and exactly the two segments holding the range
        assert started.details["plaintext_range"] == f"{start}-{start + PLAIN_SEG - 1}"
        assert 2 * SEG < ended.details["bytes_sent"] < 2 * SEG + 1024
    else:
        assert started.details["mode"] == "plaintext" and started.details["bytes"] == f"{start}-{start + PLAIN_SEG - 1}"
        assert ended.details["bytes_sent"] == PLAIN_SEG
    assert fs.cat_file("strongroom://lung/files/raw/big.bin", -10) == big[-10:]
    whole = fs.cat_file("strongroom://lung/files/raw/big.bin")
    assert hashlib.sha256(whole).digest() == hashlib.sha256(big).digest()


def test_other_projects_are_not_found_and_locked_downloads_are_refused(hub, world) -> None:
    fs = StrongroomFileSystem()
    for path in ("strongroom://other", "strongroom://other/files", "strongroom://other/files/secret.csv",
                 "strongroom://lung/files/secret.csv", "strongroom://lung/SRD-0000000000/x.dcm",
                 "strongroom://lung/nothing/x"):
        with pytest.raises(FileNotFoundError):
            fs.info(path)
        with pytest.raises(FileNotFoundError):
            fs.open(path)
    with pytest.raises(FileNotFoundError):
        pandas.read_csv("strongroom://other/files/secret.csv")
    # bob's file, asked for by id under alice's project: the hub answers 404 like for a made-up id
    with pytest.raises(FileNotFoundError):
        fs.read_range("lung/files/secret.csv", world["ids"]["secret.csv"], 0, 10)
    with pytest.raises(PermissionError):
        fs.open("strongroom://lung/files/tables/visits.csv", "wb")
    with pytest.raises(FileNotFoundError):  # nor can anything be put there
        fs.put_file(str(world["key"]), "strongroom://other/files/mine.sec")

    # the PI locks downloads: the encrypted route (bytes to your own machine) says why, and so does the
    # plaintext route for a member's own token (only a workspace's token, from its workspace, reads it)
    r = world["http"].put("/api/v1/projects/lung/settings/download_allowed", json={"value": False})
    assert r.status_code == 200, r.text
    with pytest.raises(PermissionError, match="downloads are locked for this project"):
        pandas.read_csv("strongroom://lung/files/tables/visits.csv")
    plain = StrongroomFileSystem(via="plaintext", skip_instance_cache=True)
    with pytest.raises(PermissionError, match="read it in a workspace"):
        plain.cat_file("strongroom://lung/files/tables/visits.csv")


@pytest.mark.parametrize("stored", ["../../escaped.csv", "..\\..\\escaped.csv", "C:escaped.csv", "/abs/escaped.csv"])
def test_a_stored_path_never_names_a_file_outside_the_target(hub, world, tmp_path: Path, stored: str) -> None:
    """Whatever path the hub holds (a row from before the upload rule, a peer's manifest from before it), a
    recursive ``get`` and ``strongroom download`` write inside the folder asked for (``paths.safe_relative``)."""
    from strongroom.archive.models import ArchiveFile
    from strongroom.archive.transfer import download_file

    file_id = world["ids"]["tables/visits.csv"]
    with transaction(hub.sessions) as s:
        s.get(ArchiveFile, file_id).path = stored
    target = tmp_path / "deep" / "inside"
    target.mkdir(parents=True)
    fs = StrongroomFileSystem()
    fs.invalidate_cache()
    fs.get("strongroom://lung/files", str(target), recursive=True)
    written, _ = download_file(HubClient(world["url"], world["tokens"]["alice"]), file_id, target / "dl", key=None)
    outside = [p for p in tmp_path.rglob("*escaped*") if not p.resolve().is_relative_to(target.resolve())]
    assert outside == [] and written.resolve().is_relative_to((target / "dl").resolve())
    assert sorted(p.name for p in target.rglob("escaped.csv*")) == ["escaped.csv", "escaped.csv.c4gh"] or \
        sorted(p.name for p in target.rglob("*escaped.csv*")) == ["C_escaped.csv", "C_escaped.csv.c4gh"]
