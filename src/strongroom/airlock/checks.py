"""Automatic checks of one plaintext file before a reviewer sees it. Pure: no web or database imports.

For every file: a size limit and type sniffing by magic bytes against the extension. Then by type:
DICOM → ``imaging.verify.identity_scan`` (national identity numbers in any element value); tables
(csv/tsv/xlsx/parquet) → the project's strategy verification when it has one, else the identifier scan of
every cell; ZIP/TAR archives → their members listed (names and sizes; nested archives and identifiers in
member names flagged); text → ``identifiers.spans``. Results name kinds and counts, never the values.
"""

from __future__ import annotations

import codecs
import tarfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..identifiers import spans
from ..strategies.tables import TABLE_SUFFIXES  # one definition of a table for the airlock and releases

TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".md", ".xml", ".html", ".log", ".tex", ".r", ".py", ".sql",
                 ".yaml", ".yml", ".toml", ".ini", ".cfg", ".rmd", ".ipynb")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".gz", ".bz2", ".xz", ".7z")
MAX_LISTED = 200  # archive members shown to reviewers
TEXT_SCAN_BYTES = 64 * 1024 * 1024  # text beyond this is scanned no further (and the check says so)

# (offset, magic, type). Order matters: the first match wins.
_MAGIC: list[tuple[int, bytes, str]] = [
    (128, b"DICM", "dicom"), (0, b"crypt4gh", "crypt4gh"), (0, b"PAR1", "parquet"), (0, b"%PDF", "pdf"),
    (0, b"\x89PNG\r\n\x1a\n", "png"), (0, b"\xff\xd8\xff", "jpeg"), (0, b"GIF8", "gif"),
    (0, b"PK\x03\x04", "zip"), (0, b"PK\x05\x06", "zip"), (0, b"\x1f\x8b", "gzip"), (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"), (0, b"7z\xbc\xaf\x27\x1c", "7z"), (257, b"ustar", "tar"),
    (0, b"SQLite format 3\x00", "sqlite"), (0, b"\x7fELF", "executable"), (0, b"MZ", "executable"),
    (0, b"\xcf\xfa\xed\xfe", "executable"), (0, b"\xca\xfe\xba\xbe", "executable"),
]
# extension → the content types it may hold
_EXPECTED: dict[str, tuple[str, ...]] = {
    ".dcm": ("dicom",), ".dicom": ("dicom",), ".parquet": ("parquet",), ".pdf": ("pdf",), ".png": ("png",),
    ".jpg": ("jpeg",), ".jpeg": ("jpeg",), ".gif": ("gif",), ".zip": ("zip",), ".xlsx": ("zip",),
    ".docx": ("zip",), ".pptx": ("zip",), ".gz": ("gzip",), ".tgz": ("gzip",), ".bz2": ("bzip2",),
    ".xz": ("xz",), ".7z": ("7z",), ".tar": ("tar",), ".c4gh": ("crypt4gh",), ".sqlite": ("sqlite",),
    ".db": ("sqlite",), **{s: ("text",) for s in TEXT_SUFFIXES},
}
_ARCHIVE_TYPES = ("zip", "tar", "gzip", "bzip2", "xz", "7z")


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    items: list[dict[str, Any]] | None = None  # e.g. archive members (name, size)


@dataclass
class FileReport:
    content_type: str
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_json(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in asdict(c).items() if v is not None} for c in self.checks]


def suffix_of(name: str) -> str:
    lower = name.lower()
    return ".tar.gz" if lower.endswith(".tar.gz") else Path(lower).suffix


def sniff(path: Path) -> str:
    """The content type by magic bytes; ``text`` for UTF-8 / Windows-1252 text without NUL bytes."""
    with path.open("rb") as f:
        head = f.read(4096)
    for offset, magic, kind in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return kind
    if not head:
        return "empty"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError as exc:
            if exc.start >= len(head) - 4:  # a character cut by the 4 KiB window
                return "text"
            try:
                head.decode("cp1252")
                return "text"
            except UnicodeDecodeError:
                pass
    return "binary"


