"""Metrics API: the public figures as JSON and CSV (no login), and one dataset's figures for the people who
handle its applications."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Response
from pydantic import Field

from ..deps import AccessScope as Access
from ..deps import Db, HubDep
from ..schemas import Out
from ..text import content_disposition, spreadsheet_safe
from . import service
from .figures import modality_name

router = APIRouter(prefix="/api/v1", tags=["metrics"])

CountOut = Annotated[int | Literal["< 5", "withheld"], Field(
    description='a count of people, their actions or their imaging; 1 to 4 is published as "< 5". Counts of '
                'imaging (subjects, studies, scans, instances, annotations) are rounded to the nearest multiple '
                'of 5 in the public figures (a 5 means 5-7), as the Beacon and the landing pages show them; a '
                'data owner sees their dataset\'s exactly. "withheld": not published so that a "< 5" beside it '
                'cannot be worked out from a total (total minus the parts shown); it need not be small. The '
                'bytes of hidden downloads are null.')]
DEFINITIONS = "/stats#definitions"


class DecisionDays(Out):
    median: float | None = Field(description="days from submission to decision; null under five decisions")
    p90: float | None


class ApplicationsOut(Out):
    made: CountOut
    approved: CountOut
    rejected: CountOut
    decision_days: DecisionDays


class SplitOut(Out):
    datasets: int
    scans: CountOut


class CountryOut(Out):
    country: str = Field(description="ISO 3166-1 alpha-2")
    name: str
    approved: CountOut


class ModalityOut(Out):
    modality: str = Field(description="DICOM modality code")
    name: str
    datasets: int
    scans: CountOut
    instances: CountOut


class OrganOut(Out):
    organ: str = Field(description="DICOM Body Part Examined")
    datasets: int
    scans: CountOut


class MonthOut(Out):
    month: str = Field(description="YYYY-MM (UTC)")
    datasets_published: int
    datasets_total: int
    applications: CountOut
    approved: CountOut
    downloads: CountOut
    download_bytes: int | None
    views: int


class DatasetMetricsOut(Out):
    id: str
    slug: str | None
    url: str | None = Field(description="its landing page; null when not published")
    title: str
    published_at: dt.datetime | None
    subjects: CountOut
    studies: CountOut
    scans: CountOut
    instances: CountOut
    annotations: CountOut
    files: int
    bytes: int
    modalities: list[str]
    organs: list[str]
    pathology: bool
    radiology: bool
    annotated: bool
    views: int
    visitors: int
    applications: ApplicationsOut
    downloads: CountOut
    download_bytes: int | None
    downloaders: CountOut
    countries_shared_with: int
    external_sharing_events: CountOut
    countries: list[CountryOut]


class MetricsOut(Out):
    generated_at: dt.datetime
    definitions: str = Field(description="where each figure is defined")
    datasets: int
    subjects: CountOut
    studies: CountOut
    scans: CountOut = Field(description="image series (annotation objects are not scans)")
    instances: CountOut
    annotations: CountOut
    files: int
    bytes: int
    modalities: int
    organs: int
    annotated: SplitOut
    pathology: SplitOut
    radiology: SplitOut
    views: int = Field(description="landing-page views, robots and double clicks excluded")
    visitors: int = Field(description="unique visitors per page and day, summed")
    applications: ApplicationsOut
    downloads: CountOut
    download_bytes: int | None
    downloaders: CountOut
    countries_shared_with: int
    external_sharing_events: CountOut
    by_modality: list[ModalityOut]
    by_organ: list[OrganOut]
    countries: list[CountryOut]
    months: list[MonthOut]
    per_dataset: list[DatasetMetricsOut]


def dataset_url(base_url: str, slug: str | None) -> str | None:
    return f"{base_url.rstrip('/')}/catalog/{slug}" if slug else None


def metrics_out(m: service.Metrics, base_url: str) -> MetricsOut:
    data: dict[str, Any] = {name: getattr(m, name) for name in MetricsOut.model_fields
                            if name not in ("definitions", "by_modality", "per_dataset")}
    data["by_modality"] = [{**row, "name": modality_name(row["modality"])}
                           for row in m.by_modality]
    data["per_dataset"] = [{**{name: getattr(d, name) for name in DatasetMetricsOut.model_fields if name != "url"},
                            "url": dataset_url(base_url, d.slug)} for d in m.per_dataset]
    return MetricsOut.model_validate({**data, "definitions": base_url.rstrip("/") + DEFINITIONS})


def _flatten(value: Any, scope: str, figure: str, rows: list[tuple[str, str, Any]]) -> None:
    keyed = {"by_modality": ("modality", "modality"), "by_organ": ("organ", "organ"),
             "countries": ("country", "country"), "months": ("month", "month"), "per_dataset": ("dataset", "id")}
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(inner, scope, f"{figure}.{key}" if figure else key, rows)
    elif isinstance(value, list) and figure.rsplit(".", 1)[-1] in keyed:
        kind, key = keyed[figure.rsplit(".", 1)[-1]]
        for item in value:
            name = f"{kind}:{item[key]}"
            for inner_key, inner in item.items():
                if inner_key == key:
                    continue
                if scope == "all":  # a list of the totals: each item is a scope of its own
                    _flatten(inner, name, inner_key, rows)
                else:  # a list inside a dataset (its countries) stays in the dataset's scope
                    _flatten(inner, scope, f"{figure}.{name}.{inner_key}", rows)
    elif isinstance(value, list):
        rows.append((scope, figure, ";".join(str(v) for v in value)))
    else:
        rows.append((scope, figure, "" if value is None else value))


def metrics_csv(out: MetricsOut) -> str:
    """Every figure of ``out`` as one row (scope, figure, value): ``all`` for the totals, then
    ``modality:CT``, ``organ:CHEST``, ``country:SE``, ``month:2026-03`` and ``dataset:SRD-…``."""
    rows: list[tuple[str, str, Any]] = []
    _flatten(out.model_dump(mode="json"), "all", "", rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("scope", "figure", "value"))
    writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
    return buffer.getvalue()


def _csv(text: str, name: str) -> Response:
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": content_disposition(name)})


CSV_DOC: dict[str, Any] = {"responses": {"200": {"content": {"text/csv": {
    "schema": {"type": "string"}, "example": 'scope,figure,value\nall,datasets,20\ncountry:NO,approved,withheld\n'
               'country:SE,approved,"< 5"\n'}}}}}


@router.get("/metrics", response_model=MetricsOut,
            summary="Data-sharing metrics of the published datasets (no login), counted from the hub's records")
def public_metrics(db: Db, hub: HubDep) -> MetricsOut:
    return metrics_out(service.public_metrics(db, cache_key=hub.settings.database_url), hub.settings.base_url)


@router.get("/metrics.csv", response_class=Response, openapi_extra=CSV_DOC,
            summary="The same metrics as CSV: one row per figure (scope, figure, value)")
def public_metrics_csv(db: Db, hub: HubDep) -> Response:
    out = metrics_out(service.public_metrics(db, cache_key=hub.settings.database_url), hub.settings.base_url)
    return _csv(metrics_csv(out), "strongroom-metrics.csv")


@router.get("/datasets/{dataset_id}/metrics", response_model=MetricsOut,
            summary="One dataset's metrics, published or not (those who handle its applications)")
def dataset_metrics(db: Db, hub: HubDep, principal: Access, dataset_id: str) -> MetricsOut:
    return metrics_out(service.dataset_metrics(db, principal, dataset_id), hub.settings.base_url)


@router.get("/datasets/{dataset_id}/metrics.csv", response_class=Response, openapi_extra=CSV_DOC,
            summary="One dataset's metrics as CSV (those who handle its applications)")
def dataset_metrics_csv(db: Db, hub: HubDep, principal: Access, dataset_id: str) -> Response:
    out = metrics_out(service.dataset_metrics(db, principal, dataset_id), hub.settings.base_url)
    return _csv(metrics_csv(out), f"{dataset_id}-metrics.csv")
