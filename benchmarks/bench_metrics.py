"""The metrics page with many datasets: ``stats.service.compute`` (one SQL aggregate per figure) over all
published datasets, against the naive way (the same figures computed dataset by dataset), and the whole
``GET /stats`` page cold and cached.

    python benchmarks/bench_metrics.py [--datasets 2000] [--instances 40] [--applications 4] [--downloads 4]

Setup (untimed): a fresh hub under /tmp (embedded SQLite), --datasets published datasets, each with a
released version of --instances DICOM instances (CT/MR/SM/SEG, 4 series), --applications decided
applications and --downloads completed downloads, inserted in bulk.
(a) ``compute`` over the first 1 % of the datasets;  (b) ``compute`` over all of them;
(c) the naive way: ``compute`` for each dataset on its own (timed on 100 datasets, scaled up);
(d) ``GET /stats`` in-process, cold (cache emptied) and (e) cached. Queries are counted for (a) and (b).

Not a test. Absolute numbers swing on a shared machine; read the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
import uuid

from _support import build_hub, fresh_dir
from fastapi.testclient import TestClient
from sqlalchemy import event, insert, select

from strongroom.access.models import Application, ApplicationEvent
from strongroom.archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction, utcnow
from strongroom.identity import service as identity
from strongroom.imaging.models import ImportBatch, ImportedInstance
from strongroom.projects import service as projects
from strongroom.stats import service

MODALITIES = [("CT", "CHEST"), ("MR", "BRAIN"), ("SM", "BREAST"), ("SEG", "CHEST")]


def seed(hub, n: int, per: int, apps: int, downloads: int) -> list[str]:
    now = utcnow()
    with transaction(hub.sessions) as s:
        owner = identity.create_local_user(s, Actor.system("bench"), username="olga", password="x" * 16 + "long pw",
                                           display_name="Olga", email="olga@uu.se")
        users = [identity.create_local_user(s, Actor.system("bench"), username=f"user{i}",
                                            password="x" * 16 + "long pw", display_name=f"U{i}",
                                            email=f"u{i}@uni{i}.de") for i in range(20)]
        project = projects.create_project(s, Actor.system("bench"), slug="big", name="Big", pi="olga",
                                          ethics_ref="E", end_date=dt.date.today() + dt.timedelta(days=365))
        s.add(ImportBatch(id="SRI-BENCH", project_id=project.id, source="bulk", origin="bench", state="closed"))
        s.flush()
        ids = [f"SRD-B{i:06d}" for i in range(n)]
        s.execute(insert(Dataset), [{"id": d, "project_id": project.id, "title": f"Dataset {d}",
                                     "created_by": owner.id} for d in ids])
        s.execute(insert(DatasetVersion), [{"dataset_id": d, "number": 1, "state": "released", "file_count": per,
                                            "total_bytes": per * 500_000, "released_at": now} for d in ids])
        versions = dict(s.execute(select(DatasetVersion.dataset_id, DatasetVersion.id)).tuples().all())
        files, members, instances = [], [], []
        for d in ids:
            for j in range(per):
                fid = f"SRF-{d}-{j:04d}"
                modality, part = MODALITIES[j % 4]
                files.append({"id": fid, "project_id": project.id, "uploader_id": owner.id, "path": f"{j}.dcm",
                              "upload_size": 1, "state": "ready"})
                members.append({"version_id": versions[d], "file_id": fid})
                instances.append({"project_id": project.id, "batch_id": "SRI-BENCH", "file_id": fid,
                                  "state": "published", "sop_instance_uid": f"{d}.{j}", "modality": modality,
                                  "body_part": part, "series_uid": f"{d}.s{j % 4}", "study_uid": f"{d}.st{j % 2}",
                                  "patient_pseudonym": f"{d}.p{j % 3}", "size": 500_000, "created_at": now})
        for table, rows in ((ArchiveFile, files), (DatasetFile, members), (ImportedInstance, instances)):
            for start in range(0, len(rows), 20_000):
                s.execute(insert(table), rows[start:start + 20_000])
        s.execute(insert(CatalogEntry), [{"dataset_id": d, "slug": d.lower(), "title": f"Dataset {d}",
                                          "published": True, "published_at": now, "created_by": owner.id,
                                          "updated_at": now, "created_at": now} for d in ids])
        app_rows, events = [], []
        for d in ids:
            for k in range(apps):
                app_id = f"SRA-{d}-{k}"
                app_rows.append({"id": app_id, "applicant_id": users[k % 20].id, "dataset_id": d,
                                 "state": "approved", "created_at": now, "updated_at": now})
                for seq, (kind, days) in enumerate((("created", 0), ("submitted", 0), ("approved", 3 + k)), 1):
                    events.append({"application_id": app_id, "seq": seq, "type": kind,
                                   "at": now - dt.timedelta(days=40 - days), "payload": {}})
        s.execute(insert(Application), app_rows)
        s.execute(insert(ApplicationEvent), events)
        seq = s.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)) or 0
        audit_rows = []
        for d in ids:
            for k in range(downloads):
                seq += 1
                audit_rows.append({"seq": seq, "at": now, "action": "archive.download.completed", "outcome": "ok",
                                   "actor_id": users[k % 20].id, "actor": "bench", "target": f"file:SRF-{d}-0000",
                                   "details": {"bytes_sent": 1000}, "prev_hash": "0", "hash": uuid.uuid4().hex})
        for start in range(0, len(audit_rows), 20_000):
            s.execute(insert(AuditEvent), audit_rows[start:start + 20_000])
    return ids


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=40)
    parser.add_argument("--applications", type=int, default=4)
    parser.add_argument("--downloads", type=int, default=4)
    args = parser.parse_args()
    with fresh_dir("bench-metrics") as directory:
        bench = build_hub(directory)
        hub = bench.hub
        t0 = time.perf_counter()
        ids = seed(hub, args.datasets, args.instances, args.applications, args.downloads)
        print(f"setup: {len(ids)} datasets, {len(ids) * args.instances:,} instances, "
              f"{len(ids) * args.applications:,} applications, {len(ids) * args.downloads:,} downloads "
              f"in {time.perf_counter() - t0:.1f} s")
        engine = hub.sessions.kw["bind"]
        queries: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *a: queries.append(a[2]))
        few = ids[: max(1, len(ids) // 100)]

        def run(scope_ids: list[str]) -> None:
            with hub.sessions() as s:
                service.compute(s, select(Dataset.id).where(Dataset.id.in_(scope_ids)))

        def run_all() -> None:
            with hub.sessions() as s:
                m = service.compute(s, select(CatalogEntry.dataset_id).where(CatalogEntry.published.is_(True)))
                assert m.datasets == len(ids)

        queries.clear()
        a = timed(lambda: run(few))
        q_few = len(queries) // 3
        queries.clear()
        b = timed(run_all)
        q_all = len(queries) // 3
        sample = ids[:100]
        c_sample = timed(lambda: [run([d]) for d in sample], repeat=1)
        c = c_sample * len(ids) / len(sample)
        client = TestClient(bench.app)
        service.CACHE_SECONDS = 60.0

        def cold() -> None:
            service._cache.clear()
            assert client.get("/stats").status_code == 200

        d = timed(cold)
        e = timed(lambda: client.get("/stats"), repeat=5)
        print(f"(a) compute over {len(few):>5} datasets          {a * 1000:8.1f} ms   {q_few} queries")
        print(f"(b) compute over {len(ids):>5} datasets          {b * 1000:8.1f} ms   {q_all} queries"
              f"   ({b / a:.1f}x (a) for {len(ids) / len(few):.0f}x the datasets)")
        print(f"(c) naive: one dataset at a time (scaled)  {c * 1000:8.1f} ms   ({c / b:.1f}x (b))")
        print(f"(d) GET /stats, cold                      {d * 1000:8.1f} ms   ({d / b:.2f}x (b))")
        print(f"(e) GET /stats, cached                    {e * 1000:8.1f} ms   ({d / e:.1f}x faster than (d))")


if __name__ == "__main__":
    main()
