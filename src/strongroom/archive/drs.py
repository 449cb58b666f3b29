"""GA4GH Data Repository Service 1.5 over the archive: files are blobs, dataset versions are bundles.

What a DRS client sees (docs/ga4gh.md has the whole surface and its conformance tests):

- A blob's ``size`` and ``checksums`` (sha-256, md5) describe the file's plaintext: the bytes the
  ``plaintext`` access method serves, and what the ``crypt4gh`` stream decrypts to. A client that
  downloads through ``plaintext`` and verifies the checksums succeeds.
- ``access_methods`` lists the methods this caller may use, ``plaintext`` first: ``plaintext`` (decrypted by
  the hub, for members of the owning project or of one it is shared into, only when ``authz.plaintext_basis``
  lets it out: a workspace's own token from the workspace, or downloads open for the project) and ``crypt4gh`` (the file
  re-encrypted to the caller's registered key, when downloads to own machines are allowed). The
  ``crypt4gh`` method declares its own bytes under ``crypt4gh``: the exact ``size`` of the stream for
  that key and the sha-256 of its body (the bytes after the per-recipient header, the same for
  everyone). If the caller may use neither, ``crypt4gh`` is listed and ``/access`` says why (403).
- ``/access`` answers at once: 403 when downloads are locked for the caller (the project's setting or
  the dataset's access policy) or no key is registered, 404 for anything the caller may not read.
- ``AccessURL.headers`` is empty: the URL takes the same ``Authorization: Bearer`` token as the DRS call
  (``authorizations`` on each method says so). Passports sent in a POST body come back as the one header
  the URL needs for them, ``X-GA4GH-Passport``.
- A bundle is a dataset's latest visible version (for a grant to one version, that version:
  ``service.visible_dataset`` lists only the granted ones): ``name`` is the accession, the title opens
  ``description``, ``contents[].name`` are portable names (folders joined with ``__``; the full path is in
  the blob's ``aliases``), and the bundle's checksums follow the DRS rule: the digest of the sorted,
  concatenated member checksums of that type.
- Errors on these routes are DRS ``Error`` bodies (``msg``, ``status_code``; app.py); the rest of the
  API answers RFC 9457 problem documents.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field, StringConstraints

from .. import __version__
from ..deps import DataRead, Db, HubDep
from ..errors import DomainError, Forbidden, Invalid, NotFound
from ..identity.principal import Principal
from ..schemas import Body
from . import service
from .authz import plaintext_basis, require_download_allowed
from .models import READY, ArchiveFile, DatasetVersion

router = APIRouter(prefix="/ga4gh/drs/v1", tags=["GA4GH DRS"])
MAX_BULK = 1000  # bulk_object_ids / bulk_object_access_ids per request; more is 413
PLAINTEXT, CRYPT4GH = "plaintext", "crypt4gh"
ACCESS_IDS = (PLAINTEXT, CRYPT4GH)
BUNDLE_PAGE = 5000
NO_OBJECT = "no such object"

# Passports sent in a POST body are verified like the X-GA4GH-Passport header, by the capability that
# owns visas (access: ``visas_api.body_passports``), before the route's first query; each entry holds
# them for the read check while the route runs, and forgets them when it ends.
PASSPORT_VERIFIERS: list[Callable[[Request, list[str]], AbstractAsyncContextManager[None]]] = []


class TooLarge(DomainError):
    status, code = 413, "too-large"


def _host(hub: HubDep) -> str:
    return hub.settings.base_url.split("://", 1)[-1].rstrip("/")


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def portable_name(text: str) -> str:
    """A POSIX portable filename ([A-Za-z0-9._-]), as DRS asks of ``name``: accents dropped, anything
    else an underscore."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", ascii_text).strip("_") or "file"
    return name[:255]


def _bundle_checksums(members: list[ArchiveFile]) -> list[dict[str, str]]:
    """DRS: a bundle's checksum is the digest of the sorted, concatenated checksums of its contents."""
    out = []
    for kind, attr, digest in (("sha-256", "plaintext_sha256", hashlib.sha256), ("md5", "plaintext_md5", hashlib.md5)):
        joined = "".join(sorted(getattr(f, attr) or "" for f in members))
        out.append({"type": kind, "checksum": digest(joined.encode()).hexdigest()})
    return out


def _authorizations(hub: HubDep) -> dict[str, Any]:
    issuers = [hub.settings.base_url.rstrip("/")]
    issuers += [t.issuer for t in hub.settings.access.trusted_visa_issuers if t.issuer not in issuers]
    return {"supported_types": ["BearerAuth", "PassportAuth"], "passport_auth_issuers": issuers}


