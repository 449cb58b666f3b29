"""Start the real OpenID Provider in ``tests/support/oidc`` and drive its login form.

The provider is panva's ``oidc-provider`` (Node), configured by ``provider.mjs``; see
``tests/support/oidc/README.md``. Dev/test only: plain http on 127.0.0.1.

    with running_oidc_provider("strongroom", "s3cret", ["http://127.0.0.1:8000/auth/callback"]) as op:
        ...  # op.issuer == "http://127.0.0.1:<port>"
        with httpx.Client() as browser:
            redirect = complete_login(browser, authorize_url, login="alice", mfa=True)
            redirect.headers["location"]  # -> redirect_uri?code=...&state=...&iss=...
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from support.live import free_port

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
PROVIDER_SCRIPT = OIDC_DIR / "provider.mjs"

ACR_SFA = "https://refeds.org/profile/sfa"
ACR_MFA = "https://refeds.org/profile/mfa"

_READY_TIMEOUT = 20.0
_NPM_TIMEOUT = 300.0
_MAX_REDIRECTS = 20


class OidcProviderError(RuntimeError):
    """The test provider could not be started, or the login flow went somewhere unexpected."""


@dataclass
class OidcProvider:
    issuer: str
    port: int
    process: subprocess.Popen[bytes]
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    log_path: Path = field(repr=False)

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def log(self) -> str:
        """What node printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def ensure_node_modules() -> None:
    """Run ``npm ci`` in tests/support/oidc unless node_modules is already installed.

    Guarded by a file lock so parallel test workers (xdist) don't race.
    """
    marker = OIDC_DIR / "node_modules" / "oidc-provider" / "package.json"
    if marker.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise OidcProviderError("npm is not on PATH; it is needed to install tests/support/oidc")
    lock_path = Path(tempfile.gettempdir()) / "strongroom-oidc-npm-ci.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=OIDC_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_NPM_TIMEOUT,
        )
        if result.returncode != 0 or not marker.exists():
            raise OidcProviderError(
                f"npm ci failed in {OIDC_DIR} (rc={result.returncode}):\n{result.stdout}\n{result.stderr}"
            )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _start(
    client_id: str, client_secret: str, redirect_uris: list[str], log_path: Path
) -> OidcProvider | None:
    """Start node on a free port; None if the port was taken meanwhile (caller retries)."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        OIDC_PORT=str(port),
        OIDC_CLIENT_ID=client_id,
        OIDC_CLIENT_SECRET=client_secret,
        OIDC_REDIRECT_URIS=",".join(redirect_uris),
    )
    node = shutil.which("node")
    if node is None:
        raise OidcProviderError("node is not on PATH")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [node, str(PROVIDER_SCRIPT)],
            cwd=OIDC_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    provider = OidcProvider(
        issuer=issuer,
        port=port,
        process=process,
        client_id=client_id,
        client_secret=client_secret,
        redirect_uris=list(redirect_uris),
        log_path=log_path,
    )
    deadline = time.monotonic() + _READY_TIMEOUT
    with httpx.Client(timeout=2.0, trust_env=False) as probe:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                if "EADDRINUSE" in provider.log():
                    return None
                raise OidcProviderError(f"oidc provider exited with {process.returncode}:\n{provider.log()}")
            try:
                if probe.get(provider.discovery_url).status_code == 200:
                    return provider
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    _stop(process)
    raise OidcProviderError(
        f"oidc provider did not answer {provider.discovery_url} within {_READY_TIMEOUT}s:\n{provider.log()}"
    )


@contextlib.contextmanager
def running_oidc_provider(
    client_id: str, client_secret: str, redirect_uris: list[str]
) -> Iterator[OidcProvider]:
    """Run the real test OpenID Provider with one confidential client; stop it on exit."""
    if not redirect_uris:
        raise ValueError("at least one redirect_uri is needed")
    ensure_node_modules()
    fd, name = tempfile.mkstemp(prefix="strongroom-oidc-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    provider: OidcProvider | None = None
    try:
        for _attempt in range(5):
            provider = _start(client_id, client_secret, redirect_uris, log_path)
            if provider is not None:
                break
        if provider is None:
            raise OidcProviderError("could not find a free loopback port for the oidc provider")
        yield provider
    finally:
        if provider is not None:
            _stop(provider.process)
        log_path.unlink(missing_ok=True)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or ""), port


_AUTO_SUBMIT_FORM = re.compile(
    r'<form method="post" action="([^"]+)">(.*?)</form>', re.IGNORECASE | re.DOTALL
)
_HIDDEN_INPUT = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)"\s*/?>', re.IGNORECASE)


def _auto_submit_form(response: httpx.Response) -> tuple[str, dict[str, str]] | None:
    """(action, fields) of an oidc-provider page that submits its only form by script."""
    if response.status_code != 200 or "document.forms[0].submit()" not in response.text:
        return None
    match = _AUTO_SUBMIT_FORM.search(response.text)
    if match is None:
        return None
    fields = {unescape(k): unescape(v) for k, v in _HIDDEN_INPUT.findall(match.group(2))}
    return urljoin(str(response.url), unescape(match.group(1))), fields


_FORM_ACTION = re.compile(r'<form[^>]*\bid="oidc-login"[^>]*\baction="([^"]+)"', re.IGNORECASE)


def complete_login(
    client: httpx.Client,
    authorize_url: str,
    login: str,
    mfa: bool,
    name: str | None = None,
    email: str | None = None,
    affiliation: str | list[str] | None = None,
) -> httpx.Response:
    """Drive the provider's login from an authorization request to the redirect back to the RP.

    ``client`` keeps the provider's cookies between steps; redirects are followed by hand and
    only within the provider's origin. Returns the provider's final redirect response, whose
    ``Location`` is the relying party's redirect_uri carrying ``code`` and ``state`` (or an
    ``error``). If the client already holds a provider session and the request does not force a
    login (``prompt=login``), that redirect comes straight away and the form is not submitted.

    ``name``/``email`` default (in the provider) to values derived from ``login``;
    ``affiliation`` (eduperson_scoped_affiliation) defaults to ``member@example.org``.
    """
    op_origin = _origin(authorize_url)

    def follow(response: httpx.Response) -> httpx.Response:
        for _ in range(_MAX_REDIRECTS):
            if not response.is_redirect:
                # oidc-provider's self-submitting pages (e.g. ending another account's
                # session before a login as someone else): submit them like a browser would.
                auto = _auto_submit_form(response)
                if auto is None or _origin(auto[0]) != op_origin:
                    return response
                response = client.post(auto[0], data=auto[1], follow_redirects=False)
                continue
            target = urljoin(str(response.url), response.headers["location"])
            if _origin(target) != op_origin:
                return response  # leaving the provider: this is the redirect to the RP
            response = client.get(target, follow_redirects=False)
        raise OidcProviderError(f"too many redirects within the provider, last: {response.url}")

    page = follow(client.get(authorize_url, follow_redirects=False))
    if page.is_redirect:
        return page
    if page.status_code != 200:
        raise OidcProviderError(
            f"expected the provider's login page, got {page.status_code} at {page.url}:\n{page.text}"
        )
    match = _FORM_ACTION.search(page.text)
    if match is None:
        raise OidcProviderError(f"no login form at {page.url}:\n{page.text}")
    action = urljoin(str(page.url), unescape(match.group(1)))

    form: dict[str, str] = {"login": login}
    if name is not None:
        form["name"] = name
    if email is not None:
        form["email"] = email
    if affiliation is not None:
        form["affiliation"] = affiliation if isinstance(affiliation, str) else ",".join(affiliation)
    if mfa:
        form["mfa"] = "1"

    final = follow(client.post(action, data=form, follow_redirects=False))
    if not final.is_redirect:
        raise OidcProviderError(
            f"login did not end in a redirect to the relying party: {final.status_code} at {final.url}:\n"
            f"{final.text}"
        )
    return final
