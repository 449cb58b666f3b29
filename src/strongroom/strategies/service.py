"""A project's strategy: saved as versions, checked on sample tables in-platform, applied with the
project's own key (so table pseudonyms match the project's DICOM pseudonyms)."""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..config import Settings
from ..errors import Invalid, NotFound
from ..identity.principal import Principal
from ..imaging.keystore import project_secret
from ..projects.service import ProjectAccess
from . import engine
from .models import StrategyVersion
from .spec import EXAMPLE, Strategy, load_strategy
from .tables import SUFFIXES, TableError, read_table, suffix_of

EDIT_RIGHT = "import"  # stewards and the PI curate what a project's extracts become
READ_RIGHT = "read-data"
MAX_PREVIEW_ROWS = 200_000  # a sample checked on a page; whole extracts run as `strongroom strategy apply`


def parse(text: str, *, new: bool = False) -> Strategy:
    """The strategy in `text`, or Invalid naming each problem by its place in the file. `new`: a text being
    checked or saved, not a saved version being loaded (`spec.load_strategy`)."""
    try:
        return load_strategy(text, new=new)
    except ValidationError as exc:
        problems = [{"where": ".".join(str(p) for p in e["loc"]) or "(top level)", "problem": e["msg"]}
                    for e in exc.errors(include_url=False, include_context=False)]
        raise Invalid("the strategy is not valid: " + "; ".join(f"{p['where']}: {p['problem']}" for p in problems),
                      problems=problems) from None
    except ValueError as exc:
        raise Invalid(str(exc), problems=[{"where": "(file)", "problem": str(exc)}]) from None


def versions(session: Session, access: ProjectAccess) -> list[StrategyVersion]:
    access.require(READ_RIGHT)
    return list(session.scalars(select(StrategyVersion).where(StrategyVersion.project_id == access.project.id)
                                .order_by(StrategyVersion.version.desc())))


def newest(session: Session, project_id: uuid.UUID) -> StrategyVersion | None:
    """The project's newest strategy, whoever asks: for the hub's own checks (the airlock's), which must not
    depend on what the person who asked for them may read."""
    return session.scalar(select(StrategyVersion).where(StrategyVersion.project_id == project_id)
                          .order_by(StrategyVersion.version.desc()).limit(1))


def get_version(session: Session, access: ProjectAccess, version: int | None = None) -> StrategyVersion:
    """A saved version (the newest when `version` is None); 404 when there is none."""
    access.require(READ_RIGHT)
    query = select(StrategyVersion).where(StrategyVersion.project_id == access.project.id)
    query = (query.where(StrategyVersion.version == version) if version is not None
             else query.order_by(StrategyVersion.version.desc()).limit(1))
    row = session.scalar(query)
    if row is None:
        raise NotFound("this project has no strategy yet" if version is None else f"no strategy version {version}")
    return row


def save(session: Session, principal: Principal, access: ProjectAccess, text: str, *,
         comment: str = "") -> tuple[StrategyVersion, bool]:
    """Save `text` as the project's next version; (version, created). Saving the newest text again
    creates nothing."""
    access.require(EDIT_RIGHT)
    text = text.replace("\r\n", "\n").strip() + "\n"  # a browser's textarea and the API save the same text alike
    strategy = parse(text, new=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    newest = session.scalar(select(StrategyVersion).where(StrategyVersion.project_id == access.project.id)
                            .order_by(StrategyVersion.version.desc()).limit(1))
    if newest is not None and newest.sha256 == digest:
        return newest, False
    number = (session.scalar(select(func.max(StrategyVersion.version))
                             .where(StrategyVersion.project_id == access.project.id)) or 0) + 1
    row = StrategyVersion(project_id=access.project.id, version=number, name=strategy.name, text=text,
                          sha256=digest, created_by=principal.user.id, comment=comment.strip())
    session.add(row)
    audit.record(session, principal.actor, "strategy.saved", project_id=access.project.id,
                 target=f"strategy:{number}", details={"name": strategy.name, "sha256": digest})
    session.flush()
    return row, True


def check_sample(session: Session, settings: Settings, principal: Principal, access: ProjectAccess,
                 version: StrategyVersion, filename: str, data: bytes) -> dict[str, Any]:
    """Apply a saved version to a sample table in memory and return its report. Nothing is stored but
    the audit event: the sample and its output never leave this request."""
    access.require(EDIT_RIGHT)
    suffix = suffix_of(filename)
    if suffix not in SUFFIXES:
        raise Invalid(f"{filename}: upload a table ({', '.join(SUFFIXES)})")
    strategy = parse(version.text)
    with tempfile.TemporaryDirectory(prefix="strongroom-sample-") as tmp:
        path = Path(tmp) / ("sample" + suffix)
        path.write_bytes(data)
        try:
            frame = read_table(path).head(MAX_PREVIEW_ROWS + 1).collect()
            if frame.height > MAX_PREVIEW_ROWS:
                raise Invalid(f"a sample checked on this page has at most {MAX_PREVIEW_ROWS:,} rows; run whole "
                              "extracts with `strongroom strategy apply --project`")
            run = engine.apply(frame, strategy, project_secret(session, settings, access.project.id))
        except (TableError, engine.StrategyError) as exc:
            raise Invalid(str(exc)) from None
    report = run.report(strategy)
    report["preview"] = _preview(run.output)
    audit.record(session, principal.actor, "strategy.checked", outcome="ok" if run.passed else "failed",
                 project_id=access.project.id, target=f"strategy:{version.version}",
                 details={"rows_in": report["rows_in"], "rows_out": report["rows_out"]})
    return report


def _preview(frame: pl.DataFrame, rows: int = 10) -> dict[str, Any]:
    """The first rows of the output, as text, for the reviewer's eye."""
    head = frame.head(rows)
    return {"columns": head.columns,
            "rows": [["" if v is None else str(v) for v in row] for row in head.iter_rows()]}


def example_text() -> str:
    """The seed's strategy, shipped with the package as a starting point."""
    return EXAMPLE.read_text(encoding="utf-8")
