"""A stored VAI report (or an evaluation's result) is JSON as it was stored, possibly by hand or by an older version:
what reads it shows what of it reads and says what is missing, never answers 500.

A released report without ``metrics``, with empty metrics or with only some of them (an AUC and a curve but no
counts, a subgroup level without its figures), and one without even a model: the report page shows "no metrics
recorded" (or "not recorded" for the missing part) beside what there is; the vendors' desk lists it so; its JSON
is served as stored, as is the API's report; the benchmark across clinics leaves out an AUC without its standard
error; the PDF, which lays out every part, is refused with a clear 409 instead of a 500. The clinic's evaluation
page tolerates a result with partial metrics the same way.

Real hub on SQLite and PostgreSQL; the hand-made reports are written to the database as an operator's tool would.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import bearer, token_for, web_client
from imaging_support import END
from strongroom.audit.service import Actor
from strongroom.db import transaction, utcnow
from strongroom.projects import service as projects
from strongroom.vai.models import RELEASED, Evaluation, ModelVersion, Release, Vendor, VendorMember

AUC = {"auc": 0.91, "low": 0.85, "high": 0.95}  # no standard error: the benchmark cannot pool it


def _report(model_id: str, **parts: Any) -> dict[str, Any]:
    return {"title": "Hand-made check", "clinic": "Screen", "min_cell": 11, "level": "image", "checklist": [],
            "model": {"vendor": "Acme AI", "name": "LesionFinder", "version": "1.0", "id": model_id}, **parts}


@pytest.fixture
def stored(app, hub, people) -> dict[str, Any]:
    """Acme (vera) with one model version; the clinic project ``screen`` (alice) with a done evaluation whose result
    has partial metrics, and a released report of each hand-made kind."""
    vera, alice = people("vera"), people("alice")
    with transaction(hub.sessions) as s:
        project = projects.create_project(s, Actor.system("t"), slug="screen", name="Screen", pi="alice",
                                          ethics_ref="E1", end_date=END)
        vendor = Vendor(slug="acme", name="Acme AI")
        s.add(vendor)
        s.flush()
        s.add(VendorMember(vendor_id=vendor.id, user_id=vera.user.id))
        mv = ModelVersion(vendor_id=vendor.id, name="LesionFinder", version="1.0", mode="results-only",
                          intended_use="x", contract={}, output={"kind": "score", "index": 0}, created_by=vera.user.id)
        s.add(mv)
        s.flush()
        ev = Evaluation(project_id=project.id, model_version_id=mv.id, title="Screening check", labels_csv="",
                        labels_sha256="0" * 64, protocol={}, state="done", inputs={}, created_by=alice.user.id,
                        result={"metrics": {"auc": AUC}, "matched": 0, "missing": 0, "unreadable": 0})
        s.add(ev)
        s.flush()
        model_id = str(mv.id)
        reports = {
            "no metrics": _report(model_id),
            "empty metrics": _report(model_id, metrics={}),
            "partial": _report(model_id, metrics={
                "auc": AUC, "roc": [[0.0, 0.0], [0.2, 0.8], [1.0, 1.0]],
                "subgroups": {"site": {"levels": [{"level": "north"}], "hidden_levels": 1}, "sex": "unreadable"}}),
            "bare": {},
        }
        ids = {}
        for kind, report in reports.items():
            release = Release(evaluation_id=ev.id, vendor_id=vendor.id, requested_by=alice.user.id, state=RELEASED,
                              approvals_needed=1, report=report, sha256="0" * 64, decided_at=utcnow())
            s.add(release)
            s.flush()
            ids[kind] = str(release.id)
    return {"vera": web_client(app, hub, vera), "alice": web_client(app, hub, alice), "ids": ids,
            "reports": reports, "model": model_id, "evaluation": str(ev.id),
            "api": TestClient(app, base_url="http://127.0.0.1:8000"), "token": token_for(hub, vera)}


def test_the_report_page_says_what_is_not_recorded(stored) -> None:
    vera, ids = stored["vera"], stored["ids"]
    for kind in ("no metrics", "empty metrics", "bare"):
        page = vera.get(f"/vai/reports/{ids[kind]}")
        assert page.status_code == 200, (kind, page.text[:300])
        assert 'id="no-metrics"' in page.text and "no metrics recorded" in page.text
    page = vera.get(f"/vai/reports/{ids['partial']}")
    assert page.status_code == 200, page.text[:300]
    assert "AUC 0.910 (0.850–0.950)" in page.text  # the curve and its AUC are recorded: shown
    assert "The overall figures are not recorded in this report." in page.text  # no counts: no table
    assert "By site" in page.text and "north" in page.text and "Figures not recorded." in page.text
    assert "1 level(s) hidden" in page.text
    assert "LesionFinder 1.0 at Screen" in page.text


def test_the_desk_lists_a_report_without_metrics(stored) -> None:
    page = stored["vera"].get("/vai")
    assert page.status_code == 200, page.text[:300]
    assert page.text.count("no metrics recorded") == 3
    assert "0.910 (0.850–0.950)" in page.text


def test_json_and_api_serve_the_report_as_stored(stored) -> None:
    api, headers = stored["api"], bearer(stored["token"])
    for kind, release_id in stored["ids"].items():
        r = stored["vera"].get(f"/vai/reports/{release_id}/report.json")
        assert r.status_code == 200 and r.json()["report"] == stored["reports"][kind], kind
        r = api.get(f"/api/v1/vai/reports/{release_id}", headers=headers)
        assert r.status_code == 200 and r.json()["report"] == stored["reports"][kind], kind
    listed = api.get("/api/v1/vai/vendors/acme/reports", headers=headers)
    assert listed.status_code == 200 and len(listed.json()) == 4


def test_the_benchmark_leaves_out_an_auc_it_cannot_pool(stored) -> None:
    r = stored["api"].get(f"/api/v1/vai/models/{stored['model']}/benchmark", headers=bearer(stored["token"]))
    assert r.status_code == 200, r.text
    assert r.json()["studies"] == [] and r.json()["pooled"] is None


def test_the_pdf_of_a_report_without_its_figures_is_refused_clearly(stored) -> None:
    for kind, release_id in stored["ids"].items():
        r = stored["vera"].get(f"/vai/reports/{release_id}/report.pdf")
        assert r.status_code == 409, (kind, r.status_code)
        assert "no metrics recorded" in r.text and f"/vai/reports/{release_id}/report.json" in r.text


def test_the_clinics_evaluation_page_tolerates_partial_metrics(stored) -> None:
    page = stored["alice"].get(f"/projects/screen/vai/evaluations/{stored['evaluation']}")
    assert page.status_code == 200, page.text[:300]
    assert "AUC 0.910 (0.850–0.950)" in page.text and "The overall figures are not recorded." in page.text


def test_another_vendor_still_sees_nothing(stored, app, hub, people) -> None:
    """Tolerance changes no one's access: a stranger's read of such a report is 404 as before."""
    stranger = web_client(app, hub, people("vic"))
    for release_id in stored["ids"].values():
        assert stranger.get(f"/vai/reports/{release_id}").status_code == 404
    assert stranger.get(f"/vai/reports/{uuid.uuid4()}").status_code == 404
