"""After a certified retention deletion of a dataset version that an AI-validation evaluation ran on, nothing the
evaluation keeps names the deleted instances: not its predictions (path, SOP and study UIDs, study date, a read
error), not its labels table, not the clinic's failure lists; every table is searched as in
test_retention_traces.py. The evaluation still answers (API, pages) with the same figures, its cases still match
its reference standard — the disclosure control of a later release compares them with those of the reports that
went before — and the report released before the deletion, aggregates only, stays as it was."""

from __future__ import annotations

import io

import pydicom
from sqlalchemy import select, update

from conftest import bearer, web_client
from strongroom.archive.models import ArchiveFile, DatasetFile, DatasetVersion
from strongroom.db import transaction
from strongroom.retention import deletion
from strongroom.vai import service
from strongroom.vai.models import Evaluation, Prediction, Release
from test_retention_traces import _absent, _delete, _outside_the_audit_log, _traces
from test_vai import (
    PROTOCOL,
    _cases,
    _drain,
    _evaluate,
    _put_files,
    _register,
    vai,  # noqa: F401 - fixture
)

BROKEN = "case-9999-broken.dcm"  # an instance the model cannot read: its prediction records an error


def _needles() -> list[str]:
    """What the deleted instances are named by: their paths, DICOM UIDs, study dates and patient ids."""
    out = [BROKEN]
    for case in _cases():
        ds = pydicom.dcmread(io.BytesIO(case.data), stop_before_pixels=True)
        out += [f"case-{case.index:04d}.dcm", str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID), str(ds.StudyDate), str(ds.PatientID)]
    return out


def _cases_of(hub, evaluation_id: str) -> list[tuple[int, float]]:
    """The evaluation's analysed cases (labels with scores), as a later release's disclosure control reads them."""
    with hub.sessions() as s:
        cases = service.analysed_cases(s, s.get_one(Evaluation, service._uuid(evaluation_id, "evaluation")))
    return sorted(zip(cases.labels.tolist(), cases.scores.tolist(), strict=True))


