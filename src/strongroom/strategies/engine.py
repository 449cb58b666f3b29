"""Apply a strategy to a table, then verify the result from scratch.

`apply` transforms every column as its rule says, then enforces the group rules, k-anonymity and
l-diversity (suppressing the rows of violating groups, or failing, as each rule chooses). `verify`
knows nothing of how the output was made: it re-checks every rule, k, l, every group rule and scans
every text cell for identifiers. A strategy run passes only when `verify` passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from . import spec, transforms
from .scan import NameMatcher, scan_identifiers
from .transforms import StrategyError

MAX_GROUPS_NAMED = 50
MAX_SUPPRESSION_PASSES = 10  # suppressing for one rule can shrink another rule's groups
ROW = "__strongroom_row"
CELLS = "__cells"


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    groups: list[dict[str, Any]] = field(default_factory=list)  # the offending groups, when there are any


@dataclass
class Suppression:
    reason: str
    rows: int


@dataclass
class Verification:
    passed: bool
    rows: int
    checks: list[Check]
    identifiers: list[dict[str, Any]]  # {column, kind, cells}: never the values themselves
    risk: dict[str, Any]
    class_sizes: dict[str, int]  # histogram of equivalence-class sizes
    smallest_classes: list[dict[str, Any]]


@dataclass
class Run:
    output: pl.DataFrame
    rows_in: int
    suppressed: list[Suppression]
    verification: Verification
    limit: Check  # the suppression limit: a release that lost most of its rows is no release

    @property
    def passed(self) -> bool:
        return self.verification.passed and self.limit.passed

    def report(self, strategy: spec.Strategy) -> dict[str, Any]:
        v = self.verification
        return {
            "strategy": {"name": strategy.name, "version": strategy.version},
            "passed": self.passed, "rows_in": self.rows_in, "rows_out": v.rows,
            "columns_out": self.output.columns,
            "suppressed": [s.__dict__ for s in self.suppressed],
            "checks": [c.__dict__ for c in [*v.checks, self.limit]], "identifiers": v.identifiers, "risk": v.risk,
            "class_sizes": v.class_sizes, "smallest_classes": v.smallest_classes,
        }


def names_to_find(frame: pl.LazyFrame, scan: spec.IdentifierScan) -> NameMatcher:
    """The steward's list plus every distinct value of the `names_from` columns of the input."""
    names = list(scan.names)
    for column in scan.names_from:
        names += frame.select(pl.col(column).cast(pl.String)).unique().drop_nulls().collect().to_series().to_list()
    return NameMatcher(names)


def _transform(frame: pl.LazyFrame, strategy: spec.Strategy, secret: bytes, names: NameMatcher,
               rows: int) -> pl.LazyFrame:
    schema = frame.collect_schema()
    missing = [c for c in strategy.columns if c not in schema]
    if missing:
        raise StrategyError(f"column {missing[0]!r} of the strategy is not in the table "
                            f"(its columns: {', '.join(schema.names()[:30])})")
    unlisted = [c for c in schema.names() if c not in strategy.columns]
    if unlisted and strategy.unlisted == "fail":
        raise StrategyError(f"column {unlisted[0]!r} has no rule in the strategy; add one (delete or keep) "
                            "or set unlisted = \"delete\"")
    exprs: list[pl.Expr] = []
    for column, rule in strategy.columns.items():
        dtype = schema[column]
        match rule:
            case spec.Delete():
                continue
            case spec.Keep():
                expr = pl.col(column)
            case spec.Pseudonymize():
                expr = transforms.pseudonym(frame, column, rule, secret)
            case spec.Stratify():
                expr = transforms.per_distinct(frame, column, transforms.stratify(rule, column, dtype), rows)
            case spec.Generalize():
                expr = transforms.per_distinct(frame, column, transforms.generalize(rule, column, dtype),
                                                rows)
            case spec.ShiftDate():
                assert strategy.person is not None
                expr = transforms.shifted_date(frame, schema, column, rule, strategy.person, secret)
            case spec.Suppress():
                expr = transforms.suppress(rule, column)
            case spec.TopCode():
                expr = transforms.per_distinct(frame, column, transforms.top_code(rule, column, dtype), rows)
            case spec.FreeText(mode="remove"):
                expr = pl.lit(None, dtype=pl.String)
            case spec.FreeText():
                expr = transforms.scrubbed(frame, column, names)
        exprs.append(expr.alias(column))
    # every expression reads the input columns: a person column pseudonymized here still keys the date shifts
    return frame.select(exprs)


