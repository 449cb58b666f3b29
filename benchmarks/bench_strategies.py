"""Pseudonymization strategies: how fast the verification and a whole run are, against baselines
measured in the same run.

(a) verification of 1 M rows x 5 quasi-identifiers (k, l, a group rule, the identifier scan over every
    text column) vs a bare Polars group-by answering only k and l (target: within 4x);
(b) the same verification vs pyCANON 1.3.6's k-anonymity + l-diversity check on the same rows
    (target: >= 100x; pyCANON is slow, so by default it and (b) run on --pycanon-rows rows);
(c) applying + verifying the seed's full strategy on --rows rows (target: 10 M within 10 s), vs a bare
    Polars pass doing the same column transforms without keys, enforcement or verification, and vs
    ANJANA's k-anonymity transformation of the same table when it is installed.

    .venv/bin/python benchmarks/bench_strategies.py [--rows 10000000] [--pycanon-rows 200000]
    (pip install pycanon==1.3.6 anjana==1.2.3 to include those anchors)
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

import polars as pl

from strongroom.strategies import engine, synthetic
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


VERIFY = load_strategy("""
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
k = 2
[l_diversity]
quasi_identifiers = ["age", "sex", "postal_code", "request_date", "modality"]
sensitive = "diagnosis"
l = 2
""")


def bare_k_and_l(frame: pl.DataFrame) -> tuple[int, int]:
    classes = frame.group_by(QUASI).agg(pl.len().alias("k"), pl.col("diagnosis").n_unique().alias("l"))
    return int(classes.get_column("k").min()), int(classes.get_column("l").min())  # type: ignore[arg-type]


def pycanon_k_and_l(frame: pl.DataFrame) -> tuple[int, int] | None:
    try:
        from pycanon import anonymity
    except ImportError:
        return None
    df = frame.to_pandas()
    return anonymity.k_anonymity(df, QUASI), anonymity.l_diversity(df, QUASI, ["diagnosis"])


def bare_transforms(frame: pl.DataFrame) -> pl.DataFrame:
    """The seed strategy's column work without keys, enforcement or verification."""
    age = pl.col("age").cast(pl.Float64)
    return frame.select(
        age.cut([b + 0.5 for b in range(5, 150, 5)]).cast(pl.String).alias("age"),
        pl.col("request_date").str.to_date(strict=False).dt.year().cast(pl.String).alias("request_date"),
        "diagnosis", "anatomical_site", "sex", "modality", pl.col("postal_code").str.slice(0, 1),
        pl.lit(None, dtype=pl.String).alias("referral_text"))


def anjana_run(frame: pl.DataFrame) -> bool:
    try:
        from anjana.anonymity import k_anonymity
    except ImportError:
        return False
    df = frame.select("age", "sex", "postal_code", "request_date", "diagnosis").to_pandas()
    hierarchies = {"age": {0: df["age"].to_numpy(), 1: (df["age"].astype(int) // 5 * 5).astype(str).to_numpy()},
                   "request_date": {0: df["request_date"].to_numpy(), 1: df["request_date"].str[:4].to_numpy()},
                   "postal_code": {0: df["postal_code"].to_numpy(), 1: df["postal_code"].str[:1].to_numpy()}}
    k_anonymity(df, [], ["age", "sex", "postal_code", "request_date"], 5, 0.05, hierarchies)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verify-rows", type=int, default=1_000_000)
    parser.add_argument("--pycanon-rows", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows for the whole-strategy run (c)")
    args = parser.parse_args()

    print(f"(a) verification of {args.verify_rows:,} rows x {len(QUASI)} quasi-identifiers")
    table = released(args.verify_rows)
    bare = best(lambda: bare_k_and_l(table))
    ours = best(lambda: engine.verify(table, VERIFY))
    report = engine.verify(table, VERIFY)
    print(f"    bare Polars k and l          {bare:8.3f} s   (k={bare_k_and_l(table)[0]}, l={bare_k_and_l(table)[1]})")
    print(f"    strongroom verify (k, l, group rule, identifier scan, rules, risk) {ours:8.3f} s   "
          f"passed={report.passed}")
    print(f"    ratio verify / bare group-by: {ours / bare:.2f}x   (target <= 4x)")

    print(f"(b) vs pyCANON 1.3.6 on {args.pycanon_rows:,} rows")
    small = table.head(args.pycanon_rows)
    if pycanon_k_and_l(small.head(100)) is None:
        print("    pyCANON not installed (pip install pycanon==1.3.6): skipped")
    else:
        canon = best(lambda: pycanon_k_and_l(small), repeat=1)
        ours_small = best(lambda: engine.verify(small, VERIFY))
        assert pycanon_k_and_l(small) == bare_k_and_l(small), "pyCANON and Polars disagree on k and l"
        print(f"    pyCANON k + l {canon:8.3f} s   strongroom verify {ours_small:8.3f} s   "
              f"ratio {canon / ours_small:.0f}x faster   (target >= 100x)")

    print(f"(c) the seed strategy applied and verified on {args.rows:,} rows")
    seed = load_strategy(SEED.read_text())
    extract = synthetic.extract(args.rows, people=max(args.rows // 20, 1), seed=5)
    bare_apply = best(lambda: bare_transforms(extract), repeat=2)
    run: list[engine.Run] = []
    whole = best(lambda: run.append(engine.apply(extract, seed, SECRET)), repeat=1)
    print(f"    bare Polars transforms       {bare_apply:8.3f} s")
    print(f"    strongroom apply + verify    {whole:8.3f} s   passed={run[-1].passed}, "
          f"{run[-1].verification.rows:,} rows out   (target: 10 M rows within 10 s)")
    print(f"    ratio apply+verify / bare transforms: {whole / bare_apply:.2f}x")
    sample = extract.head(min(args.rows, 100_000))
    started = time.perf_counter()
    if anjana_run(sample):
        anjana = time.perf_counter() - started
        ours_sample = best(lambda: engine.apply(sample, seed, SECRET), repeat=1)
        print(f"    ANJANA k-anonymity on {sample.height:,} rows {anjana:8.3f} s vs strongroom {ours_sample:8.3f} s: "
              f"{anjana / ours_sample:.1f}x")
    else:
        print("    ANJANA not installed (pip install anjana==1.2.3): skipped")


if __name__ == "__main__":
    main()
