"""The DICOM destination (`strongroom dicom serve`) against real DICOM peers: dcmtk's storescu/echoscu
and pynetdicom as a client bound to other loopback addresses."""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from imaging_support import archived_bytes, instances, make_project, pydicom_bundled_files, ultrasound, write_corpus
from strongroom.audit.models import AuditEvent
from strongroom.imaging import keystore, service
from strongroom.imaging.models import ImportBatch, PseudonymEntry
from strongroom.imaging.settings import to_engine
from strongroom.imaging.verify import leak_scan
from strongroom.projects.models import Project
from support.live import free_port

pytestmark = pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="dcmtk (storescu) not installed")

MODIFIED = {"retain_longitudinal": "modified"}
AET = "LUNG_AE"
SENDER = "SCANNER1"


def _env(settings, **extra: str) -> dict[str, str]:
    return {"STRONGROOM_VAR_DIR": str(settings.var_dir), "STRONGROOM_DATABASE_URL": settings.database_url,
            "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(), "PATH": os.environ["PATH"],
            "STRONGROOM_IMAGING__PUBLISH_IDLE_SECONDS": "0.3", "STRONGROOM_IMAGING__REFRESH_SECONDS": "0.3",
            "STRONGROOM_LOG_LEVEL": "INFO", "PYTHONPATH": os.environ.get("PYTHONPATH", ""), **extra}


@contextmanager
def dicom_serve(settings, port: int, **extra: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "strongroom.cli", "dicom", "serve", "--workers", "2"],
                            env=_env(settings, **extra), stdout=subprocess.DEVNULL,
                            stderr=open(settings.var_dir / "dicom-serve.log", "ab"))  # noqa: SIM115
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dicom serve exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("the destination did not start listening")


def storescu(port: int, files: list[Path], *, aet: str = SENDER, aec: str = AET) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-v", "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
                          env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=300)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def destination(hub, people, settings):
    people("alice")
    port = free_port()
    make_project(hub, profile=MODIFIED, destination={"ae_title": AET, "port": port},
                 senders=[{"ae_title": SENDER, "address": "127.0.0.1"}])
    return port


def batches(hub) -> list[ImportBatch]:
    with hub.sessions() as s:
        return list(s.scalars(select(ImportBatch).order_by(ImportBatch.created_at)))


def published_count(hub) -> int:
    return len(instances(hub, "published"))


