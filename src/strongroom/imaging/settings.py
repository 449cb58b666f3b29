"""The imaging capability's project settings: the DICOM destination and the de-identification profile.

Both are locked by default (no destination; the Basic Profile with no option), registered in the
project settings registry so every change needs fresh MFA and is audited with before/after values.

A destination's port and AE title belong to one project of the hub (``check_destination``, the projects'
``SETTING_CHECKS`` hook): a port another project's destination or a hub service holds is refused, so no
project can take over the port (and so the scanners) of another. ``scp.DicomService.refresh`` applies the
same rule to what it finds in the database (rows written before the check existed).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select, text

from ..errors import Invalid
from ..projects.models import ProjectSetting
from ..projects.settings import capability_setting
from .deid import OPTIONS, DeidProfile, PixelRule
from .deid.profile import PatternError, compile_pattern

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..config import Settings

AE_TITLE = r"^[ -\[\]-~]{1,16}$"  # printable ASCII without backslash; 1-16 characters


class DicomDestination(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ae_title: str = Field(pattern=AE_TITLE, description="the AE title senders call (e.g. PROJ_AE)")
    port: int = Field(ge=1024, le=65535, description="TCP port of the project's destination")

    @model_validator(mode="after")
    def _strip(self) -> DicomDestination:
        self.ae_title = self.ae_title.strip()
        if not self.ae_title:
            raise ValueError("the AE title is blank")
        return self


_PATTERN = ("case-insensitive pattern searched in {} and in each of its values: text, '.' any character, '.*' any "
            "characters, a leading '^' and a trailing '$' anchor (no other regular-expression syntax); empty matches "
            "anything")


class PixelRuleSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    rectangles: list[tuple[int, int, int, int]] = Field(min_length=1, max_length=32)
    manufacturer: str = Field("", max_length=200, description=_PATTERN.format("Manufacturer (0008,0070)"))
    model: str = Field("", max_length=200, description=_PATTERN.format("Manufacturer's Model Name (0008,1090)"))
    modality: str = Field("", max_length=50, description=_PATTERN.format("Modality (0008,0060)"))
    rows: int = Field(0, ge=0, le=65535)
    columns: int = Field(0, ge=0, le=65535)


class DeidProfileSetting(BaseModel):
    """PS3.15 Annex E options a project selects on top of the Basic Application Confidentiality Profile."""

    model_config = ConfigDict(extra="forbid")
    retain_longitudinal: str = Field("remove", pattern="^(remove|modified|full)$",
                                     description="dates: remove (Basic), modified (shifted per patient), full")
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    retain_safe_private: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    text_allow_list: bool = Field(False, description="stricter than Clean Descriptors: standard free text outside "
                                  "a curated keep-list (manufacturer, model, software, code values...) is cleaned "
                                  "or removed")
    pixel_rules: list[PixelRuleSetting] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _rules_compile(self) -> DeidProfileSetting:
        to_engine(self)  # raises ValueError on a bad rectangle
        return self


def _patterns_in_language(profile: DeidProfileSetting) -> DeidProfileSetting:
    """A profile being saved: every pixel rule's pattern is in the engine's safe subset (``TextPattern``). The
    model alone also reads older stored values, whose patterns outside the subset the engine searches as text."""
    for r in profile.pixel_rules:
        for attribute in ("manufacturer", "model", "modality"):
            try:
                compile_pattern(getattr(r, attribute))
            except PatternError as exc:
                raise ValueError(f"pixel rule {r.name!r}: {attribute} {exc}") from None
    return profile


# the engine's options except the two date ones, which ``retain_longitudinal`` chooses between
OPTION_FLAGS = tuple(flag for flag in OPTIONS if not flag.startswith("retain_longitudinal"))
# what the profile form offers: the options, then the allow-list mode
PROFILE_FLAGS = (*OPTION_FLAGS, "text_allow_list")


def to_engine(setting: DeidProfileSetting | dict) -> DeidProfile:
    """The engine's profile for a stored setting value (its patterns are never run as regular expressions)."""
    s = setting if isinstance(setting, DeidProfileSetting) else DeidProfileSetting.model_validate(setting)
    rules = []
    for r in s.pixel_rules:
        rules.append(PixelRule(name=r.name, rectangles=tuple(r.rectangles), manufacturer=r.manufacturer,
                               model=r.model, modality=r.modality, rows=r.rows, columns=r.columns))
    return DeidProfile(retain_longitudinal_full=s.retain_longitudinal == "full",
                       retain_longitudinal_modified_dates=s.retain_longitudinal == "modified",
                       pixel_rules=tuple(rules), text_allow_list=s.text_allow_list,
                       **{flag: getattr(s, flag) for flag in OPTION_FLAGS})


