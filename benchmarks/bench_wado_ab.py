"""WADO-RS A/B: the same hub and instances served by two versions of Strongroom's code, rounds alternating,
so a change is measured in the same conditions (single runs of bench_wado.py swing 2x and more here).

    git archive <rev> src | tar -x -C /tmp/old
    python benchmarks/bench_wado_ab.py /tmp/old/src src [--instances 200] [--rounds 5] [--clients 1,4]

Setup as bench_wado.py (untimed); then two uvicorn servers on the one hub (PYTHONPATH = each ``src``), bytes
checked equal to the archived plaintext on both, and per round, clients and Accept (application/dicom,
multipart): old then new, or new then old (alternating). Prints the medians and new/old. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics

import bench_wado
import httpx
from _support import build_hub, free_port, fresh_dir, serving

KINDS = (("(a) single", "application/dicom"), ("(b) multipart", bench_wado.MULTIPART))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old_src")
    parser.add_argument("new_src")
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", default="1,4")
    args = parser.parse_args()
    clients_list = [int(c) for c in args.clients.split(",")]
    with fresh_dir("bench-wado-ab-") as directory, contextlib.ExitStack() as stack:
        bench = build_hub(directory)
        token, instances = bench_wado.setup_hub(bench, directory / "in", args.instances, args.rows)
        servers = {}
        for name, src in (("old", args.old_src), ("new", args.new_src)):
            os.environ["PYTHONPATH"] = os.path.abspath(src)  # the server process imports strongroom from here
            servers[name] = stack.enter_context(serving(dataclasses.replace(bench, port=free_port()),
                                                        directory / f"{name}.log"))
        auth = {"Authorization": f"Bearer {token}"}

        def url(base: str, i: int) -> str:
            study, series, sop, _ = instances[i]
            return f"{base}/dicomweb/projects/wado/studies/{study}/series/{series}/instances/{sop}"

        def fetcher(base: str, accept: str):
            def fetch(c: httpx.Client, i: int) -> int:
                r = c.get(url(base, i), headers={"Accept": accept})
                r.raise_for_status()
                return len(r.content)
            return fetch

        for name, base in servers.items():
            with httpx.Client(headers=auth, timeout=120) as c:
                assert c.get(url(base, 0), headers={"Accept": "application/dicom"}).content == instances[0][3], name
                r = c.get(url(base, 0), headers={"Accept": bench_wado.MULTIPART})
                assert bench_wado.multipart_dicom(r) == [instances[0][3]], name
        rates: dict[tuple[int, str, str], list[float]] = {}
        for rnd in range(args.rounds):
            for clients in clients_list:
                for kind, accept in KINDS:
                    for name in (("old", "new") if rnd % 2 == 0 else ("new", "old")):
                        rate = bench_wado.run(fetcher(servers[name], accept), len(instances), clients, auth)
                        rates.setdefault((clients, kind, name), []).append(rate)
    print(f"{len(instances)} instances, median of {args.rounds} alternating rounds, "
          f"load average {os.getloadavg()[0]:.1f}")
    for clients in clients_list:
        for kind, _ in KINDS:
            old, new = (statistics.median(rates[(clients, kind, n)]) for n in ("old", "new"))
            spread = {n: [round(x) for x in rates[(clients, kind, n)]] for n in ("old", "new")}
            print(f"{clients} client(s) {kind:<14} old {old:7.1f}/s  new {new:7.1f}/s  new/old {new / old:.2f}"
                  f"   rounds {spread}")


if __name__ == "__main__":
    main()