class _Counted:
    """Counts the verification needs more than once, each counted once: cells per distinct value of a
    column (the rule checks and the identifier scan) and rows per class over a set of columns (a group
    rule, k, l and the risk).

    Each column is coded once: every cell becomes the rank of its value among the column's distinct values
    (text in lexical order, other types in their own, null last). A class over several columns is then one
    integer packing those ranks, so millions of classes are counted by grouping one integer column, not
    several text columns, and integers order the classes as their values sort (for naming the smallest).
    When the rows fall into few groups over `keys` (the columns the rules read: released values), they are
    first counted into those groups, and the columns of `keys` are coded and counted on that small table."""

    SAMPLE = 100_000  # rows looked at to guess whether the rows fall into few groups

    def __init__(self, frame: pl.DataFrame, keys: list[str] | None = None,
                 sensitive: dict[tuple[str, ...], str] | None = None) -> None:
        """`sensitive`: for l-diversity, its classes' columns and sensitive column, counted with the classes'
        sizes in one pass."""
        self.frame = frame
        self.keys = [k for k in keys or [] if k in frame.columns]
        self.sensitive = sensitive or {}
        self._fine: pl.DataFrame | None = None
        self._codes: dict[tuple[bool, str], tuple[np.ndarray, pl.Series]] = {}
        self._keys: dict[tuple[str, ...], tuple[np.ndarray, int]] = {}
        self._values: dict[str, pl.DataFrame] = {}
        self._classes: dict[tuple[str, ...], pl.DataFrame] = {}
        if self.keys and frame.height > 4 * self.SAMPLE:
            sample = frame.gather_every(frame.height // self.SAMPLE).select(self.keys)
            if sample.n_unique() < sample.height // 4:
                self._fine = frame.group_by(self.keys).agg(pl.len().alias(CELLS))

    def _table(self, columns: list[str]) -> tuple[pl.DataFrame, np.ndarray | None]:
        """The table to count `columns` on and its rows' weights (None: one row each)."""
        if self._fine is not None and set(columns) <= set(self.keys):
            return self._fine, self._fine.get_column(CELLS).to_numpy()
        return self.frame, None

    def _coded(self, column: str, fine: bool) -> tuple[np.ndarray, pl.Series]:
        """(each cell's rank, the distinct values in rank order), over the small table when `fine`."""
        if (fine, column) not in self._codes:
            col = (self._fine if fine and self._fine is not None else self.frame).get_column(column)
            if col.dtype == pl.Categorical:
                # ranks through the dictionary codes: a sort of the distinct values, one lookup per cell
                distinct = col.unique()
                distinct = distinct.gather(distinct.cast(pl.String).arg_sort(nulls_last=True))
                physical = distinct.to_physical()
                null_slot = int(physical.max() or 0) + 1  # type: ignore[arg-type]
                lookup = np.zeros(null_slot + 1, dtype=np.intp)
                lookup[physical.fill_null(null_slot).to_numpy()] = np.arange(distinct.len(), dtype=np.intp)
                codes = lookup[col.to_physical().fill_null(null_slot).to_numpy()]
            else:
                distinct = col.unique().sort(nulls_last=True)
                ranks = col.rank("dense").cast(pl.Int64)  # 1-based; null stays null
                codes = (ranks.fill_null(distinct.len() - distinct.null_count() + 1) - 1).to_numpy().astype(np.intp)
            self._codes[(fine, column)] = (codes, distinct)
        return self._codes[(fine, column)]

    def _key(self, columns: list[str]) -> tuple[np.ndarray, int]:
        """One integer per row (of `_table(columns)`) that orders and groups the rows as the tuple of their ranks
        over `columns`, and how many integers it may take. Built on the key of all but the last column."""
        names = tuple(columns)
        if names not in self._keys:
            fine = self._table(columns)[1] is not None
            codes, distinct = self._coded(columns[-1], fine)
            width = max(distinct.len(), 1)
            if len(columns) == 1:
                key, span = codes.astype(np.uint64), width
            else:
                key, span = self._key(columns[:-1])
                if span * width >= 2 ** 63:  # would overflow: renumber the classes so far, keeping their order
                    _, inverse = np.unique(key, return_inverse=True)
                    key, span = inverse.astype(np.uint64), int(inverse.max(initial=0)) + 1
                key = key * np.uint64(width)
                key += codes.astype(np.uint64)
                span *= width
            self._keys[names] = (key, span)
        return self._keys[names]

    def values(self, column: str) -> pl.DataFrame:
        """{column, __cells}: every distinct value (null included) and its number of cells."""
        if column not in self._values:
            weights = self._table([column])[1]
            codes, distinct = self._coded(column, weights is not None)
            cells = np.bincount(codes, weights, minlength=distinct.len()).astype(np.int64)
            self._values[column] = pl.DataFrame({column: distinct, CELLS: cells})
        return self._values[column]

    def classes(self, columns: list[str], distinct: str | None = None) -> pl.DataFrame:
        """{__key, __n}: rows per group over `columns` (or distinct values of `distinct`); __key names the
        group for `named`."""
        name = (*columns, "", distinct or "")
        if name not in self._classes:
            key, span = self._key(columns)
            sensitive = distinct or self.sensitive.get(tuple(columns))
            if sensitive is not None and sensitive not in self.frame.columns and distinct is None:
                sensitive = None  # l names a column the output lacks: its own check says so
            weights = self._table([*columns, *([sensitive] if sensitive else [])])[1]
            if sensitive is None:
                self._classes[name] = self._sizes(key, span, weights)
                return self._classes[name]
            pair, pair_span = self._key([*columns, sensitive])
            codes, values = self._coded(sensitive, weights is not None)
            # a blank is no sensitive value: four HIV and one blank are one value, not two (l-diversity)
            blank = values.len() - 1 if values.null_count() else None  # nulls are ranked last
            if pair_span <= self._ARRAY_LIMIT * max(key.size, 1):
                # few possible (class, value) pairs: count them in one array, then pairs per class
                width = values.len()
                pairs = self._sizes(pair, pair_span, None)
                if blank is not None:
                    pairs = pairs.filter(pl.col("__key") % width != blank)
                sizes = self._sizes(key, span, weights)
                per_class = (pairs.select(pl.col("__key") // width).group_by("__key")
                             .agg(pl.len().cast(pl.Int64).alias("__n")))
                diverse = (sizes.select("__key").join(per_class, on="__key", how="left")
                           .with_columns(pl.col("__n").fill_null(0)))
                self._classes[(*columns, "", "")] = sizes
            else:  # many: the rows and the distinct values of each class in one grouping
                rows = pl.len() if weights is None else pl.col(CELLS).sum()
                valued = pl.col("__pair") if blank is None else pl.col("__pair").filter(pl.col("__code") != blank)
                table = pl.DataFrame({"__key": key, "__pair": pair, "__code": codes}).with_columns(
                    pl.Series(CELLS, weights) if weights is not None else pl.lit(1).alias(CELLS))
                both = table.group_by("__key").agg(rows.cast(pl.Int64).alias("__n"),
                                                   valued.n_unique().cast(pl.Int64))
                self._classes[(*columns, "", "")] = both.select("__key", "__n")
                diverse = both.select("__key", pl.col("__pair").alias("__n"))
            self._classes[(*columns, "", sensitive)] = diverse
        return self._classes[name]

    _ARRAY_LIMIT = 4  # keys counted in an array when it has at most this many slots per row

    @classmethod
    def _sizes(cls, key: np.ndarray, span: int, weights: np.ndarray | None) -> pl.DataFrame:
        """{__key, __n}: the rows of each key that occurs (`weights`: rows per entry of `key`)."""
        if span <= max(cls._ARRAY_LIMIT * key.size, 1 << 16):  # few possible keys (released values): an array
            index = key.astype(np.intp)
            present = np.flatnonzero(np.bincount(index, minlength=span)) if key.size else np.zeros(0, dtype=np.intp)
            counts = np.bincount(index, weights, minlength=span).astype(np.int64) if weights is not None else None
            sizes = counts if counts is not None else np.bincount(index, minlength=span)
            return pl.DataFrame({"__key": present.astype(np.uint64), "__n": sizes[present].astype(np.int64)})
        table = pl.DataFrame({"__key": key})
        if weights is None:
            return table.group_by("__key").agg(pl.len().cast(pl.Int64).alias("__n"))
        return (table.with_columns(pl.Series(CELLS, weights)).group_by("__key")
                .agg(pl.col(CELLS).sum().cast(pl.Int64).alias("__n")))

    def named(self, groups: pl.DataFrame, columns: list[str], limit: int = MAX_GROUPS_NAMED) -> list[dict[str, Any]]:
        """The `limit` smallest of `groups` (from `classes`), by size then values, with their values."""
        if groups.height == 0:
            return []
        # size by size from the smallest (usually one or two sizes), the lowest keys of each: no sort of them all
        size = groups.get_column("__n")
        candidates = groups.filter(size <= size.bottom_k(limit).max())
        picked: list[pl.DataFrame] = []
        for n in candidates.get_column("__n").unique().sort():
            keys = candidates.filter(pl.col("__n") == n).get_column("__key").bottom_k(limit - sum(map(len, picked)))
            picked.append(pl.DataFrame({"__key": keys.sort(), "__n": pl.Series([n] * keys.len(), dtype=pl.Int64)}))
            if sum(map(len, picked)) >= limit:
                break
        smallest = pl.concat(picked)
        key = pl.Series("__key", self._key(columns)[0])
        rows = key.is_in(smallest.get_column("__key")).arg_true()
        first = pl.DataFrame({"__key": key.gather(rows), ROW: rows}).unique("__key", keep="first")
        table = self._table(columns)[0]
        values = table.select(pl.col(columns).gather(first.get_column(ROW)), first.get_column("__key"))
        ordered = smallest.join(values, on="__key", how="left", maintain_order="left")
        return [{**{c: row[c] for c in columns}, "count": row["__n"]}
                for row in ordered.iter_rows(named=True)]


def _group_rules(strategy: spec.Strategy) -> list[tuple[str, list[str], int, str | None, spec.OnViolation]]:
    rules: list[tuple[str, list[str], int, str | None, spec.OnViolation]] = [
        (f"each ({', '.join(g.columns)}) has at least {g.min_rows} rows", g.columns, g.min_rows, None, g.on_violation)
        for g in strategy.group_rules]
    if k := strategy.k_anonymity:
        rules.append((f"{k.k}-anonymity over ({', '.join(k.quasi_identifiers)})", k.quasi_identifiers, k.k, None,
                      k.on_violation))
    if ld := strategy.l_diversity:
        rules.append((f"{ld.l}-diversity of {ld.sensitive} over ({', '.join(ld.quasi_identifiers)})",
                      ld.quasi_identifiers, ld.l, ld.sensitive, ld.on_violation))
    return rules


def _rule_columns(rules: list[tuple[str, list[str], int, str | None, spec.OnViolation]]) -> list[str]:
    """Every column a group rule, k or l reads (its groups' columns and l's sensitive column)."""
    return list(dict.fromkeys(c for _, columns, _, distinct, _ in rules
                              for c in [*columns, *([distinct] if distinct else [])]))


def _enforce(frame: pl.DataFrame, strategy: spec.Strategy) -> tuple[pl.Series | None, list[Suppression]]:
    """Suppress the rows of every violating group of every rule that chooses suppression, until every rule
    holds. Removing a rule's violating groups whole leaves its other groups as they were, so that rule holds
    afterwards: only the other rules are checked again.

    The rows are counted once into the finest groups over every column the rules read (thousands of groups
    for millions of rows); each rule's groups are unions of those, so the rules are checked and suppressed
    on that small table; each group keeps its row numbers, so the rows to suppress (returned, ascending;
    None when there are none) need no second pass over the frame."""
    rules = [r for r in _group_rules(strategy) if r[4] == "suppress"]
    if not rules:
        return None, []
    keys = _rule_columns(rules)
    fine = start = frame.with_row_index(ROW).group_by(keys).agg(pl.len().alias(CELLS), pl.col(ROW))
    removed: dict[str, int] = {}
    clean: set[int] = set()  # the rules checked without a violation since the last suppression
    for step in range(MAX_SUPPRESSION_PASSES * len(rules)):
        index = step % len(rules)
        if len(clean) == len(rules):
            break
        if index in clean:
            continue
        name, columns, minimum, distinct, _ = rules[index]
        measure = pl.col(distinct).drop_nulls().n_unique() if distinct else pl.col(CELLS).sum()  # blanks: no value
        bad = fine.group_by(columns).agg(measure.alias("__n")).filter(pl.col("__n") < minimum)
        if bad.height:
            lost = fine.join(bad.select(columns), on=columns, how="semi", nulls_equal=True)
            fine = fine.join(bad.select(columns), on=columns, how="anti", nulls_equal=True)
            removed[name] = removed.get(name, 0) + int(lost.get_column(CELLS).sum())
            clean = set()
        clean.add(index)
    rows = None
    if fine.height < start.height:
        rows = start.join(fine.select(keys), on=keys, how="anti", nulls_equal=True).get_column(ROW).explode().sort()
    return rows, [Suppression(f"in a group that broke: {name}", rows) for name, rows in removed.items()]


def apply(frame: pl.LazyFrame | pl.DataFrame, strategy: spec.Strategy, secret: bytes) -> Run:
    """Transform, enforce and verify. Raises StrategyError when the strategy does not fit the table."""
    lazy = frame.lazy()
    rows_in = frame.height if isinstance(frame, pl.DataFrame) else lazy.select(pl.len()).collect().item()
    names = names_to_find(lazy, strategy.identifier_scan)
    text = _transform(lazy, strategy, secret, names, rows_in).collect(engine="streaming")
    # released values repeat (bands, years, codes): grouping dictionary codes is several times faster than
    # grouping strings, for the enforcement and the verification alike. The suppressed rows leave the text
    # frame and the coded one alike, so the output is never cast back from the codes (the costliest step).
    coded = text.with_columns(pl.col(pl.String).cast(pl.Categorical))
    lost_rows, suppressed = _enforce(coded, strategy)
    if lost_rows is not None and lost_rows.len():
        keep = np.ones(coded.height, dtype=bool)
        keep[lost_rows.to_numpy()] = False
        text, coded = text.filter(keep), coded.filter(keep)
    lost = rows_in - coded.height
    share = lost / rows_in if rows_in else 0.0
    limit = Check(f"at most {strategy.max_suppressed:.0%} of rows suppressed", share <= strategy.max_suppressed,
                  f"{lost} of {rows_in} rows ({share:.1%}) suppressed")
    verification = verify(coded, strategy, names=names)
    return Run(output=text.with_columns(pl.col(pl.Categorical).cast(pl.String)), rows_in=rows_in,
               suppressed=suppressed, verification=verification, limit=limit)


RULE_SHAPES: dict[str, str] = {"year": r"^\d{4}$", "quarter": r"^\d{4}-Q[1-4]$", "month": r"^\d{4}-(0[1-9]|1[0-2])$",
                               "icd10_category": r"^[A-Z]\d{2}$"}
PSEUDONYM_SHAPE = r"^[A-Z2-7]{20}$"


def _rule_holds(frame: pl.DataFrame, column: str, rule: spec.Rule, counted: _Counted | None = None) -> str | None:
    """Why `column` does not look as its rule promises, or None when it does."""
    present = column in frame.columns
    if isinstance(rule, spec.Delete):
        return "still present" if present else None
    if not present:
        return "missing from the output"
    col = frame.get_column(column)
    # each distinct value once, with how many cells hold it: the checks below then cost nothing per row
    counts = (counted or _Counted(frame)).values(column).drop_nulls(column)
    values, cells = counts.get_column(column), counts.get_column("__cells")
    if values.dtype == pl.Categorical:
        values = values.cast(pl.String)

    def cells_where(bad_values: pl.Series) -> int:
        return int(cells.filter(bad_values.fill_null(True)).sum())

    def off_shape(pattern: str) -> int:
        return cells_where(~values.cast(pl.String).str.contains(pattern))

    bad = 0
    match rule:
        case spec.Pseudonymize():
            bad = off_shape(PSEUDONYM_SHAPE)
        case spec.Stratify():
            bad = cells_where(~values.is_in(transforms.band_labels(rule.upper_bounds(), rule.top)))
        case spec.Generalize(to="prefix"):
            assert rule.length is not None
            bad = cells_where(values.cast(pl.String).str.len_chars() > rule.length)
        case spec.Generalize(to="icd10_chapter"):
            bad = cells_where(~values.is_in([name for _, _, name in transforms.ICD10_CHAPTERS]))
        case spec.Generalize(to="icd10_block"):
            bad = cells_where(~values.is_in([label for *_, label in transforms.icd10_blocks()]))
        case spec.Generalize():
            bad = off_shape(RULE_SHAPES[rule.to])
        case spec.ShiftDate():
            return None if col.dtype == pl.Date else f"is {col.dtype}, not dates"
        case spec.Suppress(min_count=None) | spec.FreeText(mode="remove") if col.dtype == pl.Null:
            return None
        case spec.Suppress(min_count=None) | spec.FreeText(mode="remove"):
            bad = int(cells.sum())
        case spec.Suppress():
            assert rule.min_count is not None
            bad = cells_where(cells < rule.min_count)
        case spec.TopCode():
            # read as the run reads it (text too: "41", "41,5"); what is no number ("n/a", "90+") is a bad cell
            numbers = values.to_frame(column).select(transforms.as_number(column, values.dtype)).to_series()
            high = numbers > rule.top if rule.top is not None else numbers.is_nan()
            low = numbers < rule.bottom if rule.bottom is not None else numbers.is_nan()
            bad = cells_where(high | low | numbers.is_null())
    return f"{bad} value(s) do not follow the rule" if bad else None


Groups = list[dict[str, Any]]


def _risk(frame: pl.DataFrame, quasi: list[str], threshold: float,
          counted: _Counted | None = None) -> tuple[dict[str, Any], dict[str, int], Groups]:
    if not quasi or frame.height == 0:
        return {"assessed": False, "why": "no quasi-identifiers named" if not quasi else "no rows"}, {}, []
    counted = counted or _Counted(frame)
    sizes = counted.classes(quasi)
    n, classes = frame.height, sizes.height
    smallest = int(sizes.get_column("__n").min())  # type: ignore[arg-type]
    at_risk = int(sizes.filter(1 / pl.col("__n") > threshold).get_column("__n").sum())
    prosecutor = {"highest": 1 / smallest, "average": classes / n, "records_at_risk": at_risk / n}
    risk = {"assessed": True, "quasi_identifiers": quasi, "classes": classes, "threshold": threshold,
            "prosecutor": prosecutor,
            # with no population table the extract is its own population: the journalist's risk is the
            # prosecutor's, and the marketer expects to re-identify one record per class
            "journalist": dict(prosecutor), "marketer": {"average": classes / n},
            "population": "the extract itself"}
    edges = [(1, 1), (2, 2), (3, 4), (5, 9), (10, 19), (20, 49), (50, 99), (100, None)]
    histogram = {}
    size = sizes.get_column("__n")
    for low, high in edges:
        label = str(low) if low == high else (f"{low}-{high}" if high else f"{low}+")
        histogram[label] = int(((size >= low) & (size <= (high or n))).sum())
    return risk, histogram, counted.named(sizes, quasi, 10)


def verify(frame: pl.DataFrame, strategy: spec.Strategy, *, names: NameMatcher | None = None) -> Verification:
    """Check the output against every promise of the strategy, knowing nothing of how it was made.
    `names`: the names to look for (the steward's list and the input's `names_from` columns)."""
    frame = frame.with_columns(pl.col(pl.String).cast(pl.Categorical))
    ld = strategy.l_diversity
    counted = _Counted(frame, _rule_columns(_group_rules(strategy)),
                       {tuple(ld.quasi_identifiers): ld.sensitive} if ld else None)
    checks: list[Check] = []
    for column, rule in strategy.columns.items():
        problem = _rule_holds(frame, column, rule, counted)
        checks.append(Check(f"{column}: {rule.action}", problem is None, problem or "holds"))
    extra = [c for c in frame.columns if c not in strategy.columns]
    checks.append(Check("no column without a rule", not extra, f"unexpected: {', '.join(extra)}" if extra else "holds"))
    for name, columns, minimum, distinct, _ in _group_rules(strategy):
        bad = counted.classes(columns, distinct).filter(pl.col("__n") < minimum)
        checks.append(Check(name, bad.height == 0, f"{bad.height} group(s) below {minimum}" if bad.height else "holds",
                            counted.named(bad, columns)))
    # every kind, whatever the strategy says (it may add names, never switch a kind off: spec.ALWAYS_SCANNED)
    found = scan_identifiers(frame, names or NameMatcher(strategy.identifier_scan.names), counts=counted.values)
    checks.append(Check("no identifier in any cell", not found,
                        "; ".join(f"{f['cells']} {f['kind']} cell(s) in {f['column']}" for f in found) or "holds"))
    quasi = (strategy.k_anonymity.quasi_identifiers if strategy.k_anonymity
             else strategy.l_diversity.quasi_identifiers if strategy.l_diversity else [])
    risk, histogram, smallest = _risk(frame, quasi, strategy.risk_threshold, counted)
    return Verification(passed=all(c.passed for c in checks), rows=frame.height, checks=checks, identifiers=found,
                        risk=risk, class_sizes=histogram, smallest_classes=smallest)


__all__ = ["Run", "StrategyError", "Verification", "apply", "verify"]
