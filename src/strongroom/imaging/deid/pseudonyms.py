"""Keyed, deterministic pseudonyms of one project (patient IDs, UIDs, date shifts, tokens).

A project's key names its **pseudonym scheme**: how a patient ID becomes the input of the patient's pseudonym
and date shift. ``AS_RECEIVED`` (1) takes the ID as received; ``CANONICAL`` (2) takes
``patient_ids.canonical_patient_key`` of it, so a personnummer written ``850101-1236`` and ``198501011236``
is one patient. A bare secret is scheme 1 — every key made before schemes existed, and every key file — so
no pseudonym already given changes; ``scheme_key`` puts a one-line header naming scheme 2 (and the date that
values carrying none are read against) in front of the secret. The key travels as those bytes wherever the
secret travelled (the import pipeline's worker processes, the strategies), and every ``Pseudonymizer``
built from it keys patients the same way.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os

from ...patient_ids import canonical_patient_key

WELL_KNOWN_UID_PREFIX = "1.2.840.10008."
_MEMO_MAX = 200_000  # entries per memo before it is emptied

# the labels of the keys derived from a project secret besides tokens: never a token's kind
RESERVED_KINDS = frozenset({"fingerprint", "patient", "uid", "dateshift"})

AS_RECEIVED = 1  # patients keyed by their ID as received
CANONICAL = 2  # patients keyed by canonical_patient_key: one key per personnummer, however written
_SCHEME_HEADER = b"strongroom/pseudonym-scheme;"


def scheme_key(secret: bytes, scheme: int, undated_reference: dt.date) -> bytes:
    """A project's key as the engines take it: ``secret`` under ``scheme``. ``undated_reference``: the date
    a 10-digit personnummer that comes without one (a table's) is read against; it must never change, or
    neither would that patient's key (``canonical_patient_key``)."""
    if scheme == AS_RECEIVED:
        return bytes(secret)
    if scheme != CANONICAL:
        raise ValueError(f"unknown pseudonym scheme {scheme}")
    return _SCHEME_HEADER + f"scheme={scheme};undated={undated_reference.isoformat()}\n".encode() + secret


def _parse_key(key: bytes) -> tuple[bytes, int, dt.date | None]:
    """(secret, scheme, undated reference) of a key made by ``scheme_key`` or a bare secret."""
    if not key.startswith(_SCHEME_HEADER):
        return bytes(key), AS_RECEIVED, None
    header, _, secret = bytes(key[len(_SCHEME_HEADER):]).partition(b"\n")
    try:
        fields = dict(part.split("=", 1) for part in header.decode("ascii").split(";"))
        scheme, undated = int(fields["scheme"]), dt.date.fromisoformat(fields["undated"])
    except (UnicodeDecodeError, ValueError, KeyError):
        raise ValueError("the pseudonymization key's scheme header is not readable") from None
    if scheme != CANONICAL:
        raise ValueError(f"unknown pseudonym scheme {scheme}")
    return secret, scheme, undated


class Pseudonymizer:
    """Keyed, deterministic replacements for one project: same secret + same input => same output, on
    any host or process. HMAC-SHA256 with a label per use; never an unsalted hash."""

    def __init__(self, secret: bytes, *, prefix: str = "", max_shift_days: int = 3650) -> None:
        if isinstance(secret, bytes | bytearray):
            secret, self.scheme, self.undated_reference = _parse_key(secret)
        if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
            raise ValueError("the pseudonymization secret must be at least 16 bytes")
        if not 1 <= max_shift_days <= 36500:
            raise ValueError("max_shift_days must be within 1..36500")
        if len(prefix) > 40 or any(c in prefix for c in "\\^="):
            raise ValueError("prefix too long or contains DICOM delimiters")
        self._secret = bytes(secret)
        self.prefix = prefix
        self.max_shift_days = max_shift_days
        # memos (a series repeats its patient, study, series and frame of reference in every instance)
        self._uid_cache: dict[str, str] = {}
        self._uids_cache: dict[bytes, bytes] = {}
        self._patient_cache: dict[str, str] = {}
        self._key_cache: dict[tuple[str, dt.date | None], str] = {}

    @classmethod
    def generate_secret(cls) -> bytes:
        return os.urandom(32)

    def __repr__(self) -> str:
        return f"Pseudonymizer(fingerprint={self.fingerprint!r}, prefix={self.prefix!r}, scheme={self.scheme})"

    def _mac(self, label: bytes, value: str) -> bytes:
        return hmac.new(self._secret, label + b"\x00" + value.encode("utf-8"), hashlib.sha256).digest()

    @property
    def fingerprint(self) -> str:
        """Identifies the key (for audit/versioning) without revealing it."""
        return self._mac(b"strongroom/fingerprint", "").hex()[:16]

    def patient_key(self, patient_id: str, written_on: dt.date | None = None) -> str:
        """What this project keys a patient's pseudonym and date shift by: under ``AS_RECEIVED`` the ID
        itself; under ``CANONICAL`` its canonical key, a 10-digit personnummer read against ``written_on``
        (when the value was written: a DICOM object's study date) or, without it, the key's own reference
        date. Pass every patient ID through here before ``patient_pseudonym`` and ``date_shift_days``."""
        if self.scheme == AS_RECEIVED:
            return patient_id
        memo = (patient_id, written_on)
        key = self._key_cache.get(memo)
        if key is None:
            key = canonical_patient_key(patient_id, written_on or self.undated_reference)
            if len(self._key_cache) > _MEMO_MAX:
                self._key_cache.clear()
            self._key_cache[memo] = key
        return key

    def patient_pseudonym(self, patient_key: str) -> str:
        token = self._patient_cache.get(patient_key)
        if token is None:
            token = base64.b32encode(self._mac(b"strongroom/patient", patient_key)).decode("ascii")[:20]
            if len(self._patient_cache) > _MEMO_MAX:
                self._patient_cache.clear()
            self._patient_cache[patient_key] = token
        return self.prefix + token

    def uid(self, uid: str) -> str:
        """``2.25.<int>`` of a version-8 UUID built from the HMAC (122 keyed bits)."""
        cached = self._uid_cache.get(uid)
        if cached is not None:
            return cached
        b = bytearray(self._mac(b"strongroom/uid", uid)[:16])
        b[6] = (b[6] & 0x0F) | 0x80  # version 8
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        new = "2.25." + str(int.from_bytes(b, "big"))
        if len(self._uid_cache) > _MEMO_MAX:
            self._uid_cache.clear()
        self._uid_cache[uid] = new
        return new

    def uid_value(self, raw: bytes) -> bytes:
        """A UI element's value (backslash-separated UIDs, padded) with every UID replaced by ``uid``, except
        the well-known ones (``1.2.840.10008.``) and empty values; padded to even length."""
        cached = self._uids_cache.get(raw)
        if cached is not None:
            return cached
        values = raw.decode("ascii", "replace").rstrip("\0 ").split("\\")
        uid = self.uid
        out = [v if not v or v.startswith(WELL_KNOWN_UID_PREFIX) else uid(v.strip()) for v in values]
        new = "\\".join(out).encode("ascii")
        if len(new) & 1:
            new += b"\0"
        if len(self._uids_cache) > _MEMO_MAX:
            self._uids_cache.clear()
        self._uids_cache[raw] = new
        return new

    def date_shift_days(self, patient_key: str) -> int:
        """Whole days to add to every date of this patient: within -max_shift_days..-1."""
        n = int.from_bytes(self._mac(b"strongroom/dateshift", patient_key)[:8], "big")
        return -(1 + n % self.max_shift_days)

    def token(self, kind: str, value: str, length: int = 14) -> str:
        """A keyed opaque token for other identifiers (e.g. AE titles under Retain Device Identity). A kind named
        like one of the keys derived above would hand out that key: ``token("dateshift", id)`` carries the
        person's date shift, which undoes it (``RESERVED_KINDS``)."""
        if kind in RESERVED_KINDS:
            raise ValueError(f"pseudonym kind {kind!r} is reserved (it names a key the de-identification derives)")
        return base64.b32encode(self._mac(b"strongroom/" + kind.encode(), value)).decode("ascii")[:length]
