"""Pseudonymization strategies: how fast the verification and a whole run are, against baselines
measured in the same run.

(a) verification of 1 M rows x 5 quasi-identifiers (k, l, a group rule, the identifier scan over every
    text column, every column's rule, the risk) vs a bare Polars group-by answering only k and l
    (target: within 4x);
(b) the same verification vs pyCANON 1.3.6's k-anonymity + l-diversity check on the same rows
    (target: >= 100x). All three answer the same k and l, asserted;
(a) and (b) on two shapes of the rows: as a strategy like the seed's releases them (few thousand classes)
    and an extract checked before generalisation (exact age, 5-digit postal code, full date: about one
    class per row; pyCANON loops over the classes in Python, so it takes minutes there);
(c) applying + verifying the seed's full strategy on --rows rows (target: 10 M within 10 s), vs a bare
    Polars pass doing the same column transforms without keys, enforcement or verification, and vs
    ANJANA's k-anonymity transformation (the seed's generalisations as its hierarchies, the seed's k and
    quasi-identifiers, 5 % suppression) of the same --anjana-rows rows.

    .venv/bin/python benchmarks/bench_strategies.py [--verify-rows 1000000] [--pycanon-rows 1000000]
        [--pycanon-extract-rows 1000000] [--rows 10000000] [--anjana-rows 20000]
    (pip install --no-deps pycanon==1.3.6 anjana==1.2.3 plus pandas and beartype to include those
    anchors: both pin exact numpy/pandas versions that would downgrade the project's)
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable

import polars as pl

from strongroom.strategies import engine, spec, synthetic, transforms
from strongroom.strategies.spec import EXAMPLE, load_strategy

SEED = EXAMPLE
QUASI = ["age", "sex", "postal_code", "request_date", "modality"]
SECRET = bytes(range(32))


def best(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def released(rows: int) -> pl.DataFrame:
    """A table as a strategy leaves it: banded, generalised, five quasi-identifiers and a diagnosis."""
    raw = synthetic.extract(rows, people=max(rows // 5, 1), seed=11)
    return raw.select(
        ((pl.col("age").cast(pl.Int64) // 10) * 10).cast(pl.String).alias("age"), "sex",
        pl.col("postal_code").str.slice(0, 1).alias("postal_code"),
        pl.col("request_date").str.slice(0, 4).alias("request_date"), "modality", "diagnosis", "anatomical_site")


def fine_extract(rows: int) -> pl.DataFrame:
    """An extract as a steward checks it before release, quasi-identifiers as exported: exact age, sex,
    5-digit postal code, full request date, modality (about one equivalence class per row)."""
    raw = synthetic.extract(rows, people=max(rows // 5, 1), seed=11)
    return raw.select("age", "sex", "postal_code", "request_date", "modality", "diagnosis", "anatomical_site")


def classes(frame: pl.DataFrame) -> int:
    return frame.select(pl.struct(QUASI).n_unique()).item()


VERIFY_TEXT = """
name = "bench"
[columns.age]
action = "keep"
[columns.sex]
action = "keep"
[columns.postal_code]
action = "keep"
[columns.request_date]
action = "keep"
[columns.modality]
action = "keep"
[columns.diagnosis]
action = "keep"
[columns.anatomical_site]
action = "keep"
[[group_rules]]
columns = ["diagnosis", "anatomical_site", "request_date"]
min_rows = 11
[k_anonymity]
quasi_identifiers = ["age", "sex", "postal_code", "request_date", "modality"]
k = {k}
[l_diversity]
quasi_identifiers = ["age", "sex", "postal_code", "request_date", "modality"]
sensitive = "diagnosis"
l = {l}
"""


def verify_strategy(k: int, l: int) -> spec.Strategy:  # noqa: E741 (l as in l-diversity)
    """The verification's strategy asking for k and l (a strategy asks for at least 2)."""
    return load_strategy(VERIFY_TEXT.format(k=max(k, 2), l=max(l, 2)))


def engine_k_and_l(frame: pl.DataFrame, k: int, l: int) -> tuple[int, int]:  # noqa: E741
    """k and l as the verification answers them: its k and l checks hold at (k, l) (fail at 2 when k or l is
    1) and fail at (k + 1, l + 1)."""
    def holds(strategy: spec.Strategy) -> tuple[bool, bool]:
        checks = engine.verify(frame, strategy).checks
        return (next(c.passed for c in checks if "-anonymity over" in c.name),
                next(c.passed for c in checks if "-diversity of" in c.name))
    assert holds(verify_strategy(k, l)) == (k >= 2, l >= 2), "the verification disagrees on k or l"
    assert holds(verify_strategy(max(k, 2) + 1, max(l, 2) + 1)) == (False, False), "the verification disagrees"
    return k, l


