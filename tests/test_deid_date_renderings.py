"""The patient's original dates and names written in kept free text, in every rendering: each case goes
through the pipeline as received instances do (``pipeline.process_file``: engine, then verification) and
must end quarantined, or masked by the allow-list profile's cleaner; what is not the patient's (other dates,
doses, versions, times, fractions, series numbers) is released. Then ``identifiers``' date reading alone."""

from __future__ import annotations

import io
import itertools
import unicodedata
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from strongroom import identifiers
from strongroom.imaging import pipeline, synthetic
from strongroom.imaging.deid import DeidProfile
from test_deid_audit_leaks import _comment, _encode

SECRET = b"renderings-secret-0123456789abcd"
REMOVE, MODIFIED, FULL = DeidProfile(), DeidProfile(retain_longitudinal_modified_dates=True), \
    DeidProfile(retain_longitudinal_full=True)
ALLOW_LIST = DeidProfile(retain_longitudinal_modified_dates=True, text_allow_list=True)
STUDY_DATE, BIRTH_DATE = "20210104", "19850307"  # _ct()'s Study/Series/Acquisition/Content Date; set below

# 4 January 2021 (the study date) as free text writes it, where the engine and the verification missed it
STUDY_RENDERINGS = [
    # the day and month without a year, with a month's name (the year is the study's, known from context)
    "4 Jan", "Jan 4", "4 januari", "4th Jan", "January 4th", "4. Januar", "4. Jänner", "4 janv.", "4e januari",
    "4:e jan", "JAN-04", "4-Jan", "04JAN", "4 Jan 10:30", "Jan 4 10:30",
    # ... numeric, two digits each
    "04/01", "04.01.",
    # a month's name with a two-digit year
    "04-JAN-21", "4-jan-21", "JAN-04-21", "04JAN21", "4 jan. 21", "Jan 4, 21",
    # numbers apart
    "04 01 2021", "4 1 2021", "04 01 2021 10:30", "04\u00a001\u00a02021",
    # CJK, the Japanese era and Minguo years, full-width digits, without the year
    "2021年1月4日", "2021年01月04日", "2021年1月4号", "2021년 1월 4일", "2021 年 1 月 4 日", "令和3年1月4日",
    "民國110年1月4日", "1月4日", "1월 4일", "２０２１年１月４日",
    # two-digit years, numeric: month first, day first with dashes, year first with dots, unpadded
    "01/04/21", "04-01-21", "21.01.04", "4.1.21", "1/4/21",
    # six bare digits
    "210104", "040121", "010421",
    # Korean year first; other languages
    "2021. 1. 4.", "4 janvier 2021", "4. Jänner 2021", "4 JANV 2021", "4e januari 2021",
    # read before: kept beside the others
    "04-Jan-2021", "JAN-04-2021", "04.01.21", "04/01/21", "21-01-04", "4th Jan 2021", "January 4th, 2021",
]
# 7 March 1985 (the birth date): March has the most forms (mars, märz, mrz, mrt, maart, marts)
BIRTH_RENDERINGS = [
    "7 Mar", "Mar 7", "7 mars", "7. März", "7. Maerz", "7. Mrz", "7 mrt.", "7 maart", "7. marts", "7th March",
    "07/03", "07.03.", "07-MAR-85", "7-mär-85", "MAR-07-85", "07 03 1985", "7 3 1985", "1985年3月7日",
    "昭和60年3月7日", "3月7日", "1985년 3월 7일", "3/7/85", "070385", "070385-1234", "7. März 1985", "7 maart 1985",
    "7e maart 1985", "1985. 3. 7.",
    # read before
    "07.03.85", "85-03-07", "850307", "7 mars 1985", "March 7th, 1985",
]


def _ct() -> Dataset:
    ds = pydicom.dcmread(io.BytesIO(synthetic.make_ct(0, 0, 1, 1, rows=16, columns=16)))
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _process(tmp_path: Path, ds: Dataset, profile: DeidProfile) -> tuple[list[str], bytes]:
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src.write_bytes(_encode(ds))
    summary = pipeline.process_file(str(src), str(dst), profile, SECRET)
    return summary["reasons"], dst.read_bytes()


# ---- the verification: the original dates in kept free text are held


@pytest.mark.parametrize("profile", [REMOVE, MODIFIED], ids=["remove", "modified"])
@pytest.mark.parametrize("written", STUDY_RENDERINGS)
def test_study_date_rendering_in_kept_text_is_quarantined(tmp_path: Path, written: str, profile: DeidProfile) -> None:
    ds = _ct()
    assert ds.StudyDate == STUDY_DATE
    _comment(ds, f"Scheduled {written} by the ward")
    reasons, _ = _process(tmp_path, ds, profile)
    assert "leak: date in (0040,0100)[0].(0040,0400)" in reasons, reasons


