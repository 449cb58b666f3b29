"""One patient's label through released VAI reports (an auditor's finding). The vendor controls the scores and
can recognise one image (a patient it knows is in the cohort): scoring every image alike but that one made
the released AUC tell its label (0.5 ± 0.5/n), and so did two submissions differing only in it (the
difference of the two AUCs, or of two operating points' counts). Every attack goes through the real path:
results-only evaluations (the vendor's scores as the clinic uploads them), the release request, the named
reviewers, and what the vendor reads through the API. Each runs in two worlds in one hub, a project where
the target is positive and one where it is negative: whatever the vendor reads must not tell them apart
(the attack's report is refused in both, or the figures it could subtract are the same or noised).

Also: the evaluation budget (a project evaluates one vendor's models only so often), refused through the API
and the page; an ONNX model cannot leave a case out with a NaN score; and an honest model on 1000 cases still
gets its AUC to two decimals."""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import math
import uuid
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper
from sqlalchemy import func, select, update

from conftest import bearer, token_for, web_client
from helpers import csrf_for
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from strongroom.vai import metrics, synthetic
from strongroom.vai.models import Evaluation, Release
from test_vai import _drain, vai  # noqa: F401  (vai: the fixture)
from test_vai import _evaluate as _evaluate_dataset

MIN = metrics.MIN_CELL
END = dt.date(2030, 12, 31)
WORLDS = {0: "screen0", 1: "screen1"}  # the target's label → the project of that world
PROTOCOL = {"operating_points": {"vendor": 0.5}, "subgroups": ["site"], "bootstrap": 0}
TARGET, TARGET_SCORE = "target", 0.4  # below the vendor's threshold, tied with nobody


# -- the hub: two worlds, one vendor with two users, another vendor -------------------------------
@pytest.fixture
def w(app, hub, people):
    p = {n: people(n) for n in ("alice", "sam", "rita", "ron", "vera", "vince", "vic")}
    p["olga"] = people("olga", admin=True)
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    t = {n: token_for(hub, person) for n, person in p.items()}
    for slug in (*WORLDS.values(), "budget"):
        with transaction(hub.sessions) as s:
            projects.create_project(s, Actor.system("t"), slug=slug, name=slug.title(), pi="alice", ethics_ref="E1",
                                    end_date=END)
        for user in ("sam", "rita", "ron"):
            assert c.post(f"/api/v1/projects/{slug}/members", json={"user": user, "role": "member"},
                          headers=bearer(t["alice"])).status_code == 201
        assert c.put(f"/api/v1/projects/{slug}/members/{p['sam'].user.id}/rights", json={"rights": ["export"]},
                     headers=bearer(t["alice"])).status_code == 200
        assert c.put(f"/api/v1/projects/{slug}/airlock/reviewers", json={"users": ["rita", "ron"]},
                     headers=bearer(t["alice"])).status_code == 200
    models = {}
    for vendor, members in (("acme", ("vera", "vince")), ("globex", ("vic",))):
        assert c.post("/api/v1/vai/vendors", json={"slug": vendor, "name": vendor.title()},
                      headers=bearer(t["olga"])).status_code == 201
        for user in members:
            assert c.post(f"/api/v1/vai/vendors/{vendor}/members", json={"user": user},
                          headers=bearer(t["olga"])).status_code == 204
            r = c.post(f"/api/v1/vai/vendors/{vendor}/models", headers=bearer(t[user]), json={
                "name": f"Tool of {user}", "version": "1", "mode": "results-only", "intended_use": "screening"})
            assert r.status_code == 201, r.text
            models[user] = r.json()["id"]
    return {"c": c, "t": t, "p": p, "app": app, "hub": hub, "models": models}


def _score(case: str, label: int) -> float:
    """An honest-looking model: deterministic per case, informative, no two cases tied."""
    u = int.from_bytes(hashlib.sha256(case.encode()).digest()[:8], "big") / 2**64
    return round(1 / (1 + math.exp(-(1.4 * (2 * label - 1) + 1.6 * math.log(u / (1 - u))))), 9)


