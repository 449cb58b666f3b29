"""Client side of uploads and downloads: what `strongroom upload` / `download` run on a laptop.

Uploads are encrypted here, while streaming, to the hub's public key: plaintext never leaves the
machine and is never written to a temporary file. To resume an interrupted upload byte-exactly
without keeping ciphertext, the header and every segment's nonce are derived from a per-upload
seed kept (with the session key, mode 0600) in the resume file; it is deleted when the upload
completes. The resume file is only reused if the source file's size and mtime are unchanged.

Downloads trust no name the hub sends: a file lands under the download folder by its stored path cleaned
(``paths.safe_relative``), else by its accession, else by a name made here (``local_name``); the folder it goes
into must resolve inside the download folder, and no file is written through a symbolic link found there
(``contained``), so neither a compromised hub nor someone between it and the laptop can place a file elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from ..hubclient import RETRY_STATUSES, HubClient, HubError, problem_error
from . import c4gh
from .paths import safe_relative


def url_segment(value: object) -> str:
    """A value the hub sent (or the user typed) as one segment of an API path: it cannot reach another route
    (no '/', and dots escaped so that '..' is not a step up when the address is normalised)."""
    return quote(str(value), safe="").replace(".", "%2E")


# -- upload ------------------------------------------------------------------------------------
@dataclass
class UploadPlan:
    source: Path
    name: str  # path as the hub will show it
    size: int


def plan_uploads(paths: list[Path]) -> list[UploadPlan]:
    """Files and directory trees, with names relative to each argument's parent."""
    plans = []
    for root in paths:
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    plans.append(UploadPlan(p, str(p.relative_to(root.parent)), p.stat().st_size))
        elif root.is_file():
            plans.append(UploadPlan(root, root.name, root.stat().st_size))
        else:
            raise HubError(f"{root}: no such file or directory")
    return plans


def _state_path(state_dir: Path, client: HubClient, project: str, plan: UploadPlan) -> Path:
    st = plan.source.stat()
    ident = f"{client.url}|{project}|{plan.source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{plan.name}"
    return state_dir / (hashlib.sha256(ident.encode()).hexdigest()[:32] + ".json")


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


class SealedSource:
    """The crypt4gh stream of one local file, computable at any byte range on demand."""

    def __init__(self, source: Path, header: bytes, session_key: bytes, nonce_seed: bytes) -> None:
        self.source, self.header = source, header
        self.session_key, self.nonce_seed = session_key, nonce_seed
        self.plaintext_size = source.stat().st_size
        self.size = len(header) + c4gh.body_size_for(self.plaintext_size)

    def read(self, start: int, end: int) -> bytes:
        out = bytearray()
        if start < len(self.header):
            out += self.header[start:min(end, len(self.header))]
        b_start, b_end = max(start - len(self.header), 0), max(end - len(self.header), 0)
        if b_end > b_start:
            first = b_start // c4gh.CIPHER_SEGMENT_SIZE
            last = (b_end - 1) // c4gh.CIPHER_SEGMENT_SIZE
            with open(self.source, "rb") as fh:
                fh.seek(first * c4gh.SEGMENT_SIZE)
                plain = fh.read((last - first + 1) * c4gh.SEGMENT_SIZE)
            sealed = c4gh.seal_segments(self.session_key, first, plain, self.nonce_seed)
            offset = first * c4gh.CIPHER_SEGMENT_SIZE
            out += sealed[b_start - offset:b_end - offset]
        return bytes(out)


