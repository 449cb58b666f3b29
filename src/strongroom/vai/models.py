"""VAI tables: vendors (organisations with their own users), their model versions, a clinic project's
evaluations with one checkpointed prediction per instance, and the releases of an evaluation's aggregate
report to the vendor (two-reviewer review, as in the airlock)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin

Big = BigInteger().with_variant(Integer, "sqlite")

# evaluation states
CREATED, RUNNING, DONE, FAILED = "created", "running", "done", "failed"
# release states (refused: the platform's disclosure control refused it before any review; never released)
IN_REVIEW, RELEASED, REJECTED, REFUSED = "in_review", "released", "rejected", "refused"
ONNX, RESULTS_ONLY = "onnx", "results-only"
# the columns a labels table may name its instances by, in the order they are looked for
ID_COLUMNS = ("image_id", "study_id", "case_id")


class Vendor(IdMixin, CreatedMixin, Base):
    """An AI vendor: an organisation whose users register model versions and read released reports."""

    __tablename__ = "vai_vendors"

    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))


class VendorMember(Base):
    __tablename__ = "vai_vendor_members"

    vendor_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("vai_vendors.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True,
                                               index=True)


class ModelVersion(IdMixin, CreatedMixin, Base):
    """One version of a vendor's model: an ONNX file (stored under its SHA-256) with its input contract,
    or results-only (the clinic runs the tool elsewhere and uploads its predictions)."""

    __tablename__ = "vai_model_versions"
    __table_args__ = (UniqueConstraint("vendor_id", "name", "version", name="uq_vai_model_versions"),)

    vendor_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("vai_vendors.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    version: Mapped[str] = mapped_column(String(40))
    mode: Mapped[str] = mapped_column(String(16))  # onnx | results-only
    intended_use: Mapped[str] = mapped_column(Text)
    contract: Mapped[dict[str, Any]] = mapped_column(JSON)  # modality, window, size, normalise
    output: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"kind": "score"|"probabilities", "index": n}
    sha256: Mapped[str | None] = mapped_column(String(64))  # of the ONNX file (declared, then verified)
    size: Mapped[int | None] = mapped_column(Big)
    file_key: Mapped[str | None] = mapped_column(String(300))  # None until the file is uploaded
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))


class Evaluation(IdMixin, CreatedMixin, Base):
    """A model version × a dataset version of the project × a reference labels table × a protocol."""

    __tablename__ = "vai_evaluations"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    model_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("vai_model_versions.id"), index=True)
    dataset_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    title: Mapped[str] = mapped_column(String(200))
    labels_csv: Mapped[str] = mapped_column(Text)  # the reference standard as uploaded (stays in the project)
    labels_sha256: Mapped[str] = mapped_column(String(64))
    protocol: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(12), default=CREATED)
    done: Mapped[int] = mapped_column(Big, default=0)  # instances predicted
    total: Mapped[int] = mapped_column(Big, default=0)  # instances to predict
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # checksums of what went in
    outputs_sha256: Mapped[str | None] = mapped_column(String(64))  # of the predictions and the result
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # every figure, unsuppressed: clinic only
    error: Mapped[str | None] = mapped_column(Text)
    execution: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {"providers": [onnxruntime's, per run]}
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    finished_at: Mapped[dt.datetime | None]


class Prediction(Base):
    """One instance's score, written once (the checkpoint a resumed run skips); for a DICOM SR or SEG
    instance of the dataset, the reference label it gives its study instead."""

    __tablename__ = "vai_predictions"

    evaluation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("vai_evaluations.id", ondelete="CASCADE"),
                                                     primary_key=True)
    item: Mapped[str] = mapped_column(String(200), primary_key=True)  # archive file id, or the uploaded case id
    path: Mapped[str] = mapped_column(String(1024), default="")
    sop_uid: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    score: Mapped[float | None] = mapped_column(Float)  # None: the instance could not be read (or is a reference)
    reference: Mapped[int | None] = mapped_column(Integer)  # a DICOM SR/SEG instance: the label it gives its study
    error: Mapped[str] = mapped_column(String(300), default="")


class Release(IdMixin, CreatedMixin, Base):
    """An evaluation's aggregate report on its way to the vendor: frozen when requested, released after
    the project's named reviewers approved it (as many as the airlock's ``airlock_approvals``)."""

    __tablename__ = "vai_releases"

    evaluation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("vai_evaluations.id", ondelete="CASCADE"),
                                                     index=True)
    vendor_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("vai_vendors.id"), index=True)
    requested_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    state: Mapped[str] = mapped_column(String(12), default=IN_REVIEW)
    approvals_needed: Mapped[int] = mapped_column(Integer, default=2)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)  # suppressed aggregates + the checklist
    sha256: Mapped[str] = mapped_column(String(64))  # of the report's canonical JSON
    decided_at: Mapped[dt.datetime | None]


class ReleaseReview(CreatedMixin, Base):
    __tablename__ = "vai_release_reviews"
    __table_args__ = (UniqueConstraint("release_id", "reviewer_id", name="uq_vai_release_reviews_reviewer"),)

    id: Mapped[int] = mapped_column(Big, primary_key=True, autoincrement=True)
    release_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("vai_releases.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(8))  # approve | reject
    reason: Mapped[str] = mapped_column(Text, default="")


__all__ = ["Evaluation", "ModelVersion", "Prediction", "Release", "ReleaseReview", "Vendor", "VendorMember"]
