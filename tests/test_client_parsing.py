"""Whole numbers written as text by someone else are read by one rule (``strongroom.parsing``): ASCII digits, bounded,
in range; never ``str.isdigit()`` then ``int()``, which takes "²" and "١" (Arabic-Indic one) and thousands of digits
and then fails with a ValueError (or, for "١", reads 1: another name for the same thing).

- The researcher's ``strongroom://`` file system (and the FUSE mount built on it): a dataset folder's version
  suffix (``SRD-…@2``) that is not a version as a listing writes it names no folder (FileNotFoundError, ENOENT in
  the mount); a hub's answer whose version number or file size is not a whole number, or that is not JSON at all,
  is an OSError saying so (the command line: a message and exit status 1), never a ValueError with a traceback.
- A partner's ``Content-Length`` (``bounded_http``): one that is not a byte count is refused as an
  ``AnswerRefused`` (an ``httpx.TransportError``, which every caller handles), not a ValueError. On a real
  HTTP/1.1 connection h11 already refuses such a header; a transport that hands the headers on as sent (the
  ``transport=`` of ``afetch``, here httpx's ASGI transport to a real ASGI application) reached the old parse.

The hostile hubs are real HTTP servers on loopback answering crafted JSON (``test_client_trust.Hostile``); the real
hub is ``test_fsspec``'s world.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import pytest
from typer.testing import CliRunner

from strongroom import bounded_http
from strongroom.client import app as client_cli
from strongroom.fs import StrongroomFileSystem
from strongroom.workspaces.fuse import _errno_of
from test_client_trust import Hostile, laptop  # noqa: F401 - laptop is the fixture (no login saved)
from test_fsspec import world  # noqa: F401 - world is the fixture (a real hub with a dataset)

TOKEN = "sr_abcdefabcdef_secret"
SRD = "SRD-7K2M9QX4TD"
# version suffixes that are no version as a listing writes one: superscript two, Arabic-Indic one (int() reads 1),
# a fullwidth one, thousands of digits (int() refuses), beyond a 32-bit version, zero, signs, a leading zero, space
NOT_VERSIONS = ["²", "١", "１", "9" * 5000, "2147483648", "0", "-1", "+1", "01", " 1", "1 ", "1.0", ""]


def _record(size: object) -> dict[str, Any]:
    return {"id": "SRF-0000000001", "path": "notes.txt", "plaintext_size": size, "plaintext_sha256": None,
            "created_at": "2026-01-01"}


def dataset_hub(versions: list[dict[str, Any]], size: object = 5) -> Hostile:
    """Project ``good`` with one dataset, ``SRD``, of ``versions``; each version holds ``notes.txt`` of ``size``."""

    def answer(path: str) -> Any:
        if path == "/api/v1/projects/good":
            return {"slug": "good", "name": "good"}
        if path == "/api/v1/projects/good/datasets":
            return [{"id": SRD, "title": "t", "versions": versions, "owner_project": "good"}]
        if path.startswith(f"/api/v1/datasets/{SRD}/versions/") and path.endswith("/files"):
            return {"files": [_record(size)], "next_after": None}
        if path.endswith("/plaintext"):
            return b"data\n"
        return None

    return Hostile(answer)


def _fs(url: str) -> StrongroomFileSystem:
    return StrongroomFileSystem(url=url, token=TOKEN, via="plaintext", skip_instance_cache=True)


# -- a dataset folder's version suffix ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", NOT_VERSIONS, ids=lambda v: repr(v)[:16])
def test_a_version_suffix_that_is_no_version_names_no_folder(laptop, suffix: str) -> None:  # noqa: F811
    hub = dataset_hub([{"number": 1, "state": "released"}, {"number": 2, "state": "draft"}])
    with hub.serving() as url:
        fs = _fs(url)
        for call in (fs.ls, fs.info, lambda p: fs.cat_file(f"{p}/notes.txt")):
            with pytest.raises(FileNotFoundError) as refused:
                call(f"good/{SRD}@{suffix}")
            assert _errno_of(refused.value) == errno.ENOENT  # what the workspace's FUSE mount answers
        # a version as written, and the latest released without a suffix, are still found
        assert fs.ls(f"good/{SRD}@2", detail=False) == [f"good/{SRD}@2/notes.txt"]
        assert fs.cat_file(f"good/{SRD}@1/notes.txt") == b"data\n"
        assert fs.info(f"good/{SRD}/notes.txt")["size"] == 5
        with pytest.raises(FileNotFoundError, match="no such version"):
            fs.ls(f"good/{SRD}@3")


# -- numbers in the hub's answers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("number", ["²", "١", None, True, 1.5, "9" * 5000, -1, 2**31, [1]],
                         ids=lambda v: repr(v)[:16])
def test_a_version_number_of_the_hubs_that_is_no_number_is_refused_cleanly(laptop, number: object) -> None:  # noqa: F811
    with dataset_hub([{"number": number, "state": "released"}]).serving() as url:
        fs = _fs(url)
        with pytest.raises(OSError, match="the hub's answer gives no valid version number"):
            fs.ls(f"good/{SRD}")
        with pytest.raises(FileNotFoundError, match="no such version"):  # nothing answers to 1 either
            fs.ls(f"good/{SRD}@1")


@pytest.mark.parametrize("size", ["²", "١", None, True, 2.5, "9" * 5000, -1, 2**63, {"bytes": 5}],
                         ids=lambda v: repr(v)[:16])
def test_a_file_size_of_the_hubs_that_is_no_number_is_refused_cleanly(laptop, size: object) -> None:  # noqa: F811
    with dataset_hub([{"number": 1, "state": "released"}], size=size).serving() as url:
        fs = _fs(url)
        for call in (fs.info, fs.cat_file, fs.open):
            with pytest.raises(OSError, match="notes.txt: the hub's answer gives no valid size") as refused:
                call(f"good/{SRD}/notes.txt")
            assert _errno_of(refused.value) == errno.EIO
    with dataset_hub([{"number": 1, "state": "released"}], size="5").serving() as url:  # as text: still a size
        assert _fs(url).cat_file(f"good/{SRD}/notes.txt") == b"data\n"


def test_an_answer_that_is_not_json_is_an_error_not_a_traceback(laptop) -> None:  # noqa: F811
    """A proxy's page where the hub's JSON should be: the file system says so, the command line prints it."""
    with Hostile(lambda path: b"<html>The proxy says hello</html>").serving() as url:
        with pytest.raises(OSError, match="the hub's answer is not JSON"):
            _fs(url).ls("")
        done = CliRunner().invoke(client_cli, ["projects", "list"],
                                  env={"STRONGROOM_URL": url, "STRONGROOM_TOKEN": TOKEN})
    assert done.exit_code == 1 and not isinstance(done.exception, ValueError), done.exception
    assert "the hub's answer is not JSON" in done.output


def test_the_real_hubs_dataset_folders_take_only_versions_as_written(hub, world) -> None:  # noqa: F811
    fs = StrongroomFileSystem(skip_instance_cache=True)
    dataset = world["dataset"]
    names = fs.ls(f"lung/{dataset}@1", detail=False)
    assert names and names == [n.replace(f"{dataset}/", f"{dataset}@1/") for n in fs.ls(f"lung/{dataset}",
                                                                                        detail=False)]
    for suffix in ("²", "١", "01", "9" * 5000, ""):
        with pytest.raises(FileNotFoundError):
            fs.ls(f"lung/{dataset}@{suffix}")


# -- a partner's Content-Length ---------------------------------------------------------------------------------------
BOUNDS = bounded_http.Bounds(max_bytes=100, total_seconds=30, read_seconds=10)
NOT_BYTE_COUNTS = ["²".encode(), "١".encode(), b"9" * 5000, b"1" * 25, b"-1", b"+5", b"", b"5, 6", b"0x10"]


def _answering(content_length: bytes) -> Any:
    """A real ASGI application whose answer announces ``content_length`` and sends five bytes."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", content_length)]})
        await send({"type": "http.response.body", "body": b"hello"})

    return app


