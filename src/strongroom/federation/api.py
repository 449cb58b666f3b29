"""The public GA4GH Beacon v2 (``/ga4gh/beacon/v2``): framework endpoints and boolean/count answers over the
published imaging data (see ``beacon.py``). The operators' peer API is in ``peers_api.py``, the signed
hub-to-hub endpoints in ``exchange.py``."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import ConfigDict, Field

from ..deps import Db, HubDep, client_ip
from ..schemas import Body
from . import beacon, service

router = APIRouter(prefix="/ga4gh/beacon/v2", tags=["GA4GH Beacon v2"])

Granularity = Literal["boolean", "count", "record"]
BeaconDoc = dict[str, Any]
FILTERS = Query("", max_length=2000, pattern=r"^[^\x00-\x1f]*$",
                description="filtering term ids (CURIEs from /filtering_terms), comma-separated; all must match")
GRANULARITY = Query("count", description="boolean or count; a request for records is answered with counts")


def _filters(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()][:20]


def _signed_by(request: Request, db: Db, hub: HubDep, what: str) -> None:
    """A beacon question may come signed from a peer (federated search): then the signature must hold, and
    the question is audited as a peer's."""
    service.verify_request(db, hub.settings, method=request.method, path=request.url.path,
                           query=request.scope.get("query_string", b"").decode("latin-1"),
                           headers=request.headers, body=b"", what=what, ip=client_ip(request), required=False)
    db.commit()  # a signed question's nonce is spent whatever happens next (replay protection)


@router.get("", response_model=BeaconDoc, summary="Beacon info (beaconInfoResponse)")
@router.get("/info", response_model=BeaconDoc, summary="Beacon info (beaconInfoResponse)")
def info(hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).info()


@router.get("/service-info", response_model=BeaconDoc, summary="GA4GH service-info of the Beacon")
def service_info(hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).service_info()


@router.get("/configuration", response_model=BeaconDoc, summary="Beacon configuration (beaconConfigurationResponse)")
def configuration(hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).configuration()


@router.get("/map", response_model=BeaconDoc, summary="Beacon map of endpoints (beaconMapResponse)")
def beacon_map(hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).map()


@router.get("/entry_types", response_model=BeaconDoc, summary="Entry types: dataset and imagingStudy")
def entry_types(hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).entry_types_response()


@router.get("/filtering_terms", response_model=BeaconDoc,
            summary="Filtering terms present in the published data (DICOM modality, SNOMED CT body part, ICD-10)")
def filtering_terms(db: Db, hub: HubDep) -> BeaconDoc:
    return service.beacon_of(hub.settings).filtering_terms(service.studies(db))


# Bodies like every other (NUL refused, types as sent), but a beaconRequestBody may carry more than is read here.
class FilterIn(Body):
    model_config = ConfigDict(extra="allow", strict=True)
    id: str = Field(min_length=1, max_length=200)


class QueryIn(Body):
    model_config = ConfigDict(extra="allow", strict=True)
    filters: list[FilterIn | str] = Field(default_factory=list, max_length=20)
    requestedGranularity: Granularity = "count"
    testMode: bool = False


class RequestIn(Body):
    """A beaconRequestBody: ``query.filters`` (ids or {id}), ``query.requestedGranularity``."""

    model_config = ConfigDict(extra="allow", strict=True)
    meta: dict[str, Any] = Field(default_factory=dict)
    query: QueryIn = Field(default_factory=QueryIn)


def _answer(db: Db, hub: HubDep, entry_type: str, filters: list[str], granularity: str, test: bool) -> BeaconDoc:
    return service.beacon_of(hub.settings).query(entry_type, service.studies(db), filters, requested=granularity,
                                                 test_mode=test)


def _ids(body: RequestIn) -> list[str]:
    return [f if isinstance(f, str) else f.id for f in body.query.filters][:20]


@router.get("/datasets", response_model=BeaconDoc,
            summary="Published datasets with an imaging study matching the filters (boolean or count)")
def datasets(request: Request, db: Db, hub: HubDep, filters: str = FILTERS,
             requestedGranularity: Granularity = GRANULARITY, testMode: bool = False) -> BeaconDoc:
    _signed_by(request, db, hub, "beacon:dataset")
    return _answer(db, hub, beacon.DATASET, _filters(filters), requestedGranularity, testMode)


@router.post("/datasets", response_model=BeaconDoc, summary="The same question as a beaconRequestBody")
def datasets_post(db: Db, hub: HubDep, body: RequestIn) -> BeaconDoc:
    return _answer(db, hub, beacon.DATASET, _ids(body), body.query.requestedGranularity, body.query.testMode)


@router.get("/imaging_studies", response_model=BeaconDoc,
            summary="Imaging studies of published datasets matching the filters (boolean or count)")
def imaging_studies(request: Request, db: Db, hub: HubDep, filters: str = FILTERS,
                    requestedGranularity: Granularity = GRANULARITY, testMode: bool = False) -> BeaconDoc:
    _signed_by(request, db, hub, "beacon:imagingStudy")
    return _answer(db, hub, beacon.STUDY, _filters(filters), requestedGranularity, testMode)


@router.post("/imaging_studies", response_model=BeaconDoc, summary="The same question as a beaconRequestBody")
def imaging_studies_post(db: Db, hub: HubDep, body: RequestIn) -> BeaconDoc:
    return _answer(db, hub, beacon.STUDY, _ids(body), body.query.requestedGranularity, body.query.testMode)
