"""`strongroom vai demo`: a finished evaluation and a released report on the embedded demo (after `make run`
seeded it): the vendor "Demo AI Vendor" (its user: the demo researcher) with the synthetic lesion detector,
200 synthetic screening cases archived in project "demo", the evaluation run to the end, and its report
released. The demo has no second reviewer, so the seed releases the report itself (audited as the demo seed);
on a real hub two named reviewers do."""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
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
from .models import RELEASED, Release, Vendor

VENDOR, CASES = "demo-ai", 200


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
        service.add_vendor(s, actor, VENDOR, "Demo AI Vendor")
        service.add_member(s, actor, VENDOR, "researcher")
        pi_principal, vendor_principal = _principal(pi), _principal(vendor_user)
        model = synthetic.train(200)
        mv = service.register_model(s, vendor_principal, VENDOR, name="LesionFinder", version="1.0", mode="onnx",
                                    intended_use="Flags CT slices with a focal lesion for a second look "
                                                 "(synthetic demo model)",
                                    contract=synthetic.CONTRACT, output=synthetic.OUTPUT,
                                    sha256=hashlib.sha256(model).hexdigest())
        service.upload_model_file(s, hub, vendor_principal, str(mv.id), model)
        mv_id = str(mv.id)
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
    service.run(hub, ev_id)
    with transaction(hub.sessions) as s:
        release = service.request_release(s, pi_principal, "demo", str(ev_id))
        release.state, release.decided_at = RELEASED, utcnow()
        audit.record(s, actor, "vai.release.released", project_id=access.project.id,
                     target=f"vai-release:{release.id}", details={"by": "demo seed", "sha256": release.sha256})
        return f"/vai/reports/{release.id}"
