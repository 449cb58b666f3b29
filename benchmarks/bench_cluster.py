"""The multi-host deployment under faults, full size: 2,000 uploads, 2,000 DICOM instances, 50 concurrent
resumable downloads and API readers while a worker, a web server and a volume server are killed, PostgreSQL
is restarted and a worker is partitioned from the database (tests/support/cluster.py builds the twelve
network namespaces, tests/support/cluster_scenario.py runs and checks; tests/test_cluster.py is the short
form in `make test`). Needs root, nftables, HAProxy and PostgreSQL 15 (scripts/install-test-deps.sh).

    python benchmarks/bench_cluster.py [--uploads 2000] [--dicom 2000] [--downloads 50] [--gap 15]

Prints what was checked (nothing lost or doubled, checksums read back, DICOM archived once, audit chain),
the per-unit costs measured on the quiet cluster first (CPU-ms by role from /proc, network / database /
object-store bytes), and the median latency per request kind on the quiet cluster against the same under
faults and load (the baseline of the same run, and the ratio). Writes benchmarks/cluster.svg (throughput
and latency over time, the faults marked) and benchmarks/cluster.json. Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support.cluster import Cluster, missing  # noqa: E402
from support.cluster_scenario import Plan, run, summary, svg_chart  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=2000)
    parser.add_argument("--dicom", type=int, default=2000)
    parser.add_argument("--downloads", type=int, default=50)
    parser.add_argument("--download-mib", type=int, default=8)
    parser.add_argument("--gap", type=float, default=15.0, help="seconds between faults and their repair")
    parser.add_argument("--out", type=Path, default=HERE / "cluster")
    args = parser.parse_args()
    why = missing()
    if why:
        raise SystemExit(f"cannot build the cluster here: {why}")
    plan = Plan(uploads=args.uploads, dicom_instances=args.dicom, downloads=args.downloads,
                download_mib=args.download_mib, readers=4, fault_gap=args.gap, partition_seconds=2 * args.gap,
                cost_uploads=200, cost_dicom=200, cost_reads=1000, cost_ingest_mib=64)
    base = Path(tempfile.mkdtemp(prefix="srcl-bench-"))
    try:
        with Cluster.build(base) as cluster:
            report = run(cluster, plan, base / "work")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    title = (f"{args.uploads} uploads, {args.dicom} DICOM, {args.downloads} downloads under faults "
             f"(2 web, 3 workers, PostgreSQL, SeaweedFS 2 volumes)")
    args.out.with_suffix(".svg").write_text(svg_chart(report, title))
    args.out.with_suffix(".json").write_text(json.dumps({
        "plan": dataclasses.asdict(plan), "figures": report.figures, "costs": report.costs,
        "events": report.events, "problems": report.problems}, indent=1, default=str))
    print(summary(report))
    print(f"chart: {args.out.with_suffix('.svg')}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
