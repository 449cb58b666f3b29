"""C-MOVE destinations: who added an entry decides how far the hub trusts its host.

The operator's entries (``strongroom dicomweb move-destinations add`` on the hub host) are dialled as written: they
may name a Storage SCP on the hub's machine. A project's entries (the settings API, the project page, and every
entry saved before provenance was recorded) are resolved at each move: when any address is the hub's machine or its
internals the move is refused like an unknown destination (0xA801, audited, no association opened); otherwise the
checked address is dialled, never the name again. A project's change can neither mark an entry as the operator's
nor keep that mark on an entry it alters; at save time it is refused a name that already resolves inside.

The peers are real: the hub's DICOM destination (``strongroom dicom serve``), a pynetdicom Storage SCP as the move
destination and a pynetdicom C-MOVE SCU as the workstation. The name that resolves to loopback without being
spelled so is this machine's own host name (or another /etc/hosts name that does).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from helpers import form_post
from imaging_support import instances, make_project, write_corpus
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.config import NotOutside, internal_address, outside_addresses
from strongroom.db import transaction
from strongroom.dicomweb import service
from strongroom.dicomweb.settings import INTERNAL, KEY, MoveDestination, Undialable, dial_address
from strongroom.imaging import bulk
from strongroom.projects.models import Project, ProjectSetting
from support.live import free_port
from test_imaging_destination import _env, dicom_serve

AET, WS = "LUNG_AE", "WS1"  # the project's DICOM destination and its workstation (allowed to query/retrieve)
SUBNET = "10.213.0.0/16"  # the workspaces' subnet of the test settings (the default)
SUCCESS, MOVE_DESTINATION_UNKNOWN = 0x0000, 0xA801


def _loopback_name() -> str | None:
    """A host name of /etc/hosts that resolves to loopback only, though not spelled as loopback."""
    for name in (socket.gethostname(), socket.getfqdn(), "runsc", "vm"):
        try:
            found = {info[4][0] for info in socket.getaddrinfo(name, 104, socket.AF_INET, socket.SOCK_STREAM)}
        except OSError:
            continue
        if internal_address(name, SUBNET) is None and found and all(a.startswith("127.") for a in found):
            return name
    return None


def _outside_ipv4() -> str | None:
    """An IPv4 address of one of this machine's own interfaces that is not internal (e.g. eth0's), or None."""
    for _, interface in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:  # SIOCGIFADDR
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", interface.encode()[:15]))
            except OSError:
                continue
        address = socket.inet_ntoa(packed[20:24])
        if internal_address(address, SUBNET) is None:
            return address
    return None


LOOPBACK_NAME = _loopback_name()
OUTSIDE_IPV4 = _outside_ipv4()
needs_loopback_name = pytest.mark.skipif(LOOPBACK_NAME is None, reason="no /etc/hosts name resolves to loopback")


# -- real peers -----------------------------------------------------------------------------------------------------
@dataclass
class StorageScp:
    port: int
    connections: int = 0  # TCP connections opened to it
    associations: list[str] = field(default_factory=list)  # the calling AE titles of those accepted
    stored: list[str] = field(default_factory=list)  # SOP instance UIDs received


@contextmanager
def storage_scp(ae_title: str) -> Iterator[StorageScp]:
    """A Storage SCP listening on every IPv4 address of this machine (loopback and the interfaces)."""
    scp = StorageScp(free_port())
    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)

    def connected(_event: evt.Event) -> None:
        scp.connections += 1

    def accepted(event: evt.Event) -> None:
        scp.associations.append(str(event.assoc.requestor.ae_title).strip())

    def stored(event: evt.Event) -> int:
        scp.stored.append(str(event.request.AffectedSOPInstanceUID))
        return SUCCESS

    server = ae.start_server(("0.0.0.0", scp.port), block=False,
                             evt_handlers=[(evt.EVT_CONN_OPEN, connected), (evt.EVT_ACCEPTED, accepted),
                                           (evt.EVT_C_STORE, stored)])
    try:
        yield scp
    finally:
        server.shutdown()


def c_move(port: int, destination: str, study_uid: str) -> int:
    """The workstation's C-MOVE of one study; the final status (its C-STORE sub-operations all done by then)."""
    ae = AE(ae_title=WS)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    try:
        statuses = [int(status.Status) for status, _ in
                    assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove)
                    if "Status" in status]
    finally:
        assoc.release()
    return statuses[-1]


