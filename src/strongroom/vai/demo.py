"""`strongroom vai demo`: a finished evaluation and a released report on the embedded demo (after `make run`
seeded it): the vendor "Demo AI Vendor" (its user: the demo researcher) with the synthetic lesion detector,
200 synthetic screening cases archived in project "demo", the evaluation run to the end, and its report
released. The demo has no second reviewer, so the seed releases the report itself (audited as the demo seed);
on a real hub two named reviewers do."""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import select

from ..archive import service as archive
from ..archive.backend import storage_for
from ..archive.datasets import create_dataset
from ..archive.keys import ensure_key, hub_keys
from ..audit import service as audit
from ..audit.service import Actor
from ..db import transaction, utcnow
from ..errors import Invalid
from ..hub import Hub
from ..identity.models import User
from ..identity.principal import SCOPES, Principal
from ..identity.service import find_user
from ..projects import service as projects
from . import service, synthetic
from .models import RELEASED, Evaluation, ModelVersion, Release, Vendor

VENDOR, CASES = "demo-ai", 200
DEMO_JOB = "vai.demo"


def queue_vai_demo(hub: Hub) -> str:
    """What `make run` does (`strongroom init --demo`): the VAI demo as a job, so that the hub starts at once
    and its embedded job runner trains the model, runs the evaluation and releases the report in the
    background (a few seconds to a minute). A line for the console."""
    from ..jobs import service as jobs

    with transaction(hub.sessions) as s:
        if s.scalar(select(Vendor.id).where(Vendor.slug == VENDOR)) is None:
            jobs.enqueue(s, DEMO_JOB, {}, dedup_key=DEMO_JOB, max_attempts=2)
    return ("  AI validation demo: a finished evaluation of a synthetic detector and its released report, made in "
            "the background (log in as researcher: /vai; as admin: /projects/demo/vai)")


def _principal(user: User) -> Principal:
    return Principal(user=user, via="session", mfa_at=dt.datetime.now(dt.UTC), scopes=frozenset(SCOPES),
                     credential_id="demo-seed")


def seed_vai_demo(hub: Hub) -> str:
    """The released report's path (the existing one when the demo was seeded before)."""
    actor = Actor.system("demo-seed")
    ensure_key(hub)
    with transaction(hub.sessions) as s:
        existing = s.scalar(select(Release.id).join(Vendor, Vendor.id == Release.vendor_id)
                            .where(Vendor.slug == VENDOR))
        if existing is not None:
            return f"/vai/reports/{existing}"
        pi, vendor_user = find_user(s, "admin"), find_user(s, "researcher")
        if pi is None or vendor_user is None:
            raise Invalid("seed the demo first (`make run`): it makes the users admin and researcher")
        pi_principal, vendor_principal = _principal(pi), _principal(vendor_user)
        started = s.scalar(select(Evaluation.id).join(ModelVersion, ModelVersion.id == Evaluation.model_version_id)
                           .join(Vendor, Vendor.id == ModelVersion.vendor_id).where(Vendor.slug == VENDOR))
        made = s.scalar(select(ModelVersion.id).join(Vendor, Vendor.id == ModelVersion.vendor_id)
                        .where(Vendor.slug == VENDOR))
    if started is not None:  # a demo job that died after the evaluation was made: resume it
        return _finish(hub, pi_principal, started)
    if made is not None:  # … or after the model was uploaded
        return _evaluate(hub, pi_principal, str(made))
    with transaction(hub.sessions) as s:
        service.add_vendor(s, actor, VENDOR, "Demo AI Vendor")  # one transaction up to the uploaded model
        service.add_member(s, actor, VENDOR, "researcher")
        model = synthetic.train(200)
        mv = service.register_model(s, vendor_principal, VENDOR, name="LesionFinder", version="1.0", mode="onnx",
                                    intended_use="Flags CT slices with a focal lesion for a second look "
                                                 "(synthetic demo model)",
                                    contract=synthetic.CONTRACT, output=synthetic.OUTPUT,
                                    sha256=hashlib.sha256(model).hexdigest())
        service.upload_model_file(s, hub, vendor_principal, str(mv.id), model)
        mv_id = str(mv.id)
    return _evaluate(hub, pi_principal, mv_id)


def _evaluate(hub: Hub, pi_principal: Principal, mv_id: str) -> str:
    """The synthetic cases archived in project demo, a dataset of them, the evaluation, its run and release."""
    pi = pi_principal.user
    cases = synthetic.cases(CASES, seed=2026)
    with tempfile.TemporaryDirectory() as tmp, transaction(hub.sessions) as s:
        access = projects.open_project(s, pi_principal, "demo")
        keys, storage = hub_keys(hub, s), storage_for(hub)
        ids = []
        for c in cases:
            src = Path(tmp) / "f"
            src.write_bytes(c.data)
            sealed = archive.seal_into_storage(keys, storage, access.project.id, archive.new_accession("SRF"),
                                               str(src))
            ids.append(archive.add_sealed_file(s, access.project.id, pi.id, f"vai-demo/case-{c.index:04d}.dcm",
                                               sealed).id)
        dataset = create_dataset(s, pi_principal, access, title="VAI demo: synthetic screening CT",
                                 description="Computer-generated CT slices with known lesions", files=ids)
        ev = service.create_evaluation(
            s, pi_principal, "demo", model_version_id=mv_id, title="LesionFinder 1.0 on synthetic screening",
            labels_csv=synthetic.labels_csv(cases), dataset_id=dataset.id, dataset_version=1,
            protocol={"operating_points": {"vendor": 0.5}, "target_sensitivities": [0.8],
                      "subgroups": ["site", "sex"], "reference_standard": "The generator's ground truth"})
        ev_id = ev.id
    return _finish(hub, pi_principal, ev_id)


def _finish(hub: Hub, pi: Principal, evaluation_id: uuid.UUID) -> str:
    """Run (or resume) the demo evaluation and release its report."""
    service.run(hub, evaluation_id)
    with transaction(hub.sessions) as s:
        release = service.request_release(s, hub, pi, "demo", str(evaluation_id))
        release.state, release.decided_at = RELEASED, utcnow()
        audit.record(s, Actor.system("demo-seed"), "vai.release.released",
                     project_id=s.get_one(Evaluation, evaluation_id).project_id,
                     target=f"vai-release:{release.id}", details={"by": "demo seed", "sha256": release.sha256})
        return f"/vai/reports/{release.id}"
