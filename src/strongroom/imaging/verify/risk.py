"""``risk_check``: reasons to quarantine an instance for human review instead of releasing it."""

from __future__ import annotations

import io
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from .elements import Read, from_pydicom

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
    read = dataset if isinstance(dataset, Read) else from_pydicom(
        dataset if isinstance(dataset, Dataset) else pydicom.dcmread(
            io.BytesIO(bytes(dataset)) if isinstance(dataset, bytes | bytearray | memoryview) else dataset,
            force=True, stop_before_pixels=True), b"")

    def values(keyword: str) -> set[str]:  # every value, upper case: a second value must not hide the first
        return {v.upper() for v in read.texts(keyword)}
    modalities, sop_classes, burned = values("Modality"), values("SOPClassUID"), values("BurnedInAnnotation")
    reasons: list[str] = []
    pixel_cleaned = bool(getattr(result, "pixel_cleaned", False))
    if modalities & {"US", "IVUS"} or sop_classes & US_SOP_CLASSES:
        reasons.append("ultrasound: text is routinely burned into the pixels")
    secondary = any(c.startswith(SC_SOP_PREFIX) for c in sop_classes)
    if secondary:
        reasons.append("secondary capture: screenshots and scanned documents may show identifying text")
    if any(c.startswith(ENCAPSULATED_DOC_PREFIX) for c in sop_classes):
        reasons.append("encapsulated document: the embedded document is not de-identified")
    if not pixel_cleaned:
        modality = "\\".join(sorted(modalities))
        if "YES" in burned:
            reasons.append("Burned In Annotation is YES and no pixel rule cleaned the image")
        elif burned != {"NO"} and (modalities & RISKY_MODALITIES or secondary):
            state = "missing" if not burned else "neither YES nor NO"
            reasons.append(f"Burned In Annotation {state} on a {modality or 'secondary capture'} object, "
                           "a modality that often burns in text")
    if "YES" in values("RecognizableVisualFeatures"):
        reasons.append("Recognizable Visual Features is YES")
    for miss in getattr(result, "misses", None) or []:
        reasons.append(f"rule miss: {miss}")
    return reasons
