"""Sync manifests (pure: no web or database imports): what an origin hub pushes to a peer, signed with the
origin's hub signing key, and the peer's check of its shape.

A manifest names the origin and the recipient (by signing key id, so it cannot be replayed to another hub),
the dataset (accession; title, description and owner from its published catalogue entry, never the archive's
internal ones; ``published: true``; its page at the origin, who decides access and whether approved users may
download) and, per file, its path, body size and SHA-256, plaintext size and SHA-256, and the
crypt4gh header re-encrypted to the recipient's archive key. The canonical form is JSON with sorted keys
and no spaces; the signature is detached (``signing.sign_document``).

A registered peer may still be malicious: what a manifest carries onto this hub's pages and disks is held to
this hub's own rules. A file's path must pass the rule every local upload passes (``archive.paths``), and the
dataset's page must be an address under the origin's pinned one (``url_under``: it becomes a link on the mirror's
public page and the name the origin's visas give the mirror).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from ..archive.paths import PATH_RULE, is_archive_path

FORMAT = "strongroom.sync/1"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_FILES = 100_000
MAX_URL = 1000  # federation_mirrors.origin_url, federation_remote_entries.landing_url
# RFC 3986's characters only: no whitespace, control characters, backslashes, quotes or angle brackets
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ManifestError(ValueError):
    """A manifest this hub will not accept; ``str()`` says why."""


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def url_under(url: object, base: str) -> bool:
    """Whether ``url`` is an address at the peer whose pinned address is ``base``: http(s) with the same scheme,
    host and port, no credentials, and a path at or below ``base``'s (no ``.`` or ``..`` segment, encoded or
    not). Anything else a peer sends as a link (``javascript:``, ``data:``, ``//host``, another host, an
    address with leading blanks) is refused: it would be a link on this hub's public pages."""
    if not isinstance(url, str) or len(url) > MAX_URL or not _URL_CHARS.fullmatch(url):
        return False
    try:
        u, b = urlsplit(url), urlsplit(base)
        scheme = u.scheme.lower()
        if scheme not in _DEFAULT_PORTS or scheme != b.scheme.lower() or "@" in u.netloc:
            return False
        if not u.hostname or u.hostname != (b.hostname or "").lower():
            return False
        if (u.port or _DEFAULT_PORTS[scheme]) != (b.port or _DEFAULT_PORTS[scheme]):
            return False
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        return False
    if any(_dot_segment(seg) for seg in u.path.split("/")):
        return False
    prefix = b.path.rstrip("/")
    return u.path == prefix or u.path.startswith(prefix + "/")


def _dot_segment(segment: str) -> bool:
    """``.`` or ``..`` however a server may read the segment: decoded until stable (``%252e``; still encoded
    after that: refused), split at encoded slashes and backslashes, without ``;`` parameters (``..;`` is ``..``
    to Tomcat and Spring)."""
    for _ in range(5):
        decoded = unquote(segment)
        if decoded == segment:
            break
        segment = decoded
    return any(part.split(";", 1)[0].strip() in (".", "..") for part in re.split(r"[/\\]", segment)) \
        or "%" in segment


def check(doc: Any, *, origin: str, recipient_key_id: str) -> dict[str, Any]:
    """The manifest, if its shape holds and it is from ``origin`` to this hub; ManifestError otherwise."""
    def need(cond: bool, why: str) -> None:
        if not cond:
            raise ManifestError(why)

    need(isinstance(doc, dict) and doc.get("format") == FORMAT, f"not a {FORMAT} manifest")
    need(doc.get("origin") == origin, "the manifest names another origin than the signing peer")
    need(doc.get("recipient_key_id") == recipient_key_id, "the manifest is addressed to another hub")
    need(isinstance(doc.get("sync_id"), str) and bool(ID.match(doc["sync_id"])), "bad sync_id")
    ds = doc.get("dataset")
    need(isinstance(ds, dict) and isinstance(ds.get("id"), str) and bool(ID.match(ds["id"])), "bad dataset id")
    for name in ("title", "description", "url", "owner"):
        need(isinstance(ds.get(name), str), f"dataset.{name} must be a string")
    need(url_under(ds["url"], origin), "dataset.url must be an http(s) address at the origin's pinned address "
         f"({origin}), without credentials")
    need(isinstance(ds.get("applicant_download"), bool), "dataset.applicant_download must be true or false")
    # Deny by default: the peer publishes the manifest's texts, so they must be the origin's published catalogue
    # entry's (an origin from before this sent its internal archive title and description, and withdrawn data)
    need(ds.get("published") is True, "the dataset is not published in the origin's catalogue")
    files = doc.get("files")
    need(isinstance(files, list) and 0 < len(files) <= MAX_FILES, "files must be a non-empty list")
    seen = set()
    for f in files:
        need(isinstance(f, dict) and isinstance(f.get("id"), str) and bool(ID.match(f["id"])), "bad file id")
        need(f["id"] not in seen, "a file is listed twice")
        seen.add(f["id"])
        need(is_archive_path(f.get("path")), f"bad file path {str(f.get('path'))[:100]!r}: must be {PATH_RULE}")
        for name in ("body_size", "plaintext_size"):
            need(isinstance(f.get(name), int) and not isinstance(f[name], bool) and f[name] >= 0, f"bad {name}")
        for name in ("body_sha256", "plaintext_sha256"):
            need(isinstance(f.get(name), str) and bool(HEX64.match(f[name])), f"bad {name}")
        try:
            header = base64.b64decode(f.get("header", ""), validate=True)
        except (ValueError, TypeError):
            header = b""
        need(header.startswith(b"crypt4gh"), "bad crypt4gh header")
    versions = doc.get("versions")
    need(isinstance(versions, list) and len(versions) > 0, "versions must be a non-empty list")
    for v in versions:
        need(isinstance(v, dict) and isinstance(v.get("number"), int) and v["number"] > 0, "bad version number")
        need(isinstance(v.get("files"), list) and all(i in seen for i in v["files"]),
             "a version names a file the manifest does not carry")
        need(isinstance(v.get("note", ""), str), "bad version note")
    return doc


def file_entry(doc: dict[str, Any], file_id: str) -> dict[str, Any] | None:
    return next((f for f in doc["files"] if f["id"] == file_id), None)
