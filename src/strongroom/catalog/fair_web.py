"""Harvestable catalogue (no login): the DCAT-AP export as Turtle, JSON-LD and RDF/XML, for the whole
catalogue and per dataset, and the OAI-PMH endpoint (GET and POST).

Registered before the landing pages (``/catalog/{slug}`` would take ``/catalog/x.ttl`` otherwise)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from ..deps import Db, HubDep
from ..errors import Invalid, NotFound
from ..hub import Hub
from . import dcat, fair, oai, page_cache

router = APIRouter()
# as long as a landing page: a withdrawal reaches shared caches (and crawlers behind them) within the same 30 s
METADATA_CACHE = f"public, max-age={page_cache.MAX_AGE_SECONDS}"
OAI_BODY_LIMIT = 64 * 1024  # an OAI-PMH request is a handful of short arguments


def _rdf(graph_bytes: bytes, fmt: str) -> Response:
    media, _ = dcat.RDF_FORMATS[fmt]
    return Response(graph_bytes, media_type=f"{media}; charset=utf-8", headers={"Cache-Control": METADATA_CACHE})


def _catalog(db: Db, hub: Hub, fmt: str) -> Response:
    cat, datasets = fair.catalog_facts(db, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
    return _rdf(dcat.serialize(dcat.catalog_graph(cat, datasets), fmt), fmt)


def _dataset(db: Db, hub: Hub, slug: str, fmt: str) -> Response:
    entry = fair.public_by_slug(db, slug)
    if entry is None:
        raise NotFound("no such dataset in the catalogue")
    facts = fair.dataset_facts(db, entry, base_url=hub.settings.base_url, site_name=hub.settings.site_name)
    return _rdf(dcat.serialize(dcat.dataset_graph(facts), fmt), fmt)


@router.get("/catalog.ttl")
def catalog_turtle(db: Db, hub: HubDep) -> Response:
    return _catalog(db, hub, "turtle")


@router.get("/catalog.jsonld")
def catalog_jsonld(db: Db, hub: HubDep) -> Response:
    return _catalog(db, hub, "json-ld")


@router.get("/catalog.rdf")
def catalog_rdfxml(db: Db, hub: HubDep) -> Response:
    return _catalog(db, hub, "xml")


@router.get("/catalog/{slug}.ttl")
def dataset_turtle(db: Db, hub: HubDep, slug: str) -> Response:
    return _dataset(db, hub, slug, "turtle")


@router.get("/catalog/{slug}.jsonld")
def dataset_jsonld(db: Db, hub: HubDep, slug: str) -> Response:
    return _dataset(db, hub, slug, "json-ld")


@router.get("/catalog/{slug}.rdf")
def dataset_rdfxml(db: Db, hub: HubDep, slug: str) -> Response:
    return _dataset(db, hub, slug, "xml")


# -- OAI-PMH ---------------------------------------------------------------------------------------
def _answer(hub: Hub, pairs: list[tuple[str, str]]) -> bytes:
    with hub.sessions() as session:  # read only
        repo = fair.CatalogRepository(session, hub.settings)
        return oai.handle(repo, oai.Tokens(hub.secret), pairs)


async def oai_endpoint(request: Request) -> Response:
    """GET with a query string or POST with an urlencoded body, as the protocol allows."""
    request.scope["route"] = OAI_ROUTE  # names the route to the request log and metrics, as FastAPI's do
    hub: Hub = request.app.state.hub
    pairs = parse_qsl(request.url.query, keep_blank_values=True)
    if request.method == "POST":
        body = await request.body()
        if len(body) > OAI_BODY_LIMIT:
            raise Invalid("the request is too long for an OAI-PMH request")
        urlencoded = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
        if body and not urlencoded:
            raise Invalid("OAI-PMH requests are posted as application/x-www-form-urlencoded")
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    xml = await run_in_threadpool(_answer, hub, pairs)
    return Response(xml, media_type="text/xml; charset=utf-8")


# A plain route (not a page form, not in the OpenAPI document): errors are OAI-PMH's own.
OAI_ROUTE = Route("/oai", oai_endpoint, methods=["GET", "POST"])
router.routes.append(OAI_ROUTE)
