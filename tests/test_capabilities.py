"""Every capability registers in one place (`strongroom.capabilities`): adding one is one folder with an
``includeme`` plus one line in ``CAPABILITIES``, and app, CLI, job kinds and schema are built from it."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jinja2 import TemplateNotFound
from pydantic import BaseModel
from typer.testing import CliRunner

from strongroom import capabilities
from strongroom.capabilities import CAPABILITIES, Registry, build, resolve
from strongroom.config import Settings
from strongroom.db import Base
from strongroom.jobs import registry as jobs_registry
from strongroom.web.templating import templates

SRC = Path(capabilities.__file__).parent


@pytest.fixture
def with_capdemo() -> Iterator[Registry]:
    """The real capabilities plus the throwaway one under tests/support/capdemo (one extra line)."""
    registry = build([*CAPABILITIES, "support.capdemo"])
    yield registry
    # leave nothing of it behind for the other tests in this process
    jobs_registry.REGISTRY.pop("capdemo.echo", None)
    searchpath = templates.env.loader.searchpath  # type: ignore[union-attr]
    searchpath[:] = [p for p in searchpath if "capdemo" not in str(p)]
    table = Base.metadata.tables.get("capdemo_things")
    if table is not None:
        Base.metadata.remove(table)


def test_a_new_capability_is_one_folder_and_one_line(with_capdemo: Registry) -> None:
    registry = with_capdemo
    assert registry.capabilities[-1] == "support.capdemo"

    app = FastAPI()
    registry.install_routers(app)
    client = TestClient(app)
    assert client.get("/api/v1/capdemo/ping").json() == {"capdemo": "pong"}
    assert client.get("/capdemo").text == "a capdemo page"
    paths = app.openapi()["paths"]
    assert "/api/v1/capdemo/ping" in paths and "/capdemo" not in paths  # pages stay out of the schema
    assert "/api/v1/projects" in paths  # the real capabilities are there too

    root, admin = typer.Typer(), typer.Typer()
    root.add_typer(admin, name="admin")
    groups = {"root": root, "admin": admin}
    registry.install_cli_groups(groups)
    registry.merge_cli(groups)
    runner = CliRunner()
    assert runner.invoke(root, ["capdemo", "hello"]).output == "hello from capdemo\n"
    assert runner.invoke(root, ["admin", "capdemo-admin"]).output == "admin capdemo\n"
    admin_commands = [c.name for c in admin.registered_commands]
    assert {"create-user", "create-project", "grant-auditor", "capdemo-admin"} <= set(admin_commands)

    registry.load_job_modules()
    assert jobs_registry.REGISTRY["capdemo.echo"].max_attempts == 1

    registry.load_models()
    assert "capdemo_things" in Base.metadata.tables and "users" in Base.metadata.tables

    greeters = resolve("support.capdemo.parts:GREETERS")
    with pytest.raises(TemplateNotFound):
        templates.get_template("capdemo/page.html")
    registry.commit()
    registry.commit()  # idempotent
    assert [g() for g in greeters] == ["hi"]
    assert "a capdemo template for you" in templates.get_template("capdemo/page.html").render(who="you")
    assert templates.get_template("base.html")  # the shared templates still come first


def test_the_hub_is_built_from_the_registry(tmp_path: Path) -> None:
    from strongroom.app import create_app
    from strongroom.archive import service as archive
    from strongroom.cli import app as cli_app
    from strongroom.identity import service as identity

    registry = capabilities.registry()
    app = create_app(Settings(var_dir=tmp_path), run_jobs=False)
    assert registry.committed and registry.capabilities == CAPABILITIES  # the app's hub applied the hooks
    served = {getattr(route, "path", None) for route in _all_routes(app)}
    for entry in registry.routers:  # every declared router's routes are in the app
        assert {route.path for route in resolve(entry.ref).routes} <= served, entry.ref
    names = {c.name or (c.callback.__name__ if c.callback else None) for c in cli_app.registered_commands}
    assert {"serve", "worker", "init", "login", "upload", "download"} <= names
    assert {g.name for g in cli_app.registered_groups} >= {"db", "config", "admin", "archive", "audit", "jobs",
                                                          "dicom", "import", "projects", "keys", "datasets"}
    kinds = jobs_registry.load()
    assert {"identity.purge_expired", "audit.verify_chain", "audit.checkpoint", "jobs.prune"} <= set(kinds)
    assert kinds["identity.purge_expired"].func.__module__ == "strongroom.identity.jobs"
    assert kinds["audit.checkpoint"].func.__module__ == "strongroom.audit.jobs"
    # hooks: the order is the declared one, each once
    assert [f.__name__ for f in archive.GRANT_PROVIDERS] == ["entitlement_grant", "visa_grant"]
    assert [f.__name__ for f in identity.DATA_ROLE_CHECKS] == ["is_member_anywhere", "holds_access_role"]


def _all_routes(app: FastAPI) -> list[object]:
    from fastapi.routing import iter_route_contexts

    return list(iter_route_contexts(app.routes))


def _packages_with(marker: str) -> set[str]:
    found = set()
    for path in SRC.glob("*/*.py"):
        if marker in path.read_text():
            found.add(f"strongroom.{path.parent.name}")
    return found


def test_every_package_with_routers_models_or_jobs_is_a_listed_capability() -> None:
    listed = set(CAPABILITIES)
    assert _packages_with("APIRouter(") <= listed
    assert _packages_with("(Base):") <= listed
    assert _packages_with("@job(") <= listed
    registry = capabilities.registry()
    for package in CAPABILITIES:  # and each declares every router module it has
        for path in (SRC / package.split(".")[1]).glob("*.py"):
            if "APIRouter(" in path.read_text():
                module = f"{package}.{path.stem}"
                assert any(str(e.ref).startswith(module + ":") for e in registry.routers), module
            if "(Base):" in path.read_text():
                assert f"{package}.{path.stem}" in registry.model_modules
            if "@job(" in path.read_text():
                assert f"{package}.{path.stem}" in registry.job_modules


def test_every_settings_section_has_one_owner() -> None:
    sections = {name for name, f in Settings.model_fields.items()
                if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    assert set(capabilities.registry().settings_sections) == sections
    config = capabilities.Config(Registry(), "support.capdemo")
    with pytest.raises(ValueError, match="no section"):
        config.add_settings("capdemo")


def test_importing_a_module_registers_nothing() -> None:
    """Hooks come from includeme at commit, never from an import's side effect."""
    code = """
import strongroom.access.grants, strongroom.access.visas, strongroom.projects.service
import strongroom.imaging.models, strongroom.imaging.service, strongroom.imaging.settings
from strongroom.archive import service as a
from strongroom.catalog import entries as c
from strongroom.identity import service as i
from strongroom.projects.settings import SETTINGS
hooks = lambda: (a.GRANT_PROVIDERS, a.DATASET_READERS, a.DATASET_DOWNLOAD_POLICIES, a.HOLD_RULES,
                 c.INDEX_PROVIDERS, i.DATA_ROLE_CHECKS, "dicom_destination" in SETTINGS)
assert hooks() == ([], [], [], {}, [], [], False), hooks()
from strongroom.capabilities import registry
import strongroom.cli  # the command line alone applies nothing either
assert hooks() == ([], [], [], {}, [], [], False), hooks()
registry().commit()
assert [len(h) for h in hooks()[:-1]] == [2, 2, 1, 2, 1, 2] and hooks()[-1], hooks()
assert list(SETTINGS)[-10:] == ["dicom_destination", "deid_profile", "dicom_move_destinations",
                                "egress_destinations", "airlock_reviewers", "airlock_approvals", "airlock_expiry_days",
                                "airlock_sources", "workspace_package_mirror", "vai_evaluation_budget"]
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_identity_does_not_reach_into_projects() -> None:
    for path in (SRC / "identity").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "projects" not in (node.module or ""), f"{path.name} imports {node.module}"