def _type_check(name: str, kind: str) -> Check:
    suffix = suffix_of(name)
    if kind == "executable":
        return Check("file type", False, "the file is an executable program")
    if kind == "crypt4gh":
        return Check("file type", False, "the file is itself encrypted: reviewers cannot see what it holds")
    expected = _EXPECTED.get(".gz" if suffix == ".tar.gz" else suffix)
    if expected is None:
        return Check("file type", kind != "binary",
                     f"content is {kind}" + (" of an unknown kind for this extension" if kind == "binary" else ""))
    if kind == "empty" or kind in expected:
        return Check("file type", True, f"{suffix} holds {kind}")
    return Check("file type", False, f"the extension {suffix} says {'/'.join(expected)} but the content is {kind}")


def _identifier_summary(found: list[tuple[int, int, str]]) -> str:
    counts: dict[str, int] = {}
    for _, _, kind in found:
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def scan_text(path: Path) -> Check:
    """``identifiers.spans`` over the text (UTF-8, else Windows-1252), in overlapping windows."""
    found: list[tuple[int, int, str]] = []
    read, tail, truncated = 0, "", False
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            read += len(chunk)
            text = tail + decoder.decode(chunk)
            cut = max(len(text) - 64, 0)  # identifiers straddling the window's end are found in the next one
            found += [h for h in spans(text) if h[0] < cut]
            tail = text[cut:]
            if read >= TEXT_SCAN_BYTES:
                truncated = True
                break
    found += spans(tail + decoder.decode(b"", final=True))
    note = f" (first {TEXT_SCAN_BYTES // 2**20} MiB scanned)" if truncated else ""
    if found:
        return Check("identifiers in text", False, f"found {_identifier_summary(found)}{note}")
    return Check("identifiers in text", True, f"none found{note}")


def scan_dicom(path: Path) -> Check:
    import pydicom
    from pydicom.dataset import Dataset

    from ..imaging.verify import identity_scan

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many kinds for a broken file
        return Check("DICOM identity scan", False, f"cannot be read as DICOM ({type(exc).__name__})")
    # No original to compare with: identity numbers by pattern in every element value (sequences too),
    # plus any non-empty patient name or birth date, which a de-identified export must not carry.
    leaks = [f"{leak.detail} at {leak.where}" for leak in identity_scan(Dataset(), ds,
                                                                      {"retain_institution_identity": True})]
    for keyword in ("PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers"):
        if str(ds.get(keyword, "") or "").strip():
            leaks.append(f"{keyword} is present")
    if leaks:
        return Check("DICOM identity scan", False, "; ".join(leaks[:20]))
    return Check("DICOM identity scan", True, "no identity number or direct identifier found")


def check_table(path: Path, strategy: Any | None) -> Check:
    """The project's strategy verification (``strategies.engine.verify``) when ``strategy`` is given, else
    the identifier scan of every cell."""
    from ..strategies.scan import NameMatcher, scan_identifiers
    from ..strategies.tables import TableError, read_table

    try:
        frame = read_table(path).collect()
    except TableError as exc:
        return Check("table", False, str(exc))
    if strategy is not None:
        from ..strategies.engine import verify

        result = verify(frame, strategy)
        failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.passed]
        holds = f"every rule of '{strategy.name}' holds ({result.rows} rows)"
        return Check("strategy verification", result.passed, "; ".join(failed[:20]) if failed else holds)
    found = scan_identifiers(frame, NameMatcher([]))
    if found:
        return Check("identifiers in cells", False,
                     "; ".join(f"{f['cells']} {f['kind']} cell(s) in {f['column']}" for f in found)
                     + " (the project has no strategy to verify against)")
    return Check("identifiers in cells", True, f"none found in {frame.height} rows (no project strategy)")