def cohort(target_label: int, n: int = 199) -> tuple[list[tuple[str, int, str]], dict[str, float]]:
    """n cases (30 % positive, sites A and B) and the target (site B), with the vendor's base scores."""
    rows = [(f"c{i:04d}", int(i % 10 < 3), "AB"[i % 2]) for i in range(n)] + [(TARGET, target_label, "B")]
    scores = {case: _score(case, label) for case, label, _ in rows}
    scores[TARGET] = TARGET_SCORE  # the vendor cannot know the label: its base score for the target is fixed
    return rows, scores


def submit(w, slug: str, rows: list[tuple[str, int, str]], scores: dict[str, float], *, who: str = "vera",
           model: str | None = None, run: bool = True) -> Any:
    r = w["c"].post(f"/api/v1/projects/{slug}/vai/evaluations", headers=bearer(w["t"]["sam"]), json={
        "model_version": model or w["models"][who], "title": f"Tool on {slug} #{len(scores)}",
        "labels_csv": "case_id,label,site\n" + "\n".join(f"{i},{y},{g}" for i, y, g in rows),
        "predictions_csv": "case_id,score\n" + "\n".join(f"{i},{s!r}" for i, s in scores.items()),
        "protocol": PROTOCOL})
    if run and r.status_code == 201:
        Runner(w["hub"], lease_seconds=30, name="test").run_until_idle()
    return r


def ask_release(w, slug: str, evaluation: str) -> Any:
    return w["c"].post(f"/api/v1/projects/{slug}/vai/evaluations/{evaluation}/releases", headers=bearer(w["t"]["sam"]))


def release(w, slug: str, evaluation: str) -> dict[str, Any]:
    """Asked for, approved by both reviewers; the report as the vendor reads it."""
    r = ask_release(w, slug, evaluation)
    assert r.status_code == 201, r.text
    for who in ("rita", "ron"):
        assert w["c"].post(f"/api/v1/projects/{slug}/vai/releases/{r.json()['id']}/reviews",
                           json={"decision": "approve"}, headers=bearer(w["t"][who])).status_code == 200
    got = w["c"].get(f"/api/v1/vai/reports/{r.json()['id']}", headers=bearer(w["t"]["vera"]))
    assert got.status_code == 200
    return got.json()["report"]


def vendor_reads(w) -> list[dict[str, Any]]:
    """Every report the vendor can read."""
    r = w["c"].get("/api/v1/vai/vendors/acme/reports", headers=bearer(w["t"]["vera"]))
    assert r.status_code == 200
    return [x["report"] for x in r.json()]


def full_result(w, evaluation: str) -> dict[str, Any]:
    with w["hub"].sessions() as s:
        return s.get_one(Evaluation, uuid.UUID(evaluation)).result["metrics"]


def refusals(w) -> list[dict[str, Any]]:
    with w["hub"].sessions() as s:
        return [e.details for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "vai.release.refused")
                                             .order_by(AuditEvent.seq))]


# -- the attacks --------------------------------------------------------------------------------------
def test_a_degenerate_model_is_refused_in_both_worlds(w) -> None:
    """Every image scored alike but the target: the AUC was 0.5 + 0.5/positives or 0.5 − 0.5/negatives. Now
    the release is refused (recorded, audited, with the reason), in both worlds alike, and the vendor reads
    nothing."""
    for label, slug in WORLDS.items():
        rows, _ = cohort(label)
        scores = {case: 0.3 for case, _, _ in rows} | {TARGET: 0.9}
        r = submit(w, slug, rows, scores)
        assert r.status_code == 201, r.text
        full = full_result(w, r.json()["id"])
        assert full["auc"]["auc"] == pytest.approx(0.5 + 0.5 / 61 if label else 0.5 - 0.5 / 140)  # what it was
        refused = ask_release(w, slug, r.json()["id"])
        assert refused.status_code == 409 and "degenerate scores" in refused.json()["detail"], refused.text
        with w["hub"].sessions() as s:
            kept = s.scalars(select(Release).where(Release.evaluation_id == uuid.UUID(r.json()["id"]))).one()
            assert kept.state == "refused" and "degenerate" in kept.report["refused"]
        sam = web_client(w["app"], w["hub"], w["p"]["sam"])
        assert "refused: The report cannot be released" in sam.get(f"/projects/{slug}/vai").text
        page = html.unescape(sam.get(f"/projects/{slug}/vai/evaluations/{r.json()['id']}").text)  # said at once
        assert "This result cannot be released: the model's degenerate scores" in page
        assert "Ask for release to the vendor" not in page
    assert [d["reason"][:40] for d in refusals(w)] == ["The report cannot be released: the model"] * 2
    assert vendor_reads(w) == []  # the same (nothing) in both worlds


