"""The one place capabilities are registered (the shape of pypi/warehouse's ``includeme``).

Every capability package (``strongroom.identity``, ``strongroom.archive``, …) has exactly one
``includeme(config)`` in its ``__init__.py``. It declares, and only declares, what the capability
adds: API and web routers, CLI commands, model and job modules, its settings section and hooks into
other capabilities (read grants, MFA policy, …). ``CAPABILITIES`` below is the only hand-kept list;
the app (``app.create_app``), the ``strongroom`` command (``cli``), the schema (``models.load_all``)
and the job kinds (``jobs.registry.load``) are all built from the registry.

Declarations name objects as ``"package.module:attribute"`` strings (or pass the object itself), so
``includeme`` imports nothing: the command line does not import FastAPI routers, the app does not
import Typer commands. Hooks are applied once per process by ``registry().commit()`` (``Hub.from_settings``
calls it), never by importing a module.

Adding a capability = one package with an ``includeme`` + one line in ``CAPABILITIES``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any

# Order matters: routers of one stage are included in this order (first match wins), CLI groups are
# listed in it and hooks run in it. The start page (web) is the first page; the catalogue's public
# pages come last.
CAPABILITIES = [
    "strongroom.web",
    "strongroom.ops",
    "strongroom.identity",
    "strongroom.projects",
    "strongroom.archive",
    "strongroom.access",
    "strongroom.audit",
    "strongroom.jobs",
    "strongroom.imaging",
    "strongroom.dicomweb",
    "strongroom.notify",
    "strongroom.strategies",
    "strongroom.airlock",
    "strongroom.compute",
    "strongroom.workspaces",
    "strongroom.stats",
    "strongroom.fees",
    "strongroom.retention",
    "strongroom.vai",
    "strongroom.sftp",
    "strongroom.federation",
    "strongroom.catalog",
]


class Stage(IntEnum):
    """Where in the route table a router goes. Within a stage: capability order, then declaration order."""

    API = 10  # the JSON API
    PAGES = 20  # server-rendered pages
    AFTER_PAGES = 30  # API routers placed after the pages (GA4GH visas, notifications)
    LAST = 40  # the public catalogue (API and pages), after everything else


Ref = Any  # an object, or "package.module:attribute"


def resolve(ref: Ref) -> Any:
    """The object a declaration names: ``"pkg.mod:attr"`` is imported now, anything else is itself."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class RouterEntry:
    capability: str
    ref: Ref
    stage: Stage
    in_schema: bool


@dataclass(frozen=True)
class CliEntry:
    capability: str
    ref: Ref
    name: str | None  # a sub-command group of that name, or None: its commands merge into `into`
    into: str  # "root" (strongroom …) or "admin" (strongroom admin …)


@dataclass(frozen=True)
class HookEntry:
    capability: str
    point: str  # "package.module:NAME" of a list (the provider is appended) or a dict (set under key)
    ref: Ref
    key: str | None = None


# Extension points other capabilities add to: lists (or dicts by key) in their owner's module.
GRANT_PROVIDERS = "strongroom.archive.authz:GRANT_PROVIDERS"  # who else may read a file
DATASET_READERS = "strongroom.archive.datasets:DATASET_READERS"  # who else may see a dataset
DOWNLOAD_POLICIES = "strongroom.archive.datasets:DATASET_DOWNLOAD_POLICIES"  # may applicants download
RELEASE_CHECKS = "strongroom.archive.datasets:RELEASE_CHECKS"  # what must hold before a version is released
VERSION_MARKS = "strongroom.archive.datasets:VERSION_MARKS"  # what a version is marked with (pages, API)
DATA_ROLE_CHECKS = "strongroom.identity.service:DATA_ROLE_CHECKS"  # who must use MFA (sees data)
INDEX_PROVIDERS = "strongroom.catalog.entries:INDEX_PROVIDERS"  # extra catalogue facts
HOLD_RULES = "strongroom.archive.authz:HOLD_RULES"  # who may review a held file (dict by hold name)
PROJECT_SETTINGS = "strongroom.projects.settings:SETTINGS"  # more locked-by-default project settings (by key)
SETTING_CHECKS = "strongroom.projects.service:SETTING_CHECKS"  # refuse a setting's value (dict by key)
PROJECT_CHANGED = "strongroom.projects.service:PROJECT_CHANGED"  # hear of members / settings changing
NAV_CONTEXT = "strongroom.web.templating:templates.context_processors"  # values the page layout shows
TEMPLATE_DIRS = "strongroom.web.templating:templates.env.loader.searchpath"  # page templates, in order


