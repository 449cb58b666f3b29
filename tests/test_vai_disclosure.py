"""Disclosure control of released VAI reports, tested as a class: every number a vendor reads (JSON, page,
PDF) is walked, and no count of cases under min cell (11) nor any one case's score may be read off it, alone
or worked out from other released numbers (a cut's four cells, the difference of two cuts of a block, the
overall minus the released subgroup levels). Results-only evaluations stand in for an adversarial model:
the vendor controls the scores either way. Also: the released checklist's counts and dates, and the
audit of clinic reads of an evaluation's per-case results."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from strongroom.vai import metrics, service

MIN = metrics.MIN_CELL
END = dt.date(2030, 12, 31)
COUNT_KEYS = {"n", "positives", "negatives", "k", "tp", "fp", "tn", "fn"}
NOT_CASE_COUNTS = {"min_cell", "hidden_levels", "resamples", "seed"}
SECRET = 0.2141592653589793  # bits an adversarial model chose to encode from one image's pixels


def small(count: int) -> bool:
    return 0 < count < MIN


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from leaves(v, f"{path}.{k}") if isinstance(v, Mapping | list) else [(f"{path}.{k}", k, v)]
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, f"{path}[{i}]") if isinstance(v, Mapping | list) else [(f"{path}[{i}]", "", v)]


def on_noise_grid(released: Mapping[str, Any], path: str, value: float) -> bool:
    """A noised AUC figure (the AUC, its CI bounds) is a step of its grid: a round number that may equal a
    round score by chance, but is made of ranks and noise, never of a score."""
    if not re.search(r"\.auc\.(auc|low|high)$", path):
        return False
    block: Any = released
    for part in re.findall(r"\.([a-z_]+)|\[(\d+)\]", path.rsplit(".auc.", 1)[0]):
        block = block[part[0]] if part[0] else block[int(part[1])]
    step = block["auc"]["grid"]
    return abs(value / step - round(value / step)) < 1e-6


def _cuts(block: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """What the released block tells about its thresholds: (what, positives, negatives at or above)."""
    p, n = block.get("positives"), block.get("negatives")
    out = [(f"point {pt['name']}", pt["counts"]["tp"], pt["counts"]["fp"])
           for pt in block.get("operating_points", []) if not pt.get("suppressed")]
    bins = (block.get("calibration") or {}).get("bins") or []
    for i in range(1, len(bins)):
        out.append((f"bin edge {bins[i]['low']}", sum(b["positives"] for b in bins[i:]),
                    sum(b["n"] - b["positives"] for b in bins[i:])))
    if p is not None and n is not None:
        for fpr, tpr in block.get("roc", [])[1:-1]:
            fp = fpr * n
            out.append((f"roc ({fpr}, {tpr})", round(tpr * p), round(fp) if abs(fp - round(fp)) < 1e-6
                        else math.floor(fp)))
    return out


def leaks(released: Mapping[str, Any], full: Mapping[str, Any], scores: Sequence[float]) -> list[str]:
    """Every way the released metrics give a count in 1..MIN-1 or one case's score (empty: none)."""
    found: list[str] = []
    score_set = {float(s) for s in scores} - {0.0, 1.0}  # the ends of every scale: no case's own
    for path, key, v in leaves(released):
        if isinstance(v, bool) or key in NOT_CASE_COUNTS:
            continue
        if isinstance(v, int) and small(v):  # (a) a released count
            found.append(f"{path} = {v}")
        if isinstance(v, float) and v in score_set and not on_noise_grid(released, path, v):  # (b) one case's score
            found.append(f"{path} = {v} is a case's score")
    text = json.dumps(released)
    found += [f"score {s!r} in the text" for s in score_set if repr(s) in text and len(repr(s)) > 6]
    blocks = [("overall", released)] + [(f"{c}={lv['level']}", lv) for c, g in released["subgroups"].items()
                                        for lv in g["levels"]]
    for name, block in blocks:  # a cut's cells, and two cuts' differences
        p, n = block.get("positives"), block.get("negatives")
        cuts = _cuts(block)
        for what, tp, fp in cuts:
            cells = [tp, fp] + ([p - tp, n - fp] if p is not None and n is not None else [])
            if any(small(c) for c in cells):
                found.append(f"{name} {what}: cells {cells}")
        for (wa, ta, fa), (wb, tb, fb) in itertools.combinations(cuts, 2):
            if small(abs(ta - tb)) or small(abs(fa - fb)):
                found.append(f"{name} {wa} vs {wb}: differ by {abs(ta - tb)} positives, {abs(fa - fb)} negatives")
    found += _subtraction_leaks(released, full)
    return found


