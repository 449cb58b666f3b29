"""crypt4gh v1 wire-format constants and the byte-level helpers the engine modules share."""

from __future__ import annotations

import hashlib
import hmac
from typing import BinaryIO

SEGMENT_SIZE = 65536
NONCE_SIZE = 12
TAG_SIZE = 16
CIPHER_DIFF = NONCE_SIZE + TAG_SIZE
CIPHER_SEGMENT_SIZE = SEGMENT_SIZE + CIPHER_DIFF
BATCH_SEGMENTS = 64  # 4 MiB per batch: few Python calls per MiB, still flat memory

MAGIC = b"crypt4gh"
VERSION = 1


def read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    while len(data) < n:  # raw streams and sockets may return short reads
        more = stream.read(n - len(data))
        if not more:
            break
        data += more
    return data


def labelled_hmac(seed: bytes, label: bytes, *parts: bytes | memoryview) -> bytes:
    mac = hmac.new(seed, label, hashlib.sha256)
    for part in parts:  # length-prefixed so that part boundaries are unambiguous
        mac.update(len(part).to_bytes(4, "little"))
        mac.update(part)
    return mac.digest()
