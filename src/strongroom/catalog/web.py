"""Catalogue pages: the public catalogue, landing and terms pages, sample images, sitemaps and
robots.txt (no login), and the steward's editor under the dataset (members with write-data)."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response

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
from ..schemas import Int32, Int64
from ..web.templating import redirect_with, templates
from . import dois, entries, png, search, sitemaps
from . import images as catalog_images
from . import landing as landing_pages
from .fields import EntryFields
from .vocab import DUO, DUO_PERMISSIONS, MODALITIES

router = APIRouter()
PostedImage = Annotated[Posted, Depends(posted_form(catalog_images.MAX_IMAGE_BYTES))]
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
    selected = {f: request.query_params.getlist(f) for f in search.FACETS}
    result = search.search(db, q, selected, page=page)
    base = hub.settings.base_url.rstrip("/")
    return templates.TemplateResponse(request, "catalog_index.html", {
        "result": result, "headings": search.FACET_HEADINGS, "modality_names": MODALITIES,
        "canonical": f"{base}/catalog", "page_url": _page_url(q, result.selected),
        "filtered": bool(q or result.selected),
    })


def _page_url(q: str, selected: dict[str, list[str]]) -> str:
    from urllib.parse import urlencode

    pairs = ([("q", q)] if q else []) + [(f, v) for f, vs in selected.items() for v in vs]
    return "/catalog?" + urlencode(pairs) + ("&" if pairs else "")


@router.get("/catalog/{slug}")
def landing(request: Request, db: Db, hub: HubDep, slug: str, version: Int32 | None = None) -> Response:
    """``?version=N`` is where version N's DOI resolves: the page says which version that was."""
    try:
        entry = landing_pages.public_entry(db, slug)
    except NotFound:
        gone = landing_pages.tombstone(db, slug, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
        if gone is None:
            raise
        _show_viewer_if_logged_in(request, db)
        return templates.TemplateResponse(request, "catalog_tombstone.html", {"t": gone}, status_code=410)
    _show_viewer_if_logged_in(request, db)
    view = landing_pages.landing_view(db, entry, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
    cited = next(((n, d) for n, d in view.version_dois if n == version), None)
    return templates.TemplateResponse(request, "catalog_entry.html", {"v": view, "preview": False, "cited": cited})


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
    return int(text) if text.isascii() and text.isdecimal() and len(text) <= 19 else text


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
    return templates.TemplateResponse(request, "catalog_entry.html", {"v": view, "preview": True})