def _subtraction_leaks(released: Mapping[str, Any], full: Mapping[str, Any]) -> list[str]:
    """(c) Within a subgroup column, a set of levels is known at a threshold when it is a union of released
    levels and (the overall being released) the rest taken together. Every known set's cells, and its
    difference between two thresholds where it is known, must not be small; no suppressed level alone may
    be known."""
    found: list[str] = []
    overall_points = released["operating_points"]
    for column, group in released["subgroups"].items():
        rows = {r["level"]: r for r in full["subgroups"][column]}
        shown = {lv["level"]: lv for lv in group["levels"]}
        levels = list(rows)
        hidden = [lv for lv in levels if lv not in shown]
        # n, positives, negatives: the overall minus the shown levels gives the hidden ones together
        if hidden and released["positives"] is not None:
            hp = released["positives"] - sum(lv["positives"] for lv in shown.values())
            hn = released["negatives"] - sum(lv["negatives"] for lv in shown.values())
            if small(hp) or small(hn) or len(hidden) == 1:
                found.append(f"{column}: hidden levels {hidden} have {hp} positives, {hn} negatives")
        known: dict[int, list[frozenset[str]]] = {}
        for i, point in enumerate(overall_points):
            if i >= len(next(iter(rows.values()))["operating_points"]):
                break
            single = [lv for lv in shown if not shown[lv]["operating_points"][i]["suppressed"]]
            rest = frozenset(levels) - frozenset(single)
            blocks = [frozenset([lv]) for lv in single] + ([rest] if rest and not point["suppressed"] else [])
            known[i] = [frozenset().union(*combo) for r in range(1, len(blocks) + 1)
                        for combo in itertools.combinations(blocks, r)]
            for s in known[i]:
                tp = sum(rows[lv]["operating_points"][i]["counts"]["tp"] for lv in s)
                fp = sum(rows[lv]["operating_points"][i]["counts"]["fp"] for lv in s)
                pos = sum(rows[lv]["positives"] for lv in s)
                neg = sum(rows[lv]["negatives"] for lv in s)
                if any(small(c) for c in (tp, fp, pos - tp, neg - fp)):
                    found.append(f"{column} {sorted(s)} at {point['name']}: cells {(tp, fp, pos - tp, neg - fp)}")
                if len(s) == 1 and next(iter(s)) not in single:
                    found.append(f"{column}: suppressed {sorted(s)} at {point['name']} is the overall minus the rest")
        for a, b in itertools.combinations(known, 2):
            for s in set(known[a]) & set(known[b]):
                d = [abs(sum(rows[lv]["operating_points"][a]["counts"][c] - rows[lv]["operating_points"][b]["counts"][c]
                             for lv in s)) for c in ("tp", "fp")]
                if any(small(x) for x in d):
                    found.append(f"{column} {sorted(s)}: {overall_points[a]['name']} vs {overall_points[b]['name']} "
                                 f"differ by {d}")
    return found


