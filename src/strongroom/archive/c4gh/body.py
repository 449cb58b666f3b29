"""The crypt4gh body: 64 KiB segments sealed with ChaCha20-Poly1305, streamed both ways."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .errors import TamperedSegment, TruncatedBody
from .format import BATCH_SEGMENTS, CIPHER_DIFF, CIPHER_SEGMENT_SIZE, NONCE_SIZE, SEGMENT_SIZE, TAG_SIZE, labelled_hmac
from .header import check_edit_list, make_header, open_header, read_header
from .keys import KeyPair

# ------------------------------------------------------------------------------------------ encryption


class Encryptor:
    """Push-style crypt4gh writer: send ``header`` first, then ``update()`` outputs, then ``finalize()``."""

    def __init__(self, recipient_public: bytes | Sequence[bytes], sender: KeyPair | None = None) -> None:
        session_key = os.urandom(32)
        self.header = make_header([session_key], recipient_public, sender)
        self._aead = ChaCha20Poly1305(session_key)
        self._pending = bytearray()
        self._finished = False

    def _seal(self, plain: memoryview) -> bytearray:
        count = -(-len(plain) // SEGMENT_SIZE)
        out = bytearray(len(plain) + count * CIPHER_DIFF)
        view = memoryview(out)
        nonces = os.urandom(NONCE_SIZE * count)  # one syscall per batch
        src = dst = 0
        for i in range(count):
            chunk = plain[src:src + SEGMENT_SIZE]
            nonce = nonces[i * NONCE_SIZE:(i + 1) * NONCE_SIZE]
            view[dst:dst + NONCE_SIZE] = nonce
            dst += NONCE_SIZE
            dst += self._aead.encrypt_into(nonce, chunk, None, view[dst:dst + len(chunk) + TAG_SIZE])
            src += len(chunk)
        return out  # (not copied into a ``bytes``: a fresh half-megabyte copy costs as much as the cipher)

    def update(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """Ciphertext for every complete 64 KiB segment buffered so far (possibly ``b""``)."""
        if self._finished:
            raise ValueError("Encryptor already finalized")
        if not self._pending:  # segments sealed straight from ``data``: only a partial tail is buffered
            with memoryview(data) as view:
                flat = view.cast("B") if view.ndim != 1 or view.itemsize != 1 else view
                full = len(flat) - len(flat) % SEGMENT_SIZE
                out = self._seal(flat[:full]) if full else b""
                self._pending += flat[full:]
            return out
        self._pending += data
        full = len(self._pending) - len(self._pending) % SEGMENT_SIZE
        if not full:
            return b""
        with memoryview(self._pending) as view:
            out = self._seal(view[:full])
        del self._pending[:full]
        return out

    def finalize(self) -> bytes | bytearray:
        """The last, partial segment (``b""`` when the plaintext ended on a segment boundary)."""
        if self._finished:
            return b""
        self._finished = True
        with memoryview(self._pending) as view:
            out = self._seal(view) if len(view) else b""
        self._pending = bytearray()
        return out


def encrypt_stream(plaintext_chunks: Iterable[bytes], recipient_public: bytes | Sequence[bytes],
                   sender: KeyPair | None = None) -> Iterator[bytes | bytearray]:
    """Yield a whole crypt4gh file: the header, then ciphertext, at most 64 segments per item."""
    enc = Encryptor(recipient_public, sender)
    yield enc.header
    step = BATCH_SEGMENTS * SEGMENT_SIZE
    for chunk in plaintext_chunks:
        with memoryview(chunk) as view:
            for pos in range(0, len(view), step):  # split huge chunks: bounded output per item
                out = enc.update(view[pos:pos + step])
                if out:
                    yield out
    last = enc.finalize()
    if last:
        yield last


def body_size_for(plaintext_size: int) -> int:
    """Size of the encrypted body holding ``plaintext_size`` bytes."""
    return plaintext_size + -(-plaintext_size // SEGMENT_SIZE) * CIPHER_DIFF


def seal_segments(session_key: bytes, first_index: int, plaintext: bytes | bytearray | memoryview,
                  nonce_seed: bytes) -> bytes:
    """Deterministically encrypt segments ``first_index, first_index + 1, ...`` of a body.

    For resumable uploads: any byte range of the encrypted body can be recomputed later, identically,
    from the plaintext. Nonces are HMAC(nonce_seed, index | segment plaintext) (SIV-style), so a segment
    whose content changed between attempts gets a fresh nonce instead of reusing one under the same key.
    ``plaintext`` holds whole segments, except that the file's last segment may be short.
    """
    aead = ChaCha20Poly1305(session_key)
    out = bytearray()
    with memoryview(plaintext) as view:
        for i, pos in enumerate(range(0, len(view), SEGMENT_SIZE), first_index):
            chunk = view[pos:pos + SEGMENT_SIZE]
            nonce = labelled_hmac(nonce_seed, b"strongroom c4gh segment", i.to_bytes(8, "little"), chunk)[:NONCE_SIZE]
            out += nonce
            out += aead.encrypt(nonce, chunk, None)
    return bytes(out)


# ------------------------------------------------------------------------------------------ decryption


class SegmentCipher:
    """Segment AEAD with several possible data keys (the spec allows more than one per header)."""

    def __init__(self, session_keys: Sequence[bytes]) -> None:
        if not session_keys:
            raise ValueError("no session key")
        self._aeads = [ChaCha20Poly1305(bytes(k)) for k in session_keys]

    def _fail(self, index: int, length: int, final: bool) -> TamperedSegment:
        # A short last segment that fails is almost always a cut upload/download.
        if final and length < CIPHER_SEGMENT_SIZE:
            return TruncatedBody(index, length)
        return TamperedSegment(index)

    def open_into(self, segment: memoryview, out: memoryview, index: int, final: bool) -> int:
        """Authenticate and decrypt one segment into ``out``; returns the plaintext length."""
        length = len(segment)
        if length <= CIPHER_DIFF:
            raise TruncatedBody(index, length)
        nonce, sealed, dest = segment[:NONCE_SIZE], segment[NONCE_SIZE:], out[:length - CIPHER_DIFF]
        for i, aead in enumerate(self._aeads):
            try:
                n = aead.decrypt_into(nonce, sealed, None, dest)
            except InvalidTag:
                continue
            if i:  # keep the key that worked first: files normally use a single key
                self._aeads.insert(0, self._aeads.pop(i))
            return n
        raise self._fail(index, length, final)

    def open(self, segment: bytes | memoryview, index: int, final: bool) -> bytes:
        length = len(segment)
        if length <= CIPHER_DIFF:
            raise TruncatedBody(index, length)
        for i, aead in enumerate(self._aeads):
            try:
                plain = aead.decrypt(segment[:NONCE_SIZE], segment[NONCE_SIZE:], None)
            except InvalidTag:
                continue
            if i:
                self._aeads.insert(0, self._aeads.pop(i))
            return plain
        raise self._fail(index, length, final)


def fill(reader: BinaryIO, buf: memoryview) -> int:
    """Fill ``buf`` from ``reader`` unless EOF comes first; returns the byte count."""
    readinto = getattr(reader, "readinto", None)
    n, size = 0, len(buf)
    while n < size:
        if readinto is not None:
            got = readinto(buf[n:])
        else:
            data = reader.read(size - n)
            got = len(data)
            buf[n:n + got] = data
        if not got:
            break
        n += got
    return n


def _cipher_segments(body: BinaryIO | Iterable[bytes]) -> Iterator[tuple[memoryview, bool]]:
    """(segment, is_final) pairs; each view is valid until the next item is requested."""
    if hasattr(body, "read"):
        reader: BinaryIO = body  # type: ignore[assignment]
        buf = bytearray(BATCH_SEGMENTS * CIPHER_SEGMENT_SIZE)
        view = memoryview(buf)
        while True:
            n = fill(reader, view)
            for pos in range(0, n, CIPHER_SEGMENT_SIZE):
                end = min(pos + CIPHER_SEGMENT_SIZE, n)
                yield view[pos:end], n < len(buf) and end == n
            if n < len(buf):
                return
    pending = bytearray()
    for chunk in body:
        pending += chunk
        full = len(pending) - len(pending) % CIPHER_SEGMENT_SIZE
        if full:
            held = bytes(pending[:full])
            del pending[:full]
            with memoryview(held) as view:
                for pos in range(0, full, CIPHER_SEGMENT_SIZE):
                    yield view[pos:pos + CIPHER_SEGMENT_SIZE], False
    if pending:  # only the last segment can be shorter than a full one
        yield memoryview(bytes(pending)), True


def decrypt_segments(body: BinaryIO | Iterable[bytes], session_keys: Sequence[bytes]) -> Iterator[bytes]:
    """Plaintext of each body segment, in order."""
    cipher = SegmentCipher(session_keys)
    for index, (segment, final) in enumerate(_cipher_segments(body)):
        yield cipher.open(segment, index, final)


def apply_edit_list(plaintext_chunks: Iterable[bytes], edit_list: Sequence[int] | None) -> Iterator[bytes]:
    """Keep only what a crypt4gh edit list selects (alternating skip/keep lengths; odd count = keep rest)."""
    if edit_list is None:
        yield from plaintext_chunks
        return
    lengths = iter(check_edit_list(edit_list))
    keep, keep_rest, remaining = False, False, next(lengths)
    for chunk in plaintext_chunks:
        view, pos = memoryview(chunk), 0
        while pos < len(view):
            if keep_rest:
                yield bytes(view[pos:])
                break
            take = min(remaining, len(view) - pos)
            if keep and take:
                yield bytes(view[pos:pos + take])
            pos, remaining = pos + take, remaining - take
            while remaining == 0 and not keep_rest:  # zero-length entries just flip the mode
                following = next(lengths, None)
                if following is None:
                    if keep:
                        return  # even-length list: ends with a keep
                    keep_rest = True
                else:
                    remaining, keep = following, not keep


def decrypt_stream(stream: BinaryIO, secret_keys: Sequence[bytes]) -> Iterator[bytes]:
    """Plaintext of a whole crypt4gh file (header + body), honouring its edit list."""
    opened = open_header(read_header(stream), secret_keys)
    yield from apply_edit_list(decrypt_segments(stream, opened.session_keys), opened.edit_list)