def test_storescu_sends_twice_consistent_pseudonyms_leak_free_valid_dicom(hub, settings, destination,
                                                                         tmp_path: Path) -> None:
    originals = write_corpus(tmp_path / "first", patients=2, studies=1, instances=3)
    write_corpus(tmp_path / "second", patients=2, studies=2, instances=3)
    second_only = sorted(p for p in (tmp_path / "second").iterdir() if "-st1-" in p.name)
    originals |= {p.name: p.read_bytes() for p in second_only}
    with dicom_serve(settings, destination):
        echo = subprocess.run(["echoscu", "-aet", SENDER, "-aec", AET, "127.0.0.1", str(destination)],
                              capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
        first = storescu(destination, sorted((tmp_path / "first").iterdir()))
        assert first.returncode == 0, first.stderr
        assert first.stderr.count("Received Store Response (Success)") == 6
        wait_for(lambda: published_count(hub) == 6, what="the first send to be published")
        second = storescu(destination, second_only)  # a separate association: a later study
        assert second.returncode == 0, second.stderr
        wait_for(lambda: published_count(hub) == 12, what="the second send to be published")

    published = instances(hub, "published")
    assert {i.published_version for i in published} == {1, 2}
    with hub.sessions() as s:
        batches = list(s.scalars(select(ImportBatch).order_by(ImportBatch.created_at)))
    assert [(b.source, b.state, b.received, b.archived) for b in batches] == [("dicom", "closed", 6, 6)] * 2
    assert batches[0].origin == f"{SENDER} from 127.0.0.1"

    # one pseudonym per patient across both sends; intervals between a patient's studies preserved
    patients: dict[str, set[str]] = {}
    for inst in published:
        patients.setdefault(inst.patient_pseudonym, set()).add(inst.study_date)
    assert len(patients) == 2 and all(len(dates) == 2 for dates in patients.values())
    for dates in patients.values():
        a, b = (time.strptime(d, "%Y%m%d") for d in sorted(dates))
        assert round((time.mktime(b) - time.mktime(a)) / 86400) == 37

    # every output passes the leak scan against its original and is valid DICOM (dciodvfy)
    profile = to_engine(MODIFIED)
    key = keystore.keystore_key(hub.settings)
    with hub.sessions() as s:
        originals_of = {keystore.unseal(key, r.sealed_original, keystore._context(r.project_id, r.kind, r.pseudonym))
                        .decode(): r.pseudonym for r in s.scalars(select(PseudonymEntry).where(
                            PseudonymEntry.kind == "SOPInstanceUID"))}
    by_sop = {i.sop_instance_uid: i for i in published}
    for name, data in originals.items():
        inst = by_sop[originals_of[pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID]]
        out = archived_bytes(hub, inst.file_id)
        assert leak_scan(data, out, profile) == [], name
    sample = tmp_path / "out.dcm"
    sample.write_bytes(archived_bytes(hub, published[0].file_id))
    check = subprocess.run(["dciodvfy", str(sample)], capture_output=True, text=True, timeout=60)
    assert not re.search(r"^Error", check.stderr, re.M), check.stderr


def _associate(port: int, *, aet: str = SENDER, aec: str = AET, bind: str = "127.0.0.1"):
    ae = AE(ae_title=aet)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", port, ae_title=aec, bind_address=(bind, 0))


def test_unlisted_senders_are_rejected_and_audited(hub, settings, destination) -> None:
    metrics_port = free_port()
    with dicom_serve(settings, destination, STRONGROOM_IMAGING__METRICS_PORT=str(metrics_port)):
        allowed = _associate(destination)
        assert allowed.is_established
        assert allowed.send_c_echo().Status == 0
        allowed.release()
        for kwargs, reason in (({"aet": "INTRUDER"}, 3), ({"bind": "127.0.0.2"}, 3), ({"aec": "OTHER_AE"}, 7)):
            assoc = _associate(destination, **kwargs)
            assert assoc.is_rejected, kwargs
            assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.diagnostic) == (1, reason), kwargs
        r = subprocess.run(["echoscu", "-aet", "INTRUDER", "-aec", AET, "127.0.0.1", str(destination)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "Rejected" in r.stderr
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert 'strongroom_dicom_associations_total{outcome="rejected",project="lung"} 4.0' in metrics
        assert 'strongroom_dicom_associations_total{outcome="accepted",project="lung"} 1.0' in metrics
    with hub.sessions() as s:
        denied = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "imaging.association.rejected")))
    assert len(denied) == 4
    assert {d.details["address"] for d in denied} == {"127.0.0.1", "127.0.0.2"}


def test_malformed_objects_get_failure_status_and_the_scp_keeps_serving(hub, settings, destination,
                                                                         tmp_path: Path) -> None:
    good = write_corpus(tmp_path / "good", patients=1, studies=1, instances=2)
    sample = next(iter(good.values()))
    rng = random.Random(5)
    body_start = sample.index(b"\x08\x00")  # first element after the file meta
    mutated = []
    for n in range(300):
        data = bytearray(sample)
        kind = n % 3
        if kind == 0:  # truncated somewhere in the data set
            data = data[:rng.randrange(body_start + 8, len(data) - 1)]
        elif kind == 1:  # a corrupted length or tag in the header
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(body_start, min(len(data), body_start + 1500))] = rng.randrange(256)
        else:  # garbage after a valid prefix
            cut = rng.randrange(body_start + 8, body_start + 1500)
            data = data[:cut] + bytes(rng.randrange(256) for _ in range(rng.randrange(8, 400)))
        mutated.append(bytes(data))

    fuzz = tmp_path / "fuzz"
    fuzz.mkdir()
    for n, data in enumerate(mutated):
        (fuzz / f"{n}.dcm").write_bytes(data)
    # pynetdicom sends a file's data set bytes as they are (no parsing), as a broken modality would
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with dicom_serve(settings, destination):
            ae = AE(ae_title=SENDER)
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", destination, ae_title=AET)
            assert assoc.is_established
            statuses = []
            for n in range(len(mutated)):
                rsp = assoc.send_c_store(fuzz / f"{n}.dcm")
                assert rsp, "the destination stopped answering"
                statuses.append(rsp.Status)
            assoc.release()
            failures = [s for s in statuses if s != 0]
            assert len(failures) > 100 and all(0xC000 <= s <= 0xCFFF for s in failures), set(failures)
            # still serving: a good send after the fuzzing works
            ok = storescu(destination, sorted((tmp_path / "good").iterdir()))
            assert ok.returncode == 0 and ok.stderr.count("(Success)") == 2, ok.stderr
            wait_for(lambda: any(b.state == "closed" and b.origin.startswith(SENDER) and b.archived
                                 for b in batches(hub)), what="archiving")
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    with hub.sessions() as s:
        rejected = sum(b.rejected for b in s.scalars(select(ImportBatch)))
    assert rejected == len(failures)
    # whatever the destination accepted was de-identified: no original patient id anywhere in the archive
    patient_id = pydicom.dcmread(io.BytesIO(sample)).PatientID.encode()
    for inst in instances(hub):
        if inst.file_id:
            assert patient_id not in archived_bytes(hub, inst.file_id)


