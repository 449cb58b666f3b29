"""The command line's one HTTP client of a hub: where the hub's address and the API token come
from, requests with the token (retried on transport errors and 5xx where the caller allows more
than one attempt), and what a problem document becomes as an error.

The token comes from `strongroom login` (saved with mode 0600) or STRONGROOM_TOKEN; the hub's
address from the same file or STRONGROOM_URL. A token goes only to the address it came with: the saved token
to the saved address (same scheme, host and port), STRONGROOM_TOKEN to STRONGROOM_URL (or, without one, the
saved address); another address without a token of its own is "not logged in". No token travels over plain
http except to this machine (loopback), unless STRONGROOM_ALLOW_HTTP=1 says the network is private on purpose.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
ALLOW_HTTP_ENV = "STRONGROOM_ALLOW_HTTP"  # "1": send tokens over plain http to other machines too
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class HubError(Exception):
    """What went wrong, as ``head: detail`` (e.g. ``404: no such project``) or one sentence."""

    def __init__(self, head: str, detail: str = "") -> None:
        super().__init__(f"{head}: {detail}" if detail else head)
        self.head, self.detail = head, detail


class Unreachable(HubError):
    """No answer at all: the hub is down, or the address is wrong."""


class NotLoggedIn(HubError):
    """No token for the hub's address: none saved or given, or one saved for another address."""


class InsecureAddress(NotLoggedIn):
    """A token would travel in the clear: plain http to another machine."""


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of an address, as a browser compares origins (default ports filled in)."""
    parsed = httpx.URL(url.strip())
    scheme = parsed.scheme.lower()
    return scheme, parsed.host.lower().rstrip("."), parsed.port or {"http": 80, "https": 443}.get(scheme)


def same_origin(a: str, b: str) -> bool:
    try:
        return origin(a) == origin(b)
    except httpx.InvalidURL:
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(url: str) -> None:
    """Refuse an address a token may not be sent to: anything but https, or plain http to this machine
    (unless ``STRONGROOM_ALLOW_HTTP=1``)."""
    try:
        scheme, host, _ = origin(url)
    except httpx.InvalidURL as exc:
        raise NotLoggedIn(f"{url} is not a hub address", str(exc)) from None
    if scheme == "https" or (scheme == "http" and (is_loopback(host) or os.environ.get(ALLOW_HTTP_ENV) == "1")):
        return
    if scheme == "http":
        raise InsecureAddress(f"refusing to send your token over plain http to {url}",
                              f"use the hub's https:// address (or set {ALLOW_HTTP_ENV}=1 if the network to it "
                              "is private on purpose)")
    raise InsecureAddress(f"{url} is not a hub address", "use the hub's https:// address")


def config_path() -> Path:
    base = os.environ.get("STRONGROOM_CLI_CONFIG")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "strongroom" / "cli.json"


def save_login(url: str, token: str) -> None:
    """Keep the hub's address and the token for later commands (file mode 0600; a folder it makes, 0700).
    An address the token may not go to (``check_transport``) is refused before anything is written."""
    check_transport(url)
    path = config_path()
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        # os.open's mode applies only to a file it creates: an existing one (a 0644 left by an editor or an
        # older version) is narrowed here, before the token is written into it
        os.fchmod(fd, 0o600)
        json.dump({"url": url.rstrip("/"), "token": token.strip()}, fh)


def saved_login() -> tuple[str, str | None]:
    """The saved login's address (``DEFAULT_URL`` when none) and token (None when none)."""
    path = config_path()
    data = json.loads(path.read_text()) if path.exists() else {}
    return str(data.get("url") or DEFAULT_URL), data.get("token") or None


def default_address() -> str:
    """The hub's address when none is named: STRONGROOM_URL, else the saved login's."""
    return (os.environ.get("STRONGROOM_URL") or saved_login()[0]).rstrip("/")


def problem_error(response: httpx.Response) -> HubError:
    """An error answer (an RFC 9457 problem document, or whatever a proxy sent) as a ``HubError``."""
    try:
        body = response.json()
    except ValueError:
        return HubError(str(response.status_code), response.text[:200])
    detail = body.get("detail") if isinstance(body, dict) else None
    return HubError(str(response.status_code), str(detail) if detail else response.text[:200])


@dataclass
class HubClient:
    url: str
    token: str
    attempts: int = 6
    timeout: float = 120.0

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        check_transport(self.url)  # every client, however made: no token in the clear
        self._local = threading.local()

    @classmethod
    def from_config(cls, url: str | None = None, **options: Any) -> HubClient:
        """The client for ``url`` (default STRONGROOM_URL, else the saved login's address) with the token that
        belongs to that address: STRONGROOM_TOKEN for STRONGROOM_URL (or, without it, the saved address), the
        saved token for the saved address. A token is never sent to another host than the one it came with."""
        saved_url, saved_token = saved_login()
        env_token = os.environ.get("STRONGROOM_TOKEN")
        env_home = default_address()  # where STRONGROOM_TOKEN belongs
        wanted = (url or env_home).rstrip("/")
        if env_token and same_origin(wanted, env_home):
            return cls(wanted, env_token, **options)
        if saved_token and same_origin(wanted, saved_url):
            return cls(wanted, saved_token, **options)
        if not (saved_token or env_token):
            raise NotLoggedIn("not logged in", "run strongroom login --token … with a token from your account page")
        raise NotLoggedIn(f"not logged in to {wanted}", f"strongroom login --url {wanted}")

    @property
    def http(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:  # one connection pool per thread
            client = httpx.Client(base_url=self.url, timeout=self.timeout,
                                  headers={"Authorization": f"Bearer {self.token}"})
            self._local.client = client
        return client

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Retries connection failures and 5xx with exponential backoff; 4xx fail at once."""
        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.attempts:
                    raise Unreachable(f"cannot reach {self.url}", str(exc)) from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt == self.attempts:
                    if response.status_code >= 400:
                        raise problem_error(response)
                    return response
            time.sleep(delay)
            delay = min(delay * 2, 20)
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON (None for an empty answer); an answer that is not JSON (a proxy's page) is a
        ``HubError`` saying so, never a ValueError with a traceback."""
        response = self.request(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:  # not JSON, or not UTF-8
            raise HubError(str(response.status_code), "the hub's answer is not JSON") from None
