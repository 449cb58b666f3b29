"""One patient is one pseudonym and one date shift whichever way a clinic writes their personnummer.

The pure canonical key (every written form, the Luhn digit, samordningsnummer, the century of a 10-digit form
from its separator and the date it was written, padding); the project key's pseudonym scheme; two objects of
one patient in two forms through the real DICOM engine; a real strategy run on a clinical table of the same
project (its pseudonyms and date shifts are the DICOM import's); and a project that pseudonymised patients
before schemes existed keeps its pseudonyms (migration 0039, on SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
from collections import Counter
from pathlib import Path

import polars as pl
import pydicom
import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from conftest import bearer, token_for
from imaging_support import instances, make_project
from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import hub_keys
from strongroom.archive.models import ArchiveFile
from strongroom.audit import service as audit
from strongroom.audit.service import Actor
from strongroom.db import transaction, utcnow
from strongroom.imaging import bulk, keystore, synthetic
from strongroom.imaging.deid import Pseudonymizer, deidentify
from strongroom.imaging.deid.pseudonyms import AS_RECEIVED, CANONICAL, scheme_key
from strongroom.imaging.models import ImagingProject, ImportBatch, ImportedInstance
from strongroom.imaging.settings import to_engine
from strongroom.jobs.runner import Runner
from strongroom.migrate import alembic_config
from strongroom.patient_ids import canonical_patient_key
from strongroom.strategies.models import StrategyRun, StrategyVersion

# 1985-01-01, serial 123, Luhn digit 6; its samordningsnummer (day + 60) has the Luhn digit 3
CANONICAL_PNR, CANONICAL_SAMORDNING = "198501011236", "198501611233"
PNR_FORMS = ["198501011236", "19850101-1236", "8501011236", "850101-1236", " 850101-1236 ", "850101 1236",
             "850101 - 1236", "19850101 1236", "850101\u20131236", "850101\u22121236", "\t198501011236\n",
             "8501011236\0", "\0 850101-1236 \0", "\u00a0850101-1236\u00a0"]
SAMORDNING_FORMS = ["198501611233", "19850161-1233", "8501611233", "850161-1233", " 850161 - 1233 "]
IN_2024 = dt.date(2024, 5, 1)
MODIFIED = {"retain_longitudinal": "modified"}  # dates shifted per patient
SECRET = b"a project secret of 32 bytes!!!!"


# ------------------------------------------------------------------------------- the canonical key (pure)
@pytest.mark.parametrize("written", PNR_FORMS)
def test_every_written_form_of_a_personnummer_is_its_12_digits(written: str) -> None:
    assert canonical_patient_key(written, IN_2024) == CANONICAL_PNR


@pytest.mark.parametrize("written", SAMORDNING_FORMS)
def test_every_written_form_of_a_samordningsnummer_is_its_12_digits(written: str) -> None:
    assert canonical_patient_key(written, IN_2024) == CANONICAL_SAMORDNING


@pytest.mark.parametrize(("written", "written_on", "key"), [
    # 1912-12-12: under 100 ('-') until 2011, 100 or older ('+') from the year they turn 100
    ("121212-1212", dt.date(2011, 12, 31), "191212121212"),
    ("121212+1212", dt.date(2012, 1, 1), "191212121212"),
    ("121212+1212", dt.date(2030, 6, 1), "191212121212"),
    ("1212121212", dt.date(2011, 6, 1), "191212121212"),  # no sign: written as with '-'
    # the same ten digits with '-' from 2012 on: a child born in 2012
    ("121212-1212", dt.date(2012, 1, 1), "201212121212"),
    ("1212121212", dt.date(2024, 6, 1), "201212121212"),
    ("121212+1212", dt.date(2011, 6, 1), "181212121212"),
    # a 29 February exists in 2000, not in 1900: the century decides whether the date is real
    ("000229-1235", IN_2024, "200002291235"),
    ("000229+1235", IN_2024, "000229+1235"),
    # 12 digits name their century: the reference date and the sign change nothing
    ("19121212+1212", dt.date(2012, 1, 1), "191212121212"),
    ("20121212-1212", dt.date(2099, 1, 1), "201212121212"),
])
def test_the_century_of_a_10_digit_form_follows_its_separator_and_the_year_written(
        written: str, written_on: dt.date, key: str) -> None:
    assert canonical_patient_key(written, written_on) == key


@pytest.mark.parametrize("written", [
    "850101-1234", "198501011234", "8501011234", "850161-1234",  # a wrong Luhn digit
    "851301-1232", "850100-1237", "850192-1236",  # Luhn right, no such date (month 13, day 0, day 92 - 60)
    "21850101-1236", "17850101-1236",  # no such century
    "MRN7340000", "AB-123456", "1234567", "12345678901234", "01018512345",  # MRNs, a Norwegian number
    "19850101-1236X", "850101-1236 850101-1236", "850101\n1236", "850101--1236", "850101/1236",
    "\uff18\uff15\uff10\uff11\uff10\uff11-\uff11\uff12\uff13\uff16",  # full-width digits
    "", "   ",
])
def test_anything_else_is_only_stripped(written: str) -> None:
    assert canonical_patient_key(written, IN_2024) == written.strip()
    assert canonical_patient_key(f" \0{written}\0 ", IN_2024) == written.strip()


def test_without_a_reference_date_a_10_digit_form_is_not_resolved() -> None:
    """The clock is never read: the key of a value must not change with the day it is processed."""
    assert canonical_patient_key(" 850101-1236 ") == "850101-1236"
    assert canonical_patient_key("8501011236") == "8501011236"
    assert canonical_patient_key("19850101-1236") == CANONICAL_PNR


# ------------------------------------------------------------------------------- the key's pseudonym scheme
def test_a_bare_secret_keys_patients_as_received_and_a_canonical_key_by_their_number() -> None:
    old = Pseudonymizer(SECRET)
    new = Pseudonymizer(scheme_key(SECRET, CANONICAL, dt.date(2026, 1, 1)))
    assert (old.scheme, new.scheme) == (AS_RECEIVED, CANONICAL)
    assert old.patient_key(" 850101-1236") == " 850101-1236"  # as before: byte for byte
    assert {new.patient_key(form, IN_2024) for form in PNR_FORMS} == {CANONICAL_PNR}
    # the same secret: the same fingerprint and UIDs; an ID already in canonical form keeps its pseudonym
    assert old.fingerprint == new.fingerprint and old.uid("1.2.3") == new.uid("1.2.3")
    assert old.patient_pseudonym(CANONICAL_PNR) == new.patient_pseudonym(new.patient_key(CANONICAL_PNR))
    assert scheme_key(SECRET, AS_RECEIVED, dt.date(2026, 1, 1)) == SECRET
    with pytest.raises(ValueError, match="scheme header"):
        Pseudonymizer(scheme_key(SECRET, CANONICAL, dt.date(2026, 1, 1)).replace(b"undated=", b"undate="))
    with pytest.raises(ValueError, match="unknown pseudonym scheme"):
        scheme_key(SECRET, 3, dt.date(2026, 1, 1))


# ------------------------------------------------------------------------------- through the DICOM engine
def ct(patient_id: str, *, written_on: str = "20240315", instance: int = 1, patient: int = 3) -> bytes:
    """A synthetic CT of one patient with ``patient_id`` as its Patient ID, its dates ``written_on``."""
    ds = pydicom.dcmread(io.BytesIO(synthetic.make_ct(patient, 0, 1, instance, rows=16, columns=16)))
    if not patient_id.isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the dashes a word processor puts in place of '-'
    ds.PatientID = patient_id
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ds.InstanceCreationDate = written_on
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def engine_key(key: bytes, patient_id: str, *, written_on: str = "20240315") -> tuple[str, int | None]:
    result = deidentify(ct(patient_id, written_on=written_on), to_engine(MODIFIED), Pseudonymizer(key))
    assert pydicom.dcmread(io.BytesIO(result.data)).PatientID == result.patient_pseudonym
    return result.patient_pseudonym, result.date_shift_days


@pytest.mark.parametrize(("first", "second"), [
    *zip(itertools.repeat(CANONICAL_PNR), PNR_FORMS[1:], strict=False),
    *zip(itertools.repeat(SAMORDNING_FORMS[0]), SAMORDNING_FORMS[1:], strict=False),
    ("850101-1236", "8501011236"),
])
def test_two_objects_of_one_patient_in_two_forms_get_one_pseudonym_and_one_date_shift(first: str, second: str) -> None:
    key = scheme_key(SECRET, CANONICAL, dt.date(2026, 1, 1))
    one, other = engine_key(key, first), engine_key(key, second)
    assert one == other and one[1] is not None and one[1] < 0
    assert engine_key(key, "MRN7340000") != one


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_the_object_s_own_date_decides_the_century_else_the_key_s() -> None:
    key = scheme_key(SECRET, CANONICAL, dt.date(2026, 1, 1))
    born_1912, born_2012 = engine_key(key, "191212121212"), engine_key(key, "201212121212")
    assert born_1912 != born_2012
    assert engine_key(key, "121212-1212", written_on="20110601") == born_1912
    assert engine_key(key, "121212+1212", written_on="20130601") == born_1912
    assert engine_key(key, "121212-1212", written_on="20130601") == born_2012
    assert engine_key(key, "121212-1212", written_on="2011.06.01") == born_1912  # ACR-NEMA's dates
    # an object without a date: read against the key's own date, never the day it is processed
    assert engine_key(key, "121212-1212", written_on="") == born_2012
    assert engine_key(scheme_key(SECRET, CANONICAL, dt.date(2011, 6, 1)), "121212-1212", written_on="") == \
        engine_key(scheme_key(SECRET, CANONICAL, dt.date(2011, 6, 1)), "191212121212")


def test_a_bare_secret_gives_the_pseudonyms_it_always_gave() -> None:
    pseudo = Pseudonymizer(SECRET)
    for form in ("850101-1236", "8501011236", " 850101-1236"):
        assert engine_key(SECRET, form)[0] == pseudo.patient_pseudonym(form.rstrip())
        assert engine_key(SECRET, form)[1] == pseudo.date_shift_days(form.rstrip())


# -------------------------------------------------------------- one project: the DICOM import and a table run
STRATEGY = '''name = "Forms"
person = "pin"
[columns.pin]
action = "pseudonymize"
[columns.visit]
action = "shift_date"
[columns.value]
action = "keep"
'''


def _import(hub, project_id, folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    report = bulk.run_import(hub, project_id, folder, workers=1)
    assert report.archived == len(files), report


def _upload(api: TestClient, headers: dict[str, str], hub, data: bytes, name: str, slug: str) -> str:
    """Through the upload API, encrypted to the hub key on the client, then ingested."""
    hub_public = c4gh.parse_public_key(api.get("/api/v1/archive/public-key", headers=headers).text)
    blob = b"".join(c4gh.encrypt_stream([data], hub_public))
    up = api.post(f"/api/v1/projects/{slug}/uploads", headers=headers,
                  json={"path": name, "size": len(blob), "sha256": hashlib.sha256(data).hexdigest()})
    assert up.status_code == 201, up.text
    assert api.put(f"/api/v1/uploads/{up.json()['id']}/parts/1", headers=headers, content=blob).status_code == 200
    assert api.post(f"/api/v1/uploads/{up.json()['id']}/complete", headers=headers).status_code == 200
    Runner(hub, lease_seconds=30, name="test").run_until_idle()
    return up.json()["id"]


def _decrypted(hub, file_id: str) -> bytes:
    with hub.sessions() as s:
        f = s.get(ArchiveFile, file_id)
        opened = c4gh.open_header(f.header, hub_keys(hub, s).secrets)
        body_key = f.body_key
    with storage_for(hub).open_reader(body_key) as reader:
        return b"".join(c4gh.decrypt_segments(reader, opened.session_keys))


def test_a_table_run_and_the_dicom_import_of_one_project_agree_whatever_the_form(app, hub, people, tmp_path) -> None:
    alice = people("alice")
    make_project(hub, "lung", profile=MODIFIED)
    lung = bulk.project_by_slug(hub, "lung")
    # DICOM: patient 1 in four forms, patient 2 (a samordningsnummer) in two; all studied on 2024-03-15
    dicom_forms = {1: ["198501011236", "850101-1236", " 8501011236", "8501011236\0"],
                   2: ["850161-1233", "198501611233"]}
    _import(hub, lung, tmp_path / "in", {f"p{p}-{n}.dcm": ct(form, patient=p, instance=n + 1)
                                         for p, forms in dicom_forms.items() for n, form in enumerate(forms)})
    archived = instances(hub)
    per_pseudonym = Counter(i.patient_pseudonym for i in archived)
    assert sorted(per_pseudonym.values()) == [2, 4], per_pseudonym  # two patients, whatever the forms
    first, second = (p for p, _ in per_pseudonym.most_common())
    shifted = {i.patient_pseudonym: i.study_date for i in archived}  # 2024-03-15 moved by the patient's shift
    assert len({(i.patient_pseudonym, i.study_date) for i in archived}) == 2  # one shift per patient

    # a clinical table of the same patients, their numbers written every way, through a real run
    pins = [*PNR_FORMS, *SAMORDNING_FORMS]
    table = pl.DataFrame({"pin": pins, "visit": ["2024-03-15"] * len(pins), "value": list(range(len(pins)))})
    api, headers = TestClient(app, base_url="http://127.0.0.1:8000"), bearer(token_for(hub, alice))
    file_id = _upload(api, headers, hub, table.write_csv().encode(), "extracts/forms.csv", "lung")
    assert api.put("/api/v1/projects/lung/strategy", json={"text": STRATEGY}, headers=headers).status_code == 201
    run = api.post("/api/v1/projects/lung/strategy/runs", json={"file_id": file_id}, headers=headers)
    assert run.status_code == 202, run.text
    Runner(hub, lease_seconds=30, name="test").run_until_idle()
    run = api.get(f"/api/v1/projects/lung/strategy/runs/{run.json()['id']}", headers=headers).json()
    assert run["state"] == "passed", run
    output = pl.read_parquet(io.BytesIO(_decrypted(hub, run["output_file_id"])))

    pseudonyms = output.get_column("pin").to_list()
    assert set(pseudonyms[:len(PNR_FORMS)]) == {first} and set(pseudonyms[len(PNR_FORMS):]) == {second}
    for pseudonym, visit in zip(pseudonyms, output.get_column("visit").to_list(), strict=True):
        assert visit.strftime("%Y%m%d") == shifted[pseudonym]  # the table's shift is the images' shift


# ---------------------------------------------------------------- projects from before schemes (migration 0039)
BEFORE = "0038_job_given_up"


def _bare_key(hub, project_id) -> bytes:
    """A project key as the code before schemes made it: a bare secret, sealed (written at revision 0038)."""
    secret = Pseudonymizer.generate_secret()
    with transaction(hub.sessions) as s:
        s.execute(insert(ImagingProject.__table__).values(
            project_id=project_id, key_fingerprint=Pseudonymizer(secret).fingerprint, created_at=utcnow(),
            sealed_secret=keystore.seal(keystore.keystore_key(hub.settings), secret,
                                        keystore._secret_context(project_id))))
    return secret


def _evidence(hub, project_id, kind: str, user_id) -> None:
    """What the code before schemes left of a project that pseudonymised a patient (or did not: ``none``)."""
    with transaction(hub.sessions) as s:
        if kind in ("imported instance", "open batch", "none"):
            state = "open" if kind == "open batch" else "closed"  # "none": a closed batch, everything rejected
            s.add(ImportBatch(id=f"SRI-{kind[:4].upper()}{project_id.hex[:8]}", project_id=project_id,
                              source="bulk", origin="t", state=state, reasons={}))
            s.flush()
        if kind == "imported instance":
            s.add(ImportedInstance(project_id=project_id, batch_id=f"SRI-IMPO{project_id.hex[:8]}", state="published",
                                   sop_instance_uid="2.25.1", patient_pseudonym="OLDPSEUDONYM"))
        elif kind == "key store":
            keystore.record(s, hub.settings, project_id, [("PatientID", "850101-1236", "OLDPSEUDONYM")])
        elif kind in ("passed run", "none"):
            f = ArchiveFile(id=f"SRF-{project_id.hex[:12]}", project_id=project_id, uploader_id=user_id,
                            path="lab.csv", state="ready", upload_size=1)
            v = StrategyVersion(project_id=project_id, version=1, name="s", text="", sha256="0" * 64,
                                created_by=user_id)
            s.add_all([f, v])
            s.flush()
            s.add(StrategyRun(project_id=project_id, strategy_version_id=v.id, input_file_id=f.id,
                              state="passed" if kind == "passed run" else "failed", created_by=user_id))
        if kind in ("strategy applied on the hub host", "none"):
            action = "strategy.applied" if kind != "none" else "strategy.checked"  # a sample check stores nothing
            audit.record(s, Actor.system("t"), action, project_id=project_id)


@pytest.fixture
def before_schemes(database_url):
    """The database at revision 0038 for the test's set-up; calling the fixture upgrades it through 0039."""
    config = alembic_config(database_url)
    command.downgrade(config, BEFORE)

    def upgrade() -> None:
        command.upgrade(config, "heads")

    yield upgrade
    upgrade()  # (nothing to do when the test did)


