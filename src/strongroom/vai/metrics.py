"""The VAI metrics engine: pure numbers in, plain dicts out (no web, no database).

- AUC (scikit-learn) with DeLong's 95 % CI, computed with the fast algorithm of Sun & Xu (2014,
  IEEE Signal Processing Letters 21(11)) from mid-ranks, and a stratified percentile bootstrap CI;
- sensitivity, specificity, PPV, NPV at operating points with Wilson CIs (``scipy.stats.binomtest``);
- calibration: reliability curve (``sklearn.calibration.calibration_curve``), Brier score
  (``sklearn.metrics.brier_score_loss``) and the expected calibration error;
- per-subgroup results, small-cell suppression for anything released, and a DerSimonian–Laird
  random-effects meta-analysis of AUCs across clinics (on the logit scale).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from scipy.stats import rankdata
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

MIN_CELL = 11  # every count under this is suppressed in a released report


# -- AUC and DeLong ----------------------------------------------------------------------------
def _arrays(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("labels and scores are two vectors of the same length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels are 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores are finite numbers")
    return y, s


def delong_fast(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sun & Xu's fast DeLong: ``positives`` (k × m) and ``negatives`` (k × n) are the scores of k
    predictors on the m positive and n negative cases. Returns (AUCs (k,), covariance (k × k))."""
    pos = np.atleast_2d(np.asarray(positives, dtype=float))
    neg = np.atleast_2d(np.asarray(negatives, dtype=float))
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError("DeLong's variance needs at least two positive and two negative cases")
    tx = rankdata(pos, axis=1)  # mid-ranks within the positives
    ty = rankdata(neg, axis=1)  # … within the negatives
    tz = rankdata(np.hstack([pos, neg]), axis=1)  # … within all
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v01 = (tz[:, :m] - tx) / n  # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m  # … of the negatives
    s01 = np.atleast_2d(np.cov(v01))
    s10 = np.atleast_2d(np.cov(v10))
    return aucs, s01 / m + s10 / n


def auc_delong(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
               alpha: float = 0.05) -> dict[str, float]:
    """AUC (scikit-learn's), its DeLong standard error and (1-alpha) CI, clipped to [0, 1] as pROC does."""
    y, s = _arrays(labels, scores)
    auc = float(roc_auc_score(y, s))
    _, cov = delong_fast(s[y == 1][None, :], s[y == 0][None, :])
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    z = float(stats.norm.ppf(1 - alpha / 2))
    return {"auc": auc, "se": se, "low": max(0.0, auc - z * se), "high": min(1.0, auc + z * se)}


def _auc_by_rank(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUCs of many resamples at once (rows): the Mann–Whitney statistic from mid-ranks."""
    m, n = pos.shape[1], neg.shape[1]
    tz = np.asarray(rankdata(np.hstack([pos, neg]), axis=1), dtype=float)
    return np.asarray((tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n, dtype=float)


def auc_bootstrap(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *,
                  resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Stratified percentile bootstrap CI of the AUC (positives and negatives resampled apart, so every
    resample has both classes). Seeded: the same inputs give the same interval."""
    y, s = _arrays(labels, scores)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError("a bootstrap CI needs at least two positive and two negative cases")
    rng = np.random.default_rng(seed)
    aucs = np.empty(resamples)
    chunk = 250
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        bp = pos[rng.integers(0, len(pos), size=(k, len(pos)))]
        bn = neg[rng.integers(0, len(neg), size=(k, len(neg)))]
        aucs[start:start + k] = _auc_by_rank(bp, bn)
    low, high = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return {"auc": float(roc_auc_score(y, s)), "low": float(low), "high": float(high), "resamples": resamples,
            "seed": seed}


# -- operating points --------------------------------------------------------------------------
def wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float | None, float | None, float | None]:
    """A proportion and its Wilson score interval (scipy's ``binomtest(...).proportion_ci``)."""
    if n <= 0:
        return None, None, None
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return k / n, float(ci.low), float(ci.high)


def _rate(k: int, n: int) -> dict[str, Any]:
    value, low, high = wilson(k, n)
    return {"value": value, "low": low, "high": high, "k": int(k), "n": int(n)}


