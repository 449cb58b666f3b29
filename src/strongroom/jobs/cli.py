"""`strongroom jobs`: inspect and drain the job queue."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from ..config import get_settings
from ..hub import Hub
from . import service

app = typer.Typer(no_args_is_help=True, help="Background jobs.")
console = Console()


@app.command()
def stats() -> None:
    """Jobs per state."""
    hub = Hub.from_settings(get_settings())
    with hub.sessions() as session:
        table = Table("state", "jobs")
        for state, n in sorted(service.stats(session).items()):
            table.add_row(state, str(n))
    console.print(table)


@app.command()
def drain() -> None:
    """Run every runnable job in this process, then exit (4 when attempts hung past their time limit)."""
    from .runner import HUNG_EXIT_CODE, Runner, exit_now

    settings = get_settings()
    runner = Runner(Hub.from_settings(settings), lease_seconds=settings.jobs.lease_seconds,
                    extra_modules=settings.jobs.extra_modules)
    console.print(f"ran {runner.run_until_idle()} job(s)")
    if runner.hung_attempts:  # their threads cannot be stopped, and an ordinary exit may wait for them forever
        console.print(f"[red]{len(runner.hung_attempts)} attempt(s) hung past their time limit[/]")
        exit_now(HUNG_EXIT_CODE)
