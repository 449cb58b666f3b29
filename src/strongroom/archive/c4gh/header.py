"""crypt4gh headers: read, open, make and re-address them (the body is never touched here).

With ``seed``, ``make_header`` / ``reencrypt_header`` are deterministic: see the package docstring for
what that implies for the seed's secrecy."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import nacl.bindings
import nacl.exceptions
from crypt4gh import header as c4gh_header  # type: ignore[import-untyped,unused-ignore]
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .errors import HeaderError, NoMatchingKey
from .format import MAGIC, NONCE_SIZE, TAG_SIZE, VERSION, labelled_hmac, read_exact
from .keys import KeyPair, check_public, generate_keypair

_METHOD_X25519_CHACHA20 = (0).to_bytes(4, "little")
_PACKET_OVERHEAD = 4 + 32 + NONCE_SIZE + TAG_SIZE  # method + writer key + nonce + tag
# Sanity bounds so garbage cannot make read_header allocate or read without limit.
_MAX_PACKETS = 1024
_MAX_PACKET_SIZE = 1 << 20


@dataclass(frozen=True)
class OpenedHeader:
    """What a reader learns from a header: data keys, the optional edit list, which secret key worked."""

    session_keys: tuple[bytes, ...] = field(repr=False)
    edit_list: tuple[int, ...] | None
    key_index: int




def _preamble(head: bytes) -> int:
    if len(head) < 16:
        raise HeaderError("crypt4gh header too short")
    if head[:8] != MAGIC:
        raise HeaderError("not a crypt4gh file (bad magic)")
    version = int.from_bytes(head[8:12], "little")
    if version != VERSION:
        raise HeaderError(f"unsupported crypt4gh version {version}")
    count = int.from_bytes(head[12:16], "little")
    if not 0 < count <= _MAX_PACKETS:
        raise HeaderError(f"implausible header packet count {count}")
    return count


def _packet_length(raw: bytes) -> int:
    length = int.from_bytes(raw, "little")
    if not 4 + 4 <= length <= _MAX_PACKET_SIZE:  # length includes itself; at least a method field
        raise HeaderError(f"invalid header packet length {length}")
    return length


def read_header(stream: BinaryIO) -> bytes:
    """Read exactly the header from ``stream`` and return its raw bytes; ``stream`` is left at the body."""
    parts = [read_exact(stream, 16)]
    count = _preamble(parts[0])
    for _ in range(count):
        raw_len = read_exact(stream, 4)
        if len(raw_len) < 4:
            raise HeaderError("crypt4gh header truncated")
        length = _packet_length(raw_len)
        packet = read_exact(stream, length - 4)
        if len(packet) < length - 4:
            raise HeaderError("crypt4gh header truncated")
        parts += (raw_len, packet)
    return b"".join(parts)


def _split_packets(header: bytes) -> list[bytes]:
    """The packets (without their length field) of a complete header; trailing bytes are an error."""
    count = _preamble(header[:16])
    packets, pos = [], 16
    for _ in range(count):
        if pos + 4 > len(header):
            raise HeaderError("crypt4gh header truncated")
        length = _packet_length(header[pos:pos + 4])
        if pos + length > len(header):
            raise HeaderError("crypt4gh header truncated")
        packets.append(header[pos + 4:pos + length])
        pos += length
    if pos != len(header):
        raise HeaderError(f"{len(header) - pos} unexpected bytes after the crypt4gh header")
    return packets


def _writer_key(own: KeyPair, reader_public: bytes) -> bytes:
    try:  # the writer is libsodium's kx "server"; its tx key equals the reader's rx key
        return nacl.bindings.crypto_kx_server_session_keys(own.public, own.secret, reader_public)[1]
    except nacl.exceptions.CryptoError as e:
        raise ValueError("unusable recipient public key (low-order point)") from e


def _reader_key(own: KeyPair, writer_public: bytes) -> bytes | None:
    try:
        return nacl.bindings.crypto_kx_client_session_keys(own.public, own.secret, writer_public)[0]
    except nacl.exceptions.CryptoError:
        return None  # a malicious low-order writer key: this packet is not for us


def open_header(header: bytes, secret_keys: Sequence[bytes | KeyPair]) -> OpenedHeader:
    """Decrypt the packets addressed to any of ``secret_keys`` (secret keys, or key pairs: a caller opening many
    headers with the same keys derives their public halves once).

    Raises ``HeaderError`` for malformed input and ``NoMatchingKey`` if no packet opens.
    """
    if not secret_keys:
        raise ValueError("no secret keys given")
    keys = [sk if isinstance(sk, KeyPair) else KeyPair.from_secret(sk) for sk in secret_keys]
    opened: list[bytes] = []
    first_index: int | None = None
    for packet in _split_packets(bytes(header)):
        # Readers skip packets they cannot open (other recipients, unknown methods).
        if packet[:4] != _METHOD_X25519_CHACHA20 or len(packet) < _PACKET_OVERHEAD:
            continue
        writer, nonce, sealed = packet[4:36], packet[36:48], packet[48:]
        for index, kp in enumerate(keys):
            shared = _reader_key(kp, writer)
            if shared is None:
                continue
            try:
                opened.append(ChaCha20Poly1305(shared).decrypt(nonce, sealed, None))
            except InvalidTag:
                continue
            if first_index is None:
                first_index = index
            break
    if not opened or first_index is None:
        raise NoMatchingKey(len(keys))
    try:
        data_packets, edit_packet = c4gh_header.partition_packets(opened)
        session_keys = tuple(bytes(c4gh_header.parse_enc_packet(p)) for p in data_packets)
        edit_list = (tuple(c4gh_header.parse_edit_list_packet(edit_packet))
                     if edit_packet is not None else None)
    except ValueError as e:
        raise HeaderError(f"invalid crypt4gh header packet: {e}") from e
    if not session_keys:
        raise HeaderError("crypt4gh header has no data encryption key for this recipient")
    if any(len(k) != 32 for k in session_keys):
        raise HeaderError("crypt4gh data key is not 32 bytes")
    return OpenedHeader(session_keys, edit_list, first_index)




def _seal_packet(plain: bytes, recipient: bytes, sender: KeyPair | None, seed: bytes | None) -> bytes:
    if sender is not None:
        writer = sender
    elif seed is not None:
        writer = KeyPair.from_secret(labelled_hmac(seed, b"strongroom c4gh writer", recipient))
    else:  # a fresh ephemeral writer key, as crypt4gh does
        writer = generate_keypair()
    if seed is not None:
        # Deterministic nonce over everything that goes under this key: repeats only for identical input.
        nonce = labelled_hmac(seed, b"strongroom c4gh nonce", recipient, writer.public, plain)[:NONCE_SIZE]
    else:
        nonce = os.urandom(NONCE_SIZE)
    sealed = ChaCha20Poly1305(_writer_key(writer, recipient)).encrypt(nonce, plain, None)
    return _METHOD_X25519_CHACHA20 + writer.public + nonce + sealed


def _recipients(recipient_public: bytes | Sequence[bytes]) -> list[bytes]:
    if isinstance(recipient_public, bytes | bytearray | memoryview):
        return [check_public(bytes(recipient_public))]
    recipients = [check_public(bytes(r)) for r in recipient_public]
    if not recipients:
        raise ValueError("no recipient public key")
    return recipients


def check_edit_list(edit_list: Sequence[int]) -> list[int]:
    lengths = [int(n) for n in edit_list]
    if not lengths or any(n < 0 for n in lengths):
        raise ValueError("an edit list is a non-empty list of non-negative lengths")
    return lengths


def make_header(session_keys: Sequence[bytes], recipient_public: bytes | Sequence[bytes],
                sender: KeyPair | None = None, edit_list: Sequence[int] | None = None,
                *, seed: bytes | None = None) -> bytes:
    """A header giving ``session_keys`` (and the optional edit list) to each recipient.

    ``sender`` is the writer key pair (default: a fresh ephemeral one). With ``seed`` the result is
    deterministic (see the package docstring for what that implies for the seed's secrecy).
    """
    if not session_keys:
        raise ValueError("no session key")
    payloads = []
    for key in session_keys:
        if len(key) != 32:
            raise ValueError("a crypt4gh session key is 32 bytes")
        payloads.append(c4gh_header.make_packet_data_enc(0, bytes(key)))
    if edit_list is not None:
        payloads.append(c4gh_header.make_packet_data_edit_list(check_edit_list(edit_list)))
    packets = [_seal_packet(p, r, sender, seed) for r in _recipients(recipient_public) for p in payloads]
    return bytes(c4gh_header.serialize(packets))


def reencrypt_header(header: bytes, secret_keys: Sequence[bytes], recipient_public: bytes | Sequence[bytes],
                     sender: KeyPair | None = None, edit_list: Sequence[int] | None = None,
                     *, seed: bytes | None = None) -> bytes:
    """The same session key(s) (and edit list), re-addressed to ``recipient_public``: the body is unchanged.

    Packets addressed to other recipients are dropped. ``edit_list`` adds an edit list (e.g. from
    ``plan_range``); a header that already carries one cannot get another (composition unsupported).
    """
    opened = open_header(header, secret_keys)
    if edit_list is not None and opened.edit_list is not None:
        raise ValueError("the header already has an edit list; composing edit lists is not supported")
    return make_header(opened.session_keys, recipient_public, sender,
                       edit_list if edit_list is not None else opened.edit_list, seed=seed)