def operating_point(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                    threshold: float, name: str = "") -> dict[str, Any]:
    """Positive when score ≥ threshold: the confusion counts and sens/spec/PPV/NPV with Wilson CIs."""
    y, s = _arrays(labels, scores)
    pred = s >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    tn = int((~pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    return {"name": name or f"≥ {threshold:g}", "threshold": float(threshold),
            "counts": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
            "sensitivity": _rate(tp, tp + fn), "specificity": _rate(tn, tn + fp),
            "ppv": _rate(tp, tp + fp), "npv": _rate(tn, tn + fn)}


def threshold_for_sensitivity(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                              target: float) -> float:
    """The highest threshold whose sensitivity reaches ``target`` (an operating point chosen by the clinic)."""
    y, s = _arrays(labels, scores)
    pos = np.sort(s[y == 1])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive cases")
    k = max(1, math.ceil(target * len(pos)))
    return float(pos[min(k, len(pos)) - 1])


# -- calibration -------------------------------------------------------------------------------
def calibration(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *,
                bins: int = 10) -> dict[str, Any]:
    """Reliability curve over ``bins`` equal-width bins, Brier score and expected calibration error.
    Scores must be probabilities in [0, 1]."""
    y, s = _arrays(labels, scores)
    if (s < 0).any() or (s > 1).any():
        raise ValueError("calibration needs scores that are probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(s, edges[1:-1], right=False), 0, bins - 1)
    rows = []
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        count = int(mask.sum())
        if count == 0:
            continue
        mean_pred, frac_pos = float(s[mask].mean()), float(y[mask].mean())
        ece += count / len(s) * abs(mean_pred - frac_pos)
        rows.append({"bin": b, "low": float(edges[b]), "high": float(edges[b + 1]), "n": count,
                     "positives": int(y[mask].sum()), "mean_predicted": mean_pred, "observed": frac_pos})
    # scikit-learn's curve, kept as the reference for the bins above (same uniform strategy)
    frac, mean = calibration_curve(y, s, n_bins=bins, strategy="uniform")
    return {"bins": rows, "brier": float(brier_score_loss(y, s)), "ece": float(ece),
            "curve": {"observed": [float(v) for v in frac], "mean_predicted": [float(v) for v in mean]}}


# -- ROC curve for plotting --------------------------------------------------------------------
def roc_points(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
               grid: int = 20) -> list[tuple[float, float]]:
    """The ROC curve as (FPR, TPR) on a fixed FPR grid (0, 1/grid, …, 1), after the origin: no point
    belongs to one case's score, so the curve can be released."""
    y, s = _arrays(labels, scores)
    fpr, tpr, _ = roc_curve(y, s)
    xs = np.linspace(0.0, 1.0, grid + 1)
    # the step function's upper envelope at each grid FPR
    ys = [float(tpr[fpr <= x + 1e-12].max()) for x in xs]
    return [(0.0, 0.0)] + [(float(x), yv) for x, yv in zip(xs, ys, strict=True)]  # from the origin


# -- one evaluation ----------------------------------------------------------------------------
def evaluate(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *,
             thresholds: Mapping[str, float] | None = None, target_sensitivities: Sequence[float] = (),
             subgroups: Mapping[str, Sequence[str]] | None = None, bootstrap: int = 2000,
             seed: int = 0, probabilities: bool = True) -> dict[str, Any]:
    """Every figure of one evaluation, unsuppressed (the clinic's view). ``subgroups`` maps a column name
    to one value per case."""
    y, s = _arrays(labels, scores)
    result = _block(y, s, thresholds or {}, target_sensitivities, bootstrap, seed, probabilities)
    result["roc"] = roc_points(y, s) if 0 < y.sum() < len(y) else []
    groups: dict[str, list[dict[str, Any]]] = {}
    for column, values in (subgroups or {}).items():
        vals = np.asarray([str(v) for v in values])
        if len(vals) != len(y):
            raise ValueError(f"subgroup column {column!r} has one value per case")
        rows = []
        for level in sorted(set(vals.tolist())):
            mask = vals == level
            block = _block(y[mask], s[mask], thresholds or {}, (), bootstrap, seed, probabilities)
            rows.append({"level": level, **block})
        groups[column] = rows
    result["subgroups"] = groups
    return result


def _block(y: np.ndarray, s: np.ndarray, thresholds: Mapping[str, float], targets: Sequence[float],
           bootstrap: int, seed: int, probabilities: bool) -> dict[str, Any]:
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    out: dict[str, Any] = {"n": int(len(y)), "positives": n_pos, "negatives": n_neg}
    if n_pos >= 2 and n_neg >= 2:
        out["auc"] = auc_delong(y, s)
        if bootstrap:
            b = auc_bootstrap(y, s, resamples=bootstrap, seed=seed)
            out["auc"]["bootstrap_low"], out["auc"]["bootstrap_high"] = b["low"], b["high"]
    else:
        out["auc"] = None
    points = [operating_point(y, s, t, name) for name, t in thresholds.items()]
    for target in targets:
        if n_pos:
            t = threshold_for_sensitivity(y, s, target)
            points.append(operating_point(y, s, t, f"sensitivity ≥ {target:g}"))
    out["operating_points"] = points
    if probabilities and len(y):
        out["calibration"] = calibration(y, s)
    return out


# -- suppression -------------------------------------------------------------------------------
def _small(count: int) -> bool:
    return count < MIN_CELL


def _suppress_block(block: dict[str, Any]) -> dict[str, Any]:
    """One block as it may leave the project: a count under MIN_CELL is never shown, nor any figure it
    could be worked back from."""
    out: dict[str, Any] = {"n": block["n"], "positives": block["positives"], "negatives": block["negatives"]}
    suppressed: list[str] = []
    for key in ("n", "positives", "negatives"):
        if _small(out[key]):
            out[key] = None
            suppressed.append(key)
    if _small(block["positives"]) or _small(block["negatives"]) or block.get("auc") is None:
        out["auc"] = None
        suppressed.append("auc")
    else:
        out["auc"] = block["auc"]
    points = []
    for p in block.get("operating_points", []):
        if any(_small(v) for v in p["counts"].values()):
            points.append({"name": p["name"], "threshold": p["threshold"], "suppressed": True})
        else:
            points.append({**p, "suppressed": False})
    out["operating_points"] = points
    if "calibration" in block:
        cal = block["calibration"]
        bins = merge_bins(cal["bins"])
        out["calibration"] = {"brier": cal["brier"] if not _small(block["n"]) else None,
                              "ece": cal["ece"] if not _small(block["n"]) else None,
                              "bins": bins, "bins_suppressed": 0 if bins else len(cal["bins"])}
    out["suppressed"] = suppressed
    return out


def _releasable(b: Mapping[str, Any]) -> bool:
    return not (_small(b["n"]) or _small(b["positives"]) or _small(b["n"] - b["positives"]))


def merge_bins(bins: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Reliability bins for release: neighbours merged (low to high) until each holds at least MIN_CELL
    positives and MIN_CELL negatives; a short remainder joins the last full bin. None: too few cases."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for b in bins:
        if cur is None:
            cur = {"low": b["low"], "high": b["high"], "n": 0, "positives": 0, "sum_predicted": 0.0}
        cur["high"] = b["high"]
        cur["n"] += b["n"]
        cur["positives"] += b["positives"]
        cur["sum_predicted"] += b["mean_predicted"] * b["n"]
        if _releasable(cur):
            out.append(cur)
            cur = None
    if cur is not None and out:
        last = out[-1]
        last["high"] = cur["high"]
        for k in ("n", "positives", "sum_predicted"):
            last[k] += cur[k]
    return [{"low": b["low"], "high": b["high"], "n": b["n"], "positives": b["positives"],
             "mean_predicted": b["sum_predicted"] / b["n"], "observed": b["positives"] / b["n"]} for b in out]


def suppress(result: Mapping[str, Any]) -> dict[str, Any]:
    """The aggregate report that may be released: small cells suppressed, and subgroup levels hidden
    when they are small or when hiding one alone would let it be worked out from the total and the
    others (the next smallest level is hidden with it: complementary suppression)."""
    out = _suppress_block(dict(result))
    out["roc"] = list(result.get("roc", [])) if out["auc"] is not None else []
    groups: dict[str, Any] = {}
    for column, rows in result.get("subgroups", {}).items():
        hidden = {r["level"] for r in rows if _small(r["positives"]) or _small(r["negatives"])}
        if len(hidden) == 1 and len(rows) > 1:
            rest = sorted((r for r in rows if r["level"] not in hidden), key=lambda r: r["n"])
            hidden.add(rest[0]["level"])
        shown = [{"level": r["level"], **_suppress_block(r)} for r in rows if r["level"] not in hidden]
        groups[column] = {"levels": shown, "hidden_levels": len(hidden)}
    out["subgroups"] = groups
    return out


# -- meta-analysis -----------------------------------------------------------------------------
def meta_analysis(aucs: Sequence[float], ses: Sequence[float], alpha: float = 0.05) -> dict[str, Any]:
    """DerSimonian–Laird random-effects pooling of AUCs from several clinics, on the logit scale (the
    delta method turns each SE into a logit SE), back-transformed: pooled AUC, its CI, tau², I²."""
    a = np.asarray(aucs, dtype=float)
    se = np.asarray(ses, dtype=float)
    if len(a) < 2 or len(a) != len(se):
        raise ValueError("a meta-analysis needs AUCs and standard errors from at least two clinics")
    a = np.clip(a, 1e-6, 1 - 1e-6)
    theta = np.log(a / (1 - a))
    var = (se / (a * (1 - a))) ** 2
    var = np.maximum(var, 1e-12)
    w = 1 / var
    fixed = float((w * theta).sum() / w.sum())
    q = float((w * (theta - fixed) ** 2).sum())
    df = len(a) - 1
    c = float(w.sum() - (w**2).sum() / w.sum())
    tau2 = max(0.0, (q - df) / c) if c > 0 else 0.0
    wr = 1 / (var + tau2)
    pooled = float((wr * theta).sum() / wr.sum())
    pooled_se = math.sqrt(1 / float(wr.sum()))
    z = float(stats.norm.ppf(1 - alpha / 2))

    def inv(t: float) -> float:
        return 1 / (1 + math.exp(-t))

    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    return {"auc": inv(pooled), "low": inv(pooled - z * pooled_se), "high": inv(pooled + z * pooled_se),
            "tau2": tau2, "i2": i2, "q": q, "studies": len(a), "logit": pooled, "logit_se": pooled_se}