def _crypt4gh_bytes(hub: HubDep, db: Db, principal: Principal, f: ArchiveFile) -> dict[str, Any] | None:
    """The size of the crypt4gh stream this caller gets (header for their newest key + the stored body),
    and the sha-256 of the body; None while they have no key registered."""
    try:
        key = service.user_key(db, principal, None)
    except Invalid:
        return None
    assert f.body_size is not None
    header = service.download_header(hub, db, f, key.public_key)
    return {"recipient_key": key.fingerprint, "size": len(header) + f.body_size, "header_size": len(header),
            "body_size": f.body_size, "body_checksums": [{"type": "sha-256", "checksum": f.body_sha256}],
            "decrypts_to": "the object's size and checksums"}


def _plaintext_allowed(hub: HubDep, db: Db, principal: Principal, grant: service.ReadGrant) -> bool:
    """The ``plaintext`` method is offered only when ``/files/{id}/plaintext`` would serve it to this caller
    (members' grants, and ``authz.plaintext_basis``: a workspace's token from the workspace, or downloads open)."""
    if grant.basis not in ("owner", "share"):
        return False
    try:
        plaintext_basis(db, hub.settings, principal, grant)
    except Forbidden:
        return False
    return True


def _methods(hub: HubDep, db: Db, principal: Principal, f: ArchiveFile, grant: service.ReadGrant
             ) -> list[dict[str, Any]]:
    auth = _authorizations(hub)
    methods: list[dict[str, Any]] = []
    if _plaintext_allowed(hub, db, principal, grant):
        methods.append({"type": "https", "access_id": PLAINTEXT, "available": True, "authorizations": auth})
    try:  # the grant is already read: only the download rule is left to ask
        require_download_allowed(db, grant)
        may_download = f.state == READY
    except Forbidden:
        may_download = False
    if may_download or not methods:
        method: dict[str, Any] = {"type": "https", "access_id": CRYPT4GH, "available": True,
                                  "authorizations": auth}
        described = _crypt4gh_bytes(hub, db, principal, f) if may_download else None
        if described:
            method["crypt4gh"] = described
        methods.append(method)
    return methods


def _read_grant(db: Db, principal: Principal, f: ArchiveFile) -> service.ReadGrant:
    """The read check, answering exactly as for a made-up id when it fails (held, not yours, …)."""
    if f.state != READY:
        raise NotFound(NO_OBJECT)
    try:
        return service.authorize_read(db, principal, f)
    except NotFound:
        raise NotFound(NO_OBJECT) from None


def _file_object(hub: HubDep, db: Db, principal: Principal, f: ArchiveFile) -> dict[str, Any]:
    grant = _read_grant(db, principal, f)
    return {
        "id": f.id,
        "self_uri": f"drs://{_host(hub)}/{f.id}",
        "name": portable_name(f.path.rsplit("/", 1)[-1]),
        "size": f.plaintext_size,
        "created_time": _iso(f.created_at),
        "updated_time": _iso(f.ingested_at or f.created_at),
        "mime_type": "application/octet-stream",
        "checksums": [{"type": "sha-256", "checksum": f.plaintext_sha256},
                      {"type": "md5", "checksum": f.plaintext_md5}],
        "description": (f"{f.path}: size and checksums are of the plaintext; the crypt4gh access method "
                        "re-encrypts it to the caller's registered key")[:5000],
        "aliases": [f.path],
        "access_methods": _methods(hub, db, principal, f, grant),
    }


def _all_files(db: Db, principal: Principal, dataset_id: str, number: int) -> list[ArchiveFile]:
    files: list[ArchiveFile] = []
    after = None
    while True:
        _, page = service.version_files(db, principal, dataset_id, number, after=after, limit=BUNDLE_PAGE)
        files += page
        if len(page) < BUNDLE_PAGE:
            return files
        after = page[-1].id


def _contents_names(files: list[ArchiveFile]) -> list[str]:
    """Unique portable names; folders become ``__`` (as `strongroom download` names files)."""
    names: list[str] = []
    taken: set[str] = set()
    for f in files:
        name = portable_name("__".join(p for p in f.path.split("/") if p))
        if name in taken:
            name = f"{f.id}-{name}"[:255]
        taken.add(name)
        names.append(name)
    return names


