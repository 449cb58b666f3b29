"""The engine's entry points: bytes, paths, Datasets and files in; a Part 10 file out."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import mmap
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.charset import convert_encodings

from . import pixels
from .encoding import (
    BE,
    DEFLATED_LE,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    LE,
    VALID_VRS,
    detect_encoding,
    encode_element,
    pad,
    parse,
    read_meta,
)
from .plan import NORMAL, PATIENT_ID_TAG, PATIENT_NAME_TAG, PIXEL_DATA_TAG, compiled_plan
from .profile import DeidProfile
from .pseudonyms import Pseudonymizer
from .result import DeidError, DeidResult, LogEntry
from .run import Run

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


IMPLEMENTATION_CLASS_UID = "2.25.227926385014318662186221414929226069224"
IMPLEMENTATION_VERSION_NAME = "STRONGROOM_DEID1"

# Inputs at least this large are memory-mapped, smaller ones read with one call. Reading a 0.5 MB CT into a
# new bytes object adds an allocation and a copy per file and was not measurably faster than mapping it.
_MMAP_MIN = 256 * 1024
_IOV_MAX = 1024  # chunks per writev call (the POSIX minimum of IOV_MAX on Linux)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
_SIMPLE_CODECS = {"iso8859": "latin_1", "latin_1": "latin_1", "UTF8": "utf-8"}
_WRITTEN_ON = (0x00080020, 0x00080021, 0x00080022, 0x00080023)  # Study, Series, Acquisition, Content Date


def _written_on(value: Callable[[int], str]) -> dt.date | None:
    """When the object's patient ID was written, as near as the object says: its first real Study, Series,
    Acquisition or Content Date (a 10-digit personnummer's century is read against it)."""
    for tag in _WRITTEN_ON:
        da = value(tag).replace(".", "")  # (ACR-NEMA wrote YYYY.MM.DD)
        if len(da) == 8 and da.isascii() and da.isdigit():
            with contextlib.suppress(ValueError):
                return dt.date(int(da[:4]), int(da[4:6]), int(da[6:]))
    return None


def _meta_bytes(sop_class: str, sop_instance: str, ts: str) -> bytes:
    def el(tag: int, vr: bytes, value: bytes) -> bytes:
        return encode_element(tag, vr, pad(value, vr), LE, True)

    body = (el(0x00020001, b"OB", b"\x00\x01") + el(0x00020002, b"UI", sop_class.encode())
            + el(0x00020003, b"UI", sop_instance.encode()) + el(0x00020010, b"UI", ts.encode())
            + el(0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode())
            + el(0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode()))
    return b"\0" * 128 + b"DICM" + encode_element(0x00020000, b"UL", struct.pack("<I", len(body)), LE, True) + body


def _deidentify_bytes(data: bytes, profile: DeidProfile, pseudo: Pseudonymizer) -> DeidResult:
    result, chunks = _deidentify_buffer(data, profile, pseudo)
    result.data = b"".join(chunks)
    return result


def _deidentify_buffer(buf: Any, profile: DeidProfile, pseudo: Pseudonymizer) -> tuple[DeidResult, list[Any]]:
    """The engine on any buffer (bytes or an mmap): the result (without data) and the output chunks,
    which may be views into ``buf`` (the kept regions, e.g. pixel data, are never copied here)."""
    plan = compiled_plan(profile)
    pos, meta, ts = read_meta(buf)
    if ts is None:
        codec, explicit = detect_encoding(buf, pos)
        ts = (EXPLICIT_LE if explicit else IMPLICIT_LE) if codec.little else EXPLICIT_BE
    elif ts == IMPLICIT_LE:
        codec, explicit = LE, False
    elif ts == EXPLICIT_BE:
        codec, explicit = BE, True
    elif ts == DEFLATED_LE:
        try:
            buf = zlib.decompress(buf[pos:], -15)
        except zlib.error as exc:
            raise DeidError(f"deflated dataset does not inflate: {exc}") from None
        # written out inflated, as Explicit VR Little Endian (lossless, and every receiver reads it): a
        # compressed output would hide its values from every byte-level check after the engine
        pos, codec, explicit, ts = 0, LE, True, EXPLICIT_LE
    else:
        codec, explicit = LE, True
    if explicit and codec.little and len(buf) >= pos + 8 and buf[pos + 4:pos + 6] not in VALID_VRS:
        # the meta says explicit VR but the dataset is implicit (as pydicom, accept it; fix the syntax UID
        # when the transfer syntax is a native one)
        explicit = False
        if ts == EXPLICIT_LE:
            ts = IMPLICIT_LE
    elems, _ = parse(buf, pos, len(buf), codec, explicit)
    idx = {el[0]: el for el in elems}

    def value(tag: int) -> str:
        el = idx.get(tag)
        return bytes(buf[el[3]:el[4]]).decode("latin_1").strip("\0 ") if el and not el[5] else ""

    sop_class = value(0x00080016) or meta.get(0x00020002, b"").decode("ascii", "replace").strip("\0 ")
    if 0x00041220 in idx or sop_class == _DICOMDIR or _DICOMDIR.encode() in meta.get(0x00020002, b""):
        raise DeidError("a DICOMDIR (Media Storage Directory) is not an instance to de-identify")
    if not elems or max(idx) >> 16 < 0x0008 or not any(t & 0xFFFF for t in idx if t >> 16 >= 0x0008):
        raise DeidError("no data elements: not a DICOM dataset")
    run = Run(plan, pseudo, buf)
    charset = value(0x00080005)
    if charset:
        run.encodings = convert_encodings([c.strip() for c in charset.split("\\")])
        run.simple_codec = _SIMPLE_CODECS.get(run.encodings[0]) if len(run.encodings) == 1 else None

    def text(tag: int) -> str:
        el = idx.get(tag)
        return run.text(run.mv[el[3]:el[4]], b"PN" if tag == PATIENT_NAME_TAG else b"LO") if el and not el[5] else ""

    sop_instance = value(0x00080018) or meta.get(0x00020003, b"").decode("ascii", "replace").strip("\0 ")
    study_uid = value(0x0020000D)
    patient_id, patient_name = text(PATIENT_ID_TAG), text(PATIENT_NAME_TAG)
    patient_key = pseudo.patient_key(patient_id, _written_on(value)) if patient_id else ""
    if not patient_key:  # (an ID of padding only is none)
        patient_key = f"name:{patient_name}|{value(0x00100030)}" if patient_name else f"study:{study_uid}"
    run.pseudonym = pseudo.patient_pseudonym(patient_key)
    if plan.date_mode == "modified":
        run.shift = pseudo.date_shift_days(patient_key)
    if profile.clean_descriptors or profile.clean_structured_content or profile.clean_graphics \
            or profile.retain_patient_characteristics or profile.text_allow_list:
        run.identifiers = [run.text(run.mv[idx[t][3]:idx[t][4]], b"PN") for t in plan.identifier_tags
                           if t in idx and not idx[t][5]]
    new_sop = sop_instance if plan.retain_uids or not sop_instance else pseudo.uid(sop_instance)
    new_study = study_uid if plan.retain_uids or not study_uid else pseudo.uid(study_uid)

    # pixel rules
    pixel_cleaned = False
    extra_inserts: list[tuple[int, bytes]] = []
    pixel_el = idx.get(PIXEL_DATA_TAG)
    rule = pixels.matching_rule(profile.pixel_rules, run.mv, idx, codec, value(0x00080070), value(0x00081090),
                                value(0x00080060)) if profile.pixel_rules and pixel_el is not None else None
    if rule is not None and pixel_el is not None:
        cleaned = pixels.blank(run.mv, pixel_el, idx, codec, rule, run.misses)
        if cleaned is not None:
            vr = (pixel_el[1] if explicit else None) or b"OW"
            extra_inserts.append((PIXEL_DATA_TAG, encode_element(PIXEL_DATA_TAG, vr, cleaned, codec, explicit)))
            run.log.append(LogEntry("(7FE0,0010)", "PixelData", f"pixel rule {rule.name!r}", "C"))
            pixel_cleaned = True
    inserts = sorted(plan.markers(codec, explicit, pixel_cleaned) + extra_inserts)
    out: list[Any] = []
    run.emit(elems, codec, explicit, NORMAL, "", out, inserts)
    out.insert(0, _meta_bytes(sop_class, new_sop, ts))
    pmap = {"PatientID": (patient_key, run.pseudonym)}
    if not plan.retain_uids:
        pmap["StudyInstanceUID"] = (study_uid, new_study)
        pmap["SOPInstanceUID"] = (sop_instance, new_sop)
    result = DeidResult(
        data=None, action_log=run.log, sop_instance_uid=new_sop, study_instance_uid=new_study,
        patient_pseudonym=run.pseudonym, date_shift_days=run.shift, pixel_cleaned=pixel_cleaned,
        misses=run.misses, transfer_syntax=ts, modality=value(0x00080060), sop_class_uid=sop_class,
        pseudonym_map=pmap,
    )
    del run.mv, run.buf  # only the chunks keep views into the input
    return result, out


def _dataset_bytes(ds: Dataset) -> bytes:
    from pydicom import dcmwrite

    buf = io.BytesIO()
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        dcmwrite(buf, ds, enforce_file_format=False)
    else:
        dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def deidentify(data: Any, profile: DeidProfile, pseudonymizer: Pseudonymizer) -> DeidResult:
    """De-identify one instance: ``bytes`` (Part 10 file or bare dataset), a path, or a pydicom ``Dataset``.

    Returns the same kind (bytes for bytes/paths, a ``Dataset`` for a ``Dataset``). Raises ``DeidError``
    for objects that cannot be processed safely (malformed, truncated, DICOMDIR)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return _deidentify_bytes(bytes(data), profile, pseudonymizer)
    if isinstance(data, str | os.PathLike):
        return _deidentify_bytes(Path(data).read_bytes(), profile, pseudonymizer)
    from pydicom import dcmread
    from pydicom.dataset import Dataset

    if isinstance(data, Dataset):
        result = _deidentify_bytes(_dataset_bytes(data), profile, pseudonymizer)
        result.data = dcmread(io.BytesIO(result.data))
        return result
    raise TypeError(f"cannot de-identify a {type(data).__name__}")


def _write_all(fd: int, chunks: list[Any]) -> None:
    """All ``chunks`` to ``fd``: one ``writev`` call per ``_IOV_MAX`` chunks (a short write is continued)."""
    for i in range(0, len(chunks), _IOV_MAX):
        batch = chunks[i:i + _IOV_MAX]
        left = sum(len(c) for c in batch)
        while left:
            n = os.writev(fd, batch)
            left -= n
            if left:  # a short write: drop what went out, continue with the rest
                while n >= len(batch[0]):
                    n -= len(batch[0])
                    batch = batch[1:]
                batch = [memoryview(batch[0])[n:], *batch[1:]]


def deidentify_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], profile: DeidProfile,
                    pseudonymizer: Pseudonymizer) -> DeidResult:
    """De-identify the file ``src`` into ``dst``: written to a temporary name, then renamed.

    The input is memory-mapped (read with one call when small) and the output written with one ``writev``
    call: kept regions (pixel data) go from the mapping straight to the output file, never copied through
    Python objects. ``result.data`` is ``None`` (the output is on disk)."""
    fd = os.open(src, os.O_RDONLY | _O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size >= _MMAP_MIN:
            buf: Any = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        else:
            buf = os.read(fd, size + 1)  # one call for a regular file (+ 1: sees the end of the file)
            if len(buf) != size:  # a short read or a file that grew meanwhile: read on to the end
                buf += _read_rest(fd)
    finally:
        os.close(fd)
    dst = os.fspath(dst)
    head, name = os.path.split(dst)
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    try:
        result, chunks = _deidentify_buffer(buf, profile, pseudonymizer)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o666)
        try:
            _write_all(out, chunks)
        finally:
            os.close(out)
        del chunks
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        if isinstance(buf, mmap.mmap):
            with contextlib.suppress(BufferError):  # a view still alive (a traceback): the GC closes it
                buf.close()
    return result


def _read_rest(fd: int) -> bytes:
    parts = []
    while block := os.read(fd, 1 << 20):
        parts.append(block)
    return b"".join(parts)
