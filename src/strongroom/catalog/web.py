"""Catalogue pages: the public catalogue, landing and terms pages, sample images, sitemaps and
robots.txt (no login), and the steward's editor under the dataset (members with write-data)."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from ..deps import (
    CsrfChecked,
    Db,
    HubDep,
    Posted,
    PostedForm,
    WebPrincipal,
    current_web_session,
    posted_form,
    show_viewer,
)
from ..errors import Conflict, Invalid, NotFound
from ..schemas import INT64_MAX, Int32, Int64
from ..web.templating import templates
from . import png, service
from .vocab import DUO, DUO_PERMISSIONS, MODALITIES

router = APIRouter()
PostedImage = Annotated[Posted, Depends(posted_form(service.MAX_IMAGE_BYTES))]
IMAGE_CACHE = "public, max-age=3600"


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
    selected = {f: request.query_params.getlist(f) for f in service.FACETS}
    result = service.search(db, q, selected, page=page)
    base = hub.settings.base_url.rstrip("/")
    return templates.TemplateResponse(request, "catalog_index.html", {
        "result": result, "headings": service.FACET_HEADINGS, "modality_names": MODALITIES,
        "canonical": f"{base}/catalog", "page_url": _page_url(q, result.selected),
        "filtered": bool(q or result.selected),
    })


def _page_url(q: str, selected: dict[str, list[str]]) -> str:
    from urllib.parse import urlencode

    pairs = ([("q", q)] if q else []) + [(f, v) for f, vs in selected.items() for v in vs]
    return "/catalog?" + urlencode(pairs) + ("&" if pairs else "")


@router.get("/catalog/{slug}")
def landing(request: Request, db: Db, hub: HubDep, slug: str) -> Response:
    entry = service.public_entry(db, slug)
    _show_viewer_if_logged_in(request, db)
    view = service.landing_view(db, entry, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
    return templates.TemplateResponse(request, "catalog_entry.html", {"v": view, "preview": False})


@router.get("/catalog/{slug}/terms")
def terms(request: Request, db: Db, hub: HubDep, slug: str) -> Response:
    entry = service.public_entry(db, slug)
    _show_viewer_if_logged_in(request, db)
    view = service.landing_view(db, entry, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
    return templates.TemplateResponse(request, "catalog_terms.html", {"v": view})


@router.get("/catalog/{slug}/images/{position}.png")
def image(db: Db, slug: str, position: Int32) -> Response:
    return _png(service.public_image(db, slug, position).png)


@lru_cache(maxsize=1)
def _card() -> bytes:
    return png.share_card()


@router.get("/catalog/{slug}/card.png")
def card(db: Db, slug: str) -> Response:
    service.public_entry(db, slug)
    return _png(_card())


@router.get("/sitemap.xml")
def sitemap(db: Db, hub: HubDep) -> Response:
    return Response(service.sitemap(db, hub.settings.base_url), media_type="application/xml")


@router.get("/sitemaps/{name}.xml")
def child_sitemap(db: Db, hub: HubDep, name: str) -> Response:
    return Response(service.child_sitemap(db, hub.settings.base_url, name), media_type="application/xml")


@router.get("/robots.txt")
def robots(hub: HubDep) -> Response:
    return PlainTextResponse(service.robots_txt(hub.settings.base_url))


# -- stewards ----------------------------------------------------------------------------------
def _lines(value: object) -> list[str]:
    text = str(value or "")
    return [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]


def _int(value: object, name: str) -> int | None:
    text = str(value or "").strip().replace(" ", "").replace(",", "")
    if not text:
        return None
    if not text.isdecimal() or int(text) > INT64_MAX:
        raise Invalid(f"{name} must be a whole number")
    return int(text)


def _date(value: object, name: str) -> dt.date | None:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise Invalid(f"{name} must be a date (YYYY-MM-DD)") from None


def fields_from_form(form) -> service.EntryFields:  # starlette FormData
    get = lambda k: str(form.get(k, "") or "")  # noqa: E731
    return service.EntryFields(
        slug=get("slug"), title=get("title"), description=get("description"), why_apply=get("why_apply"),
        data_owner=get("data_owner"), data_owner_url=get("data_owner_url") or None,
        modalities=[str(m) for m in form.getlist("modalities")], organs=_lines(get("organs")),
        keywords=_lines(get("keywords")), variables=_lines(get("variables")),
        subjects=_int(get("subjects"), "subjects"), studies=_int(get("studies"), "studies"),
        series=_int(get("series"), "series"), annotations=_int(get("annotations"), "annotations"),
        size_bytes=_int(get("size_bytes"), "size"),
        time_start=_date(get("time_start"), "time span start"), time_end=_date(get("time_end"), "time span end"),
        terms_title=get("terms_title"), terms_text=get("terms_text"),
        access_conditions=get("access_conditions"), duo_codes=[str(c) for c in form.getlist("duo_codes")],
        how_to_cite=get("how_to_cite"), doi=get("doi") or None, contact_email=get("contact_email") or None,
        apply_mode=get("apply_mode") or "hub", external_url=get("external_url") or None,
    )


def _editor(request: Request, db: Db, hub, ds, entry, values: service.EntryFields, *,
            error: str | None = None, status: int = 200) -> Response:
    from ..projects.models import Project

    images = service.images_of(db, entry) if entry else []
    missing = service._missing_for_publishing(entry) if entry else []
    if entry and service.latest_released(db, ds.id) is None:
        missing.append("a released version of the dataset")
    return templates.TemplateResponse(request, "catalog_edit.html", {
        "ds": ds, "entry": entry, "f": values, "images": images, "error": error, "missing": missing,
        "project": db.get(Project, ds.project_id), "modalities": MODALITIES, "duo": DUO,
        "duo_permissions": DUO_PERMISSIONS, "public_url": f"{hub.settings.base_url.rstrip('/')}/catalog/",
    }, status_code=status)


@router.get("/datasets/{dataset_id}/catalog")
def edit_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, dataset_id: str) -> Response:
    ds, entry = service.steward_entry(db, principal, dataset_id)
    values = service.EntryFields.of(entry) if entry else service.suggested_fields(ds)
    return _editor(request, db, hub, ds, entry, values)


@router.post("/datasets/{dataset_id}/catalog", dependencies=[CsrfChecked])
def save(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal, dataset_id: str
         ) -> Response:
    form = posted.form
    ds, entry = service.steward_entry(db, principal, dataset_id)
    try:
        values = fields_from_form(form)
        service.save_entry(db, principal, dataset_id, values)
    except (Invalid, Conflict) as exc:
        db.rollback()
        ds, entry = service.steward_entry(db, principal, dataset_id)
        try:
            shown = fields_from_form(form)
        except Invalid:
            shown = service.EntryFields.of(entry) if entry else service.suggested_fields(ds)
        return _editor(request, db, hub, ds, entry, shown, error=exc.detail, status=exc.status)
    return RedirectResponse(f"/datasets/{dataset_id}/catalog?saved=1", status_code=303)


@router.post("/datasets/{dataset_id}/catalog/publish", dependencies=[CsrfChecked])
def publish(db: Db, principal: WebPrincipal, dataset_id: str) -> Response:
    service.publish(db, principal, dataset_id)
    return RedirectResponse(f"/datasets/{dataset_id}/catalog?published=1", status_code=303)


@router.post("/datasets/{dataset_id}/catalog/unpublish", dependencies=[CsrfChecked])
def unpublish(db: Db, principal: WebPrincipal, dataset_id: str) -> Response:
    service.unpublish(db, principal, dataset_id)
    return RedirectResponse(f"/datasets/{dataset_id}/catalog", status_code=303)


@router.post("/datasets/{dataset_id}/catalog/images", dependencies=[CsrfChecked])
def upload_image(posted: PostedImage, db: Db, principal: WebPrincipal, dataset_id: str) -> Response:
    upload = posted.files.get("image")
    if upload is None:
        raise Invalid("choose a PNG file")
    service.add_image(db, principal, dataset_id, upload[2], str(posted.form.get("alt", "")))
    return RedirectResponse(f"/datasets/{dataset_id}/catalog#images", status_code=303)


@router.post("/datasets/{dataset_id}/catalog/images/{position}/delete", dependencies=[CsrfChecked])
def delete_image(db: Db, principal: WebPrincipal, dataset_id: str, position: Int32) -> Response:
    service.remove_image(db, principal, dataset_id, position)
    return RedirectResponse(f"/datasets/{dataset_id}/catalog#images", status_code=303)


@router.get("/datasets/{dataset_id}/catalog/images/{position}.png")
def steward_image(db: Db, principal: WebPrincipal, dataset_id: str, position: Int32) -> Response:
    return _png(service.steward_image(db, principal, dataset_id, position).png, cache="private, no-store")


@router.get("/datasets/{dataset_id}/catalog/preview")
def preview(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, dataset_id: str) -> Response:
    """The landing page as it will look, for the stewards only (never indexed)."""
    _, entry = service.steward_entry(db, principal, dataset_id)
    if entry is None:
        raise NotFound("this dataset has no catalogue entry yet")
    view = service.landing_view(db, entry, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
    for img in view.images:
        img.url = f"/datasets/{dataset_id}/catalog/images/{img.position}.png"
    return templates.TemplateResponse(request, "catalog_entry.html", {"v": view, "preview": True})