def _bundle_object(hub: HubDep, db: Db, principal: Principal, dataset_id: str) -> dict[str, Any]:
    try:
        ds, owner = service.visible_dataset(db, principal, dataset_id)
    except NotFound:
        raise NotFound(NO_OBJECT) from None
    versions = [v for v in ds.versions if v.state in ("released", "deprecated") or owner]
    if not versions:
        raise NotFound("no released version")
    latest: DatasetVersion = versions[-1]
    files = [f for f in _all_files(db, principal, ds.id, latest.number) if f.state == READY]
    title = ds.title + (f"\n\n{ds.description}" if ds.description else "")
    return {
        "id": ds.id,
        "self_uri": f"drs://{_host(hub)}/{ds.id}",
        "name": portable_name(ds.id),
        "size": sum(f.plaintext_size or 0 for f in files),
        "created_time": _iso(latest.created_at),
        "updated_time": _iso(latest.released_at or latest.created_at),
        "version": str(latest.number),
        "description": title[:5000],
        "checksums": _bundle_checksums(files),
        "contents": [{"name": name, "id": f.id, "drs_uri": [f"drs://{_host(hub)}/{f.id}"]}
                     for name, f in zip(_contents_names(files), files, strict=True)],
    }


def _object(hub: HubDep, db: Db, principal: Principal, object_id: str) -> dict[str, Any]:
    if object_id.startswith("SRD-"):
        return _bundle_object(hub, db, principal, object_id)
    f = db.get(ArchiveFile, object_id)
    if f is None:
        raise NotFound(NO_OBJECT)
    return _file_object(hub, db, principal, f)


def _access_url(hub: HubDep, db: Db, principal: Principal, object_id: str, access_id: str,
                passports: list[str] | None) -> dict[str, Any]:
    """Decided now: the URL works for this caller, or the answer is 403/404 (never a URL that then fails)."""
    f = db.get(ArchiveFile, object_id)
    if f is None:
        raise NotFound(NO_OBJECT)
    grant = _read_grant(db, principal, f)
    if access_id not in ACCESS_IDS:
        raise NotFound(f"no access method {access_id[:100]!r}; this object has {', '.join(ACCESS_IDS)}")
    base = hub.settings.base_url.rstrip("/")
    if access_id == PLAINTEXT:
        if grant.basis not in ("owner", "share"):
            raise NotFound("no such access method for you: in-platform reading is for project members")
        plaintext_basis(db, hub.settings, principal, grant)  # 403 now, never a URL that then fails
        url = f"{base}/api/v1/files/{f.id}/plaintext"
    else:
        service.authorize_download(db, principal, f.id)
        try:
            key = service.user_key(db, principal, None)
        except Invalid as exc:
            raise Forbidden(exc.detail) from None
        url = f"{base}/api/v1/files/{f.id}/content?key={key.fingerprint}"
    out: dict[str, Any] = {"url": url}
    if passports:  # the download is authorised by the same visas, sent the way the URL reads them
        out["headers"] = ["X-GA4GH-Passport: " + ",".join(passports)]
    return out


async def _body_passports(request: Request) -> AsyncIterator[list[str]]:
    """The ``passports`` of a POST body, verified (by the access capability) before the route runs and
    in force until it returns."""
    try:
        data = await request.json()
    except ValueError:
        data = None  # FastAPI answers the malformed body
    raw = data.get("passports") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) and p for p in raw):
        yield []
        return
    async with AsyncExitStack() as stack:
        for verify in PASSPORT_VERIFIERS:
            await stack.enter_async_context(verify(request, raw))
        yield raw


BodyPassports = Annotated[list[str], Depends(_body_passports, scope="function")]
# DRS answers 400 to a malformed body (its specification's code), not 422 as the rest of the API: the rule every
# body's text obeys (no NUL, which PostgreSQL cannot store) is written into these strings' schema, so a request
# the document calls valid is never refused.
DrsText = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]
Passports = Field(None, max_length=50, description="GA4GH passports or visas (JWS compact); their visas "
                  "count like those of an X-GA4GH-Passport header")


@router.get("/service-info", summary="DRS service description")
def service_info(hub: HubDep) -> dict[str, Any]:
    return {
        "id": f"{'.'.join(reversed(_host(hub).split(':')[0].split('.')))}.strongroom",
        "name": f"{hub.settings.site_name} DRS",
        "type": {"group": "org.ga4gh", "artifact": "drs", "version": "1.5.0"},
        "description": "Encrypted medical imaging archive (crypt4gh); access needs a token and an approved basis",
        "organization": {"name": hub.settings.site_name, "url": hub.settings.base_url},
        "version": __version__,
        "maxBulkRequestLength": MAX_BULK,  # DrsService requires it at the root in 1.5 …
        "drs": {"maxBulkRequestLength": MAX_BULK},  # … and 2.0 moves it here
    }