# -- the engine, on many cohorts ---------------------------------------------------------------
def _cohort(seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
    rng = np.random.default_rng(seed)
    n = int(rng.choice([60, 120, 250, 600]))
    y = (rng.uniform(size=n) < rng.uniform(0.15, 0.5)).astype(int)
    s = 1 / (1 + np.exp(-(rng.uniform(0.5, 2.5) * (2 * y - 1) + rng.normal(0, 1, n))))
    s[np.flatnonzero(y == 1)[0]] = 0.9990001234  # the model recognises one image (above every negative)
    s[np.flatnonzero(y == 1)[1]] = SECRET  # and hides bits in another's score
    k = int(rng.integers(2, 6))
    sites = [chr(65 + i) for i in range(k)]
    site = rng.choice(sites, size=n, p=np.array([0.45, 0.3, 0.12, 0.08, 0.05][:k]) / sum([0.45, 0.3, 0.12, 0.08,
                                                                                         0.05][:k]))
    sex = rng.choice(["F", "M"], size=n)
    return y, s, {"site": site.tolist(), "sex": sex.tolist()}


@pytest.mark.parametrize("seed", range(24))
def test_no_released_number_pins_a_small_cell_or_a_score(seed: int) -> None:
    """The class test: close protocol thresholds, target sensitivities (one of them 1.0: the lowest positive,
    which carries the secret), a positive above every negative, subgroup columns with small levels."""
    y, s, groups = _cohort(seed)
    full = metrics.evaluate(y, s, thresholds={"vendor": 0.5, "vendor+": 0.5037, "clinic": 0.35},
                            target_sensitivities=[0.8, 0.9, 1.0], subgroups=groups, bootstrap=0)
    released = metrics.suppress(full)
    assert leaks(released, full, s.tolist()) == []
    json.dumps(released)
    # what is released still says something: the overall figures and a curve through the released cuts
    assert released["auc"] is not None and len(released["roc"]) >= 2
    for p in released["operating_points"]:  # thresholds: the clinic's, or a target's on the 0.01 grid
        if "threshold" in p and p["name"].startswith("sensitivity"):
            assert round(p["threshold"], 2) == p["threshold"] and not p["suppressed"]


def test_a_target_sensitivity_threshold_is_on_a_coarse_grid() -> None:
    """Defect 1: the threshold reaching a target sensitivity was one positive's exact score; now the engine
    uses (and the report shows) it rounded down to 0.01 (two significant figures for other scores), and a
    suppressed point found from the data shows no threshold at all."""
    y = np.r_[np.ones(60, int), np.zeros(60, int)]
    s = np.r_[0.30 + 0.005 * np.arange(60), 0.25 + 0.006 * np.arange(60)]
    s[0] = SECRET
    full = metrics.evaluate(y, s, thresholds={"vendor": 0.5}, target_sensitivities=[1.0, 0.75], bootstrap=0)
    released = metrics.suppress(full)
    at_one, at_75 = released["operating_points"][1:]
    assert at_one == {"name": "sensitivity ≥ 1", "suppressed": True}  # fn = 0: nothing but its name
    assert at_75["suppressed"] is False and at_75["threshold"] == 0.37  # the 15th lowest positive: 0.37 + …
    assert full["operating_points"][2]["threshold"] == 0.37
    assert full["operating_points"][2]["sensitivity"]["value"] >= 0.75
    assert repr(SECRET) not in json.dumps(released)
    assert metrics.coarse_threshold(SECRET) == 0.21 and metrics.coarse_threshold(0.29) == 0.29
    assert metrics.coarse_threshold(-3.14159, unit_interval=False) == -3.2
    assert metrics.coarse_threshold(1234.5, unit_interval=False) == 1200.0


def test_the_roc_curve_has_no_point_with_a_small_cell() -> None:
    """Defect 2: TPR at FPR 0 times the positives was the number of positives above every negative (1)."""
    y = np.r_[np.ones(60, int), np.zeros(60, int)]
    s = np.r_[0.30 + 0.005 * np.arange(60), 0.25 + 0.006 * np.arange(60)] + 1.234567e-4  # no round scores
    s[7] = 0.999
    released = metrics.suppress(metrics.evaluate(y, s, thresholds={"vendor": 0.5}, bootstrap=0))
    implied = [(round(tpr * 60), round(fpr * 60, 6)) for fpr, tpr in released["roc"]]
    assert implied[0] == (0, 0) and implied[-1] == (60, 60) and len(implied) >= 3
    assert not any(small(tp) or small(60 - tp) or small(fp) or small(60 - fp) for tp, fp in implied)
    assert leaks(released, metrics.evaluate(y, s, thresholds={"vendor": 0.5}, bootstrap=0), s.tolist()) == []


def _subtraction_case() -> tuple[np.ndarray, np.ndarray, list[str]]:
    y, s, site = [], [], []
    for i in range(41):  # level A: every cell ≥ 11 at 0.5
        y.append(1), s.append(0.9 + i * 1e-4 if i < 30 else 0.1 + i * 1e-4), site.append("A")
    for i in range(31):
        y.append(0), s.append(0.9 - i * 1e-4 if i < 11 else 0.1 - i * 1e-4), site.append("A")
    for i in range(12):  # level B: tp = 1 at 0.5, suppressed
        y.append(1), s.append(0.91 if i < 1 else 0.2 + 0.01 * i + 1.234567e-4), site.append("B")
    for i in range(12):
        y.append(0), s.append(0.15 + 0.01 * i + 1.234567e-4), site.append("B")
    return np.array(y), np.array(s), site


def test_a_suppressed_subgroup_point_is_not_the_overall_minus_the_others() -> None:
    """Defect 3: B's point was suppressed (tp = 1) but the overall minus A's gave it; now A's is withheld too
    (the two together have every cell ≥ 11), and the overall stays."""
    y, s, site = _subtraction_case()
    full = metrics.evaluate(y, s, thresholds={"vendor": 0.5}, subgroups={"site": site}, bootstrap=0)
    released = metrics.suppress(full)
    levels = {lv["level"]: lv for lv in released["subgroups"]["site"]["levels"]}
    assert set(levels) == {"A", "B"} and released["operating_points"][0]["suppressed"] is False
    assert levels["B"]["operating_points"][0]["suppressed"] and levels["A"]["operating_points"][0]["suppressed"]
    assert _subtraction_leaks(released, full) == [] and leaks(released, full, s.tolist()) == []


def test_complementary_suppression_with_k_levels_and_hidden_ones() -> None:
    """k levels, two of them too small to show (their union too), one shown level's point suppressed: the
    hidden ones are hidden with a larger one, and the suppressed point is withheld with the next smallest."""
    rng = np.random.default_rng(3)
    sizes = {"A": (90, 90), "B": (40, 40), "C": (25, 25), "D": (14, 14), "E": (3, 4), "F": (2, 5)}
    y, s, site = [], [], []
    for level, (p, n) in sizes.items():
        y += [1] * p + [0] * n
        s += list(rng.uniform(0.45, 1, p)) + list(rng.uniform(0, 0.55, n))
        site += [level] * (p + n)
    y_, s_ = np.array(y), np.array(s)
    full = metrics.evaluate(y_, s_, thresholds={"vendor": 0.5, "strict": 0.8}, subgroups={"site": site},
                            bootstrap=0)
    released = metrics.suppress(full)
    group = released["subgroups"]["site"]
    assert group["hidden_levels"] >= 3  # E and F (7 cases each) and at least D with them
    assert leaks(released, full, s) == []


def test_degenerate_scores_do_not_give_back_one_score() -> None:
    """An adversarial model scoring every image 0 but one: the Brier score times n, or a reliability bin's
    mean times its n, was that one score to the last digit. Now such scores are degenerate (the AUC and
    the Brier score are withheld; the service refuses the release), bins' means are rounded, and with the
    scores spread wider the Brier score carries noise of one case's weight (1/n)."""
    y = np.r_[np.ones(40, int), np.zeros(80, int)]
    s = np.zeros(120)
    s[0] = SECRET
    full = metrics.evaluate(y, s, thresholds={"vendor": 0.5}, bootstrap=0)
    released = metrics.suppress(full)
    cal = released["calibration"]
    assert released["degenerate"].startswith("degenerate scores") and released["auc"] is None
    assert cal["brier"] is None and {"auc", "brier"} <= set(released["suppressed"])
    for b in cal["bins"]:
        assert abs(b["mean_predicted"] * b["n"] - SECRET) > 1e-6
    assert leaks(released, full, s.tolist()) == []
    s[60:72] = 0.25  # twelve negatives scored apart: no longer degenerate
    full = metrics.evaluate(y, s, thresholds={"vendor": 0.5}, bootstrap=0)
    released = metrics.suppress(full)
    brier = released["calibration"]["brier"]
    assert "degenerate" not in released and released["auc"] is not None and brier is not None
    known = 39 + 12 * 0.25**2  # 39 positives scored 0, twelve negatives scored 0.25
    from_brier = 1 - math.sqrt(max(0.0, brier * 120 - known))  # (1 - s)² for the secret's positive
    assert abs(from_brier - SECRET) > 1e-6 and abs(brier - full["calibration"]["brier"]) <= 6 / 120
    assert leaks(released, full, s.tolist()) == []


# -- as the vendor reads it: JSON, page, PDF --------------------------------------------------------
@pytest.fixture
def w(app, hub, people):
    p = {n: people(n) for n in ("alice", "sam", "rita", "ron", "vera")}
    p["olga"] = people("olga", admin=True)
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="screen", name="Screen", pi="alice", ethics_ref="E1",
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
    assert c.post("/api/v1/vai/vendors", json={"slug": "acme", "name": "Acme"},
                  headers=bearer(t["olga"])).status_code == 201
    assert c.post("/api/v1/vai/vendors/acme/members", json={"user": "vera"},
                  headers=bearer(t["olga"])).status_code == 204
    r = c.post("/api/v1/vai/vendors/acme/models", headers=bearer(t["vera"]), json={
        "name": "Tool", "version": "1", "mode": "results-only", "intended_use": "screening"})
    assert r.status_code == 201, r.text
    return {"c": c, "t": t, "p": p, "app": app, "hub": hub, "model": r.json()["id"]}


def _evaluate(w, labels: list[tuple[str, int, str]], scores: dict[str, float], protocol: dict) -> str:
    c, t = w["c"], w["t"]
    r = c.post("/api/v1/projects/screen/vai/evaluations", headers=bearer(t["sam"]), json={
        "model_version": w["model"], "title": "t",
        "labels_csv": "case_id,label,site\n" + "\n".join(f"{i},{y},{g}" for i, y, g in labels),
        "predictions_csv": "case_id,score\n" + "\n".join(f"{i},{s!r}" for i, s in scores.items()),
        "protocol": {"bootstrap": 0, **protocol}})
    assert r.status_code == 201, r.text
    Runner(w["hub"], lease_seconds=30, name="test").run_until_idle()
    return str(r.json()["id"])


def _release(w, evaluation: str) -> str:
    c, t = w["c"], w["t"]
    rid = c.post(f"/api/v1/projects/screen/vai/evaluations/{evaluation}/releases",
                 headers=bearer(t["sam"])).json()["id"]
    for who in ("rita", "ron"):
        assert c.post(f"/api/v1/projects/screen/vai/releases/{rid}/reviews", json={"decision": "approve"},
                      headers=bearer(t[who])).status_code == 200
    return str(rid)


def test_the_released_report_as_the_vendor_reads_it(w) -> None:
    """The auditor's four cases in one released report, walked in JSON, on the page and in the PDF."""
    y, s, site = _subtraction_case()
    ids = [f"c{i:03d}" for i in range(len(y))]
    labels = [(i, int(v), g) for i, v, g in zip(ids, y, site, strict=True)]
    scores = {i: float(v) for i, v in zip(ids, s, strict=True)}
    secret = SECRET / 10
    scores[ids[30]] = secret  # a positive of A below the vendor's threshold, the lowest positive
    labels += [(f"x{i}", 0, "A") for i in range(3)]  # three labelled cases without a prediction
    ev = _evaluate(w, labels, scores, {"operating_points": {"vendor": 0.5}, "target_sensitivities": [1.0, 0.6],
                                       "subgroups": ["site"]})
    rid = _release(w, ev)
    c, t = w["c"], w["t"]
    report = c.get(f"/api/v1/vai/reports/{rid}", headers=bearer(t["vera"])).json()["report"]
    with w["hub"].sessions() as sess:
        from strongroom.vai.models import Evaluation

        full = sess.get(Evaluation, service._uuid(ev, "evaluation")).result["metrics"]
    assert leaks(report["metrics"], full, list(scores.values())) == []
    for path, key, v in leaves(report):  # the whole report, checklist and inputs included
        if isinstance(v, int) and not isinstance(v, bool) and key not in NOT_CASE_COUNTS:
            assert not small(v), path
    for item in report["checklist"]:
        for number in re.findall(r"\b(\d+) (?:cases|labelled|unreadable|DICOM)", item["value"]):
            assert not small(int(number)), item
    eligibility = next(i["value"] for i in report["checklist"] if i["item"].startswith("Eligibility"))
    assert "fewer than 11 labelled cases without a prediction" in eligibility
    assert "files" not in report["inputs"]
    vera = web_client(w["app"], w["hub"], w["p"]["vera"])
    page = vera.get(f"/vai/reports/{rid}").text
    pdf = vera.get(f"/vai/reports/{rid}/report.pdf").content
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    for shown in (page, text, json.dumps(report)):
        assert "0.02141" not in shown and "0.2141" not in shown
        assert "3 labelled" not in shown
    assert "suppressed" in page and "suppressed" in text


# -- the checklist ---------------------------------------------------------------------------------
def _checklist(result: dict[str, Any]) -> dict[str, str]:
    ev = SimpleNamespace(result=result, protocol={"operating_points": {"vendor": 0.5}}, labels_sha256="0" * 64,
                         finished_at=None, inputs={"files": 7}, outputs_sha256="1" * 64)
    model = SimpleNamespace(name="M", version="1", mode="onnx", sha256="2" * 64, intended_use="x", contract={})
    items = service.checklist(ev, SimpleNamespace(name="V"), model, SimpleNamespace(name="P"), "SRD-1 v1")
    return {i["item"]: i["value"] for i in items}


def test_the_checklist_states_small_counts_and_dates_coarsely() -> None:
    """Defect 4: small counts of excluded cases and the months of the earliest and latest study."""
    base = {"matched": 140, "missing": 3, "unreadable": 1, "references": 0, "study_months": ["2019-03", "2021-11"]}
    got = _checklist(base)
    assert "2019-03" not in got["Dates"] and "2021-11" not in got["Dates"]
    assert "140 cases analysed, fewer than 11 labelled cases without a prediction, fewer than 11 unreadable" \
        in got["Eligibility / inclusion"]
    assert _checklist({**base, "study_years": {"2019": 1, "2020": 60, "2021": 79}})["Dates"] == "studies up to 2021"
    assert _checklist({**base, "study_years": {"2019": 40, "2021": 100}})["Dates"] == "studies from 2019 to 2021"
    assert _checklist({**base, "study_years": {"2021": 4}})["Dates"].startswith("study dates withheld")
    assert _checklist({**base, "missing": 0, "unreadable": 25})["Eligibility / inclusion"].endswith(
        "no labelled cases without a prediction, 25 unreadable instances excluded")


# -- auditing the clinic's reads ---------------------------------------------------------------------
def test_reading_per_case_results_is_audited(w) -> None:
    """Defect 5: the evaluation's result holds per-case data (ids and scores of the failures, ids without a
    prediction); reading it through the API or the page is audited, once per reader and window."""
    labels = [(f"p{i}", 1, "A") for i in range(30)] + [(f"n{i}", 0, "A") for i in range(30)]
    scores = {f"p{i}": 0.4 + 0.01 * i for i in range(30)} | {f"n{i}": 0.2 + 0.01 * i for i in range(30)}
    ev = _evaluate(w, labels, scores, {"operating_points": {"vendor": 0.5}})
    c, t = w["c"], w["t"]

    def reads() -> list[tuple[str, str | None]]:
        with w["hub"].sessions() as s:
            return [(e.actor, e.target) for e in s.scalars(select(AuditEvent).where(
                AuditEvent.action == "vai.evaluation.read").order_by(AuditEvent.seq))]

    assert reads() == []
    assert c.get(f"/api/v1/projects/screen/vai/evaluations/{ev}", headers=bearer(t["sam"])).json()["result"]
    assert c.get(f"/api/v1/projects/screen/vai/evaluations/{ev}", headers=bearer(t["sam"])).status_code == 200
    assert c.get("/api/v1/projects/screen/vai/evaluations", headers=bearer(t["sam"])).status_code == 200
    assert len(reads()) == 1 and reads()[0][1] == f"vai-evaluation:{ev}"
    page = web_client(w["app"], w["hub"], w["p"]["rita"]).get(f"/projects/screen/vai/evaluations/{ev}")
    assert page.status_code == 200 and "Failure analysis" in page.text
    assert len(reads()) == 2 and reads()[1][0] != reads()[0][0]
    # a vendor's member still gets nothing, and nothing is recorded as read
    assert c.get(f"/api/v1/projects/screen/vai/evaluations/{ev}", headers=bearer(t["vera"])).status_code == 404
    assert len(reads()) == 2