@pytest.mark.parametrize("profile", [REMOVE, MODIFIED, FULL], ids=["remove", "modified", "full"])
@pytest.mark.parametrize("written", BIRTH_RENDERINGS)
def test_birth_date_rendering_in_kept_text_is_quarantined(tmp_path: Path, written: str, profile: DeidProfile) -> None:
    ds = _ct()
    ds.PatientBirthDate = BIRTH_DATE
    _comment(ds, f"född {written}, kontroll")
    reasons, _ = _process(tmp_path, ds, profile)
    assert "leak: birth date in (0040,0100)[0]>(0040,0400)" in reasons, reasons


# every month's names and common abbreviations: English, Swedish, Danish, Norwegian, German (Austria's
# Jänner and Feber too), French, Dutch; the accented ones also as typed without the accent
_MONTH_WORDS = [(word, month) for month, words in enumerate((
    "january jan januari januar jänner jaenner janner jän janvier janv",
    "february feb februari februar feber février fevrier févr fevr fév fev",
    "march mar mars marts märz maerz marz mär mrz maart mrt",
    "april apr avril avr",
    "may maj mai mei",
    "june jun juni juin",
    "july jul juli juillet juil",
    "august aug augusti augustus août aout",
    "september sep sept septembre",
    "october oct okt oktober octobre",
    "november nov novembre",
    "december dec dez dezember des desember décembre decembre déc",
), 1) for word in words.split()]


@pytest.mark.parametrize("word, month", _MONTH_WORDS, ids=[w for w, _ in _MONTH_WORDS])
def test_every_month_name_is_read_through_the_engine(tmp_path: Path, word: str, month: int) -> None:
    """Each month's every name and abbreviation (English, Swedish, Danish, Norwegian, German, French, Dutch),
    capitalised, with the birth date's day and no year ("des", the French article too, only with a year)."""
    ds = _ct()
    ds.PatientBirthDate = f"1985{month:02d}07"
    written = f"7 {word.capitalize()}" + (" 1985" if word == "des" else "")
    _comment(ds, f"född {written}, kontroll")
    reasons, _ = _process(tmp_path, ds, REMOVE)
    assert "leak: birth date in (0040,0100)[0]>(0040,0400)" in reasons, (written, reasons)


@pytest.mark.parametrize("profile", [REMOVE, MODIFIED], ids=["remove", "modified"])
@pytest.mark.parametrize("text", [
    "dose 4.1 mGy, CTDI 04.01 mGy",  # doses
    "syngo v2.10.4, VB4.1.21, build_210104",  # versions, a build tag
    "at 04:01:21, kl 04:01",  # times
    "Series 4 Image 1; Se 4/1; 1/4 dose; 4/1; ratio 04/01 mm",  # series numbers, fractions, a ratio with a unit
    "levels 04-01, T4-1",  # ranges
    "4 Feb, Feb 4, 5 Jan, Jan 5, 04/02, 05.01.",  # other days
    "04-JAN-20, 4 Jan 2020, 04.01.20, 2020年1月4日, 平成3年1月4日",  # the same day in other years
    "1 04 01 2021 5, 04 01 2021 mm",  # runs of numbers, a measurement
    "serie 210105, acc A210104, 2101041",  # six digits that are not the date, or inside a code or number
    "Jan 4mm, Jan 4 mm, primary 4, dec 3",  # month-like words beside numbers
])
def test_what_is_not_the_patients_date_is_released(tmp_path: Path, text: str, profile: DeidProfile) -> None:
    """False-positive guards, each beside the study date's digits (4 January 2021): only the patient's own
    original dates count."""
    ds = _ct()
    ds.PatientBirthDate = BIRTH_DATE
    _comment(ds, text)
    reasons, _ = _process(tmp_path, ds, profile)
    assert reasons == []


def test_french_article_des_is_not_december(tmp_path: Path) -> None:
    """"des" is the Norwegian December beside a year, and the French article otherwise."""
    ds = _ct()
    ds.PatientBirthDate = "19851204"
    _comment(ds, "Comparaison des 4 examens précédents; 4 des examens")
    reasons, _ = _process(tmp_path, ds, REMOVE)
    assert reasons == []
    _comment(ds, "født 4. des. 1985")
    reasons, _ = _process(tmp_path, ds, REMOVE)
    assert "leak: birth date in (0040,0100)[0]>(0040,0400)" in reasons, reasons


