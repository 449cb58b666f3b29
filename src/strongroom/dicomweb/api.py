"""DICOMweb routes under a project: QIDO-RS (search), WADO-RS (retrieve) and STOW-RS (store), PS3.18.

``/dicomweb/projects/{slug}/…``. Authentication: an API token with ``data:read`` (``data:write`` to store),
or the hub's own pages' session with their ``X-CSRF-Token`` header. No CORS headers are ever sent, so a
browser lets only pages of the hub's own origin read these answers. Errors are problem documents; a project,
study, series or instance the caller may not read is 404, exactly like one that does not exist.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import anyio.from_thread
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from ..archive.backend import storage_for
from ..archive.downloads import _byte_range as byte_range
from ..deps import Db, HubDep, read_first, require_scope_or_page
from ..errors import Conflict, DomainError, NotFound
from ..identity.principal import Principal
from ..openapi import PROBLEM_JSON, PROBLEM_REF, errors
from ..projects import quota
from ..projects import service as projects
from ..schemas import INT64_MAX, whole_number
from . import multipart, query, render, retrieve, store
from .attributes import INSTANCE, SERIES, STUDY, BadQuery
from .retrieve import Decryptor, Readable

router = APIRouter(prefix="/dicomweb/projects/{slug}", tags=["dicomweb"])
Reader = Annotated[Principal, Depends(require_scope_or_page("data:read"))]
Writer = Annotated[Principal, Depends(require_scope_or_page("data:write"))]
DICOM_JSON = "application/dicom+json"
UID = Path(pattern=r"^[0-9.]{1,64}$", description="a DICOM UID")


class NotAcceptable(DomainError):
    status, code = 406, "not-acceptable"


class UnsupportedMediaType(DomainError):
    status, code = 415, "unsupported-media-type"


def _param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


# Documented here, read by query.parse with every matching key (StudyDate=20200101-20201231, PatientName=DOE*,
# Modality=CT, StudyInstanceUID=1.2.3,1.2.4, or by tag: 00080060=CT).
QIDO_PARAMETERS = {"parameters": [
    _param("limit", "at most this many results (1-1000, default 100)", {"type": "integer", "minimum": 1,
                                                                         "maximum": 1000}),
    _param("offset", "skip this many results", {"type": "integer", "minimum": 0, "maximum": 1_000_000_000}),
    _param("includefield", "more attributes to return (keyword or tag, comma separated), or `all`; "
                           "attributes the index does not hold are left out",
           {"type": "array", "items": {"type": "string"}}),
    _param("fuzzymatching", "fuzzy matching is not offered: `true` is answered with exact matching and a "
                            "Warning header", {"type": "boolean"}),
]}
QIDO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "DICOM JSON: one dataset per match", "content": {DICOM_JSON: {"schema": {
        "type": "array", "items": {"type": "object"}}}}},
    **errors(400),
}


def _base(request: Request, slug: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/dicomweb/projects/{slug}"


def _qido(request: Request, results: Any) -> Response:
    headers = {"Cache-Control": "no-store"}
    if any(k == "fuzzymatching" and v.lower() == "true" for k, v in request.query_params.multi_items()):
        headers["Warning"] = '299 strongroom "The fuzzymatching parameter is not supported: exact matching used"'
    return JSONResponse(results, media_type=DICOM_JSON, headers=headers)


def _search(db: Db, principal: Principal, request: Request, slug: str, level: str, **keys: str) -> Response:
    scope = query.open_scope(db, principal, slug)
    q = query.parse(request.query_params.multi_items(), level)
    base = _base(request, slug)
    if level == STUDY:
        return _qido(request, query.studies(db, scope, q, base))
    if level == SERIES:
        return _qido(request, query.series(db, scope, q, base, **keys))
    return _qido(request, query.instances(db, scope, q, base, **keys))


@router.get("/studies", responses=QIDO_RESPONSES, openapi_extra=QIDO_PARAMETERS)
def search_studies(db: Db, principal: Reader, request: Request, slug: str) -> Response:
    """QIDO-RS: studies, with NumberOfStudyRelatedSeries/Instances and ModalitiesInStudy."""
    return _search(db, principal, request, slug, STUDY)


@router.get("/series", responses=QIDO_RESPONSES, openapi_extra=QIDO_PARAMETERS)
def search_series(db: Db, principal: Reader, request: Request, slug: str) -> Response:
    """QIDO-RS: every series of the project."""
    return _search(db, principal, request, slug, SERIES)


@router.get("/instances", responses=QIDO_RESPONSES, openapi_extra=QIDO_PARAMETERS)
def search_instances(db: Db, principal: Reader, request: Request, slug: str) -> Response:
    """QIDO-RS: every instance of the project."""
    return _search(db, principal, request, slug, INSTANCE)


@router.get("/studies/{study}/series", responses=QIDO_RESPONSES, openapi_extra=QIDO_PARAMETERS)
def search_study_series(db: Db, principal: Reader, request: Request, slug: str,
                        study: Annotated[str, UID]) -> Response:
    """QIDO-RS: the series of one study."""
    return _search(db, principal, request, slug, SERIES, study=study)


@router.get("/studies/{study}/instances", responses=QIDO_RESPONSES, openapi_extra=QIDO_PARAMETERS)
def search_study_instances(db: Db, principal: Reader, request: Request, slug: str,
                           study: Annotated[str, UID]) -> Response:
    """QIDO-RS: the instances of one study."""
    return _search(db, principal, request, slug, INSTANCE, study=study)


@router.get("/studies/{study}/series/{series}/instances", responses=QIDO_RESPONSES,
            openapi_extra=QIDO_PARAMETERS)
def search_series_instances(db: Db, principal: Reader, request: Request, slug: str, study: Annotated[str, UID],
                            series: Annotated[str, UID]) -> Response:
    """QIDO-RS: the instances of one series, in instance number order."""
    return _search(db, principal, request, slug, INSTANCE, study=study, series_uid=series)


# -- WADO-RS ------------------------------------------------------------------------------------------
def _accept(request: Request) -> list[tuple[str, dict[str, str]]]:
    """The Accept header's media ranges with their parameters (quality ignored: all are acceptable)."""
    out = []
    for item in (request.headers.get("accept") or "*/*").split(","):
        kind, *params = [p.strip() for p in item.split(";")]
        values = {}
        for p in params:
            k, _, v = p.partition("=")
            values[k.strip().lower()] = v.strip().strip('"')
        out.append((kind.lower(), values))
    return out


