"""WADO-RS instance retrieval: Strongroom's DICOMweb (decrypting the crypt4gh archive in memory, every read
authorised and audited per study) against Orthanc serving the same instances, through the same httpx client.

    python benchmarks/bench_wado.py [--instances 200] [--rows 512] [--rounds 3] [--clients 1]

Orthanc and its DICOMweb plugin come from Debian (``scripts/install-bench-deps.sh``: ``orthanc``,
``orthanc-dicomweb``); without them the Orthanc rows are skipped with a message and Strongroom is measured
alone.

Setup (untimed): a fresh hub under /tmp (embedded SQLite, local object storage) with one project whose
downloads are open; --instances generated CT instances (--rows x --rows, 16-bit) imported with the bulk
importer (de-identification, verification, crypt4gh archive, metadata index, published dataset); the
archived de-identified plaintext of each instance is then stored into a throwaway Orthanc (its defaults:
SQLite index, files on disk uncompressed) so both serve byte-identical files. The hub runs under uvicorn in
a separate process, as ``strongroom serve`` does.

Timed, per round (order rotating; the figure is the median of the rounds): every instance fetched once,
sequentially over one keep-alive connection (--clients > 1: that many threads, each with its own client):

- (a) Strongroom ``GET /dicomweb/projects/{p}/studies/{s}/series/{se}/instances/{i}``,
  ``Accept: application/dicom`` (a single body);
- (b) the same, ``Accept: multipart/related; type="application/dicom"`` (the DICOMweb default);
- (c) Orthanc's DICOMweb plugin, the same WADO-RS URL and multipart Accept (its only instance format);
- (d) Orthanc REST ``GET /instances/{id}/file`` (a single body, straight from its storage area).

Every request says ``Accept-Encoding: identity``: httpx's default (``gzip, deflate``) makes Orthanc compress
each file on the fly (its ``HttpCompressionEnabled``), several times slower on this machine; (e) shows that
case for information. Ratios: a/d (single bodies) and b/c (WADO-RS multipart against WADO-RS multipart).
Bytes are checked equal to the archived plaintext before timing. Not a test; absolute numbers swing on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _support import build_hub, free_port, fresh_dir, person_with_project, serving, wait_until_answering

ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
MULTIPART = 'multipart/related; type="application/dicom"'


def orthanc_binary() -> str:
    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else "")


@contextlib.contextmanager
def orthanc(work: Path, binary: str) -> Iterator[str]:
    """A throwaway Orthanc on loopback (HTTP only, its DICOMweb plugin loaded when installed)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = work / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "bench-wado", "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "storage"),
        "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": False, "Plugins": [str(ORTHANC_PLUGIN)] if ORTHANC_PLUGIN.exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }))
    with (work / "orthanc.log").open("wb") as log:
        proc = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/system", proc, work / "orthanc.log", timeout=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def setup_hub(bench, folder: Path, n: int, rows: int) -> tuple[str, list[tuple[str, str, str, bytes]]]:
    """Import ``n`` generated CT instances into project "wado" (downloads open); returns the token and, per
    instance, (study, series, SOP instance UID, archived de-identified plaintext)."""
    from sqlalchemy import select

    from strongroom.archive import c4gh
    from strongroom.archive.backend import storage_for
    from strongroom.archive.keys import hub_keys
    from strongroom.archive.models import ArchiveFile
    from strongroom.db import transaction
    from strongroom.imaging import bulk, synthetic
    from strongroom.imaging.models import ImportedInstance
    from strongroom.projects.models import Project, ProjectSetting

    hub = bench.hub
    token = person_with_project(hub, "olga", "wado")
    with transaction(hub.sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == "wado"))
        assert project is not None
        project.quota_bytes = 1 << 40
        for key, value in (("deid_profile", {"retain_longitudinal": "modified"}), ("download_allowed", True)):
            s.add(ProjectSetting(project_id=project.id, key=key, value=value, changed_by=project.pi_id))
    folder.mkdir(parents=True)
    per_series = 50
    for i in range(n):
        study, k = divmod(i, per_series * 2)
        (folder / f"{i:06d}.dcm").write_bytes(synthetic.make_ct(i // 400, study, k // per_series + 1,
                                                                k % per_series + 1, rows=rows, columns=rows))
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "wado"), folder, workers=2)
    if report.archived != n:
        raise RuntimeError(f"imported {report.archived} of {n} instances")
    shutil.rmtree(folder)
    out = []
    storage = storage_for(hub)
    with hub.sessions() as s:
        secrets_ = hub_keys(hub, s).secrets
        for inst in s.scalars(select(ImportedInstance).order_by(ImportedInstance.id)):
            f = s.get(ArchiveFile, inst.file_id)
            assert f is not None and f.header is not None and f.body_key is not None
            with storage.open_reader(f.body_key) as body:
                plain = b"".join(c4gh.decrypt_stream(io.BytesIO(f.header + body.read()), secrets_))
            out.append((inst.study_uid, inst.series_uid, inst.sop_instance_uid, plain))
    return token, out


def multipart_dicom(response: httpx.Response) -> list[bytes]:
    """The parts of a multipart/related body (enough of RFC 2046 for one server's answer)."""
    ctype = response.headers["content-type"]
    boundary = next(p.split("=", 1)[1].strip('"') for p in ctype.split(";") if p.strip().startswith("boundary="))
    parts = []
    for chunk in response.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body.removesuffix(b"\r\n"))
    return parts


