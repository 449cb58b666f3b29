"""The last-use clock read from the audit log: ``retention.clock.advance`` over many events against the bare
read of the same events (the query it starts with), and an incremental run after new events.

    python benchmarks/bench_retention.py [--events 200000] [--datasets 200] [--files 50]

Setup (untimed): a fresh hub under /tmp (embedded SQLite); --datasets datasets of one released version of
--files files each; --events audit events inserted in bulk, a quarter of them downloads (``archive.download
.started`` of a random file), a few applications and releases, the rest other actions the clock skips.
(a) the bare read: the clock's own SELECT of the use events, all in one go;
(b) ``clock.catch_up`` from an empty cursor over all of them (every use resolved to versions, clocks moved);
(c) an incremental run: 1000 new events after (b).

Not a test. Absolute numbers swing on a shared machine; read the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid

from _support import build_hub, fresh_dir
from sqlalchemy import insert, select, update

from strongroom.archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from strongroom.audit.models import AuditEvent, AuditHead
from strongroom.audit.service import Actor
from strongroom.db import transaction, utcnow
from strongroom.identity import service as identity
from strongroom.projects import service as projects
from strongroom.retention import clock


def seed(hub, datasets: int, files: int) -> tuple[list[str], list[str]]:
    import datetime as dt

    with transaction(hub.sessions) as s:
        user = identity.create_local_user(s, Actor.system("bench"), username="pi", display_name="Pi",
                                          password="correct horse battery staple", email="pi@example.org")
        project = projects.create_project(s, Actor.system("bench"), slug="bench", name="Bench", pi="pi",
                                          ethics_ref="B", end_date=dt.date.today() + dt.timedelta(days=365))
        ds_ids = [f"SRD-B{i:05d}" for i in range(datasets)]
        s.execute(insert(Dataset), [{"id": d, "project_id": project.id, "title": d, "created_by": user.id}
                                    for d in ds_ids])
        s.execute(insert(DatasetVersion), [{"dataset_id": d, "number": 1, "state": "released", "file_count": files,
                                            "released_at": utcnow()} for d in ds_ids])
        versions = {d: v for d, v in s.execute(select(DatasetVersion.dataset_id, DatasetVersion.id))}
        file_rows, members = [], []
        for d in ds_ids:
            for k in range(files):
                fid = f"SRF-{d[5:]}-{k:04d}"
                file_rows.append({"id": fid, "project_id": project.id, "uploader_id": user.id, "path": f"{k}.dcm",
                                  "state": "ready", "upload_size": 1})
                members.append({"version_id": versions[d], "file_id": fid})
        for start in range(0, len(file_rows), 20_000):
            s.execute(insert(ArchiveFile), file_rows[start:start + 20_000])
            s.execute(insert(DatasetFile), members[start:start + 20_000])
        return ds_ids, [r["id"] for r in file_rows]


def add_events(hub, n: int, ds_ids: list[str], file_ids: list[str], rng: random.Random) -> None:
    with transaction(hub.sessions) as s:
        seq = s.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0
        rows, now = [], utcnow()
        for _ in range(n):
            seq += 1
            r = rng.random()
            if r < 0.25:
                action, target, details = "archive.download.started", f"file:{rng.choice(file_ids)}", {"mode": "c4gh"}
            elif r < 0.26:
                action, target, details = "catalog.entry.published", f"dataset:{rng.choice(ds_ids)}", {}
            else:
                action, target, details = "identity.login", None, {}
            rows.append({"seq": seq, "at": now, "action": action, "outcome": "ok", "actor": "bench",
                         "target": target, "details": details, "prev_hash": "0", "hash": uuid.uuid4().hex})
        for start in range(0, len(rows), 20_000):
            s.execute(insert(AuditEvent), rows[start:start + 20_000])
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=seq))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--files", type=int, default=50)
    args = parser.parse_args()
    rng = random.Random(12)
    with fresh_dir("sr-bench-retention") as d:
        bench = build_hub(d)
        hub = bench.hub
        ds_ids, file_ids = seed(hub, args.datasets, args.files)
        add_events(hub, args.events, ds_ids, file_ids, rng)
        with hub.sessions() as s:
            t = time.perf_counter()
            uses = len(s.execute(select(AuditEvent.seq, AuditEvent.action, AuditEvent.target, AuditEvent.project_id,
                                        AuditEvent.at, AuditEvent.details)
                                 .where(AuditEvent.action.in_(list(clock.USE_EVENTS)))).all())
            bare = time.perf_counter() - t
        with transaction(hub.sessions) as s:
            t = time.perf_counter()
            clock.catch_up(s, hub.settings.retention)
            full = time.perf_counter() - t
        add_events(hub, 1000, ds_ids, file_ids, rng)
        with transaction(hub.sessions) as s:
            t = time.perf_counter()
            clock.catch_up(s, hub.settings.retention)
            incremental = time.perf_counter() - t
    print(f"{args.events} audit events, {uses} of them uses; {args.datasets} versions of {args.files} files")
    print(f"(a) bare read of the use events   {bare:8.3f} s")
    print(f"(b) clock.catch_up from scratch   {full:8.3f} s   {full / bare:6.1f}x (a)   "
          f"{full / max(uses, 1) * 1e6:7.1f} µs per use")
    print(f"(c) 1000 new events, incremental  {incremental:8.3f} s   {incremental / full * 100:6.2f} % of (b)")


if __name__ == "__main__":
    main()