def test_a_deleted_evaluated_version_leaves_no_trace_and_the_evaluation_answers(vai) -> None:  # noqa: F811
    c, t, hub, p = vai["c"], vai["t"], vai["hub"], vai["p"]
    owner, operator = bearer(t["alice"]), bearer(t["olga"])
    [broken] = _put_files(hub, "screen", p["alice"], {BROKEN: b"not a DICOM instance"})
    with transaction(hub.sessions) as s:
        version = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == vai["dataset"]))
        s.add(DatasetFile(version_id=version.id, file_id=broken))
        s.execute(update(DatasetVersion).where(DatasetVersion.id == version.id)
                  .values(file_count=DatasetVersion.file_count + 1))
    released = c.post(f"/api/v1/datasets/{vai['dataset']}/versions/1/release", headers=owner)
    assert released.status_code == 200, released.text
    # an evaluation by image (the labels table names each instance by its SOP UID), released to the vendor …
    model_id = _register(vai)
    by_image = _evaluate(vai, model_id).json()["id"]
    # … and one by study (the table names each study by its UID)
    by_study = c.post("/api/v1/projects/screen/vai/evaluations", headers=bearer(t["sam"]), json={
        "model_version": model_id, "title": "LesionFinder by study", "dataset_id": vai["dataset"],
        "dataset_version": 1, "protocol": {**PROTOCOL, "subgroups": ["site"]},
        "labels_csv": "study_id,label,site\n" + "".join(f"{x.study_uid},{int(x.lesion)},{x.site}\n"
                                                        for x in _cases())})
    assert by_study.status_code == 201, by_study.text
    by_study = by_study.json()["id"]
    _drain(hub)
    api = {e: f"/api/v1/projects/screen/vai/evaluations/{e}" for e in (by_image, by_study)}
    before = {e: c.get(url, headers=bearer(t["sam"])).json() for e, url in api.items()}
    assert all(ev["state"] == "done" for ev in before.values()), before
    assert before[by_image]["result"]["unreadable"] == 1 and before[by_image]["result"]["failures"]["false_negatives"]
    rid = c.post(f"{api[by_image]}/releases", headers=bearer(t["sam"])).json()["id"]
    for reviewer in ("rita", "ron"):
        assert c.post(f"/api/v1/projects/screen/vai/releases/{rid}/reviews", json={"decision": "approve"},
                      headers=bearer(t[reviewer])).status_code == 200
    with hub.sessions() as s:
        report = s.get_one(Release, service._uuid(rid, "release")).report
    cases = {e: _cases_of(hub, e) for e in (by_image, by_study)}
    assert len(cases[by_image]) == len(cases[by_study]) == len(_cases())
    needles = _needles()
    assert {table for table, _ in _traces(hub, needles)} >= {"archive_files", "vai_predictions", "vai_evaluations"}

    certificate = _delete(hub, c, vai["dataset"], 1, owner, operator)

    # nothing kept outside the audit log names an instance, a study, a date or a path of the deleted version
    assert _outside_the_audit_log(_traces(hub, needles)) == {}
    with hub.sessions() as s:
        gone = {f.id: f for f in s.scalars(select(ArchiveFile).where(ArchiveFile.id.in_([*vai["files"], broken])))}
        assert {f.state for f in gone.values()} == {"deleted"}
        predictions = list(s.scalars(select(Prediction)))
    # each prediction is named by its file's accession, as the file is; its score (and a read error's fact) stays
    assert len(predictions) == 2 * (len(_cases()) + 1)
    assert all(pr.path == pr.item in gone and pr.sop_uid == pr.study_date == "" for pr in predictions)
    assert {pr.study_uid for pr in predictions} <= set(gone) | {""}  # a study: its (first) deleted file's accession
    assert sum(pr.score is None for pr in predictions) == 2
    assert {pr.error for pr in predictions if pr.score is None} == {deletion.FORGOTTEN_ERROR}
    assert certificate["certificate"]["derived"]["vai_predictions"] == len(predictions)
    # the evaluations answer with the same figures; their cases still match the reference standard
    after = {e: c.get(url, headers=bearer(t["sam"])) for e, url in api.items()}
    assert all(r.status_code == 200 for r in after.values())
    for e, r in after.items():
        assert r.json()["result"]["metrics"] == before[e]["result"]["metrics"]
        assert _cases_of(hub, e) == cases[e]
    failures = after[by_image].json()["result"]["failures"]
    assert {f["id"] for f in failures["false_negatives"] + failures["false_positives"]} <= set(gone)
    assert [u["path"] for u in after[by_image].json()["result"]["unreadable_items"]] == [broken]
    with hub.sessions() as s:  # the report released before the deletion: aggregates, unchanged
        assert s.get_one(Release, service._uuid(rid, "release")).report == report
    # a later release is still checked against that report, on the same cases, and names none of them
    later = c.post(f"{api[by_study]}/releases", headers=bearer(t["sam"]))
    assert later.status_code == 201, later.text
    sam, vera = web_client(vai["app"], hub, p["sam"]), web_client(vai["app"], hub, p["vera"])
    shown = {
        **{f"API {e}": r for e, r in after.items()},
        **{f"page {e}": sam.get(f"/projects/screen/vai/evaluations/{e}") for e in api},
        "project page": sam.get("/projects/screen/vai"),
        "API evaluations": c.get("/api/v1/projects/screen/vai/evaluations", headers=bearer(t["sam"])),
        "API releases": c.get("/api/v1/projects/screen/vai/releases", headers=bearer(t["sam"])),
        "vendor's report": vera.get(f"/vai/reports/{rid}"),
        "vendor's report JSON": vera.get(f"/vai/reports/{rid}/report.json"),
        "later release": later,
    }
    assert {where: r.status_code for where, r in shown.items() if r.status_code not in (200, 201)} == {}
    _absent(needles, {where: r.text for where, r in shown.items()})
    assert "Failure analysis" in shown[f"page {by_image}"].text


def test_labels_renamed_keeps_the_table_and_drops_a_second_name_of_one_instance() -> None:
    table = "image_id,label,site\n1.2.3,1,A\ncase-0001.dcm,1,A\n 4.5.6 ,0,\"B, north\"\n"
    assert deletion.renamed_labels(table, {}) == table
    assert deletion.renamed_labels(table, {"7.7.7": "SRF-X"}) == table
    assert deletion.renamed_labels(table, {"1.2.3": "SRF-1", "case-0001.dcm": "SRF-1", "4.5.6": "SRF-2"}) == (
        "image_id,label,site\nSRF-1,1,A\nSRF-2,0,\"B, north\"\n")
    renamed = deletion.renamed_labels(table, {"4.5.6": "SRF-2"})
    assert service.parse_labels(renamed).ids == ["1.2.3", "case-0001.dcm", "SRF-2"]
    assert deletion.renamed_labels("no id column,label\nx,1\n", {"x": "y"}) == "no id column,label\nx,1\n"