def bare_k_and_l(frame: pl.DataFrame) -> tuple[int, int]:
    classes = frame.group_by(QUASI).agg(pl.len().alias("k"), pl.col("diagnosis").n_unique().alias("l"))
    return int(classes.get_column("k").min()), int(classes.get_column("l").min())  # type: ignore[arg-type]


def to_pandas(frame: pl.DataFrame) -> object:
    """The frame as pandas without pyarrow (not a dependency): one numpy array per column."""
    import pandas as pd
    return pd.DataFrame({c: frame.get_column(c).to_numpy() for c in frame.columns})


def pycanon_k_and_l(frame: object) -> tuple[int, int]:
    from pycanon import anonymity
    return anonymity.k_anonymity(frame, QUASI), anonymity.l_diversity(frame, QUASI, ["diagnosis"])


def have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def bare_transforms(frame: pl.DataFrame) -> pl.DataFrame:
    """The seed strategy's column work without keys, enforcement or verification."""
    age = pl.col("age").cast(pl.Float64)
    return frame.select(
        age.cut([b + 0.5 for b in range(5, 150, 5)]).cast(pl.String).alias("age"),
        pl.col("request_date").str.to_date(strict=False).dt.year().cast(pl.String).alias("request_date"),
        "diagnosis", "anatomical_site", "sex", "modality", pl.col("postal_code").str.slice(0, 1),
        pl.lit(None, dtype=pl.String).alias("referral_text"))


def anjana_hierarchies(frame: pl.DataFrame, seed: spec.Strategy) -> dict[str, dict[int, object]]:
    """ANJANA's hierarchies for the seed's quasi-identifiers: level 0 the distinct values of the extract,
    level 1 what the seed's rule makes of each (the engine's own expressions); a kept one (sex) can only
    be suppressed whole ("*"), ANJANA's last resort when k is out of reach."""
    out: dict[str, dict[int, object]] = {}
    for column, rule in seed.columns.items():
        dtype = frame.schema[column]
        match rule:
            case spec.Stratify():
                expr = transforms.stratify(rule, column, dtype)
            case spec.Generalize():
                expr = transforms.generalize(rule, column, dtype)
            case spec.Keep() if seed.k_anonymity and column in seed.k_anonymity.quasi_identifiers:
                expr = pl.lit("*")
            case _:
                continue
        distinct = frame.select(pl.col(column).unique().drop_nulls())
        mapped = distinct.with_columns(expr.alias("__level1"))
        out[column] = {0: mapped.get_column(column).to_numpy(), 1: mapped.get_column("__level1").to_numpy()}
    return out


def anjana_run(frame: pl.DataFrame, seed: spec.Strategy) -> tuple[int, list[str]]:
    """ANJANA's k-anonymity over the seed's quasi-identifiers with the seed's generalisations: rows out and
    the quasi-identifiers it suppressed whole."""
    from anjana.anonymity import k_anonymity
    assert seed.k_anonymity is not None
    quasi = seed.k_anonymity.quasi_identifiers
    deleted = [c for c, r in seed.columns.items() if isinstance(r, spec.Delete)]
    df = to_pandas(frame)
    out = k_anonymity(df, deleted, quasi, seed.k_anonymity.k, seed.max_suppressed * 100,
                      anjana_hierarchies(frame, seed))
    whole = [c for c in quasi if len(out) and set(out[c]) == {"*"}]
    return len(out), whole


def verify_vs_bare(title: str, table: pl.DataFrame) -> None:
    print(f"(a) verification of {table.height:,} rows x {len(QUASI)} quasi-identifiers: {title}")
    k, l = bare_k_and_l(table)  # noqa: E741
    strategy = verify_strategy(k, l)  # asks for the table's own k and l (at least 2)
    bare = best(lambda: bare_k_and_l(table))
    ours = best(lambda: engine.verify(table, strategy))
    report = engine.verify(table, strategy)
    assert engine_k_and_l(table, k, l) == (k, l)
    print(f"    {classes(table):,} equivalence classes")
    print(f"    bare Polars k and l          {bare:8.3f} s   (k={k}, l={l})")
    print(f"    strongroom verify (k, l, group rule, identifier scan, rules, risk) {ours:8.3f} s   "
          f"passed={report.passed}, answers the same k and l")
    print(f"    ratio verify / bare group-by: {ours / bare:.2f}x   (target <= 4x)")


