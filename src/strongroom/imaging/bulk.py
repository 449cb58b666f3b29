"""Bulk import: a folder or ZIP of DICOM files through the same pipeline as the DICOM destination
(de-identify → verify → encrypt into the archive → publish), in parallel worker processes.

Interrupted runs are resumed by running again: instances already imported are recognised by their
pseudonymized SOP Instance UID and counted as duplicates.

Hospital exports are often named by patient (``Tolvansson_Tolvan_19121212-1212/``), so no folder, file or
ZIP member name is kept: the batch says what kind of source it was and how many files it held, and a
rejected file is named by its position ("file 17 of 240", in the order the import reads them: sorted
paths, or the ZIP's own order). The names are only in the report the operator's terminal prints
(``ImportReport.rejected_files``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ..archive.backend import storage_for
from ..errors import Invalid, NotFound
from ..hub import Hub
from ..paths import private_dir
from ..projects.models import Project
from . import pipeline, service

MAX_MEMBER_BYTES = 8 * 1024**3  # a ZIP member larger than this is refused (zip bombs)
_SKIP_NAMES = {"DICOMDIR", "Thumbs.db", "desktop.ini"}
NOT_DICOM = "not a DICOM file"
_DICM_OFFSET = 128
# explicit VR codes a bare dataset (no preamble) may start with
_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
        b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
        b"UR", b"US", b"UT", b"UV"}
_SNIFF_BYTES = 1024  # the preamble, and the file meta of a DICOMDIR under another name
_DICOMDIR_CLASS = re.compile(rb"1\.2\.840\.10008\.1\.3\.10(?![0-9.])")


def skipped_by_name(name: str) -> bool:
    """Files that are never instances: DICOMDIR, hidden files and folders (.DS_Store, ._x, .git/...),
    macOS resource forks in ZIPs, desktop clutter."""
    parts = Path(name).parts
    return bool(parts) and (parts[-1] in _SKIP_NAMES or any(p.startswith(".") or p == "__MACOSX" for p in parts))


def looks_like_dicom(head: bytes, size: int) -> bool:
    """A Part 10 file (``DICM`` after the preamble) or a bare dataset whose first element is plausible
    (an even group from 0002 to 7FE0 with an explicit VR, or an implicit length that fits the file).
    Anything else (JSON, text, images, empty files) is not an instance and is skipped, not rejected."""
    if head[_DICM_OFFSET:_DICM_OFFSET + 4] == b"DICM":
        return not _DICOMDIR_CLASS.search(head)  # a media directory, not an instance
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    if group % 2 or not 0x0002 <= group <= 0x7FE0:
        return False
    if head[4:6] in _VRS:
        return True
    return int.from_bytes(head[4:8], "little") <= size - 8  # implicit VR: the first length fits the file


@dataclass
class ImportReport:
    batch_id: str
    received: int = 0
    archived: int = 0
    quarantined: int = 0
    rejected: int = 0
    duplicates: int = 0
    skipped: int = 0  # files that are not DICOM instances (not counted as received)
    reasons: Counter[str] = field(default_factory=Counter)
    published_version: int | None = None
    # (position, name as given, reason) of each rejected file: for the operator's terminal only, never stored
    rejected_files: list[tuple[int, str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "received": self.received, "archived": self.archived,
                "quarantined": self.quarantined, "rejected": self.rejected, "duplicates": self.duplicates,
                "skipped": self.skipped,
                "reasons": dict(self.reasons.most_common()), "published_version": self.published_version}


@dataclass
class _Source:
    position: int  # 1-based, in the order the import reads them (what the batch's reasons name)
    name: str  # for the operator's terminal only (relative path, or zip:member): never stored
    path: Path  # a file the worker can read
    temporary: bool = False
    skip: str = ""  # why this file is not imported (then it is only reported)


def count_sources(path: Path) -> int:
    """Files that will be looked at (skipped ones included: they are reported too)."""
    if zipfile.is_zipfile(path) and path.is_file():
        with zipfile.ZipFile(path) as zf:
            return sum(1 for i in zf.infolist() if not i.is_dir())
    if path.is_file():
        return 1
    return sum(1 for p in path.rglob("*") if p.is_file())


def _sniff(path: Path) -> bool:
    with open(path, "rb") as f:
        return looks_like_dicom(f.read(_SNIFF_BYTES), os.fstat(f.fileno()).st_size)


def source_kind(path: Path) -> str:
    """What the batch's reasons call one of its files (a ZIP member, or a file)."""
    return "ZIP member" if path.is_file() and zipfile.is_zipfile(path) else "file"


def describe(path: Path, total: int) -> str:
    """The batch's origin: the kind of source and its size, never its name (it may name the patient)."""
    if source_kind(path) == "ZIP member":
        return f"a ZIP file ({total} members)"
    return "a single file" if path.is_file() else f"a folder ({total} files)"


