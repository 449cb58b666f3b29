"""The workspace's package mirror (a locked project setting, ``workspace_package_mirror``): none (``""``, the
default: pip inside a workspace is told to use no index at all, and nothing outside the hub and the airlock's
approved destinations is reachable anyway) or the name of one of the operator's package mirrors
(``[workspaces.package_mirrors.<name>]``: its URL and the projects it serves). The workspace then gets
``PIP_INDEX_URL`` pointing at it, and its network namespace may open connections to exactly that host and port.
The project names a mirror, never an address: a value the operator has not configured for this project opens
nothing. Changed like every project setting: the manage-settings right, fresh MFA, audited with before and after
(``project.setting.opened`` / ``project.setting.locked``)."""

from __future__ import annotations

import ipaddress
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, TypeAdapter

from ..config import WorkspacePackageMirror, WorkspaceSettings
from ..projects.settings import SettingSpec

KEY = "workspace_package_mirror"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _mirror_name(value: str) -> str:
    """"" (none) or the name of one of the operator's package mirrors (never a URL: no address of its own)."""
    value = value.strip()
    if value and (len(value) > 64 or not set(value) <= _NAME_CHARS or not value[0].isalnum()):
        raise ValueError("must be the name of one of the hub's package mirrors ([workspaces.package_mirrors."
                         "<name>], set by the operator), not a URL; or empty: none")
    return value


PACKAGE_MIRROR_SETTING = SettingSpec(
    KEY, "Package mirror for notebook workspaces",
    "The one package index pip may install from inside the project's notebook workspaces, named as the hub's "
    "operator configured it for this project (a mirror's name, never a URL), and the only address beyond the hub "
    "and the approved export destinations a workspace may reach for it. Empty: none (pip installs nothing from "
    "any index).",
    "", TypeAdapter(Annotated[str, AfterValidator(_mirror_name)]))


def configured_mirror(configured: WorkspaceSettings, value: str, slug: str) -> WorkspacePackageMirror | None:
    """The operator's mirror a project's setting ``value`` stands for when it serves project ``slug``, or None
    (none, unknown, another project's: the same answer). A value saved before mirrors were the operator's (a URL)
    stands for the configured mirror with exactly that URL, if one serves the project; else for none."""
    value = value.strip()
    if not value:
        return None
    found = configured.package_mirrors.get(value)
    if found is None and "/" in value:
        legacy = value.rstrip("/") + "/"
        found = next((m for m in configured.package_mirrors.values() if m.url == legacy), None)
    return found if found is not None and found.serves(slug) else None


def endpoint(url: str) -> tuple[str, int] | None:
    """The mirror's (host, port), or None for none."""
    if not url:
        return None
    parts = urlsplit(url)
    assert parts.hostname
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def pip_env(url: str) -> dict[str, str]:
    """What the workspace's environment tells pip: the mirror as its only index, or no index at all."""
    env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    if not url:
        return env | {"PIP_NO_INDEX": "1"}
    env["PIP_INDEX_URL"] = url
    host = urlsplit(url).hostname or ""
    if urlsplit(url).scheme == "http" and not _is_loopback(host):
        # pip ignores a plain-http index unless told to trust its host: the operator pinned this very mirror (an
        # internal one, reached through the workspace's egress rules only).
        env["PIP_TRUSTED_HOST"] = host if urlsplit(url).port is None else f"{host}:{urlsplit(url).port}"
    return env


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
