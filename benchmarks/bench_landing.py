"""The public landing page (``GET /catalog/{slug}``) under a real HTTP load tool, against baselines served by the
same server in the same run.

    apt-get install wrk   (scripts/install-bench-deps.sh)
    python benchmarks/bench_landing.py [--workers 2] [--connections 32] [--seconds 10] [--rounds 3] [--postgres]

Setup (untimed): a fresh hub under /tmp (embedded SQLite, or with --postgres a fresh schema in the PostgreSQL
database at STRONGROOM_BENCH_PG_URL, default the tests' 127.0.0.1:5432/test; local object storage), a project
with a released dataset of 3 files and a published catalogue entry with a sample image (as a steward would
publish it). The app runs under uvicorn with ``--workers`` processes (2: what a 2-core site runs), uvloop +
httptools, no access log.

Timed with wrk (2 threads, --connections keep-alive connections, --seconds each), rounds rotating the order:

- (a) ``GET /healthz`` — the framework's floor: a route that touches nothing;
- (b) ``GET /static/style.css`` — a static file served by the same app;
- (c) the landing page, a browser's request (a browser User-Agent: every view is counted by ``stats``, as the
  real page's views are);
- (d) the landing page revalidated: ``If-None-Match`` with the page's ETag (304, no body);
- (e) the landing page with wrk's own request (no User-Agent: a machine, so no view is counted).

Before timing it checks the headers (strong ETag, ``Cache-Control: public``, 304 on If-None-Match) and that an
edit shows at once. Prints requests/s (median of the rounds) and ratios c/a, c/b, d/a. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from _support import (
    build_hub,
    fresh_dir,
    make_settings,
    person_with_project,
    postgres_schema,
    principal_for,
    wait_until_answering,
)

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def make_app():  # type: ignore[no-untyped-def]
    """The uvicorn factory of each worker process (settings from the environment this script sets)."""
    from strongroom.app import create_app
    from strongroom.logs import configure

    settings = make_settings(Path(os.environ["BENCH_VAR_DIR"]), int(os.environ["BENCH_PORT"]),
                             os.environ["BENCH_SECRET"], os.environ.get("BENCH_DATABASE_URL", ""))
    configure(settings.log_level, settings.log_json)
    return create_app(settings, run_jobs=False)


@contextlib.contextmanager
def serving(bench, workers: int, log_path: Path) -> Iterator[str]:
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONUNBUFFERED="1", BENCH_VAR_DIR=str(bench.settings.var_dir),
               BENCH_DATABASE_URL=bench.settings.database_url,
               BENCH_PORT=str(bench.port), BENCH_SECRET=bench.secret,
               PYTHONPATH=os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]))
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench_landing:make_app", "--factory",
                                 "--host", "127.0.0.1", "--port", str(bench.port), "--workers", str(workers),
                                 "--no-access-log", "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=here)
    try:
        wait_until_answering(f"{bench.url}/healthz", proc, log_path, timeout=900)  # a loaded machine
        yield bench.url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def publish(bench) -> tuple[str, str]:
    """A published entry of a released dataset: its slug and the steward's token."""
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from strongroom.archive import service as archive
    from strongroom.archive.backend import storage_for
    from strongroom.archive.keys import hub_keys
    from strongroom.catalog import png
    from strongroom.db import transaction
    from strongroom.projects import service as projects
    from strongroom.projects.models import Project

    hub = bench.hub
    token = person_with_project(hub, "stella", "lung")
    principal = principal_for(hub, token)
    with tempfile.TemporaryDirectory() as tmp, transaction(hub.sessions) as s:
        keys, storage = hub_keys(hub, s), storage_for(hub)
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        ids = []
        for i in range(3):
            src = Path(tmp) / "f"
            src.write_bytes(png.synthetic_ct_slice(i + 1, size=48))
            sealed = archive.seal_into_storage(keys, storage, project.id, archive.new_accession("SRF"), str(src))
            ids.append(archive.add_sealed_file(s, project.id, principal.user.id, f"slice-{i}.png", sealed).id)
    with transaction(hub.sessions) as s:
        access = projects.open_project(s, principal, "lung")
        ds = archive.create_dataset(s, principal, access, title="Chest CT", files=ids)
        s.flush()
        archive.release_version(s, principal, ds.id, 1)
        dataset_id = ds.id
    h = {"Authorization": f"Bearer {token}"}
    body = {"slug": "chest-ct", "title": "Chest CT screening cohort",
            "description": "Low-dose chest CT examinations from a screening programme, with radiologist "
                           "annotations of every lung nodule larger than 4 mm. " * 3,
            "why_apply": "One of the few screening cohorts with full nodule follow-up.",
            "data_owner": "Example University Hospital", "modalities": ["CT"], "organs": ["Lung"],
            "keywords": ["screening", "nodules"], "subjects": 120, "studies": 130, "series": 260,
            "time_start": "2015-01-01", "time_end": "2019-12-31",
            "terms_text": "Use the data only for the approved study. Do not attempt re-identification.",
            "access_conditions": "Researchers at academic institutions with an ethics approval may apply.",
            "duo_codes": ["DUO:0000006"], "how_to_cite": "Example University Hospital (2026). Chest CT cohort.",
            "contact_email": "data-access@hospital.example.net", "apply_mode": "hub"}
    with TestClient(bench.app, base_url=bench.url) as c:
        r = c.put(f"/api/v1/datasets/{dataset_id}/catalog", json=body, headers=h)
        assert r.status_code == 200, r.text
        r = c.post(f"/api/v1/datasets/{dataset_id}/catalog/images", params={"alt": "Axial CT slice, synthetic"},
                   content=png.synthetic_ct_slice(7, size=64), headers={**h, "Content-Type": "image/png"})
        assert r.status_code == 201, r.text
        r = c.post(f"/api/v1/datasets/{dataset_id}/catalog/publish", headers=h)
        assert r.status_code == 200, r.text
    return "chest-ct", dataset_id


