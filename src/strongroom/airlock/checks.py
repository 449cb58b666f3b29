"""Automatic checks of one plaintext file before a reviewer sees it. Pure: no web or database imports.

The rule: a check never says "passed" about content it did not read. What the checks cannot read gets a
check that is not passed and says so (``not_checked``): like a failed check it blocks approval until the PI
overrides it with a reason, and the reviewer sees which file (or member) was not inspected and why.

For every file: a size limit and type sniffing by magic bytes against the extension. Then by type:
DICOM → ``imaging.verify.identity_scan`` (national identity numbers in any element value); tables
(csv/tsv/xlsx/parquet) → the project's strategy verification when it has one, else the identifier scan of
every cell and of the column names, on every sheet of a workbook, and a Parquet file's footer (key-value
metadata, the Arrow schema, statistics); gzip/bzip2/xz streams → decompressed (bounded) and checked as what they
hold; ZIP/TAR archives → every member extracted (bounded) and checked as a file of its own, nested archives to
``MAX_DEPTH``; Office documents (docx/pptx/xlsx) → the text of every XML part; text → ``identifiers.spans`` (NUL
bytes left out, so UTF-16 text is read too), and text that is a table by another name (``lab.txt`` holding CSV)
is verified as a table as well. Not read: PDF, images, databases, 7z, encrypted members, unknown binaries,
and whatever exceeds the bounds. Results name kinds and counts, never the values.
"""

from __future__ import annotations

import base64
import bz2
import codecs
import csv
import gzip
import io
import itertools
import lzma
import re
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Protocol, cast
from xml.etree.ElementTree import Element, ParseError, XMLPullParser

from ..identifiers import spans
from ..strategies.tables import TABLE_SUFFIXES  # one definition of a table for the airlock and releases

TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".md", ".xml", ".html", ".log", ".tex", ".r", ".py", ".sql",
                 ".yaml", ".yml", ".toml", ".ini", ".cfg", ".rmd", ".ipynb")
OFFICE_SUFFIXES = (".docx", ".pptx", ".xlsx", ".docm", ".pptm", ".xlsm")  # ZIPs of XML parts
MAX_LISTED = 200  # archive members shown to reviewers
TEXT_SCAN_BYTES = 64 * 1024 * 1024  # text beyond this is not read: the check says "not checked"
# Bounds on opening what a file holds, over every level of nesting of one exported file. Past them the
# content is not read (and the check says so): decompression bombs cost a bounded time and disk.
MAX_DEPTH = 3  # an archive (or compressed stream) inside one inside one; a deeper one is not opened
MAX_MEMBERS = 10_000  # archive members (and document parts) read per file
MAX_INFLATED = 1 << 30  # bytes decompressed or extracted per file, all members together
MAX_RATIO = 100  # a stream inflating more than 100× (beyond RATIO_FREE) is a bomb, not data
RATIO_FREE = 1 << 20  # tiny streams compress very well: any stream may inflate to 1 MiB
MAX_FOOTER = 64 * 1024 * 1024  # a Parquet footer larger than this is not read
TABLE_SNIFF_BYTES = 1 << 16  # what is read to tell whether a text is a delimited table
# delimiters of a table by another name, and the ones the table reader (strategies.tables) reads
_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_READ_DELIMITERS = (",", ";", "\t")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")

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
# what the checks cannot read, and why (the reviewer is told)
_UNREAD = {
    "pdf": "PDF content (text and images) is not inspected by the checks",
    "png": "image content (burned-in text, faces) is not inspected by the checks",
    "jpeg": "image content (burned-in text, faces) is not inspected by the checks",
    "gif": "image content (burned-in text, faces) is not inspected by the checks",
    "sqlite": "database content is not inspected by the checks",
    "7z": "7z archives cannot be opened by the checks",
    "binary": "binary content of an unknown kind is not inspected by the checks",
}
_STREAMS: dict[str, Callable[[Path], io.BufferedIOBase]] = {"gzip": gzip.GzipFile, "bzip2": bz2.BZ2File,
                                                            "xz": lzma.LZMAFile}
