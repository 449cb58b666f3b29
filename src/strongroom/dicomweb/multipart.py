"""An incremental ``multipart/related`` reader (RFC 2046 / RFC 2387) for STOW-RS request bodies.

Pure: bytes in, events out; no web or database imports. The body is fed as it arrives, in chunks of any
size, and comes back as events — ``Part(headers)`` when a part begins, ``bytes`` of its content (never
more than was fed, plus at most one delimiter's length held back), ``PartEnd()`` when it ends — so a study
of any size passes through a fixed amount of memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_HEADER_BYTES = 16 * 1024  # a part's header block; a body that never ends its headers is refused


class MultipartError(ValueError):
    """The body is not a well-formed multipart message."""


@dataclass(frozen=True)
class Part:
    """A part begins; header names are lower case."""

    headers: dict[str, str]

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass(frozen=True)
class PartEnd:
    """The current part's content is complete."""


Event = Part | PartEnd | bytes

_PREAMBLE, _HEADERS, _BODY, _AFTER, _DONE = range(5)
_TOKEN = re.compile(r'^[0-9A-Za-z\'()+_,\-./:=? ]{1,70}$')  # RFC 2046 bchars


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a Content-Type value, or None if missing or not a valid boundary."""
    for item in content_type.split(";")[1:]:
        name, _, value = item.strip().partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value if _TOKEN.match(value) and not value.endswith(" ") else None
    return None


def media_parameters(content_type: str) -> tuple[str, dict[str, str]]:
    """The media type (lower case) and its parameters (names lower case, quotes removed)."""
    kind, *items = content_type.split(";")
    params = {}
    for item in items:
        name, _, value = item.strip().partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


class MultipartReader:
    """Feed the body with :meth:`feed`; call :meth:`close` at its end (raises if the message is cut short)."""

    def __init__(self, boundary: str) -> None:
        self.delimiter = b"\r\n--" + boundary.encode("ascii")
        self.buffer = bytearray(b"\r\n")  # so a body that starts with the first delimiter needs no special case
        self.state = _PREAMBLE
        self.parts = 0

    def feed(self, data: bytes) -> Iterator[Event]:
        self.buffer += data
        while True:
            if self.state == _PREAMBLE:
                at = self.buffer.find(self.delimiter)
                if at < 0:  # keep only what could be the start of the delimiter
                    del self.buffer[:max(0, len(self.buffer) - len(self.delimiter) + 1)]
                    return
                del self.buffer[:at + len(self.delimiter)]
                self.state = _AFTER
            elif self.state == _AFTER:  # after a delimiter: "--" ends the message, else padding and CRLF
                if len(self.buffer) < 2:
                    return
                if self.buffer[:2] == b"--":
                    self.state = _DONE
                    return
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    if len(self.buffer) > 1024:
                        raise MultipartError("a boundary line does not end")
                    return
                if self.buffer[:end].strip(b" \t"):
                    raise MultipartError("unexpected text after a boundary")
                del self.buffer[:end + 2]
                self.state = _HEADERS
            elif self.state == _HEADERS:
                if self.buffer[:2] == b"\r\n":
                    block, consumed = b"", 2
                else:
                    end = self.buffer.find(b"\r\n\r\n")
                    if end < 0:
                        if len(self.buffer) > MAX_HEADER_BYTES:
                            raise MultipartError("a part's headers are too long")
                        return
                    block, consumed = bytes(self.buffer[:end]), end + 4
                if len(block) > MAX_HEADER_BYTES:
                    raise MultipartError("a part's headers are too long")
                del self.buffer[:consumed]
                self.state = _BODY
                self.parts += 1
                yield Part(_headers(block))
            elif self.state == _BODY:
                at = self.buffer.find(self.delimiter)
                if at < 0:
                    keep = len(self.delimiter) - 1
                    if len(self.buffer) > keep:
                        chunk = bytes(self.buffer[:len(self.buffer) - keep])
                        del self.buffer[:len(chunk)]
                        yield chunk
                    return
                if at:
                    yield bytes(self.buffer[:at])
                del self.buffer[:at + len(self.delimiter)]
                self.state = _AFTER
                yield PartEnd()
            else:  # _DONE: the epilogue is ignored
                self.buffer.clear()
                return

    def close(self) -> None:
        if self.state != _DONE:
            raise MultipartError("the multipart body ends before its closing boundary")


def _headers(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = block.decode("ascii")
    except UnicodeDecodeError:
        raise MultipartError("a part's headers are not ASCII") from None
    for line in text.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise MultipartError("a part's header line is malformed")
        out[name.strip().lower()] = value.strip()
    return out
