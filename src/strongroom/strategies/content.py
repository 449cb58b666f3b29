"""Whether a file's content is a table, or may hold one — judged by its bytes, never by its name.

"Nothing unverified is published" (`provenance.py`): a table may leave its project only as the output of a
passing strategy run, so a release must know which of its other files are tables, whatever they are called
(`lab.txt`, `lab.csv.`, `lab.psv`, `lab.pdf`). Deny by default: what may hold a table and cannot be read here
(an archive, a compression this module does not open, encrypted content, a text too long to read) counts.

A file counts as a table (``Verdict.table``) when it is:

- a table or data-container format: Parquet, Arrow/Feather, Avro, ORC, SQLite, HDF5 (and MATLAB), SPSS,
  Stata, SAS, R data, dBASE, NumPy, a Python pickle, an OLE2 compound file (xls);
- an archive (ZIP — and so xlsx, ods, docx —, TAR, 7z, RAR, …): what it holds is not opened here;
- a compressed stream (gzip, bzip2, xz) holding any of these — it is decompressed (bounded) and judged as
  what it holds, so `scan.nii.gz` is an image and `lab.csv.gz` a table — or a compression this module cannot
  open (zstd, lz4, …);
- encrypted (crypt4gh, OpenSSL, age, OpenPGP): what it holds cannot be read;
- text (UTF-8, Windows-1252, UTF-16 with or without its byte-order mark) that parses as a delimited or
  fixed-width table, as JSON or XML records, as an HTML table, or as a list of values (a one-column table);
  text holding a personnummer or samordningsnummer (a real date and the Luhn digit: patient data, not a
  document's contact line — an e-mail address or an ORCID that looks like a telephone number does not count);
  text too long to read to its end.

Everything else is not a table: DICOM (the imaging import verifies what it archives), images, PDF, NIfTI,
prose and code, empty files, and binary content of no table format.

Pure: no web or database imports. The caller gives the plaintext as chunks; only what the verdict needs is
consumed (the magic bytes of a binary, the whole of a text up to ``TEXT_LIMIT``).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast
from xml.etree.ElementTree import Element, ParseError, fromstring

from .. import identifiers

HEAD = 1 << 16  # bytes read to recognise a binary format
TEXT_LIMIT = 8 << 20  # a text longer than this is not read to its end: it counts as a table
MAX_DEPTH = 3  # compressed streams inside compressed streams
SAMPLE_LINES = 200  # lines of a text whose shape is judged
SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


@dataclass(frozen=True)
class Verdict:
    table: bool  # a table or may hold one: released only as a passing strategy run's output
    kind: str  # what the content is, for people ("a delimited table (semicolon)", "a PNG image")


def judge(chunks: Iterable[bytes]) -> Verdict:
    """The verdict on a file whose plaintext ``chunks`` gives, consuming only what it needs."""
    return _judge(_Stream(iter(chunks)), 0)


class _Stream(io.RawIOBase):
    """Chunks as a readable stream (for the decompressors), with a look at its head."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._buffer = chunks, bytearray()

    def readable(self) -> bool:
        return True

    def _fill(self, n: int) -> None:
        while len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            self._buffer += chunk

    def head(self, n: int) -> bytes:
        self._fill(n)
        return bytes(self._buffer[:n])

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes; all (`size` < 0) is never more than a text may be, and one byte beyond."""
        self._fill(size if size >= 0 else TEXT_LIMIT + 1)
        taken = bytes(self._buffer[:size] if size >= 0 else self._buffer)
        del self._buffer[:len(taken)]
        return taken

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


_SAS7BDAT = b"\x00" * 12 + bytes.fromhex("c2ea8160b31411cfbd92080009c7318c181f1011")
# (offset, magic, what it is). Checked in order; the first that matches decides.
_TABLE_FORMATS: list[tuple[int, bytes, str]] = [
    (0, b"PAR1", "a Parquet table"), (0, b"ARROW1", "an Arrow (Feather) table"), (0, b"FEA1", "a Feather table"),
    (0, b"Obj\x01", "an Avro file"), (0, b"ORC", "an ORC table"), (0, b"SQLite format 3\x00", "an SQLite database"),
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file"), (512, b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (0, b"MATLAB 5.0 MAT-file", "a MATLAB data file"),
    (0, b"$FL2", "an SPSS data file"), (0, b"$FL3", "an SPSS data file"),
    (0, b"<stata_dta>", "a Stata data file"), (0, _SAS7BDAT, "a SAS data file"),
    (0, b"HEADER RECORD*******LIBRARY HEADER RECORD", "a SAS transport file"),
    (0, b"RDX2\n", "an R data file"), (0, b"RDX3\n", "an R data file"), (0, b"RDA2\n", "an R data file"),
    (0, b"RDA3\n", "an R data file"), (0, b"X\n\x00\x00", "an R data file"), (0, b"\x93NUMPY", "a NumPy array"),
    # a pickle: protocol 4-5 start with a frame; 2-3 with an empty dict or list, a global or a mark (a frame of
    # pandas, a dict of columns), so that random bytes seldom look like one
    *((0, b"\x80" + bytes([protocol]) + opcode, "a Python pickle") for protocol in (2, 3) for opcode in (b"}", b"]",
                                                                                                     b"c", b"(")),
    (0, b"\x80\x04\x95", "a Python pickle"), (0, b"\x80\x05\x95", "a Python pickle"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE2 compound file (a spreadsheet or document)"),
    (0, b"PK\x03\x04", "a ZIP archive (or a spreadsheet or document in one)"), (0, b"PK\x05\x06", "a ZIP archive"),
    (0, b"PK\x07\x08", "a ZIP archive"), (0, b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (0, b"Rar!\x1a\x07", "a RAR archive"),
    (257, b"ustar", "a TAR archive"), (0, b"!<arch>\n", "an ar archive"), (0, b"MSCF\x00\x00\x00\x00", "a CAB archive"),
    (0, b"\x28\xb5\x2f\xfd", "a zstd stream"), (0, b"\x04\x22\x4d\x18", "an LZ4 stream"),
    (0, b"\x1f\x9d\x90", "a compress (.Z) stream"), (0, b"\xff\x06\x00\x00sNaPpY", "a Snappy stream"),
    (0, b"LZIP\x01", "an lzip stream"),
    (0, b"crypt4gh", "encrypted (crypt4gh)"), (0, b"Salted__", "encrypted (OpenSSL)"),
    (0, b"age-encryption.org/", "encrypted (age)"), (0, b"-----BEGIN PGP MESSAGE", "encrypted (OpenPGP)"),
]
_OTHER_FORMATS: list[tuple[int, bytes, str]] = [
    (128, b"DICM\x02\x00", "a DICOM object"), (0, b"%PDF", "a PDF document"), (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"), (0, b"GIF8", "a GIF image"), (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"), (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 image"),
    (344, b"n+1\x00", "a NIfTI image"), (344, b"ni1\x00", "a NIfTI image"), (4, b"n+2\x00", "a NIfTI image"),
]
_STREAMS = {b"\x1f\x8b\x08": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}  # decompressed and judged inside


def _decompressed(name: str, stream: _Stream) -> io.BufferedIOBase:
    source = cast(IO[bytes], stream)
    return (gzip.GzipFile(fileobj=source) if name == "gzip" else bz2.BZ2File(source) if name == "bzip2"
            else lzma.LZMAFile(source))


def _judge(stream: _Stream, depth: int) -> Verdict:
    head = stream.head(HEAD)
    if not head:
        return Verdict(False, "empty")
    for offset, magic, kind in _OTHER_FORMATS:
        if head[offset:offset + len(magic)] == magic:
            return Verdict(False, kind)
    for magic, name in _STREAMS.items():
        if head.startswith(magic):
            return _inside(stream, name, depth)
    for offset, magic, kind in _TABLE_FORMATS:
        if head[offset:offset + len(magic)] == magic and (magic != b"ORC" or b"\x00" in head):  # "ORCID: …" is text
            return Verdict(True, kind)
    if _dbase(head):
        return Verdict(True, "a dBASE table")
    encoding = _text_encoding(head)
    if encoding is None or not _readable(head, encoding):
        return Verdict(False, "binary content of no table format")
    data = stream.read(TEXT_LIMIT + 1)
    if len(data) > TEXT_LIMIT:
        return Verdict(True, f"text longer than {TEXT_LIMIT >> 20} MiB (not read to its end)")
    return judge_text(_decode(data, encoding))


def _inside(stream: _Stream, name: str, depth: int) -> Verdict:
    """A compressed stream: judged as what it holds, decompressed as far as that needs (bounded)."""
    if depth >= MAX_DEPTH:
        return Verdict(True, f"a {name} stream nested more than {MAX_DEPTH} deep (not opened)")
    try:
        with _decompressed(name, stream) as inflated:

            def chunks() -> Iterator[bytes]:
                total = 0
                while total <= TEXT_LIMIT and (chunk := inflated.read(1 << 16)):
                    total += len(chunk)
                    yield chunk

            inner = _judge(_Stream(chunks()), depth + 1)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError):
        return Verdict(True, f"a damaged {name} stream (not read)")
    return Verdict(inner.table, f"{inner.kind}, {name}-compressed")


def _dbase(head: bytes) -> bool:
    """A dBASE (.dbf) header: version byte, a date, and a header length that fits its 32-byte field list."""
    if len(head) < 33 or head[0] not in (0x02, 0x03, 0x30, 0x31, 0x32, 0x83, 0x8B, 0xCB, 0xF5):
        return False
    _, month, day = head[1:4]
    header_size, record_size = struct.unpack_from("<HH", head, 8)
    return (1 <= month <= 12 and 1 <= day <= 31 and record_size > 1 and header_size >= 65
            and header_size < len(head) and head[header_size - 1] == 0x0D)


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _text_encoding(head: bytes) -> str | None:
    """The encoding of a text (a byte-order mark, UTF-16 without one, UTF-8, Windows-1252), or None: binary."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    even, odd = head[0::2], head[1::2]
    if len(head) >= 4 and odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"  # Excel's "Unicode text" and other Windows tools, without the mark
    if len(head) >= 4 and even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    if b"\x00" in head:
        return None
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":  # cut by the window
            return "utf-8"
    try:
        head.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return None


