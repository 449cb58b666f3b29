"""The command line's one HTTP client of a hub: where the hub's address and the API token come
from, requests with the token (retried on transport errors and 5xx where the caller allows more
than one attempt), and what a problem document becomes as an error.

The token comes from `strongroom login` (saved with mode 0600) or STRONGROOM_TOKEN; the hub's
address from the same file or STRONGROOM_URL.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class HubError(Exception):
    """What went wrong, as ``head: detail`` (e.g. ``404: no such project``) or one sentence."""

    def __init__(self, head: str, detail: str = "") -> None:
        super().__init__(f"{head}: {detail}" if detail else head)
        self.head, self.detail = head, detail


class Unreachable(HubError):
    """No answer at all: the hub is down, or the address is wrong."""


class NotLoggedIn(HubError):
    pass


def config_path() -> Path:
    base = os.environ.get("STRONGROOM_CLI_CONFIG")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "strongroom" / "cli.json"


def save_login(url: str, token: str) -> None:
    """Keep the hub's address and the token for later commands (file mode 0600; a folder it makes, 0700)."""
    path = config_path()
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        # os.open's mode applies only to a file it creates: an existing one (a 0644 left by an editor or an
        # older version) is narrowed here, before the token is written into it
        os.fchmod(fd, 0o600)
        json.dump({"url": url.rstrip("/"), "token": token.strip()}, fh)


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
        self._local = threading.local()

    @classmethod
    def from_config(cls, **options: Any) -> HubClient:
        """The client for the saved login (or STRONGROOM_URL / STRONGROOM_TOKEN)."""
        path = config_path()
        data = json.loads(path.read_text()) if path.exists() else {}
        url = os.environ.get("STRONGROOM_URL") or data.get("url") or DEFAULT_URL
        token = os.environ.get("STRONGROOM_TOKEN") or data.get("token")
        if not token:
            raise NotLoggedIn("not logged in", "run strongroom login --token … with a token from your account page")
        return cls(url, token, **options)

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
        """The answer's JSON (None for an empty answer)."""
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None