def _boosted(scores: dict[str, float], rows: list[tuple[str, int, str]]) -> dict[str, float]:
    return scores | {TARGET: 0.995}


def _nudged(scores: dict[str, float], rows: list[tuple[str, int, str]]) -> dict[str, float]:
    """The target's score changed, its rank not: only a score-based figure (the Brier score) moves."""
    return scores | {TARGET: TARGET_SCORE + 1e-12}


def _dropped(scores: dict[str, float], rows: list[tuple[str, int, str]]) -> dict[str, float]:
    """The target left out (no prediction): the counts of one report minus the other's."""
    return {case: s for case, s in scores.items() if case != TARGET}


def _reversed(scores: dict[str, float], rows: list[tuple[str, int, str]], site: str) -> dict[str, float]:
    """The target boosted, and twelve decoys of ``site`` (the lowest scored) reordered among themselves."""
    decoys = sorted((c for c, _, g in rows if g == site and c != TARGET), key=scores.__getitem__)[:12]
    return _boosted(scores, rows) | dict(zip(decoys, [scores[c] for c in reversed(decoys)], strict=True))


SECOND = {"boosted": (_boosted, ""), "nudged": (_nudged, ""), "dropped": (_dropped, ""),
          "decoys elsewhere": (lambda s, r: _reversed(s, r, "A"), " (subgroup site=B)")}


@pytest.mark.parametrize("variant", SECOND)
def test_two_submissions_differing_in_the_target_are_refused(w, variant: str) -> None:
    """A base model released, then the same scores with the target boosted (or only its score nudged, or the
    target left out, or twelve decoys reordered in the other site so the whole cohort differs by more than
    ten cases but the target's site by one): the second report would differ from the first by the target
    alone. It is refused in both worlds, so the vendor reads the base report only, whose AUC the target's
    label moves by less than its noise's scale."""
    make, where = SECOND[variant]
    seen = {}
    for label, slug in WORLDS.items():
        rows, base = cohort(label)
        first = submit(w, slug, rows, base).json()["id"]
        seen[label] = (release(w, slug, first), full_result(w, first))
        second = submit(w, slug, rows, make(base, rows))
        assert second.status_code == 201, second.text
        refused = ask_release(w, slug, second.json()["id"])
        assert refused.status_code == 409, refused.text
        assert f"in fewer than {MIN} cases{where}, so the difference" in refused.json()["detail"]
    assert len(refusals(w)) == 2 and len(vendor_reads(w)) == 2  # one base report per world, nothing more
    # what the vendor reads of each world is one report; the target's label moves its AUC by less than the noise
    (report0, full0), (report1, full1) = seen[0], seen[1]
    moved = abs(full1["auc"]["auc"] - full0["auc"]["auc"])
    assert 0 < moved <= min(report0["metrics"]["auc"]["noise_scale"], report1["metrics"]["auc"]["noise_scale"])


