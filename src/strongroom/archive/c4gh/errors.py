"""The crypt4gh engine's exceptions (all subclasses of :class:`C4ghError`)."""

from __future__ import annotations


class C4ghError(Exception):
    """Base class for every error raised by the crypt4gh engine."""


class HeaderError(C4ghError, ValueError):
    """The bytes are not a valid crypt4gh header (or a decrypted packet is malformed)."""


class NoMatchingKey(C4ghError):
    """None of the given secret keys opens any packet of the header."""

    def __init__(self, tried: int) -> None:
        super().__init__(f"none of the {tried} secret key(s) opens this crypt4gh header "
                         "(encrypted for another recipient?)")
        self.tried = tried


class KeyFileError(C4ghError, ValueError):
    """A key file is unreadable, in an unsupported format, or the passphrase is wrong/missing."""


class BodyError(C4ghError):
    """The encrypted body is corrupt."""


class TamperedSegment(BodyError):
    """Segment ``index`` (0-based) failed authentication: modified, or encrypted under another key."""

    def __init__(self, index: int, message: str | None = None) -> None:
        super().__init__(message or f"crypt4gh segment {index} failed authentication (tampered or corrupt)")
        self.index = index


class TruncatedBody(TamperedSegment):
    """The final segment is cut short (it is also reported as the failing segment ``index``)."""

    def __init__(self, index: int, length: int) -> None:
        super().__init__(index, f"crypt4gh body truncated: final segment {index} has {length} bytes "
                                "and does not authenticate")
        self.length = length
