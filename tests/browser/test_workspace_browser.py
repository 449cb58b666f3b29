"""A notebook workspace in a real browser (issue 19): a member logs in (password + TOTP), starts a workspace
from the project page, opens JupyterLab through the hub's proxy on the workspaces' own origin (localhost for a hub
at 127.0.0.1; the workspace's Jupyter token is not in the page), and runs a notebook cell there that reads a DICOM
instance of a dataset shared into the project through ``strongroom://`` with pydicom and saves a result back into
the project (archived encrypted). Another project's member gets 404 on the same proxy URL, on either origin."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from imaging_support import archived_bytes, make_project, write_corpus
from strongroom.archive.backend import storage_for
from strongroom.archive.models import READY, ArchiveFile, Dataset, DatasetShare
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.config import Settings
from strongroom.db import transaction
from strongroom.hub import Hub
from strongroom.imaging import bulk
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from strongroom.projects.models import Membership
from strongroom.workspaces import netns, service
from strongroom.workspaces.models import LIVE, Workspace

from .test_web_flows import login

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None,
                                 reason="jupyterlab is not installed (pip install -e '.[test]')")]

NO_NETNS = netns.missing()
# The notebook cell: an installed hub publishes strongroom:// through its
# `fsspec.specs` entry point; this checkout's source on PYTHONPATH registers it the same way.
CELL = r"""import fsspec, pydicom
if 'strongroom' not in fsspec.available_protocols():
    fsspec.register_implementation('strongroom', 'strongroom.fs.StrongroomFileSystem')
fs = fsspec.filesystem('strongroom')
name = sorted(fs.find('strongroom://heart/{dataset}'))[0]
ds = pydicom.dcmread(fs.open(name))
with open('summary.csv', 'w') as out:
    out.write(f'patient,rows\n{{ds.PatientID}},{{ds.Rows}}\n')
fs.put('summary.csv', 'strongroom://heart/files/results/summary.csv')
print('ROWS', ds.Rows, fs.via, 'SAVED')"""
SRC = Path(__file__).resolve().parents[2] / "src"

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)  # own subnet per worker


@pytest.fixture
def listen_socket() -> Iterator[socket.socket]:
    """On every address: the workspace's network namespace reaches the hub through its veth's host side."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    yield sock
    sock.close()


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    path = Path("/dev/shm") / f"srtest-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def settings(settings: Settings, listen_socket: socket.socket, scratch_dir: Path, tmp_path: Path) -> Settings:
    # The kernel runs the strongroom client under test (this checkout), as an installed hub's would its own.
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexport PYTHONPATH={SRC}\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    return settings.model_copy(update={
        "port": listen_socket.getsockname()[1],
        "workspaces": settings.workspaces.model_validate({
            "scratch_dir": str(scratch_dir), "subnet": f"10.213.{2 * WORKER + 1}.0/24", "python": str(python),
            "isolation": "namespace" if NO_NETNS is None else "none", "allow_unisolated": NO_NETNS is not None,
            "start_timeout_seconds": 120, "run_as": ""})})


