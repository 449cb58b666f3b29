"""``strongroom dicomweb backfill``: index what was archived before the DICOMweb index existed;
``strongroom dicomweb move-destinations list|add|remove``: the project's registered C-MOVE destinations."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

dicomweb_app = typer.Typer(help="DICOMweb (QIDO-RS, WADO-RS) and DIMSE Query/Retrieve per project: the metadata "
                                "index, the C-MOVE destinations.",
                           no_args_is_help=True)
err = Console(stderr=True)


@dicomweb_app.command("backfill")
def backfill_command(
    batch: Annotated[int, typer.Option(min=1, max=5000, help="Instances per transaction.")] = 200,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many (default: all).")] = None,
) -> None:
    """Index archived instances that have no DICOMweb index yet (decrypting each in memory on the hub
    host). Safe to stop and run again: it goes on where it stopped; failures are retried next time."""
    from ..config import get_settings
    from ..hub import Hub
    from . import backfill

    hub = Hub.from_settings(get_settings())
    result = backfill.run(hub, batch=batch, limit=limit,
                          progress=lambda done, failed: err.print(f"indexed {done}, failed {failed}"))
    typer.echo(f"indexed {result.indexed}, failed {result.failed}, still to index {result.remaining}")
    if result.failed:
        raise typer.Exit(1)


moves_app = typer.Typer(
    help="The project's C-MOVE destinations: the only places its DICOM destination sends images to when a "
         "workstation asks for a C-MOVE (AE title, host, port). Run on the hub host as the operator; PIs "
         "change the same list on the project page or with PUT /api/v1/projects/{slug}/settings/"
         "dicom_move_destinations. Entries added here are the operator's and are dialled as written (they may "
         "name a Storage SCP on the hub host); the project's own are resolved at each move and refused when they "
         "lead to the hub's machine or its internal networks.",
    no_args_is_help=True)
dicomweb_app.add_typer(moves_app, name="move-destinations")


def _moves(action: Callable[[Session], list[Any]]) -> list[Any]:
    from ..config import get_settings
    from ..db import transaction
    from ..errors import DomainError
    from ..hub import Hub

    hub = Hub.from_settings(get_settings())
    try:
        with transaction(hub.sessions) as session:
            return action(session)
    except DomainError as exc:
        err.print(f"[red]error:[/] {exc.detail}")
        raise typer.Exit(2) from None


def _print(entries: list[Any]) -> None:
    if not entries:
        typer.echo("no move destinations: C-MOVE requests are refused (0xA801); C-GET still works")
    for e in entries:
        typer.echo(f"{e.ae_title}\t{e.host}:{e.port}\t{'operator' if e.operator else 'project'}")


@moves_app.command("list")
def list_moves(project: Annotated[str, typer.Option("--project", "-p", help="The project's slug.")]) -> None:
    """Show the project's registered move destinations (AE title, host:port, who added it: operator or
    project)."""
    from . import service

    _print(_moves(lambda s: service.move_destinations(s, project)))


@moves_app.command("add")
def add_move(
    ae_title: Annotated[str, typer.Argument(help="The AE title workstations name as move destination "
                                                 "(movescu -aem), 1-16 characters.")],
    host: Annotated[str, typer.Argument(help="Host name or IP address of the receiving Storage SCP.")],
    port: Annotated[int, typer.Argument(help="Its TCP port.", min=1, max=65535)],
    project: Annotated[str, typer.Option("--project", "-p", help="The project's slug.")],
) -> None:
    """Register a move destination as the operator's (audited): dialled as written, so it may name a Storage SCP
    on the hub host. Example: strongroom dicomweb move-destinations add WS1 10.0.0.5 11112 -p lung. The
    destination receives the project's de-identified images; register only machines allowed to hold them.
    Adding a project's entry again with its own host and port marks it the operator's."""
    from ..identity.cli import _operator
    from . import service

    def add(s: Session) -> list[Any]:
        from ..errors import Invalid

        entry = {"ae_title": ae_title.strip(), "host": host, "port": port, "operator": True}
        current = [e.model_dump(mode="json") for e in service.move_destinations(s, project)]
        same = next((e for e in current if e["ae_title"] == entry["ae_title"]), None)
        if same is None:
            return service.set_move_destinations(s, _operator(), project, [*current, entry])
        if same.get("operator") or (same["host"], same["port"]) != (host, port):
            raise Invalid(f"{entry['ae_title']!r} is registered already: remove it first to change it")
        # the project's entry, exactly as the project wrote it: from now on the operator's
        return service.set_move_destinations(s, _operator(), project, [entry if e is same else e for e in current])

    _print(_moves(add))


@moves_app.command("remove")
def remove_move(
    ae_title: Annotated[str, typer.Argument(help="The AE title of the destination to remove.")],
    project: Annotated[str, typer.Option("--project", "-p", help="The project's slug.")],
) -> None:
    """Remove a move destination (audited): C-MOVE requests naming it are refused from then on."""
    from ..identity.cli import _operator
    from . import service

    def remove(s: Session) -> list[Any]:
        current = [e.model_dump() for e in service.move_destinations(s, project)]
        kept = [e for e in current if e["ae_title"] != ae_title.strip()]
        if len(kept) == len(current):
            from ..errors import NotFound

            raise NotFound(f"no move destination {ae_title.strip()!r} in project {project!r}")
        return service.set_move_destinations(s, _operator(), project, kept)

    _print(_moves(remove))