_SAFE_SUFFIX = re.compile(r"\.[a-z0-9.]{1,12}")
# what a compressed stream's name becomes once decompressed
_INNER = ((".tar.gz", ".tar"), (".tgz", ".tar"), (".tbz2", ".tar"), (".txz", ".tar"), (".gz", ""), (".bz2", ""),
          (".xz", ""))
# Office XML elements inside a line of text (runs, their text, tracked changes): their text joins without
# a break, so a number Word split over runs is read whole; every other element ends a line.
_INLINE = frozenset({"t", "r", "delText", "instrText", "ins", "del", "hyperlink", "smartTag", "fldSimple",
                     "proofErr", "rPr", "bookmarkStart", "bookmarkEnd", "lastRenderedPageBreak", "softHyphen",
                     "noBreakHyphen"})
# damaged or unsupported content of a member: read errors of zipfile, tarfile and the decompressors
_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError,
                NotImplementedError, RuntimeError, ValueError)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    items: list[dict[str, Any]] | None = None  # e.g. archive members (name, size)
    not_checked: bool = False  # the content was not read: not passed, so the PI's override is needed


@dataclass
class FileReport:
    content_type: str
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_json(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in asdict(c).items() if v is not None and (k != "not_checked" or v)}
                for c in self.checks]


def _not_checked(name: str, why: str) -> Check:
    return Check(name, False, why, not_checked=True)


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


def _redact(text: str) -> str:
    """`text` (a member or sheet name, a detail naming columns) with every identifier replaced: results
    name kinds and counts, never values."""
    out, last = [], 0
    for start, end, _ in spans(text):
        if start >= last:
            out.append(text[last:start] + "[identifier]")
            last = end
    return "".join(out) + text[last:]


def _joined(entries: list[str], limit: int = 20) -> str:
    more = f" … and {len(entries) - limit} more" if len(entries) > limit else ""
    return "; ".join(entries[:limit]) + more


class _Finder:
    """``identifiers.spans`` over text fed in pieces, in windows of 1 MiB overlapping by 64 characters
    (identifiers straddling a window's end are found in the next one). Counts per kind. Every kind, always: a
    project's strategy may add names to look for, never turn a kind off."""

    def __init__(self) -> None:
        self.found: dict[str, int] = {}
        self._pending: list[str] = []
        self._size = 0
        self._tail = ""

    def feed(self, text: str) -> None:
        self._pending.append(text)
        self._size += len(text)
        if self._size >= 1 << 20:
            self._scan(final=False)

    def _scan(self, *, final: bool) -> None:
        text = self._tail + "".join(self._pending)
        self._pending, self._size = [], 0
        cut = len(text) if final else max(len(text) - 64, 0)
        for start, _, kind in spans(text):
            if start < cut:
                self.found[kind] = self.found.get(kind, 0) + 1
        self._tail = text[cut:]

    def summary(self) -> str:
        self._scan(final=True)
        return ", ".join(f"{n} {kind}" for kind, n in sorted(self.found.items()))


def scan_text(path: Path) -> Check:
    """``identifiers.spans`` over the text (UTF-8, else Windows-1252), in overlapping windows. NUL bytes are
    left out: text in UTF-16 (anywhere in the file, after an ASCII beginning too) reads as its characters."""
    finder, read, truncated, nul = _Finder(), 0, False, False
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(text: str) -> None:
        nonlocal nul
        if "\x00" in text:
            nul, text = True, text.replace("\x00", "")
        finder.feed(text)

    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            read += len(chunk)
            feed(decoder.decode(chunk))
            if read >= TEXT_SCAN_BYTES:
                truncated = f.read(1) != b""
                break
    feed(decoder.decode(b"", final=True))
    found = finder.summary()
    how = " (NUL bytes left out: read as UTF-16 text too)" if nul else ""
    if found:
        note = f" (in the first {TEXT_SCAN_BYTES // 2**20} MiB; the rest was not read)" if truncated else ""
        return Check("identifiers in text", False, f"found {found}{note}{how}")
    if truncated:  # no "passed" for the part never read
        return _not_checked("identifiers in text", f"none in the first {TEXT_SCAN_BYTES // 2**20} MiB; "
                                                   f"the rest was not read{how}")
    return Check("identifiers in text", True, f"none found{how}")


