"""`strongroom strategy requests`: a project's data requests and the steward's steps (open, run the named
strategy on the uploaded extract, release, close), from any machine, over the hub's API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..client import api
from ..text import for_terminal as shown

app = typer.Typer(no_args_is_help=True, help=(
    "Data requests and their eight steps (over the API): comply → selection → extract → pseudonymize → verify → "
    "encrypt → terms → transfer."))
console = Console(soft_wrap=True)
MARKS = {"done": "[green]✓[/]", "failed": "[red]✗[/]", "todo": "·", "waiting": "…"}


def _print(r: dict[str, Any]) -> None:
    source = f"application {shown(r['application_id'])}" if r["application_id"] else "the project's own"
    console.print(f"{shown(r['id'])} {shown(r['title'])} ({source}): {shown(r['state'])}; "
                  f"strategy v{shown(r['strategy_version'])} sha256 {shown(r['strategy_sha256'])}")
    for step in r["steps"]:
        console.print(f"  {MARKS.get(step['state'], '?')} {shown(step['name'])}: "
                      f"{shown(step['evidence']) or shown(step['state'])}")


@app.command("open")
def open_request(project: Annotated[str, typer.Argument(help="The project's slug.")],
                 application: Annotated[str | None, typer.Option(help="An access application (SRA-…) for one of "
                                                                 "the project's datasets.")] = None,
                 title: Annotated[str, typer.Option(help="Default: the application's study name.")] = "",
                 selection: Annotated[Path | None, typer.Option(help="A text file: cohort, criteria, period "
                                                                "(default: the application's).")] = None,
                 variable: Annotated[list[str] | None, typer.Option(help="A variable (column); repeat.")] = None,
                 period_start: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
                 period_end: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
                 version: Annotated[int | None, typer.Option(help="The strategy version (default: newest).")] = None,
                 ) -> None:
    """Open a data request, from an application or the project's own."""
    parameters = {k: v for k, v in (("variables", variable), ("period_start", period_start),
                                    ("period_end", period_end)) if v}
    body: dict[str, Any] = {"application": application, "title": title, "parameters": parameters,
                            "selection": selection.read_text(encoding="utf-8") if selection else "",
                            "strategy_version": version}
    _print(api("POST", f"/api/v1/projects/{project}/requests", json=body))


@app.command("list")
def list_requests(project: Annotated[str, typer.Argument(help="The project's slug.")]) -> None:
    """The project's data requests, newest first, with the step each has reached."""
    for r in api("GET", f"/api/v1/projects/{project}/requests"):
        reached = next((s["name"] for s in r["steps"] if s["state"] != "done"), "all done")
        console.print(f"{shown(r['id'])}  {shown(r['state']):<8}  next: {shown(reached):<12}  {shown(r['title'])}")


@app.command("show")
def show(project: Annotated[str, typer.Argument(help="The project's slug.")],
         request_id: Annotated[str, typer.Argument(help="The request (SRQ-…).")],
         as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False) -> None:
    """One request: its selection and its eight steps with their evidence."""
    r = api("GET", f"/api/v1/projects/{project}/requests/{request_id}")
    if as_json:
        typer.echo(json.dumps(r, indent=2, ensure_ascii=False))
        return
    _print(r)


@app.command("run")
def run(project: Annotated[str, typer.Argument(help="The project's slug.")],
        request_id: Annotated[str, typer.Argument(help="The request (SRQ-…).")],
        file_id: Annotated[str, typer.Argument(help="The extract, uploaded into the project (SRF-…).")]) -> None:
    """Run the request's strategy version on the extract (`strongroom strategy runs show` follows it)."""
    started = api("POST", f"/api/v1/projects/{project}/requests/{request_id}/runs", json={"file_id": file_id})
    console.print(f"run {shown(started['id'])} of version {shown(started['version'])} on "
                  f"{shown(started['input_path'])}: {shown(started['state'])}")


@app.command("release")
def release(project: Annotated[str, typer.Argument(help="The project's slug.")],
            request_id: Annotated[str, typer.Argument(help="The request (SRQ-…).")]) -> None:
    """Release the passing run's version (terms agreed first) and give the applicant access to it."""
    _print(api("POST", f"/api/v1/projects/{project}/requests/{request_id}/release"))


@app.command("close")
def close(project: Annotated[str, typer.Argument(help="The project's slug.")],
          request_id: Annotated[str, typer.Argument(help="The request (SRQ-…).")],
          reason: Annotated[str, typer.Option(help="Why, for the record.")]) -> None:
    """Close a request without a release."""
    _print(api("POST", f"/api/v1/projects/{project}/requests/{request_id}/close", json={"reason": reason}))
