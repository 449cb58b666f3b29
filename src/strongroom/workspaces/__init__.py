"""Notebook workspaces: a member's JupyterLab for one project, started locally or as a Slurm job in the
project's GPU booking, reached only through the hub's reverse proxy (HTTP and websockets, the owner with fresh
MFA), fed a short-lived project-bound token, its egress confined to the hub and the project's allow-listed
destinations by a network namespace with nftables rules, its scratch wiped at stop. See docs/workspaces.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.workspaces.models")
    config.add_api_router("strongroom.workspaces.api:router")
    config.add_web_router("strongroom.workspaces.web:router")
    config.add_web_router("strongroom.workspaces.proxy:router")
    config.add_templates(Path(__file__).parent / "templates")
    config.add_cli("strongroom.workspaces.cli:app", name="workspaces")
    config.add_cli("strongroom.workspaces.cli:admin_app", into="admin")
    config.add_jobs("strongroom.workspaces.jobs")
    config.add_settings("workspaces")
    # the one package index pip may use inside the project's workspaces (locked: none)
    config.add_project_setting("workspace_package_mirror", "strongroom.workspaces.settings:PACKAGE_MIRROR_SETTING")
    # its own token, from the workspace's own address, reads plaintext while downloads are locked
    config.add_hook("strongroom.archive.authz:IN_PLATFORM_READERS", "strongroom.workspaces.service:in_platform_reader")
    # a member who leaves (or loses read-data), a closed project: their workspaces stop at once
    config.add_project_listener("strongroom.workspaces.service:members_changed")