def move_cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "strongroom.cli", "dicomweb", "move-destinations", *args],
                          env=_env(settings), capture_output=True, text=True, timeout=120)


def write_entries(hub, entries: list[dict]) -> None:
    """Stored as a project's change saved them before provenance was recorded (or before its name moved)."""
    with transaction(hub.sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        s.merge(ProjectSetting(project_id=project.id, key=KEY, value=entries, changed_by=project.pi_id))


def stored_entries(hub) -> list[dict]:
    with hub.sessions() as s:
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        row = s.get(ProjectSetting, (project.id, KEY))
        return list(row.value) if row is not None else []


def events(hub, action: str) -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


@dataclass
class Lung:
    port: int  # its DICOM destination's
    study: str  # its one archived study's UID
    sops: list[str]  # that study's instances' UIDs
    pi: object  # alice


@pytest.fixture
def lung(hub, people, tmp_path) -> Lung:
    """The lung project: its destination's port, one archived study, downloads open, the workstation WS1 allowed
    to query and retrieve from loopback."""
    alice = people("alice")
    port = free_port()
    make_project(hub, "lung", "alice", profile={"retain_longitudinal": "modified"},
                 destination={"ae_title": AET, "port": port},
                 senders=[{"ae_title": WS, "address": "127.0.0.1", "query_retrieve": True}])
    write_corpus(tmp_path / "in", patients=1, studies=1, series=1, instances=2)
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), tmp_path / "in", workers=1)
    assert report.archived == 2
    with transaction(hub.sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        s.add(ProjectSetting(project_id=project.id, key="download_allowed", value=True, changed_by=project.pi_id))
    rows = instances(hub, "published")
    return Lung(port, rows[0].study_uid, sorted(r.sop_instance_uid for r in rows), alice)


# -- at use time ----------------------------------------------------------------------------------------------------
@needs_loopback_name
def test_a_project_entry_resolving_to_the_hub_is_refused_until_the_operator_vouches_for_it(hub, settings, lung
                                                                                            ) -> None:
    port, study, sops = lung.port, lung.study, lung.sops
    with storage_scp("HUBSIDE") as scp:
        write_entries(hub, [{"ae_title": "HUBSIDE", "host": LOOPBACK_NAME, "port": scp.port}])
        with dicom_serve(settings, port):
            assert c_move(port, "HUBSIDE", study) == MOVE_DESTINATION_UNKNOWN
            assert (scp.connections, scp.stored) == (0, [])  # never dialled
            (refused,) = events(hub, "dicom.retrieve.refused")
            assert refused.details == {"calling_ae": WS, "address": "127.0.0.1", "operation": "move",
                                       "destination": "HUBSIDE", "reason": INTERNAL}
            assert events(hub, "dicom.study.retrieved") == []  # nothing was read for it

            listed = move_cli(settings, "list", "-p", "lung")
            assert listed.stdout.strip() == f"HUBSIDE\t{LOOPBACK_NAME}:{scp.port}\tproject"
            # the operator, on the hub host: another port is a change (remove it first) ...
            other = move_cli(settings, "add", "HUBSIDE", LOOPBACK_NAME, str(scp.port + 1), "-p", "lung")
            assert other.returncode == 2 and "registered already" in other.stderr
            # ... the same entry again marks it the operator's, who may name a Storage SCP on the hub host
            vouched = move_cli(settings, "add", "HUBSIDE", LOOPBACK_NAME, str(scp.port), "-p", "lung")
            assert vouched.returncode == 0, vouched.stderr
            assert vouched.stdout.strip() == f"HUBSIDE\t{LOOPBACK_NAME}:{scp.port}\toperator"
            assert stored_entries(hub) == [{"ae_title": "HUBSIDE", "host": LOOPBACK_NAME, "port": scp.port,
                                            "operator": True}]
            assert c_move(port, "HUBSIDE", study) == SUCCESS
    assert scp.associations == [AET] and sorted(scp.stored) == sops
    (retrieved,) = events(hub, "dicom.study.retrieved")
    assert retrieved.details["destination"] == "HUBSIDE" and retrieved.details["instances"] == len(sops)
    (opened,) = [e for e in events(hub, "project.setting.opened") if e.target == f"setting:{KEY}"]
    assert opened.actor.startswith("cli:") and opened.details["after"][0]["operator"] is True


def test_internal_addresses_of_a_projects_entries_are_refused_at_each_move(hub, settings, lung) -> None:
    """Spellings the name check never saw (``127.1``, a decimal, the unspecified address): all refused, nothing
    dialled; the operator's own entry naming loopback is dialled."""
    port, study, sops = lung.port, lung.study, lung.sops
    with storage_scp("HUBSIDE") as scp:
        write_entries(hub, [{"ae_title": f"HUB{i}", "host": host, "port": scp.port}
                            for i, host in enumerate(("127.1", "2130706433", "0", "127.0.0.1"))]
                      + [{"ae_title": "OPERATORS", "host": "127.0.0.1", "port": scp.port, "operator": True}])
        with dicom_serve(settings, port):
            assert [c_move(port, f"HUB{i}", study) for i in range(4)] == [MOVE_DESTINATION_UNKNOWN] * 4
            assert scp.connections == 0
            assert c_move(port, "OPERATORS", study) == SUCCESS
    assert scp.associations == [AET] and sorted(scp.stored) == sops
    refused = events(hub, "dicom.retrieve.refused")
    assert [(e.details["destination"], e.details["reason"]) for e in refused] == [(f"HUB{i}", INTERNAL)
                                                                                  for i in range(4)]


@pytest.mark.skipif(OUTSIDE_IPV4 is None, reason="this machine has no address outside loopback")
def test_a_project_entry_outside_the_hub_is_dialled(app, hub, settings, lung) -> None:
    port, study, sops = lung.port, lung.study, lung.sops
    with storage_scp("WS1_STORE") as scp:
        with TestClient(app) as c:
            r = c.put(f"/api/v1/projects/lung/settings/{KEY}", headers=bearer(token_for(hub, lung.pi)),
                      json={"value": [{"ae_title": "WS1_STORE", "host": OUTSIDE_IPV4, "port": scp.port}]})
            assert r.status_code == 200, r.text
        with dicom_serve(settings, port):
            assert c_move(port, "WS1_STORE", study) == SUCCESS
    assert scp.associations == [AET] and sorted(scp.stored) == sops
    assert events(hub, "dicom.retrieve.refused") == []


# -- at save time: a project's change -------------------------------------------------------------------------------
def test_a_projects_change_cannot_mark_or_keep_an_entry_as_the_operators(app, hub, people) -> None:
    alice = people("alice")
    make_project(hub, "lung", "alice")
    operators = {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "operator": True}
    with transaction(hub.sessions) as s:  # the operator's path (the command line's)
        service.set_move_destinations(s, Actor.system("t"), "lung", [operators])
    url, headers = f"/api/v1/projects/lung/settings/{KEY}", bearer(token_for(hub, alice))
    outside = {"ae_title": "WS1_STORE", "host": "192.0.2.10", "port": 11112}
    with TestClient(app) as c:
        # the operator's entry is shown as such, and a project may keep it (unchanged) while adding its own
        listed = {x["key"]: x for x in c.get("/api/v1/projects/lung/settings", headers=headers).json()}
        assert listed[KEY]["value"] == [operators]
        r = c.put(url, json={"value": [operators, outside]}, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["value"] == [operators, outside]  # the project's own: no mark
        for forged in ([operators, outside | {"operator": True}],  # a new entry marked the operator's
                       [operators | {"port": 105}, outside],  # the operator's entry altered, mark kept
                       [operators | {"host": "192.0.2.11"}, outside]):  # even to an address outside
            r = c.put(url, json={"value": forged}, headers=headers)
            assert r.status_code == 422 and "only the operator" in r.json()["detail"], forged
        # altered without the mark it is the project's: loopback is refused
        r = c.put(url, json={"value": [operators | {"port": 105, "operator": False}, outside]}, headers=headers)
        assert r.status_code == 422 and "loopback" in r.json()["detail"]
        # removed by the project, it cannot come back marked
        assert c.put(url, json={"value": [outside]}, headers=headers).status_code == 200
        r = c.put(url, json={"value": [outside, operators]}, headers=headers)
        assert r.status_code == 422 and "only the operator" in r.json()["detail"]
    assert stored_entries(hub) == [outside]

    page = web_client(app, hub, alice)  # the project page's form: the mark ticked is refused, nothing stored
    r = form_post(page, f"/projects/lung/settings/{KEY}",
                  {"ae_title": "WS2_STORE", "host": "192.0.2.12", "port": "104", "operator": "on"})
    assert r.status_code == 422 and "only the operator" in r.text
    r = form_post(page, f"/projects/lung/settings/{KEY}", {"ae_title": "WS2_STORE", "host": "192.0.2.12",
                                                             "port": "104"})
    assert r.status_code == 303, r.text
    assert stored_entries(hub) == [outside, {"ae_title": "WS2_STORE", "host": "192.0.2.12", "port": 104}]


@needs_loopback_name
def test_a_project_may_not_save_a_name_that_resolves_to_the_hub(app, hub, people) -> None:
    alice = people("alice")
    make_project(hub, "lung", "alice")
    url, headers = f"/api/v1/projects/lung/settings/{KEY}", bearer(token_for(hub, alice))
    with TestClient(app) as c:
        for host, why in ((LOOPBACK_NAME, "resolves to an address that is loopback"),
                          ("127.1", "resolves to an address that is loopback"),
                          ("0", "resolves to an address that is unspecified"), ("127.0.0.1", "is loopback"),
                          ("10.213.4.2", "is inside the workspaces' subnet")):
            r = c.put(url, json={"value": [{"ae_title": "X", "host": host, "port": 104}]}, headers=headers)
            assert r.status_code == 422 and why in r.json()["detail"], (host, r.text)
        # a name that does not resolve (yet) is saved: each move resolves it again
        r = c.put(url, json={"value": [{"ae_title": "X", "host": "ws1.invalid", "port": 104}]}, headers=headers)
        assert r.status_code == 200, r.text


# -- the checks themselves ------------------------------------------------------------------------------------------
def test_resolving_and_checking_every_address() -> None:
    for host in ("127.1", "2130706433", "0", "::1", "169.254.169.254", "10.213.0.1", "localhost"):
        with pytest.raises(NotOutside):
            outside_addresses(host, 104, SUBNET)
    if LOOPBACK_NAME is not None:
        with pytest.raises(NotOutside, match="resolves to an address that is loopback"):
            outside_addresses(LOOPBACK_NAME, 104, SUBNET)
    assert outside_addresses("192.0.2.10", 104, SUBNET) == ["192.0.2.10"]
    assert outside_addresses("ws1.invalid", 104, SUBNET) == []
    # what a move dials: the operator's entry as written; a project's entry by a checked address, or not at all
    assert dial_address(MoveDestination(ae_title="A", host="127.0.0.1", port=104, operator=True), SUBNET) \
        == "127.0.0.1"
    assert dial_address(MoveDestination(ae_title="A", host="192.0.2.10", port=104), SUBNET) == "192.0.2.10"
    for host in ("127.0.0.1", "ws1.invalid", *([LOOPBACK_NAME] if LOOPBACK_NAME else [])):
        with pytest.raises(Undialable):
            dial_address(MoveDestination(ae_title="A", host=host, port=104), SUBNET)
