"""Catalogue pages: the public catalogue, landing and terms pages, sample images, sitemaps and
robots.txt (no login), and the steward's editor under the dataset (members with write-data)."""

from __future__ import annotations

import re
import time
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import compile_path

from ..deps import (
    FLASH_COOKIE,
    SESSION_COOKIE,
    CsrfChecked,
    Db,
    HubDep,
    Posted,
    PostedForm,
    WebPrincipal,
    current_web_session,
    posted_form,
    read_cookie,
    show_viewer,
)
from ..errors import Conflict, Invalid, NotFound
from ..schemas import INT64_MAX, Int32, Int64, whole_number
from ..text import content_disposition
from ..web.templating import redirect_with, templates
from . import citations, conneg, dois, entries, generation, page_cache, png, privacy, search, signposting, sitemaps
from . import images as catalog_images
from . import landing as landing_pages
from .fields import EntryFields
from .vocab import DUO, DUO_PERMISSIONS, MODALITIES

router = APIRouter()
PostedImage = Annotated[Posted, Depends(posted_form(catalog_images.MAX_IMAGE_BYTES))]
# a withdrawal (a sample image may be why) reaches shared caches within the landing page's 30 s, not an hour
IMAGE_CACHE = f"public, max-age={page_cache.MAX_AGE_SECONDS}"


def _show_viewer_if_logged_in(request: Request, db: Db) -> None:
    """Public pages look the same to everyone; a logged-in visitor still gets their menu."""
    found = current_web_session(request, db)
    if found and found[0].stage == "active":
        show_viewer(request, found[1])


def _png(data: bytes, *, cache: str = IMAGE_CACHE) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": cache})


# -- public ------------------------------------------------------------------------------------
@router.get("/catalog")
def catalog(request: Request, db: Db, hub: HubDep, q: str = "", page: Int64 = 1) -> Response:
    _show_viewer_if_logged_in(request, db)
    selected = {f: request.query_params.getlist(f) for f in search.FACETS}
    result = search.search(db, q, selected, page=page)
    base = hub.settings.base_url.rstrip("/")
    return templates.TemplateResponse(request, "catalog_index.html", {
        "result": result, "headings": search.FACET_HEADINGS, "modality_names": MODALITIES,
        "canonical": f"{base}/catalog", "page_url": _page_url(q, result.selected),
        "filtered": bool(q or result.selected),
        # partner hubs' entries (federation's harvest): only unfiltered by facets, marked remote, never counted
        "remote": [] if result.selected else search.remote_entries(db, q),
    })


def _page_url(q: str, selected: dict[str, list[str]]) -> str:
    from urllib.parse import urlencode

    pairs = ([("q", q)] if q else []) + [(f, v) for f, vs in selected.items() for v in vs]
    return "/catalog?" + urlencode(pairs) + ("&" if pairs else "")


def _made_with(db: Db, view: Any) -> list[str]:
    """What the shown version was made with (e.g. a pseudonymization strategy): names, versions, checksums only;
    the reports are for the project's members."""
    from ..archive import service as archive
    from ..archive.models import Dataset

    ds = db.get(Dataset, view.entry.dataset_id)
    if view.version is None or ds is None:
        return []
    return [m["text"] for m in archive.version_marks(db, ds, view.version)]


# What the landing page URL can answer, in the order that breaks ties: the page first (a browser's
# */*), then every citation format; text/x-bibliography once per style, APA (the default) first.
LANDING_ROUTE = "/catalog/{slug}"
HTML_TYPES = ("text/html", "application/xhtml+xml")


def _documents(request: Request, view: landing_pages.LandingView) -> dict[str, str]:
    """Metadata documents the hub serves at their own address (DCAT-AP Turtle, RDF/XML): media type → path.
    Asked for on the landing URL, they answer 303 See Other there, as linked data does."""
    paths = {media_type: template.format(slug=view.entry.slug) for template, media_type in signposting.DESCRIBEDBY}
    return {media_type: path for media_type, path in paths.items() if _served(request, path)}


