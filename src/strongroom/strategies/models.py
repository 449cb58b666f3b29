"""A project's pseudonymization strategy, one row per saved version (never edited in place), and the runs
of a version on extracts in the project's archive."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin, utcnow

Big = BigInteger().with_variant(Integer, "sqlite")


class StrategyVersion(IdMixin, CreatedMixin, Base):
    __tablename__ = "strategy_versions"
    __table_args__ = (UniqueConstraint("project_id", "version", name="uq_strategy_versions_project_version"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per project, in the order saved
    name: Mapped[str] = mapped_column(String(120))
    text: Mapped[str] = mapped_column(Text)  # the TOML as written: what the steward reviewed is what runs
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    comment: Mapped[str] = mapped_column(String(500), default="")


# Run states: queued → running → passed | failed (the verification said no) | error (the run could not be made)
QUEUED, RUNNING, PASSED, FAILED, ERROR = "queued", "running", "passed", "failed", "error"
FINISHED = (PASSED, FAILED, ERROR)


class StrategyRun(IdMixin, CreatedMixin, Base):
    """One strategy version applied to one extract of the project's archive, by a job. Passed: the verified
    output and the report are archived files of a draft dataset. Otherwise only the report, here."""

    __tablename__ = "strategy_runs"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    strategy_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("strategy_versions.id"))
    input_file_id: Mapped[str] = mapped_column(ForeignKey("archive_files.id"))
    state: Mapped[str] = mapped_column(String(12), default=QUEUED)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    rows_in: Mapped[int | None] = mapped_column(Big)
    rows_out: Mapped[int | None] = mapped_column(Big)
    # indexed: the release check asks, per table of a version, for the passing run that wrote it
    output_file_id: Mapped[str | None] = mapped_column(ForeignKey("archive_files.id"), index=True)
    report_file_id: Mapped[str | None] = mapped_column(ForeignKey("archive_files.id"))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    finished_at: Mapped[dt.datetime | None]


# Data request states: open (being prepared) → released (the version is out, access granted) | closed
OPEN, RELEASED, CLOSED = "open", "released", "closed"


class DataRequest(CreatedMixin, Base):
    """A request for clinical data, worked through the eight steps by the owning project's stewards: the
    researcher's selection and parameters (from an access application, or written by the project itself),
    the strategy version the release is made with, the extract's run, and the released dataset version.
    The evidence of each step is read from what it links to (the run, its files, the dataset version)."""

    __tablename__ = "data_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # SRQ-…
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    application_id: Mapped[str | None] = mapped_column(ForeignKey("access_applications.id"), index=True)
    title: Mapped[str] = mapped_column(String(300))
    selection: Mapped[str] = mapped_column(Text, default="")  # cohort and criteria, as the researcher wrote them
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # variables, period_start, period_end
    strategy_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("strategy_versions.id"))
    run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("strategy_runs.id"))  # the newest run
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))  # the passing run's dataset
    dataset_version: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12), default=OPEN)
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
