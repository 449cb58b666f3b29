"""Concurrent writers on the embedded SQLite: latency per request kind, /healthz, status counts.

    .venv/bin/python benchmarks/bench_concurrency.py [--clients 16] [--requests 8]

One user (as in issue 9, point 10) does everything at once against `strongroom serve` (uvicorn in a child
process, embedded SQLite): attachment uploads of 1-5 MiB over the API, attachments in the web form, answer
saves, notification-setting writes, upload parts of 1 MiB, API tokens created on the account page, and
reads. First the same mix runs with ONE client (the baseline), then with ``--clients`` concurrent clients,
each doing ``--requests`` requests of one kind, while /healthz is polled. Printed: p50/p99 per kind in
both phases and their ratio, /healthz p50/p99/max under load, and the counts of 2xx/4xx/5xx (a 503 with
Retry-After is the hub saying "busy, retry": counted apart).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import statistics
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import httpx
from _support import MIB, build_hub, fresh_dir, person_with_project, serving

KIB = 1024
PART_MIB = 4  # upload parts carry the big bodies: API and form bodies are capped at 1 MiB
KINDS = ("attach", "web-attach", "answers", "notify", "part", "token", "read")


def poll_health(url: str, done, results) -> None:  # runs in its own process
    latencies, codes = [], []
    with httpx.Client(base_url=url, timeout=300) as c:
        while not done.is_set():
            started = time.perf_counter()
            codes.append(c.get("/healthz").status_code)
            latencies.append(time.perf_counter() - started)
            done.wait(0.02)
    results.put((latencies, codes))


def _setup(bench) -> dict:
    """Rita (PI of her own project, an API token and a browser session) and three datasets of another
    project to apply for: one application for API attachments, one for answers, one for the web form."""
    from sqlalchemy import select

    from strongroom.archive.models import Dataset, DatasetVersion
    from strongroom.catalog.models import CatalogEntry
    from strongroom.db import transaction
    from strongroom.deps import csrf_token_for
    from strongroom.identity import service as identity
    from strongroom.identity.models import User
    from strongroom.projects.models import Project

    hub = bench.hub
    token = person_with_project(hub, "rita", "ritas")
    person_with_project(hub, "owner", "owners")
    datasets = []
    with transaction(hub.sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == "owners"))
        for i in range(3):
            ds = Dataset(id=f"SRD-BENCH{i}", project_id=project.id, title=f"Bench {i}", created_by=project.pi_id)
            s.add(ds)
            s.flush()
            s.add(DatasetVersion(dataset_id=ds.id, number=1, state="released"))
            s.add(CatalogEntry(dataset_id=ds.id, slug=f"bench-{i}", title=ds.title, created_by=project.pi_id,
                               published=True, published_at=dt.datetime.now(dt.UTC)))  # outsiders may apply
            datasets.append(ds.id)
    with transaction(hub.sessions) as s:
        rita = s.scalar(select(User).where(User.email == "rita@example.org"))
        cookie = identity.start_session(s, rita, stage="active", method="local", mfa=True, ip="127.0.0.1",
                                        max_hours=12)
    return {"token": token, "cookie": cookie, "datasets": datasets,
            "csrf": csrf_token_for(hub.secret, session_cookie=cookie)}  # what the session's pages carry


class Load:
    def __init__(self, url: str, who: dict, apps: dict[str, str], upload_id: str) -> None:
        self.url, self.who, self.apps, self.upload_id = url, who, apps, upload_id
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: Counter[str] = Counter()
        self.by_kind: dict[str, Counter[int]] = defaultdict(Counter)
        self.lock = threading.Lock()
        self.part = 0

    def _clients(self) -> tuple[httpx.Client, httpx.Client]:
        api = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.who['token']}"},
                           timeout=300)
        web = httpx.Client(base_url=self.url, timeout=300, follow_redirects=False)
        web.cookies.set("sr_session", self.who["cookie"])
        return api, web

    def one(self, kind: str, api: httpx.Client, web: httpx.Client, n: int) -> None:
        apps = self.apps
        started = time.perf_counter()
        if kind == "attach":
            r = api.post(f"/api/v1/applications/{apps['api']}/attachments", params={"filename": f"a{n}.pdf"},
                         content=bytes((1 + n % 4) * 240 * KIB))  # up to the 1 MiB body limit
        elif kind == "web-attach":
            r = web.post(f"/applications/{apps['web']}/save",
                         data={"csrf_token": self.who["csrf"], "study_name": "Bench", "ethics.number": "Dnr 1"},
                         files={"ethics.file": (f"w{n}.pdf", bytes((1 + n % 3) * 300 * KIB), "application/pdf")})
        elif kind == "answers":
            r = api.put(f"/api/v1/applications/{apps['answers']}/answers", json={"answers": {"study_name": f"s{n}"}})
        elif kind == "notify":
            r = api.put("/api/v1/me/notifications", json={"mode": ("daily", "immediate")[n % 2]})
        elif kind == "part":
            with self.lock:
                self.part += 1
                number = self.part
            r = api.put(f"/api/v1/uploads/{self.upload_id}/parts/{number}", content=bytes(PART_MIB * MIB))
        elif kind == "token":
            r = web.post("/account/tokens", data={"csrf_token": self.who["csrf"], "name": f"t{n}", "days": "7",
                                                  "scopes": "data:read"})
        else:
            r = api.get(f"/api/v1/applications/{apps['answers']}")
        elapsed = time.perf_counter() - started
        busy = r.status_code == 503 and r.headers.get("retry-after")
        with self.lock:
            self.latency[kind].append(elapsed)
            self.status["503+Retry-After" if busy else f"{r.status_code // 100}xx"] += 1
            self.by_kind[kind][r.status_code] += 1

    def run(self, clients: int, requests: int) -> None:
        def client(i: int) -> None:
            api, web = self._clients()
            kind = KINDS[i % len(KINDS)]
            for n in range(requests):
                self.one(kind, api, web, i * 1000 + n)
            api.close()
            web.close()

        if clients == 1:  # the baseline: one client, every kind in turn
            api, web = self._clients()
            for n in range(requests):
                for kind in KINDS:
                    self.one(kind, api, web, n)
            return
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8, help="requests per client in the loaded phase")
    args = parser.parse_args()
    with fresh_dir("sr-bench-conc-") as directory:
        bench = build_hub(directory)
        who = _setup(bench)
        with serving(bench, directory / "server.log") as url:
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {who['token']}"}, timeout=60)
            apps = {}
            for name, ds in zip(("api", "answers", "web"), who["datasets"], strict=True):
                r = api.post(f"/api/v1/datasets/{ds}/applications")
                r.raise_for_status()
                apps[name] = r.json()["id"]
            total_parts = PART_MIB * (3 + args.clients * args.requests)
            r = api.post("/api/v1/projects/ritas/uploads", json={"path": "bench.c4gh", "size": total_parts * MIB})
            r.raise_for_status()
            upload_id = r.json()["id"]

            idle_health = []
            with httpx.Client(base_url=url, timeout=300) as c:
                for _ in range(50):  # /healthz with nothing else going on, for the ratio
                    started = time.perf_counter()
                    c.get("/healthz")
                    idle_health.append(time.perf_counter() - started)
            baseline = Load(url, who, apps, upload_id)
            baseline.run(1, 3)
            loaded = Load(url, who, apps, upload_id)
            # The poller is a process of its own: in a thread it would queue for this process's GIL behind
            # the 16 clients and time them, not the server.
            spawn = multiprocessing.get_context("spawn")
            done, results = spawn.Event(), spawn.Queue()
            poller = spawn.Process(target=poll_health, args=(url, done, results))
            poller.start()
            started = time.perf_counter()
            loaded.run(args.clients, args.requests)
            wall = time.perf_counter() - started
            done.set()
            health, codes = results.get(timeout=120)
            health_status = Counter(codes)
            poller.join()

    print(f"{args.clients} concurrent clients x {args.requests} requests, one user, embedded SQLite; "
          f"wall {wall:.1f} s")
    print(f"{'kind':<12}{'n':>5}{'base p50':>10}{'base p99':>10}{'load p50':>10}{'load p99':>10}{'p99 ratio':>11}"
          "   (ms)")
    for kind in KINDS:
        b, lo = baseline.latency[kind], loaded.latency[kind]
        ratio = _pct(lo, 0.99) / _pct(b, 0.99) if b and lo else float("nan")
        print(f"{kind:<12}{len(lo):>5}{_pct(b, .5):>10.0f}{_pct(b, .99):>10.0f}{_pct(lo, .5):>10.0f}"
              f"{_pct(lo, .99):>10.0f}{ratio:>10.1f}x")
    print(f"/healthz idle:       n={len(idle_health)} p50 {_pct(idle_health, .5):.1f} ms, "
          f"p99 {_pct(idle_health, .99):.1f} ms")
    print(f"/healthz under load: n={len(health)} p50 {_pct(health, .5):.1f} ms, p99 {_pct(health, .99):.1f} ms, "
          f"max {max(health) * 1000:.1f} ms, statuses {dict(health_status)}")
    if health:
        print(f"/healthz p99 < 100 ms: {'yes' if _pct(health, .99) < 100 else 'NO'}; mean "
              f"{statistics.mean(health) * 1000:.1f} ms; p99 ratio load/idle "
              f"{_pct(health, .99) / _pct(idle_health, .99):.1f}x")
    print(f"baseline statuses: {dict(baseline.status)}")
    print(f"loaded statuses:   {dict(loaded.status)}")
    print("loaded, per kind: " + "; ".join(f"{k} {dict(loaded.by_kind[k])}" for k in KINDS))


if __name__ == "__main__":
    main()