def wrk(url: str, connections: int, seconds: int, headers: dict[str, str]) -> tuple[float, str, str]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+(\S+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    return rate, p99.group(1) if p99 else "?", errors.group(0) if errors else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of the embedded SQLite")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (scripts/install-bench-deps.sh)")
    load_before = os.getloadavg()
    with fresh_dir("bench-landing-") as directory, \
            (postgres_schema("bench_landing") if args.postgres else contextlib.nullcontext("")) as database_url:
        bench = build_hub(directory, database_url)
        slug, dataset_id = publish(bench)
        with serving(bench, args.workers, directory / "server.log") as base:
            page = httpx.get(f"{base}/catalog/{slug}", headers={"User-Agent": BROWSER})
            etag, cache_control = page.headers.get("etag", ""), page.headers.get("cache-control", "")
            assert page.status_code == 200 and etag.startswith('"'), (page.status_code, page.headers)
            assert "public" in cache_control, cache_control
            assert httpx.get(f"{base}/catalog/{slug}", headers={"If-None-Match": etag}).status_code == 304
            print(f"landing page: {len(page.content)} bytes, ETag {etag}, Cache-Control: {cache_control}")
            cases = {
                "(a) GET /healthz (baseline)": (f"{base}/healthz", {}),
                "(b) GET /static/style.css (baseline)": (f"{base}/static/style.css", {}),
                "(c) landing page, browser (view counted)": (f"{base}/catalog/{slug}", {"User-Agent": BROWSER}),
                "(d) landing page, If-None-Match -> 304": (f"{base}/catalog/{slug}",
                                                           {"User-Agent": BROWSER, "If-None-Match": etag}),
                "(e) landing page, wrk's request (no view)": (f"{base}/catalog/{slug}", {}),
            }
            rates: dict[str, list[float]] = {k: [] for k in cases}
            notes: dict[str, str] = {}
            names = list(cases)
            for rnd in range(args.rounds):
                for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                    url, headers = cases[name]
                    rate, p99, errors = wrk(url, args.connections, args.seconds, headers)
                    rates[name].append(rate)
                    notes[name] = f"p99 {p99}" + (f"  {errors}" if errors else "")
            # an edit is seen at once (SQLite: every worker reads the shared generation counter on each request;
            # PostgreSQL: once each worker's listener has its NOTIFY, polled for a bounded time)
            from sqlalchemy import update

            from strongroom.catalog.models import CatalogEntry
            from strongroom.db import transaction, utcnow

            with transaction(bench.hub.sessions) as s:
                s.execute(update(CatalogEntry).where(CatalogEntry.slug == slug)
                          .values(title="Chest CT screening cohort (edited)", updated_at=utcnow()))
            deadline = time.monotonic() + (5.0 if args.postgres else 0.0)
            while True:
                answers = [httpx.get(f"{base}/catalog/{slug}", headers={"If-None-Match": etag})
                           for _ in range(args.workers * 4)]
                if all(a.status_code == 200 and "(edited)" in a.text for a in answers) \
                        or time.monotonic() > deadline:
                    break
            assert all(a.status_code == 200 and "(edited)" in a.text for a in answers), \
                [a.status_code for a in answers]
            with bench.hub.sessions() as s:
                from sqlalchemy import func, select

                from strongroom.stats.models import LandingViews

                views = s.scalar(select(func.sum(LandingViews.views)).where(LandingViews.dataset_id == dataset_id))
    load_after = os.getloadavg()
    print(f"{args.workers} uvicorn workers, wrk -t2 -c{args.connections} -d{args.seconds}s, median of "
          f"{args.rounds} rounds; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"os.cpu_count() = {os.cpu_count()}; views counted: {views}; "
          f"{'PostgreSQL' if args.postgres else 'SQLite'}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    for name in names:
        print(f"{name:<46} {med[name]:8.0f} req/s   rounds {[round(x) for x in rates[name]]}  {notes[name]}")
    a, b, c, d = (med[n] for n in names[:4])
    print(f"ratio c/a (page / healthz) = {c / a:.2f}   c/b (page / static file) = {c / b:.2f}   "
          f"d/a (304 / healthz) = {d / a:.2f}   target: c >= 1000 req/s")
    print("after an edit, every worker served the edited page at once: yes"
          + (" (after its NOTIFY arrived)" if args.postgres else ""))


if __name__ == "__main__":
    main()