def _syntax_ok(wanted: str | None, stored: str) -> bool:
    native_le = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
    return wanted in (None, "", "*", stored) or (wanted in native_le and stored in native_le)


def _retrieve_form(request: Request, stored: list[str], *, single: bool) -> str:
    """``multipart`` or (one instance only) ``single``: what the Accept header allows; 406 if neither.
    Instances are sent as stored (no transcoding): a named transfer syntax must be the stored one."""
    for kind, params in _accept(request):
        dicom_parts = kind == "multipart/related" and params.get("type", "application/dicom") == "application/dicom"
        if (kind in ("*/*", "multipart/*") or dicom_parts) and all(
                _syntax_ok(params.get("transfer-syntax"), ts) for ts in stored):
            return "multipart"
        if single and kind == "application/dicom" and _syntax_ok(params.get("transfer-syntax"), stored[0]):
            return "single"
    raise NotAcceptable("instances are sent as multipart/related; type=\"application/dicom\" in their stored "
                        f"transfer syntax ({', '.join(sorted(set(stored)))})")


def _boundary(tag: str) -> str:
    return "strongroom-" + hashlib.sha256(tag.encode()).hexdigest()[:24]


def _readable(db: Db, hub: HubDep, principal: Principal, slug: str, study: str, series: str | None = None,
              sop: str | None = None, *, what: str) -> tuple[list[Readable], Decryptor]:
    """For the retrieves that hand out the instances' bytes (study, series, instance, frames): the download
    rules apply. Metadata and pictures are viewing (``_viewing``)."""
    scope = query.open_scope(db, principal, slug)
    readable = retrieve.authorize(db, principal, retrieve.find(db, scope, study, series, sop), download=True)
    dec = Decryptor.open(hub, db, storage_for(hub))
    for r in readable:
        dec.session_keys(r.file)  # opened now, inside the request: the stream needs no database
    retrieve.audit_read(db, principal, scope, readable, what)
    return readable, dec


