"""Pure crypt4gh (GA4GH) streaming engine: keys, headers, body encryption, single-pass ingest, ranges.

Modules: ``errors``, ``format`` (wire constants), ``keys``, ``header``, ``body`` (segment streaming),
``ingest`` and ``ranges``; this package re-exports their public API, so callers use ``c4gh.<name>``.

No web or database code here; only the stdlib, ``cryptography``, ``nacl`` and the reference ``crypt4gh``
library (used for header packet payload formats and key-file encodings, so files and keys interoperate
with ``crypt4gh`` / ``crypt4gh-keygen``).

Format recap: ``header = "crypt4gh" | version u32 = 1 | packet count u32 | packets``; every packet is
``length u32 | method u32 = 0 | writer public key[32] | nonce[12] | ChaCha20-Poly1305(payload)`` under
``K = BLAKE2b-512(X25519(sk, pk) | reader_pk | writer_pk)[:32]`` (libsodium ``crypto_kx``). The body is a
sequence of 64 KiB plaintext segments, each stored as ``nonce[12] | ciphertext | tag[16]`` (65 564 bytes).

Keys
    ``KeyPair(secret, public)``; ``generate_keypair()``; ``fingerprint(public) -> str`` (16 hex chars);
    ``write_private_key(path, keypair, passphrase, *, comment=None)`` (``private_key_file`` gives the content);
    ``load_private_key(path, passphrase=None) -> KeyPair`` (crypt4gh key format; ``KeyFileError`` on a wrong
    or missing passphrase); ``write_public_key(path, public)``; ``public_key_file(public) -> bytes`` (PEM);
    ``load_public_key(path) -> bytes``;
    ``parse_public_key(data) -> bytes`` (raw, base64, PEM, base64-of-PEM or ``ssh-ed25519``).

Headers
    ``read_header(stream) -> bytes`` reads exactly the header, leaving ``stream`` at the body.
    ``open_header(header, secret_keys) -> OpenedHeader(session_keys, edit_list, key_index)``.
    ``make_header(session_keys, recipient_public, sender=None, edit_list=None, *, seed=None) -> bytes``.
    ``reencrypt_header(header, secret_keys, recipient_public, sender=None, edit_list=None, *, seed=None)``
    keeps the session keys, so the body is untouched.
    Determinism: with ``seed`` the output depends only on (session keys, edit list, recipient, sender, seed):
    packet nonces are HMAC(seed, ...) over the packet plaintext (SIV-style, so a nonce never repeats for
    different plaintexts under one key), and, when no ``sender`` is given, the writer key is derived from
    the seed too. A derived writer key means *anyone holding the seed can open the header*: the seed must
    then be a server secret (e.g. HMAC(hub secret, file id)). Passing ``sender`` (the archive key pair)
    makes the seed non-sensitive.

Body
    ``Encryptor(recipient_public, sender=None)`` with ``.header``, ``.update(data)`` and ``.finalize()``
    (bytes-like: a ``bytearray`` when it holds segments, never copied again); ``encrypt_stream(chunks,
    recipient_public, sender=None) -> Iterator[bytes | bytearray]`` yields the header then ciphertext (at
    most 64 segments per item).
    ``seal_segments(session_key, first_index, plaintext, nonce_seed) -> bytes``: deterministic segments
    (SIV-style nonces) so a client can recompute any part of its upload when resuming.
    ``decrypt_segments(body, session_keys) -> Iterator[bytes]`` (one item per segment;
    ``body`` is a binary reader or an iterable of byte chunks) raises ``TamperedSegment(index)`` and
    ``TruncatedBody``. ``apply_edit_list(chunks, edit_list)`` and ``decrypt_stream(stream, secret_keys)``
    give the plaintext of a whole crypt4gh file, edit list included.
    ``ingest(body_reader, session_keys, sink=None, *, workers=2, md5=True) -> IngestResult``: one pass that
    authenticates and decrypts every segment, hashes plaintext (SHA-256, MD5) and body (SHA-256) and hands
    each authenticated block of body bytes to ``sink`` (in order, from a single thread; a ``memoryview``
    valid only during the call). Threads form a pipeline (read | decrypt + SHA-256s | store | MD5); MD5
    is serial and sets the ceiling (~730 MiB/s on one core); ``md5=False`` drops it.
    Errors: ``TamperedSegment(index)``; ``TruncatedBody`` (a subclass: the short final segment fails).

Plaintext ranges (``end`` is exclusive everywhere)
    ``segment_span(start, end) -> (first_segment, last_segment, skip_in_first)``;
    ``plan_range(start, end, plaintext_size) -> RangePlan`` (body byte span to send + edit list);
    ``reencrypt_header(..., edit_list=plan.edit_list)`` then lets a client decrypt exactly the bytes asked
    for out of segments ``first..last``; ``decrypt_range(body, session_keys, start, end, body_size=None)``
    reads a range in-platform from a seekable body or a ranged opener ``(lo, hi) -> stream``.

Integrity limits of crypt4gh v1 (spec): segments are authenticated one by one, so a body cut exactly at a
segment boundary, or with whole segments removed or reordered, is not detectable here; compare the
``IngestResult`` sizes / digests recorded at ingest to catch that.
"""


from __future__ import annotations

from .body import (
    Encryptor,
    apply_edit_list,
    body_size_for,
    decrypt_segments,
    decrypt_stream,
    encrypt_stream,
    seal_segments,
)
from .errors import BodyError, C4ghError, HeaderError, KeyFileError, NoMatchingKey, TamperedSegment, TruncatedBody
from .format import BATCH_SEGMENTS, CIPHER_SEGMENT_SIZE, SEGMENT_SIZE
from .header import OpenedHeader, make_header, open_header, read_header, reencrypt_header
from .ingest import IngestResult, ingest
from .keys import (
    KeyPair,
    fingerprint,
    generate_keypair,
    load_private_key,
    load_public_key,
    parse_public_key,
    private_key_file,
    public_key_file,
    write_private_key,
    write_public_key,
)
from .ranges import RangePlan, decrypt_range, plan_range, segment_span

__all__ = [
    "BATCH_SEGMENTS", "CIPHER_SEGMENT_SIZE", "SEGMENT_SIZE",
    "BodyError", "C4ghError", "Encryptor", "HeaderError", "IngestResult", "KeyFileError", "KeyPair",
    "NoMatchingKey", "OpenedHeader", "RangePlan", "TamperedSegment", "TruncatedBody",
    "apply_edit_list", "body_size_for", "decrypt_range", "decrypt_segments", "decrypt_stream",
    "encrypt_stream", "fingerprint", "generate_keypair", "ingest", "load_private_key", "load_public_key",
    "make_header", "open_header", "parse_public_key", "plan_range", "private_key_file", "public_key_file",
    "read_header",
    "reencrypt_header", "seal_segments", "segment_span", "write_private_key", "write_public_key",
]