def holds_nul(path: Path) -> bool:
    """Whether the text has a NUL byte (in its first ``TEXT_SCAN_BYTES``): UTF-16 parts, or binary ones."""
    with path.open("rb") as f:
        for _ in range(TEXT_SCAN_BYTES >> 20):
            chunk = f.read(1 << 20)
            if b"\x00" in chunk:
                return True
            if not chunk:
                break
    return False


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
    the identifier scan of every cell and column name; on every sheet of a workbook (hidden ones too)."""
    from ..strategies.tables import TableError, read_sheets

    try:
        sheets = {name: frame for name, frame in read_sheets(path).items() if frame.width}  # empty: nothing to read
    except TableError as exc:
        return Check("table", False, str(exc))
    return _verify_sheets(sheets, strategy)


def _verify_sheets(sheets: dict[str, Any], strategy: Any | None) -> Check:
    """`check_table` on tables already read (sheet name → frame)."""
    from ..strategies.scan import NameMatcher, scan_identifiers

    rows = sum(frame.height for frame in sheets.values())
    counted = f"{rows} rows" + (f" in {len(sheets)} sheets" if len(sheets) > 1 else "")

    def where(sheet: str) -> str:
        return f"sheet '{_redact(sheet)}': " if len(sheets) > 1 else ""

    if strategy is not None:
        from ..strategies.engine import verify

        failed = [f"{where(sheet)}{_redact(c.name)}: {_redact(c.detail)}"
                  for sheet, frame in sheets.items() for c in verify(frame, strategy).checks if not c.passed]
        return Check("strategy verification", not failed,
                     _joined(failed) if failed else f"every rule of '{strategy.name}' holds ({counted})")
    found = [f"{where(sheet)}{f['cells']} {f['kind']} cell(s) in {f['column']}"
             for sheet, frame in sheets.items() for f in scan_identifiers(frame, NameMatcher([]))]
    if found:
        return Check("identifiers in cells", False,
                     _joined(found) + " (the project has no strategy to verify against)")
    return Check("identifiers in cells", True, f"none found in {counted} or the column names (no project strategy)")


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class _OverCap(Exception):
    """Content beyond the bounds: not read."""


@dataclass
class _Context:
    """What checking one exported file shares over every level of nesting."""

    strategy: Any | None
    scratch: Path  # a private directory beside the plaintext, removed with it
    # bytes still allowed out of decompression and extraction, and members still to read (read at creation)
    inflated: int = field(default_factory=lambda: MAX_INFLATED)
    members: int = field(default_factory=lambda: MAX_MEMBERS)
    names: itertools.count[int] = field(default_factory=itertools.count)

    def inflate(self, src: _Readable, packed: int, out: IO[bytes]) -> int:
        """Copy what `src` gives into `out`, within the bounds; the bytes copied."""
        bounded, size = _Bounded(src, packed, self), 0
        while chunk := bounded.read(1 << 20):
            out.write(chunk)
            size += len(chunk)
        return size

    def scratch_file(self, name: str) -> Path:
        # never the member's own path (it could climb out); its suffix only, which says how to read it
        suffix = suffix_of(name)
        if not _SAFE_SUFFIX.fullmatch(suffix):
            suffix = ""
        return self.scratch / f"m{next(self.names)}{suffix}"


class _Bounded:
    """A reader of decompressed (or extracted) bytes that stops past the bounds: the context's bytes in all,
    and `MAX_RATIO` times what the stream takes packed."""

    def __init__(self, src: _Readable, packed: int, ctx: _Context) -> None:
        self.src, self.ctx, self.cap, self.size = src, ctx, max(MAX_RATIO * packed, RATIO_FREE), 0

    def read(self, n: int) -> bytes:
        chunk = self.src.read(n)
        self.size += len(chunk)
        self.ctx.inflated -= len(chunk)  # charged as read: a bomb spends the budget of what follows it too
        if self.ctx.inflated < 0:
            raise _OverCap(f"more than {MAX_INFLATED / 2**20:g} MiB to decompress or extract in all: not read")
        if self.size > self.cap:
            raise _OverCap(f"expands more than {MAX_RATIO}× (a decompression bomb?): not read")
        return chunk


def _content(path: Path, name: str, kind: str, ctx: _Context, depth: int) -> list[Check]:
    """The checks of what a file holds, by its type (sniffed) and its name."""
    suffix = suffix_of(name)
    if kind in ("executable", "crypt4gh"):
        return []  # the type check already fails and says why
    if kind == "dicom":
        return [scan_dicom(path)]
    if suffix in TABLE_SUFFIXES and kind == "text" and holds_nul(path):
        return [scan_text(path), _not_checked("table", "the table's text holds NUL bytes (UTF-16 or binary parts): "
                                                       "its cells are not read as written, the strategy was not "
                                                       "applied; its text was scanned for identifiers")]
    if suffix in TABLE_SUFFIXES and kind in ("text", "zip", "parquet", "empty"):
        checks = [check_table(path, ctx.strategy)]
        if kind == "zip":  # a workbook: also its comments, properties, names (as the strategy looks for them)
            checks.append(scan_office(path, ctx, depth) if suffix in OFFICE_SUFFIXES
                          else scan_archive(path, kind, ctx, depth))
        if kind == "parquet":  # what the frame does not show: key-value metadata, the Arrow schema, statistics
            checks.append(scan_parquet_footer(path))
        return checks
    if kind == "zip" and suffix in OFFICE_SUFFIXES:
        return [scan_office(path, ctx, depth)]
    if kind in _STREAMS:
        return decompress(path, name, kind, ctx, depth)
    if kind in ("zip", "tar"):
        return [scan_archive(path, kind, ctx, depth)]
    if kind == "text":
        return [scan_text(path), *as_table(path, ctx)]
    if kind == "empty":
        return []  # nothing to read
    return [_not_checked("content", _UNREAD.get(kind, f"{kind} content is not inspected by the checks"))]


def decompress(path: Path, name: str, kind: str, ctx: _Context, depth: int) -> list[Check]:
    """A single gzip/bzip2/xz stream (a .tar.gz too) decompressed into the scratch directory, within the
    bounds, then checked as the file it holds (its name without the compression suffix)."""
    if depth >= MAX_DEPTH:
        return [_not_checked("decompression", f"nested more than {MAX_DEPTH} levels deep: not opened")]
    inner = next((name[:-len(s)] + repl for s, repl in _INNER if name.lower().endswith(s)), name)
    out = ctx.scratch_file(inner)
    try:
        with _STREAMS[kind](path) as src, out.open("wb") as dst:
            size = ctx.inflate(src, path.stat().st_size, dst)
        inner_kind = sniff(out)
        inner_name = _redact(Path(inner).name)
        checks = [Check("decompression", True, f"{kind} stream: {size} bytes of {inner_kind}, checked as {inner_name}")]
        for c in [_type_check(inner, inner_kind), *_content(out, inner, inner_kind, ctx, depth + 1)]:
            c.name = f"{inner_name}: {c.name}"
            checks.append(c)
        return checks
    except _OverCap as exc:
        return [_not_checked("decompression", f"the {kind} stream {exc}")]
    except _READ_ERRORS as exc:
        return [_not_checked("decompression", f"the {kind} stream cannot be decompressed ({type(exc).__name__})")]
    finally:
        out.unlink(missing_ok=True)


class _Members:
    """The verdicts on an archive's (or document's) members, gathered into one check."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.unread: list[str] = []

    def member(self, open_member: Callable[[], IO[bytes]], packed: int, name: str, ctx: _Context,
               depth: int) -> None:
        """Extract one member (bounded) into the scratch directory and check it as a file of its own."""
        label = _redact(name)
        if ctx.members <= 0:
            self.unread.append(f"{label}: more than {MAX_MEMBERS} members: not read")
            return
        ctx.members -= 1
        out = ctx.scratch_file(name)
        try:
            with open_member() as src, out.open("wb") as dst:
                ctx.inflate(src, packed, dst)
            kind = sniff(out)
            type_check = _type_check(name, kind)
            for c in [type_check] * (not type_check.passed) + _content(out, name, kind, ctx, depth):
                if not c.passed:
                    (self.unread if c.not_checked else self.failed).append(f"{label}: {c.name}: {c.detail}")
        except _OverCap as exc:
            self.unread.append(f"{label}: {exc}")
        except _READ_ERRORS as exc:
            self.unread.append(f"{label}: cannot be read ({type(exc).__name__}): not read")
        finally:
            out.unlink(missing_ok=True)

    def check(self, name: str, detail: str, items: list[dict[str, Any]] | None = None) -> Check:
        """Failed when a member failed; else not checked when a member was not read; else passed."""
        parts = [detail]
        if self.failed:
            parts.append(f"failed: {_joined(self.failed)}")
        if self.unread:
            parts.append(f"not inspected: {_joined(self.unread)}")
        return Check(name, not self.failed and not self.unread, "; ".join(parts)[:4000], items=items,
                     not_checked=bool(self.unread) and not self.failed)


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    reader = tar.extractfile(member)
    if reader is None:  # only regular files are extracted
        raise tarfile.ExtractError(f"{member.name} is not a regular file")
    return reader