@pytest.mark.parametrize("written", ["210104", "040121"])
def test_six_digits_in_a_coded_string_are_not_read(tmp_path: Path, written: str) -> None:
    """A coded string or a code value holds defined terms and codes: six bare digits there are a code."""
    ds = _ct()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = written, "99LOCAL", "Chest"
    ds.AnatomicRegionSequence = Sequence([item])
    reasons, _ = _process(tmp_path, ds, REMOVE)
    assert reasons == []


# ---- the allow-list profile's cleaner masks them


@pytest.mark.parametrize("written", STUDY_RENDERINGS)
def test_allow_list_profile_masks_every_rendering(tmp_path: Path, written: str) -> None:
    """A cleaned attribute (a code meaning) has the date masked and the instance is released."""
    ds = _ct()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "T-D3000", "SRT"
    item.CodeMeaning = f"Chest {written}"
    ds.AnatomicRegionSequence = Sequence([item])
    reasons, out = _process(tmp_path, ds, ALLOW_LIST)
    meaning = pydicom.dcmread(io.BytesIO(out)).AnatomicRegionSequence[0].CodeMeaning
    assert reasons == [] and written not in meaning, (reasons, meaning)


# ---- CJK names written apart


_CJK_NAMES = [
    ("王^伟", "王 伟"), ("王^伟", "王·伟"), ("王^伟", "王・伟"), ("王^伟", "王\u3000伟"), ("王^伟", "王\uff65伟"),
    ("Wang^Wei=王^伟", "患者 王·伟 复查"),
    ("Yamada^Taro=山田^太郎=やまだ^たろう", "山田 太郎様"), ("Yamada^Taro=山田^太郎=やまだ^たろう", "山田・太郎"),
    ("Yamada^Taro=山田^太郎=やまだ^たろう", "やまだ たろう"),
    ("Kim^Minjun=김^민준", "환자 김 민준"), ("Kim^Minjun=김^민준", "김민준"),
    ("=王 伟", "王·伟"),  # one component holding the name apart
]


@pytest.mark.parametrize("name, text", _CJK_NAMES)
def test_cjk_name_written_apart_is_quarantined(tmp_path: Path, name: str, text: str) -> None:
    ds = _ct()
    ds.PatientName = name
    _comment(ds, text)
    reasons, _ = _process(tmp_path, ds, REMOVE)
    assert "leak: patient name in (0040,0100)[0]>(0040,0400)" in reasons, reasons


def test_cjk_name_characters_apart_in_other_words_are_not_flagged(tmp_path: Path) -> None:
    """The family and the given name in other words, or in the other order, are not the name."""
    ds = _ct()
    ds.PatientName = "李^娜"
    _comment(ds, "李医生 复查。娜 李; 李 医 娜")
    reasons, _ = _process(tmp_path, ds, REMOVE)
    assert reasons == []


@pytest.mark.parametrize("name, text", _CJK_NAMES)
def test_allow_list_profile_masks_cjk_names(tmp_path: Path, name: str, text: str) -> None:
    ds = _ct()
    ds.PatientName = name
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D3000", "SRT", f"Chest {text}"
    ds.AnatomicRegionSequence = Sequence([item])
    reasons, out = _process(tmp_path, ds, ALLOW_LIST)
    assert reasons == [], reasons
    assert "***" in pydicom.dcmread(io.BytesIO(out)).AnatomicRegionSequence[0].CodeMeaning


# ---- identifiers: the date reading alone


def _readings(text: str) -> set[str]:
    return {d for span in identifiers.date_spans(text) for d in span.dates}


@pytest.mark.parametrize("written", STUDY_RENDERINGS)
def test_study_renderings_read_as_the_date(written: str) -> None:
    written = unicodedata.normalize("NFKC", written)  # full-width digits: the callers read folded text too
    assert {STUDY_DATE, "--0104"} & _readings(f"x {written} y")
    assert identifiers.dates_written([f"x {written} y"], {STUDY_DATE}, lambda i: True) == {STUDY_DATE: 0}


def test_six_digits_count_only_where_the_caller_searches_them() -> None:
    assert [span.yymmdd for span in identifiers.date_spans("210104 and 4 Jan 2021")] == [True, False]
    assert identifiers.dates_written(["x 210104"], {STUDY_DATE}) == {}
    assert identifiers.dates_written(["x 210104", "y 040121"], {STUDY_DATE}, lambda i: i == 1) == {STUDY_DATE: 1}