def run(fetch: Callable[[httpx.Client, int], int], count: int, clients: int, headers: dict[str, str]) -> float:
    """Instances per second: every instance fetched once, over ``clients`` keep-alive connections."""
    pool = [httpx.Client(headers={"Accept-Encoding": "identity", **headers}, timeout=120) for _ in range(clients)]
    try:
        for c in pool:  # connect before timing
            fetch(c, 0)
        t0 = time.perf_counter()
        if clients == 1:
            for i in range(count):
                fetch(pool[0], i)
        else:
            with ThreadPoolExecutor(clients) as ex:
                list(ex.map(lambda i: fetch(pool[i % clients], i), range(count)))
        return count / (time.perf_counter() - t0)
    finally:
        for c in pool:
            c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    binary = orthanc_binary()
    with fresh_dir("bench-wado-") as directory:
        bench = build_hub(directory)
        t0 = time.perf_counter()
        token, instances = setup_hub(bench, directory / "in", args.instances, args.rows)
        size = sum(len(p) for *_, p in instances) / len(instances)
        print(f"imported {len(instances)} instances of {size / 1e6:.2f} MB in {time.perf_counter() - t0:.0f} s "
              f"(untimed)")
        notes: list[str] = []
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(serving(bench, directory / "server.log"))
            base = f"{url}/dicomweb/projects/wado"
            auth = {"Authorization": f"Bearer {token}"}

            def path(i: int) -> str:
                study, series, sop, _ = instances[i]
                return f"/studies/{study}/series/{series}/instances/{sop}"

            def sr_single(c: httpx.Client, i: int) -> int:
                r = c.get(base + path(i), headers={"Accept": "application/dicom"})
                r.raise_for_status()
                return len(r.content)

            def sr_multi(c: httpx.Client, i: int) -> int:
                r = c.get(base + path(i), headers={"Accept": MULTIPART})
                r.raise_for_status()
                return len(r.content)

            variants: dict[str, tuple[Callable[[httpx.Client, int], int], dict[str, str]]] = {
                "(a) Strongroom WADO-RS, Accept: application/dicom": (sr_single, auth),
                "(b) Strongroom WADO-RS, multipart/related": (sr_multi, auth),
            }
            with httpx.Client(headers=auth, timeout=120) as c:  # bytes as archived, before any timing
                r = c.get(base + path(0), headers={"Accept": "application/dicom"})
                assert r.status_code == 200 and r.content == instances[0][3], r.status_code
                r = c.get(base + path(0), headers={"Accept": MULTIPART})
                assert multipart_dicom(r) == [instances[0][3]]
            if not binary:
                notes.append("Orthanc not installed (run scripts/install-bench-deps.sh: Debian packages orthanc, "
                             "orthanc-dicomweb): Strongroom measured alone")
            else:
                orthanc_url = stack.enter_context(orthanc(directory / "orthanc", binary))
                ids = []
                with httpx.Client(base_url=orthanc_url, timeout=120) as c:
                    for *_, plain in instances:
                        r = c.post("/instances", content=plain, headers={"Content-Type": "application/dicom"})
                        r.raise_for_status()
                        ids.append(r.json()["ID"])
                    assert c.get(f"/instances/{ids[0]}/file").content == instances[0][3]

                def or_file(c: httpx.Client, i: int) -> int:
                    r = c.get(f"{orthanc_url}/instances/{ids[i]}/file")
                    r.raise_for_status()
                    return len(r.content)

                variants["(d) Orthanc REST /instances/{id}/file"] = (or_file, {})
                variants["(e) diag: (d) with httpx's default Accept-Encoding: gzip"] = (
                    or_file, {"Accept-Encoding": "gzip, deflate"})
                if ORTHANC_PLUGIN.exists():
                    def or_multi(c: httpx.Client, i: int) -> int:
                        r = c.get(f"{orthanc_url}/dicom-web" + path(i), headers={"Accept": MULTIPART})
                        r.raise_for_status()
                        return len(r.content)

                    with httpx.Client(timeout=120) as c:
                        r = c.get(f"{orthanc_url}/dicom-web" + path(0), headers={"Accept": MULTIPART})
                        assert r.status_code == 200 and multipart_dicom(r) == [instances[0][3]], r.status_code
                    variants["(c) Orthanc DICOMweb plugin WADO-RS, multipart/related"] = (or_multi, {})
                else:
                    notes.append("Orthanc's DICOMweb plugin not installed (orthanc-dicomweb): only its REST file "
                                 "route is measured")
            names = sorted(variants)
            rates: dict[str, list[float]] = {name: [] for name in names}
            for rnd in range(args.rounds):
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                for name in order:
                    fetch, headers = variants[name]
                    rates[name].append(run(fetch, len(instances), args.clients, headers))
        median = {name: statistics.median(v) for name, v in rates.items()}
        print(f"\n{len(instances)} instances, {args.clients} client(s), median of {args.rounds} rounds, "
              f"load average {os.getloadavg()[0]:.1f}")
        for name in names:
            print(f"{name:<58} {median[name]:8.1f} instances/s  {median[name] * size / 1e6:7.1f} MB/s")
        keys = {k[:3]: k for k in names}
        if "(d)" in keys:
            print(f"ratio a/d (Strongroom single body / Orthanc REST file)      = "
                  f"{median[keys['(a)']] / median[keys['(d)']]:.2f}")
        if "(c)" in keys:
            print(f"ratio b/c (WADO-RS multipart: Strongroom / Orthanc DICOMweb) = "
                  f"{median[keys['(b)']] / median[keys['(c)']]:.2f}")
        for note in notes:
            print("note:", note)


if __name__ == "__main__":
    main()
