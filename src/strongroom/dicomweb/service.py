"""The project's C-MOVE destinations changed by the operator on the hub host (``strongroom dicomweb
move-destinations``). Members change them like every project setting (``projects.service.change_setting``:
manage-settings right, fresh MFA); this path is the operator's, audited the same way (before and after)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..audit.service import Actor
from ..db import utcnow
from ..errors import Invalid, NotFound
from ..projects import service as projects
from ..projects.models import Project, ProjectSetting
from .settings import KEY, MOVE_DESTINATIONS_SETTING, MoveDestination, check_unique


def move_destinations(session: Session, slug: str) -> list[MoveDestination]:
    project = _project(session, slug)
    return [MoveDestination.model_validate(v) for v in projects.get_setting(session, project.id, KEY)]


def set_move_destinations(session: Session, actor: Actor, slug: str, entries: list[dict[str, Any]]
                          ) -> list[MoveDestination]:
    """Replace the project's list (validated; an empty list locks the setting again). The row's
    ``changed_by`` names the project's PI (it must name a user); the audit event names the operator."""
    project = _project(session, slug)
    spec = MOVE_DESTINATIONS_SETTING
    try:
        value = spec.adapter.dump_python(spec.adapter.validate_python(entries), mode="json")
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = " ".join(str(x) for x in first.get("loc", ()) if not isinstance(x, int))
        raise Invalid(f"{where} {first.get('msg', '')}".strip()) from None
    check_unique(session, project.id, value)
    before = projects.get_setting(session, project.id, KEY)
    row = session.get(ProjectSetting, (project.id, KEY))
    if not value:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(ProjectSetting(project_id=project.id, key=KEY, value=value, changed_by=project.pi_id))
    else:
        row.value, row.changed_at = value, utcnow()
    audit.record(session, actor, "project.setting.opened" if value else "project.setting.locked",
                 project_id=project.id, target=f"setting:{KEY}",
                 details={"before": before, "after": value, "via": "cli"})
    session.flush()
    for listener in projects.PROJECT_CHANGED:  # as for a member's change
        listener(session, project.id, f"setting:{KEY}")
    return [MoveDestination.model_validate(v) for v in value]


def _project(session: Session, slug: str) -> Project:
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NotFound(f"no project {slug!r}")
    return project