def _same_threshold_cuts(report: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Cuts of a report by what identifies their threshold across reports: the operating point's name, the
    reliability bin's lower edge, the ROC point's false positive rate."""
    m = report["metrics"]
    out = {f"point {p['name']}": (p["counts"]["tp"], p["counts"]["fp"])
           for p in m["operating_points"] if not p["suppressed"]}
    bins = m["calibration"]["bins"]
    out |= {f"edge {bins[i]['low']}": (sum(b["positives"] for b in bins[i:]),
                                      sum(b["n"] - b["positives"] for b in bins[i:])) for i in range(1, len(bins))}
    out |= {f"roc {fpr}": (round(tpr * m["positives"]), math.floor(fpr * m["negatives"] + 1e-9))
            for fpr, tpr in m["roc"][1:-1]}
    return out


def test_decoys_let_a_second_report_out_but_no_count_tells_the_target(w) -> None:
    """The target boosted past the vendor's threshold and twelve decoys of its own site reordered far below:
    the two reports differ by thirteen cases, so the second goes out; but its operating point at the same
    threshold would differ from the first's by the target alone (tp + 1 or fp + 1). Each cut of the second
    report is checked against the first's cuts as sets of cases, and that one is withheld: no cut the vendor
    can match across the two reports differs by 1 to 10 cases of a class, in either world."""
    for label, slug in WORLDS.items():
        rows, base = cohort(label)
        first = release(w, slug, submit(w, slug, rows, base).json()["id"])
        second_id = submit(w, slug, rows, _reversed(base, rows, "B")).json()["id"]
        second = release(w, slug, second_id)
        vendor = {p["name"]: p for p in second["metrics"]["operating_points"]}["vendor"]
        assert vendor == {"name": "vendor", "threshold": 0.5, "suppressed": True}  # the target crossed it
        before = next(p for p in first["metrics"]["operating_points"] if p["name"] == "vendor")["counts"]
        assert full_result(w, second_id)["operating_points"][0]["counts"] != before  # what it would have told
        a, b = _same_threshold_cuts(first), _same_threshold_cuts(second)
        for key in a.keys() & b.keys():
            for ka, kb in zip(a[key], b[key], strict=True):
                assert not 0 < abs(ka - kb) < MIN, (label, key, a[key], b[key])
        for left, right in ((first, second), (second, first)):  # the subgroup levels' points too
            for lv in left["metrics"]["subgroups"]["site"]["levels"]:
                other = {x["level"]: x for x in right["metrics"]["subgroups"]["site"]["levels"]}.get(lv["level"])
                for pa, pb in zip(lv["operating_points"], other["operating_points"] if other else [], strict=True):
                    if not pa["suppressed"] and not pb["suppressed"]:
                        assert all(not 0 < abs(pa["counts"][k] - pb["counts"][k]) < MIN for k in ("tp", "fp"))
    assert refusals(w) == []


# -- the noise ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("positives", "negatives", "step", "scale"), [
    (60, 140, 0.02, 0.0238), (300, 700, 0.002, 0.0048), (1500, 3500, 0.001, 0.001)])
def test_the_auc_noise_and_its_grid_by_cohort_size(positives: int, negatives: int, step: float, scale: float) -> None:
    """The precision docs/vai.md promises for 200, 1000 and 5000 cases (30 % positive): the AUC's noise scale
    is (1/positives + 1/negatives) / ε, the most one label can move it; the released value is on the
    coarsest grid step not above that, and the CI holds the noise."""
    rng = np.random.default_rng(positives)
    y = np.r_[np.ones(positives, int), np.zeros(negatives, int)]
    s = 1 / (1 + np.exp(-(1.4 * (2 * y - 1) + rng.normal(0, 1.6, len(y)))))
    full = metrics.evaluate(y, s, thresholds={"vendor": 0.5}, bootstrap=0)
    auc = metrics.suppress(full)["auc"]
    assert auc["grid"] == step and auc["noise_scale"] == pytest.approx(scale, abs=1e-4)
    assert round(auc["auc"] / step) * step == pytest.approx(auc["auc"], abs=1e-12)
    assert auc["low"] < auc["auc"] < auc["high"] and auc["se"] > math.sqrt(2) * auc["noise_scale"]
    # one label flipped moves the clinic's AUC by less than the scale (the bound the noise is made for)
    flipped = y.copy()
    flipped[int(np.argmax(s))] ^= 1
    assert abs(metrics.auc_delong(flipped, s)["auc"] - full["auc"]["auc"]) <= auc["noise_scale"] * metrics.NOISE_EPSILON
    # the noise is fixed by its key and label: asking again draws the same
    assert metrics.laplace(b"k", "overall|auc|x", 1.0) == metrics.laplace(b"k", "overall|auc|x", 1.0) \
        != metrics.laplace(b"k", "overall|auc|y", 1.0)


def test_an_honest_model_on_1000_cases_gets_its_auc_to_two_decimals(w) -> None:
    """The guard against too much noise: 1000 cases (30 % positive), an honest model, the real release path
    (the hub's noise key): the released AUC is within 0.02 of the clinic's, on a grid of 0.01 or finer, and
    its CI holds the clinic's AUC; the Brier score is within 0.01."""
    rows, scores = cohort(1, n=999)
    evaluation = submit(w, "screen1", rows, scores).json()["id"]
    released, full = release(w, "screen1", evaluation)["metrics"], full_result(w, evaluation)
    auc = released["auc"]
    assert auc["grid"] <= 0.01 and abs(auc["auc"] - full["auc"]["auc"]) <= 0.02, (auc, full["auc"])
    assert auc["low"] <= full["auc"]["auc"] <= auc["high"] and auc["high"] - auc["low"] <= 0.1
    assert abs(released["calibration"]["brier"] - full["calibration"]["brier"]) <= 0.01
    # the same model on the same cases again: the same noise (nothing to average), and not refused
    again = release(w, "screen1", submit(w, "screen1", rows, scores).json()["id"])["metrics"]
    assert again["auc"] == auc and again["calibration"]["brier"] == released["calibration"]["brier"]
    # not this key's luck: over 400 keys, nine releases in ten or more are within 0.02 (Laplace: about 96 %)
    full_auc = full["auc"]["auc"]
    draws = [metrics.suppress(full, metrics.ReleaseContext(
        noise=lambda block, figure, scale, k=k: metrics.laplace(k, f"{block}|{figure}", scale)))["auc"]["auc"]
        for k in (f"key {i}".encode() for i in range(400))]
    assert sum(abs(d - full_auc) <= 0.02 for d in draws) >= 0.9 * len(draws)


# -- the evaluation budget ----------------------------------------------------------------------------
def _web_submit(w, rows: list[tuple[str, int, str]], scores: dict[str, float], who: str) -> Any:
    sam = web_client(w["app"], w["hub"], w["p"]["sam"])
    return sam.post("/projects/budget/vai/evaluations", data={
        "csrf_token": csrf_for(sam), "title": "From the page", "model_version": w["models"][who], "dataset": "",
        "labels_csv": "case_id,label,site\n" + "\n".join(f"{i},{y},{g}" for i, y, g in rows), "threshold": "0.5",
        "reference_source": "labels", "subgroups": "site", "bootstrap": "0"},
        files={"predictions_file": ("scores.csv", ("case_id,score\n" + "\n".join(
            f"{i},{s!r}" for i, s in scores.items())).encode())})


@pytest.mark.parametrize("route", ["api", "web"])
def test_the_evaluation_budget_refuses_past_it(w, route: str) -> None:
    """Default 3 per submitter and 6 per vendor in 30 days, per project, counted from the evaluations (failed
    ones not): vera's fourth is refused (429, audited, the reason and when the next is possible), vince's
    models (the same vendor) count towards Acme's six, globex is not held; the page shows the use; past the
    period, or with the budget raised, evaluations go on."""
    rows, scores = cohort(1, n=60)

    def create(who: str) -> Any:
        if route == "web":
            return _web_submit(w, rows, scores, who)
        return submit(w, "budget", rows, scores, who=who, run=False)

    def created(r: Any) -> bool:
        return r.status_code == 201 if route == "api" else r.status_code == 200 and "is created and started" in r.text

    failed = submit(w, "budget", [(c, 1, g) for c, _, g in rows], scores)  # all positive: fails, not counted
    assert failed.status_code == 201
    with w["hub"].sessions() as s:
        assert s.get_one(Evaluation, uuid.UUID(failed.json()["id"])).state == "failed"
    for _ in range(3):
        assert created(create("vera"))
    refused = create("vera")
    assert refused.status_code == 429, refused.text
    text = refused.json()["detail"] if route == "api" else html.unescape(refused.text)
    assert "evaluation budget for Acme's models in this project is used up" in text and "The next is possible" in text
    if route == "api":
        assert 29 * 86400 < int(refused.headers["Retry-After"]) <= 30 * 86400
    else:
        assert 'role="alert"' in refused.text
    with w["hub"].sessions() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "vai.evaluation.refused")))
        assert len(events) == 1 and events[0].outcome == "denied" and events[0].details["vendor"] == "acme"
        assert events[0].details["submitter_evaluations"] == 3
        assert s.scalar(select(func.count()).select_from(Evaluation)) == 4  # the refused one was not made
    for _ in range(3):  # vince works for Acme too: his own three, then Acme's six are used up
        assert created(create("vince"))
    assert create("vince").status_code == 429
    assert created(create("vic"))  # another vendor's budget
    page = web_client(w["app"], w["hub"], w["p"]["sam"]).get("/projects/budget/vai")
    assert 'id="budget"' in page.text and "6 of 6" in page.text and "Vera: 3 of 3" in page.text
    # 31 days later the oldest no longer count
    with transaction(w["hub"].sessions) as s:
        s.execute(update(Evaluation).values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=31)))
    assert created(create("vera"))
    # the project raises the budget (manage-settings, fresh MFA, audited as a setting change)
    for _ in range(2):
        assert created(create("vera"))
    assert create("vera").status_code == 429
    r = w["c"].put("/api/v1/projects/budget/settings/vai_evaluation_budget", headers=bearer(w["t"]["alice"]),
                   json={"value": {"per_vendor": 10, "per_submitter": 4, "days": 30}})
    assert r.status_code == 200, r.text
    assert created(create("vera"))
    assert w["c"].put("/api/v1/projects/budget/settings/vai_evaluation_budget", headers=bearer(w["t"]["alice"]),
                      json={"value": {"per_vendor": 0}}).status_code == 422