def _readable(head: bytes, encoding: str) -> bool:
    """Whether the head decodes to characters people write (binary that happens to decode does not)."""
    text = head.decode(encoding, errors="replace")
    return sum(c.isprintable() or c in "\t\r\n\f" for c in text) >= 0.95 * len(text)


def _decode(data: bytes, encoding: str) -> str:
    if encoding == "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "cp1252"  # Windows-1252 further on: what Swedish Excel writes
    return data.decode(encoding, errors="replace")


# -- text ------------------------------------------------------------------------------------------------
def judge_text(text: str) -> Verdict:
    """Text read to its end: a table when its shape or its content says so (see the module's text). The shape
    first (cheap), then personnummer, up to the first one found."""
    stripped = text.lstrip("\ufeff \t\r\n")
    verdict: Verdict | None = None
    if stripped[:1] in ("{", "["):
        records = _json_records(stripped)
        if records is not None:
            verdict = Verdict(records, "JSON records" if records else "JSON")
    if verdict is None and stripped[:1] == "<":
        verdict = _markup(stripped)
    if verdict is None:
        lines = [line for line in stripped[:1 << 20].splitlines()[:SAMPLE_LINES + 1] if line.strip()][:SAMPLE_LINES]
        shape = _shape(lines)
        verdict = Verdict(True, shape) if shape else Verdict(False, "text")
    if verdict.table:
        return verdict
    window = 1 << 20
    for start in range(0, len(text), window):  # windows overlapping by 64: an identifier across an edge is found
        found = identifiers.spans(text[start:start + window + 64], email=False, phone=False)
        if found:
            return Verdict(True, f"{verdict.kind} holding a {found[0][2]}")
    return verdict


