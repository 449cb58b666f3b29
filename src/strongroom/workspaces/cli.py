"""`strongroom workspaces`: list your workspaces in a project (over the API). Workspaces are started and
stopped on the project's page (fresh MFA); operators stop any on /admin/workspaces."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..client import connect
from ..hubclient import HubError

app = typer.Typer(no_args_is_help=True, help="Notebook workspaces: list yours (over the API).")
console = Console()
err = Console(stderr=True)


@app.command("list")
def list_(project: Annotated[str, typer.Option("--project", "-p", help="Project id (slug).")]) -> None:
    """Your workspaces in a project: state, where it runs, when its booking ends."""
    try:
        rows: list[dict[str, Any]] = connect().json("GET", f"/api/v1/workspaces/projects/{project}")
    except HubError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    table = Table("id", "state", "launcher", "network", "ends", "url")
    for w in rows:
        table.add_row(w["id"][:8], w["state"], w["launcher"], w["isolation"], w["ends_at"] or "", w["url"])
    console.print(table)
