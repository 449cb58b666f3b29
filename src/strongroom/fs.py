"""``strongroom://<project>/<dataset>/<path>``: an fsspec filesystem over a hub's API, for notebooks and pipelines.

    import fsspec, pandas, pydicom
    pandas.read_csv("strongroom://lung/files/tables/visits.csv")
    pydicom.dcmread(fsspec.open("strongroom://lung/SRD-7K2M9QX4TD/ct/slice-001.dcm").open())

Layout: the root lists the projects you are a member of; a project holds ``files`` (its
archived files, by the path they were uploaded under) and one folder per dataset it owns or that is
shared into it, named by the dataset's accession (``SRD-…``: its latest released version; ``SRD-…@2`` a
given version). Folders inside are the files' own paths. Reading only, except ``put`` of local files into
``<project>/files/…`` (client-side encrypted, as ``strongroom upload``).

Reads are ranged: a file object (``AbstractBufferedFile``) asks the hub only for the crypt4gh segments
that hold the bytes it needs and decrypts them in memory. Two ways to read, chosen by ``via``:

* ``"encrypted"``: ``/files/{id}/content?plaintext_range=…`` — the covering segments behind a header
  re-encrypted to *your* crypt4gh key, decrypted here with your secret key: no plaintext on the wire.
  The project's (or the dataset's) download rule applies: a locked download is a ``PermissionError``.
* ``"plaintext"``: ``/files/{id}/plaintext`` with a ``Range`` — decrypted by the hub, for project
  members working in the platform (notebook workspaces).
* ``"auto"`` (default): encrypted when a secret key is found, plaintext otherwise.

Credentials, as the command line's (``strongroom.hubclient``): the hub's address and the API token from
``strongroom login`` or ``STRONGROOM_URL`` / ``STRONGROOM_TOKEN`` (or ``url=`` / ``token=``), each token only for
the address it came with: ``url=`` naming another hub needs its ``token=`` (``hubclient``); the secret key
from ``secret_key=`` or ``STRONGROOM_CRYPT4GH_KEY`` (a path) or ``~/.config/strongroom/strongroom.sec`` (the CLI's
``keys generate``), its passphrase from ``passphrase=`` or ``STRONGROOM_KEY_PASSPHRASE``. The matching public
key must be registered with the hub (``strongroom keys register``).

Names are never taken from the hub as they are: a project is listed only under a plain slug, a dataset only
under its accession, a file under its stored path cleaned (``archive.paths.safe_relative``), so what a recursive
``get`` writes stays inside the folder it was given, whatever the hub answers.

What the hub answers 404 (another project, a made-up path) is ``FileNotFoundError``; 401/403 (a locked
download, a missing scope) ``PermissionError`` with the hub's reason. This module is a client: it imports
no web or database code, only ``hubclient``, the command line's transfers (``archive.transfer``) and the pure
crypt4gh engine (and ``parsing``, the one rule for a whole number written as text).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from .archive import c4gh
from .archive.paths import safe_relative
from .archive.transfer import UploadPlan, is_accession, upload_file, url_segment
from .hubclient import HubClient, HubError, config_path, default_address
from .parsing import whole_number_in

FILES = "files"  # a project's own archived files (datasets are named SRD-…, so no clash)
VIA = ("auto", "encrypted", "plaintext")
API = "/api/v1"
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")  # a project as a folder: no '/', '..', or anything odd
_MAX_VERSION = 2**31 - 1  # a dataset's version numbers (a 32-bit INTEGER on the hub)
_MAX_SIZE = 2**63 - 1  # a file's size in bytes (BIGINT on the hub)


@dataclass
class _Tree:
    """A flat list of files as folders: path → record, folder → child names."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, set[str]] = field(default_factory=lambda: {"": set()})
    loaded_at: float = field(default_factory=time.monotonic)

    def add(self, record: dict[str, Any]) -> None:
        # the names a recursive ``get`` writes on this machine: never a ``..``, a backslash or a drive letter,
        # whatever the hub stored (``archive.paths.safe_relative``)
        parts = [p for p in safe_relative(str(record["path"])).split("/") if p]
        if not parts:
            return
        path = "/".join(parts)
        held = self.files.get(path)
        if held is not None and str(held.get("created_at", "")) > str(record.get("created_at", "")):
            return  # the same path uploaded again: the newest one answers
        if path in self.folders:
            return  # a folder of that name already holds files
        self.files[path] = record
        for depth in range(len(parts)):
            parent = "/".join(parts[:depth])
            self.folders.setdefault(parent, set()).add(parts[depth])


