"""`strongroom admin create-project`: run on the hub host, audited as the operator."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.console import Console

from ..config import get_settings
from ..db import transaction
from ..errors import DomainError
from ..hub import Hub
from ..identity.cli import _fail, _operator

app = typer.Typer()  # merged into `strongroom admin` (projects' includeme)
console = Console()


@app.command("create-project")
def create_project(
    slug: Annotated[str, typer.Argument(help="Short lower-case id used in URLs.")],
    name: Annotated[str, typer.Option(help="Project name.")],
    pi: Annotated[str, typer.Option(help="PI: username, e-mail or user id.")],
    ethics_ref: Annotated[str, typer.Option("--ethics", help="Ethics approval reference.")],
    project_class: Annotated[str, typer.Option("--class", help="project | fellowship | network-partner")] = "project",
    quota_tb: Annotated[float, typer.Option("--quota-tb", min=0, help="Storage quota in TB.")] = 2.0,
    years: Annotated[int, typer.Option(min=1, max=20, help="Years until the project ends.")] = 3,
) -> None:
    """Create a project with its PI as first member."""
    from . import service  # not at import: every `strongroom` command (and DICOM pool worker) imports this module

    hub = Hub.from_settings(get_settings())
    try:
        with transaction(hub.sessions) as session:
            service.create_project(session, _operator(), slug=slug, name=name, pi=pi, ethics_ref=ethics_ref,
                                   project_class=project_class, quota_bytes=int(quota_tb * 1000**4),
                                   end_date=dt.date.today() + dt.timedelta(days=365 * years))
    except DomainError as exc:
        _fail(exc)
    console.print(f"created project [bold]{slug}[/]")
