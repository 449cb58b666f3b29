"""One evaluation's analysed cases as its release checks read them (pure: numpy and the standard library).

A vendor controls the scores, so it can send the same cohort two models that differ in one image it
recognises (or the clinic can evaluate one model on two dataset versions that differ in a few patients):
the difference of the two reports then tells those cases' labels, as the difference of two cuts of one
report would. So every release is compared with the reports released before on the same cases:

- ``differing``: by how many cases two evaluations' blocks (the whole cohort, a subgroup level) differ, by
  the cases' order (what the AUC and every cut depend on) and by their scores (what the Brier score depends
  on); a release that differs from an earlier one by 1 to ``MIN_CELL`` − 1 cases is refused;
- ``CutHistory``: the cuts (the positives and negatives at or above a threshold) earlier reports released,
  as sets of cases; a cut of a new report is released only if it differs from each of them by no case or
  by at least ``MIN_CELL`` cases of each class;
- ``Cases.fingerprint``: what the release noise of a figure is keyed by (the cohort and its labels, and the
  ranking or the scores the figure depends on), so the same model on the same cases draws the same noise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .metrics import MIN_CELL, OVERALL, Cut, block_name

CaseSets = tuple[frozenset[str], frozenset[str]]  # the positives' and the negatives' ids of a cut


@dataclass(frozen=True, eq=False)
class Cases:
    """One block's analysed cases: ids (unique), labels (0/1) and scores, and each subgroup column's level
    per case (the whole cohort's; a level's block has none)."""

    ids: tuple[str, ...]
    labels: np.ndarray
    scores: np.ndarray
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, ids: Sequence[str], labels: Sequence[int], scores: Sequence[float],
           groups: Mapping[str, Sequence[str]] | None = None) -> Cases:
        return cls(tuple(ids), np.asarray(labels, dtype=int), np.asarray(scores, dtype=float), dict(groups or {}))

    @cached_property
    def blocks(self) -> dict[str, Cases]:
        """The whole cohort (``metrics.OVERALL``) and each subgroup level, by the names the release uses."""
        out = {OVERALL: Cases(self.ids, self.labels, self.scores)}
        for column, values in self.groups.items():
            levels = np.asarray([str(v) for v in values])
            for level in sorted(set(levels.tolist())):
                mask = levels == level
                out[block_name(column, level)] = Cases(tuple(np.asarray(self.ids)[mask].tolist()),
                                                       self.labels[mask], self.scores[mask])
        return out

    @cached_property
    def _by_score(self) -> np.ndarray:
        return np.sort(self.scores)[::-1]

    def top(self, count: int) -> CaseSets:
        """The cases scoring at or above the ``count``-th highest score (a threshold takes ties whole)."""
        if count <= 0:
            return frozenset(), frozenset()
        above = self.scores >= self._by_score[min(count, len(self.ids)) - 1]
        ids = np.asarray(self.ids)
        return (frozenset(ids[above & (self.labels == 1)].tolist()),
                frozenset(ids[above & (self.labels == 0)].tolist()))

    def fingerprint(self, figure: str) -> str:
        """The cohort with its labels, and what ``figure`` depends on: the ranking for the AUC, the scores
        otherwise."""
        from scipy.stats import rankdata  # imported here, not when the hub starts (vai.metrics says why)

        order = sorted(range(len(self.ids)), key=self.ids.__getitem__)
        values = rankdata(self.scores, method="dense") if figure == "auc" else self.scores
        text = "\n".join(f"{self.ids[i]}\t{int(self.labels[i])}\t{float(values[i]).hex()}" for i in order)
        return hashlib.sha256(f"{figure}\n{text}".encode()).hexdigest()


def _consistent(x: np.ndarray, y: np.ndarray) -> int:
    """The most cases that ``x`` and ``y`` put in the same order (every pair ordered alike, ties alike): the
    heaviest chain of distinct (x, y) pairs increasing strictly in both, by a Fenwick tree of prefix maxima."""
    if not len(x):
        return 0
    from scipy.stats import rankdata

    pairs, weights = np.unique(np.column_stack([x, y]), axis=0, return_counts=True)
    order = np.lexsort((-pairs[:, 1], pairs[:, 0]))  # x up; y down within one x, so one x gives one link
    ranks = rankdata(pairs[order, 1], method="dense").astype(int)
    tree = [0] * (int(ranks.max()) + 1)
    best = 0
    for rank, weight in zip(ranks.tolist(), weights[order].tolist(), strict=True):
        i, below = rank - 1, 0
        while i > 0:
            below, i = max(below, tree[i]), i - (i & -i)
        chain = below + weight
        best = max(best, chain)
        i = rank
        while i < len(tree):
            tree[i], i = max(tree[i], chain), i + (i & -i)
    return best


def differing(a: Cases, b: Cases) -> tuple[int, int]:
    """By how many cases two blocks differ: (by order, by score). Both count the cases only one of them has
    and those labelled otherwise; then by order, the fewest cases whose removal leaves the rest in the same
    order (tied alike) in both, and by score, the cases whose score changed at all. The first bounds what
    the AUC and the cuts of the two reports can tell apart, the second what the Brier scores can."""
    where_b = {case: i for i, case in enumerate(b.ids)}
    where_a = {case: i for i, case in enumerate(a.ids)}
    common = [(where_a[case], where_b[case]) for case in a.ids if case in where_b]
    apart = len(a.ids) + len(b.ids) - 2 * len(common)
    same = [(i, j) for i, j in common if a.labels[i] == b.labels[j]]
    apart += len(common) - len(same)
    x = np.asarray([a.scores[i] for i, _ in same], dtype=float)
    y = np.asarray([b.scores[j] for _, j in same], dtype=float)
    return apart + len(same) - _consistent(x, y), apart + int((x != y).sum())


def a_few(count: int) -> bool:
    """Two releases differing by this many cases would tell those cases' labels."""
    return 0 < count < MIN_CELL


class CutHistory:
    """The cuts earlier reports released, per block, as the sets of cases they count."""

    def __init__(self) -> None:
        self._sets: dict[str, list[CaseSets]] = {}

    def add(self, block: str, cases: Cases, cuts: Iterable[Cut]) -> None:
        self._sets.setdefault(block, []).extend(cases.top(tp + fp) for tp, fp in cuts)

    def allows(self, block: str, cases: Cases, cut: Cut) -> bool:
        """A cut of ``cases`` may be released: against every earlier cut of the block, its positives differ by
        no case or at least MIN_CELL, and so do its negatives."""
        earlier = self._sets.get(block)
        if not earlier:
            return True
        positives, negatives = cases.top(cut[0] + cut[1])
        return not any(a_few(len(positives ^ p)) or a_few(len(negatives ^ n)) for p, n in earlier)
