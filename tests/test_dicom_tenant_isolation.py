"""One project's DICOM destination never affects another's (`strongroom dicom serve` with pynetdicom peers):

- a port (or AE title) another project's destination holds, or a hub service's port, is refused at the API and
  in the form, also when two changes race;
- a port two projects claim anyway (rows from before that check) starts neither destination: a scanner is never
  routed into the other project;
- a project over its quota gets "out of resources" (0xA700) for what does not fit, never a success the archive
  cannot honour, and the other project's images all archive in the same run;
- an acknowledged object the quota has no room for after all waits in the spool (across a restart) and is
  archived once the quota is raised; the other project's objects of the same group are archived at once."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select, update

from conftest import bearer, token_for, web_client
from helpers import form_post
from imaging_support import make_project, write_corpus
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.errors import Invalid
from strongroom.imaging.models import ImportBatch, ImportedInstance
from strongroom.projects.models import Project, ProjectSetting
from support.live import free_port
from test_imaging_destination import dicom_serve, wait_for, wait_listening

pytestmark = pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="dcmtk (storescu) not installed")

SENDER = "SCANNER1"
SENDERS = [{"ae_title": SENDER, "address": "127.0.0.1"}]
FAST = {"STRONGROOM_IMAGING__REFRESH_SECONDS": "0.3"}


def project_id(hub, slug: str):
    with hub.sessions() as s:
        return s.scalar(select(Project.id).where(Project.slug == slug))


def archived(hub, slug: str) -> int:
    with hub.sessions() as s:
        return len(s.scalars(select(ImportedInstance.id).join(Project, Project.id == ImportedInstance.project_id)
                             .where(Project.slug == slug)).all())


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def events(hub, action: str) -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def associate(port: int, called: str):
    ae = AE(ae_title=SENDER)
    ae.dimse_timeout = ae.network_timeout = 120  # a loaded test machine's fsyncs can take seconds
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", port, ae_title=called)


def send(port: int, called: str, files: list[Path]) -> list[int]:
    assoc = associate(port, called)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    finally:
        assoc.release()


def put_row(hub, slug: str, key: str, value) -> None:
    """A setting written straight into the database (as rows from before the check, or a lost race, are)."""
    with transaction(hub.sessions) as s:
        project = s.scalars(select(Project).where(Project.slug == slug)).one()
        row = s.get(ProjectSetting, (project.id, key))
        if row is None:
            s.add(ProjectSetting(project_id=project.id, key=key, value=value, changed_by=project.pi_id))
        else:
            row.value = value


def spooled(settings, hub, slug: str) -> list[Path]:
    return list((settings.var_dir / "dicom-spool" / str(project_id(hub, slug))).rglob("*.json"))


# -- the port squat --------------------------------------------------------------------------------------
def test_a_port_or_ae_title_another_project_holds_is_refused_at_the_api_and_in_the_form(hub, people, client) -> None:
    alice, bob = people("alice"), people("bob")
    port = free_port()
    make_project(hub, "lung", "alice", destination={"ae_title": "LUNG_AE", "port": port}, senders=SENDERS)
    make_project(hub, "heart", "bob")
    tok = bearer(token_for(hub, bob))

    def put(value):
        return client.put("/api/v1/projects/heart/settings/dicom_destination", headers=tok, json={"value": value})

    for value, says in (({"ae_title": "HEART_AE", "port": port}, "already used by another DICOM destination"),
                        ({"ae_title": "LUNG_AE", "port": port}, "already used by another DICOM destination"),
                        ({"ae_title": "lung_ae", "port": free_port()}, "AE title 'lung_ae' is already used"),
                        ({"ae_title": "HEART_AE", "port": 8000}, "used by a service of this hub"),  # the web port
                        ({"ae_title": "HEART_AE", "port": 2222}, "used by a service of this hub")):  # SFTP's
        r = put(value)
        assert r.status_code == 422, (value, r.text)
        assert says in r.json()["detail"], r.json()
        assert "lung" not in r.text.replace("lung_ae", "")  # never says which project holds it
    with hub.sessions() as s:
        assert s.get(ProjectSetting, (project_id(hub, "heart"), "dicom_destination")) is None
    # the form says the same, and stores nothing
    page = form_post(web_client(client.app, hub, bob), "/projects/heart/imaging/destination",
                     {"ae_title": "HEART_AE", "port": str(port)})
    assert page.status_code == 422 and "already used by another DICOM destination" in page.text
    with hub.sessions() as s:
        assert s.get(ProjectSetting, (project_id(hub, "heart"), "dicom_destination")) is None
    # a port and AE title of its own: fine; and a project may save its own destination again
    assert put({"ae_title": "HEART_AE", "port": free_port()}).status_code == 200
    r = client.put("/api/v1/projects/lung/settings/dicom_destination", headers=bearer(token_for(hub, alice)),
                   json={"value": {"ae_title": "LUNG_CT", "port": port}})
    assert r.status_code == 200, r.text


def test_two_projects_cannot_both_take_a_port_in_a_race(hub, people) -> None:
    """The check holds a lock until the change commits: a second project's check for the same port waits for the
    first change and then sees it (PostgreSQL: an advisory lock; SQLite: the write lock)."""
    from strongroom.imaging.settings import check_destination

    people("alice")
    people("bob")
    make_project(hub, "lung", "alice")
    make_project(hub, "heart", "bob")
    lung, heart = project_id(hub, "lung"), project_id(hub, "heart")
    port = free_port()
    outcome: list[object] = []

    def heart_takes_it() -> None:
        try:
            with transaction(hub.sessions) as s:
                check_destination(s, heart, {"ae_title": "HEART_AE", "port": port})
                pi = s.get(Project, heart).pi_id
                s.add(ProjectSetting(project_id=heart, key="dicom_destination",
                                     value={"ae_title": "HEART_AE", "port": port}, changed_by=pi))
            outcome.append("stored")
        except Invalid as exc:
            outcome.append(exc)

    with transaction(hub.sessions) as s:
        check_destination(s, lung, {"ae_title": "LUNG_AE", "port": port})
        pi = s.get(Project, lung).pi_id
        s.add(ProjectSetting(project_id=lung, key="dicom_destination", value={"ae_title": "LUNG_AE", "port": port},
                             changed_by=pi))
        s.flush()
        racer = threading.Thread(target=heart_takes_it)
        racer.start()
        racer.join(1.5)
        assert racer.is_alive() and not outcome  # waits for this change to commit
    racer.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], Invalid), outcome
    with hub.sessions() as s:
        ports = [v["port"] for v in s.scalars(select(ProjectSetting.value)
                                              .where(ProjectSetting.key == "dicom_destination"))]
    assert ports == [port]


def test_a_port_claimed_by_two_projects_starts_neither_and_never_misroutes(hub, people, settings, tmp_path) -> None:
    for name in ("alice", "bob", "carol"):
        people(name)
    port, other, brain_port = free_port(), free_port(), free_port()
    # heart's row is the older one: the old destination started it first and lung's scanner archived into heart
    make_project(hub, "heart", "bob", destination={"ae_title": "LUNG_AE", "port": port}, senders=SENDERS)
    make_project(hub, "lung", "alice", destination={"ae_title": "LUNG_AE", "port": port}, senders=SENDERS)
    make_project(hub, "brain", "carol", destination={"ae_title": "BRAIN_AE", "port": brain_port}, senders=SENDERS)
    files = sorted(write_corpus(tmp_path / "in", patients=1, studies=1, series=1, instances=3))
    paths = [tmp_path / "in" / f for f in files]
    with dicom_serve(settings, brain_port, **FAST) as proc:
        time.sleep(1.5)  # several refreshes: still nobody on the disputed port
        assert not listening(port)
        assert not associate(port, "LUNG_AE").is_established
        wait_for(lambda: len(events(hub, "imaging.destination.not_started")) == 2, what="the conflict's audit events")
        audited = events(hub, "imaging.destination.not_started")
        assert {e.project_id for e in audited} == {project_id(hub, "lung"), project_id(hub, "heart")}
        for e in audited:  # neither project learns which other project claims its port
            assert e.outcome == "denied" and e.details["port"] == port
            assert "lung" not in str(e.details) and "heart" not in str(e.details)
        # the operator moves heart away: lung's destination starts on its port, heart's on the new one
        put_row(hub, "heart", "dicom_destination", {"ae_title": "HEART_AE", "port": other})
        wait_listening(port, proc)
        wait_listening(other, proc)
        assert send(port, "LUNG_AE", paths[:2]) == [0, 0]
        wait_for(lambda: archived(hub, "lung") == 2, what="lung's images archived")
        # a clash that appears while lung's destination runs (a row written around the check): it stops too
        put_row(hub, "heart", "dicom_destination", {"ae_title": "HEART_AE", "port": port})
        wait_for(lambda: not listening(port), what="the disputed port to close")
        assert not listening(other)
        assert not associate(port, "LUNG_AE").is_established
        time.sleep(1)
        assert not listening(port)
        log = (settings.var_dir / "dicom-serve.log").read_text()
    assert archived(hub, "heart") == 0 and archived(hub, "lung") == 2  # nothing of lung's scanner in heart
    assert "dicom.destination_conflict" in log


# -- the quota -------------------------------------------------------------------------------------------
def test_a_project_over_its_quota_gets_out_of_resources_and_another_projects_images_all_archive(
        hub, people, settings, tmp_path) -> None:
    people("alice")
    people("bob")
    lung_port, heart_port = free_port(), free_port()
    make_project(hub, "lung", "alice", destination={"ae_title": "LUNG_AE", "port": lung_port}, senders=SENDERS)
    make_project(hub, "heart", "bob", destination={"ae_title": "HEART_AE", "port": heart_port}, senders=SENDERS)
    lung_files = write_corpus(tmp_path / "lung", patients=2, studies=2, series=1, instances=10)  # 40
    heart_files = write_corpus(tmp_path / "heart", patients=1, studies=2, series=1, instances=4)  # 8
    one = max(len(v) for v in lung_files.values())
    quota = 5 * one  # lung holds about five of its objects
    with transaction(hub.sessions) as s:
        s.execute(update(Project).where(Project.slug == "lung").values(quota_bytes=quota))
    statuses: dict[str, list[int]] = {}

    def sender(slug: str, port: int, called: str) -> None:
        statuses[slug] = send(port, called, sorted((tmp_path / slug).glob("*.dcm")))

    with dicom_serve(settings, lung_port, **FAST) as proc:
        wait_listening(heart_port, proc)
        lung = threading.Thread(target=sender, args=("lung", lung_port, "LUNG_AE"))
        lung.start()
        time.sleep(0.3)
        sender("heart", heart_port, "HEART_AE")
        lung.join(120)
        acknowledged = statuses["lung"].count(0)
        # the other project: every image acknowledged and archived, in the same run
        assert statuses["heart"] == [0] * len(heart_files)
        wait_for(lambda: archived(hub, "heart") == len(heart_files), what="heart's images archived")
        # lung: a success only for what fits; out of resources (0xA700) for the rest, not a success
        assert 1 <= acknowledged <= 5, statuses["lung"]
        assert set(statuses["lung"]) <= {0x0000, 0xA700}
        assert statuses["lung"].count(0xA700) == len(lung_files) - acknowledged
        wait_for(lambda: archived(hub, "lung") == acknowledged, what="lung's acknowledged images archived")
        wait_for(lambda: not spooled(settings, hub, "lung") and not spooled(settings, hub, "heart"),
                 what="the spool to empty")
    with hub.sessions() as s:
        project = s.scalars(select(Project).where(Project.slug == "lung")).one()
        assert project.used_bytes <= project.quota_bytes
        batch = s.scalars(select(ImportBatch).where(ImportBatch.project_id == project.id)).one()
        assert batch.rejected == len(lung_files) - acknowledged and batch.archived == acknowledged
        assert "the project's storage quota is full" in batch.reasons


def test_acknowledged_objects_without_quota_wait_in_the_spool_until_it_is_raised(hub, people, settings,
                                                                                  tmp_path) -> None:
    """Objects acknowledged while the quota had room, which another channel then used up: the objects that fit
    are archived, the others wait in the spool (audited, across a restart) and are archived once the quota is
    raised; the other project's objects of the same group are archived at once."""
    people("alice")
    people("bob")
    lung_port, heart_port = free_port(), free_port()
    make_project(hub, "lung", "alice", destination={"ae_title": "LUNG_AE", "port": lung_port}, senders=SENDERS)
    make_project(hub, "heart", "bob", destination={"ae_title": "HEART_AE", "port": heart_port}, senders=SENDERS)
    lung_files = write_corpus(tmp_path / "lung", patients=1, studies=2, series=1, instances=3)  # 6
    write_corpus(tmp_path / "heart", patients=1, studies=2, series=1, instances=2)  # 4
    one = max(len(v) for v in lung_files.values())
    # objects wait, unverified, while senders are connected: both projects' objects reach the archiver together
    env = {**FAST, "STRONGROOM_IMAGING__RECEIVE_BACKLOG": "1000"}
    with dicom_serve(settings, lung_port, **env) as proc:
        wait_listening(heart_port, proc)
        lung_assoc, heart_assoc = associate(lung_port, "LUNG_AE"), associate(heart_port, "HEART_AE")
        assert lung_assoc.is_established and heart_assoc.is_established
        for f in sorted((tmp_path / "lung").glob("*.dcm")):
            assert lung_assoc.send_c_store(pydicom.dcmread(f)).Status == 0
        for f in sorted((tmp_path / "heart").glob("*.dcm")):
            assert heart_assoc.send_c_store(pydicom.dcmread(f)).Status == 0
        # meanwhile another channel (an upload, STOW-RS) leaves lung room for two and a half of them
        with transaction(hub.sessions) as s:
            s.execute(update(Project).where(Project.slug == "lung").values(quota_bytes=2 * one + one // 2))
        time.sleep(1)  # the destination reads the quota again
        lung_assoc.release()
        heart_assoc.release()
        wait_for(lambda: archived(hub, "heart") == 4, timeout=120, what="heart's objects archived")
        wait_for(lambda: archived(hub, "lung") == 2, what="the lung objects that fit archived")
        wait_for(lambda: events(hub, "imaging.import.waiting_for_quota"), what="the waiting audited")
        time.sleep(1.5)
        assert archived(hub, "lung") == 2 and len(spooled(settings, hub, "lung")) == 4  # kept, not dropped
        assert not spooled(settings, hub, "heart")
    [event] = events(hub, "imaging.import.waiting_for_quota")
    assert event.project_id == project_id(hub, "lung") and event.details["objects"] == 4
    log = (settings.var_dir / "dicom-serve.log").read_text()
    assert "dicom.archive_parked" not in log
    # a restart finds them in the spool and they go on waiting
    log_path = settings.var_dir / "dicom-serve.log"
    with dicom_serve(settings, lung_port, **FAST):
        wait_for(lambda: log_path.read_text().count("dicom.waiting_for_quota") == 2, what="waiting again")
        assert archived(hub, "lung") == 2 and len(spooled(settings, hub, "lung")) == 4
        # the quota is raised: every acknowledged object is archived, nothing is left in the spool
        with transaction(hub.sessions) as s:
            s.execute(update(Project).where(Project.slug == "lung").values(quota_bytes=100 * one))
        wait_for(lambda: archived(hub, "lung") == 6, what="the waiting objects archived")
        wait_for(lambda: not spooled(settings, hub, "lung"), what="the spool to empty")
    with hub.sessions() as s:
        project = s.scalars(select(Project).where(Project.slug == "lung")).one()
        assert project.used_bytes <= project.quota_bytes and project.reserved_bytes == 0
        assert sum(b.archived for b in s.scalars(select(ImportBatch).where(ImportBatch.project_id == project.id))) == 6
