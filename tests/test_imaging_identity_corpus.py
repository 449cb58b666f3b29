"""The identity leak corpus: identifiers planted in attributes the profile KEEPS, for every text VR and
sequence nesting depths 0-3, must end in quarantine through the real bulk import pipeline (de-identify
-> verify -> archive), with the attribute path and the kind of value as the reason, never the value.

The corpus is generated here, table-driven: (VR, depth, identifier kind) -> one file."""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging_support import instances, make_project
from strongroom.imaging import bulk, synthetic
from strongroom.imaging.deid import DeidProfile
from strongroom.imaging.deid.plan import KEEP, compiled_plan
from strongroom.imaging.settings import to_engine
from strongroom.imaging.verify import national_ids

TEXT_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT")
# a profile under which the engine keeps at least one attribute of (nearly) every text VR: AS (Patient
# Characteristics), DA/DT/TM (full dates), UI (Retain UIDs); the Basic Profile keeps CS DS IS LO LT SH ST
# TM UC UR UT. No option keeps an AE or PN attribute: there the planted value must simply be gone.
KEEPING = {"retain_longitudinal": "full", "retain_patient_characteristics": True, "retain_uids": True}
# kept sequences to nest in (unlisted in Table E.1-1: kept and recursed)
NESTING = (0x00082218, 0x00082220, 0x00080121)  # Anatomic Region, its Modifier, Equivalent Code
PERSONNUMMER = "19121212-1212"  # the Swedish Tax Agency's test number (valid Luhn)
PNR_DIGITS = "191212121212"
SAMORDNING = "701063-2391"  # day 10 + 60, valid Luhn
# code values and scheme designators are codes, searched for IDs, dates and personnummer but not names
CODE_TAGS = {0x00080100, 0x00080102, 0x00080103, 0x00080119, 0x00080120}


@dataclass(frozen=True)
class Case:
    vr: str
    depth: int
    kind: str  # what is planted: name, id, birth date, personnummer
    tag: int
    value: str
    expect: str  # the kind the quarantine reason names


def kept_tag(vr: str, profile: DeidProfile) -> int | None:
    """A standard attribute of ``vr`` that the engine keeps unchanged under ``profile``."""
    plan = compiled_plan(profile)
    for tag in sorted(plan.ops):
        entry = plan.ops[tag]
        if entry.op == KEEP and entry.vr.decode() == vr and tag >> 16 not in (0x0000, 0x0002, 0x0004) \
                and tag != 0x00080005 and "Retired" not in entry.keyword and entry.keyword \
                and not entry.keyword.endswith("ClassUID") and "TransferSyntax" not in entry.keyword \
                and tag not in CODE_TAGS:
            return tag
    return None


def cases(base: Dataset) -> list[Case]:
    profile = to_engine(KEEPING)
    family = str(base.PatientName).split("^")[0]
    birth = str(base.PatientBirthDate)
    out = []
    for vr, depth in itertools.product(TEXT_VRS, range(4)):
        tag = kept_tag(vr, profile)
        if tag is None:
            continue
        if vr in ("DA", "DT", "TM"):
            plants = [("birth date", birth, "birth date")]
        elif vr in ("DS", "IS"):
            plants = [("birth date", birth, "birth date"), ("personnummer", PNR_DIGITS, "personnummer")]
        elif vr == "UI":  # a UID built from an identifier (only a whole component counts, see verify)
            plants = [("birth date", f"1.2.826.0.1.{birth}.7", "birth date")]
        elif vr == "AS":
            plants = [("name", family, "patient name component"), ("id", str(base.PatientID), "patient ID")]
        else:
            plants = [("name", family if vr != "UR" else f"https://example.org/{family}",
                       "patient name component"),
                      ("id", str(base.PatientID), "patient ID"),
                      ("birth date", f"born {birth[6:]}.{birth[4:6]}.{birth[:4]}" if vr not in ("AE", "CS", "UR")
                       else birth, "birth date"),
                      ("personnummer", PERSONNUMMER if vr != "UR" else f"urn:pnr:{PERSONNUMMER}", "personnummer")]
            if vr in ("LO", "LT", "ST", "UT", "UC", "SH"):
                plants.append(("samordningsnummer", f"x {SAMORDNING}", "samordningsnummer"))
                plants.append(("name", f"{family.lower()} {str(base.PatientName).split('^')[1].title()}",
                               "patient name"))
        for kind, value, expect in plants:
            if vr == "CS":
                value = value.upper()
            out.append(Case(vr, depth, kind, tag, value, expect))
    return out