# -- a model cannot leave a case out --------------------------------------------------------------------
def _nan_model(below: float) -> bytes:
    """The synthetic detector's feature, then sqrt(feature − below): NaN for the images whose peak is lower."""
    nodes = [helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[synthetic.POOL] * 2, strides=[1, 1]),
             helper.make_node("GlobalMaxPool", ["pooled"], ["peak"]),
             helper.make_node("Flatten", ["peak"], ["flat"], axis=1),
             helper.make_node("Sub", ["flat", "below"], ["shifted"]),
             helper.make_node("Sqrt", ["shifted"], ["score"])]
    graph = helper.make_graph(nodes, "nan-for-some", [helper.make_tensor_value_info(
        "image", TensorProto.FLOAT, ["N", 1, synthetic.SIZE, synthetic.SIZE])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[helper.make_tensor("below", TensorProto.FLOAT, [1], [below])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def test_a_nan_score_fails_the_evaluation_instead_of_leaving_the_case_out(vai) -> None:  # noqa: F811
    """A model's NaN score was stored as NULL on SQLite (the case then counted as unreadable and left out, by
    the model's choice: the counts of two reports would differ by it) and failed the metrics on
    PostgreSQL. Now a non-finite score fails the evaluation at once, with the reason, on both."""
    from test_vai import _cases

    peaks = sorted(synthetic.feature(c.data) for c in _cases())
    model = _nan_model(float(peaks[len(peaks) // 2]))  # NaN for about half the images
    c, t = vai["c"], vai["t"]
    r = c.post("/api/v1/vai/vendors/acme/models", headers=bearer(t["vera"]), json={
        "name": "Sometimes NaN", "version": "1", "mode": "onnx", "intended_use": "x", "contract": synthetic.CONTRACT,
        "output": synthetic.OUTPUT, "sha256": hashlib.sha256(model).hexdigest()})
    assert r.status_code == 201, r.text
    assert c.put(f"/api/v1/vai/models/{r.json()['id']}/file", content=model, headers={
        **bearer(t["vera"]), "Content-Type": "application/octet-stream"}).status_code == 200
    ev = _evaluate_dataset(vai, r.json()["id"]).json()
    _drain(vai["hub"])
    got = c.get(f"/api/v1/projects/screen/vai/evaluations/{ev['id']}", headers=bearer(t["sam"])).json()
    assert got["state"] == "failed" and "not a finite number" in (got["error"] or ""), got
    assert got["result"] is None  # no figures, nothing to release