BASIC_PROFILE = DeidProfileSetting().model_dump(mode="json")

# Project settings of imaging's own; they join the projects' registry in imaging's includeme.
DESTINATION_SETTING = capability_setting(
    "dicom_destination", "DICOM destination",
    "The project's own DICOM destination (AE title and port). Only the allowed DICOM senders may store.",
    None, DicomDestination | None, edit_page="/projects/{slug}/imaging#destination")
PROFILE_SETTING = capability_setting(
    "deid_profile", "De-identification profile",
    "The PS3.15 options applied to everything imported. Locked: the Basic Profile, dates removed.",
    BASIC_PROFILE, Annotated[DeidProfileSetting, AfterValidator(_patterns_in_language)],  # saved: the safe subset
    edit_page="/projects/{slug}/imaging#profile")


# -- one port and one AE title per destination, across the hub ------------------------------------------
DESTINATION_KEY = "dicom_destination"
SFTP_PORT = 2222  # `strongroom sftp serve`'s default port (sftp/cli.py): not a setting, so named here
# PostgreSQL: the transaction advisory lock (this class, the schema's hash) that serialises destination changes
DESTINATION_LOCK_CLASS = 0x5344


def hub_ports(settings: Settings) -> dict[int, str]:
    """The ports this hub's own services listen on (a project destination must not take one)."""
    ports = {settings.port: "web", SFTP_PORT: "sftp", settings.imaging.metrics_port: "dicom metrics",
             settings.jobs.metrics_port: "worker metrics", settings.workspaces.hub_port: "workspace hub port"}
    return {port: name for port, name in ports.items() if port}


def _same_title(a: str, b: str) -> bool:
    return a.strip().upper() == b.strip().upper()  # refused also when only the case differs


def check_destination(session: Session, project_id: uuid.UUID, value: Any) -> None:
    """Refuse a destination whose port a hub service or another project's destination holds, or whose AE title
    another project's destination uses (closed projects' too: reopening one must not create a clash). The
    answer never names the other project. Serialised (PostgreSQL: a transaction advisory lock; SQLite: the
    write lock), held until the change commits, so two projects cannot both take one port in a race."""
    if not value:
        return
    wanted = DicomDestination.model_validate(value)
    from ..config import get_settings  # the settings every process of this hub is started with

    if wanted.port in hub_ports(get_settings()):
        raise Invalid(f"port {wanted.port} is used by a service of this hub; choose another port")
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:class, hashtext(current_schema()))"),
                        {"class": DESTINATION_LOCK_CLASS})
    else:
        session.execute(select(ProjectSetting.project_id).limit(1).with_for_update())  # the write lock
    for other in session.scalars(select(ProjectSetting.value).where(ProjectSetting.key == DESTINATION_KEY,
                                                                     ProjectSetting.project_id != project_id)):
        if not isinstance(other, dict):
            continue
        if other.get("port") == wanted.port:
            raise Invalid(f"port {wanted.port} is already used by another DICOM destination of this hub; "
                          "choose another port")
        if _same_title(str(other.get("ae_title", "")), wanted.ae_title):
            raise Invalid(f"the AE title {wanted.ae_title!r} is already used by another DICOM destination of this "
                          "hub; choose another AE title")
