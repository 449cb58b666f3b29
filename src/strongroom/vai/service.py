"""VAI state changes and reads. Every function checks rights itself and writes its audit events in the
caller's transaction; outside one's vendor or project everything is NotFound (404).

Who sees what:
- a vendor's members register its model versions and read its *released* reports, nothing else;
- a clinic project's members with ``read-data`` create and read evaluations (predictions, every figure,
  the failure lists); a member with ``export`` asks for a report's release; the project's named airlock
  reviewers (``airlock_reviewers``, as many approvals as ``airlock_approvals``) approve or reject it.

What reports could tell about one patient is bounded here and in ``metrics.suppress``: a project evaluates a
vendor's models only so often (``budget_use``, the project setting ``vai_evaluation_budget``); a release is
refused when the scores are degenerate or when it differs by a few cases from a report released before on
the same cases (``vai.cases``); its cuts are checked against those reports' cuts; and its AUC and Brier score
carry noise that the hub keys per cohort and scores.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version as pkg_version
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..archive import c4gh
from ..archive.backend import storage_for
from ..archive.keys import hub_keys
from ..archive.models import READY, ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..audit import service as audit
from ..audit.models import AuditEvent
from ..db import transaction, utcnow
from ..errors import Conflict, Forbidden, Invalid, NotFound, TooManyRequests
from ..hub import Hub
from ..identity.models import User
from ..identity.principal import Principal
from ..identity.service import find_user, require_fresh_mfa
from ..jobs import service as jobs
from ..projects import service as projects
from ..projects.models import Membership, Project
from . import inference, metrics
from .cases import Cases, CutHistory, a_few, differing
from .models import (
    CREATED,
    DONE,
    FAILED,
    ID_COLUMNS,
    IN_REVIEW,
    ONNX,
    REFUSED,
    REJECTED,
    RELEASED,
    RESULTS_ONLY,
    RUNNING,
    Evaluation,
    ModelVersion,
    Prediction,
    Release,
    ReleaseReview,
    Vendor,
    VendorMember,
)
from .settings import BUDGET, EvaluationBudget

JOB = "vai.evaluate"
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")
MAX_MODEL_BYTES = 512 * 1024**2
MAX_LABEL_ROWS = 200_000
MAX_CSV_CHARS = 20_000_000
BATCH = 32
REPORT_FORMAT = "strongroom-vai-report/1"
READ_EVENT = "vai.evaluation.read"  # a clinic member read an evaluation's full result (per-case data)
READ_WINDOW = dt.timedelta(minutes=10)
NOISE_KEY = b"strongroom/vai/release-noise/1"  # the release noise's key: HMAC of this under the hub secret


def canonical_sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _uuid(value: str | uuid.UUID, what: str) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"no such {what}") from None


# -- vendors -----------------------------------------------------------------------------------
def _require_admin(principal: Principal) -> None:
    if not (principal.user.is_admin and principal.can("admin")):
        raise NotFound("not found")


def create_vendor(session: Session, principal: Principal, slug: str, name: str) -> Vendor:
    _require_admin(principal)
    return add_vendor(session, principal.actor, slug, name)


def add_vendor(session: Session, actor: audit.Actor, slug: str, name: str) -> Vendor:
    """A vendor (operators: the API's admin or the hub's command line)."""
    slug, name = slug.strip().lower(), name.strip()
    if not SLUG.match(slug):
        raise Invalid("a vendor's slug is 2–40 lower-case letters, digits or hyphens")
    if not name or len(name) > 200:
        raise Invalid("a vendor's name is 1–200 characters")
    if session.scalar(select(Vendor.id).where(Vendor.slug == slug)):
        raise Conflict(f"there is already a vendor {slug!r}")
    vendor = Vendor(slug=slug, name=name)
    session.add(vendor)
    session.flush()
    audit.record(session, actor, "vai.vendor.created", target=f"vai-vendor:{slug}", details={"name": name})
    return vendor


def add_vendor_member(session: Session, principal: Principal, slug: str, user_ref: str) -> uuid.UUID:
    _require_admin(principal)
    return add_member(session, principal.actor, slug, user_ref)


def add_member(session: Session, actor: audit.Actor, slug: str, user_ref: str) -> uuid.UUID:
    vendor = session.scalar(select(Vendor).where(Vendor.slug == slug))
    if vendor is None:
        raise NotFound(f"no vendor {slug!r}")
    user = find_user(session, user_ref)
    if user is None:
        raise Invalid(f"no user {user_ref!r}")
    if session.get(VendorMember, (vendor.id, user.id)) is None:
        session.add(VendorMember(vendor_id=vendor.id, user_id=user.id))
        audit.record(session, actor, "vai.vendor.member_added", target=f"vai-vendor:{slug}",
                     subject_user_id=user.id)
    return user.id


def my_vendors(session: Session, principal: Principal) -> list[Vendor]:
    return list(session.scalars(select(Vendor).join(VendorMember, VendorMember.vendor_id == Vendor.id)
                                .where(VendorMember.user_id == principal.user.id).order_by(Vendor.name)))


def _vendor_of_member(session: Session, principal: Principal, slug: str) -> Vendor:
    vendor = session.scalar(select(Vendor).join(VendorMember, VendorMember.vendor_id == Vendor.id)
                            .where(Vendor.slug == slug, VendorMember.user_id == principal.user.id))
    if vendor is None:
        raise NotFound(f"no vendor {slug!r}")
    return vendor


def is_vendor_member(session: Session, principal: Principal, vendor_id: uuid.UUID) -> bool:
    return session.get(VendorMember, (vendor_id, principal.user.id)) is not None


# -- model versions ----------------------------------------------------------------------------
def register_model(session: Session, principal: Principal, slug: str, *, name: str, version: str, mode: str,
                   intended_use: str, contract: dict[str, Any] | None, output: dict[str, Any] | None,
                   sha256: str | None) -> ModelVersion:
    """A vendor member registers a model version; an ONNX one names the SHA-256 of the file it will upload."""
    vendor = _vendor_of_member(session, principal, slug)
    name, version, intended_use = name.strip(), version.strip(), intended_use.strip()
    if not name or len(name) > 120 or not version or len(version) > 40:
        raise Invalid("a model has a name (1–120 characters) and a version (1–40)")
    if not intended_use or len(intended_use) > 5000:
        raise Invalid("say what the model is intended for (intended use, at most 5000 characters)")
    if mode not in (ONNX, RESULTS_ONLY):
        raise Invalid("mode is 'onnx' or 'results-only'")
    try:
        checked_contract = inference.check_contract(contract or {}) if mode == ONNX else dict(contract or {})
        checked_output = inference.check_output(output or {})
    except inference.ContractError as exc:
        raise Invalid(str(exc)) from None
    if mode == ONNX:
        if not sha256 or not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise Invalid("an ONNX model version names its file's SHA-256 (64 lower-case hex digits)")
    elif sha256:
        raise Invalid("a results-only version has no model file")
    if session.scalar(select(ModelVersion.id).where(ModelVersion.vendor_id == vendor.id, ModelVersion.name == name,
                                                    ModelVersion.version == version)):
        raise Conflict(f"{name} {version} is already registered")
    mv = ModelVersion(vendor_id=vendor.id, name=name, version=version, mode=mode, intended_use=intended_use,
                      contract=checked_contract, output=checked_output, sha256=sha256, created_by=principal.user.id)
    session.add(mv)
    session.flush()
    audit.record(session, principal.actor, "vai.model.registered", target=f"vai-model:{mv.id}",
                 details={"vendor": slug, "name": name, "version": version, "mode": mode, "sha256": sha256})
    return mv


def upload_model_file(session: Session, hub: Hub, principal: Principal, version_id: str, data: bytes) -> ModelVersion:
    """The ONNX file: its SHA-256 must be the one registered, it must be self-contained (no external data, only
    ONNX's standard operators: ``inference.check_self_contained``), and onnxruntime must load it by the contract.
    ``run`` checks it again before every evaluation (a file stored before a check was added)."""
    mv = session.get(ModelVersion, _uuid(version_id, "model version"))
    if mv is None or not is_vendor_member(session, principal, mv.vendor_id):
        raise NotFound("no such model version")
    if mv.mode != ONNX:
        raise Conflict("a results-only version has no model file")
    if mv.file_key is not None:
        raise Conflict("this version's file is already uploaded (register a new version to change it)")
    if len(data) > MAX_MODEL_BYTES:
        raise Invalid(f"a model file is at most {MAX_MODEL_BYTES // 1024**2} MiB")
    digest = hashlib.sha256(data).hexdigest()
    if digest != mv.sha256:
        raise Invalid(f"the file's SHA-256 is {digest}, not the registered {mv.sha256}")
    try:
        inference.Runner(data, mv.contract, mv.output)
    except inference.ContractError as exc:
        raise Invalid(str(exc)) from None
    key = f"vai/models/{digest}.onnx"
    storage_for(hub).put_bytes(key, data)
    mv.file_key, mv.size = key, len(data)
    audit.record(session, principal.actor, "vai.model.uploaded", target=f"vai-model:{mv.id}",
                 details={"sha256": digest, "bytes": len(data)})
    return mv


def list_models(session: Session, principal: Principal) -> list[tuple[ModelVersion, Vendor]]:
    """Registered model versions (what the vendors offer for evaluation): every signed-in user sees them."""
    rows = session.execute(select(ModelVersion, Vendor).join(Vendor, Vendor.id == ModelVersion.vendor_id)
                           .order_by(Vendor.name, ModelVersion.name, ModelVersion.version))
    return [(m, v) for m, v in rows]


def get_model(session: Session, version_id: str) -> tuple[ModelVersion, Vendor]:
    mv = session.get(ModelVersion, _uuid(version_id, "model version"))
    if mv is None:
        raise NotFound("no such model version")
    return mv, session.get_one(Vendor, mv.vendor_id)


# -- labels and predictions tables --------------------------------------------------------------
@dataclass
class Labels:
    id_column: str
    ids: list[str]
    labels: list[int]
    columns: dict[str, list[str]]  # subgroup column → one value per row


def parse_labels(text: str) -> Labels:
    try:
        return _parse_labels(text)
    except csv.Error as exc:
        raise Invalid(f"the labels table is not CSV: {exc}") from None


def _parse_labels(text: str) -> Labels:
    """A reference standard: a CSV with an id column (image_id, study_id or case_id), ``label`` (0/1) and
    any subgroup columns."""
    if len(text) > MAX_CSV_CHARS:
        raise Invalid("the labels table is too large")
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    if id_column is None or "label" not in header:
        raise Invalid(f"the labels table has an id column ({', '.join(ID_COLUMNS)}) and a 'label' column")
    reader.fieldnames = header
    extra = [h for h in header if h not in (id_column, "label")]
    out = Labels(id_column, [], [], {c: [] for c in extra})
    seen: set[str] = set()
    for n, row in enumerate(reader, start=2):
        if len(out.ids) >= MAX_LABEL_ROWS:
            raise Invalid(f"the labels table has at most {MAX_LABEL_ROWS} rows")
        case = (row.get(id_column) or "").strip()
        label = (row.get("label") or "").strip()
        if not case or len(case) > 200 or label not in ("0", "1"):
            raise Invalid(f"line {n}: an id (at most 200 characters) and a label of 0 or 1")
        if case in seen:
            raise Invalid(f"line {n}: {case!r} is labelled twice")
        seen.add(case)
        out.ids.append(case)
        out.labels.append(int(label))
        for c in extra:
            out.columns[c].append((row.get(c) or "").strip() or "unknown")
    if not out.ids:
        raise Invalid("the labels table has no rows")
    return out


def parse_predictions(text: str) -> dict[str, float]:
    try:
        return _parse_predictions(text)
    except csv.Error as exc:
        raise Invalid(f"the predictions table is not CSV: {exc}") from None


def _parse_predictions(text: str) -> dict[str, float]:
    """Results-only mode: ``case_id,score`` (the id column may also be image_id or study_id)."""
    if len(text) > MAX_CSV_CHARS:
        raise Invalid("the predictions table is too large")
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    if id_column is None or "score" not in header:
        raise Invalid(f"the predictions table has an id column ({', '.join(ID_COLUMNS)}) and a 'score' column")
    reader.fieldnames = header
    out: dict[str, float] = {}
    for n, row in enumerate(reader, start=2):
        case = (row.get(id_column) or "").strip()
        try:
            score = float((row.get("score") or "").strip())
        except (ValueError, OverflowError):
            raise Invalid(f"line {n}: the score is a number") from None
        if not case or not np.isfinite(score) or len(case) > 200:
            raise Invalid(f"line {n}: an id (at most 200 characters) and a finite score")
        if case in out:
            raise Invalid(f"line {n}: {case!r} has two scores")
        out[case] = score
        if len(out) > MAX_LABEL_ROWS:
            raise Invalid(f"the predictions table has at most {MAX_LABEL_ROWS} rows")
    if not out:
        raise Invalid("the predictions table has no rows")
    return out


def check_protocol(protocol: dict[str, Any], labels: Labels) -> dict[str, Any]:
    points = protocol.get("operating_points") or {}
    if not isinstance(points, dict) or len(points) > 10 or not all(
            isinstance(k, str) and 0 < len(k) <= 60 and inference.finite_number(v) is not None
            for k, v in points.items()):
        raise Invalid("operating_points maps up to 10 names to thresholds, e.g. {\"vendor\": 0.5}")
    targets = protocol.get("target_sensitivities") or []
    if not isinstance(targets, list) or len(targets) > 5 or not all(
            (n := inference.finite_number(t)) is not None and 0 < n <= 1 for t in targets):
        raise Invalid("target_sensitivities are up to 5 numbers in (0, 1]")
    subgroups = protocol.get("subgroups")
    if subgroups is None:
        subgroups = list(labels.columns)
    if not isinstance(subgroups, list) or not all(isinstance(c, str) and c in labels.columns for c in subgroups):
        raise Invalid(f"subgroups are columns of the labels table ({', '.join(labels.columns) or 'none'})")
    level = protocol.get("level", "study" if labels.id_column == "study_id" else "image")
    if level not in ("image", "study"):
        raise Invalid("level is 'image' or 'study' (a study's score is the highest of its images')")
    bootstrap = protocol.get("bootstrap", 2000)
    if not isinstance(bootstrap, int) or isinstance(bootstrap, bool) or not 0 <= bootstrap <= 10_000:
        raise Invalid("bootstrap is 0–10000 resamples")
    reference = str(protocol.get("reference_standard", "")).strip()[:2000]
    source = protocol.get("reference_source", "labels")
    if source not in ("labels", "dicom"):
        raise Invalid("reference_source is 'labels' (the table) or 'dicom' (the dataset's SR and SEG instances)")
    if source == "dicom":
        if labels.ids and labels.id_column != "study_id":
            raise Invalid("with the reference from DICOM SR/SEG, a labels table (for the studies without "
                          "one, and subgroups) is by study_id")
        if protocol.get("level", "study") != "study":
            raise Invalid("SR and SEG label studies: the level is 'study'")
        level = "study"
    return {"reference_source": source, "operating_points": {k: float(v) for k, v in points.items()},
            "target_sensitivities": [float(t) for t in targets], "subgroups": subgroups, "level": level,
            "bootstrap": bootstrap, "reference_standard": reference,
            "inclusion": str(protocol.get("inclusion", "")).strip()[:2000]}


# -- evaluations -------------------------------------------------------------------------------
def _files_digest(rows: list[tuple[str, str | None]]) -> str:
    return hashlib.sha256("".join(f"{i}:{s}\n" for i, s in sorted(rows)).encode()).hexdigest()


def create_evaluation(session: Session, principal: Principal, slug: str, *, model_version_id: str, title: str,
                      labels_csv: str, protocol: dict[str, Any], dataset_id: str | None = None,
                      dataset_version: int | None = None, predictions_csv: str | None = None) -> Evaluation:
    """Evaluate a model version on a dataset version of this project (ONNX: run here) or on an uploaded
    predictions table (results-only). Needs ``read-data``; the run is a job."""
    access = projects.open_project(session, principal, slug)
    access.require("read-data")
    try:
        mv = session.get(ModelVersion, uuid.UUID(model_version_id))
    except ValueError:
        mv = None
    if mv is None:
        raise Invalid("no such model version")
    title = title.strip()
    if not title or len(title) > 200:
        raise Invalid("an evaluation has a title (1–200 characters)")
    _within_budget(session, principal, access.project.id, mv)
    dicom_reference = isinstance(protocol, dict) and protocol.get("reference_source") == "dicom"
    labels = parse_labels(labels_csv) if labels_csv.strip() or not dicom_reference \
        else Labels("study_id", [], [], {})
    checked = check_protocol(protocol, labels)
    inputs: dict[str, Any] = {"labels_sha256": hashlib.sha256(labels_csv.encode()).hexdigest(),
                              "protocol_sha256": canonical_sha256(checked), "model_sha256": mv.sha256}
    version_row: DatasetVersion | None = None
    predictions: dict[str, float] = {}
    if mv.mode == ONNX:
        if mv.file_key is None:
            raise Conflict("the vendor has not uploaded this version's model file yet")
        if predictions_csv:
            raise Invalid("an ONNX model is run here: no predictions table")
        if not dataset_id or dataset_version is None:
            raise Invalid("name the dataset and its version the model runs on")
        ds = session.get(Dataset, dataset_id)
        if ds is None or ds.project_id != access.project.id:
            raise Invalid(f"no dataset {dataset_id!r} in this project")
        version_row = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id,
                                                                   DatasetVersion.number == dataset_version))
        if version_row is None:
            raise Invalid(f"{dataset_id} has no version {dataset_version}")
        rows = list(session.execute(select(ArchiveFile.id, ArchiveFile.plaintext_sha256)
                                    .join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
                                    .where(DatasetFile.version_id == version_row.id)))
        if not rows:
            raise Invalid("that dataset version has no files")
        inputs.update(dataset=f"{ds.id} v{dataset_version}", files=len(rows),
                      files_sha256=_files_digest([(i, s) for i, s in rows]))
        total = len(rows)
    else:
        if not predictions_csv:
            raise Invalid("a results-only model version is evaluated on an uploaded predictions table")
        if dicom_reference:
            raise Invalid("a results-only evaluation has no dataset to read SR/SEG from: upload a labels table")
        predictions = parse_predictions(predictions_csv)
        inputs["predictions_sha256"] = hashlib.sha256(predictions_csv.encode()).hexdigest()
        total = len(predictions)
    ev = Evaluation(project_id=access.project.id, model_version_id=mv.id,
                    dataset_version_id=version_row.id if version_row else None, title=title, labels_csv=labels_csv,
                    labels_sha256=inputs["labels_sha256"], protocol=checked, state=CREATED, done=0, total=total,
                    inputs=inputs, created_by=principal.user.id)
    session.add(ev)
    session.flush()
    for case, score in predictions.items():
        session.add(Prediction(evaluation_id=ev.id, item=case, score=score))
    ev.done = len(predictions)
    jobs.enqueue(session, JOB, {"evaluation_id": str(ev.id)}, dedup_key=f"{JOB}:{ev.id}")
    audit.record(session, principal.actor, "vai.evaluation.created", project_id=access.project.id,
                 target=f"vai-evaluation:{ev.id}",
                 details={"model_version": str(mv.id), "mode": mv.mode, **{k: str(v) for k, v in inputs.items()}})
    return ev


# -- the evaluation budget ---------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetUse:
    """A vendor's evaluations in a project in the budget's period: of all its models, and of the models
    registered by the user who registered this one; ``frees_at``: when the next may start, if not now."""

    limits: EvaluationBudget
    vendor: int
    submitter: int
    frees_at: dt.datetime | None


def budget_limits(session: Session, project_id: uuid.UUID) -> EvaluationBudget:
    return EvaluationBudget.model_validate(projects.get_setting(session, project_id, BUDGET))


def _counted(session: Session, project_id: uuid.UUID, since: dt.datetime, *where: Any) -> list[dt.datetime]:
    """When the counted evaluations were created, oldest first (failed ones release nothing: not counted)."""
    return list(session.scalars(select(Evaluation.created_at)
                                .join(ModelVersion, ModelVersion.id == Evaluation.model_version_id)
                                .where(Evaluation.project_id == project_id, Evaluation.created_at >= since,
                                       Evaluation.state != FAILED, *where)
                                .order_by(Evaluation.created_at)))


def budget_use(session: Session, project_id: uuid.UUID, mv: ModelVersion) -> BudgetUse:
    """Counted from the project's evaluations, in the period up to now."""
    limits = budget_limits(session, project_id)
    period = dt.timedelta(days=limits.days)
    since = utcnow() - period
    by_vendor = _counted(session, project_id, since, ModelVersion.vendor_id == mv.vendor_id)
    by_submitter = _counted(session, project_id, since, ModelVersion.created_by == mv.created_by)
    frees = [times[len(times) - limit] + period for times, limit in
             ((by_vendor, limits.per_vendor), (by_submitter, limits.per_submitter)) if len(times) >= limit]
    return BudgetUse(limits, len(by_vendor), len(by_submitter), max(frees, default=None))


def _within_budget(session: Session, principal: Principal, project_id: uuid.UUID, mv: ModelVersion) -> None:
    """Refuse (429, audited and committed although the request then fails) an evaluation past the budget."""
    use = budget_use(session, project_id, mv)
    if use.frees_at is None:
        return
    vendor = session.get_one(Vendor, mv.vendor_id)
    limits = use.limits
    reason = (f"The evaluation budget for {vendor.name}'s models in this project is used up: in the last "
              f"{limits.days} days {use.vendor} evaluations of its models (at most {limits.per_vendor}) and "
              f"{use.submitter} of the models registered by the same vendor user (at most {limits.per_submitter}). "
              "Every report answers a question about the same patients, and the differences between many "
              f"answers could single one out. The next is possible from {use.frees_at:%Y-%m-%d %H:%M} UTC; "
              f"the project's setting {BUDGET} sets the budget.")
    audit.record(session, principal.actor, "vai.evaluation.refused", outcome="denied", project_id=project_id,
                 target=f"vai-model:{mv.id}",
                 details={"reason": "evaluation budget", "vendor": vendor.slug, "vendor_evaluations": use.vendor,
                          "submitter_evaluations": use.submitter, **limits.model_dump()})
    session.commit()
    raise TooManyRequests(reason, retry_after=max(1, math.ceil((use.frees_at - utcnow()).total_seconds())))


VendorBudget = tuple[str, int, list[tuple[str, int]]]  # vendor, its evaluations, (submitter, theirs) for each


def budget_overview(session: Session, project_id: uuid.UUID) -> tuple[EvaluationBudget, list[VendorBudget]]:
    """The budget and its use per vendor with evaluations in the period (for the project's VAI page): each
    vendor's evaluations, and those of the models each of its users registered."""
    limits = budget_limits(session, project_id)
    rows = session.execute(select(Vendor.name, User.display_name, func.count())
                           .select_from(Evaluation)
                           .join(ModelVersion, ModelVersion.id == Evaluation.model_version_id)
                           .join(Vendor, Vendor.id == ModelVersion.vendor_id)
                           .join(User, User.id == ModelVersion.created_by)
                           .where(Evaluation.project_id == project_id, Evaluation.state != FAILED,
                                  Evaluation.created_at >= utcnow() - dt.timedelta(days=limits.days))
                           .group_by(Vendor.name, User.display_name).order_by(Vendor.name, User.display_name))
    vendors: dict[str, list[tuple[str, int]]] = {}
    for vendor, submitter, count in rows:
        vendors.setdefault(vendor, []).append((submitter, int(count)))
    return limits, [(v, sum(c for _, c in s), s) for v, s in vendors.items()]


def dataset_choices(session: Session, project_id: uuid.UUID) -> list[tuple[str, int, str]]:
    """The project's dataset versions an evaluation may run on: (dataset id, version number, title)."""
    rows = session.execute(select(Dataset.id, DatasetVersion.number, Dataset.title)
                           .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
                           .where(Dataset.project_id == project_id)
                           .order_by(Dataset.created_at.desc(), DatasetVersion.number.desc()).limit(500))
    return [(i, n, title) for i, n, title in rows]


def list_evaluations(session: Session, principal: Principal, slug: str) -> list[Evaluation]:
    access = projects.open_project(session, principal, slug)
    access.require("read-data")
    return list(session.scalars(select(Evaluation).where(Evaluation.project_id == access.project.id)
                                .order_by(Evaluation.created_at.desc()).limit(500)))


def get_evaluation(session: Session, principal: Principal, slug: str, evaluation_id: str) -> Evaluation:
    access = projects.open_project(session, principal, slug)
    access.require("read-data")
    ev = session.get(Evaluation, _uuid(evaluation_id, "evaluation"))
    if ev is None or ev.project_id != access.project.id:
        raise NotFound("no such evaluation")
    return ev


def read_evaluations(session: Session, principal: Principal, slug: str,
                     evaluation_id: str | None = None) -> list[Evaluation]:
    """The project's evaluations (or the one named) with their full result, which holds per-case data (the
    failure lists with case ids and scores, the ids without a prediction, the unreadable instances): each
    read of a result is audited, once per reader and evaluation per ``READ_WINDOW`` (a page that is
    reloaded writes one event, not one per load)."""
    evaluations = [get_evaluation(session, principal, slug, evaluation_id)] if evaluation_id is not None \
        else list_evaluations(session, principal, slug)
    read = [ev for ev in evaluations if ev.result is not None]
    if read:
        targets = {f"vai-evaluation:{ev.id}": ev for ev in read}
        recent = set(session.scalars(select(AuditEvent.target).where(
            AuditEvent.actor_id == principal.user.id, AuditEvent.action == READ_EVENT,
            AuditEvent.project_id == read[0].project_id, AuditEvent.at >= utcnow() - READ_WINDOW,
            AuditEvent.target.in_(list(targets)))))
        audit.record_many(session, principal.actor, READ_EVENT, [
            (ev.project_id, target, {"state": ev.state, "window_minutes": int(READ_WINDOW.total_seconds() // 60)})
            for target, ev in targets.items() if target not in recent])
    return evaluations


def prediction_count(session: Session, evaluation_id: uuid.UUID) -> int:
    return int(session.scalar(select(func.count()).select_from(Prediction)
                              .where(Prediction.evaluation_id == evaluation_id)) or 0)


# -- running -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ref:
    id: str
    path: str
    header: bytes
    body_key: str
    sha256: str


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def decrypt_in_memory(hub: Hub, ref: _Ref, secrets: list[bytes]) -> bytes:
    """An archived file's plaintext, in memory only (never written to disk), checked against its SHA-256."""
    opened = c4gh.open_header(ref.header, secrets)
    with storage_for(hub).open_reader(ref.body_key) as reader:
        data = b"".join(c4gh.decrypt_segments(reader, opened.session_keys))
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise inference.ContractError("the archived file does not match its recorded SHA-256")
    return data


def _fetch(hub: Hub, ref: _Ref, secrets: list[bytes]) -> bytes | str:
    """An instance's plaintext, or why it could not be read (for the worker threads)."""
    try:
        return decrypt_in_memory(hub, ref, secrets)
    except Exception as exc:
        return f"cannot decrypt: {type(exc).__name__}: {exc}"[:300]


def _predict_batches(hub: Hub, evaluation_id: uuid.UUID, runner: inference.Runner, todo: list[_Ref],
                     secrets: list[bytes], batch: int, max_batches: int | None) -> bool:
    """Predict ``todo`` batch by batch; the next batch is fetched and decrypted by two worker threads while
    this one is preprocessed and run (decryption releases the GIL). Each batch is committed on its own.
    False when it stopped after ``max_batches``."""
    chunks = list(_chunks(todo, batch))
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vai-fetch")
    try:
        pending = [pool.submit(_fetch, hub, ref, secrets) for ref in chunks[0]]
        for number, chunk in enumerate(chunks, start=1):
            current = pending
            pending = [pool.submit(_fetch, hub, ref, secrets) for ref in chunks[number]] \
                if number < len(chunks) else []
            rows: list[Prediction] = []
            ready: list[tuple[Prediction, inference.Instance]] = []
            for ref, fut in zip(chunk, current, strict=True):
                row = Prediction(evaluation_id=evaluation_id, item=ref.id, path=ref.path[:1024])
                data = fut.result()
                try:
                    if isinstance(data, str):
                        raise inference.ContractError(data)
                    inst = inference.read(data, runner.contract)
                except inference.ContractError as exc:
                    row.error = str(exc)[:300]
                else:
                    if isinstance(inst, inference.Reference):  # an SR or SEG: a reference label, no score
                        row.sop_uid, row.study_uid, row.study_date = (inst.sop_uid[:64], inst.study_uid[:64],
                                                                       inst.study_date[:8])
                        row.reference = inst.label
                        row.error = "" if inst.label is not None else inst.why[:300]
                        rows.append(row)
                        continue
                    row.sop_uid, row.study_uid, row.study_date = (inst.sop_uid[:64], inst.study_uid[:64],
                                                                   inst.study_date[:8])
                    ready.append((row, inst))
                rows.append(row)
            for (row, _), score in zip(ready, runner.predict([i.tensor for _, i in ready]), strict=True):
                if not math.isfinite(score):  # else SQLite would store NULL: the case left out, by the model's choice
                    raise inference.ContractError("the model gave a score that is not a finite number (NaN or "
                                                  "infinite); its output must be a finite score for every instance")
                row.score = score
            with transaction(hub.sessions) as s:
                ev = s.get_one(Evaluation, evaluation_id)
                already = set(s.scalars(select(Prediction.item).where(
                    Prediction.evaluation_id == evaluation_id, Prediction.item.in_([r.item for r in rows]))))
                s.add_all([r for r in rows if r.item not in already])  # a resumed run never counts twice
                s.flush()
                ev.done = prediction_count(s, evaluation_id)
            if max_batches is not None and number >= max_batches:
                return False
        return True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run(hub: Hub, evaluation_id: uuid.UUID, *, batch: int = BATCH, max_batches: int | None = None) -> bool:
    """Run (or resume) an evaluation: every instance not predicted yet, a batch per transaction (the
    checkpoint), then the metrics. True when finished; False when it stopped after ``max_batches``."""
    with transaction(hub.sessions) as s:
        ev = s.get(Evaluation, evaluation_id)
        if ev is None or ev.state in (DONE, FAILED):
            return True
        mv = s.get_one(ModelVersion, ev.model_version_id)
        ev.state = RUNNING
        mode, contract, output, sha, key = mv.mode, mv.contract, mv.output, mv.sha256, mv.file_key
        todo: list[_Ref] = []
        secrets: list[bytes] = []
        if mode == ONNX:
            done = set(s.scalars(select(Prediction.item).where(Prediction.evaluation_id == ev.id)))
            files = s.scalars(select(ArchiveFile).join(DatasetFile, DatasetFile.file_id == ArchiveFile.id)
                              .where(DatasetFile.version_id == ev.dataset_version_id).order_by(ArchiveFile.id))
            todo = [_Ref(f.id, f.path, f.header or b"", f.body_key or "", f.plaintext_sha256 or "")
                    for f in files if f.id not in done and f.state == READY]
            secrets = list(hub_keys(hub, s).secrets)
    if todo:
        assert key is not None
        with storage_for(hub).open_reader(key) as reader:
            model = reader.read()
        try:
            runner = inference.Runner(model, contract, output, sha256=sha)
        except inference.ContractError as exc:
            with transaction(hub.sessions) as s:
                ev = s.get_one(Evaluation, evaluation_id)
                ev.state, ev.error, ev.finished_at = FAILED, str(exc), utcnow()
            return True
        with transaction(hub.sessions) as s:  # which execution provider each (resumed) run used
            ev = s.get_one(Evaluation, evaluation_id)
            used = list((ev.execution or {}).get("providers", []))
            ev.execution = {"providers": used if runner.provider in used else [*used, runner.provider]}
        try:
            if not _predict_batches(hub, evaluation_id, runner, todo, secrets, batch, max_batches):
                return False
        except inference.ContractError as exc:  # the model broke its output contract: it fails, nothing is left out
            with transaction(hub.sessions) as s:
                ev = s.get_one(Evaluation, evaluation_id)
                ev.state, ev.error, ev.finished_at = FAILED, str(exc), utcnow()
            return True
    with transaction(hub.sessions) as s:
        finish(s, s.get_one(Evaluation, evaluation_id))
    return True


def give_up(session: Session, payload: dict[str, Any], error: str) -> None:
    """`vai.evaluate`'s ``on_given_up``: its job failed for good (its last attempt raised, or the worker died, hung
    or ran past its time limit) with the evaluation unfinished: it is ``failed`` with the reason, as one whose
    model does not fit is, instead of staying running. Its committed predictions stay (nothing is released from
    a failed evaluation). Idempotent: a done or failed evaluation is left."""
    ev = session.get(Evaluation, _uuid(payload["evaluation_id"], "evaluation"), with_for_update=True)
    if ev is None or ev.state in (DONE, FAILED):
        return
    ev.state, ev.error, ev.finished_at = FAILED, f"gave up: {error}"[:2000], utcnow()


def _month(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}" if len(date) == 8 and date.isdigit() else ""


@dataclass
class _Matched:
    """An evaluation's predictions matched to its reference standard."""

    predictions: list[Prediction]
    labels: Labels
    scores: dict[str, float]  # by every name a case goes by (the archived file's id, SOP UID, path, …)
    case: dict[str, str]  # each such name → the case's own id (the archived file's, or the study's)
    matched: list[int]  # the rows of the labels table with a score


def _match(session: Session, ev: Evaluation) -> _Matched:
    protocol = ev.protocol
    preds = list(session.scalars(select(Prediction).where(Prediction.evaluation_id == ev.id)
                                 .order_by(Prediction.item)))
    references = [p for p in preds if p.reference is not None]
    labels = labels_with_references(ev.labels_csv, references) if protocol.get("reference_source") == "dicom" \
        else parse_labels(ev.labels_csv)
    scores: dict[str, float] = {}
    case: dict[str, str] = {}
    for p in preds:
        if p.score is None:
            continue
        if protocol["level"] == "study":
            keys = [p.study_uid] if p.study_uid else [p.item]
            for k in keys:
                scores[k], case[k] = max(scores.get(k, p.score), p.score), k
        else:
            for k in {p.item, p.sop_uid, p.path, p.path.rsplit("/", 1)[-1]} - {""}:
                scores[k], case[k] = p.score, p.item
    return _Matched(preds, labels, scores, case, [i for i, name in enumerate(labels.ids) if name in scores])


def analysed_cases(session: Session, ev: Evaluation) -> Cases:
    """The cases an evaluation's figures are computed on, by their own ids (so two evaluations of the same
    images compare, whatever their labels tables call them), with their labels, scores and subgroups."""
    m = _match(session, ev)
    return Cases.of([m.case[m.labels.ids[i]] for i in m.matched], [m.labels.labels[i] for i in m.matched],
                    [m.scores[m.labels.ids[i]] for i in m.matched],
                    {c: [m.labels.columns[c][i] for i in m.matched] for c in ev.protocol["subgroups"]})


def finish(session: Session, ev: Evaluation) -> None:
    """Match the predictions to the reference standard and compute every figure."""
    mv = session.get_one(ModelVersion, ev.model_version_id)
    protocol = ev.protocol
    m = _match(session, ev)
    preds, labels, scores, matched = m.predictions, m.labels, m.scores, m.matched
    references = [p for p in preds if p.reference is not None]
    unreadable = [{"item": p.item, "path": p.path, "error": p.error} for p in preds
                  if p.score is None and p.reference is None]
    missing = [case for case in labels.ids if case not in scores]
    y = np.array([labels.labels[i] for i in matched], dtype=int)
    s = np.array([scores[labels.ids[i]] for i in matched], dtype=float)
    dates = sorted(p.study_date for p in preds if p.study_date)
    study_year = {p.study_uid or p.item: p.study_date[:4] for p in preds if _month(p.study_date or "")}
    summary: dict[str, Any] = {
        "matched": len(matched), "missing": len(missing), "missing_ids": missing[:100],
        "unreadable": len(unreadable), "unreadable_items": unreadable[:100],
        "predictions": len(preds) - len(references), "references": len(references),
        "reference_source": protocol.get("reference_source", "labels"),
        "references_sha256": canonical_sha256(sorted([p.item, p.study_uid, p.reference] for p in references)),
        "study_months": [_month(dates[0]), _month(dates[-1])] if dates else [],
        "study_years": dict(sorted(Counter(study_year.values()).items())),  # studies per year
    }
    if len(y) == 0 or y.sum() == 0 or y.sum() == len(y):
        ev.state, ev.error = FAILED, "the matched cases need both positive and negative labels"
        ev.result, ev.finished_at = summary, utcnow()
        return
    probabilities = bool(((s >= 0) & (s <= 1)).all())
    result = metrics.evaluate(y, s, thresholds=protocol["operating_points"],
                              target_sensitivities=protocol["target_sensitivities"],
                              subgroups={c: [labels.columns[c][i] for i in matched] for c in protocol["subgroups"]},
                              bootstrap=protocol["bootstrap"], seed=0, probabilities=probabilities)
    # failure analysis (the clinic's eyes only): the most confident misses at the first operating point
    threshold = next(iter(protocol["operating_points"].values()), 0.5)
    cases = [(labels.ids[i], int(y[k]), float(s[k])) for k, i in enumerate(matched)]
    fn = sorted((c for c in cases if c[1] == 1 and c[2] < threshold), key=lambda c: c[2])[:25]
    fp = sorted((c for c in cases if c[1] == 0 and c[2] >= threshold), key=lambda c: -c[2])[:25]
    summary["failures"] = {"threshold": threshold,
                           "false_negatives": [{"id": c[0], "score": c[2]} for c in fn],
                           "false_positives": [{"id": c[0], "score": c[2]} for c in fp]}
    ev.result = {**summary, "metrics": result, "probabilities": probabilities, "mode": mv.mode,
                 "execution": ev.execution or {}}
    ev.outputs_sha256 = canonical_sha256({"predictions": [[p.item, p.score] for p in preds], "result": ev.result})
    ev.state, ev.error, ev.finished_at = DONE, None, utcnow()
    ev.done = len(preds)


def labels_with_references(labels_csv: str, references: list[Prediction]) -> Labels:
    """The reference standard read from the dataset's DICOM SR and SEG instances, by study (a study with a
    positive one is positive), over the labels table's where a study has none ("where present")."""
    labels = parse_labels(labels_csv) if labels_csv.strip() else Labels("study_id", [], [], {})
    by_study: dict[str, int] = {}
    for p in references:
        if p.study_uid and p.reference is not None:
            by_study[p.study_uid] = max(by_study.get(p.study_uid, 0), p.reference)
    position = {case: i for i, case in enumerate(labels.ids)}
    for study, label in sorted(by_study.items()):
        if study in position:
            labels.labels[position[study]] = label
        else:
            labels.ids.append(study)
            labels.labels.append(label)
            for values in labels.columns.values():
                values.append("unknown")
    return labels


# -- reports and releases ----------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("strongroom", "onnxruntime", "scikit-learn", "scipy", "numpy"):
        try:
            out[pkg] = pkg_version(pkg)
        except Exception:
            out[pkg] = "unknown"
    return out


def released_count(count: int | None) -> str:
    """A count as a released report states it: none, "fewer than 11", or the number."""
    if not count:
        return "no"
    return f"fewer than {metrics.MIN_CELL}" if count < metrics.MIN_CELL else str(count)


def released_dates(r: dict[str, Any]) -> str:
    """The studies' dates as released: by year, a bound only when at least MIN_CELL studies fall in that
    year (the earliest or latest study alone is never told)."""
    years: dict[str, int] = r.get("study_years") or {}
    if not years:
        return "study dates withheld" if r.get("study_months") else "study dates not recorded"
    first, last = min(years), max(years)
    low, high = years[first] >= metrics.MIN_CELL, years[last] >= metrics.MIN_CELL
    if first == last:
        return f"studies of {first}" if low else "study dates withheld (small cells)"
    if low and high:
        return f"studies from {first} to {last}"
    if low or high:
        return f"studies from {first} on" if low else f"studies up to {last}"
    return "study dates withheld (small cells)"


def checklist(ev: Evaluation, mv: Vendor | None, model: ModelVersion, project: Project,
              dataset: str, inputs: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """The CLAIM / TRIPOD-AI items the platform fills itself (item ids as in the checklists), under the
    report's disclosure control: counts by :func:`released_count`, dates by :func:`released_dates`."""
    r = ev.result or {}
    p = ev.protocol
    return [
        {"item": "Data source", "ref": "CLAIM 7 / TRIPOD-AI 5a",
         "value": f"Clinic project {project.name!r}, dataset {dataset}, images from the clinic's archive"},
        {"item": "Dates", "ref": "CLAIM 8 / TRIPOD-AI 5b",
         "value": released_dates(r) + (f"; evaluated {ev.finished_at:%Y-%m-%d}" if ev.finished_at else "")},
        {"item": "Eligibility / inclusion", "ref": "CLAIM 9 / TRIPOD-AI 6a",
         "value": (p.get("inclusion") or "every instance of the dataset version with a reference label")
         + f"; {released_count(r.get('matched'))} cases analysed, {released_count(r.get('missing'))} labelled "
           f"cases without a prediction, {released_count(r.get('unreadable'))} unreadable instances excluded"},
        {"item": "Reference standard", "ref": "CLAIM 14 / TRIPOD-AI 7a",
         "value": (p.get("reference_standard") or "labels table supplied by the clinic")
         + (f"; read from {released_count(r.get('references'))} DICOM SR/SEG instances of the dataset by study "
            f"(SHA-256 {r.get('references_sha256', '')}), the labels table where a study has none"
            if p.get("reference_source") == "dicom" else "")
         + f" (labels table SHA-256 {ev.labels_sha256})"},
        {"item": "Execution", "ref": "CLAIM 23",
         "value": "onnxruntime on " + (", ".join((r.get("execution") or {}).get("providers", [])) or "n/a")},
        {"item": "Model", "ref": "CLAIM 22 / TRIPOD-AI 12",
         "value": f"{model.name} {model.version} by {mv.name if mv else '?'} ({model.mode}); "
                  f"SHA-256 {model.sha256 or 'n/a'}; intended use: {model.intended_use}"},
        {"item": "Preprocessing", "ref": "CLAIM 12", "value": json.dumps(model.contract, sort_keys=True)},
        {"item": "Unit of analysis", "ref": "CLAIM 28", "value": f"{p.get('level', 'image')} level"},
        {"item": "Performance metrics", "ref": "CLAIM 29 / TRIPOD-AI 12e",
         "value": "AUC with calibrated release noise and its 95 % CI (Hanley & McNeil's SE at the released AUC, "
                  "with the noise's variance; the clinic holds DeLong's (Sun & Xu) and the stratified bootstrap "
                  "CIs); sensitivity, specificity, PPV and NPV with Wilson 95 % CIs at "
                  + (", ".join(f"{k} (≥ {v:g})" for k, v in p.get("operating_points", {}).items()) or "no threshold")
                  + "".join(f"; sensitivity ≥ {t:g}" for t in p.get("target_sensitivities", []))
                  + "; calibration: reliability curve, Brier score (with release noise), ECE over the released "
                    "bins"},
        {"item": "Subgroups", "ref": "CLAIM 33 / TRIPOD-AI 14b",
         "value": ", ".join(p.get("subgroups", [])) or "none"},
        {"item": "Disclosure control", "ref": "platform",
         "value": f"every count under {metrics.MIN_CELL} suppressed with the figures it could be worked back "
                  "from (operating points, reliability bins and ROC points released only where every cell, and "
                  f"the difference with every other released cut, is 0 or at least {metrics.MIN_CELL} cases); "
                  "small subgroups hidden and subgroup operating points withheld with complementary "
                  "suppression; thresholds found from the data rounded down to a coarse grid; study dates by "
                  "year; refused for degenerate scores, and for cases and scores that differ in some but fewer "
                  f"than {metrics.MIN_CELL} from those of a report released before, whose cuts each cut released "
                  f"here differs from by none or at least {metrics.MIN_CELL} of each class; AUC and Brier score "
                  "with Laplace noise scaled to what one case's label can move them (epsilon "
                  f"{metrics.NOISE_EPSILON:g} each); the project's evaluations of a vendor's models limited per "
                  "period"},
        {"item": "Software versions", "ref": "CLAIM 23",
         "value": ", ".join(f"{k} {v}" for k, v in _versions().items())},
        {"item": "Inputs and outputs", "ref": "platform",
         "value": f"inputs {canonical_sha256(ev.inputs if inputs is None else inputs)[:16]}…, "
                  f"outputs {ev.outputs_sha256 or ''}"},
    ]


def build_report(session: Session, ev: Evaluation, context: metrics.ReleaseContext | None = None,
                 cases: Cases | None = None) -> dict[str, Any]:
    """The report as released: the figures through ``metrics.suppress`` (with the release's ``context``),
    each block's ties counted afresh from its ``cases`` (results computed before they were recorded have
    none), the checklist."""
    mv = session.get_one(ModelVersion, ev.model_version_id)
    vendor = session.get_one(Vendor, mv.vendor_id)
    project = session.get_one(Project, ev.project_id)
    dataset = ev.inputs.get("dataset", "predictions uploaded by the clinic (results-only)")
    assert ev.result is not None
    # the number of files is not released: with the counts of cases analysed, unreadable instances and
    # SR/SEG objects it would give the (possibly small) number of instances left out for want of a label;
    # the checksum of the file list stays
    inputs = {k: v for k, v in ev.inputs.items() if k != "files"}
    result = ev.result["metrics"] if cases is None else _with_ties(ev.result["metrics"], cases)
    return {
        "format": REPORT_FORMAT,
        "title": ev.title,
        "clinic": project.name,
        "model": {"vendor": vendor.name, "name": mv.name, "version": mv.version, "mode": mv.mode,
                  "sha256": mv.sha256, "intended_use": mv.intended_use, "id": str(mv.id)},
        "evaluated_at": ev.finished_at.isoformat() if ev.finished_at else None,
        "level": ev.protocol.get("level", "image"),
        "probabilities": ev.result.get("probabilities", True),
        "metrics": metrics.suppress(result, context),
        "min_cell": metrics.MIN_CELL,
        "inputs": inputs,
        "outputs_sha256": ev.outputs_sha256,
        "checklist": checklist(ev, vendor, mv, project, str(dataset), inputs),
    }


def _with_ties(result: dict[str, Any], cases: Cases) -> dict[str, Any]:
    """The result with each block's ties counted from its cases (what ``metrics.degenerate`` reads)."""
    blocks = cases.blocks
    subgroups = {column: [{**r, "ties": metrics.ties(blocks[metrics.block_name(column, str(r["level"]))].scores)}
                          for r in rows] for column, rows in result.get("subgroups", {}).items()}
    return {**result, "ties": metrics.ties(cases.scores), "subgroups": subgroups}


@dataclass(frozen=True)
class _Earlier:
    """A report of the project that went to a vendor (in review or released), with its evaluation's cases."""

    release: Release
    evaluation: Evaluation
    cases: Cases


def _earlier_reports(session: Session, project_id: uuid.UUID) -> list[_Earlier]:
    rows = session.execute(select(Release, Evaluation).join(Evaluation, Evaluation.id == Release.evaluation_id)
                           .where(Evaluation.project_id == project_id, Release.state.in_((IN_REVIEW, RELEASED)))
                           .order_by(Release.created_at))
    found: dict[uuid.UUID, Cases | None] = {}
    out = []
    for release, ev in rows:
        if ev.id not in found:
            try:
                found[ev.id] = analysed_cases(session, ev)
            except (Invalid, KeyError):  # no reference standard or protocol left to read: it released no figures
                found[ev.id] = None
        cases = found[ev.id]
        if cases is not None:
            out.append(_Earlier(release, ev, cases))
    return out


def _shown_blocks(report_metrics: dict[str, Any]) -> set[str]:
    """The blocks a report released: the whole cohort and its shown subgroup levels."""
    return {metrics.OVERALL} | {metrics.block_name(column, str(level["level"]))
                                for column, group in (report_metrics.get("subgroups") or {}).items()
                                for level in group.get("levels", [])}


def _release_context(secret: bytes, cases: Cases, earlier: list[_Earlier]) -> metrics.ReleaseContext:
    """The noise of this release (keyed by the hub secret, fixed per block, cohort with its labels, and the
    ranking or the scores a figure depends on) and the cuts of the earlier reports on the same cases."""
    blocks = cases.blocks
    history = CutHistory()
    for e in earlier:
        theirs = e.cases.blocks
        released = e.release.report.get("metrics") or {}
        history.add(metrics.OVERALL, theirs[metrics.OVERALL], metrics.released_cuts(released))
        for column, group in (released.get("subgroups") or {}).items():
            for level in group.get("levels", []):
                name = metrics.block_name(column, str(level["level"]))
                if name in theirs:
                    history.add(name, theirs[name], metrics.released_cuts(level))
    key = hmac.new(secret, NOISE_KEY, hashlib.sha256).digest()

    def noise(block: str, figure: str, scale: float) -> float:
        return metrics.laplace(key, f"{block}|{figure}|{blocks[block].fingerprint(figure)}", scale)

    def allowed(block: str, cut: metrics.Cut) -> bool:
        return history.allows(block, blocks[block], cut)

    return metrics.ReleaseContext(noise=noise, cut_allowed=allowed)


def _refusal(report: dict[str, Any], cases: Cases, earlier: list[_Earlier]) -> str | None:
    """Why this report may not go to the vendor at all, or None: degenerate scores (its figures would tell the
    labels of the few cases scored apart), or cases and scores that differ by a few cases from those of a
    report released before in a block both released (the two reports' difference would tell those cases'
    labels)."""
    released = report["metrics"]
    if released.get("degenerate"):
        return f"The report cannot be released: the model's {released['degenerate']}."
    mine = cases.blocks
    for e in earlier:
        theirs = e.cases.blocks
        for name in sorted(_shown_blocks(released) & _shown_blocks(e.release.report.get("metrics") or {})):
            if name not in mine or name not in theirs:
                continue
            by_order, by_score = differing(mine[name], theirs[name])
            if a_few(by_order) or a_few(by_score):
                where = "" if name == metrics.OVERALL else f" (subgroup {name})"
                state = "released" if e.release.state == RELEASED else "in review"
                return (f"The report cannot be released: its cases and scores differ from those of the report on "
                        f"{e.evaluation.title!r} ({state}) in fewer than {metrics.MIN_CELL} cases{where}, so the "
                        "difference of the two reports would tell those cases' labels. Two reports on the same "
                        f"cases go out only if their scores are the same or differ in at least {metrics.MIN_CELL} "
                        "cases.")
    return None


def request_release(session: Session, hub: Hub, principal: Principal, slug: str, evaluation_id: str) -> Release:
    """Ask for an evaluation's aggregate report to go to the vendor: frozen now, reviewed by the project's
    named airlock reviewers (needs ``export``). The platform refuses it first (``_refusal``; the refusal is
    recorded, state ``refused``, audited and committed although the request then fails with 409)."""
    access = projects.open_project(session, principal, slug)
    access.require("export")
    ev = get_evaluation(session, principal, slug, evaluation_id)
    if ev.state != DONE:
        raise Conflict(f"the evaluation is {ev.state}, not done")
    if session.scalar(select(Release.id).where(Release.evaluation_id == ev.id, Release.state == IN_REVIEW)):
        raise Conflict("a release of this evaluation is already in review")
    # one release decision of a project at a time: each is checked against those made before it
    session.execute(select(Project.id).where(Project.id == access.project.id).with_for_update())
    mv = session.get_one(ModelVersion, ev.model_version_id)
    cases = analysed_cases(session, ev)
    earlier = _earlier_reports(session, access.project.id)
    report = build_report(session, ev, _release_context(hub.secret, cases, earlier), cases)
    refused = _refusal(report, cases, earlier)
    if refused is not None:
        report["refused"] = refused
    needed = int(projects.get_setting(session, access.project.id, "airlock_approvals"))
    release = Release(evaluation_id=ev.id, vendor_id=mv.vendor_id, requested_by=principal.user.id,
                      state=IN_REVIEW if refused is None else REFUSED, approvals_needed=max(1, needed),
                      report=report, sha256=canonical_sha256(report),
                      decided_at=None if refused is None else utcnow())
    session.add(release)
    session.flush()
    if refused is not None:
        audit.record(session, principal.actor, "vai.release.refused", outcome="denied", project_id=access.project.id,
                     target=f"vai-release:{release.id}", details={"evaluation": str(ev.id), "reason": refused})
        session.commit()
        raise Conflict(refused)
    audit.record(session, principal.actor, "vai.release.requested", project_id=access.project.id,
                 target=f"vai-release:{release.id}", details={"evaluation": str(ev.id), "sha256": release.sha256})
    return release


def _reviewers(session: Session, project_id: uuid.UUID) -> list[uuid.UUID]:
    from ..airlock.service import reviewer_ids  # the airlock's named reviewers review VAI releases too

    return reviewer_ids(session, project_id)


def list_releases(session: Session, principal: Principal, slug: str) -> list[tuple[Release, Evaluation]]:
    access = projects.open_project(session, principal, slug)
    rows = session.execute(select(Release, Evaluation).join(Evaluation, Evaluation.id == Release.evaluation_id)
                           .where(Evaluation.project_id == access.project.id).order_by(Release.created_at.desc()))
    return [(r, e) for r, e in rows]


def release_reviews(session: Session, release: Release) -> list[ReleaseReview]:
    return list(session.scalars(select(ReleaseReview).where(ReleaseReview.release_id == release.id)
                                .order_by(ReleaseReview.id)))


def review_release(session: Session, principal: Principal, slug: str, release_id: str, *, decision: str,
                   reason: str = "", fresh_minutes: int) -> Release:
    """A named reviewer approves or rejects (with a reason); never one's own request, never twice. An approval
    sends results out of the project to the vendor: it needs a second factor within ``fresh_minutes`` (a stolen
    session or an old token must not release a report); a rejection never waits for one."""
    access = projects.open_project(session, principal, slug)
    release = session.get(Release, _uuid(release_id, "release"))
    ev = session.get(Evaluation, release.evaluation_id) if release else None
    if release is None or ev is None or ev.project_id != access.project.id:
        raise NotFound("no such release")
    if decision not in ("approve", "reject"):
        raise Invalid("decision must be 'approve' or 'reject'")
    if principal.user.id not in _reviewers(session, access.project.id):
        raise Forbidden("you are not a named reviewer of this project")
    if release.requested_by == principal.user.id:
        raise Forbidden("nobody reviews their own request")
    if release.state != IN_REVIEW:
        raise Conflict(f"the release is {release.state.replace('_', ' ')}, not in review")
    if decision == "approve":
        require_fresh_mfa(principal, fresh_minutes)
    reason = reason.strip()
    if decision == "reject" and not reason:
        raise Invalid("give a reason for the rejection")
    if session.scalar(select(ReleaseReview.id).where(ReleaseReview.release_id == release.id,
                                                     ReleaseReview.reviewer_id == principal.user.id)):
        raise Conflict("you have already reviewed this release")
    session.add(ReleaseReview(release_id=release.id, reviewer_id=principal.user.id, decision=decision,
                              reason=reason[:5000]))
    session.flush()
    audit.record(session, principal.actor, f"vai.release.{decision}d", project_id=access.project.id,
                 target=f"vai-release:{release.id}", details={"reason": reason[:500]} if reason else None)
    if decision == "reject":
        release.state, release.decided_at = REJECTED, utcnow()
    elif sum(1 for v in release_reviews(session, release) if v.decision == "approve") >= release.approvals_needed:
        release.state, release.decided_at = RELEASED, utcnow()
        audit.record(session, principal.actor, "vai.release.released", project_id=access.project.id,
                     target=f"vai-release:{release.id}", details={"sha256": release.sha256})
    return release


def visible_report(session: Session, principal: Principal, release_id: str) -> Release:
    """A released report for its vendor's members; any release for members of the clinic's project. 404
    for everyone else, and for the vendor until it is released."""
    release = session.get(Release, _uuid(release_id, "report"))
    if release is None:
        raise NotFound("no such report")
    if release.state == RELEASED and is_vendor_member(session, principal, release.vendor_id):
        return release
    ev = session.get_one(Evaluation, release.evaluation_id)
    if session.scalar(select(Membership.id).where(Membership.project_id == ev.project_id,
                                                  Membership.user_id == principal.user.id)) is not None:
        projects.open_project(session, principal, session.get_one(Project, ev.project_id).slug)
        return release
    raise NotFound("no such report")


def vendor_reports(session: Session, principal: Principal, slug: str) -> list[Release]:
    vendor = _vendor_of_member(session, principal, slug)
    return list(session.scalars(select(Release).where(Release.vendor_id == vendor.id, Release.state == RELEASED)
                                .order_by(Release.decided_at.desc())))


def stored_part(stored: object, key: str) -> dict[str, Any]:
    """The mapping ``stored[key]`` of a report or a result as stored (JSON, possibly made by hand or by an older
    version), or {} when ``stored`` is no mapping or the part is missing or of another shape: what reads a stored
    report never assumes its parts are there."""
    part = stored.get(key) if isinstance(stored, dict) else None
    return part if isinstance(part, dict) else {}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def benchmark(session: Session, principal: Principal, version_id: str) -> dict[str, Any]:
    """A model version across clinics: DerSimonian–Laird pooled AUC of its released reports (aggregates
    only, never raw data). For the vendor's members."""
    mv = session.get(ModelVersion, _uuid(version_id, "model version"))
    if mv is None or not is_vendor_member(session, principal, mv.vendor_id):
        raise NotFound("no such model version")
    reports = list(session.scalars(select(Release).where(Release.vendor_id == mv.vendor_id,
                                                         Release.state == RELEASED)
                                   .order_by(Release.decided_at)))
    studies = []
    for r in reports:
        if stored_part(r.report, "model").get("id") != str(mv.id):
            continue
        auc = stored_part(stored_part(r.report, "metrics"), "auc")
        if all(_is_number(auc.get(k)) for k in ("auc", "se", "low", "high")):  # suppressed or not recorded: left out
            studies.append({"report": str(r.id), "clinic": r.report.get("clinic"), "auc": auc["auc"],
                            "se": auc["se"], "low": auc["low"], "high": auc["high"]})
    pooled = metrics.meta_analysis([s["auc"] for s in studies], [s["se"] for s in studies]) \
        if len(studies) >= 2 else None
    return {"model": {"name": mv.name, "version": mv.version, "id": str(mv.id)}, "studies": studies,
            "pooled": pooled, "method": "DerSimonian-Laird random effects on the logit AUC"}

