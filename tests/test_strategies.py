"""Pseudonymization strategies for clinical tables: the engine, its verification, the file formats a
hospital exports, the seed's own strategy, and the `strongroom strategy` command."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import openpyxl
import polars as pl
import pydicom
import pytest

from strongroom.imaging.deid import DeidProfile, Pseudonymizer, deidentify
from strongroom.imaging.synthetic import make_ct
from strongroom.strategies import engine, report, synthetic, transforms
from strongroom.strategies.spec import EXAMPLE, Generalize, Strategy, load_strategy
from strongroom.strategies.tables import TableError, read_table

SEED = EXAMPLE
SECRET = bytes(range(32))


def strategy(toml: str) -> Strategy:
    return load_strategy('name = "t"\n' + toml)


@pytest.fixture(scope="module")
def extract() -> pl.DataFrame:
    return synthetic.extract(100_000, rare_groups=True)


def failed(run: engine.Run) -> dict[str, dict]:
    any_strategy = Strategy.model_validate({"name": "x", "columns": {"a": {"action": "keep"}}})
    return {c["name"]: c for c in run.report(any_strategy)["checks"] if not c["passed"]}


def test_the_engine_imports_no_web_or_db_code() -> None:
    code = ("import sys, strongroom.strategies.engine, strongroom.strategies.report, strongroom.strategies.tables, "
            "strongroom.strategies.synthetic; "
            "bad = {m.split('.')[0] for m in sys.modules} & {'fastapi', 'sqlalchemy', 'starlette', 'httpx', 'typer'}; "
            "bad |= {m for m in sys.modules if m.startswith('strongroom.') and not m.startswith("
            "('strongroom.strategies', 'strongroom.imaging.deid', 'strongroom.identifiers', "
            "'strongroom.patient_ids')) "
            "and m not in ('strongroom.imaging',)}; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------- the seed's table

def test_the_seed_strategy_passes_on_a_generated_lis_pacs_extract(extract: pl.DataFrame) -> None:
    seed = load_strategy(SEED.read_text())
    assert extract.height >= 100_000
    run = engine.apply(extract, seed, SECRET)
    report = run.report(seed)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    out = run.output
    assert {"pin", "patient_name", "birth_date"}.isdisjoint(out.columns)  # PIN: delete
    assert set(out.get_column("age").unique().to_list()) <= {"0-5", *[f"{a}-{a + 4}" for a in range(6, 150, 5)]}
    assert "6-10" in out.get_column("age").to_list()  # Stratify: 0-5, 6-10, 11-15, ...
    assert out.get_column("request_date").str.contains(r"^\d{4}$").all()  # year only
    groups = out.group_by("diagnosis", "anatomical_site", "request_date").len()
    assert groups.get_column("len").min() >= 11  # > 10 instances of diagnosis + site per year
    # the rare (Q21.1, heart) rows were suppressed, and the report says why and how many
    assert "Q21.1" not in out.get_column("diagnosis").to_list()
    assert any("at least 11 rows" in s["reason"] and s["rows"] >= 4 for s in report["suppressed"])
    assert report["rows_in"] == extract.height and report["rows_out"] == out.height
    assert report["risk"]["assessed"] and report["risk"]["prosecutor"]["highest"] <= 1 / 5
    assert sum(report["class_sizes"].values()) == report["risk"]["classes"]
    # no name of the extract, no personnummer, survives anywhere (free text scrubbed)
    text = out.write_csv()
    for pin in extract.get_column("pin").head(200).to_list():
        assert pin not in text


def test_a_variant_that_fails_the_group_rule_names_the_offending_groups(extract: pl.DataFrame) -> None:
    failing = load_strategy(SEED.read_text().replace('on_violation = "suppress"', 'on_violation = "fail"', 1))
    run = engine.apply(extract, failing, SECRET)
    assert not run.passed
    check = failed(run)["each (diagnosis, anatomical_site, request_date) has at least 11 rows"]
    assert check["detail"].endswith("group(s) below 11")
    assert any(g["diagnosis"] == "Q21.1" and g["anatomical_site"] == "heart" and g["count"] < 11
               for g in check["groups"])


# ---------------------------------------------------------------------------------------- every rule

def frame() -> pl.DataFrame:
    return pl.DataFrame({
        "pin": ["19121212-1212", "19121212-1212", "20080808-0008", " 19121212-1212 "],
        "age": ["0", "5", "6", "91"], "when": ["2019-05-17", "20200101", "17.05.2021", "2022-12-31 08:00:00"],
        "zip": ["582 25", "58225", "114 51", "11451"], "icd": ["C50.9", "j18.9", "I21", "S72.00"],
        "weight": ["61,5", "300", "2", "80"], "note": ["Ring 070-123 45 67", "Anna mår bra", "ok", None],
        "rare": ["a", "a", "b", "c"],
    })


def test_each_rule_transforms_its_column() -> None:
    s = strategy('''person = "pin"
[columns.pin]
action = "pseudonymize"
[columns.age]
action = "stratify"
edges = [5, 10]
top = 90
[columns.when]
action = "generalize"
to = "quarter"
[columns.zip]
action = "generalize"
to = "prefix"
length = 3
[columns.icd]
action = "generalize"
to = "icd10_chapter"
[columns.weight]
action = "top_code"
top = 200
bottom = 3
[columns.note]
action = "free_text"
mode = "scrub"
[columns.rare]
action = "suppress"
min_count = 2
[identifier_scan]
names = ["Anna Berg"]
''')
    run = engine.apply(frame(), s, SECRET)
    out = run.output
    assert run.passed, failed(run)
    pins = out.get_column("pin").to_list()
    assert pins[0] == pins[1] == pins[3] != pins[2]  # consistent, whitespace-insensitive
    assert out.get_column("age").to_list() == ["0-5", "0-5", "6-10", "90+"]
    assert out.get_column("when").to_list() == ["2019-Q2", "2020-Q1", "2021-Q2", "2022-Q4"]
    assert out.get_column("zip").to_list() == ["582", "582", "114", "114"]
    assert out.get_column("icd").to_list() == ["II", "X", "IX", "XIX"]
    assert out.get_column("weight").to_list() == [61.5, 200.0, 3.0, 80.0]
    assert out.get_column("note").to_list() == ["Ring [REMOVED]", "[REMOVED] mår bra", "ok", None]
    assert out.get_column("rare").to_list() == ["a", "a", None, None]


def test_delete_keep_category_and_unlisted_columns() -> None:
    s = strategy('''unlisted = "delete"
[columns.icd]
action = "generalize"
to = "icd10_category"
[columns.age]
action = "keep"
''')
    out = engine.apply(frame(), s, SECRET).output
    assert out.columns == ["icd", "age"] and out.get_column("icd").to_list() == ["C50", "J18", "I21", "S72"]
    with pytest.raises(engine.StrategyError, match="'pin' has no rule"):
        engine.apply(frame(), strategy('[columns.age]\naction = "keep"\n'), SECRET)
    with pytest.raises(engine.StrategyError, match="'height' of the strategy is not in the table"):
        engine.apply(frame(), strategy('unlisted = "delete"\n[columns.height]\naction = "keep"\n'), SECRET)


ICD_CODES = {  # as written in an extract → the WHO 2019 block (None: blank)
    "C50.9": "C50-C50 Breast cancer", "I20.9": "I20-I25 Ischaemic heart diseases",
    " i209 ": "I20-I25 Ischaemic heart diseases", "I25": "I20-I25 Ischaemic heart diseases",
    "A17.0†": "A15-A19 Tuberculosis", "G01*": "G00-G09 Inflammatory CNS diseases",  # dagger and asterisk
    "A17.0† G01*": "A15-A19 Tuberculosis",  # the pair: the dagger code (the cause) comes first
    "D48.9": "D37-D48 Tumours of uncertain behaviour", "D50.0": "D50-D53 Nutritional anaemias",  # II | III
    "H59.0": "H55-H59 Other eye disorders", "H60.3": "H60-H62 External ear disorders",  # VII | VIII
    "U07.1": "U00-U49 Provisional and emergency-use codes", "u49": "U00-U49 Provisional and emergency-use codes",
    "U83.0": "U82-U85 Resistance to antimicrobial and antineoplastic drugs",
    "X85": "X85-Y09 Assault", "Y09": "X85-Y09 Assault",  # a block across two letters
    "Z99.2": "Z80-Z99 Family and personal history, health status",
    "U50": None, "C98": None, "E08.9": None, "D49": None, "C7A.0": None,  # in no WHO block (gaps, ICD-10-CM)
    "XYZ": None, "C5": None, "123": None, "": None, "  ": None, None: None,  # malformed or empty
}


def test_icd10_codes_to_blocks_chapters_and_categories() -> None:
    codes = pl.DataFrame({"icd": list(ICD_CODES)}, schema={"icd": pl.String})
    run = engine.apply(codes, strategy('[columns.icd]\naction = "generalize"\nto = "icd10_block"\n'), SECRET)
    assert run.passed, failed(run)
    assert dict(zip(ICD_CODES, run.output.get_column("icd").to_list(), strict=True)) == ICD_CODES
    chapters = engine.apply(codes, strategy('[columns.icd]\naction = "generalize"\nto = "icd10_chapter"\n'), SECRET)
    categories = engine.apply(codes, strategy('[columns.icd]\naction = "generalize"\nto = "icd10_category"\n'),
                              SECRET)
    assert chapters.passed and categories.passed
    by_code = dict(zip(ICD_CODES, zip(chapters.output.get_column("icd").to_list(),
                                      categories.output.get_column("icd").to_list(), strict=True), strict=True))
    assert by_code["D48.9"] == ("II", "D48") and by_code["D50.0"] == ("III", "D50")
    assert by_code["H59.0"] == ("VII", "H59") and by_code["H60.3"] == ("VIII", "H60")
    assert by_code["U07.1"] == ("XXII", "U07") and by_code[" i209 "] == ("IX", "I20")
    assert by_code["XYZ"] == by_code["C5"] == by_code["123"] == (None, None)  # blank, not a chapter by accident


def test_the_block_table_agrees_with_the_chapters() -> None:
    blocks = transforms.icd10_blocks()
    assert len(blocks) == 263 and len({label for *_, label in blocks}) == 263
    chapter = transforms.generalize(Generalize(action="generalize", to="icd10_chapter"), "code", pl.String)
    ends = pl.DataFrame({"code": [c for first, last, *_ in blocks for c in (first, last)]})
    assert ends.select(chapter).to_series().to_list() == [ch for _, _, ch, _ in blocks for _ in (0, 1)]
    ordered = sorted(blocks)  # no category in two blocks
    assert all(a[1] < b[0] for a, b in zip(ordered, ordered[1:], strict=False))


def test_verify_rejects_what_is_not_a_block_label() -> None:
    s = strategy('[columns.icd]\naction = "generalize"\nto = "icd10_block"\n')
    tampered = pl.DataFrame({"icd": ["I20-I25 Ischaemic heart diseases", "I20", "I20-I25", None]})
    check = next(c for c in engine.verify(tampered, s).checks if c.name == "icd: generalize")
    assert not check.passed and "2 value(s)" in check.detail


def test_table_pseudonyms_and_date_shifts_match_the_dicom_side() -> None:
    """The same person gets the same pseudonym and the same date shift in a table as in images."""
    ct = pydicom.dcmread(__import__("io").BytesIO(make_ct(3, 1, 1, 1, rows=8, columns=8)))
    patient_id, study_date = str(ct.PatientID), dt.datetime.strptime(ct.StudyDate, "%Y%m%d").date()
    pseudo = Pseudonymizer(SECRET)
    result = deidentify(make_ct(3, 1, 1, 1, rows=8, columns=8), DeidProfile(retain_longitudinal_modified_dates=True),
                        pseudo)
    s = strategy('''person = "pin"
[columns.pin]
action = "pseudonymize"
[columns.exam]
action = "shift_date"
''')
    table = pl.DataFrame({"pin": [patient_id], "exam": [study_date.isoformat()]})
    out = engine.apply(table, s, SECRET).output
    assert out.get_column("pin").item() == result.patient_pseudonym
    shifted = pydicom.dcmread(__import__("io").BytesIO(result.data)).StudyDate
    assert out.get_column("exam").item() == dt.datetime.strptime(shifted, "%Y%m%d").date()
    assert out.get_column("exam").item() == study_date + dt.timedelta(days=result.date_shift_days)


# ------------------------------------------------------------------------------ k, l, limits, identifiers

def people(n: int) -> pl.DataFrame:
    return pl.DataFrame({"age": [str(20 + i % 3) for i in range(n)], "sex": ["F" if i % 2 else "M" for i in range(n)],
                         "dx": [f"d{i % 4}" for i in range(n)]})


def test_k_anonymity_suppresses_or_fails_as_chosen() -> None:
    base = '''[columns.age]
action = "keep"
[columns.sex]
action = "keep"
[columns.dx]
action = "keep"
[k_anonymity]
quasi_identifiers = ["age", "sex"]
k = 3
'''
    table = pl.concat([people(60), pl.DataFrame({"age": ["99"], "sex": ["F"], "dx": ["d1"]})])
    run = engine.apply(table, strategy(base), SECRET)
    assert run.passed and run.output.height == 60 and run.suppressed[0].rows == 1
    failing = engine.apply(table, strategy(base + 'on_violation = "fail"\n'), SECRET)
    assert not failing.passed
    groups = failed(failing)["3-anonymity over (age, sex)"]["groups"]
    assert groups == [{"age": "99", "sex": "F", "count": 1}]
    # suppression beyond the limit is no release
    limited = engine.apply(table, strategy('max_suppressed = 0.0\n' + base), SECRET)
    assert not limited.passed and "1 of 61 rows" in failed(limited)["at most 0% of rows suppressed"]["detail"]


def test_l_diversity_of_a_sensitive_column() -> None:
    s = '''[columns.age]
action = "keep"
[columns.sex]
action = "keep"
[columns.dx]
action = "keep"
[l_diversity]
quasi_identifiers = ["age"]
sensitive = "dx"
l = 2
on_violation = "fail"
'''
    same_dx = pl.DataFrame({"age": ["20"] * 5 + ["30"] * 5, "sex": ["F"] * 10,
                            "dx": ["a"] * 5 + ["a", "b"] * 2 + ["c"]})
    run = engine.apply(same_dx, strategy(s), SECRET)
    assert not run.passed
    assert failed(run)["2-diversity of dx over (age)"]["groups"] == [{"age": "20", "count": 1}]


@pytest.mark.parametrize("distinct_values", [3, 400], ids=["few values", "many values"])
def test_l_diversity_does_not_count_a_blank_as_a_sensitive_value(distinct_values: int) -> None:
    """Four rows with HIV and one with dx blank at one site are one sensitive value, not two: everybody there
    with a diagnosis has HIV. Verified (both of the verification's counting paths: few and many possible
    (class, value) pairs) and enforced (suppression) alike; a class whose every value is blank has none."""
    s = """[columns.site]\naction = "keep"\n[columns.dx]\naction = "keep"\n