def _notebook(source: str) -> dict:
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": "read-a-shared-dicom", "metadata": {},
                       "outputs": [], "source": source}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                        "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def _as(browser: Browser, url: str, person) -> Page:
    page = browser.new_context(base_url=url, viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(20_000)
    login(page, person)
    return page


def _join(hub: Hub, slug: str, username: str) -> None:
    from strongroom.identity import service as identity

    with transaction(hub.sessions) as s:
        project = s.scalar(select(projects.Project).where(projects.Project.slug == slug))
        s.add(Membership(project_id=project.id, user_id=identity.find_user(s, username).id, role="member",
                         delegated_rights=[]))


def test_member_opens_jupyterlab_through_the_hub_and_reads_a_shared_dicom(
        browser: Browser, live_server, hub: Hub, people, tmp_path: Path, shots: Path) -> None:
    people("alice")
    people("bob")
    carol, dave = people("carol"), people("dave")
    make_project(hub, "lung", pi="alice", profile={"retain_longitudinal": "modified"})
    make_project(hub, "heart", pi="bob")
    _join(hub, "heart", "carol")
    _join(hub, "lung", "dave")
    write_corpus(tmp_path / "dicom", patients=1, studies=1, series=1, instances=1)
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "dicom", workers=1)
    assert report.archived == 1 and report.published_version == 1
    with transaction(hub.sessions) as s:  # lung's released dataset, shared into heart
        lung = s.scalar(select(projects.Project).where(projects.Project.slug == "lung"))
        heart_id = s.scalar(select(projects.Project.id).where(projects.Project.slug == "heart"))
        dataset = s.scalar(select(Dataset.id).where(Dataset.project_id == lung.id))
        s.add(DatasetShare(dataset_id=dataset, project_id=heart_id, shared_by=lung.pi_id))
        (shared_id,) = s.scalars(select(ArchiveFile.id).where(ArchiveFile.project_id == lung.id))
    expected = pydicom.dcmread(io.BytesIO(archived_bytes(hub, shared_id)))

    member = _as(browser, live_server.url, carol)
    try:
        member.goto("/projects/heart")
        member.get_by_role("link", name="Notebook workspaces (JupyterLab)").click()
        expect(member).to_have_url(re.compile(r"/projects/heart/workspaces$"))
        # the POST answers once JupyterLab is up (tens of seconds on a busy machine): the click waits for it
        member.get_by_role("button", name="Start a workspace").click(timeout=150_000)
        expect(member.locator("#flash")).to_contain_text("Workspace started", timeout=150_000)
        with transaction(hub.sessions) as s:
            (ws,) = s.scalars(select(Workspace).where(Workspace.project_id == heart_id, Workspace.state.in_(LIVE)))
            lab_path = f"{service.base_path('heart', ws.id)}lab"
        member.locator(f'a[href="{lab_path}"]').click()
        where = service.browser_origin(hub.settings)  # the hub hands the browser over to the workspaces' origin
        assert where.startswith("http://localhost:")
        expect(member).to_have_url(f"{where}{lab_path}")
        # JupyterLab's own UI, served through the hub's proxy: its shell and launcher render
        expect(member.locator("#jp-main-dock-panel")).to_be_visible(timeout=60_000)
        launcher = member.locator(".jp-Launcher")
        expect(launcher).to_be_visible(timeout=60_000)
        member.screenshot(path=str(shots / "workspace-lab.png"))
        token = service.jupyter_token(hub.secret, ws.id)
        assert token not in member.content()

        # a notebook with one cell, saved into the workspace through the proxy (as an upload from the browser
        # would), opened in JupyterLab: its kernel starts (its websocket through the proxy), then the cell reads a
        # DICOM instance of the shared dataset through strongroom:// and saves a result back into heart
        trace: list[str] = []  # what Lab asked of its kernels and sessions, written out should the cell not run
        member.on("request", lambda r: trace.append(f"{r.method} {r.url}") if "/api/" in r.url else None)
        member.on("response", lambda r: trace.append(f"{r.status} {r.request.method} {r.url}")
                  if "/api/" in r.url else None)
        member.on("websocket", lambda w: trace.append(f"websocket {w.url}"))
        base = service.base_path("heart", ws.id)
        saved_nb = member.request.put(f"{where}{base}api/contents/analysis.ipynb", data=json.dumps(
            {"type": "notebook", "format": "json", "content": _notebook(CELL.format(dataset=dataset))}),
            headers={"Content-Type": "application/json", "Origin": where})
        assert saved_nb.status == 201, saved_nb.text()
        # opened from the hub again, deep: a new handoff, then Lab loads through the proxy
        member.goto(f"{live_server.url}{base}lab/tree/analysis.ipynb", timeout=120_000)
        expect(member).to_have_url(f"{where}{base}lab/tree/analysis.ipynb")
        cell = member.locator(".jp-Notebook .jp-Cell").first
        expect(cell.locator(".cm-content")).to_contain_text("SAVED", timeout=120_000)
        expect(member.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(
            1, timeout=180_000)
        expect(member.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=180_000)
        cell.locator(".cm-content").click()
        member.keyboard.press("Shift+Enter")
        output = cell.locator(".jp-OutputArea-output")
        try:
            # queued or running ("[*]") or done ("[1]"): never the blank prompt of a cell Lab did not send
            expect(cell.locator(".jp-InputPrompt")).not_to_have_text(re.compile(r"^\s*\[\s*\]:\s*$"),
                                                                      timeout=60_000)
            expect(output).to_contain_text("SAVED", timeout=180_000)
        except AssertionError:
            (shots / "workspace-notebook-trace.txt").write_text("\n".join(trace))
            member.screenshot(path=str(shots / "workspace-notebook-failed.png"))
            raise
        expect(output).to_contain_text(f"ROWS {expected.Rows} plaintext SAVED")
        member.screenshot(path=str(shots / "workspace-notebook.png"))
        # the result, through the hub's own services: uploaded by carol, ingested into heart, stored encrypted
        Runner(hub, lease_seconds=10, name="test").run_until_idle()
        with transaction(hub.sessions) as s:
            saved = s.scalar(select(ArchiveFile).where(ArchiveFile.project_id == heart_id,
                                                       ArchiveFile.path == "results/summary.csv"))
            assert saved is not None and saved.state == READY and saved.uploader_id == carol.user.id
            saved_id, body_key = saved.id, saved.body_key
            reads = s.scalars(select(AuditEvent).where(AuditEvent.target == f"file:{shared_id}",
                                                       AuditEvent.action == "archive.download.started")
                              .order_by(AuditEvent.seq)).all()
            assert reads and {(e.actor_id, e.details["dataset"], e.details["allowed_as"]) for e in reads} == {
                (carol.user.id, dataset, f"workspace:{ws.id}")}
        assert archived_bytes(hub, saved_id) == f"patient,rows\n{expected.PatientID},{expected.Rows}\n".encode()
        with storage_for(hub).open_reader(body_key) as body:
            assert str(expected.PatientID).encode() not in body.read()  # ciphertext at rest

        # another project's member (dave is in lung, not heart): the proxy URL does not exist for him
        other = _as(browser, live_server.url, dave)
        answer = other.goto(lab_path)
        assert answer is not None and answer.status == 404
        answer = other.goto(f"{service.base_path('heart', ws.id)}api/status")
        assert answer is not None and answer.status == 404
        for address in (lab_path, f"{base}api/status"):  # and his hub session opens nothing on the other origin
            answer = other.goto(f"{where}{address}")
            assert answer is not None and answer.status == 404
    finally:
        with transaction(hub.sessions) as s:
            for live in s.scalars(select(Workspace).where(Workspace.state.in_(LIVE))):
                service.stop(s, hub.settings, live, Actor.system("test"), reason="user")
