"""Independent verification of de-identified DICOM output, and the risk check that sends objects to review.

``leak_scan`` does not reuse the engine's action logic: it reads both objects with pydicom, collects what
is identifying in the original (person names, IDs, UIDs, dates, institution/device strings, free text of
attributes the profile does not retain, every private value, unknown-VR bytes) and looks for any of it in
the output: in every element (sequences and private blocks included) and byte-wise in the whole file
except the pixel data. It also checks the date option (dates removed, or all moved by one non-zero
whole-day offset), the markers, overlays/curves and private blocks. It uses the standard's tables as data
(``deid_table``), not the engine's resolution code.

``risk_check`` lists reasons to quarantine an instance for human review instead of releasing it.

The package: ``elements`` (Leak, Read, loading, the element walker), ``reader`` (the fast read of plain
files), ``leaks`` (``leak_scan`` and its checks), ``identity`` (``identity_scan``, ``national_ids``) and
``risk`` (``risk_check``).
"""

from __future__ import annotations

from ...identifiers import national_ids
from .elements import Leak
from .identity import identity_scan
from .leaks import LEAK_CHECKS, ScanRead, leak_scan, scan_read
from .risk import risk_check

__all__ = [
    "LEAK_CHECKS",
    "Leak",
    "ScanRead",
    "identity_scan",
    "leak_scan",
    "national_ids",
    "risk_check",
    "scan_read",
]