@router.options("/objects/{object_id}", summary="How to authorise requests for an object")
def object_authorizations(hub: HubDep, object_id: str) -> dict[str, Any]:
    # the same answer for every id: it says how to ask, not whether the object exists
    return {"drs_object_id": object_id, **_authorizations(hub)}


@router.get("/objects/{object_id}", summary="A file (blob) or a dataset (bundle)")
def get_object(db: Db, hub: HubDep, principal: DataRead, object_id: str, expand: bool = False) -> dict[str, Any]:
    return _object(hub, db, principal, object_id)


class PostObject(Body):
    expand: bool = False
    passports: list[DrsText] | None = Passports


class PostAccess(Body):
    passports: list[DrsText] | None = Passports


class BulkRequest(Body):
    bulk_object_ids: list[DrsText] = Field(min_length=1)
    passports: list[DrsText] | None = Passports


class BulkAccessItem(Body):
    bulk_object_id: DrsText
    bulk_access_ids: list[DrsText] = Field(min_length=1, max_length=len(ACCESS_IDS))


class BulkAccessRequest(Body):
    bulk_object_access_ids: list[BulkAccessItem] = Field(min_length=1)
    passports: list[DrsText] | None = Passports


@router.post("/objects/access", summary="Access URLs for many objects at once (passports in the body)")
def bulk_access(db: Db, hub: HubDep, principal: DataRead, passports: BodyPassports,
                body: BulkAccessRequest) -> dict[str, Any]:
    wanted = [(item.bulk_object_id, access_id) for item in body.bulk_object_access_ids
              for access_id in dict.fromkeys(item.bulk_access_ids)]
    if len(body.bulk_object_access_ids) > MAX_BULK:
        raise TooLarge(f"at most {MAX_BULK} objects per request")
    resolved: list[dict[str, Any]] = []
    unresolved: dict[int, list[str]] = {}
    for object_id, access_id in wanted:
        try:
            url = _access_url(hub, db, principal, object_id, access_id, passports)
        except (NotFound, Forbidden, Invalid) as exc:
            unresolved.setdefault(exc.status, []).append(object_id)
            continue
        resolved.append({"drs_object_id": object_id, "drs_access_id": access_id, **url})
    return {
        "summary": {"requested": len(wanted), "resolved": len(resolved),
                    "unresolved": sum(len(v) for v in unresolved.values())},
        "resolved_drs_object_access_urls": resolved,
        "unresolved_drs_objects": [{"error_code": code, "object_ids": ids} for code, ids in sorted(unresolved.items())],
    }


@router.post("/objects/{object_id}", summary="A file or dataset, with passports in the body")
def post_object(db: Db, hub: HubDep, principal: DataRead, passports: BodyPassports, object_id: str,
                body: PostObject) -> dict[str, Any]:
    return _object(hub, db, principal, object_id)


@router.get("/objects/{object_id}/access/{access_id}", summary="Where to fetch the bytes")
def access_url(db: Db, hub: HubDep, principal: DataRead, object_id: str, access_id: str) -> dict[str, Any]:
    return _access_url(hub, db, principal, object_id, access_id, None)


@router.post("/objects/{object_id}/access/{access_id}", summary="Where to fetch the bytes, with passports in the body")
def post_access_url(db: Db, hub: HubDep, principal: DataRead, passports: BodyPassports, object_id: str,
                    access_id: str, body: PostAccess) -> dict[str, Any]:
    return _access_url(hub, db, principal, object_id, access_id, passports)


@router.post("/objects", summary="Many objects at once (passports in the body)")
def bulk_objects(db: Db, hub: HubDep, principal: DataRead, passports: BodyPassports,
                 body: BulkRequest) -> dict[str, Any]:
    if len(body.bulk_object_ids) > MAX_BULK:
        raise TooLarge(f"at most {MAX_BULK} objects per request")
    resolved, unresolved = [], []
    for object_id in dict.fromkeys(body.bulk_object_ids):
        try:
            resolved.append(_object(hub, db, principal, object_id))
        except NotFound:
            unresolved.append(object_id)
    return {
        "summary": {"requested": len(body.bulk_object_ids), "resolved": len(resolved),
                    "unresolved": len(unresolved)},
        "resolved_drs_object": resolved,
        "unresolved_drs_objects": [{"error_code": 404, "object_ids": unresolved}] if unresolved else [],
    }
