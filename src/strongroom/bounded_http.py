"""Reading a remote partner's answer within bounds.

A partner hub, a visa issuer, an identity provider or DataCite may be broken or malicious: an answer that never
ends, one that arrives a byte at a time, or a small compressed body that inflates to gigabytes must neither exhaust
this hub's memory nor hold one of its workers. Every answer from a remote partner is read here:

- at most ``Bounds.max_bytes`` of it, announced (``Content-Length``) or sent; a ``Content-Length`` that is not a
  byte count (ASCII digits, within 64 bits: ``parsing``) is refused, not guessed at;
- as sent: ``Accept-Encoding: identity`` is asked for and any other ``Content-Encoding`` refused, so the bound is on
  what is held in memory (no decompression bomb);
- the whole exchange — connecting, sending the request, the status line and headers however slowly they trickle
  in, and the body — within ``Bounds.total_seconds`` (cancelled then), each wait on the network within
  ``Bounds.read_seconds`` (a connection within at most ``CONNECT_SECONDS``).

Beyond a bound: ``AnswerRefused``, an ``httpx.TransportError``, so a caller's handling of a partner that did not
answer covers it too; nothing of the answer is returned, so the caller stores nothing. Redirects are never followed.

``fetch`` blocks (its own event loop in a thread of its own: callable from a job, a thread pool, the CLI or a request
handler that already runs a loop), ``afetch`` is awaited in a running loop, and ``BoundedTransport`` puts a library's
blocking httpx client (authlib's OAuth client, the DataCite client) under the same bounds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import httpx

from .parsing import whole_number_in

CONNECT_SECONDS = 30.0
_MAX_LENGTH = 2**63 - 1  # the largest Content-Length read as a number; a longer one is not a byte count
# a request's body: bytes, or a blocking iterable of chunks (a stored body streamed as it is read)
Content = bytes | Iterable[bytes] | None
# headers the answer handed to a library's client no longer describe (the body is whole and as sent)
_HOP_BY_HOP = frozenset({"transfer-encoding", "connection", "keep-alive"})


@dataclass(frozen=True)
class Bounds:
    max_bytes: int  # of the answer's body
    total_seconds: float  # the whole exchange, request included
    read_seconds: float  # each wait on the network


class AnswerRefused(httpx.TransportError):
    """A remote answer this hub stopped reading: too large, too slow or compressed (``str()`` says which)."""


@dataclass(frozen=True)
class Reply:
    """An answer read whole within its bounds."""

    status_code: int
    headers: httpx.Headers
    content: bytes  # empty when the body went to a ``sink``

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def describe(exc: httpx.HTTPError) -> str:
    """Why a partner's answer is missing, for an error message: the bound it exceeded, or the transport's failure."""
    return f"answer not read: {exc}" if isinstance(exc, AnswerRefused) else f"no answer ({type(exc).__name__})"


async def afetch(method: str, url: str, bounds: Bounds, *, headers: Mapping[str, str] | None = None,
                 content: Content = None, sink: Callable[[bytes], object] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> Reply:
    """One request and its whole answer within ``bounds`` (see the module). ``sink``: the answer's body is handed to
    it chunk by chunk instead of being kept (still at most ``max_bytes``). ``transport``: the client's (tests)."""
    try:
        with anyio.fail_after(bounds.total_seconds):
            return await _exchange(method, url, bounds, headers, content, sink, transport)
    except TimeoutError:
        raise AnswerRefused(f"not sent within {bounds.total_seconds:g} s") from None


def fetch(method: str, url: str, bounds: Bounds, *, headers: Mapping[str, str] | None = None,
          content: Content = None, sink: Callable[[bytes], object] | None = None) -> Reply:
    """``afetch`` from blocking code: an event loop of its own in a thread of its own (the caller may run a loop
    already, and anyio refuses to start a second one in a thread that has one)."""
    exchange = partial(afetch, method, url, bounds, headers=headers, content=content, sink=sink)
    with ThreadPoolExecutor(1, thread_name_prefix="bounded-http") as pool:
        return pool.submit(anyio.run, exchange).result()


async def _exchange(method: str, url: str, bounds: Bounds, headers: Mapping[str, str] | None, content: Content,
                    sink: Callable[[bytes], object] | None, transport: httpx.AsyncBaseTransport | None) -> Reply:
    asked = httpx.Headers(headers)
    asked["Accept-Encoding"] = "identity"
    body = content if content is None or isinstance(content, bytes) else _async_chunks(content)
    timeout = httpx.Timeout(bounds.read_seconds, connect=min(bounds.read_seconds, CONNECT_SECONDS))
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, transport=transport) as client, \
            client.stream(method, url, headers=asked, content=body) as r:
        encoding = r.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise AnswerRefused(f"a compressed answer ({encoding[:40]}) though none was asked for")
        declared = r.headers.get("content-length")
        if declared is not None:  # a byte count by the one rule (``parsing``): never isdigit() then int()
            announced = whole_number_in(declared, 0, _MAX_LENGTH)
            if announced is None:
                raise AnswerRefused(f"a Content-Length that is not a byte count ({declared[:40]!r})")
            if announced > bounds.max_bytes:
                raise AnswerRefused(f"larger than {bounds.max_bytes} bytes ({announced} announced)")
        kept, received = bytearray(), 0
        async for chunk in r.aiter_raw():
            received += len(chunk)
            if received > bounds.max_bytes:
                raise AnswerRefused(f"larger than {bounds.max_bytes} bytes")
            if sink is None:
                kept += chunk
            else:
                sink(chunk)
        return Reply(r.status_code, r.headers, bytes(kept))


async def _async_chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterable of chunks (a body read from storage), each read in a worker thread."""
    iterator = iter(chunks)
    while (chunk := await anyio.to_thread.run_sync(next, iterator, None)) is not None:
        yield chunk


class BoundedTransport(httpx.BaseTransport):
    """The transport of a library's blocking httpx client (authlib's OAuth client, the DataCite client): each request
    is sent through ``fetch`` under ``bounds`` and answered with the body read whole."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        reply = fetch(request.method, str(request.url), self.bounds, headers=request.headers,
                      content=request.read() or None)
        kept = [(k, v) for k, v in reply.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
        return httpx.Response(reply.status_code, headers=kept, content=reply.content, request=request)