def plaintext_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def upload_file(client: HubClient, project: str, plan: UploadPlan, hub_public: bytes, *, state_dir: Path,
                workers: int = 4, on_bytes: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Upload one file (resuming a previous attempt if there is one); returns the hub's file record."""
    state_path = _state_path(state_dir, client, project, plan)
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    received: set[int] = set()
    part_size = 0
    if state:
        try:
            status = client.json("GET", f"/api/v1/uploads/{url_segment(state['upload_id'])}")
        except HubError:
            status = None
        if status and status["state"] == "receiving":
            received = {p["number"] for p in status["parts"]}
            part_size = status["part_size"]
        elif status and status["state"] != "failed":
            state_path.unlink(missing_ok=True)
            return client.json("GET", f"/api/v1/files/{url_segment(state['upload_id'])}")
        else:
            state = None
    if state is None:
        session_key, nonce_seed = os.urandom(32), os.urandom(32)
        header = c4gh.make_header([session_key], hub_public, None, seed=nonce_seed)
        source = SealedSource(plan.source, header, session_key, nonce_seed)
        created = client.json("POST", f"/api/v1/projects/{project}/uploads",
                              json={"path": plan.name, "size": source.size})
        part_size = created["part_size"]
        state = {"upload_id": created["id"], "session_key": session_key.hex(), "nonce_seed": nonce_seed.hex(),
                 "header": base64.b64encode(header).decode()}
        _write_private_json(state_path, state)
    source = SealedSource(plan.source, base64.b64decode(state["header"]), bytes.fromhex(state["session_key"]),
                          bytes.fromhex(state["nonce_seed"]))
    upload_id = url_segment(state["upload_id"])  # the hub's answer, as one segment of the paths below
    parts = range(1, -(-source.size // part_size) + 1)
    done_bytes = sum(min(part_size, source.size - (n - 1) * part_size) for n in received)
    on_bytes(done_bytes)

    def send(number: int) -> int:
        start = (number - 1) * part_size
        data = source.read(start, min(start + part_size, source.size))
        client.request("PUT", f"/api/v1/uploads/{upload_id}/parts/{number}", content=data,
                       headers={"Content-Type": "application/octet-stream"})
        on_bytes(len(data))
        return number

    with ThreadPoolExecutor(max(1, workers)) as pool:
        checksum = pool.submit(plaintext_sha256, plan.source)
        futures = [pool.submit(send, n) for n in parts if n not in received]
        for future in as_completed(futures):
            future.result()
        digest = checksum.result()
    record = client.json("POST", f"/api/v1/uploads/{upload_id}/complete", json={"sha256": digest})
    state_path.unlink(missing_ok=True)
    return record


SMALL_FILE_BYTES = 1024 * 1024  # files up to this size travel in bundles: one request for many
BUNDLE_BYTES = 4 * 1024 * 1024  # crypt4gh bytes per bundle: under any hub's part size (the bundle's limit)
BUNDLE_FILES = 1000


def stream_size(plan: UploadPlan, header_size: int) -> int:
    """The size of a file's crypt4gh stream (``header_size``: a header's size for the hub's key)."""
    return header_size + c4gh.body_size_for(plan.size)


def bundle_groups(plans: list[UploadPlan], header_size: int, *, max_bytes: int = BUNDLE_BYTES,
                  max_files: int = BUNDLE_FILES) -> list[list[UploadPlan]]:
    """The small files in order, cut into bundles of at most ``max_bytes`` of crypt4gh and ``max_files``
    (``header_size``: a crypt4gh header's size for the hub's key)."""
    groups: list[list[UploadPlan]] = []
    size = 0
    for plan in plans:
        stream = stream_size(plan, header_size)
        if not groups or size + stream > max_bytes or len(groups[-1]) >= max_files:
            groups.append([])
            size = 0
        groups[-1].append(plan)
        size += stream
    return groups


def bundle_state_path(state_dir: Path, client: HubClient, project: str, group: list[UploadPlan]) -> Path:
    """Where a bundle's key waits for the hub's answer: named by its files (source, size, mtime, name)."""
    ident = "\n".join(str(_state_path(state_dir, client, project, p)) for p in group)
    return state_dir / ("bundle-" + hashlib.sha256(ident.encode()).hexdigest()[:32] + ".json")


def upload_bundle(client: HubClient, project: str, group: list[UploadPlan], hub_public: bytes, *,
                  state_dir: Path) -> list[dict[str, Any]]:
    """Send small files as one bundle; returns the hub's records (id, path, state) in order.

    The bundle's key (random, kept in a resume file until the hub answered) makes a re-run safe: if the first
    attempt reached the hub but its answer was lost, sending the same key again returns the files it created
    instead of creating them twice."""
    state_path = bundle_state_path(state_dir, client, project, group)
    state = json.loads(state_path.read_text()) if state_path.exists() else {"key": os.urandom(16).hex()}
    _write_private_json(state_path, state)
    entries, streams = [], []
    for plan in group:
        data = plan.source.read_bytes()
        if len(data) != plan.size:
            raise HubError(f"{plan.source} changed while uploading; run the command again")
        stream = b"".join(c4gh.encrypt_stream([data], hub_public))
        entries.append({"path": plan.name, "size": len(stream), "sha256": hashlib.sha256(data).hexdigest()})
        streams.append(stream)
    manifest = json.dumps({"key": state["key"], "files": entries}).encode()
    try:
        records = client.json("POST", f"/api/v1/projects/{project}/bundles",
                              content=len(manifest).to_bytes(4, "big") + manifest + b"".join(streams),
                              headers={"Content-Type": "application/octet-stream"})
    except HubError as exc:
        if exc.head != "413" or len(group) == 1:
            raise
        # larger than this hub takes in one request (its part size): refused before anything was stored,
        # so the key is dropped and each half goes as a bundle of its own
        state_path.unlink(missing_ok=True)
        half = len(group) // 2
        return [*upload_bundle(client, project, group[:half], hub_public, state_dir=state_dir),
                *upload_bundle(client, project, group[half:], hub_public, state_dir=state_dir)]
    state_path.unlink(missing_ok=True)
    return list(records)


# -- download ----------------------------------------------------------------------------------
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # not on Windows: the is_symlink checks still refuse


def is_accession(value: object, prefix: str) -> bool:
    """Whether ``value`` is a plain accession of that kind (``SRF-7K2M9QX4TD``): safe as a file name and a URL
    segment as it is."""
    return isinstance(value, str) and re.fullmatch(rf"{re.escape(prefix)}-[0-9A-Z]{{1,64}}", value) is not None


def local_name(stored_path: object, file_id: str) -> str:
    """The relative name a download gets: the hub's stored path cleaned (``paths.safe_relative``), else the file's
    accession, else a name made here from the id's hash — never a value the hub sent as it is."""
    relative = safe_relative(stored_path) if isinstance(stored_path, str) else ""
    if relative:
        return relative
    if is_accession(file_id, "SRF"):
        return file_id
    return "unnamed-" + hashlib.sha256(str(file_id).encode()).hexdigest()[:16]


def contained(out_dir: Path, relative: str) -> Path:
    """``out_dir / relative`` once its folder is made, refused (``HubError``) where that folder resolves outside
    ``out_dir`` (a symbolic link on the way that leads out); nothing is created outside it."""
    root = out_dir.resolve()
    target = out_dir / relative
    if not target.parent.resolve().is_relative_to(root):  # resolve() follows the links that already exist
        raise HubError(f"refusing to write {relative}: it leads outside {out_dir} (a symbolic link on the way)")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _refuse_links(*paths: Path) -> None:
    for path in paths:
        if path.is_symlink():
            raise HubError(f"refusing to write through the symbolic link {path}")


def _open_for_writing(path: Path, *, append: bool = False) -> BinaryIO:
    """A file of a download, never opened through a symbolic link (checked before, and O_NOFOLLOW)."""
    _refuse_links(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | _NOFOLLOW
    return os.fdopen(os.open(path, flags, 0o666), "ab" if append else "wb")


def download_file(client: HubClient, file_id: str, out_dir: Path, *, key: str | None,
                  on_bytes: Callable[[int], None] = lambda n: None,
                  on_total: Callable[[int], None] = lambda n: None) -> tuple[Path, dict[str, Any]]:
    """Fetch one file re-encrypted to the caller's key into ``out_dir`` (resuming a ``.part``)."""
    file_url = f"/api/v1/files/{url_segment(file_id)}"
    meta = client.json("GET", file_url)
    # inside out_dir on any system, whatever path or id the hub sent (``local_name``, ``contained``)
    relative = local_name(meta.get("path") if isinstance(meta, dict) else None, file_id)
    name = relative.rsplit("/", 1)[-1] + ".c4gh"
    target = contained(out_dir, relative).with_name(name)
    partial = target.with_name(name + ".part")
    etag_file = target.with_name(name + ".etag")
    _refuse_links(target, partial, etag_file)
    params = {"key": key} if key else {}
    headers: dict[str, str] = {}
    have = partial.stat().st_size if partial.exists() and etag_file.exists() else 0
    if have:
        headers = {"Range": f"bytes={have}-", "If-Range": etag_file.read_text(encoding="utf-8")}
    delay = 0.5
    for attempt in range(1, client.attempts + 1):
        try:
            with client.http.stream("GET", f"{file_url}/content", params=params, headers=headers) as response:
                if response.status_code == 416 and have:  # already complete
                    break
                if response.status_code >= 400:
                    response.read()
                    if response.status_code in RETRY_STATUSES and attempt < client.attempts:
                        raise httpx.TransportError(str(problem_error(response)))
                    raise problem_error(response)
                with _open_for_writing(etag_file) as fh:
                    fh.write(response.headers.get("etag", "").encode("utf-8"))
                append = response.status_code == 206
                if not append:
                    have = 0
                length = int(response.headers.get("content-length", 0))
                on_total(have + length)
                on_bytes(have)
                with _open_for_writing(partial, append=append) as fh:
                    for chunk in response.iter_bytes(1024 * 1024):
                        fh.write(chunk)
                        have += len(chunk)
                        on_bytes(len(chunk))
                break
        except httpx.TransportError as exc:
            if attempt == client.attempts:
                raise HubError(f"download of {file_id} failed: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 20)
            if partial.exists() and etag_file.exists():
                have = partial.stat().st_size
                headers = {"Range": f"bytes={have}-", "If-Range": etag_file.read_text(encoding="utf-8")}
    os.replace(partial, target)  # replaces a link at ``target`` itself, never what it points to
    etag_file.unlink(missing_ok=True)
    return target, meta


def decrypt_and_verify(encrypted: Path, secret_key: bytes, expected_sha256: str) -> Path:
    """Decrypt next to the download (``name`` without ``.c4gh``) and check the hub's checksum."""
    if encrypted.suffix != ".c4gh":  # the plaintext would take the download's own name
        raise HubError(f"{encrypted.name}: not a .c4gh download")
    out = encrypted.with_suffix("")
    digest = hashlib.sha256()
    tmp = out.with_name(out.name + ".decrypting")
    _refuse_links(out)
    with open(encrypted, "rb") as src, _open_for_writing(tmp) as dst:
        opened = c4gh.open_header(c4gh.read_header(src), [secret_key])
        for chunk in c4gh.decrypt_segments(src, opened.session_keys):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != expected_sha256:
        tmp.unlink()
        raise HubError(f"{encrypted.name}: checksum mismatch after decryption")
    os.replace(tmp, out)
    return out


def iter_dataset_files(client: HubClient, dataset_id: str, version: int | None) -> Iterator[dict[str, Any]]:
    ds = client.json("GET", f"/api/v1/datasets/{url_segment(dataset_id)}")
    usable = [v for v in ds["versions"] if v["state"] in ("released", "deprecated")] or ds["versions"]
    if not usable:
        raise HubError(f"{dataset_id} has no versions")
    number = version or usable[-1]["number"]
    after = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if after:
            params["after"] = after
        page = client.json("GET", f"/api/v1/datasets/{url_segment(dataset_id)}/versions/{url_segment(number)}/files",
                           params=params)
        yield from page["files"]
        after = page["next_after"]
        if not after:
            return
