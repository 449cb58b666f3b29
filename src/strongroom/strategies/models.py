"""A project's pseudonymization strategy, one row per saved version (never edited in place), and the runs
of a version on extracts in the project's archive."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin

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
    output_file_id: Mapped[str | None] = mapped_column(ForeignKey("archive_files.id"))
    report_file_id: Mapped[str | None] = mapped_column(ForeignKey("archive_files.id"))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    finished_at: Mapped[dt.datetime | None]