@dataclass
class Registry:
    capabilities: list[str] = field(default_factory=list)
    routers: list[RouterEntry] = field(default_factory=list)
    clis: list[CliEntry] = field(default_factory=list)
    model_modules: list[str] = field(default_factory=list)
    job_modules: list[str] = field(default_factory=list)
    settings_sections: dict[str, str] = field(default_factory=dict)  # section -> capability
    hooks: list[HookEntry] = field(default_factory=list)
    committed: bool = False

    def include(self, name: str) -> None:
        """Run capability ``name``'s ``includeme``."""
        if name in self.capabilities:
            raise ValueError(f"capability {name} is listed twice")
        includeme = getattr(importlib.import_module(name), "includeme", None)
        if includeme is None:
            raise TypeError(f"capability {name} has no includeme(config)")
        self.capabilities.append(name)
        includeme(Config(self, name))

    # -- building the parts ------------------------------------------------------------------------
    def install_routers(self, app: Any) -> None:
        for entry in sorted(self.routers, key=lambda e: e.stage):  # stable: capability order within a stage
            app.include_router(resolve(entry.ref), include_in_schema=entry.in_schema)

    def install_cli_groups(self, groups: dict[str, Any]) -> None:
        """Add every named sub-command group (``strongroom archive …``) to its parent."""
        for entry in self.clis:
            if entry.name is not None:
                groups[entry.into].add_typer(resolve(entry.ref), name=entry.name)

    def merge_cli(self, groups: dict[str, Any]) -> None:
        """Merge the commands (and their groups) of every unnamed Typer into its parent."""
        for entry in self.clis:
            if entry.name is None:
                typer_app, parent = resolve(entry.ref), groups[entry.into]
                parent.registered_commands.extend(typer_app.registered_commands)
                parent.registered_groups.extend(typer_app.registered_groups)

    def load_models(self) -> None:
        for module in self.model_modules:
            importlib.import_module(module)

    def load_job_modules(self, extra_modules: list[str] | None = None) -> None:
        for module in [*self.job_modules, *(extra_modules or [])]:
            importlib.import_module(module)

    def commit(self) -> None:
        """Apply the hooks, in capability order. Idempotent: a provider is never added twice."""
        if self.committed:
            return
        for hook in self.hooks:
            target = resolve(hook.point)
            provider = resolve(hook.ref)
            if isinstance(target, dict):
                if hook.key is None:
                    raise TypeError(f"{hook.capability}: {hook.point} needs a key")
                if target.setdefault(hook.key, provider) is not provider:
                    raise ValueError(f"{hook.capability}: {hook.point}[{hook.key!r}] is taken")
            elif provider not in target:
                target.append(provider)
        self.committed = True