def verify_vs_pycanon(title: str, table: pl.DataFrame, rows: int) -> None:
    print(f"(b) vs pyCANON 1.3.6 on {rows:,} rows of the {title}")
    if not have("pycanon"):
        print("    pyCANON not installed: skipped")
        return
    small = table.head(rows)
    df = to_pandas(small)
    canon_answer: list[tuple[int, int]] = []
    canon = best(lambda: canon_answer.append(pycanon_k_and_l(df)), repeat=1)
    small_k, small_l = bare_k_and_l(small)
    assert canon_answer[0] == (small_k, small_l), f"pyCANON {canon_answer[0]} vs Polars {(small_k, small_l)}"
    assert engine_k_and_l(small, small_k, small_l) == (small_k, small_l)
    small_strategy = verify_strategy(small_k, small_l)
    ours_small = best(lambda: engine.verify(small, small_strategy))
    bare_small = best(lambda: bare_k_and_l(small))
    print(f"    {classes(small):,} classes: pyCANON k + l {canon:8.3f} s   strongroom verify {ours_small:8.3f} s   "
          f"bare Polars {bare_small:8.3f} s   (all three: k={small_k}, l={small_l})")
    print(f"    ratio pyCANON / verify: {canon / ours_small:.0f}x faster   (target >= 100x)")
    if small.height < table.height:
        # pyCANON's cost is a Python loop per class: scaled by the classes, not measured
        scaled = canon * classes(table) / classes(small)
        whole = verify_strategy(*bare_k_and_l(table))
        ours = best(lambda: engine.verify(table, whole))
        print(f"    EXTRAPOLATED to {table.height:,} rows ({classes(table):,} classes) by classes: "
              f"pyCANON ~{scaled:.0f} s vs verify {ours:.3f} s measured: ~{scaled / ours:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verify-rows", type=int, default=1_000_000)
    parser.add_argument("--pycanon-rows", type=int, default=1_000_000, help="pyCANON's rows of the released shape")
    parser.add_argument("--pycanon-extract-rows", type=int, default=1_000_000,
                        help="pyCANON's rows of the extract shape (minutes: it loops over ~1 class per row)")
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows for the whole-strategy run (c)")
    parser.add_argument("--anjana-rows", type=int, default=20_000,
                        help="ANJANA maps each value through its hierarchy row by row: O(rows x distinct values)")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")

    # two shapes of the same 1 M rows: (1) as a strategy like the seed's releases them (few classes);
    # (2) an extract checked before any generalisation, fine quasi-identifiers (about one class per row)
    shapes = [("released (age in decades, postal region, year)", released(args.verify_rows), args.pycanon_rows),
              ("extract (exact age, 5-digit postal code, full date)", fine_extract(args.verify_rows),
               args.pycanon_extract_rows)]
    for title, table, _ in shapes:
        verify_vs_bare(title, table)
    for title, table, rows in shapes:
        verify_vs_pycanon(title, table, rows)

    print(f"(c) the seed strategy applied and verified on {args.rows:,} rows")
    seed = load_strategy(SEED.read_text())
    started = time.perf_counter()
    extract = synthetic.extract(args.rows, people=max(args.rows // 20, 1), seed=5)
    print(f"    (setup: generated the extract in {time.perf_counter() - started:.1f} s)")
    bare_apply = best(lambda: bare_transforms(extract), repeat=2)
    run: list[engine.Run] = []
    whole = best(lambda: run.append(engine.apply(extract, seed, SECRET)), repeat=2)
    print(f"    bare Polars transforms       {bare_apply:8.3f} s")
    print(f"    strongroom apply + verify    {whole:8.3f} s   passed={run[-1].passed}, "
          f"{run[-1].verification.rows:,} rows out   (target: 10 M rows within 10 s)")
    print(f"    ratio apply+verify / bare transforms: {whole / bare_apply:.2f}x")
    if not have("anjana"):
        print("    ANJANA not installed: skipped")
        return
    sample = extract.head(args.anjana_rows)
    out_rows: list[tuple[int, list[str]]] = []
    anjana = best(lambda: out_rows.append(anjana_run(sample, seed)), repeat=1)
    ours_run: list[engine.Run] = []
    ours_sample = best(lambda: ours_run.append(engine.apply(sample, seed, SECRET)), repeat=3)
    print(f"    ANJANA k-anonymity (k={seed.k_anonymity.k if seed.k_anonymity else '-'}, the seed's hierarchies) on "
          f"{sample.height:,} rows {anjana:8.3f} s, {out_rows[0][0]:,} rows out, "
          f"suppressed whole: {', '.join(out_rows[0][1]) or 'none'}")
    print(f"    strongroom apply + verify on the same rows {ours_sample:8.3f} s, {ours_run[-1].verification.rows:,} "
          f"rows out, passed={ours_run[-1].passed} (also the group rule, the scrub, the scan)")
    print(f"    ratio ANJANA / strongroom: {anjana / ours_sample:.0f}x")


if __name__ == "__main__":
    main()
