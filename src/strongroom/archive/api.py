"""Archive API: resumable uploads, files, datasets and versions, user keys, downloads."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import Field

from ..deps import DataRead, DataWrite, Db, HubDep, RawBody, UploadWrite, read_first
from ..errors import Invalid
from ..openapi import errors
from ..projects import service as projects
from ..schemas import Body, Int32, Int64, Out
from . import c4gh, downloads, service
from .backend import storage_for
from .keys import hub_keys
from .models import ArchiveFile, Dataset

router = APIRouter(prefix="/api/v1", tags=["archive"])


class FileOut(Out):
    id: str
    path: str
    state: str
    failure: str | None
    upload_size: int
    plaintext_size: int | None
    plaintext_sha256: str | None
    plaintext_md5: str | None
    body_size: int | None
    body_sha256: str | None
    created_at: dt.datetime
    ingested_at: dt.datetime | None


class NewUpload(Body):
    path: str = Field(min_length=1, max_length=1024, description="relative path, shown to people")
    size: Int64 = Field(gt=0, description="exact size of the crypt4gh stream that will be sent")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="SHA-256 of the plaintext, checked after ingest")


class UploadOut(Out):
    id: str
    state: str
    upload_size: int
    part_size: int
    parts: list[dict[str, int | str]]


class VersionOut(Out):
    number: int
    state: str
    file_count: int
    total_bytes: int
    created_at: dt.datetime
    released_at: dt.datetime | None
    # what the version was made with (strategies: each passing run whose output it holds)
    made_with: list[dict[str, str]] = []


class DatasetOut(Out):
    id: str
    title: str
    description: str
    owner_project: str
    shared_into_mine: bool
    versions: list[VersionOut]


class NewDataset(Body):
    title: str = Field(min_length=1, max_length=300)
    description: str = Field(default="", max_length=20_000)
    files: list[str] = Field(default_factory=list, max_length=100_000)


class DraftChange(Body):
    add: list[str] = Field(default_factory=list, max_length=100_000)
    remove: list[str] = Field(default_factory=list, max_length=100_000)


class Share(Body):
    project: str = Field(min_length=3, max_length=40)


class NewUserKey(Body):
    name: str = Field(min_length=1, max_length=100)
    public_key: str = Field(description="crypt4gh public key file content, or the 32-byte key in base64")


class UserKeyOut(Out):
    name: str
    fingerprint: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class FilePage(Out):
    version: int
    state: str
    files: list[FileOut]
    next_after: str | None


def _upload_out(f: ArchiveFile, parts: list, part_size: int) -> UploadOut:
    return UploadOut(id=f.id, state=f.state, upload_size=f.upload_size, part_size=part_size,
                     parts=[{"number": p.number, "size": p.size, "sha256": p.sha256} for p in parts])


def _dataset_out(db: Db, ds: Dataset, owner: bool) -> DatasetOut:
    from ..projects.models import Project

    versions = [VersionOut.model_validate(v).model_copy(update={"made_with": service.version_marks(db, ds, v)})
                for v in ds.versions if owner or v.state != "draft"]
    project = db.get(Project, ds.project_id)
    return DatasetOut(id=ds.id, title=ds.title, description=ds.description,
                      owner_project=project.slug if project else "?", shared_into_mine=not owner, versions=versions)


# -- hub key -----------------------------------------------------------------------------------
@router.get("/archive/public-key", summary="The hub's crypt4gh public key: encrypt uploads to it",
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def archive_public_key(db: Db, hub: HubDep) -> Response:
    fingerprint, keypair = hub_keys(hub, db).current
    return Response(c4gh.public_key_file(keypair.public), media_type="text/plain",
                    headers={"X-Key-Fingerprint": fingerprint})


# -- uploads -----------------------------------------------------------------------------------
@router.post("/projects/{slug}/uploads", response_model=UploadOut, status_code=201,
             summary="Start a resumable upload into the project's inbox (holds quota for `size`)")
@read_first  # the multipart upload is opened in object storage before any write lock is taken
def start_upload(db: Db, hub: HubDep, principal: UploadWrite, slug: str, body: NewUpload) -> UploadOut:
    access = projects.open_project(db, principal, slug)
    f = service.begin_upload(db, principal, access, storage_for(hub), path=body.path, size=body.size,
                             sha256=body.sha256)
    return _upload_out(f, [], hub.settings.archive.part_size)


class BundleFile(Body):
    path: str = Field(min_length=1, max_length=1024, description="relative path, shown to people")
    size: Int64 = Field(gt=0, description="exact size of this file's crypt4gh stream in the bundle")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="SHA-256 of the plaintext, checked after ingest")


class BundleManifest(Body):
    files: list[BundleFile] = Field(min_length=1, max_length=service.MAX_BUNDLE_FILES)
    key: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$",
                            description="chosen by the client (32 hex digits): sending the same bundle again "
                                        "with the same key returns the files it created, nothing twice")


class BundledFileOut(Out):
    id: str
    path: str
    state: str


@router.post("/projects/{slug}/bundles", response_model=list[BundledFileOut], status_code=201,
             summary="Upload many small crypt4gh files in one request (each still its own file)",
             description="The body is a 4-byte big-endian length N, then N bytes of JSON "
                         '`{"files": [{"path", "size", "sha256"}, ...]}`, then the crypt4gh streams of those '
                         "files back to back in the same order (each encrypted to the hub key). At most one "
                         "upload part in all (`part_size`). Quota is held for every file, each gets its own "
                         "audit event, and one ingest job decrypts, verifies and archives them as a group; "
                         "a damaged file fails alone. With a `key` in the manifest a retry is safe: the same "
                         "key again returns the files already created.",
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}})
@read_first  # the bundle is stored before any write lock is taken
def upload_bundle(principal: DataWrite, data: RawBody, db: Db, hub: HubDep, slug: str) -> list[BundledFileOut]:
    access = projects.open_project(db, principal, slug)  # first: nothing of an outsider's is even parsed
    if len(data) < 4 or len(data) < 4 + (n := int.from_bytes(data[:4], "big")):
        raise Invalid("a bundle starts with a 4-byte manifest length, then the manifest")
    try:
        manifest = BundleManifest.model_validate_json(data[4:4 + n])
    except ValueError as exc:
        raise Invalid(f"the bundle manifest is not valid: {exc}") from None
    rows = service.receive_bundle(db, principal, access, storage_for(hub),
                                  files=[(f.path, f.size, f.sha256) for f in manifest.files], data=data[4 + n:],
                                  key=manifest.key)
    return [BundledFileOut(id=f.id, path=f.path, state=f.state) for f in rows]


@router.get("/uploads/{file_id}", response_model=UploadOut, summary="An upload's received parts (to resume)")
def upload_status(db: Db, hub: HubDep, principal: UploadWrite, file_id: str) -> UploadOut:
    f, parts = service.upload_parts(db, principal, file_id)
    return _upload_out(f, parts, hub.settings.archive.part_size)


@router.put("/uploads/{file_id}/parts/{number}", summary="Send one part (raw bytes; retry freely)",
            openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}})
@read_first
def upload_part(principal: UploadWrite, data: RawBody, db: Db, hub: HubDep, file_id: str,
                number: Int32) -> dict[str, int | str]:
    # The body arrives after the token check has committed (no transaction open meanwhile); its size
    # is capped by the body limit (part size + 64 KiB) for this path.
    part = service.put_part(db, principal, storage_for(hub), file_id, number, data)
    return {"number": part.number, "size": part.size, "sha256": part.sha256}


class CompleteUpload(Body):
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="SHA-256 of the plaintext; ingest refuses the file if it differs")


@router.post("/uploads/{file_id}/complete", response_model=FileOut,
             summary="Finish an upload: parts are joined and the ingest job is queued")
def complete_upload(db: Db, hub: HubDep, principal: UploadWrite, file_id: str,
                    body: CompleteUpload | None = None) -> FileOut:
    return FileOut.model_validate(service.complete_upload(db, principal, storage_for(hub), file_id,
                                                          sha256=body.sha256 if body else None))


@router.delete("/uploads/{file_id}", status_code=204, summary="Cancel an upload and free its quota")
def cancel_upload(db: Db, hub: HubDep, principal: UploadWrite, file_id: str) -> None:
    service.abort_upload(db, principal, storage_for(hub), file_id)


# -- files -------------------------------------------------------------------------------------
@router.get("/projects/{slug}/files", response_model=list[FileOut],
            summary="The project's files (inbox and archive), in id order; page with `after`")
def list_files(db: Db, principal: DataRead, slug: str,
               state: Literal["receiving", "uploaded", "ingested", "verified", "ready", "failed"] | None = None,
               after: str | None = Query(None, max_length=32), limit: Int64 = Query(100, ge=1, le=1000)
               ) -> list[FileOut]:
    access = projects.open_project(db, principal, slug)
    return [FileOut.model_validate(f) for f in service.list_files(db, access, state=state, after=after,
                                                                   limit=limit)]


@router.get("/files/{file_id}", response_model=FileOut, summary="One file: state, sizes, checksums")
def get_file(db: Db, principal: DataRead, file_id: str) -> FileOut:
    return FileOut.model_validate(service.get_file(db, principal, file_id))


# -- datasets ----------------------------------------------------------------------------------
@router.post("/projects/{slug}/datasets", response_model=DatasetOut, status_code=201,
             summary="Create a dataset (version 1 is a draft) from archived files")
def create_dataset(db: Db, principal: DataWrite, slug: str, body: NewDataset) -> DatasetOut:
    access = projects.open_project(db, principal, slug)
    ds = service.create_dataset(db, principal, access, title=body.title, description=body.description,
                                files=body.files)
    db.flush()
    db.refresh(ds)
    return _dataset_out(db, ds, True)


@router.get("/projects/{slug}/datasets", response_model=list[DatasetOut],
            summary="Datasets the project owns or that are shared into it")
def list_datasets(db: Db, principal: DataRead, slug: str) -> list[DatasetOut]:
    access = projects.open_project(db, principal, slug)
    return [_dataset_out(db, ds, ds.project_id == access.project.id)
            for ds in service.list_datasets(db, principal, access)]


@router.get("/datasets/{dataset_id}", response_model=DatasetOut, summary="A dataset and its versions")
def get_dataset(db: Db, principal: DataRead, dataset_id: str) -> DatasetOut:
    ds, owner = service.visible_dataset(db, principal, dataset_id)
    return _dataset_out(db, ds, owner)


@router.post("/datasets/{dataset_id}/draft", response_model=VersionOut,
             summary="Add/remove files in the draft (a new draft starts from the latest release)")
def edit_draft(db: Db, principal: DataWrite, dataset_id: str, body: DraftChange) -> VersionOut:
    return VersionOut.model_validate(service.edit_draft(db, principal, dataset_id, add=body.add,
                                                        remove=body.remove))


@router.post("/datasets/{dataset_id}/versions/{number}/release", response_model=VersionOut,
             summary="Release a draft version: from now on it never changes")
def release(db: Db, principal: DataWrite, dataset_id: str, number: Int32) -> VersionOut:
    return VersionOut.model_validate(service.release_version(db, principal, dataset_id, number))


@router.post("/datasets/{dataset_id}/versions/{number}/deprecate", response_model=VersionOut,
             summary="Deprecate a released version")
def deprecate(db: Db, principal: DataWrite, dataset_id: str, number: Int32) -> VersionOut:
    return VersionOut.model_validate(service.deprecate_version(db, principal, dataset_id, number))


@router.get("/datasets/{dataset_id}/versions/{number}/files", response_model=FilePage,
            summary="A page of a version's files in id order (`after` = last id of the previous page)")
def version_files(db: Db, principal: DataRead, dataset_id: str, number: Int32,
                  after: str | None = Query(None, max_length=32),
                  limit: Int64 = Query(1000, ge=1, le=5000)) -> FilePage:
    version, files = service.version_files(db, principal, dataset_id, number, after=after, limit=limit)
    return FilePage(version=version.number, state=version.state, files=[FileOut.model_validate(f) for f in files],
                    next_after=files[-1].id if len(files) == limit else None)


@router.post("/datasets/{dataset_id}/shares", status_code=204,
             summary="Share the dataset read-only into another project (export right, fresh MFA)")
def share(db: Db, hub: HubDep, principal: DataWrite, dataset_id: str, body: Share) -> None:
    service.share_dataset(db, principal, dataset_id, body.project,
                          fresh_minutes=hub.settings.security.fresh_mfa_minutes)


@router.delete("/datasets/{dataset_id}/shares/{project}", status_code=204, summary="Stop sharing")
def unshare(db: Db, principal: DataWrite, dataset_id: str, project: str) -> None:
    service.unshare_dataset(db, principal, dataset_id, project)


# -- my keys -----------------------------------------------------------------------------------
def _parse_public_key(text: str) -> bytes:
    try:
        return c4gh.parse_public_key(text)
    except Exception:  # fall back to raw base64
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except ValueError as exc:
            raise Invalid("not a crypt4gh public key") from exc
        if len(raw) != 32:
            raise Invalid("not a crypt4gh public key") from None
        return raw


@router.get("/me/keys", response_model=list[UserKeyOut], summary="My crypt4gh public keys")
def my_keys(db: Db, principal: DataRead) -> list[UserKeyOut]:
    return [UserKeyOut.model_validate(k) for k in service.list_user_keys(db, principal)]


@router.post("/me/keys", response_model=UserKeyOut, status_code=201,
             summary="Register a crypt4gh public key: downloads are re-encrypted to it (fresh MFA)")
def add_key(db: Db, hub: HubDep, principal: DataRead, body: NewUserKey) -> UserKeyOut:
    return UserKeyOut.model_validate(service.add_user_key(
        db, principal, body.name, _parse_public_key(body.public_key),
        fresh_minutes=hub.settings.security.fresh_mfa_minutes))


@router.delete("/me/keys/{fingerprint}", status_code=204, summary="Revoke one of my keys")
def revoke_key(db: Db, principal: DataRead, fingerprint: str) -> None:
    service.revoke_user_key(db, principal, fingerprint)


# -- downloads ----------------------------------------------------------------------------------
@router.get("/files/{file_id}/content", summary="Download crypt4gh re-encrypted to your key (Range, If-Range)",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "partial"},
                       **errors(409, 416)})
def download(db: Db, hub: HubDep, principal: DataRead, file_id: str,
             key: str | None = Query(None, max_length=64, description="fingerprint of one of your keys"),
             plaintext_range: str | None = Query(None, max_length=40,
                                                 description="only the segments holding plaintext START-END"),
             range_header: Annotated[str | None, Header(alias="Range")] = None,
             if_range: Annotated[str | None, Header(alias="If-Range")] = None) -> Response:
    return downloads.encrypted(db, hub, principal, file_id, key=key, plaintext_range=plaintext_range,
                               range_header=range_header, if_range=if_range)


@router.get("/files/{file_id}/plaintext", summary="Stream plaintext for in-platform use (project members; Range)",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "partial"},
                       **errors(409, 416)})
def plaintext(db: Db, hub: HubDep, principal: DataRead, file_id: str,
              range_header: Annotated[str | None, Header(alias="Range")] = None) -> Response:
    return downloads.plaintext(db, hub, principal, file_id, range_header=range_header)