def list_archive(path: Path, kind: str) -> Check:
    members: list[dict[str, Any]] = []
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as z:
                members = [{"name": i.filename, "size": i.file_size} for i in z.infolist() if not i.is_dir()]
        elif kind in ("tar", "gzip", "bzip2", "xz"):
            try:
                with tarfile.open(path) as t:
                    members = [{"name": m.name, "size": m.size} for m in t.getmembers() if m.isfile()]
            except tarfile.ReadError:
                if kind == "tar":
                    raise
                return Check("archive contents", True, f"a single {kind}-compressed stream (not an archive)")
        else:
            return Check("archive contents", False, f"{kind} archives cannot be listed: unpack before export")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        return Check("archive contents", False, f"the archive is damaged ({type(exc).__name__})")
    nested = [m["name"] for m in members if suffix_of(m["name"]) in ARCHIVE_SUFFIXES]
    named = [m["name"] for m in members if spans(m["name"])]
    problems = []
    if nested:
        problems.append(f"{len(nested)} nested archive(s) cannot be checked: {', '.join(nested[:5])}")
    if named:
        problems.append(f"{len(named)} member name(s) hold an identifier")
    detail = f"{len(members)} member(s), {sum(m['size'] for m in members)} bytes"
    return Check("archive contents", not problems, "; ".join([detail, *problems]), items=members[:MAX_LISTED])


def check_file(path: Path, name: str, *, max_bytes: int, strategy: Any | None = None) -> FileReport:
    size = path.stat().st_size
    kind = sniff(path)
    checks = [Check("size limit", size <= max_bytes, f"{size} bytes (limit {max_bytes})"),
              _type_check(name, kind)]
    suffix = suffix_of(name)
    if kind == "dicom":
        checks.append(scan_dicom(path))
    elif suffix in TABLE_SUFFIXES and kind in ("text", "zip", "parquet", "empty"):
        checks.append(check_table(path, strategy))
    elif kind in _ARCHIVE_TYPES and suffix not in (".xlsx", ".docx", ".pptx"):
        checks.append(list_archive(path, kind))
    elif kind == "text":
        checks.append(scan_text(path))
    return FileReport(kind, checks)


def preview(path: Path, name: str, *, rows: int = 20, text_bytes: int = 16384) -> dict[str, Any]:
    """What a reviewer sees in-platform: the first rows of a table, or the beginning of a text."""
    kind = sniff(path)
    suffix = suffix_of(name)
    if suffix in TABLE_SUFFIXES:
        from ..strategies.tables import TableError, read_table

        try:
            head = read_table(path).head(rows).collect()
            return {"kind": "table", "columns": head.columns,
                    "rows": [["" if v is None else str(v) for v in row] for row in head.iter_rows()]}
        except TableError:
            pass
    if kind == "text":
        with path.open("rb") as f:
            data = f.read(text_bytes + 1)
        return {"kind": "text", "text": data[:text_bytes].decode("utf-8", errors="replace"),
                "truncated": len(data) > text_bytes}
    if kind == "dicom":
        return {"kind": "dicom", **dicom_image(path)}
    return {"kind": kind}


def dicom_image(path: Path, *, max_side: int = 512) -> dict[str, Any]:
    """A DICOM file as the reviewer's eye needs it: the (first frame's) image as an 8-bit PNG data URI,
    windowed to its own range, with the few attributes that say what it is. Nothing is decoded that the
    installed pixel handlers cannot: then the answer says why instead of showing an image."""
    import base64

    import numpy as np
    import pydicom

    from ..catalog.png import write as write_png

    facts: dict[str, str] = {}
    try:
        ds = pydicom.dcmread(path)
        facts = {k: str(ds.get(k, "")) for k in ("Modality", "SOPClassUID", "Rows", "Columns", "NumberOfFrames")}
        pixels = ds.pixel_array
    except Exception as exc:  # a damaged file, a compressed syntax without its handler, or no pixel data
        return {"attributes": facts, "image": None, "why": f"no image: {type(exc).__name__}"}
    frame = pixels[0] if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4) else pixels
    if frame.ndim == 3:  # colour: the luminance is enough to judge what is shown
        frame = frame[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    step = max(1, -(-max(frame.shape) // max_side))
    frame = frame[::step, ::step].astype(np.float64)
    low, high = float(frame.min()), float(frame.max())
    scaled = ((frame - low) * (255.0 / (high - low)) if high > low else frame * 0).astype(np.uint8)
    png = write_png(scaled.shape[1], scaled.shape[0], [row.tobytes() for row in scaled])
    return {"attributes": facts, "image": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}
