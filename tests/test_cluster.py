"""A multi-host deployment under faults, short form (tests/support/cluster.py builds it; the scenario and its
checks are tests/support/cluster_scenario.py; benchmarks/bench_cluster.py runs the full size).

Twelve network namespaces on one machine: HAProxy in front of two `strongroom serve --no-jobs`, three
`strongroom worker`s, `strongroom dicom serve`, PostgreSQL 15 and SeaweedFS (master, two volume servers with
replication 001, filer + S3). 200 uploads, 200 DICOM instances, 10 concurrent resumable downloads and two
API readers run while the harness kills a worker, kills a web server, kills a volume server, restarts
PostgreSQL (immediate stop) and partitions a worker from the database. Afterwards nothing may be lost or
doubled, every checksum must match when read back, every acknowledged DICOM instance must be archived
once, the audit chain must verify, every download a client received whole must have its one
`archive.download.completed` event (those that ended while PostgreSQL was down come through the audit
outbox), and every client must have finished (by retrying).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cluster import Cluster, missing
from support.cluster_scenario import Plan, run, summary, svg_chart

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # not under pytest's basetemp (mode 0700): the postgres user must reach its data directory
    base = Path(tempfile.mkdtemp(prefix="srcl-test-"))
    try:
        with Cluster.build(base) as c:  # torn down (processes, namespaces, bridge) whatever happens
            yield c
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_network_is_closed_but_for_what_each_host_needs(cluster: Cluster) -> None:
    assert cluster.can_connect("lb", "web1", 8000)
    assert cluster.can_connect("worker1", "pg", 5432)
    assert not cluster.can_connect("worker1", "web1", 8000)  # workers serve nothing and call no web server
    assert not cluster.can_connect("web1", "vol1", cluster.weed_ports["vol1"])  # only the S3 gateway
    assert not cluster.can_connect("dicom", "master", cluster.weed_ports["master"])
    with cluster.partition("worker2", "pg"):
        assert not cluster.can_connect("worker2", "pg", 5432)
        assert cluster.can_connect("worker3", "pg", 5432)
    assert cluster.can_connect("worker2", "pg", 5432)


def test_cluster_keeps_every_promise_under_faults(cluster: Cluster, tmp_path: Path) -> None:
    report = run(cluster, Plan(), tmp_path)
    (tmp_path / "cluster.svg").write_text(svg_chart(report, "short cluster scenario"))
    print(summary(report))
    assert not report.problems, summary(report)
    f = report.figures
    assert f["files lost"] == 0 and f["files duplicated"] == 0
    assert f["checksums verified (read back)"] == 200 + 10
    assert f["DICOM instances archived"] == f["DICOM instances acknowledged"] == 200
    assert f["DICOM duplicates"] == 0
    assert f["downloads completed"] >= 10
    assert f["audit events verified"] > 0
    # every completed download audited, the ones that ended while PostgreSQL was down included (the outbox)
    assert f["download completed events missing"] == 0 and f["download completed events unexplained"] == 0
    assert f["download completed events"] == (f["downloads completed (all phases)"]
                                               + f["completed events of responses cut on the way (client resumed)"]
                                               - f["downloads whose server was killed before it wrote the end"])
    assert f["downloads whose server was killed before it wrote the end"] <= 5  # one kill, a few in flight
    assert f["outbox events written twice"] == 0
    assert len(report.costs) == 5
