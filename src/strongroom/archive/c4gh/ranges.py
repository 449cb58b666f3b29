"""Plaintext byte ranges of a crypt4gh body (``end`` is exclusive everywhere)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO, NamedTuple

from .body import SegmentCipher, body_size_for
from .format import CIPHER_SEGMENT_SIZE, SEGMENT_SIZE, read_exact


class RangePlan(NamedTuple):
    """How to serve plaintext bytes ``[start, end)`` of a file without an edit list.

    Send body bytes ``[body_start, body_end)`` (segments ``first_segment..last_segment``) behind a header
    carrying ``edit_list``: the client's crypt4gh decryption then yields exactly the requested bytes.
    """

    start: int
    end: int
    first_segment: int
    last_segment: int
    skip_in_first: int
    body_start: int
    body_end: int
    edit_list: tuple[int, int]


def segment_span(start: int, end: int) -> tuple[int, int, int]:
    """(first segment, last segment inclusive, bytes to skip in the first) for plaintext ``[start, end)``."""
    if start < 0 or end <= start:
        raise ValueError(f"invalid plaintext range [{start}, {end})")
    first, skip = divmod(start, SEGMENT_SIZE)
    return first, (end - 1) // SEGMENT_SIZE, skip


def plan_range(start: int, end: int | None, plaintext_size: int) -> RangePlan:
    """Plan a plaintext range; ``end`` (exclusive) is clamped to the size, ``None`` means to the end."""
    end = plaintext_size if end is None else min(end, plaintext_size)
    if start >= plaintext_size:
        raise ValueError(f"range start {start} is beyond the plaintext size {plaintext_size}")
    first, last, skip = segment_span(start, end)
    body_end = min((last + 1) * CIPHER_SEGMENT_SIZE, body_size_for(plaintext_size))
    return RangePlan(start, end, first, last, skip, first * CIPHER_SEGMENT_SIZE, body_end,
                     (skip, end - start))


def decrypt_range(body: BinaryIO | Callable[[int, int], BinaryIO], session_keys: Sequence[bytes],
                  start: int, end: int, body_size: int | None = None, *, body_offset: int = 0
                  ) -> Iterator[bytes]:
    """Plaintext bytes ``[start, end)`` of a stored body, reading only the segments concerned.

    ``body`` is either a seekable stream in which the body begins at ``body_offset``, or an opener
    ``(first_byte, end_byte) -> stream`` of body bytes (e.g. a ranged storage GET; it is closed after).
    ``body_size`` (if known) bounds the request. A range past the end is clamped, like HTTP; an empty
    range yields nothing.
    """
    if start < 0:
        raise ValueError(f"invalid plaintext range start {start}")
    if end <= start:
        return
    first, last, skip = segment_span(start, end)
    lo, hi = first * CIPHER_SEGMENT_SIZE, (last + 1) * CIPHER_SEGMENT_SIZE
    if body_size is not None:
        hi = min(hi, body_size)
        if lo >= hi:
            return
    if callable(body):
        reader = body(lo, hi)
    else:
        reader = body
        reader.seek(body_offset + lo)
    try:
        remaining = end - start
        cipher = SegmentCipher(session_keys)
        for index in range(first, last + 1):
            segment = read_exact(reader, CIPHER_SEGMENT_SIZE)
            if not segment:
                return
            final = len(segment) < CIPHER_SEGMENT_SIZE
            piece = cipher.open(segment, index, final)[skip:skip + remaining]
            skip = 0
            if piece:
                yield piece
                remaining -= len(piece)
            if final:
                return
    finally:
        if callable(body):
            reader.close()
