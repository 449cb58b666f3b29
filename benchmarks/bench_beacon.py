"""The Beacon engine (``federation.beacon``) over many imaging studies: a filtered count with its facet
breakdown, and the filtering-terms listing, against the bare Python loop that finds the same matching studies.

Run: .venv/bin/python benchmarks/bench_beacon.py [--studies 200000] [--repeat 5]

Pure: no database and no server (the SQL that gathers the studies of published datasets, ``service.studies``,
is not measured here). Prints seconds (best of --repeat) and ratios against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from strongroom.federation import beacon

MODALITIES = ["CT", "MR", "PT", "US", "CR", "DX", "MG", "SM", "SEG", "NM"]
PARTS = list(beacon.BODY_PARTS)


def studies(n: int) -> list[beacon.Study]:
    rng = random.Random(1)
    return [beacon.Study(dataset=f"SRD-{i % 500:04d}",
                         modalities=frozenset(rng.sample(MODALITIES, rng.randint(1, 3))),
                         body_parts=frozenset(rng.sample(PARTS, rng.randint(1, 2))),
                         diseases=frozenset({f"C{i % 97:02d}"}) if i % 3 == 0 else frozenset())
            for i in range(n)]


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = studies(args.studies)
    b = beacon.Beacon(id="bench", name="bench", base_url="http://127.0.0.1", organization="bench")
    filters = ["DCM:CT", "SNOMED:51185008"]

    def bare() -> int:
        return sum(1 for s in rows if "CT" in s.modalities and "CHEST" in s.body_parts)

    expected = bare()
    doc = b.query(beacon.STUDY, rows, filters)
    assert doc["responseSummary"].get("numTotalResults") == expected, (doc["responseSummary"], expected)
    base = best(bare, args.repeat)
    measured = {
        "count with facets (imagingStudy)": best(lambda: b.query(beacon.STUDY, rows, filters), args.repeat),
        "count of datasets": best(lambda: b.query(beacon.DATASET, rows, filters), args.repeat),
        "boolean": best(lambda: b.query(beacon.STUDY, rows, filters, requested="boolean"), args.repeat),
        "filtering terms": best(lambda: b.filtering_terms(rows), args.repeat),
    }
    print(f"{args.studies:,} studies, {expected:,} match {filters}")
    print(f"{'baseline: bare matching loop':40s} {base:8.3f} s   1.00×")
    for name, seconds in measured.items():
        print(f"{name:40s} {seconds:8.3f} s {seconds / base:6.2f}×")


if __name__ == "__main__":
    main()
