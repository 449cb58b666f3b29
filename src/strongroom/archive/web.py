"""Archive pages: a project's files (inbox, ingest status, errors), datasets and versions, small uploads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Header, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from ..deps import (
    CsrfChecked,
    Db,
    HubDep,
    Posted,
    PostedForm,
    WebPrincipal,
    client_ip,
    current_web_session,
    posted_form,
    read_first,
    show_viewer,
)
from ..errors import Forbidden, Invalid, MfaRequired, NotFound
from ..identity import service as identity
from ..identity.principal import Principal
from ..projects import service as projects
from ..schemas import Int32, bounded_text
from ..web.templating import redirect_with, templates
from . import service
from .backend import storage_for
from .models import Dataset

router = APIRouter()
# A dataset's public page, if it has one (catalog: its published landing page): where a dataset's URL —
# the ``value`` of the GA4GH visas naming it — leads anyone who may not open the dataset itself.
LANDING_PAGES: list[Callable[[Session, str], str | None]] = []
# In-platform ways to look at a dataset for this reader (dicomweb: the image viewer of a DICOM import dataset):
# each returns dicts with "href", "text" and optionally "hint".
DATASET_VIEWERS: list[Callable[[Session, Principal, Dataset], list[dict[str, str]]]] = []
# The form without JavaScript. With it, the page encrypts in the browser and uses the upload API
# (static/archive-upload.js), for files of any size. This fallback is kept in memory end to end: the
# whole form stays under the 1 MiB body limit, which is also below the size at which the form parser
# would spool a file to disk — so plaintext never touches a temp file.
BROWSER_UPLOAD_MAX = 960 * 1024
PostedUpload = Annotated[Posted, Depends(posted_form(BROWSER_UPLOAD_MAX))]


@router.get("/projects/{slug}/data")
def data_page(request: Request, db: Db, principal: WebPrincipal, slug: str, after: str | None = None) -> Response:
    access = projects.open_project(db, principal, slug)
    files = service.list_files(db, access, after=after, limit=200)
    datasets = service.list_datasets(db, principal, access)
    counts: dict[str, int] = {}
    for f in files:
        counts[f.state] = counts.get(f.state, 0) + 1
    return templates.TemplateResponse(request, "archive_data.html", {
        "access": access, "project": access.project, "files": files, "datasets": datasets,
        "counts": counts, "max_upload": BROWSER_UPLOAD_MAX, "error": None,
        "next_after": files[-1].id if len(files) == 200 else None,
    })


@router.post("/projects/{slug}/data/upload", dependencies=[CsrfChecked])
@read_first  # encrypting the file needs no lock
def browser_upload(request: Request, posted: PostedUpload, db: Db, hub: HubDep, principal: WebPrincipal,
                   slug: str) -> Response:
    filename, _, data = posted.files.get("file") or ("", "", b"")
    if len(data) > BROWSER_UPLOAD_MAX:
        raise Invalid("the browser takes files up to 960 KiB; use `strongroom upload` for larger ones")
    if not data:
        raise Invalid("the file is empty")
    access = projects.open_project(db, principal, slug)
    service.receive_small_plaintext(hub, db, principal, access, storage_for(hub),
                                    path=(filename or "upload").rsplit("/", 1)[-1], data=data)
    return redirect_with(request, f"/projects/{slug}/data#files",
                         f"{(filename or 'upload').rsplit('/', 1)[-1]} uploaded and encrypted.")


@router.post("/projects/{slug}/data/datasets", dependencies=[CsrfChecked])
def create_dataset(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal, slug: str) -> Response:
    form = posted.form
    access = projects.open_project(db, principal, slug)
    ds = service.create_dataset(db, principal, access, title=bounded_text(form.get("title", ""), "title", 300),
                                description=bounded_text(form.get("description", ""), "description", 20_000),
                                files=[str(x) for x in form.getlist("files")])
    return redirect_with(request, f"/datasets/{ds.id}", f"Dataset {ds.id} created (version 1, draft).")


def _public_page(db: Db, dataset_id: str, logged_in: bool) -> Response:
    for landing in LANDING_PAGES:
        url = landing(db, dataset_id)
        if url:
            return RedirectResponse(url, status_code=303)
    raise NotFound("this dataset has no public page" + ("" if logged_in else
                                                         "; log in to open it if you have access to it"))


@router.get("/datasets/{dataset_id}")
def dataset_page(request: Request, db: Db, dataset_id: str, version: Int32 | None = None,
                 after: str | None = None) -> Response:
    """The dataset for those who may see it; for everyone else (no login needed) its public page: the
    URL resolves, as a GA4GH visa's ``value`` should, instead of sending strangers to the login form."""
    found = current_web_session(request, db)
    if found is None or found[0].stage != "active":
        return _public_page(db, dataset_id, logged_in=False)
    principal = identity.session_principal(found[0], found[1], client_ip(request))
    show_viewer(request, found[1])
    try:
        ds, owner = service.visible_dataset(db, principal, dataset_id)
    except NotFound:
        return _public_page(db, dataset_id, logged_in=True)
    except Forbidden as ended:  # its project ended (``authz.refuse_if_ended``): its public page, as for anyone
        try:
            return _public_page(db, dataset_id, logged_in=True)
        except NotFound:
            raise ended from None
    versions = [v for v in ds.versions if owner or v.state != "draft"]
    shown = next((v for v in versions if v.number == version), versions[-1] if versions else None)
    files = service.version_files(db, principal, ds.id, shown.number, after=after, limit=500)[1] if shown else []
    from ..projects.models import Project

    return templates.TemplateResponse(request, "archive_dataset.html", {
        "ds": ds, "owner": owner, "versions": versions,
        "can_publish": owner and service.may_publish(db, principal, ds), "shown": shown, "files": files,
        "owner_project": db.get(Project, ds.project_id), "next_after": files[-1].id if len(files) == 500 else None,
        "downloadable": service.dataset_downloadable(db, principal, ds, owner),
        "marks": service.version_marks(db, ds, shown) if shown else [],
        "viewers": [v for provider in DATASET_VIEWERS for v in provider(db, principal, ds)],
    })