def _instances_response(request: Request, readable: list[Readable], dec: Decryptor, *, single_ok: bool
                        ) -> Response:
    form = _retrieve_form(request, [r.instance.transfer_syntax_uid or "1.2.840.10008.1.2.1" for r in readable],
                          single=single_ok and len(readable) == 1)
    tag = retrieve.etag([r.file for r in readable], form)
    headers = {"ETag": tag, "Cache-Control": "private, no-store"}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    if form == "single":
        f = readable[0].file
        size = f.plaintext_size or 0
        wanted = byte_range(request.headers.get("range"), size) if (
            request.headers.get("if-range") in (None, tag)) else None
        start, end = wanted or (0, size)
        headers |= {"Accept-Ranges": "bytes", "Content-Length": str(end - start)}
        if wanted:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return StreamingResponse(retrieve.coalesce(dec.chunks(f, start, end)), status_code=206 if wanted else 200,
                                 headers=headers, media_type="application/dicom")
    boundary = _boundary(tag)
    files = [r.file for r in readable]

    def parts() -> Iterator[tuple[str, Iterator[bytes]]]:
        for f in files:
            yield "application/dicom", dec.chunks(f, 0, f.plaintext_size or 0)

    return StreamingResponse(retrieve.coalesce(retrieve.multipart(parts(), boundary)), headers=headers,
                             media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


BINARY = {"schema": {"type": "string", "format": "binary"}}
MULTIPART_DICOM: dict[int | str, dict[str, Any]] = {
    200: {"description": "the instances, each a Part 10 file",
          "content": {'multipart/related; type="application/dicom"': BINARY}},
    304: {"description": "Not modified (If-None-Match)"}, **errors(406, 409)}


@router.get("/studies/{study}", responses=MULTIPART_DICOM)
def retrieve_study(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                   study: Annotated[str, UID]) -> Response:
    """WADO-RS: every instance of a study, as stored (de-identified Part 10), decrypted in memory."""
    readable, dec = _readable(db, hub, principal, slug, study, what="study")
    return _instances_response(request, readable, dec, single_ok=False)


@router.get("/studies/{study}/series/{series}", responses=MULTIPART_DICOM)
def retrieve_series(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                    study: Annotated[str, UID], series: Annotated[str, UID]) -> Response:
    """WADO-RS: every instance of a series."""
    readable, dec = _readable(db, hub, principal, slug, study, series, what="series")
    return _instances_response(request, readable, dec, single_ok=False)


@router.get("/studies/{study}/series/{series}/instances/{sop}", responses={
    **MULTIPART_DICOM, 206: {"description": "part of the instance (Range, with Accept: application/dicom)",
                             "content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}}},
    **errors(416)})
def retrieve_instance(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                      study: Annotated[str, UID], series: Annotated[str, UID], sop: Annotated[str, UID]) -> Response:
    """WADO-RS: one instance; with ``Accept: application/dicom`` as a single body that honours ``Range``
    and ``If-Range`` (the ETag is stable: the archived plaintext never changes)."""
    readable, dec = _readable(db, hub, principal, slug, study, series, sop, what="instance")
    return _instances_response(request, readable, dec, single_ok=True)


PICTURES = frozenset({"rendered", "thumbnail"})


@dataclass
class Viewing:
    """Instances a viewing route (metadata, rendered, thumbnail) shows: no download right needed."""

    db: Session
    principal: Principal
    scope: query.Scope
    readable: list[Readable]
    dec: Decryptor
    downloader: bool  # the caller may also take the bytes home: any window, all binary values, reads aggregated


def _viewing(db: Db, hub: HubDep, principal: Principal, slug: str, study: str, series: str | None = None,
             sop: str | None = None, *, what: str) -> Viewing:
    scope = query.open_scope(db, principal, slug)
    readable = retrieve.authorize(db, principal, retrieve.find(db, scope, study, series, sop), download=False)
    downloader = retrieve.may_download(db, readable)
    dec = Decryptor.open(hub, db, storage_for(hub))
    if downloader or what not in PICTURES:  # pictures for anyone else are audited one by one (_rendered)
        retrieve.audit_read(db, principal, scope, readable, what)
    return Viewing(db, principal, scope, readable, dec, downloader)


METADATA: dict[int | str, dict[str, Any]] = {
    200: {"description": "DICOM JSON of each instance's header; pixel data as a BulkDataURI (for a caller who may "
                         "not download, binary values over 64 bytes are left out: waveforms, documents, LUTs)",
          "content": {DICOM_JSON: {"schema": {"type": "array", "items": {"type": "object"}}}}}}


def _metadata(request: Request, slug: str, view: Viewing) -> Response:
    base = _base(request, slug)
    out = []
    for r in view.readable:
        i = r.instance
        frames = ",".join(str(n) for n in range(1, (i.number_of_frames or 1) + 1))
        instance = f"{base}/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_instance_uid}"
        url = f"{instance}/frames/{frames}"
        out.append(retrieve.metadata(view.dec, r, url, downloader=view.downloader))
    return JSONResponse(out, media_type=DICOM_JSON, headers={"Cache-Control": "private, no-store"})


@router.get("/studies/{study}/metadata", responses=METADATA)
def study_metadata(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                   study: Annotated[str, UID]) -> Response:
    """WADO-RS: the metadata of every instance of a study (the headers only: no pixel data is decrypted)."""
    return _metadata(request, slug, _viewing(db, hub, principal, slug, study, what="metadata"))


@router.get("/studies/{study}/series/{series}/metadata", responses=METADATA)
def series_metadata(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                    study: Annotated[str, UID], series: Annotated[str, UID]) -> Response:
    """WADO-RS: the metadata of every instance of a series."""
    return _metadata(request, slug, _viewing(db, hub, principal, slug, study, series, what="metadata"))


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata", responses=METADATA)
def instance_metadata(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                      study: Annotated[str, UID], series: Annotated[str, UID], sop: Annotated[str, UID]
                      ) -> Response:
    """WADO-RS: one instance's metadata."""
    return _metadata(request, slug, _viewing(db, hub, principal, slug, study, series, sop, what="metadata"))


FRAME_LIST = r"^[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*$"  # frame numbers from 1, comma separated
MAX_FRAMES = 1000  # frame numbers in one request; each distinct frame is decrypted once


def _frame_numbers(frames: str) -> list[int]:
    """The frames asked for, each once, in the order first asked (a repeated number is one part)."""
    try:
        numbers = [int(n) for n in frames.split(",") if n.strip()]
    except ValueError:
        raise BadQuery("frames are numbers from 1, comma separated") from None
    if not numbers or any(n < 1 for n in numbers):
        raise BadQuery("frames are numbers from 1, comma separated")
    if len(numbers) > MAX_FRAMES:
        raise BadQuery(f"at most {MAX_FRAMES} frame numbers per request ({len(numbers)} asked): ask in several "
                       "requests, or retrieve the instance")
    return list(dict.fromkeys(numbers))


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}", responses={
    200: {"description": "the frames, in the order asked for, each a part",
          "content": {'multipart/related; type="application/octet-stream"': {
              "schema": {"type": "string", "format": "binary"}}}},
    304: {"description": "Not modified (If-None-Match)"}, **errors(400, 406, 409)})