def _json_records(text: str) -> bool | None:
    """Whether JSON (or JSON Lines) holds records — a list of two or more objects or lists anywhere — or None
    when the text is not JSON."""
    try:
        documents = [json.loads(text)]
    except RecursionError:
        return True  # nested past reason: not shown to hold no records
    except ValueError:
        try:
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        except RecursionError:
            return True
        except ValueError:
            return None
        if len(documents) >= 2:
            return True  # JSON Lines: one record per line

    def has_records(value: object, depth: int = 0) -> bool:
        if depth > 50:
            return True  # nested past reason: not shown to hold none
        if isinstance(value, list):
            return (sum(isinstance(v, (dict, list)) for v in value) >= 2
                    or any(has_records(v, depth + 1) for v in value))
        if isinstance(value, dict):
            return any(has_records(v, depth + 1) for v in value.values())
        return False

    return any(has_records(d) for d in documents)


_HTML = re.compile(r"<!doctype\s+html|<html[\s>]", re.I)
_HTML_TABLE = re.compile(r"<\s*(?:table|tr)[\s>]", re.I)


def _markup(text: str) -> Verdict | None:
    """HTML with a table, or XML with records (two or more elements of one name under one parent, each with
    two or more parts holding text), is a table; other markup is not; None: not markup after all."""
    if _HTML.search(text[:4096]):
        return Verdict(True, "an HTML table") if _HTML_TABLE.search(text) else None  # else: judged as text
    if re.search(r"<!(?:DOCTYPE|ENTITY)", text, re.I):
        return Verdict(True, "XML declaring a document type (not parsed)")  # entities could expand past bounds
    try:
        root = fromstring(text)
    except ParseError:
        return None
    if root.tag.rsplit("}", 1)[-1] == "svg":
        return Verdict(False, "an SVG image")

    def holds_text(element: Element) -> bool:
        return any(t.strip() for t in element.itertext())

    for parent in root.iter():
        seen: dict[str, int] = {}
        for child in parent:
            if sum(holds_text(part) for part in child) >= 2 or sum(bool(v.strip()) for v in child.attrib.values()) >= 3:
                seen[child.tag] = seen.get(child.tag, 0) + 1
                if seen[child.tag] >= 2:
                    return Verdict(True, "XML records")
    return Verdict(False, "XML")


def _shape(lines: list[str]) -> str | None:
    """What table these lines are, or None: delimited (the same number of fields, two or more, on nine lines
    in ten, quotes honoured), fixed-width (columns set apart by two or more spaces, three lines or more), or a
    list of single values (three lines or more)."""
    if len(lines) < 2:
        return None

    def consistent(counts: list[int], least_lines: int) -> bool:
        return (len(counts) >= least_lines and counts[0] >= 2
                and sum(c == counts[0] for c in counts) >= 0.9 * len(counts))

    sample = "\n".join(lines)
    for separator, name in SEPARATORS.items():
        if separator not in lines[0]:
            continue
        try:
            counts = [len(row) for row in csv.reader(io.StringIO(sample), delimiter=separator) if row]
        except csv.Error:
            continue
        if consistent(counts, 2):
            return f"a delimited table ({name})"
    if consistent([len(re.split(r"\s{2,}", line.strip())) for line in lines], 3):
        return "a fixed-width table"
    if len(lines) >= 3 and sum(len(line.split()) == 1 and len(line) <= 64 for line in lines) >= 0.9 * len(lines):
        return "a list of values (a one-column table)"
    return None