def _offers(view: landing_pages.LandingView, documents: dict[str, str]) -> list[conneg.Offer]:
    offers = [conneg.Offer(t) for t in HTML_TYPES]
    for r in citations.RENDERERS.values():
        if not r.offered(view):
            continue
        offers += ([conneg.Offer(r.media_type, (("style", s),)) for s in r.styles] if r.styles
                   else [conneg.Offer(r.media_type)])
    return offers + [conneg.Offer(t) for t in documents if t not in citations.RENDERERS]


@lru_cache(maxsize=1024)
def _path_regex(path_format: str) -> re.Pattern[str]:
    return compile_path(path_format)[0]


def _served(request: Request, path: str) -> bool:
    """Whether the hub answers GET ``path`` with a route of its own (not the landing page's catch)."""
    return any(isinstance(route.original_route, APIRoute) and route.path_format != LANDING_ROUTE
               and "GET" in (route.methods or ()) and _path_regex(route.path_format).match(path)
               for route in iter_route_contexts(request.app.routes))


def _citable(db: Db, hub: HubDep, slug: str, version: int | None = None) -> citations.Citable:
    entry = landing_pages.public_entry(db, slug)
    at = landing_pages.public_version(db, entry, version) if version is not None else None
    view = landing_pages.landing_view(db, entry, base_url=hub.settings.base_url,
                                      site_name=hub.settings.site_name, version=at)
    return citations.Citable(db, view, citations.csl_item(view), hub.settings)


def _anonymous(request: Request) -> bool:
    """A visitor whose page is the public one: no session (no menu) and no flash message waiting."""
    return read_cookie(request, SESSION_COOKIE) is None and read_cookie(request, FLASH_COOKIE) is None


def _from_cache(request: Request, page: page_cache.Page) -> Response:
    headers = {**page.headers, "ETag": page.etag, "Cache-Control": page_cache.CACHE_CONTROL}
    if page_cache.matches(request.headers.get("if-none-match"), page.etag):
        response = Response(status_code=304, headers=headers)
    else:
        response = Response(page.body, status_code=page.status, media_type=page.media_type, headers=headers)
    for listener in landing_pages.VIEW_LISTENERS:  # a revalidated page is a view too
        listener(request, response, page.dataset_id)
    return response


@router.get(LANDING_ROUTE)
def landing(request: Request, db: Db, hub: HubDep, slug: str, version: Int32 | None = None) -> Response:
    """The landing page, or by content negotiation (Accept) any citation format of the entry. ``?version=N``
    is where version N's DOI resolves: the page says which version that was. A withdrawn entry with a DOI
    answers 410 with a tombstone the DOI keeps resolving to.

    Anonymous visitors' pages carry a strong ETag and ``Cache-Control: public`` and are reused from this
    process's rendered-page cache while the entry's revision in the database is unchanged (``page_cache``)."""
    key = (id(hub.sessions), slug.lower(), version, request.headers.get("accept", ""))
    current, token = None, None
    if _anonymous(request):
        token = generation.token(hub.sessions.kw["bind"])  # before anything is read: see page_cache
        cached = page_cache.lookup(key)
        if cached is not None and token is not None and cached.token == token:
            return _from_cache(request, cached)  # nothing the page shows has changed since it was checked
        current = page_cache.revision(db, slug)
        # a person who since took an address the page shows: render anew, which withholds it
        if cached is not None and cached.revision == current \
                and not (cached.emails and privacy.user_emails(db, cached.emails)):
            return _from_cache(request, page_cache.revalidated(key, cached, token))
    response = _landing(request, db, hub, slug, version)
    if current is None or response.status_code != 200 or not response.media_type \
            or not response.media_type.startswith(HTML_TYPES):
        return response
    body = bytes(response.body)
    page = page_cache.Page(current, 200, body, response.media_type,
                           {k: v for k, v in response.headers.items() if k.lower() in ("vary", "link")},
                           page_cache.etag_of(body), _dataset_of(response), time.monotonic(),
                           frozenset(m.lower() for m in privacy.EMAIL_RE.findall(body.decode(errors="replace"))),
                           token, request.scope["path"], request.scope.get("route"), hub.sessions)
    page_cache.store(key, page)
    request.state.new_csrf_cookie = None  # a public, cacheable page sets no cookie (it has no form)
    response.headers["ETag"] = page.etag
    response.headers["Cache-Control"] = page_cache.CACHE_CONTROL
    if page_cache.matches(request.headers.get("if-none-match"), page.etag):
        response = Response(status_code=304, headers={**page.headers, "ETag": page.etag,
                                                      "Cache-Control": page_cache.CACHE_CONTROL},
                            background=response.background)
    return response