@pytest.mark.parametrize("kind", ["key store", "imported instance", "open batch", "passed run",
                                  "strategy applied on the hub host"])
def test_a_project_that_pseudonymised_patients_keeps_its_scheme_and_one_that_did_not_moves(
        hub, people, before_schemes, kind: str) -> None:
    alice = people("alice")
    make_project(hub, "old")
    make_project(hub, "fresh")
    old, fresh = bulk.project_by_slug(hub, "old"), bulk.project_by_slug(hub, "fresh")
    _bare_key(hub, old)
    _bare_key(hub, fresh)
    _evidence(hub, old, kind, alice.user.id)
    _evidence(hub, fresh, "none", alice.user.id)
    before_schemes()
    with hub.sessions() as s:
        schemes = {p: scheme for p, scheme in s.execute(select(ImagingProject.project_id,
                                                               ImagingProject.pseudonym_scheme))}
    assert schemes == {old: AS_RECEIVED, fresh: CANONICAL}


def test_an_existing_project_keeps_its_old_pseudonyms(hub, people, before_schemes, tmp_path) -> None:
    people("alice")
    make_project(hub, "old", profile=MODIFIED)
    old = bulk.project_by_slug(hub, "old")
    secret = _bare_key(hub, old)
    before = Pseudonymizer(secret)  # what the code before schemes gave its patients
    _evidence(hub, old, "key store", None)
    before_schemes()
    with transaction(hub.sessions) as s:
        assert keystore.project_secret(s, hub.settings, old) == secret  # the bare secret: scheme 1

    _import(hub, old, tmp_path / "in", {"a.dcm": ct("850101-1236", instance=1), "b.dcm": ct(" 8501011236", instance=2)})
    got = {i.sop_instance_uid: (i.patient_pseudonym, i.study_date) for i in instances(hub)}
    assert sorted(p for p, _ in got.values()) == sorted([before.patient_pseudonym("850101-1236"),
                                                         before.patient_pseudonym(" 8501011236")])
    shifted = {(dt.date(2024, 3, 15) + dt.timedelta(days=before.date_shift_days(k))).strftime("%Y%m%d")
               for k in ("850101-1236", " 8501011236")}
    assert {d for _, d in got.values()} == shifted
    # a project made now keys the same numbers as one patient
    make_project(hub, "new", pi="alice", profile=MODIFIED)
    new = bulk.project_by_slug(hub, "new")
    _import(hub, new, tmp_path / "in-new", {"a.dcm": ct("850101-1236", instance=3, patient=4),
                                            "b.dcm": ct(" 8501011236", instance=4, patient=4)})
    with hub.sessions() as s:
        assert s.get(ImagingProject, new).pseudonym_scheme == CANONICAL
        assert len(set(s.scalars(select(ImportedInstance.patient_pseudonym)
                                 .where(ImportedInstance.project_id == new)))) == 1
