"""The SFTP view's layout, as a pure function of the path (no database):

``/``                                         the caller's projects (by slug)
``/<project>/``                               ``datasets`` and ``uploads``
``/<project>/uploads/<path>``                 the project's files by the path they were uploaded as; new files
                                              are written here (and only here)
``/<project>/datasets/<dataset>/v<n>/<path>`` a dataset version's files, read-only
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

AREAS = ("datasets", "uploads")
_VERSION = re.compile(r"^v([1-9][0-9]{0,8})$")


class NoSuchPath(Exception):
    """The path names nothing in the layout."""


@dataclass(frozen=True)
class Where:
    kind: str  # root | project | uploads | datasets | dataset | version
    slug: str = ""
    dataset: str = ""
    version: int = 0
    rest: str = ""  # a path below the uploads area or the version ("" = its top)

    @property
    def is_file_area(self) -> bool:
        return self.kind in ("uploads", "version")


def normalize(path: bytes | str) -> str:
    """An absolute, normalized path: ``.`` and ``..`` resolved, never above ``/``."""
    text = path.decode("utf-8") if isinstance(path, bytes) else path
    if "\x00" in text:
        raise NoSuchPath(text)
    norm = posixpath.normpath("/" + text)
    return "/" if norm in ("/", "//") else "/" + norm.lstrip("/")


def parse(path: bytes | str) -> Where:
    try:
        parts = [p for p in normalize(path).split("/") if p]
    except UnicodeDecodeError as exc:
        raise NoSuchPath(repr(path)) from exc
    if not parts:
        return Where("root")
    slug = parts[0]
    if len(parts) == 1:
        return Where("project", slug)
    area = parts[1]
    if area == "uploads":
        return Where("uploads", slug, rest="/".join(parts[2:]))
    if area != "datasets":
        raise NoSuchPath(normalize(path))
    if len(parts) == 2:
        return Where("datasets", slug)
    if len(parts) == 3:
        return Where("dataset", slug, dataset=parts[2])
    m = _VERSION.match(parts[3])
    if not m:
        raise NoSuchPath(normalize(path))
    return Where("version", slug, dataset=parts[2], version=int(m.group(1)), rest="/".join(parts[4:]))


def child(rel_path: str, prefix: str) -> tuple[str, bool] | None:
    """The entry ``rel_path`` shows in directory ``prefix``: (name, is_directory), or None if not below it."""
    if prefix:
        if not rel_path.startswith(prefix + "/"):
            return None
        rel_path = rel_path[len(prefix) + 1:]
    name, sep, _ = rel_path.partition("/")
    return (name, bool(sep)) if name else None
