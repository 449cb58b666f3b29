"""``strongroom dicomweb backfill``: index what was archived before the DICOMweb index existed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

dicomweb_app = typer.Typer(help="DICOMweb (QIDO-RS, WADO-RS) per project: its metadata index.",
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
