"""Verification per DICOM instance: what the destination's pool runs on every de-identified output before it is
released (``pipeline.verify_stage``: the leak scan against the original with its identity scan, the risk
check, the catalogue facts and the DICOMweb index), this source tree against an older one in the same rounds.

    python benchmarks/bench_verify.py [--files 300] [--rounds 3] [--baseline-src /tmp/old/src]

Three corpora of 512x512 16-bit CT instances, each de-identified once by this tree's engine (untimed):
``minimal`` (strongroom's synthetic header, ~90 elements, explicit VR little endian), ``ge`` (pydicom's
CT_small GE header with its 180 private elements, as in bench_deid.py) and ``implicit`` (the minimal corpus
in implicit VR little endian: the files the fast reader declines, read by pydicom as before). Each tree runs
in a helper process of its own (this script with ``--serve``, strongroom imported from that tree), the two
alternating within each round, on the same files; a helper reports the CPU time (user + system) of its
verification per file, and the verdicts (the reasons of each file), which must be the same for both trees.
Ratios are medians of per-round ratios (this machine is shared and noisy). Not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SRC = BENCH.parent / "src"


def _corpus(work: Path, kind: str, files: int) -> list[tuple[str, str]]:
    """(original, de-identified) paths of ``files`` instances of one corpus."""
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    from strongroom.imaging.deid import Pseudonymizer, deidentify_file
    from strongroom.imaging.settings import to_engine
    from strongroom.imaging.synthetic import make_ct

    sys.path.insert(0, str(BENCH))
    from bench_deid import make_ge_ct

    folder = work / kind
    folder.mkdir()
    profile, pseudo = to_engine({"retain_longitudinal": "modified"}), Pseudonymizer(b"b" * 32)
    pairs = []
    for n in range(files):
        p, st, se, i = n // 40, n // 20 % 2, n // 10 % 2 + 1, n % 10 + 1
        data = make_ge_ct(p, st, se, i) if kind == "ge" else make_ct(p, st, se, i)
        if kind == "implicit":
            ds = pydicom.dcmread(io.BytesIO(data))
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            data = buf.getvalue()
        raw, out = folder / f"{n}.raw", folder / f"{n}.dcm"
        raw.write_bytes(data)
        deidentify_file(raw, out, profile, pseudo)
        out.read_bytes()  # both in the page cache
        pairs.append((str(raw), str(out)))
    return pairs


def serve() -> int:
    """A helper's side: one JSON request a line (pairs of paths); back: CPU seconds and each file's reasons."""
    from strongroom.imaging import pipeline
    from strongroom.imaging.settings import to_engine

    profile = to_engine({"retain_longitudinal": "modified"})
    for line in sys.stdin:
        pairs = json.loads(line)
        reasons = []
        cpu0 = time.process_time()
        for raw, out in pairs:
            reasons.append(pipeline.verify_stage(raw, out, profile, {"pixel_cleaned": False, "misses": []})["reasons"])
        print(json.dumps({"cpu": time.process_time() - cpu0, "reasons": reasons}), flush=True)
    return 0


class Helper:
    def __init__(self, name: str, src: Path) -> None:
        self.name = name
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(src.resolve())})

    def verify(self, pairs: list[tuple[str, str]]) -> tuple[float, list[list[str]]]:
        """CPU milliseconds per file, and the reasons of each."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(pairs) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return answer["cpu"] / len(pairs) * 1000, answer["reasons"]

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300, help="instances per corpus (default 300)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpora", default="minimal,ge,implicit")
    parser.add_argument("--baseline-src", default="", help="an older src/ (git archive <rev> src | tar -x -C /tmp/old)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve()
    work = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    helpers = [Helper("ours", SRC)]
    if args.baseline_src:
        helpers.append(Helper("baseline", Path(args.baseline_src)))
    try:
        corpora = {kind: _corpus(work, kind, args.files) for kind in args.corpora.split(",")}
        print(f"corpora: {', '.join(corpora)}, {args.files} CT instances each (512x512 16-bit); {os.cpu_count()} CPUs, "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"helpers: {', '.join(h.name for h in helpers)}{' = ' + args.baseline_src if args.baseline_src else ''}")
        ms: dict[tuple[str, str], list[float]] = {(k, h.name): [] for k in corpora for h in helpers}
        for r in range(args.rounds):
            line = []
            for kind, pairs in corpora.items():
                verdicts = {}
                for h in helpers if r % 2 == 0 else helpers[::-1]:  # alternate which tree goes first
                    cost, verdicts[h.name] = h.verify(pairs)
                    ms[(kind, h.name)].append(cost)
                    line.append(f"{kind} {h.name} {cost:.2f}")
                if len({json.dumps(v) for v in verdicts.values()}) > 1:
                    raise SystemExit(f"{kind}: the two trees reached different verdicts")
            print(f"  round {r + 1}/{args.rounds} (CPU ms per file): " + ", ".join(line), flush=True)
        print("\n  corpus      tree        CPU ms/file (median)   rounds")
        for (kind, name), values in ms.items():
            print(f"  {kind:<10}  {name:<10}  {statistics.median(values):10.2f}             "
                  f"{min(values):.2f}..{max(values):.2f}")
        if args.baseline_src:
            print("\n  speed-up, baseline CPU / ours (median of per-round ratios; the verdicts were identical):")
            for kind in corpora:
                ratio = statistics.median(b / a for a, b in zip(ms[(kind, "ours")], ms[(kind, "baseline")],
                                                                strict=True))
                print(f"    {kind:<10} {ratio:5.2f}x")
        return 0
    finally:
        for h in helpers:
            h.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