def _dataset_of(response: Response) -> str:
    return getattr(response, "strongroom_dataset_id", "")


def _landing(request: Request, db: Db, hub: HubDep, slug: str, version: int | None) -> Response:
    try:
        citable = _citable(db, hub, slug)
    except NotFound:
        gone = landing_pages.tombstone(db, slug, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
        if gone is None:
            raise
        _show_viewer_if_logged_in(request, db)
        return templates.TemplateResponse(request, "catalog_tombstone.html", {"t": gone}, status_code=410)
    documents = _documents(request, citable.view)
    offers = _offers(citable.view, documents)
    chosen = conneg.choose(request.headers.get("accept"), offers)
    headers = {"Vary": "Accept"}
    if chosen is None:
        available = "\n".join(sorted({o.media_type + "".join(f"; {k}={v}" for k, v in o.params) for o in offers}))
        return PlainTextResponse(f"None of the accepted media types is available. This page is available as:\n"
                                 f"{available}\n", status_code=406, headers=headers)
    view = citable.view
    links = signposting.landing_links(view, hub.settings.base_url, lambda path: _served(request, path))
    headers["Link"] = signposting.link_header(links)
    renderer = citations.RENDERERS.get(chosen.media_type)
    if renderer is None and chosen.media_type in documents:
        return RedirectResponse(documents[chosen.media_type], status_code=303, headers=headers)
    if renderer is None:
        _show_viewer_if_logged_in(request, db)
        page = templates.TemplateResponse(request, "catalog_entry.html", {
            "v": view, "preview": False, "links": links, "downloads": citations.downloads(view),
            "apa": citations.formatted(citable.item), "made_with": _made_with(db, view),
            "cited": next(((n, d) for n, d in view.version_dois if n == version), None),
            "mirror": next((n for n in (notice(db, view.entry.dataset_id) for notice in landing_pages.NOTICES)
                            if n), None)})
        page.headers.update(headers)
        page.headers["Vary"] = "Accept, Cookie"  # a logged-in visitor's page shows their menu
        page.strongroom_dataset_id = view.entry.dataset_id  # type: ignore[attr-defined]  # for the page cache
        for listener in landing_pages.VIEW_LISTENERS:  # only the page itself counts as a view
            listener(request, page, view.entry.dataset_id)
        return page
    style = chosen.param_map.get("style", citations.DEFAULT_STYLE)
    headers["Content-Location"] = f"/catalog/{view.entry.slug}/cite.{renderer.extension}" + (
        f"?style={style}" if renderer.styles else "")
    return Response(renderer.render(citable, style), media_type=citations.media_type_header(renderer),
                    headers=headers)


@router.get("/catalog/{slug}/cite.{extension}")
def cite(db: Db, hub: HubDep, slug: str, extension: str,
         style: str = Query(citations.DEFAULT_STYLE, max_length=40, description="apa or vancouver"),
         version: Int32 | None = Query(None, ge=1, description="a released version (default: the latest)")
         ) -> Response:
    """A citation download: BibTeX, RIS, CSL-JSON, a formatted reference, or the JSON-LD."""
    renderer = citations.by_extension(extension)
    if renderer is None:
        raise NotFound("no such citation format")
    if renderer.styles and style not in renderer.styles:
        raise Invalid(f"unknown citation style {style!r}; choose one of {', '.join(renderer.styles)}")
    citable = _citable(db, hub, slug, version)
    if not renderer.offered(citable.view):
        raise NotFound("this entry has no DOI: a DataCite record exists only for a DOI")
    name = citations.file_name(citable, renderer, style)
    return Response(renderer.render(citable, style), media_type=citations.media_type_header(renderer),
                    headers={"Content-Disposition": content_disposition(name)})


@router.get("/catalog/{slug}/terms")
def terms(request: Request, db: Db, hub: HubDep, slug: str) -> Response:
    entry = landing_pages.public_entry(db, slug)
    _show_viewer_if_logged_in(request, db)
    view = landing_pages.landing_view(db, entry, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
    return templates.TemplateResponse(request, "catalog_terms.html", {"v": view})


@router.get("/catalog/{slug}/images/{position}.png")
def image(db: Db, slug: str, position: Int32) -> Response:
    return _png(landing_pages.public_image(db, slug, position).png)


@lru_cache(maxsize=1)
def _card() -> bytes:
    return png.share_card()


@router.get("/catalog/{slug}/card.png")
def card(db: Db, slug: str) -> Response:
    landing_pages.public_entry(db, slug)
    return _png(_card())


@router.get("/sitemap.xml")
def sitemap(db: Db, hub: HubDep) -> Response:
    return Response(sitemaps.sitemap(db, hub.settings.base_url), media_type="application/xml")


@router.get("/sitemaps/{name}.xml")
def child_sitemap(db: Db, hub: HubDep, name: str) -> Response:
    return Response(sitemaps.child_sitemap(db, hub.settings.base_url, name), media_type="application/xml")


@router.get("/robots.txt")
def robots(hub: HubDep) -> Response:
    return PlainTextResponse(sitemaps.robots_txt(hub.settings.base_url))


# -- stewards ----------------------------------------------------------------------------------
def _lines(value: str) -> list[str]:
    return [p.strip() for p in value.replace("\n", ",").split(",") if p.strip()]


def _number(value: str) -> int | str | None:
    """A count as typed ("1,200" and "1 200" are 1200); anything else is left for ``EntryFields``."""
    text = value.strip().replace(" ", "").replace(",", "")
    if not text:
        return None
    try:
        return whole_number(text, "count", minimum=0, maximum=INT64_MAX)
    except Invalid:
        return text


def form_values(form) -> dict[str, Any]:  # starlette FormData
    """The editor's form as ``EntryFields`` reads it (validation is the model's, in the service)."""
    def get(key: str) -> str:
        return str(form.get(key, "") or "")

    return {
        "slug": get("slug"), "title": get("title"), "description": get("description"),
        "why_apply": get("why_apply"), "data_owner": get("data_owner"), "data_owner_url": get("data_owner_url") or None,
        "modalities": [str(m) for m in form.getlist("modalities")], "organs": _lines(get("organs")),
        "keywords": _lines(get("keywords")), "variables": _lines(get("variables")),
        **{name: _number(get(name)) for name in ("subjects", "studies", "series", "annotations", "size_bytes")},
        "time_start": get("time_start").strip() or None, "time_end": get("time_end").strip() or None,
        "terms_title": get("terms_title"), "terms_text": get("terms_text"),
        "access_conditions": get("access_conditions"), "duo_codes": [str(c) for c in form.getlist("duo_codes")],
        "how_to_cite": get("how_to_cite"), "doi": get("doi") or None, "contact_email": get("contact_email") or None,
        "apply_mode": get("apply_mode") or "hub", "external_url": get("external_url") or None,
        "creators": _creators(form), "publications": _lines(get("publications")),
    }


def _creators(form) -> list[dict[str, Any]]:  # starlette FormData
    """The creator rows of the editor; empty rows are dropped, the rest are checked by ``EntryFields``."""
    columns = [[str(v) for v in form.getlist(f"creator_{name}")]
               for name in ("kind", "family", "given", "orcid", "affiliation", "ror")]
    out = []
    for kind, family, given, orcid, affiliation, ror in zip(*columns, strict=False):
        if not any(v.strip() for v in (family, given, orcid, affiliation, ror)):
            continue
        person = kind != "organisation"
        out.append({"kind": "person" if person else "organisation",
                    **({"family_name": family.strip() or None, "given_name": given.strip() or None}
                       if person else {"name": family.strip()}),
                    "orcid": orcid.strip() or None, "affiliation": affiliation.strip() or None,
                    "ror": ror.strip() or None})
    return out


def _editor(request: Request, db: Db, hub, ds, entry, values: EntryFields, *,
            error: str | None = None, status: int = 200) -> Response:
    from ..projects.models import Project

    images = catalog_images.images_of(db, entry) if entry else []
    missing = entries.missing_for_publishing(entry) if entry else []
    if entry and entries.latest_released(db, ds.id) is None:
        missing.append("a released version of the dataset")
    return templates.TemplateResponse(request, "catalog_edit.html", {
        "ds": ds, "entry": entry, "f": values, "images": images, "error": error, "missing": missing,
        "doi_configured": hub.settings.doi.configured, "dois": dois.dois_of(db, ds.id),
        "project": db.get(Project, ds.project_id), "modalities": MODALITIES, "duo": DUO,
        "duo_permissions": DUO_PERMISSIONS, "public_url": f"{hub.settings.base_url.rstrip('/')}/catalog/",
    }, status_code=status)


@router.get("/datasets/{dataset_id}/catalog")
def edit_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, dataset_id: str) -> Response:
    ds, entry = entries.steward_entry(db, principal, dataset_id)
    values = EntryFields.of(entry) if entry else entries.suggested_fields(ds)
    return _editor(request, db, hub, ds, entry, values)


@router.post("/datasets/{dataset_id}/catalog", dependencies=[CsrfChecked])
def save(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal, dataset_id: str
         ) -> Response:
    values = form_values(posted.form)
    try:
        entries.save_entry(db, principal, dataset_id, values)
    except (Invalid, Conflict) as exc:
        db.rollback()
        ds, entry = entries.steward_entry(db, principal, dataset_id)
        # shown again as typed, so nothing the steward wrote is lost
        return _editor(request, db, hub, ds, entry, EntryFields.model_construct(**values), error=exc.detail,
                       status=exc.status)
    return redirect_with(request, f"/datasets/{dataset_id}/catalog", "Saved.")


@router.post("/datasets/{dataset_id}/catalog/publish", dependencies=[CsrfChecked])
def publish(request: Request, db: Db, principal: WebPrincipal, dataset_id: str) -> Response:
    entries.publish(db, principal, dataset_id)
    return redirect_with(request, f"/datasets/{dataset_id}/catalog", "Published: the catalogue entry is public now.")


@router.post("/datasets/{dataset_id}/catalog/unpublish", dependencies=[CsrfChecked])
def unpublish(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal, dataset_id: str) -> Response:
    entry = entries.unpublish(db, principal, dataset_id, str(posted.form.get("reason", "") or ""))
    if dois.effective_doi(db, dataset_id) or dois.dois_of(db, dataset_id):
        text = "Withdrawn: the public address shows a tombstone page that the DOI keeps resolving to."
    else:
        text = "Unpublished: the public address answers “not found” now."
    return redirect_with(request, f"/datasets/{entry.dataset_id}/catalog", text)


@router.post("/datasets/{dataset_id}/catalog/images", dependencies=[CsrfChecked])
def upload_image(request: Request, posted: PostedImage, db: Db, principal: WebPrincipal, dataset_id: str
                 ) -> Response:
    upload = posted.files.get("image")
    if upload is None:
        raise Invalid("choose a PNG file")
    catalog_images.add_image(db, principal, dataset_id, upload[2], str(posted.form.get("alt", "")))
    return redirect_with(request, f"/datasets/{dataset_id}/catalog#images", "Image added.")


@router.post("/datasets/{dataset_id}/catalog/images/{position}/delete", dependencies=[CsrfChecked])
def delete_image(request: Request, db: Db, principal: WebPrincipal, dataset_id: str, position: Int32) -> Response:
    catalog_images.remove_image(db, principal, dataset_id, position)
    return redirect_with(request, f"/datasets/{dataset_id}/catalog#images", "Image removed.")


@router.get("/datasets/{dataset_id}/catalog/images/{position}.png")
def steward_image(db: Db, principal: WebPrincipal, dataset_id: str, position: Int32) -> Response:
    return _png(catalog_images.steward_image(db, principal, dataset_id, position).png, cache="private, no-store")


@router.get("/datasets/{dataset_id}/catalog/preview")
def preview(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, dataset_id: str) -> Response:
    """The landing page as it will look, for the stewards only (never indexed)."""
    _, entry = entries.steward_entry(db, principal, dataset_id)
    if entry is None:
        raise NotFound("this dataset has no catalogue entry yet")
    view = landing_pages.landing_view(db, entry, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
    for img in view.images:
        img.url = f"/datasets/{dataset_id}/catalog/images/{img.position}.png"
    return templates.TemplateResponse(request, "catalog_entry.html", {"v": view, "preview": True,
                                                                      "made_with": _made_with(db, view)})
