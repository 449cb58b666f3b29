"""The workspaces' own origin, as pure rules (no web framework, no database): which host a request came to, the
one-time handoff code, the workspace cookie that names the hub session, and what of the cookies may cross the
proxy in either direction.

A notebook's pages run the notebook's own JavaScript (JupyterLab runs trusted outputs; a notebook's code may even
replace the Jupyter process and serve any page). Served from the hub's origin, that script would act as the user
on the hub. So the browser reaches workspaces at another origin only (``[workspaces] origin``): a host of its own,
with no hub cookie, where nothing of the hub answers. The hub's origin hands the browser over with a code good once
for seconds; the workspaces' origin then keeps a cookie, per workspace, signed by the hub, that names the hub
session it came from, and re-checks that session on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from urllib.parse import urlsplit

from ..identity.secrets import equal_secrets

WORKSPACE_COOKIE = "sr_workspace"
HANDOFF_SECONDS = 30  # a handoff code is good this long (the browser follows the redirect at once), and once
HANDOFF_PREFIX = "/_strongroom/workspaces/"  # on the workspaces' origin: …/{workspace id}/handoff?code=…
# /projects/{slug}/workspaces/{id}/… : the slug, the id, and the rest (the path Jupyter serves under its base_url)
WORKSPACE_PATH = re.compile(r"^/projects/([^/]+)/workspaces/([0-9a-fA-F-]{36})(/.*)?$")


def host_of(authority: str) -> str:
    """The host of a Host header or an origin's authority, as cookies see it: lower case, no port, no final dot."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0].rstrip(".") if ":" in authority else authority.rstrip(".")


def origin_host(origin: str) -> str:
    return host_of(urlsplit(origin).netloc)


def handoff_url(origin: str, workspace_id: uuid.UUID | str, code: str) -> str:
    return f"{origin}{HANDOFF_PREFIX}{workspace_id}/handoff?code={code}"


# -- the handoff code and the workspace cookie ------------------------------------------------------
def new_code() -> str:
    return secrets.token_urlsafe(32)


def code_hash(secret: bytes, code: str) -> str:
    """What the database keeps of a code: its HMAC under the hub's secret (the code itself opens the workspace)."""
    return hmac.new(secret, b"workspace-handoff:" + code.encode(), hashlib.sha256).hexdigest()


def _cookie_mac(secret: bytes, workspace_id: str, session_hash: str) -> str:
    message = f"workspace-cookie:{workspace_id.lower()}:{session_hash}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def cookie_value(secret: bytes, workspace_id: uuid.UUID | str, session_hash: str) -> str:
    """The workspace cookie: the workspace, the hub session (its stored hash, not its cookie), signed."""
    wid = str(workspace_id).lower()
    return f"{wid}.{session_hash}.{_cookie_mac(secret, wid, session_hash)}"


def cookie_session(secret: bytes, workspace_id: uuid.UUID | str, values: list[str]) -> str | None:
    """The hub session (hash) that the first of ``values`` signed for this workspace names, or None. Every value
    is tried: the browser may send several cookies of that name (one a page of the origin set with a wider path)."""
    wid = str(workspace_id).lower()
    for value in values:
        named, _, rest = value.partition(".")
        session_hash, _, mac = rest.partition(".")
        if named == wid and session_hash and equal_secrets(mac, _cookie_mac(secret, wid, session_hash)):
            return session_hash
    return None


# -- cookies across the proxy --------------------------------------------------------------------------
def cookie_pairs(header: str) -> list[tuple[str, str]]:
    """Every name=value of a Cookie header, duplicates kept, in order."""
    pairs = []
    for part in header.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq and name:
            pairs.append((name, value))
    return pairs


def upstream_cookie_header(header: str, withheld: frozenset[str]) -> str:
    """The Cookie header Jupyter gets: the browser's, less the hub's cookies and the workspace cookie."""
    return "; ".join(f"{k}={v}" for k, v in cookie_pairs(header) if k not in withheld)


def allowed_set_cookie(header: str, prefix: str, reserved: frozenset[str]) -> str | None:
    """A Set-Cookie of the workspace's server as the browser may get it, or None (dropped): host-only (no Domain:
    that would reach the hub's host too when the workspaces' host is below it), within the workspace's own path
    (no Path: the workspace's, made explicit), never a name of the hub's or ours, never ``__Host-`` (Path=/).
    Jupyter's own cookies (``_xsrf``, ``username-…``) are set on its base_url, the workspace's path: they pass."""
    name = header.partition(";")[0].partition("=")[0].strip()
    if not name or name in reserved or name.lower().startswith("__host-"):
        return None
    paths = []
    for attribute in header.split(";")[1:]:
        key, _, value = attribute.strip().partition("=")
        key = key.strip().lower()
        if key == "domain":
            return None
        if key == "path":
            paths.append(value.strip())
    if not paths:
        return f"{header}; Path={prefix}"
    within = all((p == prefix or p == prefix.rstrip("/") or p.startswith(prefix)) and ".." not in p for p in paths)
    return header if within else None


# -- requests ----------------------------------------------------------------------------------------
def sent_from(origin_header: str | None, origin: str) -> bool:
    """Whether a request's Origin header names ``origin`` exactly (scheme, host and port). A browser sends Origin
    with every request that is not a GET or HEAD and with every websocket: missing, it was no page of ours."""
    return origin_header is not None and origin_header.strip().lower() == origin.lower() != ""
