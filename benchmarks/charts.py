"""One chart per issue-16 benchmark, from the figures recorded in ``benchmarks/results.json``.

    python benchmarks/charts.py            # writes benchmarks/charts/<benchmark>.svg and prints the table

Each record there is a figure a benchmark printed (a same-run ratio or a rate), copied with the command, the
commit and the load average of the run that printed it: ``before`` is the figure the issue started from,
``after`` the latest run on the final code, ``target`` the issue's goal. The charts are drawn with the hub's own
SVG helper (``strongroom.stats.charts``: no script, no style sheet), so they read the same offline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
OUT = HERE / "charts"


def main() -> int:
    from strongroom.stats.charts import bars

    records = json.loads(RESULTS.read_text())["figures"]
    OUT.mkdir(exist_ok=True)
    print(f"{'figure':58s} {'before':>9s} {'after':>9s} {'target':>9s}  unit")
    for r in records:
        items = [(label, r[key]) for label, key in (("before (issue 16)", "before"), ("after (final code)", "after"),
                                                    ("ceiling (same run)", "ceiling"),
                                                    ("target", "target")) if r.get(key) is not None]
        svg = bars(r["id"], f"{r['figure']} ({r['unit']})", items, unit=r["unit"])
        (OUT / f"{r['id']}.svg").write_text(svg + "\n")
        cells = [f"{r[k]:>9,}" if isinstance(r.get(k), (int, float)) else f"{'—':>9s}"
                 for k in ("before", "after", "target")]
        print(f"{r['figure'][:58]:58s} {' '.join(cells)}  {r['unit']}")
    print(f"wrote {len(records)} charts to {OUT.relative_to(HERE.parent)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
