"""VAI on a real hub (SQLite and PostgreSQL): a vendor registers an ONNX detector trained here on synthetic
screening cases; a clinic project evaluates it on a dataset version of its archive as a job; the aggregate
report reaches the vendor only after two named reviewers approved it, as a page (inline SVG), JSON and PDF.
A vendor sees nothing of the clinic but released reports; a killed evaluation resumes without counting
an instance twice; results-only evaluations take an uploaded predictions table."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import re
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import func, select, update

from conftest import bearer, token_for, web_client
from strongroom.archive import service as archive
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key, hub_keys
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.identity.models import ApiToken
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from strongroom.projects.models import Project
from strongroom.vai import metrics, service, synthetic
from strongroom.vai.models import Evaluation, Prediction

END = dt.date(2030, 12, 31)
CASES = 150


@functools.lru_cache(maxsize=1)
def _model() -> bytes:
    return synthetic.train(150)


@functools.lru_cache(maxsize=1)
def _cases() -> list[synthetic.Case]:
    return synthetic.cases(CASES, seed=11)


def _drain(hub) -> None:
    Runner(hub, lease_seconds=30, name="test").run_until_idle()


def _put_files(hub, slug: str, uploader, items: dict[str, bytes]) -> list[str]:
    """Files in the project's archive, sealed on the hub as imports are."""
    ids = []
    with tempfile.TemporaryDirectory() as tmp, transaction(hub.sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == slug))
        keys, storage = hub_keys(hub, s), storage_for(hub)
        for name, data in items.items():
            src = Path(tmp) / "f"
            src.write_bytes(data)
            sealed = archive.seal_into_storage(keys, storage, project.id, archive.new_accession("SRF"), str(src))
            ids.append(archive.add_sealed_file(s, project.id, uploader.user.id, name, sealed).id)
    return ids


@pytest.fixture
def vai(app, hub, people):
    ensure_key(hub)
    names = ("alice", "sam", "rita", "ron", "vera", "vic", "eve")
    p = {n: people(n) for n in names}
    p["olga"] = people("olga", admin=True)
    with transaction(hub.sessions) as s:
        for slug, pi in (("screen", "alice"), ("other", "eve")):
            projects.create_project(s, Actor.system("t"), slug=slug, name=slug.title(), pi=pi, ethics_ref="E1",
                                    end_date=END)
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    t = {n: token_for(hub, person) for n, person in p.items()}
    for user in ("sam", "rita", "ron"):
        assert c.post("/api/v1/projects/screen/members", json={"user": user, "role": "member"},
                      headers=bearer(t["alice"])).status_code == 201
    assert c.put(f"/api/v1/projects/screen/members/{p['sam'].user.id}/rights", json={"rights": ["export"]},
                 headers=bearer(t["alice"])).status_code == 200
    assert c.put("/api/v1/projects/screen/airlock/reviewers", json={"users": ["rita", "ron"]},
                 headers=bearer(t["alice"])).status_code == 200
    # the operator makes two vendors; vera works for Acme, vic for Globex
    for slug, name, member in (("acme", "Acme AI", "vera"), ("globex", "Globex", "vic")):
        assert c.post("/api/v1/vai/vendors", json={"slug": slug, "name": name},
                      headers=bearer(t["olga"])).status_code == 201
        assert c.post(f"/api/v1/vai/vendors/{slug}/members", json={"user": member},
                      headers=bearer(t["olga"])).status_code == 204
    # the clinic's screening images in its archive, and a dataset of them
    cases = _cases()
    files = _put_files(hub, "screen", p["alice"], {f"case-{x.index:04d}.dcm": x.data for x in cases})
    r = c.post("/api/v1/projects/screen/datasets", json={"title": "Screening 2021", "files": files},
               headers=bearer(t["alice"]))
    assert r.status_code == 201, r.text
    return {"c": c, "t": t, "p": p, "hub": hub, "app": app, "dataset": r.json()["id"], "files": files}