def plant(case: Case, instance: int) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(synthetic.make_ct(0, 0, 0, instance, rows=16, columns=16)))
    holder = ds
    for level in range(case.depth):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D1100", "SRT", "Head"
        holder.add_new(NESTING[level], "SQ", Sequence([item]))
        holder = item
    holder.add_new(case.tag, case.vr, case.value)
    buf = io.BytesIO()
    with pydicom_config.settings.writing_validation_mode_context(pydicom_config.IGNORE) \
            if hasattr(pydicom_config.settings, "writing_validation_mode_context") else _ignore_validation():
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class _ignore_validation:  # a context manager
    def __enter__(self) -> None:
        self.before = pydicom_config.settings.writing_validation_mode
        pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE

    def __exit__(self, *exc: object) -> None:
        pydicom_config.settings.writing_validation_mode = self.before


def expected_path(case: Case) -> str:
    return "".join(f"({t >> 16:04X},{t & 0xFFFF:04X})[0]>" for t in NESTING[:case.depth]) + \
        f"({case.tag >> 16:04X},{case.tag & 0xFFFF:04X})"


def test_national_id_pattern() -> None:
    assert national_ids("pnr 19121212-1212, born then") == ["personnummer"]
    assert national_ids("121212+1212") == ["personnummer"]  # '+': 100 years or older
    assert national_ids("1212121212") == ["personnummer"]
    assert national_ids(SAMORDNING) == ["samordningsnummer"]
    assert national_ids("19121212-1213") == []  # Luhn digit wrong
    assert national_ids("19121312-1212") == []  # month 13
    assert national_ids("0.1212121212") == [] and national_ids("1212121212.5") == []  # decimals
    assert national_ids("91212121212") == [] and national_ids("12121212121") == []  # longer numbers


@pytest.fixture
def keeping(hub, people):
    people("alice")
    make_project(hub, profile=KEEPING)
    return bulk.project_by_slug(hub, "lung")


def test_planted_identifiers_in_kept_attributes_are_quarantined(hub, keeping, tmp_path: Path) -> None:
    base = pydicom.dcmread(io.BytesIO(synthetic.make_ct(0, 0, 0, 0, rows=16, columns=16)))
    table = cases(base)
    covered = {c.vr for c in table}
    assert covered == set(TEXT_VRS) - {"AE", "PN"}, covered  # every text VR the engine can keep
    folder = tmp_path / "corpus"
    folder.mkdir()
    by_name = {}
    for i, case in enumerate(table, start=1):
        name = f"{case.vr}-d{case.depth}-{case.kind.replace(' ', '_')}-{i}.dcm"
        (folder / name).write_bytes(plant(case, i))
        by_name[name] = case
    (folder / "clean.dcm").write_bytes(synthetic.make_ct(0, 0, 0, 0, rows=16, columns=16))

    report = bulk.run_import(hub, keeping, folder, workers=2)

    assert (report.received, report.rejected, report.archived) == (len(table) + 1, 0, 1), report.as_dict()
    assert report.quarantined == len(table)
    held = {i.sop_instance_uid: i for i in instances(hub, "quarantined")}
    assert len(held) == len(table)
    # every case's reason names its attribute path and kind; no reason repeats a planted value
    reasons = set(report.reasons)
    for case in table:
        assert f"leak: {case.expect} in {expected_path(case)}" in reasons, (case, sorted(reasons)[:20])
    for reason in reasons:
        for secret in (str(base.PatientName).split("^")[0], str(base.PatientID), str(base.PatientBirthDate),
                       PERSONNUMMER, PNR_DIGITS, SAMORDNING):
            assert secret.lower() not in reason.lower(), reason


def test_ae_and_pn_values_never_survive(hub, keeping, tmp_path: Path) -> None:
    """No profile keeps an AE or PN attribute: a planted identifier is replaced or removed, at any depth."""
    base = pydicom.dcmread(io.BytesIO(synthetic.make_ct(0, 0, 0, 0, rows=16, columns=16)))
    family = str(base.PatientName).split("^")[0]
    folder = tmp_path / "corpus"
    folder.mkdir()
    n = 0
    for vr, tag in (("AE", 0x00400241), ("PN", 0x00081050), ("PN", 0x0040A123), ("AE", 0x00080055)):
        for depth in range(4):
            n += 1
            (folder / f"{n}.dcm").write_bytes(plant(Case(vr, depth, "name", tag, family, ""), n))
    report = bulk.run_import(hub, keeping, folder, workers=2)
    assert (report.received, report.rejected) == (n, 0)
    from imaging_support import archived_bytes

    for inst in instances(hub):
        assert family.encode() not in archived_bytes(hub, inst.file_id)