def scan_archive(path: Path, kind: str, ctx: _Context, depth: int = 0) -> Check:
    """Every member of a ZIP or (uncompressed) TAR extracted and checked as a file of its own; nested
    archives likewise, to ``MAX_DEPTH``. Member names are listed (without identifiers) for the reviewer."""
    if depth >= MAX_DEPTH:
        return _not_checked("archive contents", f"an archive nested more than {MAX_DEPTH} levels deep: not opened")
    members: list[dict[str, Any]] = []
    found = _Members()
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if info.is_dir():
                        continue
                    members.append({"name": _redact(info.filename), "size": info.file_size})
                    if info.flag_bits & 0x1:
                        found.unread.append(f"{_redact(info.filename)}: encrypted: not read")
                        continue
                    found.member(partial(z.open, info), info.compress_size, info.filename, ctx, depth + 1)
        else:
            with tarfile.open(path, "r:") as t:  # plain: a compressed tar was decompressed (bounded) first
                for m in t:
                    if not m.isfile():
                        continue  # directories, links, devices: no content of their own
                    members.append({"name": _redact(m.name), "size": m.size})
                    found.member(partial(_extract, t, m), m.size, m.name, ctx, depth + 1)
    except _READ_ERRORS as exc:
        return _not_checked("archive contents", f"the archive is damaged ({type(exc).__name__}): not read")
    named = [m["name"] for m in members if "[identifier]" in m["name"]]
    if named:
        found.failed.insert(0, f"{len(named)} member name(s) hold an identifier")
    return found.check("archive contents", f"{len(members)} member(s), {sum(m['size'] for m in members)} bytes",
                       items=members[:MAX_LISTED])


