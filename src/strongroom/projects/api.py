"""Projects API. Every route resolves the project through the caller's membership: 404 outside."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Query, status
from pydantic import Field

from ..audit.api import AuditEventOut
from ..deps import Admin, AuditRead, Db, HubDep
from ..deps import ProjectsRead as Read
from ..deps import ProjectsWrite as Write
from ..identity.api import UserOut
from ..schemas import Body, Int64, IsoDate, Out
from . import service
from .models import Membership, Project

router = APIRouter(prefix="/api/v1", tags=["projects"])

ProjectClass = Literal["project", "fellowship", "network-partner"]


class ProjectOut(Out):
    id: uuid.UUID
    slug: str
    name: str
    description: str
    project_class: str
    ethics_ref: str
    pi: UserOut
    quota_bytes: int
    end_date: dt.date
    status: str
    created_at: dt.datetime


class MyProjectOut(ProjectOut):
    role: str
    rights: list[str]


class MemberOut(Out):
    user: UserOut
    role: str
    delegated_rights: list[str]
    rights: list[str]
    added_at: dt.datetime


class SettingOut(Out):
    key: str
    title: str
    description: str
    value: Any
    locked: bool
    changed_at: dt.datetime | None


class NewProject(Body):
    slug: str = Field(min_length=3, max_length=40, description="short lower-case id used in URLs")
    name: str = Field(min_length=1, max_length=200)
    pi: str = Field(min_length=1, max_length=255, description="username, e-mail or user id of the PI")
    ethics_ref: str = Field(min_length=1, max_length=120, description="ethics approval reference")
    project_class: ProjectClass = "project"
    quota_bytes: Int64 = Field(default=service.DEFAULT_QUOTA_BYTES, ge=0)
    end_date: IsoDate
    description: str = Field(default="", max_length=5000)


class ProjectChange(Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    quota_bytes: Int64 | None = Field(default=None, ge=0)
    end_date: IsoDate | None = None
    status: Literal["active", "closed"] | None = None


class NewMember(Body):
    user: str = Field(min_length=1, max_length=255, description="username, e-mail or user id")
    role: str = Field(default="member", max_length=40)


class RoleChange(Body):
    role: str = Field(max_length=40)


class Rights(Body):
    rights: list[str] = Field(max_length=20)


class SettingValue(Body):
    value: Any


def _member_out(m: Membership, rights: frozenset[str]) -> MemberOut:
    return MemberOut(user=UserOut.model_validate(m.user), role=m.role, delegated_rights=m.delegated_rights,
                     rights=sorted(rights), added_at=m.added_at)


@router.get("/projects", response_model=list[MyProjectOut], summary="Projects I am a member of")
def my_projects(db: Db, principal: Read) -> list[MyProjectOut]:
    out = []
    for project, membership in service.list_my_projects(db, principal):
        out.append(MyProjectOut(**ProjectOut.model_validate(project).model_dump(), role=membership.role,
                                rights=sorted(service.effective_rights(db, membership))))
    return out


@router.get("/projects/{slug}", response_model=MyProjectOut, summary="One of my projects")
def get_project(db: Db, principal: Read, slug: str) -> MyProjectOut:
    access = service.open_project(db, principal, slug, managing=True)
    return MyProjectOut(**ProjectOut.model_validate(access.project).model_dump(), role=access.membership.role,
                        rights=sorted(access.rights))


@router.get("/projects/{slug}/members", response_model=list[MemberOut], summary="Members and their rights")
def list_members(db: Db, principal: Read, slug: str) -> list[MemberOut]:
    access = service.open_project(db, principal, slug, managing=True)
    return [_member_out(m, r) for m, r in service.list_members(db, access)]


@router.post("/projects/{slug}/members", response_model=MemberOut, status_code=201, summary="Add a member")
def add_member(db: Db, hub: HubDep, principal: Write, slug: str, body: NewMember) -> MemberOut:
    access = service.open_project(db, principal, slug, managing=True)
    m = service.add_member(db, principal, access, body.user, body.role,
                           fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return _member_out(m, service.effective_rights(db, m))


@router.patch("/projects/{slug}/members/{user_id}", response_model=MemberOut, summary="Change a member's role")
def change_role(db: Db, hub: HubDep, principal: Write, slug: str, user_id: uuid.UUID, body: RoleChange
                ) -> MemberOut:
    access = service.open_project(db, principal, slug, managing=True)
    m = service.change_role(db, principal, access, user_id, body.role,
                            fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return _member_out(m, service.effective_rights(db, m))


@router.put("/projects/{slug}/members/{user_id}/rights", response_model=MemberOut,
            summary="Delegate rights to a member (PI only, fresh MFA)")
def delegate(db: Db, hub: HubDep, principal: Write, slug: str, user_id: uuid.UUID, body: Rights) -> MemberOut:
    access = service.open_project(db, principal, slug, managing=True)
    m = service.delegate_rights(db, principal, access, user_id, body.rights,
                                fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return _member_out(m, service.effective_rights(db, m))


@router.delete("/projects/{slug}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Remove a member")
def remove_member(db: Db, principal: Write, slug: str, user_id: uuid.UUID) -> None:
    access = service.open_project(db, principal, slug, managing=True)
    service.remove_member(db, principal, access, user_id)


@router.get("/projects/{slug}/settings", response_model=list[SettingOut],
            summary="Security settings (locked unless opened)")
def list_settings(db: Db, principal: Read, slug: str) -> list[SettingOut]:
    access = service.open_project(db, principal, slug, managing=True)
    return [SettingOut.model_validate(v) for v in service.list_settings(db, access)]


@router.put("/projects/{slug}/settings/{key}", response_model=SettingOut,
            summary="Open or close a security setting (manage-settings right, fresh MFA)")
def change_setting(db: Db, hub: HubDep, principal: Write, slug: str, key: str, body: SettingValue) -> SettingOut:
    access = service.open_project(db, principal, slug, managing=True)
    view = service.change_setting(db, principal, access, key, body.value,
                                  fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return SettingOut.model_validate(view)


@router.get("/projects/{slug}/audit", response_model=list[AuditEventOut],
            summary="The project's audit events, newest first (view-audit right)")
def project_audit(db: Db, principal: AuditRead, slug: str, before: Int64 | None = Query(None, ge=1),
                  limit: Int64 = Query(50, ge=1, le=500)) -> list[AuditEventOut]:
    access = service.open_project(db, principal, slug, managing=True)
    return [AuditEventOut.model_validate(e)
            for e in service.project_audit(db, access, before_seq=before, limit=limit)]


# -- administration ----------------------------------------------------------------------------
@router.get("/admin/projects", response_model=list[ProjectOut], summary="All projects (platform admins)")
def admin_projects(db: Db, principal: Admin) -> list[ProjectOut]:
    return [ProjectOut.model_validate(p) for p in service.admin_list_projects(db, principal)]


@router.post("/admin/projects", response_model=ProjectOut, status_code=201,
             summary="Create a project with its PI (platform admins)")
def admin_create_project(db: Db, principal: Admin, body: NewProject) -> ProjectOut:
    project: Project = service.create_project(db, principal, **body.model_dump())
    return ProjectOut.model_validate(project)


@router.patch("/admin/projects/{slug}", response_model=ProjectOut,
              summary="Change a project's quota, end date, name or status (platform admins, fresh MFA)")
def admin_update_project(db: Db, hub: HubDep, principal: Admin, slug: str, body: ProjectChange) -> ProjectOut:
    project = service.admin_update_project(db, principal, slug,
                                           fresh_minutes=hub.settings.security.fresh_mfa_minutes,
                                           **body.model_dump())
    return ProjectOut.model_validate(project)
