"""`strongroom compute`: book GPUs, list and cancel bookings, the week calendar and the budget (over the API),
and the drift check with Slurm (operators, over the API too)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..client import connect
from ..hubclient import HubError
from ..text import for_terminal as shown

app = typer.Typer(no_args_is_help=True, help="GPU bookings: calendar, budget, book, cancel (over the API).")
console = Console()
err = Console(stderr=True)
Project = Annotated[str, typer.Option("--project", "-p", help="Project id (slug).")]


def _call(method: str, path: str, **kwargs: Any) -> Any:
    try:
        return connect().json(method, path, **kwargs)
    except HubError as exc:
        err.print(f"[red]error:[/] {shown(exc)}")
        raise typer.Exit(1) from None


def _when(value: str) -> str:
    return dt.datetime.fromisoformat(value).astimezone().strftime("%a %Y-%m-%d %H:%M")


@app.command()
def book(
    project: Project,
    machine: Annotated[str, typer.Option(help="Machine name (e.g. dgx2).")],
    gpus: Annotated[int, typer.Option(min=1, help="How many GPUs.")],
    weeks: Annotated[int, typer.Option(min=1, help="How many weeks (ends on a Monday 09:00).")] = 1,
    dropin: Annotated[bool, typer.Option("--dropin", help="Free capacity from now until 09:00 tomorrow.")] = False,
    note: Annotated[str, typer.Option(help="A note for the calendar.")] = "",
) -> None:
    """Book the earliest slot (or drop in); an over-budget booking is refused or flagged, as the hub says."""
    b = _call("POST", f"/api/v1/compute/projects/{project}/bookings", json={
        "machine": machine, "gpus": gpus, "weeks": weeks, "kind": "dropin" if dropin else "booking", "note": note})
    flag = " [red]over budget (the PI has been told)[/]" if b["over_budget"] else ""
    console.print(f"booking {shown(b['id'])}: {shown(b['gpus'])} GPUs on {shown(b['machine'])} "
                  f"({shown(b['gpu_indices'])}) from {_when(b['start_at'])} to {_when(b['end_at'])}; "
                  f"reservation {shown(b['reservation_name'])}: {shown(b['reservation_state'])}{flag}")
    if b["cluster_note"]:
        left_out = ", ".join(b["without_cluster_account"])
        console.print(f"[yellow]{shown(b['cluster_note'])}: {shown(left_out)}[/]")


@app.command("list")
def list_bookings(project: Project,
                  past: Annotated[bool, typer.Option("--past", help="Include ended and cancelled.")] = False) -> None:
    """The project's current and coming bookings."""
    rows = _call("GET", f"/api/v1/compute/projects/{project}/bookings", params={"past": past})
    table = Table("#", "kind", "machine", "GPUs", "from", "to", "state", "reservation")
    for b in rows:
        style = "red" if b["over_budget"] else None
        table.add_row(*map(shown, (b["id"], b["kind"], b["machine"], f"{b['gpus']} ({b['gpu_indices']})",
                                   _when(b["start_at"]), _when(b["end_at"]), b["state"],
                                   f"{b['reservation_name']}: {b['reservation_state']}")), style=style)
    console.print(table)


@app.command()
def cancel(project: Project, booking: Annotated[int, typer.Argument(help="Booking number.")]) -> None:
    """Cancel a booking; a started one ends now."""
    b = _call("DELETE", f"/api/v1/compute/projects/{project}/bookings/{booking}")
    console.print(f"booking {shown(b['id'])} "
                  f"{'cancelled' if b['state'] == 'cancelled' else 'ended at ' + _when(b['end_at'])}")


@app.command()
def calendar(project: Project,
             week: Annotated[str, typer.Option(help="Any day of the week to show (YYYY-MM-DD).")] = "") -> None:
    """The week grid per machine: who holds which GPU each day, free GPUs per day."""
    grids = _call("GET", f"/api/v1/compute/projects/{project}/calendar", params={"week": week} if week else {})
    for g in grids:
        days = [dt.date.fromisoformat(d).strftime("%a %d") for d in g["days"]]
        table = Table("GPU", *days, title=f"{shown(g['machine'])} ({shown(g['gpus'])} GPUs)")
        for i, row in enumerate(g["rows"]):
            table.add_row(str(i), *[("[red]" if c["over_budget"] else "") + shown(c["label"] or "·")
                                    for c in row])
        table.add_row("free", *map(shown, g["free"]))
        console.print(table)


@app.command()
def budget(project: Project) -> None:
    """The project's budget class, GPU-weeks booked ahead and remaining."""
    b = _call("GET", f"/api/v1/compute/projects/{project}/budget")
    colour = "red" if b["over"] else "green"
    console.print(f"{shown(project)}: {shown((b['klass'] or 'no budget set').replace('_', ' '))}, {b['budget']:g} "
                  f"GPU-weeks ({shown(b['period_start'])} to {shown(b['period_end'])}); "
                  f"booked ahead [{colour}]{b['used']:.2f}[/], "
                  f"remaining [{colour}]{b['remaining']:.2f}[/]; used so far {b['past']:.2f}")


@app.command()
def drift(check_only: Annotated[bool, typer.Option("--check-only", help="Report, repair nothing.")] = False) -> None:
    """Reconcile the calendar with the Slurm reservations now (operators)."""
    r = _call("POST", "/api/v1/compute/drift", params={"repair": not check_only})
    if not r["configured"]:
        console.print("Slurm is not configured on this hub: nothing to reconcile")
        return
    for what in ("created", "updated", "deleted"):
        console.print(f"{what}: {shown(', '.join(r[what])) or '—'}")
    for name, why in r["failed"].items():
        err.print(f"[red]failed {shown(name)}:[/] {shown(why)}")
    if r["failed"]:
        raise typer.Exit(1)