def _xml_text(src: IO[bytes], packed: int, ctx: _Context, finder: _Finder, *, targets: bool) -> None:
    """The text of one Office XML part fed to `finder` in document order (attribute values are not text,
    except relationship targets: a mailto: link), within the bounds. A part declaring a DTD is refused:
    Office never writes one, and entities could expand past the bounds."""
    parser: XMLPullParser[Element] = XMLPullParser(events=("start", "end"))
    open_elements: list[Element] = []
    ended: Element | None = None  # its tail (text after it) is known at the next event
    prolog: bytes | None = b""  # bytes before the root element: where a DOCTYPE would be
    limited = _Bounded(src, packed, ctx)
    while chunk := limited.read(1 << 20):
        if prolog is not None:
            prolog += chunk
            if b"<!DOCTYPE" in prolog.upper():
                raise ParseError("declares a DTD")
            if len(prolog) > RATIO_FREE:
                raise ParseError("no element in its first MiB")
        parser.feed(chunk)
        for event, elem in cast("Iterator[tuple[str, Element]]", parser.read_events()):  # only start/end asked
            if prolog is not None:
                prolog = None
            if ended is not None and ended.tail:
                finder.feed(ended.tail)
            ended = None
            if event == "start":
                if open_elements and open_elements[-1].text:  # the parent's text before this child
                    finder.feed(open_elements[-1].text)
                    open_elements[-1].text = None
                open_elements.append(elem)
                continue
            open_elements.pop()
            if elem.text:
                finder.feed(elem.text)
            if targets and (target := elem.get("Target")):
                finder.feed(f"\n{target}")
            if elem.tag.rsplit("}", 1)[-1] not in _INLINE:
                finder.feed("\n")
            if open_elements:
                open_elements[-1].remove(elem)  # memory stays flat: the part is read as a stream
            ended = elem
    parser.close()


