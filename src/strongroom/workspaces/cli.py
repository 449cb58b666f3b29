"""`strongroom workspaces`: list your workspaces in a project (over the API). Workspaces are started and
stopped on the project's page (fresh MFA); operators stop any on /admin/workspaces."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..client import connect
from ..hubclient import HubError
from ..text import for_terminal as shown

app = typer.Typer(no_args_is_help=True, help="Notebook workspaces: list yours (over the API).")
console = Console()
err = Console(stderr=True)


@app.command("list")
def list_(project: Annotated[str, typer.Option("--project", "-p", help="Project id (slug).")]) -> None:
    """Your workspaces in a project: state, where it runs, when its booking ends."""
    try:
        rows: list[dict[str, Any]] = connect().json("GET", f"/api/v1/workspaces/projects/{project}")
    except HubError as exc:
        err.print(f"[red]error:[/] {shown(exc)}")
        raise typer.Exit(1) from None
    table = Table("id", "state", "launcher", "network", "ends", "url")
    for w in rows:
        table.add_row(*map(shown, (w["id"][:8], w["state"], w["launcher"], w["isolation"], w["ends_at"], w["url"])))
    console.print(table)


admin_app = typer.Typer()  # merged into `strongroom admin`


@admin_app.command("cluster-account")
def cluster_account(
    user: Annotated[str, typer.Argument(help="Username, e-mail or id.")],
    account: Annotated[str, typer.Argument(help='POSIX account on the cluster ("" removes it).')],
) -> None:
    """Set the member's cluster account: the Slurm launcher submits their workspaces as it (audited)."""
    import getpass
    import os

    from ..audit.service import Actor
    from ..config import get_settings
    from ..db import transaction
    from ..errors import DomainError
    from ..hub import Hub
    from ..identity import service as identity
    from . import service

    hub = Hub.from_settings(get_settings())
    try:
        with transaction(hub.sessions) as session:
            found = identity.find_user(session, user)
            if found is None:
                raise typer.BadParameter(f"no user {user!r}")
            actor = Actor(id=None, label=f"cli:{getpass.getuser()}@{os.uname().nodename}")
            set_to = service.set_cluster_account(session, actor, found, account)
    except DomainError as exc:
        err.print(f"[red]error:[/] {shown(exc.detail)}")
        raise typer.Exit(2) from None
    console.print(f"{shown(user)}: " + (f"cluster account {shown(repr(set_to))}" if set_to else "no cluster account"))
