"""What a worker process does to one received instance: de-identify it, then verify the output against
the original (leak scan, risk check) and read the few header values the catalogue indexes.

Pure: files in, a file and a plain dict out; no web or database imports (sealing uses only crypt4gh
and the object storage), so it runs in a process pool (the DICOM destination, the bulk importer) or on
its own. The returned ``pseudonym_map`` holds original
identifiers and is meant only for the sealed key store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from ..archive.backend import storage_from
from ..archive.sealing import SealedBody, seal_file
from . import dicomindex
from .deid import DeidError, DeidProfile, DeidResult, Pseudonymizer, deidentify, deidentify_file
from .verify import risk_check, scan_read
from .verify.elements import Read, from_pydicom

_pseudonymizers: dict[bytes, Pseudonymizer] = {}  # per process: keeps each key's UID cache warm


def _pseudonymizer(secret: bytes) -> Pseudonymizer:
    p = _pseudonymizers.get(secret)
    if p is None:
        if len(_pseudonymizers) > 64:
            _pseudonymizers.clear()
        p = _pseudonymizers[secret] = Pseudonymizer(secret)
    return p


def worker_init(parent_pid: int, niceness: int = 0, idle: bool = False) -> None:
    """Pool workers die with their parent (on Linux), even when it is killed with SIGKILL — also when
    it dies while this worker is still starting up, before the signal could be asked for. ``niceness``
    lowers their CPU priority (the DICOM destination: acknowledging a sender comes before verifying what
    was already acknowledged); ``idle`` puts them in Linux's SCHED_IDLE class instead (``imaging.pool_priority
    = "idle"``), where any other runnable task preempts them at once."""
    import contextlib
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # orphaned already
        os._exit(1)
    if niceness:
        os.nice(niceness)
    if idle and hasattr(os, "SCHED_IDLE"):  # elsewhere (or refused by a sandbox): the niceness alone
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def deidentify_stage(raw: str, out: str, profile: DeidProfile, secret: bytes) -> dict[str, Any]:
    """De-identify ``raw`` into ``out`` (not fsynced: the caller makes it durable with whatever else it
    writes). Raises ``DeidError`` for what cannot be processed safely."""
    return _summary(deidentify_file(raw, out, profile, _pseudonymizer(secret)))


def _summary(result: DeidResult) -> dict[str, Any]:
    return {
        "sop_instance_uid": result.sop_instance_uid,
        "study_uid": result.study_instance_uid,
        "sop_class_uid": result.sop_class_uid,
        "patient_pseudonym": result.patient_pseudonym,
        "modality": result.modality,
        "pixel_cleaned": result.pixel_cleaned,
        "misses": list(result.misses),
        "action_count": len(result.action_log),
        # which attribute, which rule, what action: never a value, so it may be kept beside the data
        "action_log": [list(entry) for entry in result.action_log],
        "pseudonym_map": [(kind, original, pseudonym)
                          for kind, (original, pseudonym) in result.pseudonym_map.items()],
    }


class _Outcome:  # what ``risk_check`` reads from an engine result
    def __init__(self, summary: dict[str, Any]) -> None:
        self.pixel_cleaned = summary["pixel_cleaned"]
        self.misses = summary["misses"]


def verify_stage(raw: str, out: str, profile: DeidProfile, summary: dict[str, Any]) -> dict[str, Any]:
    """Check the output independently of the engine; the reasons (if any) send it to quarantine. Each
    file is read once: the leak scan's reads (and the output's bytes) serve the risk check, the catalogue
    and the DICOMweb index."""
    return _verify(raw, out, profile, summary)[0]


def _verify(raw: str | bytes, out: str | bytes, profile: DeidProfile, summary: dict[str, Any]
            ) -> tuple[dict[str, Any], bytes | None]:
    """``verify_stage`` of the original and the output, each a path or the file's bytes; and the output's
    bytes that the leak scan read (None if it could not read them)."""
    index: dict[str, Any] | None = None
    scanned_bytes: bytes | None = None
    try:
        scanned = scan_read(raw, out, profile)
    except Exception as exc:  # the scanner could not read it: never release unverified output
        reasons = risk_check(raw, _Outcome(summary))
        reasons.append(f"leak scan failed: {type(exc).__name__}: {exc}")
        try:
            text = from_pydicom(pydicom.dcmread(io.BytesIO(out) if isinstance(out, bytes) else out,
                                                stop_before_pixels=True), b"").text
        except Exception as exc:
            reasons.append(f"the output does not read back: {exc}")
            text = Read(b"", False, False, "").text
    else:
        reasons = risk_check(scanned.original, _Outcome(summary))
        reasons.extend(f"leak: {leak.kind} in {leak.where}" for leak in scanned.leaks)
        if not scanned.output.part10:  # what a plain (not forced) dcmread refuses
            reasons.append("the output does not read back: not a DICOM Part 10 file")
        scanned_bytes = scanned.output.raw
        text = scanned.output.text
        index = dicomindex.index_read(scanned.output)  # the DICOMweb index: QIDO attributes, pixel offsets
    if index is None:  # (the scan failed, or its read does not locate the pixel data)
        try:
            index = dicomindex.index_stream(io.BytesIO(out)) if isinstance(out, bytes) else dicomindex.index_file(out)
        except dicomindex.NotIndexable:
            index = {}  # the back-fill retries; the reasons above already hold the instance back
    return summary | {"index": index} | {
        "reasons": reasons,
        "series_uid": text("SeriesInstanceUID").strip()[:64],
        "body_part": text("BodyPartExamined").strip()[:64].upper(),
        "manufacturer": text("Manufacturer").strip()[:64],
        "study_date": text("StudyDate").strip()[:8],
        "size": len(scanned_bytes) if scanned_bytes is not None else (
            len(out) if isinstance(out, bytes) else os.path.getsize(out)),
    }, scanned_bytes


@dataclass(frozen=True)
class SealTarget:
    """Where a verified output goes: the archive key and storage (workers build the storage themselves)."""

    storage: Any  # config.StorageSettings
    var_dir: Path
    key_fingerprint: str
    public_key: bytes
    project_id: str
    file_id: str


def verify_and_seal(raw: str | bytes, out: str | bytes, profile: DeidProfile, summary: dict[str, Any],
                    target: SealTarget) -> tuple[dict[str, Any], SealedBody]:
    """Verification, then encryption into the archive, both off the receiving process (the destination's
    archiver only writes the rows). The output is sealed whatever the verdict: quarantined instances
    are kept encrypted too, for review. Either file may be given as its path or its bytes."""
    verified, scanned = _verify(raw, out, profile, summary)
    storage = storage_from(target.storage, target.var_dir)
    # What is sealed is exactly the bytes the leak scan read (the file is not read a second time). The
    # body's directory is fsynced by the archiver, once per group, before the rows commit.
    data = scanned if scanned is not None or isinstance(out, str) else out
    sealed = seal_file(target.key_fingerprint, target.public_key, storage, target.project_id, target.file_id,
                       out if isinstance(out, str) else "", data=data, defer_dir_sync=True)
    return verified, sealed


def archive_file_id(secret: bytes, sop_instance_uid: str) -> str:
    """A stable archive id per (project, instance): a retry finds the row instead of doubling it."""
    digest = hmac.new(secret, b"strongroom/archive-file|" + sop_instance_uid.encode(), hashlib.sha256).digest()
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    n = int.from_bytes(digest[:10], "big")
    return "SRF-" + "".join(alphabet[(n >> (5 * i)) & 31] for i in range(16))


def deidentify_verify_and_seal(raw: str, out: str, profile: DeidProfile, secret: bytes, target: SealTarget
                               ) -> tuple[dict[str, Any], SealedBody | None]:
    """All of an object's work after an acknowledgement on receipt (``imaging.acknowledge = "received"``):
    de-identification, then ``verify_and_seal`` into ``target`` (its file id follows from the instance), in
    memory: the de-identified file is written to ``out`` only when it must be held for review.

    An object the engine cannot process comes back as ``({"rejected": reason}, None)``: the sender already
    has its success status, so the reason goes to the import report. A failure after de-identification
    comes back as the summary with a reason to hold the instance (``sealed`` None: sealed by the caller for
    review), as a failed verification does when de-identification ran before the acknowledgement."""
    try:
        original = Path(raw).read_bytes()
        result = deidentify(original, profile, _pseudonymizer(secret))  # in memory: nothing written to the spool
        summary = _summary(result)
    except DeidError as exc:
        rejected = f"not processable DICOM: {exc}"
    except Exception as exc:  # the engine failed on it: refused, never stored as is
        rejected = f"de-identification failed: {type(exc).__name__}"
    else:
        summary["received_size"] = len(original)
        try:
            return verify_and_seal(original, result.data, profile, summary, dataclasses.replace(
                target, file_id=archive_file_id(secret, summary["sop_instance_uid"])))
        except Exception as exc:  # never release what could not be verified: the caller seals ``out`` for review
            _write(out, result.data)
            return summary | {"reasons": [f"verification failed: {type(exc).__name__}"],
                              "size": len(result.data)}, None
    if os.path.exists(out):
        os.unlink(out)
    return {"rejected": rejected}, None


def _write(path: str, data: bytes) -> None:
    """``data`` into ``path``, whole or not at all (written under another name, then renamed)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def process_file(raw: str, out: str, profile: DeidProfile, secret: bytes) -> dict[str, Any]:
    """Both stages (the bulk importer). Errors come back as ``{"error": reason}``, not exceptions."""
    try:
        summary = deidentify_stage(raw, out, profile, secret)
    except DeidError as exc:
        return {"error": f"not processable DICOM: {exc}"}
    except OSError as exc:
        return {"error": f"unreadable: {exc.strerror or exc}"}
    summary["received_size"] = os.path.getsize(raw)
    return verify_stage(raw, out, profile, summary)
