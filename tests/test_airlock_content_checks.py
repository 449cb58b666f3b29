"""The airlock's checks never say "passed" about content they did not read (the privacy audit of the airlock).

Compressed streams are decompressed (bounded) and checked as what they hold; archive members and the parts
of Office documents are read; every sheet of a workbook and the column names are scanned; numbers of
personnummer width and list/struct cells are scanned (by the airlock and by the strategy verification);
personnummer written with a Unicode dash or a space are recognised. What cannot be read (PDF, images,
encrypted members, over the bounds) is "not checked": not passed, so approval waits for the PI's override.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import sqlite3
import tarfile
import zipfile
from pathlib import Path

import openpyxl
import polars as pl
import pytest
from openpyxl.comments import Comment

from conftest import bearer, web_client
from strongroom import identifiers
from strongroom.airlock import checks
from strongroom.strategies import engine
from strongroom.strategies.spec import load_strategy
from test_airlock import _drain, _export, _get, _put_file, _review, world  # noqa: F401  (world: a fixture)

PNR = "19121212-1212"  # a valid personnummer (Luhn), as in test_airlock
LEAKY = f"pin,age\n{PNR},41\n".encode()
CLEAN = b"id,age_band\nP001,40-49\nP002,50-59\n"
MAX = 10**9
SECRET = bytes(range(32))
W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
PML = ('xmlns:p="http://schemas.openxmlformats.org/presentationml/2006/main" '
       'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"')
RELS = 'xmlns="http://schemas.openxmlformats.org/package/2006/relationships"'
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


def _check(tmp_path: Path, name: str, data: bytes, strategy=None) -> checks.FileReport:
    path = tmp_path / ("file" + checks.suffix_of(name))  # as the airlock's plaintext copy is named
    path.write_bytes(data)
    return checks.check_file(path, name, max_bytes=MAX, strategy=strategy)


def _failed(report: checks.FileReport) -> list[checks.Check]:
    return [c for c in report.checks if not c.passed]


def _zip(members: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _docx(body: str, parts: dict[str, bytes | str] | None = None) -> bytes:
    return _zip({"[Content_Types].xml": '<Types xmlns="http://schemas.openxmlformats.org/package/2006/'
                                        'content-types"/>',
                 "_rels/.rels": f'<Relationships {RELS}><Relationship Id="rId1" Target="word/document.xml"/>'
                                '</Relationships>',
                 "word/document.xml": f"<w:document {W}><w:body>{body}</w:body></w:document>", **(parts or {})})


def _workbook(second_sheet_rows: list[list], *, comment: str | None = None, hidden: bool = False) -> bytes:
    wb = openpyxl.Workbook()
    wb.active.title = "summary"
    wb.active.append(["group", "n"])
    wb.active.append(["A", 12])
    if comment:
        wb.active["B2"].comment = Comment(comment, "steward")
    raw = wb.create_sheet("raw")
    for row in second_sheet_rows:
        raw.append(row)
    if hidden:
        raw.sheet_state = "hidden"
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _parquet(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


# -- compressed streams -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "compress"), [("lab.csv.gz", gzip.compress), ("lab.csv.bz2", bz2.compress),
                                                ("lab.csv.xz", lzma.compress)])
def test_a_compressed_stream_is_checked_as_what_it_holds(tmp_path, name, compress) -> None:
    leaky = _check(tmp_path, name, compress(LEAKY))
    [failed] = _failed(leaky)
    assert failed.name == "lab.csv: identifiers in cells" and "1 personnummer cell(s) in pin" in failed.detail
    assert not failed.not_checked
    clean = _check(tmp_path, name, compress(CLEAN))
    assert clean.passed, clean.as_json()
    assert any(c.name == "lab.csv: identifiers in cells" and c.passed for c in clean.checks)  # it was read


def test_a_tar_gz_is_decompressed_and_its_members_checked(tmp_path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in (("out/clean.csv", CLEAN), ("out/lab.csv", LEAKY)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    report = _check(tmp_path, "results.tar.gz", buf.getvalue())
    [failed] = _failed(report)
    assert failed.name == "results.tar: archive contents"
    assert "out/lab.csv: identifiers in cells: 1 personnummer" in failed.detail
    assert failed.items == [{"name": "out/clean.csv", "size": len(CLEAN)}, {"name": "out/lab.csv", "size": len(LEAKY)}]


def test_a_decompression_bomb_is_not_checked(tmp_path) -> None:
    bomb = gzip.compress(bytes(20 * 2**20))  # 20 MiB of zeros in ~20 KiB: over 100×
    report = _check(tmp_path, "data.csv.gz", bomb)
    [unread] = _failed(report)
    assert unread.not_checked and "expands more than 100×" in unread.detail
    # in a ZIP, the member is named as not read
    zipped = _check(tmp_path, "bundle.zip", _zip({"notes.txt": "summary\n", "zeros.txt": bytes(20 * 2**20)}))
    [unread] = _failed(zipped)
    assert unread.not_checked and "zeros.txt: expands more than 100×" in unread.detail


def test_the_bytes_extracted_from_one_file_are_capped_in_all(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(checks, "MAX_INFLATED", 2**20)  # the bound, lowered: 1 MiB for the whole file
    text = "".join(f"row {i} ok\n" for i in range(60_000)).encode()  # ~640 KB of text
    report = _check(tmp_path, "bundle.zip", _zip({"a.txt": text, "b.txt": text, "c.txt": text}))
    [unread] = _failed(report)
    assert unread.not_checked and "more than 1 MiB to decompress or extract in all" in unread.detail
    assert "a.txt" not in unread.detail.split("not inspected:")[1]  # the first members were read


# -- archives ---------------------------------------------------------------------------------------
def test_zip_members_are_read_not_only_listed(tmp_path) -> None:
    report = _check(tmp_path, "bundle.zip", _zip({"lab.csv": LEAKY, "notes.txt": "no identifiers\n"}))
    [failed] = _failed(report)
    assert failed.name == "archive contents" and not failed.not_checked
    assert "lab.csv: identifiers in cells: 1 personnummer cell(s) in pin" in failed.detail
    assert failed.items == [{"name": "lab.csv", "size": len(LEAKY)}, {"name": "notes.txt", "size": 15}]
    clean = _check(tmp_path, "bundle.zip", _zip({"ages.csv": CLEAN, "notes.txt": "no identifiers\n"}))
    assert clean.passed, clean.as_json()


def test_nested_archives_are_read_to_a_small_depth(tmp_path) -> None:
    inner = _zip({"deep/lab.csv": LEAKY})
    report = _check(tmp_path, "outer.zip", _zip({"middle.zip": _zip({"inner.zip": inner}), "x.txt": "ok\n"}))
    [failed] = _failed(report)
    assert "middle.zip" in failed.detail and "inner.zip" in failed.detail and "personnummer" in failed.detail
    too_deep = _zip({"4.zip": _zip({"3.zip": _zip({"2.zip": _zip({"1.txt": "ok\n"})})})})
    [unread] = _failed(_check(tmp_path, "outer.zip", too_deep))
    assert unread.not_checked and f"nested more than {checks.MAX_DEPTH} levels deep" in unread.detail


def test_an_encrypted_member_is_not_checked(tmp_path) -> None:
    data = bytearray(_zip({"notes.txt": "ok\n", "secret.csv": LEAKY}))
    # zipfile writes no encryption: set the "encrypted" bit of secret.csv in its local and central headers
    for magic, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.rindex(magic)  # the last local header and the last central header are secret.csv's
        data[at + flags] |= 0x1
    [unread] = _failed(_check(tmp_path, "bundle.zip", bytes(data)))
    assert unread.not_checked and "secret.csv: encrypted: not read" in unread.detail


def test_names_holding_identifiers_never_reach_the_results(tmp_path) -> None:
    report = _check(tmp_path, "bundle.zip", _zip({f"{PNR}.txt": "ok\n"}))
    assert not report.passed and "1 member name(s) hold an identifier" in str(report.as_json())
    workbook = openpyxl.Workbook()
    workbook.active.title = PNR
    workbook.active.append(["age", PNR])
    workbook.active.append([41, 1])
    workbook.create_sheet("other").append(["x"])
    buf = io.BytesIO()
    workbook.save(buf)
    strategy = load_strategy('name = "t"\n[columns.age]\naction = "keep"\n')
    for report in (_check(tmp_path, "cohort.xlsx", buf.getvalue()),
                   _check(tmp_path, "cohort.xlsx", buf.getvalue(), strategy)):
        assert not report.passed and "19121212" not in str(report.as_json())
    assert "sheet '[identifier]'" in str(report.as_json())


# -- Office documents -------------------------------------------------------------------------------
def test_docx_text_is_read_runs_comments_tracked_changes_and_links(tmp_path) -> None:
    # Word splits a number over runs; the en dash is what Word's autocorrect writes
    split = "<w:p><w:r><w:t>Patient 19121212</w:t></w:r><w:r><w:t>\u20131212 seen</w:t></w:r></w:p>"
    [failed] = _failed(_check(tmp_path, "letter.docx", _docx(split)))
    assert failed.name == "document text" and "found 1 personnummer" in failed.detail
    deleted = "<w:p><w:del><w:r><w:delText>19121212 1212</w:delText></w:r></w:del></w:p>"
    assert "personnummer" in _failed(_check(tmp_path, "letter.docx", _docx(deleted)))[0].detail
    comment = _docx("<w:p><w:r><w:t>Summary</w:t></w:r></w:p>",
                    {"word/comments.xml": f"<w:comments {W}><w:comment><w:p><w:r><w:t>ring 070-123 45 67</w:t>"
                                          "</w:r></w:p></w:comment></w:comments>"})
    assert "telephone number" in _failed(_check(tmp_path, "letter.docx", comment))[0].detail
    link = _docx("<w:p><w:r><w:t>Contact</w:t></w:r></w:p>",
                 {"word/_rels/document.xml.rels": f'<Relationships {RELS}><Relationship Id="rId2" '
                                                  'Target="mailto:anna@example.org"/></Relationships>'})
    assert "e-mail" in _failed(_check(tmp_path, "letter.docx", link))[0].detail
    clean = _check(tmp_path, "letter.docx", _docx("<w:p><w:r><w:t>41 patients, median age 63</w:t></w:r></w:p>"))
    assert clean.passed and clean.checks[-1].name == "document text", clean.as_json()


def test_pptx_text_is_read_and_embedded_images_are_not_checked(tmp_path) -> None:
    slide = (f"<p:sld {PML}><p:cSld><p:spTree><p:sp><p:txBody><a:p><a:r><a:t>Case 19121212\u22121212</a:t>"
             "</a:r></a:p></p:txBody></p:sp></p:spTree></p:cSld></p:sld>")
    deck = _zip({"[Content_Types].xml": "<Types/>", "ppt/slides/slide1.xml": slide})
    [failed] = _failed(_check(tmp_path, "talk.pptx", deck))
    assert "found 1 personnummer" in failed.detail and not failed.not_checked
    pictured = _docx("<w:p><w:r><w:t>Figure 1</w:t></w:r></w:p>", {"word/media/image1.png": PNG})
    report = _check(tmp_path, "report.docx", pictured)
    [unread] = _failed(report)
    assert unread.not_checked and "word/media/image1.png: content: image content" in unread.detail
    assert report.as_json()[-1]["not_checked"] is True


def test_every_sheet_of_a_workbook_is_read(tmp_path) -> None:
    for hidden in (False, True):
        report = _check(tmp_path, "cohort.xlsx", _workbook([["pin", "age"], [PNR, 41]], hidden=hidden))
        cells = next(c for c in report.checks if c.name == "identifiers in cells")
        assert not cells.passed and "sheet 'raw': 1 personnummer cell(s) in pin" in cells.detail
    # with the project's strategy: every sheet verified against it
    strategy = load_strategy('name = "t"\n[columns.group]\naction = "keep"\n[columns.n]\naction = "keep"\n')
    verified = _check(tmp_path, "cohort.xlsx", _workbook([["group", "n"], [PNR, 41]]), strategy)
    rule = next(c for c in verified.checks if c.name == "strategy verification")
    assert not rule.passed and "sheet 'raw': no identifier in any cell: 1 personnummer" in rule.detail
    clean = _check(tmp_path, "cohort.xlsx", _workbook([["group", "n"], ["B", 7]]), strategy)
    assert clean.passed, clean.as_json()
    assert "in 2 sheets" in next(c for c in clean.checks if c.name == "strategy verification").detail


def test_a_workbook_comment_is_read(tmp_path) -> None:
    report = _check(tmp_path, "cohort.xlsx", _workbook([["group", "n"], ["B", 7]], comment=f"ask {PNR}"))
    [failed] = _failed(report)
    assert failed.name == "document text" and "personnummer" in failed.detail


# -- tables -----------------------------------------------------------------------------------------
def test_column_names_are_scanned(tmp_path) -> None:
    pivot = f"analyte,{PNR},P002\nHb,140,132\n".encode()  # one column per patient
    [failed] = _failed(_check(tmp_path, "pivot.csv", pivot))
    assert "1 personnummer cell(s) in the column names" in failed.detail and "19121212" not in failed.detail
    frame = pl.DataFrame({"analyte": ["Hb"], PNR: ["140"]})
    found = engine.verify(frame, load_strategy('name = "t"\nunlisted = "delete"\n[columns.analyte]\n'
                                               'action = "keep"\n')).identifiers
    assert {"column": "the column names", "kind": "personnummer", "cells": 1} in found


@pytest.mark.parametrize("frame", [
    pl.DataFrame({"pin": [191212121212], "age": [41]}),              # YYYYMMDDNNNN as a number
    pl.DataFrame({"pin": [1212121212], "age": [41]}),                # YYMMDDNNNN as a number
    pl.DataFrame({"pin": [191212121212.0, None], "age": [41, 42]}),  # pandas' integers with a gap
    pl.DataFrame({"ids": [[PNR], []], "age": [41, 42]}),             # a list column
    pl.DataFrame({"visit": [{"who": PNR, "day": 3}], "age": [41]}),  # a struct column
    pl.DataFrame({"visits": [[{"who": 191212121212}]], "age": [41]}),
])
def test_numbers_lists_and_structs_are_scanned_by_the_airlock(tmp_path, frame) -> None:
    # (a text value is in the file's footer too, as a column's statistics: "Parquet metadata" fails as well)
    [failed] = [c for c in _failed(_check(tmp_path, "lab.parquet", _parquet(frame))) if c.name != "Parquet metadata"]
    assert "1 personnummer cell(s)" in failed.detail


def test_ordinary_numbers_are_not_identifiers(tmp_path) -> None:
    # 9-digit ids, 10-12 digit numbers that fail the date or the Luhn digit, decimals
    frame = pl.DataFrame({"id": [123456789, 987654321], "count": [10**10 + 7, 4_000_000_000],
                          "value": [0.5, 1912121212.5], "big": [10**15, 2]})
    report = _check(tmp_path, "stats.parquet", _parquet(frame))
    assert report.passed, report.as_json()


def test_the_strategy_verification_scans_numbers_and_lists() -> None:
    keep = load_strategy('name = "t"\n[columns.pin]\naction = "keep"\n[columns.age]\naction = "keep"\n')
    run = engine.apply(pl.DataFrame({"pin": [191212121212, 191212121212], "age": [41, 42]}), keep, SECRET)
    assert not run.passed
    assert {"column": "pin", "kind": "personnummer", "cells": 2} in run.verification.identifiers
    listed = engine.verify(pl.DataFrame({"pin": [["x", PNR]], "age": [41]}), keep)
    assert not listed.passed and {"column": "pin", "kind": "personnummer", "cells": 1} in listed.identifiers
    clean = engine.apply(pl.DataFrame({"pin": [123456789], "age": [41]}), keep, SECRET)
    assert clean.passed


# -- what cannot be read ----------------------------------------------------------------------------
def _sqlite(tmp_path: Path) -> bytes:
    db = tmp_path / "x.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("create table t (pin text)")
        con.execute("insert into t values (?)", (PNR,))
    con.close()
    return db.read_bytes()


def test_what_the_checks_cannot_read_is_not_checked(tmp_path) -> None:
    cases = {"paper.pdf": (b"%PDF-1.7\n" + PNR.encode(), "PDF content"),
             "figure.png": (PNG, "image content"),
             "cohort.sqlite": (_sqlite(tmp_path), "database content"),
             "bundle.7z": (b"7z\xbc\xaf\x27\x1c" + bytes(40), "7z archives"),
             "model.bin": (bytes(range(256)) * 4, "binary content of an unknown kind")}
    for name, (data, why) in cases.items():
        report = _check(tmp_path, name, data)
        [unread] = [c for c in report.checks if c.name == "content"]
        assert not report.passed and not unread.passed and unread.not_checked and why in unread.detail, name
        assert report.as_json()[-1] == {"name": "content", "passed": False, "detail": unread.detail,
                                        "not_checked": True}


def test_text_beyond_the_scan_limit_is_not_checked(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(checks, "TEXT_SCAN_BYTES", 2**20)  # the bound, lowered to 1 MiB
    text = b"ok line\n" * (2**20 // 8) + f"late {PNR}\n".encode()
    [unread] = _failed(_check(tmp_path, "log.txt", text))
    assert unread.not_checked and "the rest was not read" in unread.detail
    # a passed check keeps its word when everything was read
    assert _check(tmp_path, "log.txt", b"ok line\n" * 1000).passed


# -- personnummer separators ------------------------------------------------------------------------
@pytest.mark.parametrize("sep", ["-", "+", "", " ", "\u00a0", "\u2010", "\u2011", "\u2012", "\u2013", "\u2014",
                                 "\u2015", "\u2212"])
def test_personnummer_with_any_usual_separator(sep) -> None:
    for text in (f"19121212{sep}1212", f"121212{sep}1212", f"Patient 19121212{sep}1212, seen"):
        assert identifiers.national_ids(text) == ["personnummer"], repr(text)
        assert [k for *_, k in identifiers.spans(text)] == ["personnummer"], repr(text)
    assert identifiers.national_ids(f"19121272{sep}1219") == ["samordningsnummer"]
    assert pl.Series([f"x 19121212{sep}1212"]).str.contains(identifiers.PNR_HINT).item()  # the Polars filter


def test_separators_do_not_make_ordinary_numbers_identifiers() -> None:
    for text in ("19121212\u20131213",   # the Luhn digit is wrong
                 "19121212  1212",       # two spaces
                 "19121212\n1212",       # a line break: two values
                 "lot 201513 4455",      # no such month
                 "1.19121212 1212",      # part of a decimal
                 "Hb 140 132 128 1212"):
        assert identifiers.national_ids(text) == [], repr(text)


def test_the_free_text_scrub_removes_every_form() -> None:
    strategy = load_strategy('name = "t"\n[columns.note]\naction = "free_text"\nmode = "scrub"\n')
    notes = ["pnr 19121212\u20131212 seen", "pnr 19121212 1212 seen", "pnr 19121212\u22121212 seen", f"pnr {PNR}"]
    run = engine.apply(pl.DataFrame({"note": notes}), strategy, SECRET)
    assert run.passed and run.output["note"].to_list() == ["pnr [REMOVED] seen"] * 3 + ["pnr [REMOVED]"]


# -- through the hub --------------------------------------------------------------------------------
def test_hub_a_gzipped_csv_and_a_second_sheet_are_not_passed_and_need_the_override(world, app) -> None:  # noqa: F811
    w, hub, c = world, world["hub"], world["c"]
    gz = _put_file(hub, "lung", w["p"]["sam"], "out/lab.csv.gz", gzip.compress(LEAKY))
    xl = _put_file(hub, "lung", w["p"]["sam"], "out/cohort.xlsx", _workbook([["pin", "age"], [PNR, 41]]))
    pdf = _put_file(hub, "lung", w["p"]["sam"], "out/paper.pdf", b"%PDF-1.7\n%%EOF\n")
    req = _export(w, "sam", [gz, xl, pdf]).json()
    _drain(hub)
    got = _get(w, req["id"])
    assert got["state"] == "in_review" and got["checks_passed"] is False
    files = {f["path"]: f for f in got["files"]}
    assert all(f["check_state"] == "failed" for f in files.values())
    assert any("personnummer" in x["detail"] for x in files["out/lab.csv.gz"]["checks"] if not x["passed"])
    assert any("sheet 'raw'" in x["detail"] for x in files["out/cohort.xlsx"]["checks"] if not x["passed"])
    [unread] = [x for x in files["out/paper.pdf"]["checks"] if not x["passed"]]
    assert unread["not_checked"] is True and "PDF content" in unread["detail"]
    assert "19121212" not in str(got)  # kinds and counts, never values
    # the reviewer's page says which file was not inspected and why
    page = web_client(app, hub, w["p"]["rita"]).get(f"/projects/lung/airlock/{req['id']}")
    assert page.status_code == 200 and "NOT CHECKED" in page.text and "PDF content" in page.text
    assert "not checked" in page.text.split("out/paper.pdf")[1] and "FAILED" in page.text
    # approval is blocked until the PI overrides
    r = _review(w, req["id"], "rita")
    assert r.status_code == 409 and "blocked" in r.json()["detail"]
    r = c.post(f"/api/v1/projects/lung/airlock/requests/{req['id']}/override",
               json={"reason": "Synthetic test persons; the PDF was read by the PI"}, headers=bearer(w["t"]["alice"]))
    assert r.status_code == 200, r.text
    assert _review(w, req["id"], "rita").status_code == 200