def _afetch(content_length: bytes) -> bounded_http.Reply:
    async def go() -> bounded_http.Reply:
        return await bounded_http.afetch("GET", "http://partner.test/", BOUNDS,
                                         transport=httpx.ASGITransport(_answering(content_length)))

    return anyio.run(go)


@pytest.mark.parametrize("declared", NOT_BYTE_COUNTS, ids=lambda v: repr(v[:12]))
def test_a_content_length_that_is_no_byte_count_is_refused(declared: bytes) -> None:
    with pytest.raises(bounded_http.AnswerRefused, match="a Content-Length that is not a byte count"):
        _afetch(declared)


def test_a_content_length_that_is_a_byte_count_is_read_as_before() -> None:
    assert _afetch(b"5").content == b"hello"
    assert _afetch(b" 5 ").content == b"hello"
    with pytest.raises(bounded_http.AnswerRefused, match=r"larger than 100 bytes \(101 announced\)"):
        _afetch(b"101")


@contextmanager
def raw_server(content_length: bytes) -> Iterator[str]:
    """A real HTTP/1.1 server on loopback that answers once with ``content_length`` as it is."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + content_length
                               + b"\r\nConnection: close\r\n\r\nhello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        listener.close()
        thread.join(10)


@pytest.mark.parametrize("declared", NOT_BYTE_COUNTS[:6], ids=lambda v: repr(v[:12]))
def test_over_the_network_such_an_answer_is_a_transport_error_too(declared: bytes) -> None:
    """Over a real connection h11 refuses it before this hub's reading does: the callers' handling is the same."""
    with raw_server(declared) as url, pytest.raises(httpx.TransportError):
        bounded_http.fetch("GET", url, BOUNDS)
