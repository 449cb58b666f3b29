"""Catalogue API: public search, and the stewards' create/edit/publish of a dataset's entry."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import Field

from ..deps import DataRead, DataWrite, Db, HubDep, raw_body
from ..errors import NotFound
from ..schemas import INT64_MAX, Int32, Int64, Out
from ..schemas import Body as BodyModel
from . import dois, entries
from . import images as catalog_images
from . import search as searching
from .fields import EntryFields
from .models import CatalogEntry

router = APIRouter(prefix="/api/v1", tags=["catalog"])
ImageBody = Annotated[bytes, Depends(raw_body(
    catalog_images.MAX_IMAGE_BYTES, f"a sample image may be at most {catalog_images.MAX_IMAGE_BYTES // 1024} kB"))]
# The body is checked by ``EntryFields`` in the service, so that a rule it breaks is answered in the
# steward's words (as the web editor shows it); the document still describes it exactly.
EntryBody = Annotated[dict[str, Any], Body()]


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its ``$defs`` (the creator model) written in place: a ``#/$defs/…`` reference
    would point into nowhere inside the OpenAPI document."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


ENTRY_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": _inlined(EntryFields.model_json_schema(mode="validation"))}}}}


class ImageOut(Out):
    position: int
    width: int
    height: int
    alt: str
    sha256: str


class DoiOut(Out):
    doi: str
    version: int | None = Field(description="None: the concept DOI (every version)")
    state: str = Field(description="at DataCite: new (not created yet) | draft | registered | findable")
    target: str = Field(description="findable while published; registered (hidden) once withdrawn")
    last_error: str | None


class WithdrawBody(BodyModel):
    reason: str = Field(default="", max_length=2000, description="shown on the tombstone page")


class EntryOut(EntryFields):
    model_config = {"extra": "ignore", "from_attributes": True, "strict": False}
    dataset_id: str
    published: bool
    published_at: dt.datetime | None
    updated_at: dt.datetime
    url: str
    images: list[ImageOut]
    instances: int | None = Field(default=None, description="DICOM instances, measured by the import (read-only)")
    manufacturers: list[str] = Field(default_factory=list, description="scanner makers, from the import (read-only)")
    effective_doi: str | None = Field(default=None, description="the DOI to cite: the steward's own, or the hub's "
                                      "once it resolves (read-only)")
    dois: list[DoiOut] = Field(default_factory=list, description="DOIs the hub minted at DataCite (read-only)")
    withdrawn_at: dt.datetime | None = None
    withdrawn_reason: str = ""


class EntrySummary(Out):
    slug: str
    title: str
    url: str
    data_owner: str
    modalities: list[str]
    organs: list[str]
    apply_mode: str
    no_methods_development: bool


class FacetOut(Out):
    value: str
    label: str
    count: int
    selected: bool


class SearchOut(Out):
    total: int
    page: int
    pages: int
    entries: list[EntrySummary]
    facets: dict[str, list[FacetOut]]


def _out(db: Db, hub, entry: CatalogEntry) -> EntryOut:
    data = {name: getattr(entry, name) for name in EntryFields.model_fields}
    return EntryOut(**data, dataset_id=entry.dataset_id, published=entry.published,
                    published_at=entry.published_at, updated_at=entry.updated_at,
                    url=f"{hub.settings.base_url.rstrip('/')}/catalog/{entry.slug}",
                    instances=entry.instances, manufacturers=entry.manufacturers or [],
                    effective_doi=dois.effective_doi(db, entry.dataset_id), withdrawn_at=entry.withdrawn_at,
                    withdrawn_reason=entry.withdrawn_reason or "",
                    dois=[DoiOut.model_validate(d) for d in dois.dois_of(db, entry.dataset_id)],
                    images=[ImageOut.model_validate(i) for i in catalog_images.images_of(db, entry)])


@router.get("/catalog", response_model=SearchOut,
            summary="Search the public catalogue (no login): text and facets modality, organ, access, use")
def search(request: Request, db: Db, hub: HubDep, q: str = Query("", max_length=200),
           page: Int64 = Query(1, ge=1, le=INT64_MAX)) -> SearchOut:
    selected = {f: request.query_params.getlist(f) for f in searching.FACETS}
    r = searching.search(db, q, selected, page=page)
    base = hub.settings.base_url.rstrip("/")
    return SearchOut(
        total=r.total, page=r.page, pages=r.pages,
        entries=[EntrySummary(slug=e.slug, title=e.title, url=f"{base}/catalog/{e.slug}", data_owner=e.data_owner,
                              modalities=e.modalities, organs=e.organs, apply_mode=e.apply_mode,
                              no_methods_development=e.no_methods) for e in r.entries],
        facets={f: [FacetOut.model_validate(v, from_attributes=True) for v in vs] for f, vs in r.facets.items()})


@router.get("/datasets/{dataset_id}/catalog", response_model=EntryOut,
            summary="A dataset's catalogue entry, published or not (stewards: write-data in its project)")
def get_entry(db: Db, hub: HubDep, principal: DataRead, dataset_id: str) -> EntryOut:
    _, entry = entries.steward_entry(db, principal, dataset_id)
    if entry is None:
        raise NotFound("this dataset has no catalogue entry yet")
    return _out(db, hub, entry)


@router.put("/datasets/{dataset_id}/catalog", response_model=EntryOut, openapi_extra=ENTRY_SCHEMA,
            summary="Create or replace a dataset's catalogue entry (stays unpublished until published)")
def put_entry(db: Db, hub: HubDep, principal: DataWrite, dataset_id: str, body: EntryBody) -> EntryOut:
    entry = entries.save_entry(db, principal, dataset_id, body)
    return _out(db, hub, entry)


@router.post("/datasets/{dataset_id}/catalog/publish", response_model=EntryOut,
             summary="Publish the entry: its landing page becomes public and enters the sitemap")
def publish(db: Db, hub: HubDep, principal: DataWrite, dataset_id: str) -> EntryOut:
    return _out(db, hub, entries.publish(db, principal, dataset_id))


@router.post("/datasets/{dataset_id}/catalog/unpublish", response_model=EntryOut,
             summary="Withdraw the entry from the public catalogue (404; with a DOI, a 410 tombstone page)")
def unpublish(db: Db, hub: HubDep, principal: DataWrite, dataset_id: str,
              body: Annotated[WithdrawBody | None, Body()] = None) -> EntryOut:
    return _out(db, hub, entries.unpublish(db, principal, dataset_id, body.reason if body else ""))


@router.post("/datasets/{dataset_id}/catalog/images", response_model=ImageOut, status_code=201,
             summary="Add a de-identified sample thumbnail (raw PNG body; text/EXIF chunks are dropped)",
             openapi_extra={"requestBody": {"content": {"image/png": {}}, "required": True}})
def add_image(principal: DataWrite, data: ImageBody, db: Db, dataset_id: str,
              alt: str = Query(..., min_length=1, max_length=300, description="alternative text")
              ) -> ImageOut:
    return ImageOut.model_validate(catalog_images.add_image(db, principal, dataset_id, data, alt))


@router.delete("/datasets/{dataset_id}/catalog/images/{position}", status_code=204,
               summary="Remove a sample image", response_class=Response)
def delete_image(db: Db, principal: DataWrite, dataset_id: str, position: Int32) -> Response:
    catalog_images.remove_image(db, principal, dataset_id, position)
    return Response(status_code=204)