def _whole(value: object, minimum: int, maximum: int) -> int | None:
    """A whole number in the hub's answer: a JSON integer (not a boolean) or its text (``parsing``), in range."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if minimum <= value <= maximum else None
    return whole_number_in(value, minimum, maximum) if isinstance(value, str) else None


def _hub_error(exc: HubError, path: str) -> OSError:
    if exc.head == "404":
        return FileNotFoundError(2, exc.detail or "not found", path)
    if exc.head in ("401", "403"):
        return PermissionError(13, exc.detail or "forbidden", path)
    return OSError(f"{path}: {exc}")


class StrongroomFileSystem(AbstractFileSystem):
    """fsspec filesystem of a Strongroom hub; ``protocol = "strongroom"`` (entry point ``fsspec.specs``)."""

    protocol = "strongroom"
    root_marker = ""
    # a project's inbox listing is re-read after this many seconds; a released version never changes
    listing_seconds = 30.0

    def __init__(self, url: str | None = None, token: str | None = None, *, via: str = "auto",
                 secret_key: str | os.PathLike[str] | None = None, passphrase: str | None = None,
                 block_size: int = 1024 * 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if via not in VIA:
            raise ValueError(f"via must be one of {', '.join(VIA)}")
        # a token given here goes where it is told; a saved or environment token only to its own address
        self.client = HubClient(url or default_address(), token) if token else HubClient.from_config(url)
        self.block_size = block_size
        self._secret: bytes | None = None
        self._fingerprint: str | None = None
        key_path = Path(secret_key or os.environ.get("STRONGROOM_CRYPT4GH_KEY") or config_path().parent
                        / "strongroom.sec").expanduser()
        if via == "encrypted" or (via == "auto" and key_path.is_file()):
            keypair = c4gh.load_private_key(key_path, passphrase or os.environ.get("STRONGROOM_KEY_PASSPHRASE")
                                            or None)
            self._secret, self._fingerprint = keypair.secret, c4gh.fingerprint(keypair.public)
            self.via = "encrypted"
        else:
            self.via = "plaintext"
        self._trees: dict[str, _Tree] = {}
        self._lock = threading.Lock()

    # -- paths ---------------------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path)
        if text.startswith("strongroom://"):
            text = text[len("strongroom://"):]
        elif text.startswith("strongroom:"):
            text = text[len("strongroom:"):]
        return "/".join(p for p in text.split("/") if p not in ("", "."))

    def unstrip_protocol(self, name: str) -> str:
        return f"strongroom://{name}"

    def _get(self, path: str, api_path: str, **kwargs: Any) -> Any:
        try:
            return self.client.json("GET", API + api_path, **kwargs)
        except HubError as exc:
            raise _hub_error(exc, path) from exc

    # -- listings ------------------------------------------------------------------------------
    def _datasets(self, project: str) -> dict[str, dict[str, Any]]:
        # a dataset is a folder named by its accession: whatever else the hub calls one is left out
        return {d["id"]: d for d in self._get(project, f"/projects/{url_segment(project)}/datasets")
                if is_accession(d.get("id"), "SRD")}

    def _dataset(self, project: str, name: str) -> tuple[dict[str, Any], int]:
        """The dataset a folder names (owned by or shared into ``project``) and the version it shows."""
        ident, at, wanted = name.partition("@")
        # a version as it is written in a listing (``SRD-…@2``): ASCII digits, no sign, no leading zero, no space,
        # within the hub's version numbers; anything else ("@", "@²", "@02", thousands of digits) names no folder
        number = whole_number_in(wanted, 1, _MAX_VERSION) if at else None
        if not is_accession(ident, "SRD") or (at and (number is None or str(number) != wanted)):
            raise FileNotFoundError(2, "no such dataset", f"{project}/{name}")
        try:
            ds = self._datasets(project).get(ident)
        except FileNotFoundError:  # not a member: an approved applicant reads the owner's dataset directly
            ds = None
            found = self._get(f"{project}/{name}", f"/datasets/{ident}")
            if found.get("id") == ident and found["owner_project"] == project:
                ds = found
        if ds is None:
            raise FileNotFoundError(2, "no such dataset", f"{project}/{name}")
        versions = ds["versions"]
        if number is not None:
            chosen = [v for v in versions if _whole(v.get("number"), 1, _MAX_VERSION) == number]
        else:
            chosen = ([v for v in versions if v["state"] == "released"] or versions)[-1:]
        if not chosen:
            raise FileNotFoundError(2, "no such version", f"{project}/{name}")
        shown = _whole(chosen[0].get("number"), 1, _MAX_VERSION)
        if shown is None:
            raise OSError(f"{project}/{name}: the hub's answer gives no valid version number")
        return ds, shown

    def _tree(self, project: str, container: str) -> _Tree:
        key = f"{project}/{container}"
        with self._lock:
            tree = self._trees.get(key)
        if tree is not None and (container != FILES or time.monotonic() - tree.loaded_at < self.listing_seconds):
            return tree
        tree = _Tree()
        if container == FILES:
            after: str | None = None
            while True:
                params: dict[str, Any] = {"state": "ready", "limit": 1000, **({"after": after} if after else {})}
                page = self._get(key, f"/projects/{url_segment(project)}/files", params=params)
                for record in page:
                    tree.add(record)
                if len(page) < 1000:
                    break
                after = page[-1]["id"]
        else:
            ds, number = self._dataset(project, container)
            after = None
            while True:
                params = {"limit": 5000, **({"after": after} if after else {})}
                page = self._get(key, f"/datasets/{ds['id']}/versions/{number}/files", params=params)
                for record in page["files"]:
                    tree.add(record)
                after = page["next_after"]
                if not after:
                    break
            if not any(v["number"] == number and v["state"] in ("released", "deprecated") for v in ds["versions"]):
                tree.loaded_at = -self.listing_seconds  # a draft changes: read it again next time
        with self._lock:
            self._trees[key] = tree
        return tree

    def _file_entry(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        size = _whole(record.get("plaintext_size"), 0, _MAX_SIZE)
        if size is None:
            raise OSError(f"{name}: the hub's answer gives no valid size")
        return {"name": name, "type": "file", "size": size, "id": record["id"],
                "sha256": record.get("plaintext_sha256"), "created": record.get("ingested_at")}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        parts = path.split("/") if path else []
        entries: list[dict[str, Any]]
        if not parts:
            entries = [{"name": p["slug"], "type": "directory", "size": 0, "title": p.get("name")}
                       for p in self._get("", "/projects") if _SLUG.fullmatch(str(p.get("slug")))]
        elif len(parts) == 1:
            datasets = self._datasets(parts[0])
            entries = [{"name": f"{parts[0]}/{FILES}", "type": "directory", "size": 0}]
            entries += [{"name": f"{parts[0]}/{ident}", "type": "directory", "size": 0, "title": d["title"]}
                        for ident, d in datasets.items()]
        else:
            tree = self._tree(parts[0], parts[1])
            inner = "/".join(parts[2:])
            if inner in tree.files:
                entries = [self._file_entry(path, tree.files[inner])]
            elif inner in tree.folders:
                entries = []
                for child in sorted(tree.folders[inner]):
                    below = f"{inner}/{child}" if inner else child
                    name = f"{path}/{child}"
                    entries.append(self._file_entry(name, tree.files[below]) if below in tree.files
                                   else {"name": name, "type": "directory", "size": 0})
            else:
                raise FileNotFoundError(2, "no such file or folder", path)
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        parts = path.split("/") if path else []
        if len(parts) <= 1:
            if parts:
                self._get(path, f"/projects/{url_segment(parts[0])}")  # 404 outside your projects
            return {"name": path, "type": "directory", "size": 0}
        tree = self._tree(parts[0], parts[1])
        inner = "/".join(parts[2:])
        if inner in tree.files:
            return self._file_entry(path, tree.files[inner])
        if inner in tree.folders:
            return {"name": path, "type": "directory", "size": 0}
        raise FileNotFoundError(2, "no such file or folder", path)

    def invalidate_cache(self, path: str | None = None) -> None:
        with self._lock:
            self._trees.clear()
        super().invalidate_cache(path)

    # -- reading -------------------------------------------------------------------------------
    def read_range(self, path: str, file_id: str, start: int, end: int) -> bytes:
        """Plaintext bytes ``[start, end)`` of one file: only the covering segments travel."""
        if end <= start:
            return b""
        try:
            if self.via == "encrypted":
                assert self._secret is not None
                response = self.client.request(
                    "GET", f"{API}/files/{url_segment(file_id)}/content",
                    params={"plaintext_range": f"{start}-{end - 1}", "key": self._fingerprint})
                data = b"".join(c4gh.decrypt_stream(io.BytesIO(response.content), [self._secret]))
            else:
                response = self.client.request("GET", f"{API}/files/{url_segment(file_id)}/plaintext",
                                               headers={"Range": f"bytes={start}-{end - 1}"})
                data = response.content
        except HubError as exc:
            raise _hub_error(exc, path) from exc
        except c4gh.C4ghError as exc:
            raise OSError(f"{path}: the hub's answer does not decrypt with your key ({exc})") from exc
        if len(data) != end - start:
            raise OSError(f"{path}: asked for {end - start} bytes, got {len(data)}")
        return data

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        entry = self.info(path)
        if entry["type"] != "file":
            raise IsADirectoryError(2, "a folder", self._strip_protocol(path))
        size = int(entry["size"])
        lo = 0 if start is None else (max(size + start, 0) if start < 0 else min(start, size))
        hi = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
        data = self.read_range(entry["name"], entry["id"], lo, hi)
        if lo == 0 and hi == size and entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise OSError(f"{entry['name']}: the plaintext's SHA-256 differs from the archive's")
        return data

    # -- writing: uploads into a project's files ---------------------------------------------------
    def put_file(self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite",
                 **kwargs: Any) -> None:
        """Upload a local file to ``<project>/files/<path>``: encrypted here to the hub's key while streaming
        (resumable, as `strongroom upload`); it is listed once the hub has ingested it. Datasets are read-only."""
        path = self._strip_protocol(rpath)
        parts = path.split("/")
        if len(parts) < 3 or parts[1] != FILES:
            raise PermissionError(13, f"upload into <project>/{FILES}/<path>: datasets are read-only", path)
        source = Path(lpath)
        if not source.is_file():
            raise FileNotFoundError(2, "no such local file", lpath)
        try:
            self.client.request("GET", f"{API}/projects/{url_segment(parts[0])}")
            hub_public = c4gh.parse_public_key(self.client.request("GET", f"{API}/archive/public-key").text)
            upload_file(self.client, parts[0], UploadPlan(source, "/".join(parts[2:]), source.stat().st_size),
                        hub_public, state_dir=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "strongroom" / "uploads")
        except HubError as exc:
            raise _hub_error(exc, path) from exc
        self.invalidate_cache()

    def get_file(self, rpath: str, lpath: Any = None, **kwargs: Any) -> None:
        """fsspec's copy of one file to ``lpath``, never written through a symbolic link found there."""
        if kwargs.get("outfile") is None and isinstance(lpath, (str, os.PathLike)) and os.path.islink(lpath):
            raise PermissionError(13, "refusing to write through a symbolic link", os.fspath(lpath))
        super().get_file(rpath, lpath, **kwargs)

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              cache_options: dict[str, Any] | None = None, **kwargs: Any) -> StrongroomFile:
        if mode != "rb":
            raise PermissionError(13, "strongroom:// files open read-only (upload with fs.put or `strongroom upload`)",
                                  path)
        entry = self.info(path)
        if entry["type"] != "file":
            raise IsADirectoryError(2, "a folder", path)
        return StrongroomFile(self, entry, block_size=block_size or self.block_size, cache_options=cache_options,
                              cache_type=kwargs.pop("cache_type", "readahead"))


class StrongroomFile(AbstractBufferedFile):
    """A read-only file whose reads fetch and decrypt only the segments they need."""

    def __init__(self, fs: StrongroomFileSystem, entry: dict[str, Any], **kwargs: Any) -> None:
        self.file_id = entry["id"]
        super().__init__(fs, entry["name"], mode="rb", size=int(entry["size"]), **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.read_range(self.path, self.file_id, start, min(end, self.size))

