"""The VAI metrics engine: pure numbers in, plain dicts out (no web, no database).

- AUC (scikit-learn) with DeLong's 95 % CI, computed with the fast algorithm of Sun & Xu (2014,
  IEEE Signal Processing Letters 21(11)) from mid-ranks, and a stratified percentile bootstrap CI;
- sensitivity, specificity, PPV, NPV at operating points with Wilson CIs (``scipy.stats.binomtest``);
- calibration: reliability curve (``sklearn.calibration.calibration_curve``), Brier score
  (``sklearn.metrics.brier_score_loss``) and the expected calibration error;
- per-subgroup results, small-cell suppression for anything released, calibrated noise on the figures
  one case's label moves (the AUC, the Brier score), and a DerSimonian–Laird random-effects meta-analysis of
  AUCs across clinics (on the logit scale).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# scipy and scikit-learn are imported by the functions that compute a figure, not when the hub starts: they were
# over a second of every `strongroom serve` start (and, through a retention import, of every command)

MIN_CELL = 11  # every count under this is suppressed in a released report
THRESHOLD_DECIMALS = 2  # a data-derived threshold of probabilities: a multiple of 0.01 …
THRESHOLD_FIGURES = 2  # … of other scores: two significant figures
BIN_MEAN_DECIMALS = 2  # a reliability bin's mean predicted probability as released
PROTOCOL, TARGET = "protocol", "target-sensitivity"  # where an operating point's threshold comes from
NOISE_EPSILON = 1.0  # each noised figure is ε-differentially private for any one case's label
NOISE_GRIDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)  # a noised figure: on the coarsest not above its noise
OVERALL = "overall"  # the name of the whole cohort's block (a subgroup level's: ``block_name(column, level)``)


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
    from scipy.stats import rankdata

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
    from scipy import stats
    from sklearn.metrics import roc_auc_score

    y, s = _arrays(labels, scores)
    auc = float(roc_auc_score(y, s))
    _, cov = delong_fast(s[y == 1][None, :], s[y == 0][None, :])
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    z = float(stats.norm.ppf(1 - alpha / 2))
    return {"auc": auc, "se": se, "low": max(0.0, auc - z * se), "high": min(1.0, auc + z * se)}


def _auc_by_rank(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUCs of many resamples at once (rows): the Mann–Whitney statistic from mid-ranks."""
    from scipy.stats import rankdata

    m, n = pos.shape[1], neg.shape[1]
    tz = np.asarray(rankdata(np.hstack([pos, neg]), axis=1), dtype=float)
    return np.asarray((tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n, dtype=float)


def auc_bootstrap(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *,
                  resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Stratified percentile bootstrap CI of the AUC (positives and negatives resampled apart, so every
    resample has both classes). Seeded: the same inputs give the same interval."""
    from sklearn.metrics import roc_auc_score

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
    from scipy import stats

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


def coarse_threshold(value: float, unit_interval: bool = True) -> float:
    """``value`` rounded down to the release grid: a multiple of 0.01 for scores in [0, 1] (probabilities),
    two significant figures for other scores. A threshold derived from the data (the score of the case that
    reaches a target sensitivity) is only ever used and released on this grid, so its low-order digits,
    which an adversarial model could fill with bits of one image, never leave the project."""
    if not math.isfinite(value):
        raise ValueError("a threshold is a finite number")
    if value == 0:
        return 0.0
    digits = THRESHOLD_DECIMALS if unit_interval else THRESHOLD_FIGURES - 1 - math.floor(math.log10(abs(value)))
    scale = 10.0 ** digits
    out = round(math.floor(value * scale + 1e-9) / scale, digits)
    while out > value:  # the float nudge above may have rounded up past ``value``: one grid step down
        out = round(out - 1 / scale, digits)
    return float(out)


def threshold_for_sensitivity(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                              target: float) -> float:
    """The highest threshold on the release grid (:func:`coarse_threshold`) whose sensitivity reaches
    ``target``: the score of the positive that reaches it, rounded down to the grid (an operating point
    chosen by the clinic)."""
    y, s = _arrays(labels, scores)
    pos = np.sort(s[y == 1])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive cases")
    k = max(1, math.ceil(target * len(pos)))
    return coarse_threshold(float(pos[min(k, len(pos)) - 1]), bool(((s >= 0) & (s <= 1)).all()))


# -- calibration -------------------------------------------------------------------------------
def calibration(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *,
                bins: int = 10) -> dict[str, Any]:
    """Reliability curve over ``bins`` equal-width bins, Brier score and expected calibration error.
    Scores must be probabilities in [0, 1]."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

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
    from sklearn.metrics import roc_curve

    y, s = _arrays(labels, scores)
    fpr, tpr, _ = roc_curve(y, s)
    xs = np.linspace(0.0, 1.0, grid + 1)
    # the step function's upper envelope at each grid FPR
    ys = [float(tpr[fpr <= x + 1e-12].max()) for x in xs]
    return [(0.0, 0.0)] + [(float(x), yv) for x, yv in zip(xs, ys, strict=True)]  # from the origin


# -- one case's influence ----------------------------------------------------------------------
def ties(scores: Sequence[float] | np.ndarray) -> dict[str, int]:
    """The largest group of cases sharing one score, and how many cases score otherwise."""
    _, counts = np.unique(np.asarray(scores, dtype=float), return_counts=True)
    largest = int(counts.max()) if len(counts) else 0
    return {"largest": largest, "outside": int(len(np.asarray(scores)) - largest)}


def degenerate(block: Mapping[str, Any]) -> str | None:
    """Why a block's scores cannot carry an AUC or a Brier score, or None. When all cases but a few share one
    score, both are functions of those few cases' labels (with the counts, which are released): a model that
    scores every image alike but one it recognises would make them tell that image's label."""
    profile = block.get("ties")
    if profile is None or not 0 < profile["outside"] < MIN_CELL:
        return None
    return (f"degenerate scores: all cases but fewer than {MIN_CELL} share one score, so the AUC and the Brier "
            "score would depend on the labels of those few cases alone")


def block_name(column: str, level: str) -> str:
    """The name a subgroup level's block goes by in a release's noise and cut checks."""
    return f"{column}={level}"


def laplace(key: bytes, label: str, scale: float) -> float:
    """A Laplace(0, ``scale``) draw fixed by ``key`` and ``label`` (HMAC-SHA256 as the uniform source): the same
    figure of the same cohort and scores always draws the same noise, so asking again averages nothing away."""
    digest = hmac.new(key, label.encode(), hashlib.sha256).digest()
    u = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64 - 0.5  # uniform in (-1/2, 1/2)
    return -scale * math.copysign(1.0, u) * math.log(1 - 2 * abs(u))


def hanley_mcneil_se(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUC from its value and the two class sizes alone."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) \
        / (positives * negatives)
    return math.sqrt(max(var, 0.0))


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
    out: dict[str, Any] = {"n": int(len(y)), "positives": n_pos, "negatives": n_neg, "ties": ties(s)}
    if n_pos >= 2 and n_neg >= 2:
        out["auc"] = auc_delong(y, s)
        if bootstrap:
            b = auc_bootstrap(y, s, resamples=bootstrap, seed=seed)
            out["auc"]["bootstrap_low"], out["auc"]["bootstrap_high"] = b["low"], b["high"]
    else:
        out["auc"] = None
    points = [{**operating_point(y, s, t, name), "source": PROTOCOL} for name, t in thresholds.items()]
    for target in targets:
        if n_pos:
            t = threshold_for_sensitivity(y, s, target)
            points.append({**operating_point(y, s, t, f"sensitivity ≥ {target:g}"), "source": TARGET})
    out["operating_points"] = points
    if probabilities and len(y):
        out["calibration"] = calibration(y, s)
    return out


# -- suppression -------------------------------------------------------------------------------
# What may leave the project is decided here, from the clinic's full result alone. A count is "small"
# under MIN_CELL; a *cut* is what a released figure says about one threshold of one block: the positives
# (tp) and negatives (fp) scoring at or above it. Operating points, the reliability bins' edges (the cases
# above an edge are the sum of the bins above it) and the ROC curve's points are all cuts, and two cuts of a
# block give by subtraction the cases between their thresholds. So a cut is released only when its four
# confusion cells are ≥ MIN_CELL and it differs from every cut already released in the block by nothing or
# by ≥ MIN_CELL cases of each class; across a subgroup column, the levels' points are checked together
# (``_Column``), since the overall minus the released levels gives the rest.

Cut = tuple[int, int]  # (tp, fp): the positives and the negatives scoring at or above a threshold
Noise = Callable[[str, str, float], float]  # (block, figure, scale) → a Laplace draw of that scale
CutCheck = Callable[[str, Cut], bool]  # (block, cut) → may it be released beside earlier reports' cuts?


def _no_earlier_reports(block: str, cut: Cut) -> bool:
    return True


@dataclass(frozen=True)
class ReleaseContext:
    """What a release knows beyond the clinic's result: ``noise``, the source of each noised figure's draw (the
    hub keys it and fixes it per cohort and scores), and ``cut_allowed``, which checks a cut against the cuts
    of the reports released before on the same cases (two cuts of two reports differing by a few cases tell
    those cases' labels just as two cuts of one report do)."""

    noise: Noise
    cut_allowed: CutCheck = field(default=_no_earlier_reports)


def result_noise(result: Mapping[str, Any]) -> Noise:
    """Noise keyed by the result itself, for releases made without the hub (the engine alone)."""
    key = hashlib.sha256(json.dumps(result, sort_keys=True, default=str).encode()).digest()
    return lambda block, figure, scale: laplace(key, f"{block}|{figure}", scale)


def _step(scale: float) -> float:
    """The grid a noised figure is released on: the coarsest step not above its noise's scale."""
    return max([g for g in NOISE_GRIDS if g <= scale], default=NOISE_GRIDS[0])


def _on_grid(value: float, step: float, direction: int = 0) -> float:
    """``value`` on the grid of ``step``: the nearest point, or the next one down (-1) or up (+1)."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    steps = value / step
    # 0.85 / 0.01 is 84.999…: the nudge keeps a value on the grid where it is
    count = round(steps) if direction == 0 else math.floor(steps + 1e-9) if direction < 0 else math.ceil(steps - 1e-9)
    return round(count * step, decimals)


def _noised(value: float, scale: float, block: str, figure: str, noise: Noise) -> float:
    """``value`` (in [0, 1]) plus its Laplace draw, clipped and put on the grid of its noise."""
    return _on_grid(min(1.0, max(0.0, value + noise(block, figure, scale))), _step(scale))


def _released_auc(auc: Mapping[str, Any], total: Cut, block: str, noise: Noise) -> dict[str, Any]:
    """The AUC as released: plus Laplace noise of scale (1/positives + 1/negatives) / ε, the most one case's
    label can move it (flipping a label moves the AUC by at most 1/positives + 1/negatives, whatever the
    scores), on that noise's grid; the CI from Hanley & McNeil's SE at the released value (the counts are
    released) and the noise's variance. Every number here is the noised AUC and the counts worked further,
    so nothing else of the data goes out (DeLong's and the bootstrap CIs stay with the clinic)."""
    from scipy import stats

    positives, negatives = total
    scale = (1 / positives + 1 / negatives) / NOISE_EPSILON
    step = _step(scale)
    value = _noised(float(auc["auc"]), scale, block, "auc", noise)
    se = math.sqrt(hanley_mcneil_se(value, positives, negatives) ** 2 + 2 * scale**2)  # Laplace: variance 2b²
    z = float(stats.norm.ppf(0.975))
    return {"auc": value, "low": max(0.0, _on_grid(value - z * se, step, -1)),
            "high": min(1.0, _on_grid(value + z * se, step, +1)), "se": round(se, 4),
            "grid": step, "noise_scale": round(scale, 4)}


def _released_brier(brier: float, n: int, block: str, noise: Noise) -> float:
    """The Brier score plus Laplace noise of scale 1/(n ε): one label moves it by at most 1/n."""
    return _noised(brier, 1 / (n * NOISE_EPSILON), block, "brier", noise)


def _ece(bins: Sequence[Mapping[str, Any]]) -> float | None:
    """The expected calibration error over the released bins (worked from them alone: it adds nothing)."""
    n = sum(b["n"] for b in bins)
    if not n:
        return None
    return round(float(sum(b["n"] / n * abs(b["mean_predicted"] - b["observed"]) for b in bins)), 3)


def _small(count: int) -> bool:
    return count < MIN_CELL


def _band_ok(delta: int) -> bool:
    """Two released cuts differ by no case, or by at least MIN_CELL, of a class."""
    return delta == 0 or delta >= MIN_CELL


def _cells_ok(cut: Cut, total: Cut) -> bool:
    (tp, fp), (p, n) = cut, total
    return min(tp, fp, p - tp, n - fp) >= MIN_CELL


def _fits(cut: Cut, total: Cut, accepted: Sequence[Cut]) -> bool:
    """``cut`` of a block with ``total`` (positives, negatives) may be released beside the ``accepted`` ones."""
    return _cells_ok(cut, total) and all(_band_ok(abs(cut[0] - a)) and _band_ok(abs(cut[1] - b))
                                         for a, b in accepted)


def _cut(point: Mapping[str, Any]) -> Cut:
    return int(point["counts"]["tp"]), int(point["counts"]["fp"])


def _data_derived(point: Mapping[str, Any]) -> bool:
    """A threshold found from the data (a target sensitivity's), not set by the clinic. Results computed
    before points carried their ``source`` are recognised by the name the engine gives them."""
    source = point.get("source")
    return source == TARGET or (source is None and str(point.get("name", "")).startswith("sensitivity ≥ "))


def _released_point(point: Mapping[str, Any], shown: bool, unit_interval: bool) -> dict[str, Any]:
    """An operating point as released. A threshold the clinic set is always shown; one found from the data
    only with the point's figures and only on the release grid (one computed before the grid: never);
    a suppressed point found from the data is its name alone."""
    threshold: float | None = float(point["threshold"])
    if point.get("source") == TARGET:
        threshold = coarse_threshold(float(point["threshold"]), unit_interval)  # a no-op: computed on the grid
    elif _data_derived(point):
        threshold = None
    head: dict[str, Any] = {"name": point["name"]}
    if threshold is not None and (shown or not _data_derived(point)):
        head["threshold"] = threshold
    if not shown:
        return {**head, "suppressed": True}
    return {**head, **{k: point[k] for k in ("counts", "sensitivity", "specificity", "ppv", "npv")},
            "suppressed": False}


def _released_counts(block: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """n, positives and negatives: a class under MIN_CELL withholds both classes (n minus the other would
    give it), and n under MIN_CELL is withheld."""
    out: dict[str, Any] = {"n": block["n"], "positives": block["positives"], "negatives": block["negatives"]}
    suppressed: list[str] = []
    if _small(block["n"]):
        out["n"] = None
        suppressed.append("n")
    if _small(block["positives"]) or _small(block["negatives"]):
        out["positives"] = out["negatives"] = None
        suppressed += ["positives", "negatives"]
    return out, suppressed


def _merged(bins: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Reliability bins merged (low to high) until each holds at least MIN_CELL positives and MIN_CELL
    negatives; a short remainder joins the last full bin. Empty: too few cases."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for b in bins:
        if cur is None:
            cur = {"low": b["low"], "high": b["high"], "n": 0, "positives": 0, "sum_predicted": 0.0}
        cur["high"] = b["high"]
        cur["n"] += b["n"]
        cur["positives"] += b["positives"]
        cur["sum_predicted"] += b.get("sum_predicted", b["mean_predicted"] * b["n"])
        if not (_small(cur["n"]) or _small(cur["positives"]) or _small(cur["n"] - cur["positives"])):
            out.append(cur)
            cur = None
    if cur is not None and out:
        last = out[-1]
        last["high"] = cur["high"]
        for k in ("n", "positives", "sum_predicted"):
            last[k] += cur[k]
    return out


def _bin_out(b: Mapping[str, Any]) -> dict[str, Any]:
    return {"low": b["low"], "high": b["high"], "n": b["n"], "positives": b["positives"],
            "mean_predicted": round(b["sum_predicted"] / b["n"], BIN_MEAN_DECIMALS),
            "observed": b["positives"] / b["n"]}


def _released_calibration(cal: Mapping[str, Any], n: int, total: Cut, accepted: list[Cut], context: ReleaseContext,
                          *, degenerate_scores: bool) -> dict[str, Any]:
    """The merged bins, whose edges are cuts: an edge that would pin fewer than MIN_CELL cases against another
    released cut (of this report, or of one released before on the same cases) is dropped (its two bins
    merged); the Brier score with its noise (withheld for degenerate scores) and the ECE over the released
    bins. Bins' mean predicted probabilities are rounded: with n, their full precision would give a sum of
    scores whose low-order digits one case's score could fill."""
    kept: list[dict[str, Any]] = []
    merged = _merged(cal["bins"])
    for i, b in enumerate(merged):
        edge = (sum(x["positives"] for x in merged[i:]), sum(x["n"] - x["positives"] for x in merged[i:]))
        if i == 0 or (_fits(edge, total, accepted) and context.cut_allowed(OVERALL, edge)):
            if i:
                accepted.append(edge)
            kept.append(dict(b))
            continue
        last = kept[-1]
        last["high"] = b["high"]
        for k in ("n", "positives", "sum_predicted"):
            last[k] += b[k]
    bins = [_bin_out(b) for b in kept]
    released = not _small(n) and not degenerate_scores
    return {"brier": _released_brier(float(cal["brier"]), n, OVERALL, context.noise) if released else None,
            "ece": _ece(bins), "bins": bins}


def _released_roc(points: Sequence[Sequence[float]], total: Cut, accepted: list[Cut],
                  allowed: CutCheck) -> list[list[float]]:
    """The ROC curve through the cuts released already (operating points, reliability bins' edges: no more
    is told by drawing them) and the fixed-FPR grid points that are cuts fitting beside them: TPR ×
    positives is the positives above the threshold that lets FPR × negatives negatives through. The ends
    (0, 0) and (1, 1) are no data."""
    p, n = total
    out = {(fp / n, tp / p) for tp, fp in accepted}
    for x, tpr in points:
        cut = (round(float(tpr) * p), math.floor(float(x) * n + 1e-9))
        if _fits(cut, total, accepted) and allowed(OVERALL, cut):
            accepted.append(cut)
            out.add((float(x), float(tpr)))
    return [[0.0, 0.0], *([x, y] for x, y in sorted(out)), [1.0, 1.0]]


def _hidden_levels(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """The levels of a subgroup column not shown: those with fewer than MIN_CELL positives or negatives,
    and then the smallest others until the hidden ones together are at least two levels with MIN_CELL
    positives and negatives (the total minus the shown levels gives exactly their union)."""
    hidden = {r["level"] for r in rows if _small(r["positives"]) or _small(r["negatives"])}
    by_size = sorted(rows, key=lambda r: (r["n"], r["level"]))
    while hidden and len(hidden) < len(rows):
        union = [r for r in rows if r["level"] in hidden]
        if len(union) >= 2 and not _small(sum(r["positives"] for r in union)) \
                and not _small(sum(r["negatives"] for r in union)):
            break
        hidden.add(next(r["level"] for r in by_size if r["level"] not in hidden))
    return hidden


class _Column:
    """The operating points of one subgroup column's levels, checked together: at each threshold whose
    overall point is released, the levels not released together (the overall minus the released ones gives
    their sum) are two levels at least with every cell ≥ MIN_CELL; and between two thresholds, every set of
    levels whose counts are known at both differs by nothing or by ≥ MIN_CELL cases of each class. A level's
    point that ``allowed`` refuses (it differs by a few cases from a point of a report released before) is
    withheld from the start, and the rest follows from that."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], hidden: set[str], open_points: Sequence[int],
                 allowed: Callable[[str, Cut], bool]) -> None:
        self.levels = [str(r["level"]) for r in rows]
        self.size = {str(r["level"]): (int(r["n"]), str(r["level"])) for r in rows}
        self.total = {str(r["level"]): (int(r["positives"]), int(r["negatives"])) for r in rows}
        self.cut = {(str(r["level"]), i): _cut(p) for r in rows for i, p in enumerate(r["operating_points"])}
        self.open = list(open_points)
        self.shown: dict[tuple[str, int], bool] = {
            (lv, i): lv not in hidden and _cells_ok(self.cut[(lv, i)], self.total[lv])
            and allowed(lv, self.cut[(lv, i)]) for lv in self.levels for i in self.open}
        while (fix := self._violation()) is not None:
            self.shown[fix] = False

    def _withheld(self, i: int) -> list[str]:
        return [lv for lv in self.levels if not self.shown[(lv, i)]]

    def _sum(self, levels: Sequence[str], i: int | None) -> Cut:
        if i is None:
            return sum(self.total[lv][0] for lv in levels), sum(self.total[lv][1] for lv in levels)
        return sum(self.cut[(lv, i)][0] for lv in levels), sum(self.cut[(lv, i)][1] for lv in levels)

    def _smallest(self, i: int, among: Sequence[str] | None = None) -> tuple[str, int] | None:
        pool = [lv for lv in (self.levels if among is None else among) if self.shown[(lv, i)]]
        return (min(pool, key=self.size.__getitem__), i) if pool else None

    def _violation(self) -> tuple[str, int] | None:
        for i in self.open:
            withheld = self._withheld(i)
            if withheld and len(withheld) < len(self.levels) and (
                    len(withheld) == 1 or not _cells_ok(self._sum(withheld, i), self._sum(withheld, None))):
                return self._smallest(i)
        for k, a in enumerate(self.open):
            for b in self.open[k + 1:]:
                for component in self._components(a, b):
                    ta, tb = self._sum(component, a), self._sum(component, b)
                    if _band_ok(abs(ta[0] - tb[0])) and _band_ok(abs(ta[1] - tb[1])):
                        continue
                    for fix in (self._smallest(b, component), self._smallest(a, component),
                                self._smallest(b), self._smallest(a)):
                        if fix is not None:
                            return fix
        return None

    def _components(self, a: int, b: int) -> list[list[str]]:
        """The smallest sets of levels whose counts are known at both thresholds: a released level alone,
        the withheld ones of a threshold together (joined across the two thresholds)."""
        parent = {lv: lv for lv in self.levels}

        def root(lv: str) -> str:
            while parent[lv] != lv:
                lv = parent[lv]
            return lv

        for i in (a, b):
            withheld = self._withheld(i)
            for lv in withheld[1:]:
                parent[root(lv)] = root(withheld[0])
        groups: dict[str, list[str]] = {}
        for lv in self.levels:
            groups.setdefault(root(lv), []).append(lv)
        return list(groups.values())


def suppress(result: Mapping[str, Any], context: ReleaseContext | None = None) -> dict[str, Any]:
    """The aggregate report that may be released (see the rules above and docs/vai.md). ``context`` brings
    the hub's noise and the cuts of earlier reports on the same cases; without it the noise is keyed by the
    result alone and no earlier report is known."""
    context = context or ReleaseContext(noise=result_noise(result))
    total = (int(result["positives"]), int(result["negatives"]))
    unit_interval = "calibration" in result
    out, suppressed = _released_counts(result)
    why = degenerate(result)
    if _small(total[0]) or _small(total[1]) or result.get("auc") is None or why:
        out["auc"] = None
        suppressed.append("auc")
    else:
        out["auc"] = _released_auc(result["auc"], total, OVERALL, context.noise)
    points = list(result.get("operating_points", []))
    order = [i for i, p in enumerate(points) if not _data_derived(p)] + \
        [i for i, p in enumerate(points) if _data_derived(p)]
    accepted: list[Cut] = []
    shown: dict[int, bool] = {}
    for i in order:
        shown[i] = _fits(_cut(points[i]), total, accepted) and context.cut_allowed(OVERALL, _cut(points[i]))
        if shown[i]:
            accepted.append(_cut(points[i]))
    out["operating_points"] = [_released_point(p, shown[i], unit_interval) for i, p in enumerate(points)]
    if "calibration" in result:
        out["calibration"] = _released_calibration(result["calibration"], int(result["n"]), total, accepted,
                                                   context, degenerate_scores=why is not None)
        if out["calibration"]["brier"] is None:
            suppressed.append("brier")
    if why:
        out["degenerate"] = why
    out["suppressed"] = suppressed
    out["roc"] = _released_roc(list(result.get("roc", []))[1:], total, accepted, context.cut_allowed) \
        if out["auc"] is not None else []
    # subgroups: the levels' points are the protocol's, in order (the overall's first ones)
    open_points = [i for i in range(len(points)) if not _data_derived(points[i]) and shown[i]]
    groups: dict[str, Any] = {}
    for column, rows in result.get("subgroups", {}).items():
        hidden = _hidden_levels(rows)

        def allowed(level: str, cut: Cut, column: str = column) -> bool:
            return context.cut_allowed(block_name(column, level), cut)

        checked = _Column(rows, hidden, [i for i in open_points if all(i < len(r["operating_points"]) for r in rows)],
                          allowed)
        groups[column] = {"levels": [_released_level(column, r, checked, unit_interval, context.noise)
                                     for r in rows if r["level"] not in hidden],
                          "hidden_levels": len(hidden)}
    out["subgroups"] = groups
    return out


def _released_level(column: str, r: Mapping[str, Any], checked: _Column, unit_interval: bool,
                    noise: Noise) -> dict[str, Any]:
    """A shown subgroup level: its counts, its AUC and Brier score with their noise (none for degenerate
    scores), its operating points as the column's check left them. No reliability bins (their edges would
    be more cuts to check across the levels), so no ECE either."""
    name = block_name(column, str(r["level"]))
    counts, suppressed = _released_counts(r)
    why = degenerate(r)
    level: dict[str, Any] = {"level": r["level"], **counts}
    level["auc"] = _released_auc(r["auc"], (int(r["positives"]), int(r["negatives"])), name, noise) \
        if r.get("auc") is not None and not why else None
    level["operating_points"] = [_released_point(p, checked.shown.get((str(r["level"]), i), False), unit_interval)
                                 for i, p in enumerate(r["operating_points"])]
    if "calibration" in r:
        brier = None if why else _released_brier(float(r["calibration"]["brier"]), int(r["n"]), name, noise)
        level["calibration"] = {"brier": brier, "ece": None, "bins": []}
        suppressed += ["ece"] + (["brier"] if brier is None else [])
    if why:
        level["degenerate"] = why
    level["suppressed"] = suppressed + ([] if level["auc"] is not None else ["auc"])
    return level


def released_cuts(block: Mapping[str, Any]) -> list[Cut]:
    """The cuts a released block tells, read back from it: its operating points' counts, its reliability
    bins' edges (the cases above an edge are the bins above it) and its ROC curve's inner points."""
    cuts = [_cut(p) for p in block.get("operating_points", []) if not p.get("suppressed", True) and "counts" in p]
    bins = (block.get("calibration") or {}).get("bins") or []
    cuts += [(sum(b["positives"] for b in bins[i:]), sum(b["n"] - b["positives"] for b in bins[i:]))
             for i in range(1, len(bins))]
    positives, negatives = block.get("positives"), block.get("negatives")
    if positives and negatives:
        cuts += [(round(tpr * positives), math.floor(fpr * negatives + 1e-9))
                 for fpr, tpr in block.get("roc", [])[1:-1]]
    return sorted(set(cuts))


# -- meta-analysis -----------------------------------------------------------------------------
def meta_analysis(aucs: Sequence[float], ses: Sequence[float], alpha: float = 0.05) -> dict[str, Any]:
    """DerSimonian–Laird random-effects pooling of AUCs from several clinics, on the logit scale (the
    delta method turns each SE into a logit SE), back-transformed: pooled AUC, its CI, tau², I²."""
    from scipy import stats

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
