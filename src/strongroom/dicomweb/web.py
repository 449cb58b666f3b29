"""The zero-footprint viewer: one page per project (``/projects/{slug}/viewer``) whose script
(``static/viewer.js``, ours, no third-party code) browses the studies and series over QIDO-RS and shows
frames through WADO-RS ``/rendered`` (windowed PNGs; windows of the reader's own only with the download
right): every request goes to the hub's own origin with the page's session and X-CSRF-Token. Who may open
it is exactly who may read the project over DICOMweb (``query.open_scope``): everyone else gets 404. See
docs/dicomweb.md, "The viewer"."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..archive.models import Dataset
from ..deps import Db, WebPrincipal
from ..errors import NotFound
from ..identity.principal import Principal
from ..imaging.models import ImagingProject
from ..projects.models import Project
from ..web.templating import templates
from . import query, render

router = APIRouter()
Uid = Annotated[str | None, Query(pattern=r"^[0-9.]{1,64}$", description="a DICOM UID to open first")]


@router.get("/projects/{slug}/viewer")
def viewer_page(request: Request, db: Db, principal: WebPrincipal, slug: str, study: Uid = None,
                series: Uid = None) -> Response:
    """The viewer for whoever may read the project's images over DICOMweb (404 for everyone else)."""
    scope = query.open_scope(db, principal, slug)
    project = db.get(Project, scope.project_id)
    imaging = db.get(ImagingProject, scope.project_id)
    assert project is not None
    member = scope.versions is None
    back = (f"/projects/{slug}", project.name) if member or imaging is None or not imaging.dataset_id else (
        f"/datasets/{imaging.dataset_id}", "the dataset")
    return templates.TemplateResponse(request, "dicomweb/viewer.html", {
        "project": project, "base": f"/dicomweb/projects/{slug}", "back": back, "study": study or "",
        "series": series or "", "presets": _presets()})


def _presets() -> list[dict[str, str]]:
    """The Window menu: the hub's named presets (``render.PRESETS``, the windows it renders for everyone)."""
    return [{"value": render.format_window((p.center, p.width)), "modality": modality, "label": p.label,
             "shown": f"{p.center:g}/{p.width:g}".replace("-", "\u2212")}
            for modality, presets in render.PRESETS.items() for p in presets]


def dataset_viewer(session: Session, principal: Principal, ds: Dataset) -> list[dict[str, str]]:
    """``archive.web.DATASET_VIEWERS``: the viewer, for a project's DICOM import dataset and a reader of it."""
    row = session.scalar(select(ImagingProject).where(ImagingProject.dataset_id == ds.id))
    project = session.get(Project, row.project_id) if row is not None else None
    if project is None:
        return []
    try:
        query.open_scope(session, principal, project.slug)
    except NotFound:
        return []
    return [{"href": f"/projects/{project.slug}/viewer", "text": "Open the images in the viewer",
             "hint": "studies and series in this browser, rendered by the hub; the files are not downloaded"}]
