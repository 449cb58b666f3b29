"""What the engine returns: the result of one instance, its action log, and the refusal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from strongroom.imaging.deid_table import EDITION


class DeidError(ValueError):
    """The object cannot be de-identified (malformed, truncated, unsupported): refuse it."""



class LogEntry(NamedTuple):
    tag: str  # attribute path, e.g. "(0008,1140)[0].(0008,1155)"
    keyword: str
    rule: str  # e.g. "E.1-1 2024b basic X/Z/D->D", "private: not safe-listed"
    action: str  # X, Z, D, U, K, C, or a marker action


@dataclass
class DeidResult:
    data: Any  # bytes (Part 10 file) for bytes/path input, a pydicom Dataset for Dataset input
    action_log: list[LogEntry]
    sop_instance_uid: str
    study_instance_uid: str
    patient_pseudonym: str
    date_shift_days: int | None  # applied shift (Modified Dates), else None
    pixel_cleaned: bool
    misses: list[str]  # rule misses: reasons to quarantine
    transfer_syntax: str
    modality: str = ""
    sop_class_uid: str = ""
    edition: str = EDITION
    # original -> pseudonym pairs, for the encrypted key store ONLY; holds original identifiers
    pseudonym_map: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)