[l_diversity]\nquasi_identifiers = ["site"]\nsensitive = "dx"\nl = 2\n"""
    others = [(f"site{i % 40}", f"dx{i % distinct_values}") for i in range(800)]
    frame = pl.DataFrame({"site": ["S"] * 5 + ["E"] * 3 + [o[0] for o in others],
                          "dx": ["HIV"] * 4 + [None] + [None] * 3 + [o[1] for o in others]})
    failing = engine.apply(frame, strategy(s + 'on_violation = "fail"\n'), SECRET)
    assert not failing.passed
    groups = failed(failing)["2-diversity of dx over (site)"]["groups"]
    assert sorted(g["site"] for g in groups) == ["E", "S"]
    suppressing = engine.apply(frame, strategy(s), SECRET)
    assert suppressing.passed and suppressing.output.height == 800
    assert set(suppressing.output.get_column("site")) == {f"site{i}" for i in range(40)}


@pytest.mark.parametrize("kind", ["dateshift", "uid", "fingerprint", "patient"])
def test_a_pseudonym_kind_may_not_name_a_key_the_deidentification_derives(kind: str) -> None:
    """A token of kind "dateshift" is the HMAC the date shift is cut from: it would hand every recipient each
    person's shift, undoing it (here and on the project's images). Such kinds are refused, in the strategy and
    in the engine."""
    with pytest.raises(ValueError, match="reserved"):
        strategy(f'[columns.pin]\naction = "pseudonymize"\nkind = "{kind}"\n')
    with pytest.raises(ValueError, match="reserved"):
        Pseudonymizer(SECRET).token(kind, "19121212-1212")


@pytest.mark.parametrize(("value", "kind"), [
    ("pnr 19121212-1212", "personnummer"), ("1212121212", "personnummer"), ("samordning 701063-2391", "personnummer"),
    ("mejla x.y@example.se", "e-mail"), ("+46 70 123 45 67", "telephone number"),
    ("Till Anna på avd 3", "name from the list"),
])
def test_the_scan_finds_identifiers_kept_by_mistake(value: str, kind: str) -> None:
    s = strategy('[columns.text]\naction = "keep"\n[identifier_scan]\nnames = ["Anna"]\n')
    run = engine.apply(pl.DataFrame({"text": ["nothing", value]}), s, SECRET)
    assert not run.passed
    assert run.verification.identifiers == [{"column": "text", "kind": kind, "cells": 1}]
    assert value not in json.dumps(run.report(s))  # the report names kinds and counts, never values


@pytest.mark.parametrize("value", ["19121212-1213", "Annals of Radiology", "dose 3.1415926535", "2021-03-04",
                                   "annan patient", "201912311234"])
def test_the_scan_leaves_lookalikes_alone(value: str) -> None:
    s = strategy('[columns.text]\naction = "keep"\n[identifier_scan]\nnames = ["Anna"]\n')
    assert engine.apply(pl.DataFrame({"text": [value]}), s, SECRET).passed


def test_verify_rechecks_a_tampered_output() -> None:
    s = strategy('[columns.age]\naction = "stratify"\nwidth = 10\n[columns.pin]\naction = "delete"\n')
    tampered = pl.DataFrame({"age": ["0-10", "37"], "pin": ["x", "y"]})
    checks = {c.name: c for c in engine.verify(tampered, s).checks}
    assert not checks["age: stratify"].passed and "1 value(s)" in checks["age: stratify"].detail
    assert checks["pin: delete"].detail == "still present"


def test_the_report_page_draws_the_class_sizes_and_names_the_smallest_classes() -> None:
    seed = load_strategy(SEED.read_text())
    run = engine.apply(synthetic.extract(20_000, rare_groups=True), seed, SECRET)
    data = run.report(seed)
    page = report.to_html(data)
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert svg.count("<rect") == len(data["class_sizes"]) == 8
    assert all(f"<title>{n} classes of size {label}</title>" in svg for label, n in data["class_sizes"].items())
    smallest = data["smallest_classes"]
    assert 0 < len(smallest) <= 10 and smallest == sorted(smallest, key=lambda c: c["count"])
    table = page[page.index("<h4>Smallest classes</h4>"):]
    assert all(f"<th>{c}</th>" in table for c in seed.k_anonymity.quasi_identifiers)  # type: ignore[union-attr]
    assert f"<td>{smallest[0]['count']}</td>" in table
    # nothing fetched: no script, no stylesheet link, no image, no address
    assert not any(tag in page for tag in ("<script", "<link", "<img", "http://", "https://", "url("))


# ---------------------------------------------------------------------------------- strategies as text

@pytest.mark.parametrize(("toml", "message"), [
    ('[columns.a]\naction = "blur"\n', "does not match any of the expected tags"),
    ('[columns.a]\naction = "stratify"\n', "give either width or edges"),
    ('[columns.a]\naction = "delete"\n[[group_rules]]\ncolumns = ["a"]\nmin_rows = 11\n', "not an output column"),
    ('[columns.a]\naction = "shift_date"\n', "needs `person`"),
    ('[columns.a]\naction = "keep"\ncolour = "red"\n', "Extra inputs are not permitted"),
    ("[columns.a\n", "not valid TOML"),
])
def test_invalid_strategies_say_why(toml: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        strategy(toml)


# ----------------------------------------------------------------------------------------- file formats

def test_reads_what_hospital_systems_export(tmp_path: Path) -> None:
    rows = [["pin", "namn", "ålder"], ["19121212-1212", "Örjan Åström", "071"], ["20080808-0008", "Märta", "5"]]
    cp1252 = tmp_path / "lis.csv"
    cp1252.write_bytes("\r\n".join(";".join(r) for r in rows).encode("cp1252"))
    tsv = tmp_path / "pacs.tsv"
    tsv.write_text("\ufeff" + "\n".join("\t".join(r) for r in rows), encoding="utf-8")
    xlsx = tmp_path / "lis.xlsx"
    book = openpyxl.Workbook()
    for r in rows:
        book.active.append(r)
    book.save(xlsx)
    parquet = tmp_path / "x.parquet"
    pl.DataFrame(dict(zip(rows[0], map(list, zip(*rows[1:], strict=True)), strict=True))).write_parquet(parquet)
    for path in (cp1252, tsv, xlsx, parquet):
        table = read_table(path).collect()
        assert table.columns == ["pin", "namn", "ålder"], path
        assert table.get_column("namn").to_list() == ["Örjan Åström", "Märta"], path
        assert table.get_column("ålder").to_list()[0] == "071", path  # text stays text: leading zeros kept
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4")
    with pytest.raises(TableError, match="not a table"):
        read_table(tmp_path / "scan.pdf")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(TableError, match="cannot be read"):
        read_table(broken).collect()


# ------------------------------------------------------------------------------------------- the CLI

def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "STRONGROOM_VAR_DIR": str(cwd / "var")}
    return subprocess.run([sys.executable, "-m", "strongroom.cli", "strategy", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_applies_the_seed_strategy_and_refuses_to_write_a_failing_output(tmp_path: Path) -> None:
    assert cli("new-key", "project.key", cwd=tmp_path).returncode == 0
    assert oct((tmp_path / "project.key").stat().st_mode & 0o777) == "0o600"
    assert cli("new-key", "project.key", cwd=tmp_path).returncode == 2  # never overwritten
    made = cli("demo-extract", "extract.csv", "--rows", "50000", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    checked = cli("check", str(SEED), cwd=tmp_path)
    assert checked.returncode == 0 and "Stratify" not in checked.stderr and "valid" in checked.stdout
    ok = cli("apply", "-s", str(SEED), "-i", "extract.csv", "-o", "release.parquet", "--key-file", "project.key",
             cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "passed" in ok.stdout
    released = pl.read_parquet(tmp_path / "release.parquet")
    assert "pin" not in released.columns and released.height > 47_500
    report = json.loads((tmp_path / "release.parquet.report.json").read_text())
    assert report["passed"] and report["rows_out"] == released.height
    assert "Equivalence-class sizes" in (tmp_path / "release.parquet.report.html").read_text()

    failing = tmp_path / "failing.toml"
    failing.write_text(SEED.read_text().replace('on_violation = "suppress"', 'on_violation = "fail"', 1))
    bad = cli("apply", "-s", str(failing), "-i", "extract.csv", "-o", "nope.parquet", "--key-file", "project.key",
              cwd=tmp_path)
    assert bad.returncode == 1 and "FAILED" in bad.stdout and "diagnosis=Q21.1" in bad.stdout
    assert not (tmp_path / "nope.parquet").exists() and (tmp_path / "nope.parquet.report.json").exists()

    wrong = cli("apply", "-s", str(SEED), "-i", "extract.csv", "-o", "x.parquet", cwd=tmp_path)
    assert wrong.returncode == 2 and "exactly one of --key-file" in wrong.stderr
    invalid = tmp_path / "invalid.toml"
    invalid.write_text('name = "x"\n[columns.a]\naction = "blur"\n')
    assert "is not a valid strategy" in cli("check", str(invalid), cwd=tmp_path).stderr