def test_ultrasound_goes_to_quarantine_then_review(hub, settings, destination, tmp_path: Path) -> None:
    (tmp_path / "us.dcm").write_bytes(ultrasound())
    write_corpus(tmp_path / "ct", patients=1, studies=1, instances=1)
    with dicom_serve(settings, destination):
        r = storescu(destination, [tmp_path / "us.dcm", *sorted((tmp_path / "ct").iterdir())])
        assert r.returncode == 0, r.stderr
        wait_for(lambda: published_count(hub) == 1, what="the CT to be published")
    held = instances(hub, "quarantined")
    assert len(held) == 1 and held[0].modality == "US"
    assert any("ultrasound" in reason for reason in held[0].reasons)


def test_killing_the_destination_loses_nothing_acknowledged(hub, settings, destination, tmp_path: Path) -> None:
    write_corpus(tmp_path / "in", patients=2, studies=2, series=2, instances=10)  # 80 instances
    files = sorted((tmp_path / "in").iterdir())
    with dicom_serve(settings, destination) as proc:
        sender = subprocess.Popen(["storescu", "-v", "-aet", SENDER, "-aec", AET, "127.0.0.1", str(destination),
                                   *map(str, files)], env={**os.environ, "TCP_NODELAY": "1"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        log = ""
        assert sender.stderr is not None
        for line in sender.stderr:
            log += line
            if log.count("(Success)") >= 25:
                break
        workers = children_of(proc.pid)
        proc.send_signal(signal.SIGKILL)  # the importer dies mid-batch
        proc.wait(30)
        # not a timing assertion: a worker spawned just before the kill dies only once its start-up imports are
        # done (worker_init), which took over 10 s twice on a loaded box; an orphan would never go away
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
                 what="the pool workers to die with their parent")
        _, rest = sender.communicate(timeout=120)
        log += rest
    acknowledged = log.count("Received Store Response (Success)")
    assert 25 <= acknowledged < len(files)
    # at the moment of the kill every acknowledged object is in the database or waiting in the spool
    spooled = len(list((settings.var_dir / "dicom-spool").rglob("*.json")))
    assert len(instances(hub)) + spooled >= acknowledged
    # restart: whatever was acknowledged is finished from the spool and published
    with dicom_serve(settings, destination):
        wait_for(lambda: published_count(hub) >= acknowledged, what="recovery")
        # the recovered batches close once idle (publish_idle_seconds): waited for, not slept on
        wait_for(lambda: all(b.state == "closed" for b in batches(hub)), what="the recovered batches to close")
    assert published_count(hub) >= acknowledged
    with hub.sessions() as s:
        assert all(b.state == "closed" for b in s.scalars(select(ImportBatch)))
    # and a resend of everything completes the set without doubles
    with dicom_serve(settings, destination):
        r = storescu(destination, files)
        assert r.returncode == 0
        wait_for(lambda: published_count(hub) == len(files), what="the resend")


PROPOSE = {  # transfer syntax → the storescu option proposing it
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.2": "-xb",
}


def test_pydicom_test_files_through_storescu(hub, settings, destination, tmp_path: Path) -> None:
    """pydicom's bundled test files (many vendors, transfer syntaxes, sequences, private tags): what the
    destination accepts is leak-free against the original; what it refuses gets a failure status."""
    folder = tmp_path / "pydicom"
    folder.mkdir()
    originals: dict[str, bytes] = {}
    for path in pydicom_bundled_files("*.dcm"):
        data = Path(path).read_bytes()
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
            for _ in ds.iterall():
                pass
            sop = ds.SOPInstanceUID
        except Exception:  # only files pydicom itself reads
            continue
        if data[128:132] != b"DICM" or "DirectoryRecordSequence" in ds or sop in originals:
            continue
        originals[sop] = data
        (folder / Path(path).name).write_bytes(data)
    assert len(originals) > 30
    # storescu proposes uncompressed syntaxes unless told otherwise: one association per syntax group
    by_syntax: dict[str, list[str]] = {}
    for p in sorted(folder.iterdir()):
        ts = str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        by_syntax.setdefault(PROPOSE.get(ts, ""), []).append(str(p))
    with dicom_serve(settings, destination):
        log = ""
        for flag, paths in by_syntax.items():
            r = subprocess.run(["storescu", "-v", "--no-halt", *([flag] if flag else []), "-aet", SENDER, "-aec",
                                AET, "127.0.0.1", str(destination), *paths], env={**os.environ, "TCP_NODELAY": "1"},
                               capture_output=True, text=True, timeout=600)
            log += r.stderr
        acked = log.count("Received Store Response (Success)")
        refused = len(re.findall(r"Received Store Response \((?!Success)", log))
        (tmp_path / "storescu.log").write_text(log)
        assert acked > 25, log[-3000:]
        wait_for(lambda: len(instances(hub)) >= acked, what="archiving")
        # the destination still answers
        echo = subprocess.run(["echoscu", "-aet", SENDER, "-aec", AET, "127.0.0.1", str(destination)],
                              capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0
    key = keystore.keystore_key(hub.settings)
    with hub.sessions() as s:
        sop_of = {r.pseudonym: keystore.unseal(key, r.sealed_original, keystore._context(r.project_id, r.kind,
                                                                                        r.pseudonym)).decode()
                  for r in s.scalars(select(PseudonymEntry).where(PseudonymEntry.kind == "SOPInstanceUID"))}
        rejected = sum(b.rejected for b in s.scalars(select(ImportBatch)))
    assert rejected == refused
    profile = to_engine(MODIFIED)
    checked = 0
    for inst in instances(hub):
        original = originals[sop_of[inst.sop_instance_uid]]
        leaks = leak_scan(original, archived_bytes(hub, inst.file_id), profile)
        if inst.state != "quarantined":
            assert leaks == [], (inst.sop_class_uid, leaks)
        else:  # a leak is never released: it is held with the leak as a reason
            assert all(any(r.startswith("leak") for r in inst.reasons) for _ in leaks)
        checked += 1
    assert checked == acked


def test_an_aborted_association_still_closes_its_batch(hub, settings, destination, tmp_path: Path) -> None:
    originals = write_corpus(tmp_path / "in", patients=1, studies=1, instances=2)
    with dicom_serve(settings, destination):
        ae = AE(ae_title=SENDER)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", destination, ae_title=AET)
        assert assoc.is_established
        for data in originals.values():
            assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status == 0
        assoc.abort()  # the modality goes away without releasing
        wait_for(lambda: published_count(hub) == 2, what="publishing after the abort")
        # the close travels behind the batch's objects through the archiver: it may land in the next group
        wait_for(lambda: [(b.state, b.archived) for b in batches(hub)] == [("closed", 2)], what="the batch to close")


def _waiting_for_verification(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return next(float(line.split()[1]) for line in text.splitlines()
                if line.startswith("strongroom_dicom_waiting_for_verification "))


def test_objects_wait_for_verification_while_a_sender_is_connected_up_to_the_backlog(hub, settings, destination,
                                                                                   tmp_path: Path) -> None:
    """``imaging.receive_backlog = 3``: the first three objects are acknowledged and wait in the spool
    (nothing verified, nothing archived); each object past the backlog sends the oldest on; the association's
    end sends the rest, and every object is published."""
    originals = list(write_corpus(tmp_path / "in", patients=1, studies=1, instances=5).values())
    metrics = free_port()
    with dicom_serve(settings, destination, STRONGROOM_IMAGING__RECEIVE_BACKLOG="3",
                     STRONGROOM_IMAGING__METRICS_PORT=str(metrics)):
        ae = AE(ae_title=SENDER)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", destination, ae_title=AET)
        assert assoc.is_established
        for data in originals[:3]:
            assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status == 0
        wait_for(lambda: _waiting_for_verification(metrics) == 3, what="three objects held back")
        assert instances(hub) == []  # acknowledged (durable in the spool), none verified
        assert len(list((settings.var_dir / "dicom-spool").rglob("*.json"))) == 3
        for data in originals[3:]:
            assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status == 0
        wait_for(lambda: len(instances(hub)) == 2 and _waiting_for_verification(metrics) == 3,
                 what="the two oldest objects past the backlog archived")
        assoc.release()
        wait_for(lambda: published_count(hub) == 5, what="every object published once the sender left")
        assert _waiting_for_verification(metrics) == 0
        wait_for(lambda: [(b.state, b.archived) for b in batches(hub)] == [("closed", 5)], what="the batch to close")


def test_acknowledged_on_receipt_then_de_identified_refusals_reported_and_recovered_after_a_kill(
        hub, settings, destination, tmp_path: Path) -> None:
    """``imaging.acknowledge = "received"`` (with a backlog holding everything while the sender is connected):
    each object is acknowledged once its original is durable in the spool, before any de-identification, also
    one the engine cannot process; killed while the originals wait, the destination finishes them at its next
    start (in the default mode: a site may switch), where the unprocessable one is counted as rejected in the
    import report and a torn original (never acknowledged) is dropped."""
    originals = list(write_corpus(tmp_path / "in", patients=1, studies=1, instances=4).values())
    sample = originals[0]
    body_start = sample.index(b"\x08\x00")  # first element after the file meta
    # a data set that ends inside an element's header: the engine refuses it (a failure status in the default mode)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(sample[:body_start + 30])
    metrics = free_port()
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's data set bytes as they are, as a broken modality would
    try:
        with dicom_serve(settings, destination, STRONGROOM_IMAGING__ACKNOWLEDGE="received",
                         STRONGROOM_IMAGING__RECEIVE_BACKLOG="100",
                         STRONGROOM_IMAGING__METRICS_PORT=str(metrics)) as proc:
            ae = AE(ae_title=SENDER)
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", destination, ae_title=AET)
            assert assoc.is_established
            for n, data in enumerate(originals):
                (tmp_path / f"{n}.dcm").write_bytes(data)
                assert assoc.send_c_store(tmp_path / f"{n}.dcm").Status == 0
            assert assoc.send_c_store(broken).Status == 0  # acknowledged on receipt
            wait_for(lambda: _waiting_for_verification(metrics) == 5, what="five originals held back")
            spool = settings.var_dir / "dicom-spool"
            held = sorted(spool.rglob("*.raw"))
            assert len(held) == 5 and all(p.stat().st_size == int(p.stem.rpartition("_")[2]) for p in held)
            assert not list(spool.rglob("*.dcm")) and not list(spool.rglob("*.json"))  # nothing de-identified yet
            assert instances(hub) == []
            workers = children_of(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
                     what="the pool workers to die with their parent")
            assoc.abort()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    torn = held[0].with_name(f"{'f' * 32}_{held[0].stat().st_size + 1000}.raw")  # its fsyncs never completed
    torn.write_bytes(held[0].read_bytes())
    with dicom_serve(settings, destination):
        wait_for(lambda: published_count(hub) == 4, what="the recovered originals published")
        wait_for(lambda: all(b.state == "closed" for b in batches(hub)), what="the batch to close")
    [batch] = batches(hub)
    assert (batch.archived, batch.rejected, batch.quarantined, batch.duplicates) == (4, 1, 0, 0)
    assert any(reason.startswith("not processable DICOM") for reason in batch.reasons)
    with hub.sessions() as s:  # the sender holds a success status for it: audited, with its reason
        [refused] = s.scalars(select(AuditEvent).where(AuditEvent.action == "imaging.instance.refused")).all()
    assert refused.outcome == "denied" and refused.details["batch"] == batch.id
    assert refused.details["reason"].startswith("not processable DICOM") and refused.target.startswith("dicom-spool:")
    assert not list((settings.var_dir / "dicom-spool").rglob("*.raw"))  # the torn one dropped, the rest done
    patient_id = pydicom.dcmread(io.BytesIO(sample)).PatientID.encode()
    for inst in instances(hub):
        data = archived_bytes(hub, inst.file_id)
        assert patient_id not in data and not leak_scan(
            next(o for o in originals if pydicom.dcmread(io.BytesIO(o)).InstanceNumber
                 == pydicom.dcmread(io.BytesIO(data)).InstanceNumber), data, to_engine(MODIFIED))


@pytest.mark.parametrize("priority", ["low", "idle"])
def test_the_verification_pool_yields_the_cpu_to_the_receiving_process(hub, settings, destination, tmp_path: Path,
                                                                      priority: str) -> None:
    """``imaging.pool_priority``: the pool's workers run niced by default, in SCHED_IDLE when a site chooses
    "idle" (the archive worker and the receiving process keep the normal class), and objects are archived and
    published either way."""
    write_corpus(tmp_path / "in", patients=1, studies=1, instances=3)
    files = sorted((tmp_path / "in").iterdir())
    extra = {"STRONGROOM_IMAGING__POOL_PRIORITY": priority} if priority == "idle" else {}
    with dicom_serve(settings, destination, **extra) as proc:
        assert storescu(destination, files).returncode == 0
        wait_for(lambda: published_count(hub) == len(files), what="the objects published")
        classes = {}
        for pid in children_of(proc.pid):
            with contextlib.suppress(OSError):
                if "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text():
                    classes[pid] = (os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid))
        assert os.sched_getscheduler(proc.pid) == os.SCHED_OTHER
    workers = [c for c in classes.values() if c != (os.SCHED_OTHER, 0)]  # not the archive worker, resource tracker
    assert workers and (os.SCHED_OTHER, 0) in classes.values(), classes
    wanted = os.SCHED_IDLE if priority == "idle" else os.SCHED_OTHER
    assert all(policy == wanted and nice == 10 for policy, nice in workers), classes


def test_a_refusal_after_acknowledgement_is_counted_once_when_the_destination_finds_it_again(hub, people) -> None:
    """A crash between the refusal's commit and the spool file's deletion makes the next start refuse the same
    original again: it must not be counted (or audited) twice."""
    people("alice")
    make_project(hub)
    with hub.sessions() as s:
        project_id = s.scalar(select(Project.id).where(Project.slug == "lung"))
    batch_id = service.open_batch(hub, project_id, source="dicom", origin="T")
    spool_id = f"{'a' * 32}_1234"
    assert service.record_refused_after_acknowledgement(hub, batch_id, spool_id, "not processable DICOM: x",
                                                        nbytes=1234)
    assert not service.record_refused_after_acknowledgement(hub, batch_id, spool_id, "not processable DICOM: x",
                                                            nbytes=1234)
    assert service.record_refused_after_acknowledgement(hub, batch_id, f"{'b' * 32}_99", "other", nbytes=99)
    [batch] = batches(hub)
    assert (batch.received, batch.rejected, batch.bytes_received) == (2, 2, 1234 + 99)
    assert batch.reasons == {"not processable DICOM: x": 1, "other": 1}
    with hub.sessions() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "imaging.instance.refused")).all()
    assert sorted(e.target for e in events) == [f"dicom-spool:{'a' * 32}_1234", f"dicom-spool:{'b' * 32}_99"]


