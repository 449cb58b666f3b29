"""``risk_check``: reasons to quarantine an instance for human review instead of releasing it."""

from __future__ import annotations

import io
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from .elements import Read

US_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6.2", "1.2.840.10008.5.1.4.1.1.6.3",
                  "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3"}
SC_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # .7, .7.1 .. .7.4
ENCAPSULATED_DOC_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
# modalities whose pixels routinely carry burned-in text (screens, scanned film, photos, video, etc.)
RISKY_MODALITIES = {"US", "IVUS", "OT", "SC", "XC", "ES", "GM", "SM", "DOC", "XA", "RF", "CR", "DX", "MG", "IO",
                    "PX", "OP", "OPT", "ECG", "HD", "VIDEO", "TG"}


def risk_check(dataset: Any, result: Any = None) -> list[str]:
    """Reasons to quarantine this instance for human review (empty: may be released automatically).

    ``dataset`` is the received (original) instance: bytes, a path, a ``Dataset`` or the leak scan's
    ``Read`` of it; ``result`` the engine's ``DeidResult`` for it, whose rule misses are reasons too."""
    if isinstance(dataset, Read):
        text = dataset.text
    else:
        ds = dataset if isinstance(dataset, Dataset) else pydicom.dcmread(
            io.BytesIO(bytes(dataset)) if isinstance(dataset, bytes | bytearray | memoryview) else dataset,
            force=True, stop_before_pixels=True)

        def text(keyword: str) -> str:
            return str(ds.get(keyword, "") or "")
    modality = text("Modality").upper()
    sop_class = text("SOPClassUID")
    burned = text("BurnedInAnnotation").upper()
    reasons: list[str] = []
    pixel_cleaned = bool(getattr(result, "pixel_cleaned", False))
    if modality in ("US", "IVUS") or sop_class in US_SOP_CLASSES:
        reasons.append("ultrasound: text is routinely burned into the pixels")
    if sop_class.startswith(SC_SOP_PREFIX):
        reasons.append("secondary capture: screenshots and scanned documents may show identifying text")
    if sop_class.startswith(ENCAPSULATED_DOC_PREFIX):
        reasons.append("encapsulated document: the embedded document is not de-identified")
    if not pixel_cleaned:
        if burned == "YES":
            reasons.append("Burned In Annotation is YES and no pixel rule cleaned the image")
        elif not burned and (modality in RISKY_MODALITIES or sop_class.startswith(SC_SOP_PREFIX)):
            reasons.append(f"Burned In Annotation missing on a {modality or 'secondary capture'} object, "
                           "a modality that often burns in text")
    if text("RecognizableVisualFeatures").upper() == "YES":
        reasons.append("Recognizable Visual Features is YES")
    for miss in getattr(result, "misses", None) or []:
        reasons.append(f"rule miss: {miss}")
    return reasons
