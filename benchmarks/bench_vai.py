"""VAI evaluation inference throughput vs bare onnxruntime on the same files.

    python benchmarks/bench_vai.py [--cases 1000] [--batch 32]

Setup (untimed): a fresh hub under /tmp (embedded SQLite, local objects); --cases synthetic screening
CT instances (64×64, ``vai.synthetic``) sealed into a project's archive and put in a dataset version; the
synthetic lesion detector (ONNX) registered and uploaded by a vendor; an evaluation created (bootstrap off,
so the run is inference and bookkeeping). The same plaintext files are also written to a plain directory.
(a) baseline: bare onnxruntime on those files: read each from disk, pydicom decode, window in numpy,
    batches of --batch through one InferenceSession;
(b) ``vai.service.run``: the evaluation job's work on the archived files (decrypt in memory, SHA-256 check,
    preprocessing by the contract, the same session, one checkpoint transaction per batch), then apart
    the metrics that close the run.
Printed: instances/s of each and the ratio (b)/(a), without and with the metrics. Not a test: read the
ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pydicom
from _support import build_hub, fresh_dir, person_with_project, principal_for

from strongroom.archive import service as archive
from strongroom.archive.backend import storage_for
from strongroom.archive.datasets import create_dataset
from strongroom.archive.keys import hub_keys
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.projects import service as projects
from strongroom.vai import service, synthetic


def bare(folder: Path, model: bytes, batch: int) -> tuple[float, list[float]]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    low, width = synthetic.WINDOW["center"] - synthetic.WINDOW["width"] / 2, synthetic.WINDOW["width"]
    files = sorted(folder.iterdir())
    scores: list[float] = []
    started = time.perf_counter()
    for i in range(0, len(files), batch):
        tensors = []
        for f in files[i:i + batch]:
            ds = pydicom.dcmread(f)
            hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            tensors.append(np.clip((hu - low) / width, 0, 1)[None, :, :])
        (out,) = session.run(["score"], {"image": np.stack(tensors).astype(np.float32)})
        scores.extend(float(v) for v in out[:, 0])
    return time.perf_counter() - started, scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    with fresh_dir("strongroom-bench-vai-") as directory:
        bench = build_hub(directory)
        hub = bench.hub
        token = person_with_project(hub, "pi", "clinic")
        principal = principal_for(hub, token)
        cases = synthetic.cases(args.cases, seed=5)
        model = synthetic.train(200)
        plain = directory / "plain"
        plain.mkdir()
        for c in cases:
            (plain / f"case-{c.index:05d}.dcm").write_bytes(c.data)
        with tempfile.TemporaryDirectory() as tmp, transaction(hub.sessions) as s:
            keys, storage = hub_keys(hub, s), storage_for(hub)
            project_id = projects.open_project(s, principal, "clinic").project.id
            ids = []
            for c in cases:
                src = Path(tmp) / "f"
                src.write_bytes(c.data)
                sealed = archive.seal_into_storage(keys, storage, project_id, archive.new_accession("SRF"), str(src))
                ids.append(archive.add_sealed_file(s, project_id, principal.user.id, f"case-{c.index}.dcm", sealed).id)
        with transaction(hub.sessions) as s:
            access = projects.open_project(s, principal, "clinic")
            dataset = create_dataset(s, principal, access, title="Screening", files=ids).id
            service.add_vendor(s, Actor.system("bench"), "acme", "Acme AI")
            service.add_member(s, Actor.system("bench"), "acme", "pi")
        with transaction(hub.sessions) as s:
            mv = service.register_model(s, principal, "acme", name="LesionFinder", version="1", mode="onnx",
                                        intended_use="bench", contract=synthetic.CONTRACT, output=synthetic.OUTPUT,
                                        sha256=hashlib.sha256(model).hexdigest())
            service.upload_model_file(s, hub, principal, str(mv.id), model)
            ev = service.create_evaluation(s, principal, "clinic", model_version_id=str(mv.id), title="bench",
                                           labels_csv=synthetic.labels_csv(cases), dataset_id=dataset,
                                           dataset_version=1, protocol={"bootstrap": 0,
                                                                        "operating_points": {"vendor": 0.5}})
            eid: uuid.UUID = ev.id
        bare(plain, model, args.batch)  # warm-up: imports, first session
        t_bare, bare_scores = bare(plain, model, args.batch)
        batches = -(-len(cases) // args.batch)
        started = time.perf_counter()
        assert service.run(hub, eid, batch=args.batch, max_batches=batches) is False  # every batch, no metrics
        t_eval = time.perf_counter() - started
        started = time.perf_counter()
        assert service.run(hub, eid, batch=args.batch) is True  # nothing left to predict: the metrics
        t_metrics = time.perf_counter() - started
        with hub.sessions() as s:
            from strongroom.vai.models import Evaluation

            ev = s.get(Evaluation, eid)
            assert ev is not None and ev.state == "done", ev.error if ev else "missing"
            auc = ev.result["metrics"]["auc"]["auc"]
        n = len(cases)
        print(f"cases: {n}, batch {args.batch}, AUC of the run {auc:.3f}")
        print(f"(a) bare onnxruntime on plain files            : {n / t_bare:8.1f} instances/s ({t_bare:.2f} s)")
        print(f"(b) evaluation (archive, decrypt, checkpoints)  : {n / t_eval:8.1f} instances/s ({t_eval:.2f} s)")
        print(f"    then its metrics (DeLong, calibration, subgroups): {t_metrics:.2f} s")
        print(f"ratio (b)/(a): {t_bare / t_eval:.2f}x; with the metrics: {t_bare / (t_eval + t_metrics):.2f}x")
        assert len(bare_scores) == n


if __name__ == "__main__":
    main()