def scan_office(path: Path, ctx: _Context, depth: int = 0) -> Check:
    """The text of every XML part of an Office document (body, comments, tracked changes, notes, headers,
    properties, a workbook's cells and sheet names) scanned for identifiers; every other part (embedded
    documents, images, binaries) checked as a file of its own, as archive members are."""
    finder = _Finder()
    found = _Members()
    parts = 0
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.is_dir():
                    continue
                label = _redact(info.filename)
                if info.flag_bits & 0x1:
                    found.unread.append(f"{label}: encrypted: not read")
                elif ctx.members <= 0:
                    found.unread.append(f"{label}: more than {MAX_MEMBERS} members: not read")
                elif info.filename.lower().endswith((".xml", ".rels", ".vml")) or "printerSettings" in info.filename:
                    parts, ctx.members = parts + 1, ctx.members - 1
                    try:
                        with z.open(info) as src:
                            if "printerSettings" in info.filename:  # a printer's DEVMODE: its names as text
                                bounded = _Bounded(src, info.compress_size, ctx)
                                data = b"".join(iter(partial(bounded.read, 1 << 20), b""))
                                finder.feed(data.decode("utf-16-le", errors="ignore") + "\n" + data.decode("latin-1"))
                            else:
                                _xml_text(src, info.compress_size, ctx, finder, targets=info.filename.endswith(".rels"))
                    except _OverCap as exc:
                        found.unread.append(f"{label}: {exc}")
                    except ParseError as exc:
                        found.unread.append(f"{label}: not well-formed XML ({str(exc)[:80]}): not read")
                else:
                    found.member(partial(z.open, info), info.compress_size, info.filename, ctx, depth + 1)
    except _OverCap as exc:
        return _not_checked("document text", f"the document {exc}")
    except _READ_ERRORS as exc:
        return _not_checked("document text", f"the document is damaged ({type(exc).__name__}): not read")
    identifiers = finder.summary()
    if identifiers:
        found.failed.insert(0, f"found {identifiers}")
    return found.check("document text", f"{parts} part(s) read")


def delimiter_of(path: Path) -> str | None:
    """The delimiter of a text whose lines split by it into one number (more than one) of fields, as a CSV's
    header and rows do (nine lines in ten at least, of its first 200); None for prose, code or JSON."""
    with path.open("rb") as f:
        sample = f.read(TABLE_SNIFF_BYTES)
    lines = sample.decode("utf-8", errors="replace").replace("\x00", "").splitlines()
    if len(sample) == TABLE_SNIFF_BYTES:
        lines = lines[:-1]  # perhaps cut by the sample's end
    lines = [line for line in lines if line.strip()][:200]
    if len(lines) < 2:
        return None
    for delimiter in _DELIMITERS:
        try:
            widths = [len(row) for row in csv.reader(lines, delimiter=delimiter)]
        except csv.Error:
            continue
        if widths and widths[0] > 1 and sum(w == widths[0] for w in widths) >= 0.9 * len(widths):
            return delimiter
    return None


def as_table(path: Path, ctx: _Context) -> list[Check]:
    """Text that is a table by another name (``lab.txt``, ``lab.dat`` holding CSV) is verified as the table it
    is (the strategy, or the identifier scan of every cell); text that looks delimited but cannot be read as a
    table is not checked as one, and says so."""
    delimiter = delimiter_of(path)
    if delimiter is None:
        return []
    why = f"table-like text ({_DELIMITERS[delimiter]}-separated), the strategy was not applied"
    if delimiter not in _READ_DELIMITERS or holds_nul(path):
        return [_not_checked("table", f"{why}: not a table the checks read")]
    from ..strategies.tables import TableError, read_sheets

    copy = ctx.scratch_file("table.tsv" if delimiter == "\t" else "table.csv")  # read as the table it is
    copy.symlink_to(path.resolve())
    try:
        sheets = {sheet: frame for sheet, frame in read_sheets(copy).items() if frame.width}
    except TableError as exc:
        return [_not_checked("table", f"{why}: it cannot be read as a table ({str(exc).split(': ', 1)[-1]})")]
    finally:
        copy.unlink()
    verified = _verify_sheets(sheets, ctx.strategy)
    verified.detail = f"read as a table ({_DELIMITERS[delimiter]}-separated text): {verified.detail}"
    return [verified]