def _sources(path: Path, scratch: Path) -> Iterator[_Source]:
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = (info for info in zf.infolist() if not info.is_dir())
            for n, info in enumerate(members, 1):
                name = f"{path.name}:{info.filename}"
                if skipped_by_name(info.filename):
                    yield _Source(n, name, path, skip=NOT_DICOM)
                    continue
                if info.file_size > MAX_MEMBER_BYTES:
                    yield _Source(n, name, Path("/nonexistent/too-large"))
                    continue
                with zf.open(info) as member:
                    if not looks_like_dicom(member.read(_SNIFF_BYTES), info.file_size):
                        yield _Source(n, name, path, skip=NOT_DICOM)
                        continue
                target = scratch / f"{uuid.uuid4().hex}.raw"
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                yield _Source(n, name, target, temporary=True)
    elif path.is_file():
        yield _Source(1, path.name, path, skip="" if _sniff(path) else NOT_DICOM)
    else:
        files = (p for p in sorted(path.rglob("*")) if p.is_file())
        for n, p in enumerate(files, 1):
            name = str(p.relative_to(path))
            yield _Source(n, name, p, skip=NOT_DICOM if skipped_by_name(name) or not _sniff(p) else "")


@contextmanager
def _scratch(hub: Hub) -> Iterator[Path]:
    base = hub.settings.imaging.spool_dir or hub.settings.var_dir / "dicom-spool"
    private_dir(base)
    d = Path(tempfile.mkdtemp(prefix="bulk-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def project_by_slug(hub: Hub, slug: str) -> uuid.UUID:
    with hub.sessions() as session:
        project_id = session.scalar(select(Project.id).where(Project.slug == slug))
    if project_id is None:
        raise NotFound(f"no project {slug!r}")
    return project_id


def run_import(hub: Hub, project_id: uuid.UUID, path: Path, *, workers: int = 0, publish: bool = True,
               progress: Callable[[int, str], None] | None = None) -> ImportReport:
    """Import every file under ``path`` (a folder, a ZIP or one file). ``progress(n, outcome)`` is
    called as files finish."""
    if not path.exists():
        raise Invalid(f"{path} does not exist")  # (to the operator who typed it)
    ctx = service.load_context(hub, project_id)
    storage = storage_for(hub)
    total, kind = count_sources(path), source_kind(path)
    report = ImportReport(service.open_batch(hub, project_id, source="bulk", origin=describe(path, total)))
    n = workers or hub.settings.imaging.workers or os.cpu_count() or 1
    pending: list[service.Processed] = []

    def flush() -> None:
        outcomes = service.archive_processed(hub, storage, ctx, pending)
        for item, outcome in zip(pending, outcomes, strict=True):
            Path(item.out_path).unlink(missing_ok=True)
            counter = "duplicates" if outcome == "duplicate" else outcome
            setattr(report, counter, getattr(report, counter) + 1)
            if outcome == "quarantined":
                report.reasons.update(item.summary["reasons"])
            if progress:
                progress(1, outcome)
        pending.clear()

    with _scratch(hub) as scratch, ProcessPoolExecutor(n, mp_context=get_context("spawn"),
                                                     initializer=pipeline.worker_init,
                                                     initargs=(os.getpid(),)) as pool:
        in_flight: dict[Future[dict[str, Any]], tuple[_Source, Path]] = {}

        def collect(block: bool) -> None:
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED, timeout=None if block else 0)
            for fut in done:
                source, out = in_flight.pop(fut)
                if source.temporary:
                    source.path.unlink(missing_ok=True)
                report.received += 1
                try:
                    result = fut.result()
                except Exception as exc:  # a worker crashed on this file
                    result = {"error": f"processing failed: {type(exc).__name__}"}
                if "error" in result:
                    out.unlink(missing_ok=True)
                    report.rejected += 1
                    reason = service.safe_reason(result["error"])
                    report.reasons[reason[:120]] += 1
                    report.rejected_files.append((source.position, source.name, reason))
                    service.record_rejected(hub, report.batch_id, f"{kind} {source.position} of {total}: {reason}")
                    if progress:
                        progress(1, "rejected")
                    continue
                pending.append(service.Processed(report.batch_id, str(out), result))
                if len(pending) >= 64:
                    flush()

        for source in _sources(path, scratch):
            if source.skip:
                report.skipped += 1
                report.reasons[source.skip] += 1
                if progress:
                    progress(1, "skipped")
                continue
            out = scratch / f"{uuid.uuid4().hex}.dcm"
            in_flight[pool.submit(pipeline.process_file, str(source.path), str(out), ctx.profile, ctx.secret)] = (
                source, out)
            while len(in_flight) >= 2 * n:
                collect(block=True)
        while in_flight:
            collect(block=True)
        flush()
    service.close_batch(hub, report.batch_id)
    if publish:
        report.published_version = service.publish_pending(hub, project_id)
    return report
