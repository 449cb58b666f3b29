"""The workspace's package mirror (a locked project setting, ``workspace_package_mirror``): none (``""``, the
default: pip inside a workspace is told to use no index at all, and nothing outside the hub and the airlock's
approved destinations is reachable anyway) or the URL of one allow-listed PEP 503 simple index. The workspace
then gets ``PIP_INDEX_URL`` pointing at it, and its network namespace may open connections to exactly that
host and port. Changed like every project setting: the manage-settings right, fresh MFA, audited with before
and after (``project.setting.opened`` / ``project.setting.locked``)."""

from __future__ import annotations

import ipaddress
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, TypeAdapter

from ..projects.settings import SettingSpec

KEY = "workspace_package_mirror"


def _mirror_url(value: str) -> str:
    """"" (none) or an http(s) URL of a simple index: a host, no credentials, no query or fragment."""
    value = value.strip()
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL of a PEP 503 simple index (or empty: none)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("must carry no credentials, query or fragment")
    try:
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if len(value) > 500:
        raise ValueError("is too long")
    return value.rstrip("/") + "/"


PACKAGE_MIRROR_SETTING = SettingSpec(
    KEY, "Package mirror for notebook workspaces",
    "The one package index (a PEP 503 simple index URL, e.g. the site's mirror) pip may install from inside "
    "the project's notebook workspaces, and the only address beyond the hub and the approved export "
    "destinations a workspace may reach for it. Empty: none (pip installs nothing from any index).",
    "", TypeAdapter(Annotated[str, AfterValidator(_mirror_url)]))


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
        # pip ignores a plain-http index unless told to trust its host: the PI chose this very mirror (an
        # internal one, reached through the workspace's egress rules only).
        env["PIP_TRUSTED_HOST"] = host if urlsplit(url).port is None else f"{host}:{urlsplit(url).port}"
    return env


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
