"""The VAI metrics engine (pure): AUC and DeLong's variance against scikit-learn, the O(m·n) definition and
a published example; Wilson intervals against Newcombe's published values; CI coverage by simulation;
calibration against scikit-learn; small-cell suppression; the random-effects meta-analysis; and the ONNX
preprocessing and inference on the synthetic screening cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import brier_score_loss, roc_auc_score

from strongroom.vai import inference, metrics, synthetic


def _naive_delong(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """DeLong, DeLong & Clarke-Pearson (1988) by definition: the Mann–Whitney kernel over every pair."""
    k = pos.shape[0]
    v10 = np.empty((k, pos.shape[1]))
    v01 = np.empty((k, neg.shape[1]))
    for r in range(k):
        psi = (pos[r][:, None] > neg[r][None, :]) + 0.5 * (pos[r][:, None] == neg[r][None, :])
        v10[r], v01[r] = psi.mean(axis=1), psi.mean(axis=0)
    return np.atleast_2d(np.cov(v10)) / pos.shape[1] + np.atleast_2d(np.cov(v01)) / neg.shape[1]


def test_auc_and_delong_match_scikit_learn_and_the_definition() -> None:
    rng = np.random.default_rng(7)
    for m, n in ((5, 7), (40, 90), (120, 60)):
        y = np.r_[np.ones(m, int), np.zeros(n, int)]
        a = np.round(np.r_[rng.normal(1, 1, m), rng.normal(0, 1, n)], 1)  # rounded: ties
        b = a + rng.normal(0, 0.7, m + n)  # a second, correlated reader
        got = metrics.auc_delong(y, a)
        assert got["auc"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
        aucs, cov = metrics.delong_fast(np.vstack([a[:m], b[:m]]), np.vstack([a[m:], b[m:]]))
        assert aucs == pytest.approx([roc_auc_score(y, a), roc_auc_score(y, b)], abs=1e-12)
        assert cov == pytest.approx(_naive_delong(np.vstack([a[:m], b[:m]]), np.vstack([a[m:], b[m:]])), abs=1e-12)
        assert got["se"] == pytest.approx(math.sqrt(cov[0, 0]), abs=1e-12)


def test_the_published_hanley_mcneil_example() -> None:
    """Hanley & McNeil (1982, Radiology 143:29–36), Table 1: 109 CT images rated 1–5 by a radiologist,
    58 normal and 51 abnormal. Published AUC 0.893; DeLong's nonparametric SE for these data is 0.0307
    (smaller than the 0.032 of Hanley and McNeil's exponential approximation)."""
    normal = [1] * 33 + [2] * 6 + [3] * 6 + [4] * 11 + [5] * 2
    abnormal = [1] * 3 + [2] * 2 + [3] * 2 + [4] * 11 + [5] * 33
    y = [0] * len(normal) + [1] * len(abnormal)
    got = metrics.auc_delong(y, normal + abnormal)
    assert round(got["auc"], 3) == 0.893
    assert got["se"] == pytest.approx(0.0307, abs=5e-4)
    assert got["low"] == pytest.approx(got["auc"] - 1.959964 * got["se"], abs=1e-6)
    boot = metrics.auc_bootstrap(y, normal + abnormal, resamples=2000, seed=3)
    assert boot["low"] < got["auc"] < boot["high"]
    assert abs(boot["low"] - got["low"]) < 0.02 and abs(boot["high"] - got["high"]) < 0.02
    assert metrics.auc_bootstrap(y, normal + abnormal, resamples=500, seed=3) == \
        metrics.auc_bootstrap(y, normal + abnormal, resamples=500, seed=3)  # seeded: reproducible


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_intervals_match_newcombe_1998(k, n, low, high) -> None:
    """Newcombe (1998, Stat Med 17:857–872), Table II, method 3 (Wilson score, no continuity correction)."""
    _, lo, hi = metrics.wilson(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_operating_points_count_and_rate() -> None:
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.05]
    p = metrics.operating_point(y, s, 0.5, "vendor")
    assert p["counts"] == {"tp": 2, "fp": 1, "tn": 3, "fn": 1}
    assert p["sensitivity"]["value"] == pytest.approx(2 / 3) and p["ppv"]["value"] == pytest.approx(2 / 3)
    assert p["specificity"]["value"] == pytest.approx(3 / 4) and p["npv"]["value"] == pytest.approx(3 / 4)
    t = metrics.threshold_for_sensitivity(y, s, 0.9)
    assert metrics.operating_point(y, s, t)["sensitivity"]["value"] == 1.0


def test_confidence_intervals_cover_by_simulation() -> None:
    """200 simulated studies each: Wilson's interval for a sensitivity and DeLong's for a binormal AUC
    (true AUC Φ(1/√2) = 0.760) cover the truth about 95 % of the time."""
    rng = np.random.default_rng(2026)
    wilson_hits = delong_hits = 0
    true_auc = float(stats.norm.cdf(1 / math.sqrt(2)))
    for _ in range(200):
        k = int(rng.binomial(60, 0.8))
        _, lo, hi = metrics.wilson(k, 60)
        wilson_hits += lo <= 0.8 <= hi
        y = np.r_[np.ones(50, int), np.zeros(80, int)]
        s = np.r_[rng.normal(1, 1, 50), rng.normal(0, 1, 80)]
        got = metrics.auc_delong(y, s)
        delong_hits += got["low"] <= true_auc <= got["high"]
    assert 0.89 <= wilson_hits / 200 <= 0.99
    assert 0.88 <= delong_hits / 200 <= 0.99


def test_calibration_matches_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 4000)
    y = (rng.uniform(0, 1, 4000) < p).astype(int)  # calibrated by construction
    cal = metrics.calibration(y, p)
    assert cal["brier"] == pytest.approx(brier_score_loss(y, p))
    assert cal["ece"] < 0.03
    observed = [b["observed"] for b in cal["bins"]]
    assert observed == pytest.approx(cal["curve"]["observed"])  # our bins are scikit-learn's
    worse = metrics.calibration(y, np.clip(p * 0.5, 0, 1))  # under-confident: a large ECE
    assert worse["ece"] > 0.2
    with pytest.raises(ValueError):
        metrics.calibration(y, p * 3)