def _thrift_strings(data: bytes) -> list[bytes]:
    """Every binary value (names, key-value metadata, statistics) of a Thrift compact-protocol struct such as a
    Parquet footer, read without its schema, at any depth. ValueError when it is not well-formed."""
    pos, found = 0, []

    def byte() -> int:
        nonlocal pos
        if pos >= len(data):
            raise ValueError("truncated")
        pos += 1
        return data[pos - 1]

    def varint() -> int:
        shift = value = 0
        while True:
            b = byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def read(kind: int, depth: int, *, element: bool) -> None:
        nonlocal pos
        if depth > 64:
            raise ValueError("nested too deep")
        if kind in (1, 2):  # bool: in a field header its value is the type; as a container's element, a byte
            pos += element
        elif kind == 3:
            byte()
        elif kind in (4, 5, 6):
            varint()
        elif kind == 7:
            pos += 8
        elif kind == 8:
            size = varint()
            if pos + size > len(data):
                raise ValueError("truncated")
            found.append(data[pos:pos + size])
            pos += size
        elif kind in (9, 10):
            header = byte()
            size = varint() if header >> 4 == 15 else header >> 4
            for _ in range(size):
                read(header & 0x0F, depth + 1, element=True)
        elif kind == 11:
            size = varint()
            types = byte() if size else 0
            for _ in range(size):
                read(types >> 4, depth + 1, element=True)
                read(types & 0x0F, depth + 1, element=True)
        elif kind == 12:
            struct(depth + 1)
        else:
            raise ValueError(f"unknown type {kind}")
        if pos > len(data):
            raise ValueError("truncated")

    def struct(depth: int) -> None:
        while header := byte():
            if not header >> 4:
                varint()  # a field id written in full
            read(header & 0x0F, depth, element=False)

    struct(0)
    return found


def scan_parquet_footer(path: Path) -> Check:
    """Identifiers in what a Parquet file holds besides its rows: the footer's key-value metadata (the Arrow
    schema in it decoded: field and schema metadata), column names and statistics. A footer that cannot be
    read (encrypted, damaged, too large) is not checked."""
    with path.open("rb") as f:
        size = f.seek(0, io.SEEK_END)
        f.seek(max(size - 8, 0))
        tail = f.read(8)
        length = int.from_bytes(tail[:4], "little")
        if size < 12 or tail[4:] != b"PAR1" or length > size - 12 or length > MAX_FOOTER:
            return _not_checked("Parquet metadata", "the footer is encrypted, damaged or too large: not read")
        f.seek(size - 8 - length)
        footer = f.read(length)
    try:
        values = _thrift_strings(footer)
    except ValueError as exc:
        return _not_checked("Parquet metadata", f"the footer cannot be read ({exc}): not read")
    finder = _Finder()
    for value in values:
        finder.feed(value.decode("utf-8", errors="replace") + "\n")
        if _BASE64.fullmatch(value) and len(value) % 4 == 0:  # e.g. ARROW:schema, a serialised schema
            finder.feed(base64.b64decode(value).decode("latin-1") + "\n")
    found = finder.summary()
    if found:
        return Check("Parquet metadata", False, f"found {found} in the footer (key-value metadata, schema or "
                                                "statistics)")
    return Check("Parquet metadata", True, f"none found in the footer ({len(values)} values: key-value metadata, "
                                           "the Arrow schema, column names, statistics)")


def check_file(path: Path, name: str, *, max_bytes: int, strategy: Any | None = None) -> FileReport:
    size = path.stat().st_size
    kind = sniff(path)
    checks = [Check("size limit", size <= max_bytes, f"{size} bytes (limit {max_bytes})"),
              _type_check(name, kind)]
    # what is decompressed or extracted lives beside the plaintext (a private directory), only while checked
    with tempfile.TemporaryDirectory(prefix="strongroom-check-", dir=path.parent) as scratch:
        checks += _content(path, name, kind, _Context(strategy, Path(scratch)), 0)
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
