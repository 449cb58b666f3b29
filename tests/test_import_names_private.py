"""Names that come with imported data are never kept: hospital exports are often named by patient
(``Tolvansson_Tolvan_19121212-1212/``), and an import batch is shown to every member with the import right and
audited in the append-only log. `strongroom import dicom` (a folder, a ZIP) and STOW-RS (a part's filename,
Content-Location, description, its own media type) are run for real with a personnummer and a patient's name in
every name they carry; then every column of every table (the audit log included), the API's and the pages'
answers and the server's log output are searched for them. The batch names its source by kind and size and a
rejected file by its position; an error message's quoted values (pydicom's, the OS's) are masked."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom import config as pydicom_config
from pydicom.valuerep import DA, DSfloat
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from imaging_support import make_project, ultrasound, write_corpus
from strongroom import models
from strongroom.db import Base
from strongroom.imaging import bulk, pipeline, service, synthetic
from strongroom.imaging.models import ImportBatch
from strongroom.imaging.settings import to_engine
from support.live import free_port, serving

PNR = "19121212-1212"  # the Tax Agency's test personnummer (Tolvan Tolvansson)
NEEDLES = ["121212-1212", "191212121212", "tolvansson"]  # (the 10-digit form is in the 12-digit one)
EXPORT = f"Tolvansson_Tolvan_{PNR}"
# a Part 10 preamble and a Transfer Syntax element whose value runs past the end: a DeidError
DAMAGED = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f" + b"1" * 10


@pytest.fixture
def lung(hub, people):
    alice = people("alice")
    make_project(hub, "lung", "alice", profile={"retain_longitudinal": "modified"})
    return alice


def _text(value: object) -> str:
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _found(hub, texts: dict[str, str]) -> dict[str, list[str]]:
    """Where any needle is (in any case): every column of every row of every table (the audit log's included,
    as ``tests/test_retention_traces.py`` walks them), and the named texts."""
    models.load_all()
    hits: dict[str, list[str]] = {}
    with hub.sessions() as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(select(table)).mappings():
                for column, value in row.items():
                    text = _text(value).lower() if value is not None else ""
                    found = [n for n in NEEDLES if n in text]
                    if found:
                        action = f" ({row['action']})" if table.name == "audit_events" else ""
                        hits.setdefault(f"{table.name}.{column}{action}", []).extend(found)
    for name, text in texts.items():
        found = [n for n in NEEDLES if n in text.lower()]
        if found:
            hits[name] = found
    return hits


def _shown(app, hub, alice) -> dict[str, str]:
    """What members see of the project's imports: the API's answers and the Imaging pages."""
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    h = bearer(token_for(hub, alice))
    texts = {url: c.get(url, headers=h).text for url in (
        "/api/v1/projects/lung/imaging", "/api/v1/projects/lung/imaging/imports",
        "/api/v1/projects/lung/imaging/quarantine")}
    page = web_client(app, hub, alice)
    texts["/projects/lung/imaging"] = page.get("/projects/lung/imaging").text
    with hub.sessions() as s:
        for batch_id in s.scalars(select(ImportBatch.id)):
            for url in (f"/api/v1/projects/lung/imaging/imports/{batch_id}",):
                texts[url] = c.get(url, headers=h).text
            texts[f"/projects/lung/imaging/imports/{batch_id}"] = page.get(
                f"/projects/lung/imaging/imports/{batch_id}").text
    assert all(t for t in texts.values())
    return texts


def _export(folder: Path) -> None:
    """A hospital export named by its patient: good files, a damaged one, an ultrasound (quarantined), a
    note, in folders and files that carry the personnummer and the name."""
    write_corpus(folder / f"Tolvansson Tolvan/{PNR}", patients=1, studies=1, instances=2)
    (folder / f"{PNR}_CT_0001.dcm").write_bytes(DAMAGED)
    (folder / "Tolvansson_191212121212_US.dcm").write_bytes(ultrasound())
    (folder / f"remiss {PNR}.txt").write_text("not DICOM")


def _cli(settings, source: Path) -> subprocess.CompletedProcess[str]:
    env = {"STRONGROOM_VAR_DIR": str(settings.var_dir), "STRONGROOM_DATABASE_URL": settings.database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # a worktree's sources first, as in this process
    return subprocess.run([sys.executable, "-m", "strongroom.cli", "import", "dicom", str(source),
                           "--project", "lung", "--json", "--workers", "1"], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("packed", ["folder", "zip"])
def test_the_cli_import_keeps_no_folder_file_or_member_name(app, hub, lung, settings, tmp_path: Path,
                                                             packed: str) -> None:
    _export(tmp_path / EXPORT)
    source = tmp_path / EXPORT
    if packed == "zip":
        source = tmp_path / f"{EXPORT}.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for p in sorted((tmp_path / EXPORT).rglob("*")):
                if p.is_file():
                    zf.write(p, f"{EXPORT}/{p.relative_to(tmp_path / EXPORT)}")
    r = _cli(settings, source)
    assert r.returncode == 1, r.stderr  # the damaged file is rejected
    report = json.loads(r.stdout)
    assert (report["received"], report["archived"], report["quarantined"], report["rejected"], report["skipped"]) == (
        4, 2, 1, 1, 1), report

    assert _found(hub, _shown(app, hub, lung)) == {}
    with hub.sessions() as s:
        batch = s.get(ImportBatch, report["batch_id"])
        # the source by kind and size; the rejected file by its position in the order the import reads them
        # (sorted paths: "Tolvansson Tolvan/…" (2), "Tolvansson_…_US.dcm", "remiss …", then the damaged one)
        kind = "ZIP member" if packed == "zip" else "file"
        assert batch.origin == ("a ZIP file (5 members)" if packed == "zip" else "a folder (5 files)")
        rejected = [reason for reason in batch.reasons if reason.startswith(f"{kind} ")]
        assert len(rejected) == 1 and rejected[0].startswith(f"{kind} 1 of 5: not processable DICOM"), batch.reasons


def test_stow_keeps_no_part_name_description_location_or_type(app, hub, lung, capfd) -> None:
    """A STOW-RS request whose parts carry the patient in every header a client may send: a filename, a
    location, a description, a media type of their own. None of it is stored, answered, shown or logged."""
    good = synthetic.make_ct(3, 0, 1, 1, rows=32, columns=32)
    boundary = "b0und4ry"
    named = (f'Content-Disposition: attachment; filename="{EXPORT}.dcm"\r\n'
             f"Content-Location: file:///exports/Tolvansson/{PNR}/1.dcm\r\n"
             f"Content-Description: Tolvansson Tolvan {PNR}\r\n")
    parts = [("application/dicom", good), ("application/dicom", DAMAGED), ("application/dicom", ultrasound()),
             (f"application/x-tolvansson-{PNR}", good), (f"Tolvansson/{PNR}", good)]
    body = b"".join(f"--{boundary}\r\nContent-Type: {ctype}\r\n{named}\r\n".encode() + data + b"\r\n"
                    for ctype, data in parts) + f"--{boundary}--\r\n".encode()
    capfd.readouterr()
    with serving(app, free_port()) as url:
        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=body, timeout=120,
                       headers=bearer(token_for(hub, lung)) | {
                           "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 202, r.text
    failed = [f["00081197"]["Value"][0] for f in r.json()["00081198"]["Value"]]
    assert failed == [0xC000, 0xC000, 0xC000]  # the damaged part and the two of other types
    texts = _shown(app, hub, lung) | {"the STOW-RS answer": r.text}
    logged = capfd.readouterr()  # the request's and the pages' log lines
    texts |= {"stdout": logged.out, "stderr": logged.err}
    assert _found(hub, texts) == {}
    with hub.sessions() as s:
        batch = s.scalar(select(ImportBatch).where(ImportBatch.source == "stow"))
        assert batch.reasons["a part of type application/…, not application/dicom"] == 1
        assert batch.reasons["a part of type …, not application/dicom"] == 1
        assert any(reason.startswith("not processable DICOM") for reason in batch.reasons), batch.reasons


def _pydicom_errors() -> list[str]:
    """Real pydicom messages that quote the value they refused."""
    messages = []
    try:
        DA(PNR)
    except ValueError as exc:
        messages.append(str(exc))
    try:
        DSfloat("Tolvansson", validation_mode=pydicom_config.RAISE)
    except ValueError as exc:
        messages.append(str(exc))
    try:
        open(f"/nonexistent/{EXPORT}.dcm", "rb")  # noqa: SIM115 - it fails
    except OSError as exc:
        messages.append(str(exc))
    assert len(messages) == 3 and all(any(n in m.lower() for n in NEEDLES) for m in messages), messages
    return messages


def test_error_messages_that_quote_a_value_are_masked_wherever_a_reason_is_kept(hub, lung) -> None:
    """Every place a refusal's reason is kept (a batch's reasons, the audited refusal after an acknowledgement)
    masks what an error message quotes; the engine's own refusals of damaged copies of a file that holds the
    personnummer and the name in its values never carry them either."""
    project = bulk.project_by_slug(hub, "lung")
    batch_id = service.open_batch(hub, project, source="dicom", origin="CT_SCANNER_1 from 10.0.0.5")
    for n, message in enumerate(_pydicom_errors()):
        service.record_rejected(hub, batch_id, f"not processable DICOM: {message}")
        assert service.record_refused_after_acknowledgement(hub, batch_id, f"spool-{n}", f"leak scan failed: {message}")

    ds = pydicom.dcmread(io.BytesIO(synthetic.make_ct(1, 0, 1, 1, rows=16, columns=16)))
    ds.PatientName, ds.PatientID, ds.StudyDescription = "Tolvansson^Tolvan", PNR, f"Tolvansson {PNR}"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    original = buf.getvalue()
    at = original.index(b"Tolvansson")
    profile, secret = to_engine({}), b"s" * 32
    scratch = hub.settings.var_dir / "names-test"
    scratch.mkdir(parents=True)
    refused = set()
    for cut in [*range(at - 24, at + 40, 3), *range(132, 400, 17)]:  # truncated around the values, in the meta
        damaged = bytearray(original[:cut])
        if cut % 2:  # and a VR made of the value's own bytes
            damaged[at - 4:at - 2] = b"19"
        raw = scratch / f"{cut}.raw"
        raw.write_bytes(bytes(damaged))
        try:
            result = pipeline.process_file(str(raw), str(scratch / f"{cut}.dcm"), profile, secret)
        except Exception as exc:  # what the bulk import counts as "processing failed: <type>"
            result = {"error": f"processing failed: {type(exc).__name__}"}
        if "error" in result:
            refused.add(result["error"])
            service.record_rejected(hub, batch_id, result["error"])
    assert len(refused) > 3, refused
    service.close_batch(hub, batch_id)
    assert _found(hub, {}) == {}
    with hub.sessions() as s:
        reasons = s.get(ImportBatch, batch_id).reasons
    assert "not processable DICOM: Unable to convert … to … object" in reasons, reasons