class Config:
    """What ``includeme`` receives: the declarations one capability may make."""

    def __init__(self, registry: Registry, capability: str) -> None:
        self.registry, self.capability = registry, capability

    def add_api_router(self, router: Ref, *, stage: Stage = Stage.API) -> None:
        """A JSON API router: documented in /openapi.json."""
        self.registry.routers.append(RouterEntry(self.capability, router, stage, in_schema=True))

    def add_web_router(self, router: Ref, *, stage: Stage = Stage.PAGES) -> None:
        """A router of pages and form posts: left out of /openapi.json."""
        self.registry.routers.append(RouterEntry(self.capability, router, stage, in_schema=False))

    def add_cli(self, typer_app: Ref, name: str | None = None, *, into: str = "root") -> None:
        """``name``: the Typer becomes ``strongroom <name> …``. No name: its commands merge into
        ``into``, the root command (``strongroom upload``) or ``"admin"`` (``strongroom admin …``)."""
        if into not in ("root", "admin"):
            raise ValueError(f"unknown command group {into!r}")
        self.registry.clis.append(CliEntry(self.capability, typer_app, name, into))

    def add_models(self, module: str) -> None:
        """A module of SQLAlchemy models: imported so metadata (and Alembic) sees its tables."""
        self.registry.model_modules.append(module)

    def add_jobs(self, module: str) -> None:
        """A module whose ``@job`` functions are job kinds: imported by every runner."""
        self.registry.job_modules.append(module)

    def add_settings(self, section: str) -> None:
        """The capability's section of ``config.Settings`` (``[archive]`` in strongroom.toml,
        ``STRONGROOM_ARCHIVE__…``). Settings stays one pydantic-settings class; this records the owner."""
        from .config import Settings

        if section not in Settings.model_fields:
            raise ValueError(f"{self.capability}: Settings has no section {section!r}")
        owner = self.registry.settings_sections.setdefault(section, self.capability)
        if owner != self.capability:
            raise ValueError(f"settings section {section!r} already belongs to {owner}")

    def add_hook(self, point: str, provider: Ref, *, key: str | None = None) -> None:
        """At commit, append ``provider`` to the extension point ``point`` (``"pkg.mod:LIST"``), or
        set it under ``key`` when the point is a dict."""
        self.registry.hooks.append(HookEntry(self.capability, point, provider, key))

    def add_grant_provider(self, provider: Ref) -> None:
        """``provider(session, principal, file) -> ReadGrant | None``: another way to be allowed to read."""
        self.add_hook(GRANT_PROVIDERS, provider)

    def add_dataset_reader(self, reader: Ref) -> None:
        """``reader(session, principal, dataset) -> VersionGrant | None``: another way to see a dataset."""
        self.add_hook(DATASET_READERS, reader)

    def add_download_policy(self, policy: Ref) -> None:
        """``policy(session, dataset) -> bool``: may approved applicants download it?"""
        self.add_hook(DOWNLOAD_POLICIES, policy)

    def add_data_role_check(self, check: Ref) -> None:
        """``check(session, user) -> bool``: the user can see data, so MFA is mandatory for them."""
        self.add_hook(DATA_ROLE_CHECKS, check)

    def add_hold_rule(self, hold: str, rule: Ref) -> None:
        """An ``archive.service.HoldRule``: who may review files held as ``hold``, in-platform."""
        self.add_hook(HOLD_RULES, rule, key=hold)

    def add_project_setting(self, key: str, spec: Ref) -> None:
        """A ``projects.settings.SettingSpec``: a locked-by-default project setting edited on our pages."""
        self.add_hook(PROJECT_SETTINGS, spec, key=key)

    def add_setting_check(self, key: str, check: Ref) -> None:
        """Refuse a project setting's new value (``check(session, project_id, value)`` raises Invalid)."""
        self.add_hook(SETTING_CHECKS, check, key=key)

    def add_project_listener(self, listener: Ref) -> None:
        """``listener(session, project_id, "members" | "setting:<key>" | "project")`` after a project changed."""
        self.add_hook(PROJECT_CHANGED, listener)

    def add_nav_context(self, provider: Ref) -> None:
        """A context processor for every page (e.g. a count in the top navigation); keep it one cheap query."""
        self.add_hook(NAV_CONTEXT, provider)

    def add_templates(self, directory: str | PathLike[str]) -> None:
        """A directory of page templates searched after the shared ``web/templates`` (name them
        ``<capability>/…`` so they cannot shadow another's)."""
        self.add_hook(TEMPLATE_DIRS, Path(directory))  # a Path: never taken for a "module:attr"

    def add_index_provider(self, provider: Ref) -> None:
        """``provider(session, entry)``: more facts for a catalogue entry when it is (re)indexed."""
        self.add_hook(INDEX_PROVIDERS, provider)


def build(names: list[str] | None = None) -> Registry:
    """A registry of the named capabilities (default: all of ``CAPABILITIES``), hooks not applied."""
    registry = Registry()
    for name in CAPABILITIES if names is None else names:
        registry.include(name)
    return registry


@lru_cache(maxsize=1)
def registry() -> Registry:
    """This process's registry of every capability: declarations only, which import just the capability
    packages. ``registry().commit()`` applies the hooks; ``Hub.from_settings`` does, so every entry point
    that touches data has them (the command line itself does not pay for importing them)."""
    return build()