def retrieve_frames(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                    study: Annotated[str, UID], series: Annotated[str, UID], sop: Annotated[str, UID],
                    frames: Annotated[str, Path(pattern=FRAME_LIST, max_length=60000)]) -> Response:
    """WADO-RS: frames by number (from 1; at most 1000 numbers, a repeated one sent once). Only the crypt4gh
    segments that hold them are decrypted. Native pixel data comes as ``application/octet-stream`` (little
    endian, as stored); encapsulated as its compressed bitstream (``image/jpeg``, ``image/jp2``,
    ``image/jls``…); no transcoding."""
    numbers = _frame_numbers(frames)
    readable, dec = _readable(db, hub, principal, slug, study, series, sop, what="frames")
    r = readable[0]
    ranges = retrieve.frame_ranges(r.instance, numbers)
    stored = r.instance.transfer_syntax_uid or "1.2.840.10008.1.2.1"
    media = retrieve.frame_media_type(stored)
    if not any(kind in ("*/*", "multipart/*") or (
            kind == "multipart/related" and params.get("type", "application/octet-stream") in (media, "*/*")
            and _syntax_ok(params.get("transfer-syntax"), stored)) for kind, params in _accept(request)):
        raise NotAcceptable(f"these frames are {media} in transfer syntax {stored} (no transcoding)")
    tag = retrieve.etag([r.file], "frames:" + ",".join(map(str, numbers)))
    headers = {"ETag": tag, "Cache-Control": "private, no-store"}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    boundary = _boundary(tag)
    f = r.file
    part_type = f"{media}; transfer-syntax={stored}"

    def parts() -> Iterator[tuple[str, Iterator[bytes]]]:
        for pieces in ranges:
            yield part_type, (chunk for start, end in pieces for chunk in dec.chunks(f, start, end))

    return StreamingResponse(retrieve.coalesce(retrieve.multipart(parts(), boundary)), headers=headers,
                             media_type=f'multipart/related; type="{media}"; boundary={boundary}')