COMPRESSED = {  # pydicom's bundled files, one per standard compressed (or non-default) transfer syntax
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91", "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",
    "SC_rgb_rle.dcm": "1.2.840.10008.1.2.5", "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50", "JPEG-lossy.dcm": "1.2.840.10008.1.2.4.51",
    "SC_rgb_jpeg_gdcm.dcm": "1.2.840.10008.1.2.4.70", "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "SC_rgb_jls_lossy_sample.dcm": "1.2.840.10008.1.2.4.81", "image_dfl.dcm": "1.2.840.10008.1.2.1.99",
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",
}


@pytest.mark.parametrize("combine", [False, True], ids=["context-per-syntax", "combined-proposal"])
def test_compressed_syntaxes_are_accepted_and_pixel_data_kept_byte_for_byte(hub, settings, destination,
                                                                             tmp_path: Path, combine: bool) -> None:
    """Every standard compressed syntax is accepted as sent (the destination never asks for a
    decompressed copy, so a sender need not be able to decompress), de-identified without touching the
    pixel data, archived in the same syntax and leak-free. ``+C`` puts the file's syntax and the
    uncompressed ones in one presentation context: the destination must pick the file's."""
    from pydicom.data import get_testdata_file

    originals = {}
    for i, (name, ts) in enumerate(COMPRESSED.items()):
        ds = pydicom.dcmread(get_testdata_file(name))
        assert ds.file_meta.TransferSyntaxUID == ts
        # several are the same MR slice in other syntaxes: one SOP Instance UID each (pixel data untouched)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.{i}"
        ds.save_as(tmp_path / name, enforce_file_format=True)
        data = (tmp_path / name).read_bytes()
        originals[ds.SOPInstanceUID] = (name, data)
    with dicom_serve(settings, destination):
        for name, ts in COMPRESSED.items():
            r = subprocess.run(["storescu", "-v", PROPOSE[ts], *(["+C"] if combine else []), "-aet", SENDER,
                                "-aec", AET, "127.0.0.1", str(destination), str(tmp_path / name)],
                               env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0 and "Received Store Response (Success)" in r.stderr, (name, r.stderr)
            for before, after in re.findall(r"Converting transfer syntax: (.+) -> (.+)", r.stderr):
                assert before == after, (name, r.stderr)  # sent as it is in the file
        wait_for(lambda: len(instances(hub)) == len(COMPRESSED) and all(b.state == "closed" for b in batches(hub)),
                 what="archiving")
    key = keystore.keystore_key(hub.settings)
    with hub.sessions() as s:
        sop_of = {r.pseudonym: keystore.unseal(key, r.sealed_original, keystore._context(r.project_id, r.kind,
                                                                                        r.pseudonym)).decode()
                  for r in s.scalars(select(PseudonymEntry).where(PseudonymEntry.kind == "SOPInstanceUID"))}
    profile = to_engine(MODIFIED)
    seen = set()
    for inst in instances(hub):
        name, original = originals[sop_of[inst.sop_instance_uid]]
        archived = archived_bytes(hub, inst.file_id)
        before, after = pydicom.dcmread(io.BytesIO(original)), pydicom.dcmread(io.BytesIO(archived))
        # received and kept as sent; a deflated data set is written uncompressed (the scan reads what it vouches for)
        kept = "1.2.840.10008.1.2.1" if COMPRESSED[name] == "1.2.840.10008.1.2.1.99" else COMPRESSED[name]
        assert after.file_meta.TransferSyntaxUID == kept, name
        assert after.PixelData == before.PixelData == pydicom.dcmread(get_testdata_file(name)).PixelData, name
        assert after.PatientIdentityRemoved == "YES"
        assert leak_scan(original, archived, profile) == [], name
        assert not any(r.startswith("leak") for r in inst.reasons), (name, inst.reasons)
        seen.add(name)
    assert seen == set(COMPRESSED)


def test_dicom_and_sftp_servers_stop_with_status_3_once_the_hub_secret_is_rotated_away(hub, settings, destination,
                                                                                       tmp_path: Path) -> None:
    """After `admin rotate-secret`, nothing a server still holding the old secret does can be audited: `dicom
    serve` and `sftp serve` notice within seconds, stop listening and exit with status 3 (their supervisor
    restarts them); started with the current secret, they serve again."""
    from test_cli_and_ops import run_cli

    sftp_port = free_port()
    sftp = subprocess.Popen([sys.executable, "-m", "strongroom.cli", "sftp", "serve", "--port", str(sftp_port)],
                            env=_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    new_secret = "rotated-while-serving-" + "s" * 32
    try:
        with dicom_serve(settings, destination) as dicom:
            wait_listening(sftp_port, sftp)
            (tmp_path / "new.secret").write_text(new_secret)
            rotated = run_cli(settings, "admin", "rotate-secret", "--new-secret-file", str(tmp_path / "new.secret"))
            assert rotated.returncode == 0, rotated.stderr
            assert dicom.wait(120) == 3
            assert sftp.wait(120) == 3
    finally:
        if sftp.poll() is None:
            sftp.kill()
    assert "restart `strongroom sftp serve` with the current secret" in " ".join(sftp.communicate()[1].split())
    log = " ".join((settings.var_dir / "dicom-serve.log").read_text().split())  # the terminal's line breaks
    assert "dicom.stale_secret" in log and "restart `strongroom dicom serve` with the current secret" in log
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", destination)) != 0  # no longer acknowledging anything
    with dicom_serve(settings, destination, STRONGROOM_SECRET_KEY=new_secret):
        echo = subprocess.run(["echoscu", "-aet", SENDER, "-aec", AET, "127.0.0.1", str(destination)],
                              capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
