"""`strongroom audit`: verify the chain, list events."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..config import get_settings
from ..hub import Hub
from . import service

app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
console = Console()


@app.command()
def verify() -> None:
    """Walk the whole hash chain; exit 1 and say where if any event was edited, deleted or reordered."""
    hub = Hub.from_settings(get_settings())
    with hub.sessions() as session:
        total = service.count(session)
        with Progress(TextColumn("verifying audit chain"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as progress:
            task = progress.add_task("verify", total=total)
            report = service.verify(session, progress=lambda n: progress.update(task, completed=n))
    if report.ok:
        console.print(f"[green]OK[/]: {report.checked} events, chain intact")
        return
    table = Table("event #", "problem", "detail", title="Audit chain is broken", title_style="bold red")
    for p in report.problems:
        table.add_row(str(p.seq), p.kind, p.detail)
    console.print(table)
    console.print(f"[red]FAILED[/]: {len(report.problems)} problem(s) in {report.checked} events")
    raise typer.Exit(1)


@app.command("list")
def list_events(
    project: Annotated[str | None, typer.Option(help="Only events of this project (slug).")] = None,
    user: Annotated[str | None, typer.Option(help="Only events by or about this user (username, e-mail, id).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
) -> None:
    """Show recent events (operators on the hub host)."""
    from sqlalchemy import select

    from ..identity.service import find_user
    from ..projects.models import Project

    hub = Hub.from_settings(get_settings())
    with hub.sessions() as session:
        project_id: uuid.UUID | None = None
        user_id: uuid.UUID | None = None
        if project:
            found = session.scalar(select(Project).where(Project.slug == project))
            if found is None:
                raise typer.BadParameter(f"no project {project!r}")
            project_id = found.id
        if user:
            u = find_user(session, user)
            if u is None:
                raise typer.BadParameter(f"no user {user!r}")
            user_id = u.id
        table = Table("#", "when", "actor", "action", "outcome", "target")
        for e in service.query(session, project_id=project_id, user_id=user_id, limit=limit):
            table.add_row(str(e.seq), e.at.strftime("%Y-%m-%d %H:%M:%S"), e.actor, e.action, e.outcome,
                          e.target or "")
        console.print(table)
