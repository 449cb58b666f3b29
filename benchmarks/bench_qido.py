"""QIDO-RS latency on a large index: ``dicomweb.query`` (what the routes run, results as DICOM JSON) against
a bare SQL query answering the same question on the same database, and the whole route in-process.

    python benchmarks/bench_qido.py [--instances 1000000] [--per-study 10] [--repeat 7]

Setup (untimed): a fresh hub under /tmp (embedded SQLite), one project with --instances published
instances (--per-study per study, 2 series per study, 10 studies per patient, study dates over 10 years),
inserted in bulk with their archive rows, then ANALYZE.
Timed, median of --repeat: each query through ``query.studies/series/instances`` (the page's keys, then the
counts and attributes of that page, then DICOM JSON) vs the one bare SQL statement that finds the same keys;
and ``GET /dicomweb/projects/{slug}/studies`` in-process (token check, scope, query, JSON).

Not a test. Absolute numbers swing on a shared machine; read the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from collections.abc import Callable

from _support import build_hub, fresh_dir, person_with_project
from fastapi.testclient import TestClient
from sqlalchemy import insert, text

from strongroom.archive.models import ArchiveFile
from strongroom.db import transaction, utcnow
from strongroom.dicomweb import query
from strongroom.dicomweb.attributes import INSTANCE, SERIES, STUDY
from strongroom.imaging.models import ImportBatch, ImportedInstance
from strongroom.projects.models import Project


def seed(hub, slug: str, n: int, per_study: int) -> None:
    now, start = utcnow(), dt.date(2015, 1, 1)
    with transaction(hub.sessions) as s:
        project = s.query(Project).filter_by(slug=slug).one()
        s.add(ImportBatch(id="SRI-BENCH", project_id=project.id, source="bulk", origin="bench", state="closed"))
        s.flush()
        owner = project.pi_id
        for lo in range(0, n, 20_000):
            files, rows = [], []
            for i in range(lo, min(lo + 20_000, n)):
                study, k = divmod(i, per_study)
                series = k % 2
                fid = f"SRF-{i:012d}"
                files.append({"id": fid, "project_id": project.id, "uploader_id": owner, "path": f"{i}.dcm",
                              "upload_size": 1, "state": "ready"})
                rows.append({
                    "project_id": project.id, "batch_id": "SRI-BENCH", "file_id": fid, "state": "published",
                    "sop_instance_uid": f"2.25.{i}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                    "study_uid": f"2.25.9{study}", "series_uid": f"2.25.8{study}.{series}",
                    "patient_pseudonym": f"P{study // 10:08d}", "patient_name": f"P{study // 10:08d}",
                    "modality": "CT" if study % 3 else "MR", "body_part": "CHEST",
                    "study_date": (start + dt.timedelta(days=study % 3650)).strftime("%Y%m%d"),
                    "study_time": "080000", "accession_number": f"A{study:09d}", "series_number": series + 1,
                    "instance_number": k // 2 + 1, "rows": 512, "columns": 512, "number_of_frames": 1,
                    "transfer_syntax_uid": "1.2.840.10008.1.2.1", "pixel_offset": 2000,
                    "frames": [[1, 2012, 524288]], "index_version": 1, "size": 526_000, "published_version": 1,
                    "created_at": now})
            s.execute(insert(ArchiveFile), files)
            s.execute(insert(ImportedInstance), rows)
    with hub.sessions() as s:
        s.execute(text("ANALYZE"))
        s.commit()


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--per-study", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with fresh_dir("bench-qido-") as directory:
        bench = build_hub(directory)
        hub = bench.hub
        token = person_with_project(hub, "olga", "big")
        t0 = time.perf_counter()
        seed(hub, "big", args.instances, args.per_study)
        print(f"seeded {args.instances:,} instances in {time.perf_counter() - t0:.0f} s (untimed)")
        studies = args.instances // args.per_study
        mid = studies // 2
        with hub.sessions() as s:
            project_id = s.query(Project.id).filter_by(slug="big").scalar()
        scope = query.Scope(project_id, "big", None)
        pid = project_id.hex if hub.settings.effective_database_url.startswith("sqlite") else str(project_id)
        base = "http://hub/dicomweb/projects/big"
        cases = [
            ("studies, first page (limit 100)", STUDY, [], {},
             "SELECT study_uid FROM imaging_instances WHERE project_id = :p GROUP BY study_uid "
             "ORDER BY study_uid LIMIT 100"),
            ("studies, page at offset 50 000", STUDY, [("offset", "50000")], {},
             "SELECT study_uid FROM imaging_instances WHERE project_id = :p GROUP BY study_uid "
             "ORDER BY study_uid LIMIT 100 OFFSET 50000"),
            ("studies of one PatientID", STUDY, [("PatientID", f"P{mid // 10:08d}")], {},
             "SELECT study_uid FROM imaging_instances WHERE project_id = :p AND "
             f"patient_pseudonym = 'P{mid // 10:08d}' GROUP BY study_uid"),
            ("studies, StudyDate one week", STUDY, [("StudyDate", "20200101-20200107")], {},
             "SELECT study_uid FROM imaging_instances WHERE project_id = :p AND study_date BETWEEN '20200101' "
             "AND '20200107' GROUP BY study_uid ORDER BY study_uid LIMIT 100"),
            ("studies, AccessionNumber", STUDY, [("AccessionNumber", f"A{mid:09d}")], {},
             f"SELECT study_uid FROM imaging_instances WHERE project_id = :p AND accession_number = 'A{mid:09d}' "
             "GROUP BY study_uid"),
            ("series of one study", SERIES, [], {"study": f"2.25.9{mid}"},
             f"SELECT series_uid FROM imaging_instances WHERE project_id = :p AND study_uid = '2.25.9{mid}' "
             "GROUP BY series_uid"),
            ("instances of one series", INSTANCE, [], {"study": f"2.25.9{mid}", "series_uid": f"2.25.8{mid}.0"},
             f"SELECT * FROM imaging_instances WHERE project_id = :p AND series_uid = '2.25.8{mid}.0' "
             "ORDER BY instance_number"),
            ("instances, first page", INSTANCE, [], {},
             "SELECT * FROM imaging_instances WHERE project_id = :p ORDER BY id LIMIT 100"),
            ("instance by SOPInstanceUID", INSTANCE, [("SOPInstanceUID", f"2.25.{mid * 10}")], {},
             f"SELECT * FROM imaging_instances WHERE project_id = :p AND sop_instance_uid = '2.25.{mid * 10}'"),
        ]
        print(f"\n{'query':<36} {'dicomweb.query':>15} {'bare SQL':>10} {'ratio':>7}")
        with hub.sessions() as s:
            for name, level, params, keys, sql in cases:
                q = query.parse(params, level)
                run = {STUDY: query.studies, SERIES: query.series, INSTANCE: query.instances}[level]
                ours = median_ms(lambda run=run, q=q, keys=keys: run(s, scope, q, base, **keys), args.repeat)
                bare = median_ms(lambda sql=sql: s.execute(text(sql), {"p": pid}).all(), args.repeat)
                print(f"{name:<36} {ours:>12.1f} ms {bare:>7.1f} ms {ours / max(bare, 0.001):>6.1f}x")
        client = TestClient(bench.app)
        headers = {"Authorization": f"Bearer {token}"}
        route = median_ms(lambda: client.get("/dicomweb/projects/big/studies", headers=headers).raise_for_status(),
                          args.repeat)
        print(f"\nGET /dicomweb/projects/big/studies (in-process, limit 100): {route:.1f} ms")


if __name__ == "__main__":
    main()
