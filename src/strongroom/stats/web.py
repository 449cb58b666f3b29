"""Metrics pages: the public figures page (/stats) and a dataset's figures for its data owner. Charts are
server-side SVG (``charts``): nothing loads from elsewhere and nothing needs JavaScript."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..deps import Db, HubDep, WebPrincipal, current_web_session, show_viewer
from ..web.templating import templates
from . import charts, figures, service
from .api import MetricsOut, metrics_out

router = APIRouter()
MONTHS_SHOWN = 36  # the charts show the last three years; the JSON and CSV have every month


def _charts(m: MetricsOut) -> dict[str, str]:
    months = m.months[-MONTHS_SHOWN:]
    return {
        "datasets": charts.line("chart-datasets", "Published datasets, running total",
                                [(x.month, x.datasets_total) for x in months], unit="datasets"),
        "applications": charts.columns("chart-applications", "Applications submitted per month",
                                       [(x.month, x.applications) for x in months], unit="applications"),
        "downloads": charts.columns("chart-downloads", "Downloads per month",
                                    [(x.month, x.downloads) for x in months], unit="downloads"),
        "views": charts.columns("chart-views", "Landing-page views per month",
                                [(x.month, x.views) for x in months], unit="views"),
        "modalities": charts.bars("chart-modalities", "Scans by modality",  # image modalities: the others have none
                                  [(f"{r.modality} · {r.name}", r.scans) for r in m.by_modality if r.scans],
                                  unit="scans"),
        "organs": charts.bars("chart-organs", "Scans by body part",
                              [(r.organ.title(), r.scans) for r in m.by_organ], unit="scans"),
        "countries": charts.bars("chart-countries", "Approved applications by the applicant's country",
                                 [(c.name, c.approved) for c in m.countries], unit="approvals"),
    }


def _page(request: Request, m: MetricsOut, *, dataset: Any = None, status: int = 200) -> Response:
    return templates.TemplateResponse(request, "stats/metrics.html", {
        "m": m, "charts": _charts(m), "dataset": dataset, "small": figures.SMALL,
        "annotation_modalities": sorted(figures.ANNOTATION_MODALITIES), "not_images": sorted(figures.NOT_IMAGES),
        "annotation_suffixes": figures.ANNOTATION_SUFFIXES, "annotation_folders": figures.ANNOTATION_FOLDERS,
    }, status_code=status)


@router.get("/stats")
def public_page(request: Request, db: Db, hub: HubDep) -> Response:
    found = current_web_session(request, db)
    if found and found[0].stage == "active":  # public: the same for everyone, with the visitor's menu
        show_viewer(request, found[1])
    m = metrics_out(service.public_metrics(db, cache_key=hub.settings.database_url), hub.settings.base_url)
    return _page(request, m)


@router.get("/datasets/{dataset_id}/metrics")
def dataset_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, dataset_id: str) -> Response:
    """One dataset's figures for the people who handle its applications (NotFound for everyone else)."""
    m = metrics_out(service.dataset_metrics(db, principal, dataset_id), hub.settings.base_url)
    return _page(request, m, dataset=m.per_dataset[0])