def _register(w, who: str = "vera", vendor: str = "acme", version: str = "1.0") -> str:
    model = _model()
    r = w["c"].post(f"/api/v1/vai/vendors/{vendor}/models", headers=bearer(w["t"][who]), json={
        "name": "LesionFinder", "version": version, "mode": "onnx",
        "intended_use": "Flags CT slices with a focal lesion for a second look (screening support).",
        "contract": synthetic.CONTRACT, "output": synthetic.OUTPUT, "sha256": hashlib.sha256(model).hexdigest()})
    assert r.status_code == 201, r.text
    mid = r.json()["id"]
    r = w["c"].put(f"/api/v1/vai/models/{mid}/file", content=model, headers={
        **bearer(w["t"][who]), "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    assert r.json()["uploaded"] is True and r.json()["size"] == len(model)
    return mid


PROTOCOL = {"operating_points": {"vendor": 0.5}, "target_sensitivities": [0.8], "subgroups": ["site", "sex"],
            "reference_standard": "Lesion present in the generator's ground truth", "bootstrap": 500}


def _evaluate(w, model_id: str, who: str = "sam", title: str = "LesionFinder on screening 2021"):
    return w["c"].post("/api/v1/projects/screen/vai/evaluations", headers=bearer(w["t"][who]), json={
        "model_version": model_id, "title": title, "dataset_id": w["dataset"], "dataset_version": 1,
        "labels_csv": synthetic.labels_csv(_cases()), "protocol": PROTOCOL})


def _counts(value):
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("n", "positives", "negatives", "k", "tp", "fp", "tn", "fn") and isinstance(v, int):
                yield v
            else:
                yield from _counts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _counts(v)


def test_end_to_end_evaluation_review_and_vendor_report(vai) -> None:
    c, t, hub = vai["c"], vai["t"], vai["hub"]
    model_id = _register(vai)
    # every signed-in user sees what is offered; the file's checksum must be the registered one
    assert [m["id"] for m in c.get("/api/v1/vai/models", headers=bearer(t["sam"])).json()] == [model_id]
    r = _evaluate(vai, model_id)
    assert r.status_code == 201, r.text
    ev = r.json()
    assert ev["state"] == "created" and ev["total"] == CASES and ev["done"] == 0
    assert set(ev["inputs"]) >= {"labels_sha256", "protocol_sha256", "model_sha256", "files_sha256"}
    _drain(hub)
    ev = c.get(f"/api/v1/projects/screen/vai/evaluations/{ev['id']}", headers=bearer(t["sam"])).json()
    assert ev["state"] == "done", ev["error"]
    assert ev["done"] == CASES and len(ev["outputs_sha256"]) == 64
    result = ev["result"]
    assert result["matched"] == CASES and result["missing"] == 0 and result["unreadable"] == 0
    auc = result["metrics"]["auc"]
    assert auc["auc"] > 0.75 and auc["low"] < auc["auc"] < auc["high"]
    assert auc["bootstrap_low"] < auc["auc"] < auc["bootstrap_high"]
    # the same figures as scikit-learn on the predictions stored in the project
    with hub.sessions() as s:
        preds = {p.sop_uid: p.score for p in s.scalars(select(Prediction))}
    y = [int(x.lesion) for x in _cases()]
    from sklearn.metrics import roc_auc_score

    assert auc["auc"] == pytest.approx(roc_auc_score(y, [preds[x.sop_uid] for x in _cases()]))
    assert result["failures"]["threshold"] == 0.5  # the clinic's failure lists
    # the vendor sees nothing yet
    assert c.get("/api/v1/vai/vendors/acme/reports", headers=bearer(t["vera"])).json() == []
    # sam asks for a release; rita and ron must both approve; sam cannot review his own
    r = c.post(f"/api/v1/projects/screen/vai/evaluations/{ev['id']}/releases", headers=bearer(t["sam"]))
    assert r.status_code == 201, r.text
    release = r.json()
    assert release["state"] == "in_review" and release["approvals_needed"] == 2
    rid = release["id"]
    assert c.get(f"/api/v1/vai/reports/{rid}", headers=bearer(t["vera"])).status_code == 404
    review = f"/api/v1/projects/screen/vai/releases/{rid}/reviews"
    assert c.post(review, json={"decision": "approve"}, headers=bearer(t["sam"])).status_code == 403
    # an approval sends results to the vendor: a token minted weeks ago (stolen, say) approves nothing; it rejects
    with transaction(vai["hub"].sessions) as s:
        s.execute(update(ApiToken).where(ApiToken.user_id == vai["p"]["rita"].user.id)
                  .values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=20)))
    r = c.post(review, json={"decision": "approve"}, headers=bearer(t["rita"]))
    assert r.status_code == 403 and r.json()["code"] == "mfa-required", r.text
    t["rita"] = token_for(vai["hub"], vai["p"]["rita"])  # a fresh login
    r = c.post(review, json={"decision": "approve"}, headers=bearer(t["rita"]))
    assert r.status_code == 200 and r.json()["state"] == "in_review" and r.json()["approvals"] == 1
    assert c.post(review, json={"decision": "approve"}, headers=bearer(t["rita"])).status_code == 409
    r = c.post(review, json={"decision": "approve"}, headers=bearer(t["ron"]))
    assert r.json()["state"] == "released"
    # the vendor's report: aggregates only, no count under 11 anywhere, the checklist filled
    r = c.get(f"/api/v1/vai/reports/{rid}", headers=bearer(t["vera"]))
    assert r.status_code == 200
    report = r.json()["report"]
    assert report["model"]["sha256"] == hashlib.sha256(_model()).hexdigest()
    released_auc = report["metrics"]["auc"]  # the clinic's AUC with release noise (Laplace): P(off by 10 b) < 1e-4
    assert abs(released_auc["auc"] - auc["auc"]) <= 10 * released_auc["noise_scale"]
    assert min(_counts(report)) >= metrics.MIN_CELL
    assert "failures" not in str(report) and "missing_ids" not in str(report)
    assert not any(x.sop_uid in str(report) for x in _cases())  # no image identifier leaves
    items = {i["item"] for i in report["checklist"]}
    assert {"Data source", "Dates", "Eligibility / inclusion", "Reference standard", "Model",
            "Software versions"} <= items
    dates = next(i["value"] for i in report["checklist"] if i["item"] == "Dates")
    # by year only, each bound a year with at least 11 studies (never the month of the earliest study)
    assert re.match(r"studies from 2021 to 20\d\d; evaluated ", dates), dates
    assert [x["id"] for x in c.get("/api/v1/vai/vendors/acme/reports", headers=bearer(t["vera"])).json()] == [rid]
    # the vendor's pages: the report with its plots drawn here, JSON and PDF
    vera = web_client(vai["app"], hub, vai["p"]["vera"])
    page = vera.get(f"/vai/reports/{rid}")
    assert page.status_code == 200
    assert page.text.count("<svg") == 2 and "AUC" in page.text and "Reporting checklist" in page.text
    for svg in re.findall(r"<svg.*?</svg>", page.text, flags=re.S):  # drawn here: nothing fetched from elsewhere
        assert "href" not in svg and "src=" not in svg and "url(" not in svg and "<polyline" in svg
    assert vera.get(f"/vai/reports/{rid}/report.json").json()["sha256"] == r.json()["sha256"]
    pdf = vera.get(f"/vai/reports/{rid}/report.pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "LesionFinder 1.0" in text and "Reporting checklist" in text
    assert vera.get("/vai").status_code == 200
    # the benchmark across clinics needs two released reports; one is listed, none pooled
    bench = c.get(f"/api/v1/vai/models/{model_id}/benchmark", headers=bearer(t["vera"])).json()
    assert len(bench["studies"]) == 1 and bench["pooled"] is None
    # audited, in order
    with hub.sessions() as s:
        actions = list(s.scalars(select(AuditEvent.action).where(AuditEvent.action.like("vai.%"))
                                 .order_by(AuditEvent.seq)))
    assert actions == ["vai.vendor.created", "vai.vendor.member_added", "vai.vendor.created",
                       "vai.vendor.member_added", "vai.model.registered", "vai.model.uploaded",
                       "vai.evaluation.created", "vai.evaluation.read", "vai.release.requested",
                       "vai.release.approved", "vai.release.approved", "vai.release.released"]


def test_vendor_isolation(vai) -> None:
    c, t, hub = vai["c"], vai["t"], vai["hub"]
    model_id = _register(vai)
    ev = _evaluate(vai, model_id).json()
    _drain(hub)
    rid = c.post(f"/api/v1/projects/screen/vai/evaluations/{ev['id']}/releases", headers=bearer(t["sam"])).json()["id"]
    # before release: the vendor sees none of the clinic, not even the report
    clinic_urls = ["/api/v1/projects/screen/vai/evaluations", f"/api/v1/projects/screen/vai/evaluations/{ev['id']}",
                   "/api/v1/projects/screen/vai/releases", f"/api/v1/vai/reports/{rid}",
                   "/api/v1/projects/screen/datasets", f"/api/v1/datasets/{vai['dataset']}"]
    for who in ("vera", "vic", "eve"):
        for url in clinic_urls:
            assert c.get(url, headers=bearer(t[who])).status_code == 404, (who, url)
    for who in ("rita", "ron"):
        c.post(f"/api/v1/projects/screen/vai/releases/{rid}/reviews", json={"decision": "approve"},
               headers=bearer(t[who]))
    # after release: the vendor reads the report and nothing else; another vendor and outsiders still nothing
    assert c.get(f"/api/v1/vai/reports/{rid}", headers=bearer(t["vera"])).status_code == 200
    for url in clinic_urls[:3] + clinic_urls[4:]:
        assert c.get(url, headers=bearer(t["vera"])).status_code == 404, url
    assert c.post(f"/api/v1/projects/screen/vai/evaluations/{ev['id']}/releases",
                  headers=bearer(t["vera"])).status_code == 404
    for who in ("vic", "eve"):
        assert c.get(f"/api/v1/vai/reports/{rid}", headers=bearer(t[who])).status_code == 404
        assert c.get("/api/v1/vai/vendors/acme/reports", headers=bearer(t[who])).status_code == 404
    assert c.get(f"/api/v1/vai/models/{model_id}/benchmark", headers=bearer(t["vic"])).status_code == 404
    # vic cannot register models for Acme, nor upload Acme's file
    assert c.post("/api/v1/vai/vendors/acme/models", headers=bearer(t["vic"]), json={
        "name": "X", "version": "1", "mode": "results-only", "intended_use": "x"}).status_code == 404
    # pages too
    vera = web_client(vai["app"], hub, vai["p"]["vera"])
    assert vera.get("/projects/screen/vai").status_code == 404
    assert vera.get(f"/vai/reports/{rid}").status_code == 200
    vic = web_client(vai["app"], hub, vai["p"]["vic"])
    for url in (f"/vai/reports/{rid}", f"/vai/reports/{rid}/report.json", f"/vai/reports/{rid}/report.pdf",
                "/projects/screen/vai"):
        assert vic.get(url).status_code == 404, url
    # the clinic's members see the project's page with the release
    sam = web_client(vai["app"], hub, vai["p"]["sam"])
    assert "released" in sam.get("/projects/screen/vai").text


def test_a_killed_evaluation_resumes_without_double_counting(vai) -> None:
    hub = vai["hub"]
    model_id = _register(vai)
    first = _evaluate(vai, model_id).json()
    # a worker runs two batches of 16, commits them, and dies (it never reaches the metrics)
    assert service.run(hub, service._uuid(first["id"], "evaluation"), batch=16, max_batches=2) is False
    with hub.sessions() as s:
        ev = s.get(Evaluation, service._uuid(first["id"], "evaluation"))
        assert ev.state == "running" and ev.done == 32 and ev.result is None
    # its job is picked up again (the lease expired): it predicts only what is missing
    _drain(hub)
    with hub.sessions() as s:
        eid = service._uuid(first["id"], "evaluation")
        ev = s.get(Evaluation, eid)
        assert ev.state == "done" and ev.done == CASES
        items = list(s.scalars(select(Prediction.item).where(Prediction.evaluation_id == eid)))
        assert len(items) == len(set(items)) == CASES
        resumed = (ev.result["metrics"]["auc"], ev.outputs_sha256)
    # an uninterrupted run on the same inputs gives the same figures and the same output checksum
    second = _evaluate(vai, model_id, title="Again, in one go").json()
    _drain(hub)
    with hub.sessions() as s:
        ev = s.get(Evaluation, service._uuid(second["id"], "evaluation"))
        assert (ev.result["metrics"]["auc"], ev.outputs_sha256) == resumed
        assert ev.inputs == s.get(Evaluation, eid).inputs
        assert s.scalar(select(func.count()).select_from(Prediction)) == 2 * CASES
    # running a finished evaluation again changes nothing
    assert service.run(hub, eid) is True


def test_results_only_and_refusals(vai) -> None:
    c, t, hub = vai["c"], vai["t"], vai["hub"]
    r = c.post("/api/v1/vai/vendors/acme/models", headers=bearer(t["vera"]), json={
        "name": "CloudScreen", "version": "2.1", "mode": "results-only", "intended_use": "Runs at the vendor's site"})
    assert r.status_code == 201, r.text
    mid = r.json()["id"]
    cases = _cases()
    rows = "\n".join(f"{x.sop_uid},{0.8 if x.lesion else 0.3}" for x in cases)
    base = {"model_version": mid, "title": "CloudScreen", "labels_csv": synthetic.labels_csv(cases),
            "protocol": {"operating_points": {"vendor": 0.5}}}
    r = c.post("/api/v1/projects/screen/vai/evaluations", headers=bearer(t["sam"]),
               json={**base, "predictions_csv": "image_id,score\n" + rows})
    assert r.status_code == 201, r.text
    _drain(hub)
    ev = c.get(f"/api/v1/projects/screen/vai/evaluations/{r.json()['id']}", headers=bearer(t["sam"])).json()
    assert ev["state"] == "done" and ev["result"]["metrics"]["auc"]["auc"] == 1.0
    assert ev["result"]["metrics"]["subgroups"].keys() == {"site", "sex", "age_band"}
    # the clinic's full result page: plots, a table per subgroup column, the failure lists; a vendor: 404
    sam = web_client(vai["app"], hub, vai["p"]["sam"])
    page = sam.get(f"/projects/screen/vai/evaluations/{ev['id']}")
    assert page.status_code == 200 and page.text.count("<svg") == 2 and 'http-equiv="refresh"' not in page.text
    assert all(f'id="subgroup-{c}"' in page.text for c in ("site", "sex", "age_band"))
    assert "Failure analysis" in page.text and "Ask for release to the vendor" in page.text
    assert web_client(vai["app"], hub, vai["p"]["vera"]).get(
        f"/projects/screen/vai/evaluations/{ev['id']}").status_code == 404
    # refusals
    url = "/api/v1/projects/screen/vai/evaluations"
    assert c.post(url, headers=bearer(t["sam"]), json=base).status_code == 422  # no predictions table
    bad_labels = {**base, "predictions_csv": "image_id,score\nx,1", "labels_csv": "image_id,label\nx,2\n"}
    assert c.post(url, headers=bearer(t["sam"]), json=bad_labels).status_code == 422
    bad_protocol = {**base, "predictions_csv": "image_id,score\nx,1", "protocol": {"subgroups": ["nope"]}}
    assert c.post(url, headers=bearer(t["sam"]), json=bad_protocol).status_code == 422
    assert c.post(url, headers=bearer(t["eve"]), json=base).status_code == 404  # not her project
    # an ONNX version whose file does not match its registered checksum is refused
    model = _model()
    r = c.post("/api/v1/vai/vendors/acme/models", headers=bearer(t["vera"]), json={
        "name": "LesionFinder", "version": "9", "mode": "onnx", "intended_use": "x",
        "contract": synthetic.CONTRACT, "output": synthetic.OUTPUT, "sha256": "0" * 64})
    assert r.status_code == 201
    r = c.put(f"/api/v1/vai/models/{r.json()['id']}/file", content=model,
              headers={**bearer(t["vera"]), "Content-Type": "application/octet-stream"})
    assert r.status_code == 422 and "SHA-256" in r.text
    # a vendor user who is no member of a vendor cannot register; only operators create vendors
    assert c.post("/api/v1/vai/vendors", json={"slug": "x1", "name": "X"}, headers=bearer(t["vera"])).status_code \
        in (403, 404)


def test_two_clinics_are_pooled_for_the_vendor(vai) -> None:
    """The benchmark across clinics: two released reports of one version, DerSimonian–Laird pooled."""
    c, t, hub = vai["c"], vai["t"], vai["hub"]
    model_id = _register(vai)
    for title in ("Clinic run A", "Clinic run B"):
        ev = _evaluate(vai, model_id, title=title).json()
        _drain(hub)
        rid = c.post(f"/api/v1/projects/screen/vai/evaluations/{ev['id']}/releases",
                     headers=bearer(t["sam"])).json()["id"]
        for who in ("rita", "ron"):
            c.post(f"/api/v1/projects/screen/vai/releases/{rid}/reviews", json={"decision": "approve"},
                   headers=bearer(t[who]))
    bench = c.get(f"/api/v1/vai/models/{model_id}/benchmark", headers=bearer(t["vera"])).json()
    assert len(bench["studies"]) == 2
    pooled = bench["pooled"]
    assert pooled["low"] <= pooled["auc"] <= pooled["high"] and pooled["tau2"] == 0.0  # the same data twice


def test_the_demo_shows_a_released_report(app, hub) -> None:
    """`make run` (`strongroom init --demo`) queues the VAI demo as a job that the hub's embedded runner
    runs once it is up: the researcher (the demo vendor's user) then reads the released report; running it
    again (`strongroom vai demo`) or queueing it again changes nothing."""
    from types import SimpleNamespace

    from strongroom.demo import seed_demo
    from strongroom.identity.service import find_user
    from strongroom.jobs.models import Job
    from strongroom.vai.demo import queue_vai_demo, seed_vai_demo

    seed_demo(hub)
    assert "AI validation demo" in queue_vai_demo(hub)
    _drain(hub)
    with hub.sessions() as s:
        job = s.scalar(select(Job).where(Job.kind == "vai.demo"))
        assert job.status == "done", job.last_error
        path = job.result["report"]
    assert seed_vai_demo(hub) == path
    queue_vai_demo(hub)
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "vai.demo")) == 1
    with hub.sessions() as s:
        researcher = find_user(s, "researcher")
    token = token_for(hub, SimpleNamespace(user=researcher))
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    r = c.get(f"/api/v1{path}", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "released" and r.json()["report"]["metrics"]["auc"]["auc"] > 0.75
    assert c.get("/api/v1/projects/demo/vai/evaluations", headers=bearer(token)).status_code == 404


def test_dicom_sr_and_seg_reference_standard() -> None:
    """SEG: a non-empty mask is positive, an empty one negative; SR (TID 1500): a coded Finding is the label
    (Absent is negative); an SR without a coded finding gives none."""
    from pydicom import dcmread

    from strongroom.vai import inference

    cases = synthetic.cases(8, seed=5)
    for case in cases:
        for data in (synthetic.segmentation(case), synthetic.report(case)):
            ref = inference.read(data, synthetic.CONTRACT)
            assert isinstance(ref, inference.Reference)
            assert (ref.study_uid, ref.label) == (case.study_uid, int(case.lesion)), ref.why
    sr = dcmread(io.BytesIO(synthetic.report(cases[0])))
    del sr.ContentSequence[0].ContentSequence[0]
    buf = io.BytesIO()
    sr.save_as(buf)
    ref = inference.reference(buf.getvalue())
    assert ref.label is None and "without a coded finding" in ref.why
    with pytest.raises(inference.ContractError, match="modality SEG"):
        inference.preprocess(synthetic.segmentation(cases[0]), synthetic.CONTRACT)


def test_reference_standard_from_sr_and_seg_in_the_dataset(vai) -> None:
    """The dataset holds, besides the images, a SEG or an SR for most studies: they are the reference standard
    where present (over a labels table whose labels for those studies are wrong on purpose), the table
    where not; they are neither predicted nor counted as unreadable."""
    c, t, hub = vai["c"], vai["t"], vai["hub"]
    model_id = _register(vai)
    cases = _cases()
    with_refs = cases[:100]
    refs = _put_files(hub, "screen", vai["p"]["alice"], synthetic.reference_objects(with_refs))
    r = c.post("/api/v1/projects/screen/datasets", json={"title": "Screening with SR/SEG",
                                                         "files": vai["files"] + refs}, headers=bearer(t["alice"]))
    assert r.status_code == 201, r.text
    table = "study_id,label,site\n" + "".join(
        f"{x.study_uid},{int(not x.lesion) if x in with_refs else int(x.lesion)},{x.site}\n" for x in cases)
    r = c.post("/api/v1/projects/screen/vai/evaluations", headers=bearer(t["sam"]), json={
        "model_version": model_id, "title": "Against SR/SEG", "dataset_id": r.json()["id"], "dataset_version": 1,
        "labels_csv": table, "protocol": {**PROTOCOL, "subgroups": ["site"], "reference_source": "dicom"}})
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    _drain(hub)
    ev = c.get(f"/api/v1/projects/screen/vai/evaluations/{eid}", headers=bearer(t["sam"])).json()
    assert ev["state"] == "done", ev["error"]
    result = ev["result"]
    assert result["references"] == 100 and result["predictions"] == CASES and result["unreadable"] == 0
    assert result["matched"] == CASES and result["reference_source"] == "dicom"
    with hub.sessions() as s:
        preds = {p.study_uid: p.score for p in s.scalars(select(Prediction).where(Prediction.score.is_not(None)))}
    from sklearn.metrics import roc_auc_score

    truth = roc_auc_score([int(x.lesion) for x in cases], [preds[x.study_uid] for x in cases])
    assert result["metrics"]["auc"]["auc"] == pytest.approx(truth)  # the true labels: SR/SEG won
    # a labels table by image cannot be combined with study-level SR/SEG; results-only has no dataset
    bad = c.post("/api/v1/projects/screen/vai/evaluations", headers=bearer(t["sam"]), json={
        "model_version": model_id, "title": "x", "dataset_id": vai["dataset"], "dataset_version": 1,
        "labels_csv": synthetic.labels_csv(cases), "protocol": {"reference_source": "dicom"}})
    assert bad.status_code == 422 and "study_id" in bad.text


def test_execution_provider_is_cuda_when_offered_else_cpu() -> None:
    from strongroom.vai import inference

    assert inference.choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert inference.choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    runner = inference.Runner(_model(), synthetic.CONTRACT, synthetic.OUTPUT)  # this machine: no GPU
    assert runner.provider == "CPUExecutionProvider"
    assert runner.provider == inference.choose_providers()[0]
