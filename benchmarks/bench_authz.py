"""The API's authorisation decision under 16 concurrent clients: how long the token check and the archive's read
check take on the server, and what the clients see, against a same-run baseline.

    python benchmarks/bench_authz.py [--clients 16] [--requests 50] [--rounds 3] [--files 40] [--projects 5]
                                     [--old-src /tmp/old/src]

Setup (untimed): a fresh hub under /tmp (embedded SQLite, local object storage); project ``source`` (PI olga)
with --files sealed files in a released dataset, shared read-only into project ``reader`` (PI bob); bob is also a
member of --projects other projects. Bob's API token (all data scopes) then asks for file metadata,
``GET /api/v1/files/{id}``, whose only work besides the framework is the authorisation decision: the bearer
token (``identity.service.authenticate_token``: lookup, hash, revocation/expiry/account checks, its use audit)
and the read check (``archive.authz.authorize_read``: memberships, roles, shares, grants, holds) — for a file of
bob's own project (owner) and for a file of the shared dataset (share: the costlier path).

The hub runs under uvicorn in a separate process (as ``strongroom serve``), once per configuration, all on the
same database:

- ``window``: the current code with ``[security] token_use_audit = "window"`` (the default);
- ``every``: the current code with ``token_use_audit = "every"`` (a token.used event and a write per request);
- ``old`` (with --old-src): the code from that ``src`` tree (e.g. ``git archive <rev> src | tar -x -C /tmp/old``).

Server side the two functions are timed by wrappers this script installs in the server process: wall clock
(``time.perf_counter`` around each call, inside the worker thread, so waiting for the GIL held by the other 15
requests in flight, or for a database lock, counts) and the CPU time of that thread (``time.thread_time``: the
decision's own work). The per-request sum of both functions is "decision". Client side: 16 threads with a
keep-alive httpx client each, every request timed. Baseline in the same run: ``GET /healthz`` (no token, no
database) under the same 16 clients, and the *ceiling*: right after each read check, in the same worker thread,
0.3 ms of pure-Python CPU work (no I/O, no lock) timed by the wall clock — what a decision that short costs
under the same load, whatever it does. The cyclic collector's pauses are recorded (``gc.callbacks``) and those
landing inside a decision counted. Rounds rotate the order of servers and requests; the figures are over all
rounds. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import datetime as dt
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from _support import (
    build_hub,
    free_port,
    fresh_dir,
    make_settings,
    person_with_project,
    principal_for,
    wait_until_answering,
)

TIMINGS_PATH = "/__bench/authz-timings"
CEILING_CPU = 0.0003  # seconds of CPU of the ceiling probe: about the cached decision's own CPU time (p50)


# -- server process: the app with probes around the two functions ------------------------------------------
def _serve(var_dir: str, port: str, secret: str) -> None:
    import uvicorn

    from strongroom.app import create_app
    from strongroom.logs import configure

    settings = make_settings(Path(var_dir), int(port), secret)
    configure(settings.log_level, settings.log_json)
    application = create_app(settings, run_jobs=False)
    current: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("bench", default=None)
    samples: dict[str, list[float]] = {"token": [], "authz": [], "decision": [], "decision_cpu": [], "handler": [],
                                       "decision_gc": [], "gc_pause": [], "ceiling": []}
    gc_started = threading.local()

    def on_gc(phase: str, info: dict[str, int]) -> None:
        # the cyclic collector runs in the thread whose allocation triggered it: its pause is charged to the
        # decision (wall and thread CPU) when it lands inside one
        if phase == "start":
            gc_started.at = time.perf_counter()
            return
        pause = time.perf_counter() - getattr(gc_started, "at", time.perf_counter())
        samples["gc_pause"].append(pause)
        acc = current.get()
        if acc is not None and acc.get("inside"):
            acc["gc"] = acc.get("gc", 0.0) + pause

    gc.callbacks.append(on_gc)

    def ceiling(acc: dict[str, float]) -> None:
        """The same thread, right after the decision: CEILING_CPU seconds of pure-Python CPU work (no I/O, no lock),
        timed by the wall clock — what any decision that short costs under the same load (the GIL held by the other
        requests in flight, a loaded CPU)."""
        start, cpu, spins = time.perf_counter(), time.thread_time(), 0
        while time.thread_time() - cpu < CEILING_CPU:
            spins += 1
        acc["ceiling"] = time.perf_counter() - start

    def probe(name: str, fn):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            start, cpu = time.perf_counter(), time.thread_time()
            acc = current.get()
            if acc is not None:
                acc["inside"] = 1.0
            try:
                return fn(*args, **kwargs)
            finally:
                if acc is not None:
                    acc["inside"] = 0.0
                    acc[name] = acc.get(name, 0.0) + time.perf_counter() - start
                    acc["cpu"] = acc.get("cpu", 0.0) + time.thread_time() - cpu
                    if name == "authz":
                        ceiling(acc)
        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    originals = {}
    import strongroom.archive.authz as authz
    import strongroom.identity.service as identity
    originals["token"] = identity.authenticate_token
    originals["authz"] = authz.authorize_read
    wrapped = {name: probe(name, fn) for name, fn in originals.items()}
    for module in list(sys.modules.values()):  # every module that imported the functions by name
        if not (getattr(module, "__name__", "") or "").startswith("strongroom"):
            continue
        for name, fn in originals.items():
            attr = "authenticate_token" if name == "token" else "authorize_read"
            if getattr(module, attr, None) is fn:
                setattr(module, attr, wrapped[name])

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"] == TIMINGS_PATH:
            body = json.dumps(samples).encode()
            for values in samples.values():
                values.clear()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http":
            await application(scope, receive, send)
            return
        acc: dict[str, float] = {}
        token = current.set(acc)
        start = time.perf_counter()
        try:
            await application(scope, receive, send)
        finally:
            current.reset(token)
            samples["handler"].append(time.perf_counter() - start)
            if "token" in acc or "authz" in acc:
                samples["token"].append(acc.get("token", 0.0))
                samples["authz"].append(acc.get("authz", 0.0))
                samples["decision"].append(acc.get("token", 0.0) + acc.get("authz", 0.0))
                samples["decision_cpu"].append(acc.get("cpu", 0.0))
                samples["decision_gc"].append(acc.get("gc", 0.0))
                if "ceiling" in acc:
                    samples["ceiling"].append(acc["ceiling"])

    uvicorn.run(app, host="127.0.0.1", port=int(port), access_log=False, log_config=None, proxy_headers=False)


@contextlib.contextmanager
def serving(var_dir: Path, secret: str, src: str, env_extra: dict[str, str], log_path: Path) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.path.abspath(src), **env_extra)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve", str(var_dir), str(port),
                                 secret], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/healthz", proc, log_path, timeout=900)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- setup ----------------------------------------------------------------------------------------------------
def setup(bench, n_files: int, n_projects: int) -> tuple[str, str, str]:
    """Bob's token, a file of his own project, a file of the dataset shared into it."""
    from sqlalchemy import select

    from strongroom.archive import service as archive
    from strongroom.archive.backend import storage_for
    from strongroom.archive.keys import hub_keys
    from strongroom.audit.service import Actor
    from strongroom.db import transaction
    from strongroom.identity.models import User
    from strongroom.projects import service as projects
    from strongroom.projects.models import Project

    hub = bench.hub
    olga = person_with_project(hub, "olga", "source")
    bob = person_with_project(hub, "bob", "reader")
    with transaction(hub.sessions) as s:
        bob_id = s.scalar(select(User.id).where(User.email == "bob@example.org"))
        olga_id = s.scalar(select(User.id).where(User.email == "olga@example.org"))
        for i in range(n_projects):  # memberships a real user has: each is read by a read check
            projects.create_project(s, Actor.system("bench"), slug=f"other{i}", name=f"Other {i}", pi="bob",
                                    ethics_ref="BENCH-1", end_date=dt.date.today() + dt.timedelta(days=365))
    ids: dict[str, list[str]] = {"source": [], "reader": []}
    with tempfile.TemporaryDirectory() as tmp, transaction(hub.sessions) as s:
        keys, storage = hub_keys(hub, s), storage_for(hub)
        for slug, uploader, count in (("source", olga_id, n_files), ("reader", bob_id, 2)):
            project = s.scalar(select(Project).where(Project.slug == slug))
            for i in range(count):
                src = Path(tmp) / "f"
                src.write_bytes(os.urandom(2048))
                sealed = archive.seal_into_storage(keys, storage, project.id, archive.new_accession("SRF"), str(src))
                ids[slug].append(archive.add_sealed_file(s, project.id, uploader, f"f{i}.bin", sealed).id)
    principal = principal_for(hub, olga)
    with transaction(hub.sessions) as s:
        access = projects.open_project(s, principal, "source")
        ds = archive.create_dataset(s, principal, access, title="Shared", files=ids["source"])
        s.flush()
        archive.release_version(s, principal, ds.id, 1)
        projects.change_setting(s, principal, access, "external_sharing", True, fresh_minutes=60)
    with transaction(hub.sessions) as s:
        archive.share_dataset(s, principal, ds.id, "reader", fresh_minutes=60)
    return bob, ids["reader"][0], ids["source"][len(ids["source"]) // 2]


# -- client ---------------------------------------------------------------------------------------------------
def run_clients(url: str, headers: dict[str, str], clients: int, requests: int,
                failures: list[int]) -> list[float]:
    """Latencies of every request; the status of each one that was not 200 goes into ``failures``."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def worker() -> None:
        mine = []
        with httpx.Client(headers=headers, timeout=60) as c:
            c.get(url)  # connect outside the timing
            barrier.wait()
            for _ in range(requests):
                start = time.perf_counter()
                r = c.get(url)
                mine.append(time.perf_counter() - start)
                if r.status_code != 200:
                    failures.append(r.status_code)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def line(label: str, values: list[float]) -> str:
    return (f"{label:<46} p50 {pct(values, 50):7.2f}  p95 {pct(values, 95):7.2f}  p99 {pct(values, 99):7.2f} ms"
            f"  (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=50, help="per client, per round and request kind")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--projects", type=int, default=5, help="bob's other memberships")
    parser.add_argument("--old-src", default="", help="also serve this src tree (the code before a change)")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent.parent / "src")
    configs = {"window": (here, {"STRONGROOM_SECURITY__TOKEN_USE_AUDIT": "window"}),
               "every": (here, {"STRONGROOM_SECURITY__TOKEN_USE_AUDIT": "every"})}
    if args.old_src:
        configs["old"] = (args.old_src, {})
    load_before = os.getloadavg()
    with fresh_dir("bench-authz-") as directory, contextlib.ExitStack() as stack:
        bench = build_hub(directory)
        token, own_file, shared_file = setup(bench, args.files, args.projects)
        servers = {name: stack.enter_context(serving(bench.settings.var_dir, bench.secret, src, env,
                                                     directory / f"{name}.log"))
                   for name, (src, env) in configs.items()}
        auth = {"Authorization": f"Bearer {token}"}
        kinds = {"healthz": ("/healthz", {}), "owner": (f"/api/v1/files/{own_file}", auth),
                 "share": (f"/api/v1/files/{shared_file}", auth)}
        client: dict[tuple[str, str], list[float]] = {}
        server: dict[tuple[str, str], dict[str, list[float]]] = {}
        failed: dict[tuple[str, str], list[int]] = {}
        names = list(servers)
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                base = servers[name]
                for kind, (path, headers) in kinds.items():
                    httpx.get(base + TIMINGS_PATH).raise_for_status()  # reset
                    client.setdefault((name, kind), []).extend(
                        run_clients(base + path, headers, args.clients, args.requests,
                                    failed.setdefault((name, kind), [])))
                    got = httpx.get(base + TIMINGS_PATH).json()
                    for key, values in got.items():
                        server.setdefault((name, kind), {}).setdefault(key, []).extend(values)
        with bench.hub.sessions() as s:
            from sqlalchemy import func, select

            from strongroom.audit.models import AuditEvent

            used = s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "token.used"))
    load_after = os.getloadavg()
    print(f"{args.clients} clients x {args.requests} requests x {args.rounds} rounds per cell; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; token.used events written: {used}")
    for name in names:
        print(f"\n== server: {name}" + (f" ({configs[name][0]})" if name == "old" else
                                         f" (token_use_audit = {name!r})"))
        print(line("client  GET /healthz (baseline)", client[(name, "healthz")]))
        for kind in ("owner", "share"):
            print(line(f"client  GET /files/{{id}} ({kind})", client[(name, kind)])
                  + (f"  NOT 200: {len(failed[(name, kind)])} ({sorted(set(failed[(name, kind)]))})"
                     if failed[(name, kind)] else ""))
            s_ = server[(name, kind)]
            print(line(f"server  decision = token + read check ({kind})", s_["decision"]))
            print(line("server  decision, CPU time of its thread", s_["decision_cpu"]))
            print(line("server    token check (authenticate_token)", s_["token"]))
            print(line("server    read check (authorize_read)", s_["authz"]))
            print(line("server  whole request in the app", s_["handler"]))
            if s_.get("ceiling"):
                print(line(f"server  ceiling: {CEILING_CPU * 1000:.1f} ms of pure-Python CPU, wall", s_["ceiling"]))
            gcd = s_.get("decision_gc", [])
            if gcd:
                with_gc = sum(1 for v in gcd if v > 0)
                order = sorted(range(len(gcd)), key=lambda i: s_["decision_cpu"][i])
                tail = order[int(len(order) * 0.99):]
                print(f"server  decisions with a GC pause inside: {with_gc}/{len(gcd)}; of the slowest 1 % by CPU: "
                      f"{sum(1 for i in tail if gcd[i] > 0)}/{len(tail)}")
                print(line("server  decision CPU minus its GC pauses",
                           [c - g for c, g in zip(s_["decision_cpu"], gcd, strict=True)]))
                print(line("server  GC pauses (all, in this cell)", s_["gc_pause"]))
        h = statistics.median(server[(name, "healthz")]["handler"]) * 1000
        print(f"server  /healthz whole request median {h:.2f} ms")
        for kind in ("owner", "share"):
            ratio = pct(client[(name, kind)], 50) / pct(client[(name, "healthz")], 50)
            print(f"ratio client p50 /files ({kind}) / /healthz = {ratio:.2f};  "
                  f"decision p99 {pct(server[(name, kind)]['decision'], 99):.2f} ms wall, "
                  f"{pct(server[(name, kind)]['decision_cpu'], 99):.2f} ms CPU (target < 5 ms)")
    if "old" in servers:
        for kind in ("owner", "share"):
            for what in ("decision", "decision_cpu"):
                old, new = (pct(server[(n, kind)][what], 99) for n in ("old", "window"))
                print(f"{what} p99 ({kind}): old {old:.2f} ms -> window {new:.2f} ms  (old/new {old / new:.2f})")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        _serve(*sys.argv[2:])
    else:
        main()
