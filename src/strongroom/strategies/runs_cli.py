"""`strongroom strategy runs`: start, list and read runs of a project's strategy on extracts in its archive,
from any machine, over the hub's API (the saved login of `strongroom login`)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from ..client import api
from ..text import for_terminal as shown

app = typer.Typer(no_args_is_help=True, help=(
    "Runs of the project's strategy on extracts in its archive (over the API): passed → the verified output "
    "and its report as a draft dataset."))
console = Console(soft_wrap=True)  # lines keep whole ids (copied from here); tables fold their cells
FINISHED = ("passed", "failed", "error")


def _summary(run: dict[str, Any]) -> str:
    rows = (f", {shown(run['rows_in'])} rows in, {shown(run['rows_out'])} out" if run["rows_in"] is not None else "")
    what = (f" → dataset {shown(run['dataset_id'])}" if run["dataset_id"]
            else f": {shown(run['error'])}" if run["error"] else "")
    return (f"run {shown(run['id'])} of version {shown(run['version'])} on {shown(run['input_path'])}: "
            f"{shown(run['state'])}{rows}{what}")


@app.command("start")
def start(project: Annotated[str, typer.Argument(help="The project's slug.")],
          file_id: Annotated[str, typer.Argument(help="The extract: an archived file of the project (SRF-…).")],
          version: Annotated[int | None, typer.Option(help="The strategy version (default: the newest).")] = None,
          wait: Annotated[bool, typer.Option(help="Wait until the run is done; exit 1 unless it passed.")] = False,
          timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 3600,
          ) -> None:
    """Queue a run of the project's strategy on one of its archived extracts."""
    body: dict[str, Any] = {"file_id": file_id} | ({"version": version} if version is not None else {})
    run = api("POST", f"/api/v1/projects/{project}/strategy/runs", json=body)
    console.print(_summary(run))
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while run["state"] not in FINISHED:
        if time.monotonic() > deadline:
            console.print(f"still {shown(run['state'])} after {timeout:.0f} s: `strongroom strategy runs show "
                          f"{shown(project)} {shown(run['id'])}` tells when it is done")
            raise typer.Exit(4)
        time.sleep(2)  # polling the hub for a job's end: nothing to wait on but the answer
        run = api("GET", f"/api/v1/projects/{project}/strategy/runs/{run['id']}")
    console.print(_summary(run))
    raise typer.Exit(0 if run["state"] == "passed" else 1)


@app.command("list")
def list_runs(project: Annotated[str, typer.Argument(help="The project's slug.")]) -> None:
    """The project's runs, newest first."""
    # ids stay whole (they are copied from here); the other values fold instead of being cut
    table = Table(Column("run", no_wrap=True, min_width=36),
                  *(Column(name, overflow="fold") for name in ("started", "version", "extract", "state", "rows in",
                                                              "rows out")),
                  Column("dataset", no_wrap=True, min_width=14))
    for run in api("GET", f"/api/v1/projects/{project}/strategy/runs"):
        table.add_row(*map(shown, (run["id"], run["created_at"][:19], run["version"], run["input_path"], run["state"],
                                   "—" if run["rows_in"] is None else run["rows_in"],
                                   "—" if run["rows_out"] is None else run["rows_out"], run["dataset_id"] or "—")))
    console.print(table)


@app.command("show")
def show(project: Annotated[str, typer.Argument(help="The project's slug.")],
         run_id: Annotated[str, typer.Argument(help="The run's id.")],
         as_json: Annotated[bool, typer.Option("--json", help="The whole run with its report, as JSON.")] = False,
         ) -> None:
    """One run: its state and the checks of its report."""
    run = api("GET", f"/api/v1/projects/{project}/strategy/runs/{run_id}")
    if as_json:
        typer.echo(json.dumps(run, indent=2, ensure_ascii=False))
        return
    console.print(_summary(run))
    for check in (run.get("report") or {}).get("checks", []):
        mark = "[green]✓[/]" if check["passed"] else "[red]✗[/]"
        console.print(f"  {mark} {shown(check['name'])}: {shown(check['detail'])}")
