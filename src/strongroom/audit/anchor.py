"""Signed checkpoints of the audit chain, kept outside the database (a pure engine: no web, no DB).

A checkpoint says "at time T the chain had N events and event N's hash was H", signed with the hub's
Ed25519 anchor key. Someone who can rewrite the database can move the chain head back or wipe the
table, but cannot unwrite a checkpoint from an append-only file or a locked S3 object, nor forge a new
one without the key; ``audit verify`` then sees fewer events, or a different hash, than was promised.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..keyfiles import read_or_create
from ..paths import private_dir

FORMAT = "strongroom-audit-checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head: str
    at: str  # ISO 8601, UTC
    key_id: str
    sig: str = ""
    format: str = FORMAT

    def signed_bytes(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k != "sig"}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a strongroom audit checkpoint")
        cp = cls(seq=int(data["seq"]), head=str(data["head"]), at=str(data["at"]), key_id=str(data["key_id"]),
                 sig=str(data["sig"]))
        dt.datetime.fromisoformat(cp.at)  # must parse
        return cp


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class AnchorKey:
    """The signing key (private half never leaves the hub host) or, for verifying elsewhere, its public half."""

    def __init__(self, private: Ed25519PrivateKey | None, public: Ed25519PublicKey) -> None:
        self._private, self.public = private, public
        self.key_id = key_id(public)

    @classmethod
    def load_or_create(cls, path: Path) -> AnchorKey:
        private = serialization.load_pem_private_key(
            read_or_create(path, lambda: cls.generate().private_pem()).encode(), password=None)
        assert isinstance(private, Ed25519PrivateKey)
        return cls(private, private.public_key())

    @classmethod
    def generate(cls) -> AnchorKey:
        private = Ed25519PrivateKey.generate()
        return cls(private, private.public_key())

    def private_pem(self) -> str:
        assert self._private is not None, "a public key has no private half"
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()).decode()

    @classmethod
    def from_public_pem(cls, pem: bytes) -> AnchorKey:
        public = serialization.load_pem_public_key(pem)
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return cls(None, public)

    def public_pem(self) -> str:
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, seq: int, head: str, at: dt.datetime) -> Checkpoint:
        assert self._private is not None, "a public key cannot sign"
        unsigned = Checkpoint(seq=seq, head=head, at=at.astimezone(dt.UTC).isoformat(timespec="seconds"),
                              key_id=self.key_id)
        sig = base64.b64encode(self._private.sign(unsigned.signed_bytes())).decode()
        return Checkpoint(**{**asdict(unsigned), "sig": sig})

    def valid(self, cp: Checkpoint) -> bool:
        if cp.key_id != self.key_id:
            return False
        try:
            self.public.verify(base64.b64decode(cp.sig, validate=True), cp.signed_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True


# -- the append-only file ----------------------------------------------------------------------------
def append(path: Path, cp: Checkpoint) -> None:
    """One line, appended (O_APPEND: never rewrites what is there) and fsynced before returning."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (cp.to_json() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(lines: list[str], source: str) -> tuple[list[Checkpoint], list[str]]:
    """Checkpoints, and a description of every line that is not one (a damaged anchor is a finding)."""
    found, bad = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            found.append(Checkpoint.from_json(line))
        except (ValueError, KeyError, TypeError):
            bad.append(f"{source} line {n} is not a checkpoint")
    return found, bad


def read_file(path: Path) -> tuple[list[Checkpoint], list[str]]:
    if not path.exists():
        return [], []
    return read_lines(path.read_text(errors="replace").splitlines(), str(path))


def s3_key(prefix: str, cp: Checkpoint) -> str:
    # zero-padded: keys sort by sequence number
    return f"{prefix}{cp.seq:015d}-{cp.at.replace(':', '').replace('+', 'Z')}.json"