def _counts_in(value, path=""):
    """Every (path, count) of a released structure: the numbers that describe how many cases."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("n", "positives", "negatives", "k", "tp", "fp", "tn", "fn") and isinstance(v, int):
                yield f"{path}.{k}", v
            else:
                yield from _counts_in(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _counts_in(v, f"{path}[{i}]")


def test_small_cells_are_suppressed_and_small_subgroups_hidden() -> None:
    rng = np.random.default_rng(5)
    n = 400
    y = (rng.uniform(size=n) < 0.3).astype(int)
    s = np.clip(0.3 + 0.35 * y + rng.normal(0, 0.2, n), 0, 1)
    site = np.where(np.arange(n) < 12, "tiny", np.where(np.arange(n) < 150, "small", "big"))  # tiny: <11 pos
    sex = np.where(np.arange(n) % 2 == 0, "F", "M")
    full = metrics.evaluate(y, s, thresholds={"vendor": 0.5, "strict": 0.99},
                            subgroups={"site": site.tolist(), "sex": sex.tolist()}, bootstrap=200)
    released = metrics.suppress(full)
    # no count under 11 anywhere in what is released
    small = [(p, v) for p, v in _counts_in(released) if v < metrics.MIN_CELL]
    assert small == []
    # the strict threshold leaves fewer than 11 positives called: the whole point is suppressed
    strict = next(p for p in released["operating_points"] if p["name"] == "strict")
    assert strict == {"name": "strict", "threshold": 0.99, "suppressed": True}
    vendor = next(p for p in released["operating_points"] if p["name"] == "vendor")
    assert vendor["suppressed"] is False and vendor["sensitivity"]["low"] < vendor["sensitivity"]["value"]
    # "tiny" is hidden, and so is the next smallest level ("small"): the total minus "big" would give it away
    assert [lvl["level"] for lvl in released["subgroups"]["site"]["levels"]] == ["big"]
    assert released["subgroups"]["site"]["hidden_levels"] == 2
    assert {lvl["level"] for lvl in released["subgroups"]["sex"]["levels"]} == {"F", "M"}
    # reliability bins are merged until each has ≥ 11 positives and ≥ 11 negatives
    bins = released["calibration"]["bins"]
    assert bins and all(b["positives"] >= 11 and b["n"] - b["positives"] >= 11 for b in bins)
    assert sum(b["n"] for b in bins) == n
    json.dumps(released)  # plain JSON
    # a block with fewer than 11 positives shows no AUC at all
    tiny = metrics.suppress(metrics.evaluate(y[:12], s[:12], bootstrap=0))
    assert tiny["auc"] is None and tiny["roc"] == [] and tiny["positives"] is None


def test_meta_analysis_dersimonian_laird() -> None:
    same = metrics.meta_analysis([0.8, 0.8, 0.8], [0.02, 0.03, 0.04])
    assert same["auc"] == pytest.approx(0.8) and same["tau2"] == 0.0 and same["i2"] == 0.0
    # by hand on the logit scale: fixed-effect weights, Q, tau² (DerSimonian & Laird 1986)
    aucs, ses = np.array([0.70, 0.85, 0.78, 0.92]), np.array([0.03, 0.025, 0.04, 0.02])
    theta = np.log(aucs / (1 - aucs))
    var = (ses / (aucs * (1 - aucs))) ** 2
    w = 1 / var
    q = float((w * (theta - (w * theta).sum() / w.sum()) ** 2).sum())
    tau2 = (q - 3) / (w.sum() - (w**2).sum() / w.sum())
    wr = 1 / (var + tau2)
    pooled = (wr * theta).sum() / wr.sum()
    got = metrics.meta_analysis(aucs, ses)
    assert got["q"] == pytest.approx(q) and got["tau2"] == pytest.approx(tau2)
    assert got["auc"] == pytest.approx(1 / (1 + math.exp(-pooled)))
    assert got["low"] < got["auc"] < got["high"] and got["i2"] > 0.5
    with pytest.raises(ValueError):
        metrics.meta_analysis([0.8], [0.02])


def test_onnx_detector_follows_its_contract() -> None:
    model = synthetic.build_model(40.0, -22.0)
    runner = inference.Runner(model, synthetic.CONTRACT, synthetic.OUTPUT)
    cases = synthetic.cases(6, seed=9)
    inst = [inference.preprocess(c.data, runner.contract) for c in cases]
    assert inst[0].tensor.shape == (1, 64, 64) and inst[0].sop_uid == cases[0].sop_uid
    scores = runner.predict([i.tensor for i in inst])
    expected = [1 / (1 + math.exp(-(40.0 * synthetic.feature(c.data) - 22.0))) for c in cases]
    assert scores == pytest.approx(expected, abs=1e-5)
    # resize by the contract: the same model on a 32×32 contract is refused, a 64×64 one resizes 32×32 input
    with pytest.raises(inference.ContractError, match="input is"):
        inference.Runner(model, {**synthetic.CONTRACT, "size": [32, 32]}, synthetic.OUTPUT)
    with pytest.raises(inference.ContractError, match="SHA-256"):
        inference.Runner(model, synthetic.CONTRACT, synthetic.OUTPUT, sha256="0" * 64)
    with pytest.raises(inference.ContractError, match="modality"):
        inference.preprocess(cases[0].data, {**runner.contract, "modality": "MG"})
    with pytest.raises(inference.ContractError):
        inference.check_contract({"modality": "CT", "size": [0, 64]})
    with pytest.raises(inference.ContractError):
        inference.Runner(b"not onnx", synthetic.CONTRACT, synthetic.OUTPUT)
