"""VAI API. Vendors: /api/v1/vai/… (model versions, their file, released reports, the benchmark across
clinics). Clinics: /api/v1/projects/{slug}/vai/… (evaluations, releases and their reviews). Outside one's
vendor or project everything is 404."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import Field

from ..deps import Admin, Db, HubDep, ProjectsRead, ProjectsWrite, raw_body
from ..schemas import Body, Out
from . import service
from .models import Evaluation, ModelVersion, Release, Vendor

router = APIRouter(prefix="/api/v1", tags=["vai"])
ModelFile = Annotated[bytes, Depends(raw_body(service.MAX_MODEL_BYTES, "a model file is at most 512 MiB"))]


class VendorIn(Body):
    slug: str = Field(min_length=2, max_length=40, pattern=r"^[a-z0-9][a-z0-9-]{1,39}$")
    name: str = Field(min_length=1, max_length=200)


class VendorOut(Out):
    id: uuid.UUID
    slug: str
    name: str


class MemberIn(Body):
    user: str = Field(min_length=1, max_length=320, description="username, e-mail or id")


class ModelIn(Body):
    name: str = Field(min_length=1, max_length=120)
    version: str = Field(min_length=1, max_length=40)
    mode: Literal["onnx", "results-only"]
    intended_use: str = Field(min_length=1, max_length=5000)
    contract: dict[str, Any] | None = Field(
        default=None, description='input contract, e.g. {"modality": "CT", "window": {"center": 40, "width": 400}, '
                                  '"size": [64, 64], "normalise": {"mean": 0, "std": 1}}')
    output: dict[str, Any] | None = Field(default=None, description='{"kind": "score"} or {"kind": "probabilities", '
                                                                    '"index": 1}, optionally "name"')
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="the ONNX file's SHA-256")


class ModelOut(Out):
    id: uuid.UUID
    vendor: str
    name: str
    version: str
    mode: str
    intended_use: str
    contract: dict[str, Any]
    output: dict[str, Any]
    sha256: str | None
    size: int | None
    uploaded: bool
    created_at: dt.datetime


def _model_out(mv: ModelVersion, vendor: Vendor) -> ModelOut:
    return ModelOut(id=mv.id, vendor=vendor.slug, name=mv.name, version=mv.version, mode=mv.mode,
                    intended_use=mv.intended_use, contract=mv.contract, output=mv.output, sha256=mv.sha256,
                    size=mv.size, uploaded=mv.file_key is not None, created_at=mv.created_at)


class EvaluationIn(Body):
    model_version: str = Field(min_length=36, max_length=36, description="the model version's id (a UUID)")
    title: str = Field(min_length=1, max_length=200)
    dataset_id: str | None = Field(default=None, max_length=32)
    dataset_version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    labels_csv: str = Field(min_length=1, max_length=service.MAX_CSV_CHARS,
                            description="image_id|study_id|case_id, label (0/1), then subgroup columns")
    predictions_csv: str | None = Field(default=None, max_length=service.MAX_CSV_CHARS,
                                        description="results-only: case_id (or image_id/study_id), score")
    protocol: dict[str, Any] = Field(
        default_factory=dict,
        description="operating_points {name: threshold}, target_sensitivities [..], subgroups [columns], "
                    "level image|study, bootstrap (resamples), reference_standard, inclusion")


class EvaluationOut(Out):
    id: uuid.UUID
    title: str
    model_version: uuid.UUID
    state: str
    done: int
    total: int
    protocol: dict[str, Any]
    inputs: dict[str, Any]
    outputs_sha256: str | None
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    result: dict[str, Any] | None = Field(description="every figure, unsuppressed, and the failure lists: the "
                                                      "project's eyes only")


def _eval_out(ev: Evaluation) -> EvaluationOut:
    return EvaluationOut(id=ev.id, title=ev.title, model_version=ev.model_version_id, state=ev.state, done=ev.done,
                         total=ev.total, protocol=ev.protocol, inputs=ev.inputs, outputs_sha256=ev.outputs_sha256,
                         error=ev.error, created_at=ev.created_at, finished_at=ev.finished_at, result=ev.result)


class ReleaseOut(Out):
    id: uuid.UUID
    evaluation: uuid.UUID
    state: str
    approvals_needed: int
    approvals: int
    sha256: str
    created_at: dt.datetime
    decided_at: dt.datetime | None


class ReviewIn(Body):
    decision: Literal["approve", "reject"]
    reason: str = Field(default="", max_length=5000)


class ReportOut(Out):
    id: uuid.UUID
    state: str
    sha256: str
    decided_at: dt.datetime | None
    report: dict[str, Any]


def _release_out(db: Db, r: Release) -> ReleaseOut:
    approvals = sum(1 for v in service.release_reviews(db, r) if v.decision == "approve")
    return ReleaseOut(id=r.id, evaluation=r.evaluation_id, state=r.state, approvals_needed=r.approvals_needed,
                      approvals=approvals, sha256=r.sha256, created_at=r.created_at, decided_at=r.decided_at)


# -- vendors -----------------------------------------------------------------------------------
@router.post("/vai/vendors", response_model=VendorOut, status_code=201, summary="Create a vendor (operators)")
def create_vendor(db: Db, principal: Admin, body: VendorIn) -> VendorOut:
    return VendorOut.model_validate(service.create_vendor(db, principal, body.slug, body.name))


@router.post("/vai/vendors/{vendor}/members", status_code=204, summary="Add a user to a vendor (operators)")
def add_member(db: Db, principal: Admin, vendor: str, body: MemberIn) -> None:
    service.add_vendor_member(db, principal, vendor, body.user)


@router.get("/vai/models", response_model=list[ModelOut], summary="Registered model versions (every signed-in user)")
def list_models(db: Db, principal: ProjectsRead) -> list[ModelOut]:
    return [_model_out(m, v) for m, v in service.list_models(db, principal)]


@router.post("/vai/vendors/{vendor}/models", response_model=ModelOut, status_code=201,
             summary="Register a model version (the vendor's members)")
def register_model(db: Db, principal: ProjectsWrite, vendor: str, body: ModelIn) -> ModelOut:
    mv = service.register_model(db, principal, vendor, name=body.name, version=body.version, mode=body.mode,
                                intended_use=body.intended_use, contract=body.contract, output=body.output,
                                sha256=body.sha256)
    return _model_out(*service.get_model(db, str(mv.id)))


@router.put("/vai/models/{version_id}/file", response_model=ModelOut,
            summary="Upload a version's ONNX file (raw body; its SHA-256 must be the registered one)",
            openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}})
def upload_model(principal: ProjectsWrite, data: ModelFile, db: Db, hub: HubDep, version_id: uuid.UUID) -> ModelOut:
    mv = service.upload_model_file(db, hub, principal, str(version_id), data)
    return _model_out(*service.get_model(db, str(mv.id)))


@router.get("/vai/vendors/{vendor}/reports", response_model=list[ReportOut],
            summary="The vendor's released reports (its members)")
def vendor_reports(db: Db, principal: ProjectsRead, vendor: str) -> list[ReportOut]:
    return [ReportOut(id=r.id, state=r.state, sha256=r.sha256, decided_at=r.decided_at, report=r.report)
            for r in service.vendor_reports(db, principal, vendor)]


@router.get("/vai/reports/{report_id}", response_model=ReportOut,
            summary="A report: released ones for the vendor's members, any for the clinic's project members")
def get_report(db: Db, principal: ProjectsRead, report_id: uuid.UUID) -> ReportOut:
    r = service.visible_report(db, principal, str(report_id))
    return ReportOut(id=r.id, state=r.state, sha256=r.sha256, decided_at=r.decided_at, report=r.report)


@router.get("/vai/models/{version_id}/benchmark", summary="A version across clinics: random-effects pooled AUC of "
                                                           "its released reports (the vendor's members)")
def get_benchmark(db: Db, principal: ProjectsRead, version_id: uuid.UUID) -> dict[str, Any]:
    return service.benchmark(db, principal, str(version_id))


# -- clinics -----------------------------------------------------------------------------------
@router.post("/projects/{slug}/vai/evaluations", response_model=EvaluationOut, status_code=201,
             summary="Evaluate a model version on a dataset version (or uploaded predictions): a job (429 past "
                     "the project's evaluation budget for the vendor)")
def create_evaluation(db: Db, principal: ProjectsWrite, slug: str, body: EvaluationIn) -> EvaluationOut:
    ev = service.create_evaluation(db, principal, slug, model_version_id=body.model_version, title=body.title,
                                   labels_csv=body.labels_csv, protocol=body.protocol, dataset_id=body.dataset_id,
                                   dataset_version=body.dataset_version, predictions_csv=body.predictions_csv)
    return _eval_out(ev)


@router.get("/projects/{slug}/vai/evaluations", response_model=list[EvaluationOut],
            summary="The project's evaluations")
def list_evaluations(db: Db, principal: ProjectsRead, slug: str) -> list[EvaluationOut]:
    return [_eval_out(e) for e in service.read_evaluations(db, principal, slug)]


@router.get("/projects/{slug}/vai/evaluations/{evaluation_id}", response_model=EvaluationOut,
            summary="An evaluation: progress, checksums and (done) every figure")
def get_evaluation(db: Db, principal: ProjectsRead, slug: str, evaluation_id: uuid.UUID) -> EvaluationOut:
    return _eval_out(service.read_evaluations(db, principal, slug, str(evaluation_id))[0])


@router.post("/projects/{slug}/vai/evaluations/{evaluation_id}/releases", response_model=ReleaseOut,
             status_code=201, summary="Ask for the aggregate report's release to the vendor (two-reviewer review; "
                                      "409 when the disclosure checks refuse it, with the reason)")
def request_release(db: Db, hub: HubDep, principal: ProjectsWrite, slug: str,
                    evaluation_id: uuid.UUID) -> ReleaseOut:
    return _release_out(db, service.request_release(db, hub, principal, slug, str(evaluation_id)))


@router.get("/projects/{slug}/vai/releases", response_model=list[ReleaseOut], summary="The project's releases")
def list_releases(db: Db, principal: ProjectsRead, slug: str) -> list[ReleaseOut]:
    return [_release_out(db, r) for r, _ in service.list_releases(db, principal, slug)]


@router.post("/projects/{slug}/vai/releases/{release_id}/reviews", response_model=ReleaseOut,
             summary="A named reviewer approves (fresh MFA) or rejects a release")
def review_release(db: Db, hub: HubDep, principal: ProjectsWrite, slug: str, release_id: uuid.UUID, body: ReviewIn
                   ) -> ReleaseOut:
    return _release_out(db, service.review_release(db, principal, slug, str(release_id), decision=body.decision,
                                                   reason=body.reason,
                                                   fresh_minutes=hub.settings.security.fresh_mfa_minutes))