@pytest.mark.parametrize("word, month", _MONTH_WORDS, ids=[w for w, _ in _MONTH_WORDS])
def test_every_month_name_in_every_form(word: str, month: int) -> None:
    day = f"2021{month:02d}04"
    forms = [f"4 {word} 2021", f"{word} 4, 2021", f"04{word}2021", f"2021-{word}-04", f"4-{word}-21",
             f"{word.upper()}-04-21", f"4. {word.capitalize()}. 2021", f"4th {word} 2021"]
    for written in forms:
        assert identifiers.dates_written([f"x {written} y"], {day}) == {day: 0}, written
    if word != "des":
        for written in (f"4 {word}", f"{word.upper()} 4", f"{word.capitalize()}. 4th"):
            assert _readings(f"x {written} y") == {f"--{month:02d}04"}, written


def test_a_day_and_month_alone_match_the_dates_of_that_day_in_any_year() -> None:
    wanted = {STUDY_DATE, "19850104", "19850307"}
    assert identifiers.dates_written(["seen 4 Jan"], wanted) == {STUDY_DATE: 0, "19850104": 0}
    assert identifiers.dates_written(["04/01"], wanted) == {STUDY_DATE: 0, "19850104": 0}
    assert identifiers.dates_written(["4 Jan 2020"], wanted) == {}  # a year written: only that year's


@pytest.mark.parametrize("text", [
    "4.1 mGy", "04.01 mm", "12.05", "v2.10.4", "v4.1.21", "04:01:21", "04:01", "1/4", "4/1", "3/4 dose", "4/10",
    "04/01 mm", "10-12", "04-01", "04 01 2021 mm", "1 04 01 2021 5", "A210104", "2101041", "210104.5", "Jan 4mm",
    "jan", "4th", "primary 4", "Gleason 4+1", "T4 N1", "4 x 1 mm", "fig 4.1.", "31/02/2021", "1.2.840.10008.5.1.4.1",
    "2021/01", "01/2021", "des 4", "4 des", "Jan 4 mm",
])
def test_not_a_date_of_the_patients(text: str) -> None:
    assert identifiers.dates_written([text], {STUDY_DATE, "20210401"}, lambda i: True) == {}, text


def test_date_spans_finds_what_date_finds_over_the_whole_text() -> None:
    """The line hints (``DATE_HINT``, a month's name beside a digit) never hide a span: over many lines of
    renderings and guards, ``date_spans`` yields exactly the spans ``DATE`` finds in the whole text."""
    lines = [*STUDY_RENDERINGS, *BIRTH_RENDERINGS, "4.1 mGy", "v2.10.4", "primary", "ORIGINAL\\PRIMARY\\AXIAL",
             "İstanbul 4 Jan", "Jan", "4", "x"]
    for a, b in itertools.product(lines[::3], lines[1::4]):
        text = f"{a}\n{b} and {a}\nnothing here\n{b}"
        expected = [(m.start(), m.end()) for m in identifiers.DATE.finditer(text)]
        assert [(s.start, s.end) for s in identifiers.date_spans(text)] == expected, text


@pytest.mark.parametrize("written", [*STUDY_RENDERINGS, *BIRTH_RENDERINGS])
def test_the_first_test_lets_every_rendering_through(written: str) -> None:
    """``may_write_dates`` (substring tests before any pattern) is true for every rendering of the dates."""
    for text in (f"x {written} y", f"x {written.upper()} y", f"x {written.lower()} y"):
        assert identifiers.may_write_dates(text, {STUDY_DATE, BIRTH_DATE}, yymmdd=True), text


def test_the_first_test_rejects_a_header_without_the_dates() -> None:
    header = ("ISO_IR 100\nORIGINAL\\PRIMARY\\AXIAL\nCT\nGE MEDICAL SYSTEMS\nCT thorax with contrast\n"
              "Strongroom deid 1 PS3.15-2024b E.1-1\nREV 5.1\nHELICAL MODE\nLARGE BOWTIE FIL\nMONOCHROME2")
    assert not identifiers.may_write_dates(header, {STUDY_DATE, BIRTH_DATE, "20040319"}, yymmdd=True)


@pytest.mark.parametrize("value, forms", [
    ("王^伟", ["王伟", "王 伟", "王\u3000伟", "王\u00a0伟", "王·伟", "王・伟", "王\uff65伟"]),
    ("Wang^Wei=王^伟", ["王伟", "王 伟", "王\u3000伟", "王\u00a0伟", "王·伟", "王・伟", "王\uff65伟"]),
    ("=王伟", ["王伟"]),  # written together in one component: where it splits is not known
    ("Yamada^Taro", []), ("李", []),
])
def test_cjk_name_forms(value: str, forms: list[str]) -> None:
    assert identifiers.cjk_name_forms(value) == forms