@router.get("/datasets/{dataset_id}/versions/{number}")
def version_page(dataset_id: str, number: Int32) -> Response:
    """A version's URL (a version-specific visa ``value``): the dataset page showing that version."""
    return RedirectResponse(f"/datasets/{dataset_id}?version={number}", status_code=303)


@router.post("/datasets/{dataset_id}/versions/{number}/release", dependencies=[CsrfChecked])
def release(request: Request, db: Db, principal: WebPrincipal, dataset_id: str, number: Int32) -> Response:
    service.release_version(db, principal, dataset_id, number)
    return redirect_with(request, f"/datasets/{dataset_id}?version={number}", f"Version {number} released.")


@router.post("/datasets/{dataset_id}/draft", dependencies=[CsrfChecked])
def edit_draft(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal, dataset_id: str
               ) -> Response:
    form = posted.form
    version = service.edit_draft(db, principal, dataset_id, add=[str(x) for x in form.getlist("add")],
                                 remove=[str(x) for x in form.getlist("remove")])
    return redirect_with(request, f"/datasets/{dataset_id}?version={version.number}",
                         f"Draft version {version.number} saved.")





@router.get("/account/keys")
def keys_page(request: Request, db: Db, principal: WebPrincipal) -> Response:
    return templates.TemplateResponse(request, "archive_keys.html",
                                      {"keys": service.list_user_keys(db, principal), "error": None})


@router.post("/account/keys", dependencies=[CsrfChecked])
def add_key(request: Request, db: Db, hub: HubDep, principal: WebPrincipal,
            name: Annotated[str, Form(max_length=100)], public_key: Annotated[str, Form(max_length=2000)]) -> Response:
    from . import c4gh

    try:
        raw = c4gh.parse_public_key(public_key)
    except (c4gh.C4ghError, ValueError):
        return templates.TemplateResponse(request, "archive_keys.html", {
            "keys": service.list_user_keys(db, principal),
            "error": "that is not a crypt4gh public key (paste the .pub file made by `strongroom keys generate`)"},
            status_code=422)
    try:
        service.add_user_key(db, principal, name, raw, fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    except MfaRequired as exc:
        return redirect_with(request, "/login/reauth?next=/account/keys",
                             f"{exc.detail[:1].upper()}{exc.detail[1:]}: confirm it's you, then add the key again.",
                             kind="error")
    return redirect_with(request, "/account/keys", f"Key “{name}” added: downloads are encrypted to it now.")


@router.post("/account/keys/{fingerprint}/revoke", dependencies=[CsrfChecked])
def revoke_key(request: Request, db: Db, principal: WebPrincipal, fingerprint: str) -> Response:
    service.revoke_user_key(db, principal, fingerprint)
    return redirect_with(request, "/account/keys", "Key revoked.")


@router.get("/files/{file_id}/download")
def download(db: Db, hub: HubDep, principal: WebPrincipal, file_id: str, key: str | None = None,
             range_header: Annotated[str | None, Header(alias="Range")] = None,
             if_range: Annotated[str | None, Header(alias="If-Range")] = None) -> Response:
    """The browser's download: re-encrypted to the user's newest registered key, resumable."""
    from . import downloads

    return downloads.encrypted(db, hub, principal, file_id, key=key, plaintext_range=None,
                               range_header=range_header, if_range=if_range, name_with_folders=True)


@router.get("/datasets/{dataset_id}/versions/{number}/download.zip")
def download_all(db: Db, hub: HubDep, principal: WebPrincipal, dataset_id: str, number: Int32) -> Response:
    """Every file of the version in one streamed ZIP, folders kept, each re-encrypted to the user's key."""
    from .zipdownload import dataset_zip

    return dataset_zip(db, hub, principal, dataset_id, number)
