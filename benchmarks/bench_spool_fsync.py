"""The DICOM destination's durability step before a C-STORE success, on this machine's disk: the sequence
``dicom serve`` used before issue 16 against the one it uses now, interleaved round after round.

    python benchmarks/bench_spool_fsync.py [--objects 40] [--rounds 5] [--size-kib 520] [--dir /tmp]

- **sequential** (before): write the de-identified ``.dcm`` and fsync it; write the ``.json`` sidecar to a
  temporary name and fsync it; rename it into place; fsync the directory. Three synchronous disk waits.
- **concurrent** (now, ``scp.DicomService._durable``): write the ``.dcm`` and the sidecar, rename the sidecar
  into place, then fsync the ``.dcm``, the ``.json`` and the directory at the same time (a thread each) and
  acknowledge once all three returned. The file system commits them together.
- **no fsync** (information): the writes and the rename only, what ``STRONGROOM_IMAGING__FSYNC=false`` does.

Figures are milliseconds per object (median over rounds) and the ratio sequential / concurrent (median of
per-round ratios). Every object is a new file in a new directory under ``--dir``, as in the spool. Not a
test; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from strongroom.archive.storage.durable import fsync_path

POOL = ThreadPoolExecutor(8)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def sequential(stem: Path, dcm: bytes, sidecar: bytes) -> None:
    _write(stem.with_suffix(".dcm"), dcm)
    fsync_path(stem.with_suffix(".dcm"))
    _write(stem.with_suffix(".json.tmp"), sidecar)
    fsync_path(stem.with_suffix(".json.tmp"))
    os.replace(stem.with_suffix(".json.tmp"), stem.with_suffix(".json"))
    fsync_path(stem.parent)


def concurrent(stem: Path, dcm: bytes, sidecar: bytes) -> None:
    _write(stem.with_suffix(".dcm"), dcm)
    _write(stem.with_suffix(".json.tmp"), sidecar)
    os.replace(stem.with_suffix(".json.tmp"), stem.with_suffix(".json"))
    paths = (stem.with_suffix(".dcm"), stem.with_suffix(".json"), stem.parent)
    for future in [POOL.submit(fsync_path, p) for p in paths]:
        future.result()


def no_fsync(stem: Path, dcm: bytes, sidecar: bytes) -> None:
    _write(stem.with_suffix(".dcm"), dcm)
    _write(stem.with_suffix(".json.tmp"), sidecar)
    os.replace(stem.with_suffix(".json.tmp"), stem.with_suffix(".json"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=40, help="objects per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-kib", type=int, default=520, help="size of the .dcm (a 512x512 16-bit CT: ~520)")
    parser.add_argument("--dir", default="/tmp", help="where to write (the spool's file system)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-spool-fsync-", dir=args.dir))
    dcm, sidecar = os.urandom(args.size_kib * 1024), os.urandom(3000)
    variants: dict[str, Callable[[Path, bytes, bytes], None]] = {
        "sequential (before)": sequential, "concurrent (now)": concurrent, "no fsync": no_fsync}
    ms: dict[str, list[float]] = {name: [] for name in variants}
    load0 = os.getloadavg()
    try:
        for r in range(args.rounds):
            names = list(variants)
            names = names[r % len(names):] + names[:r % len(names)]
            for name in names:
                folder = work / f"r{r}-{name.split()[0]}"
                folder.mkdir()
                start = time.perf_counter()
                for i in range(args.objects):
                    variants[name](folder / f"{i:06d}", dcm, sidecar)
                ms[name].append((time.perf_counter() - start) / args.objects * 1000)
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.1f} ms" for n, v in ms.items()),
                  flush=True)
        load1 = os.getloadavg()
        print(f"\n  {args.objects} objects x {args.rounds} rounds, .dcm {args.size_kib} KiB; load average "
              f"{load0[0]:.1f} at start, {load1[0]:.1f} at the end ({os.cpu_count()} CPUs)")
        for name, values in ms.items():
            print(f"  {name:<22} {statistics.median(values):7.1f} ms/object   ({min(values):.1f}..{max(values):.1f})")
        ratio = statistics.median(a / b for a, b in zip(ms["sequential (before)"], ms["concurrent (now)"],
                                                          strict=True))
        print(f"\n  sequential / concurrent = {ratio:.2f}  (time per acknowledged object: higher is a larger gain)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