PNG: dict[int | str, dict[str, Any]] = {
    200: {"description": "the frame, windowed, as an 8-bit PNG",
          "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
    **errors(400, 403, 406, 409)}
# Tells the hub's viewer whether its drags (windows of its own) will be rendered for this caller
CUSTOM_WINDOWS_HEADER = "Strongroom-Custom-Windows"


class WindowRefused(DomainError):
    status, code = 403, "custom-window-refused"


def _rendered(request: Request, view: Viewing, r: Readable, frame: int, *, window: str | None, what: str,
              max_side: int | None) -> Response:
    """One frame as a PNG. A caller who may not download gets only the windows the hub offers (the header's
    and the modality's presets: ``render.offered_windows``); each such picture is one audit event."""
    if not any(kind in ("*/*", "image/*", "image/png") for kind, _ in _accept(request)):
        raise NotAcceptable("rendered images are image/png")
    if (r.instance.transfer_syntax_uid or "1.2.840.10008.1.2.1") not in retrieve.NATIVE:
        raise NotAcceptable("only uncompressed pixel data is rendered here; retrieve the frames instead")
    try:
        win = render.parse_window(window)
    except ValueError as exc:
        raise BadQuery(str(exc)) from None
    (pieces,) = retrieve.frame_ranges(r.instance, [frame])
    pixels = render.Pixels.from_header(retrieve.header_dataset(view.dec, r))
    name = render.window_name(win, pixels)
    if name is None and not view.downloader:
        retrieve.audit_window_refused(view.db, view.principal, view.scope, r, frame, window or "")
        view.db.commit()  # the refusal stays on record although the request fails
        offered = {n: render.format_window(w) for n, w in render.offered_windows(pixels).items()}
        raise WindowRefused(
            "custom windows need the download right (this project's downloads are locked, or the dataset is for "
            "in-platform use only): leave out window for the image's own, or ask for one this image offers: "
            + ("; ".join(f"{n} {w}" for n, w in offered.items()) or "none"), windows=offered)
    data = b"".join(view.dec.read(r.file, start, end) for start, end in pieces)
    try:
        body = render.to_png(data, pixels, window=win, max_side=max_side)
    except render.NotRenderable as exc:
        raise NotAcceptable(str(exc)) from None
    if not view.downloader:
        used = win or (pixels.windows[0] if pixels.samples == 1 and pixels.windows else None)
        shown = f"{name} {render.format_window(used)}" if used else str(name)
        retrieve.audit_rendered(view.db, view.principal, view.scope, r, what, frame, shown)
    return Response(body, media_type="image/png", headers={
        "Cache-Control": "private, no-store", CUSTOM_WINDOWS_HEADER: "allowed" if view.downloader else "refused"})


Window = Annotated[str | None, Query(
    description="center,width[,linear]: the VOI window (default: the header's). A caller who may not download "
                "the images gets only the windows the hub offers (the header's own, and per modality a few "
                "named presets: CT soft tissue 40,400, lung -600,1500, bone 300,1500, brain 40,80); any other "
                "is 403 custom-window-refused", max_length=100)]


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered", responses=PNG)
def rendered_instance(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                      study: Annotated[str, UID], series: Annotated[str, UID], sop: Annotated[str, UID],
                      window: Window = None) -> Response:
    """WADO-RS: the instance's first frame rendered (modality LUT, VOI window) as PNG."""
    view = _viewing(db, hub, principal, slug, study, series, sop, what="rendered")
    return _rendered(request, view, view.readable[0], 1, window=window, what="rendered", max_side=None)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered", responses=PNG)
def rendered_frame(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                   study: Annotated[str, UID], series: Annotated[str, UID], sop: Annotated[str, UID],
                   frame: Annotated[int, Path(ge=1, le=100_000)], window: Window = None) -> Response:
    """WADO-RS: one frame rendered as PNG."""
    view = _viewing(db, hub, principal, slug, study, series, sop, what="rendered")
    return _rendered(request, view, view.readable[0], frame, window=window, what="rendered", max_side=None)


THUMBNAIL_SIDE = 128


def _thumbnail(request: Request, view: Viewing, r: Readable) -> Response:
    return _rendered(request, view, r, 1, window=None, what="thumbnail", max_side=THUMBNAIL_SIDE)


@router.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail", responses=PNG)
def instance_thumbnail(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                       study: Annotated[str, UID], series: Annotated[str, UID], sop: Annotated[str, UID]
                       ) -> Response:
    """WADO-RS: a small PNG of the instance's first frame (at most 128 pixels a side, the header's window)."""
    view = _viewing(db, hub, principal, slug, study, series, sop, what="thumbnail")
    return _thumbnail(request, view, view.readable[0])


@router.get("/studies/{study}/series/{series}/thumbnail", responses=PNG)
def series_thumbnail(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                     study: Annotated[str, UID], series: Annotated[str, UID]) -> Response:
    """WADO-RS: a small PNG of the series' middle instance."""
    view = _viewing(db, hub, principal, slug, study, series, what="thumbnail")
    return _thumbnail(request, view, view.readable[len(view.readable) // 2])


@router.get("/studies/{study}/thumbnail", responses=PNG)
def study_thumbnail(db: Db, hub: HubDep, principal: Reader, request: Request, slug: str,
                    study: Annotated[str, UID]) -> Response:
    """WADO-RS: a small PNG of the study's first series' middle instance."""
    view = _viewing(db, hub, principal, slug, study, what="thumbnail")
    first = [r for r in view.readable if r.instance.series_uid == view.readable[0].instance.series_uid]
    if not first:
        raise NotFound("no such study")
    return _thumbnail(request, view, first[len(first) // 2])


# -- STOW-RS ------------------------------------------------------------------------------------------
STORE_RESPONSE = {"schema": {"type": "object", "description": "Store Instances Response (PS3.18 Table 10.5.3-1): "
                                                              "ReferencedSOPSequence, FailedSOPSequence, RetrieveURL"}}
STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "every instance stored", "content": {DICOM_JSON: STORE_RESPONSE}},
    202: {"description": "some instances failed, or were stored but held in quarantine for review (WarningReason; "
                         "not served until released)", "content": {DICOM_JSON: STORE_RESPONSE}},
    409: {"description": "nothing stored: every instance failed (FailedSOPSequence), or the project's storage quota "
                         "does not allow them (a problem document when the declared size already exceeds it)",
          "content": {DICOM_JSON: STORE_RESPONSE, PROBLEM_JSON: {"schema": PROBLEM_REF}}},
    **errors(400, 413, 415),
}
STOW_BODY = {"requestBody": {"required": True, "description": "the instances, each a Part 10 file in its own part",
                             "content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}}}}


def _may_store(db: Db, principal: Principal, slug: str, declared: int | None) -> Any:
    """Who may add data over DICOMweb: a member with ``write-data`` (the archive's upload right) and ``import``
    (the right to bring DICOM in from outside, as the destination's and bulk imports' pages ask). Anyone
    else gets 404 as on every DICOMweb route; a body larger than the free quota is refused before it is read."""
    access = projects.open_project(db, principal, slug)
    access.require("write-data")
    access.require("import")
    if access.project.status != "active":
        raise Conflict("the project is closed")
    project = access.project
    free = max(0, project.quota_bytes - project.used_bytes - project.reserved_bytes)
    if declared is not None and declared > free:
        raise quota.QuotaExceeded(f"the project's storage quota does not allow {declared} more bytes ({free} free): "
                                  "nothing was stored", free_bytes=free)
    project_id = project.id
    db.commit()  # no transaction stays open while the body arrives
    return project_id


def _chunks(request: Request) -> Iterator[bytes]:
    """The request body as it arrives, for a route running in a worker thread: each chunk is awaited on
    the event loop, so neither the body nor the route's database work ever blocks the loop."""
    stream = request.stream()
    while True:
        try:
            yield anyio.from_thread.run(stream.__anext__)
        except StopAsyncIteration:
            return


def _stow(request: Request, db: Db, hub: HubDep, principal: Principal, slug: str, study: str | None) -> Response:
    kind, params = multipart.media_parameters(request.headers.get("content-type", ""))
    if kind != "multipart/related" or params.get("type", "application/dicom").lower() != "application/dicom":
        raise UnsupportedMediaType('send the instances as multipart/related; type="application/dicom" '
                                   "(one Part 10 file per part)")
    boundary = multipart.boundary_of(request.headers.get("content-type", ""))
    if boundary is None:
        raise BadQuery("the multipart/related content type needs a valid boundary parameter")
    declared = request.headers.get("content-length")
    size = whole_number(declared, "Content-Length", minimum=0, maximum=INT64_MAX) if declared else None
    project_id = _may_store(db, principal, slug, size)
    stow = store.begin(hub, principal, project_id, study,
                       f"DICOMweb STOW-RS by {principal.user.display_name}"[:300])
    reader = multipart.MultipartReader(boundary)
    part: Any = None  # the open spool file of the part being received
    try:
        try:
            for chunk in _chunks(request):
                for event in reader.feed(chunk):
                    if isinstance(event, multipart.Part):
                        path, content_type = stow.new_part_path(), event.content_type
                        part = open(path, "xb")  # noqa: SIM115 - closed at the part's end or on failure
                    elif isinstance(event, multipart.PartEnd):
                        part.close()
                        part = None
                        stow.add(path, content_type)
                    else:
                        part.write(event)
            reader.close()
        except multipart.MultipartError as exc:
            raise BadQuery(f"the body is not a valid multipart/related message: {exc}") from None
        if not stow.outcomes:
            raise BadQuery("the body holds no instance")
        result, answer = stow.finish(_base(request, slug))
    except BaseException as exc:  # malformed, too large, the connection lost: nothing stays
        if part is not None:
            part.close()
        stow.abandon(type(exc).__name__)
        raise
    headers = {"Cache-Control": "no-store"}
    held = sum(1 for o in result.outcomes if o.warning is not None)
    if result.quota_exceeded:
        headers["Warning"] = f'299 strongroom "{store.QUOTA_REASON}: nothing was stored"'
    elif held:
        headers["Warning"] = (f'299 strongroom "{held} instance(s) held in quarantine for review by verification: '
                              'not served until released"')
    return JSONResponse(answer, status_code=result.status, media_type=DICOM_JSON, headers=headers)


@router.post("/studies", responses=STOW_RESPONSES, openapi_extra=STOW_BODY, status_code=200)
@read_first  # the body is processed long after the checks; its rows are written in a transaction of their own
def store_instances(request: Request, db: Db, hub: HubDep, principal: Writer, slug: str) -> Response:
    """STOW-RS: store instances (a `multipart/related; type="application/dicom"` body, streamed) into the
    project through the DICOM destination's pipeline: de-identification, verification, quarantine, the
    encrypted archive. Needs the `write-data` and `import` rights; the answer names the de-identified UIDs."""
    return _stow(request, db, hub, principal, slug, None)


@router.post("/studies/{study}", responses=STOW_RESPONSES, openapi_extra=STOW_BODY, status_code=200)
@read_first
def store_study_instances(request: Request, db: Db, hub: HubDep, principal: Writer, slug: str,
                                study: Annotated[str, UID]) -> Response:
    """STOW-RS into one study: an instance of another study (by its original or its de-identified Study
    Instance UID) fails with 0xA900 and is not stored."""
    return _stow(request, db, hub, principal, slug, study)
