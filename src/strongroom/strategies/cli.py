"""`strongroom strategy`: check a strategy, apply it to an extract and write the verified output with
its report. Runs on a steward's machine with a key file, or on the hub host with `--project`, where
the project's own key makes table pseudonyms match the project's DICOM pseudonyms."""

from __future__ import annotations

import base64
import getpass
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import report as reports
from . import requests_cli, runs_cli, synthetic
from .engine import StrategyError, apply
from .spec import EXAMPLE, Strategy, load_strategy
from .tables import TableError, read_table, write_table

app = typer.Typer(no_args_is_help=True, help=(
    "Pseudonymization strategies for clinical tables: check one, apply it to an extract, verify the result."))
app.add_typer(runs_cli.app, name="runs")
app.add_typer(requests_cli.app, name="requests")
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


def _strategy(path: Path) -> Strategy:
    try:
        return load_strategy(path.read_text(encoding="utf-8"), new=True)
    except OSError as exc:
        _fail(f"{path}: {exc.strerror}")
    except ValueError as exc:  # pydantic's ValidationError is one: each problem on its own line
        _fail(f"{path} is not a valid strategy:\n{exc}")
    raise AssertionError


def _key_from_file(path: Path) -> bytes:
    raw = path.read_bytes().strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(raw.decode("ascii"))
        except ValueError:
            continue
        if len(key) >= 16:
            return key
    _fail(f"{path}: a key file holds at least 16 random bytes, as hex or base64 (make one with "
          "`strongroom strategy new-key`)")
    raise AssertionError


def _project_key(slug: str) -> bytes:
    """The project's pseudonymization secret from the hub's key store (hub host only)."""
    from sqlalchemy import select

    from ..config import get_settings
    from ..db import transaction
    from ..hub import Hub
    from ..imaging.keystore import project_secret
    from ..projects.models import Project

    settings = get_settings()
    hub = Hub.from_settings(settings)
    with transaction(hub.sessions) as session:
        project = session.scalar(select(Project).where(Project.slug == slug))
        if project is None:
            _fail(f"no project {slug!r} on this hub")
        assert project is not None
        return project_secret(session, settings, project.id)


@app.command("check")
def check(strategy: Annotated[Path, typer.Argument(help="The strategy, as TOML.")]) -> None:
    """Validate a strategy and print its rules."""
    s = _strategy(strategy)
    table = Table("column", "rule", "source", title=f"{s.name} (version {s.version})")
    for column, rule in s.columns.items():
        detail = ", ".join(f"{k}={v}" for k, v in rule.model_dump(exclude={"action", "source", "note"},
                                                                     exclude_none=True).items())
        table.add_row(column, rule.action + (f" ({detail})" if detail else ""), rule.source or "")
    console.print(table)
    for g in s.group_rules:
        console.print(f"group rule: each ({', '.join(g.columns)}) has ≥ {g.min_rows} rows, else {g.on_violation}")
    if s.k_anonymity:
        console.print(f"k-anonymity: k = {s.k_anonymity.k} over {', '.join(s.k_anonymity.quasi_identifiers)}")
    if s.l_diversity:
        console.print(f"l-diversity: l = {s.l_diversity.l} of {s.l_diversity.sensitive}")
    console.print("[green]valid[/]")


@app.command("apply")
def apply_command(
    strategy: Annotated[Path, typer.Option("--strategy", "-s", help="The strategy, as TOML.")],
    source: Annotated[Path, typer.Option("--input", "-i", help="The extract: .csv, .tsv, .txt, .xlsx or .parquet.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the verified table goes: .parquet or .csv.")],
    report: Annotated[Path | None, typer.Option(help="The report as JSON (default: OUTPUT.report.json).")] = None,
    html: Annotated[Path | None, typer.Option(help="The report as a page (default: OUTPUT.report.html).")] = None,
    key_file: Annotated[Path | None, typer.Option(help="Pseudonymization key (hex or base64, ≥ 16 bytes).")] = None,
    project: Annotated[str | None, typer.Option(help="Use this hub project's key (run on the hub host).")] = None,
    encoding: Annotated[str | None, typer.Option(help="Text encoding of a CSV (default: UTF-8, else Windows-1252).")]
    = None,
) -> None:
    """Apply STRATEGY to INPUT, verify the result and write it with its report. A failed verification
    writes the report only (exit status 1): nothing unverified leaves this command."""
    s = _strategy(strategy)
    if (key_file is None) == (project is None):
        _fail("give exactly one of --key-file (your own key) or --project (the hub project's key)")
    if output.suffix.lower() not in (".parquet", ".csv"):
        _fail(f"{output}: write .parquet or .csv")
    secret = _key_from_file(key_file) if key_file else _project_key(project or "")
    report = report or output.with_name(output.name + ".report.json")
    html = html or output.with_name(output.name + ".report.html")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task(f"reading {source.name}")
        try:
            frame = read_table(source, encoding=encoding)
            progress.update(task, description=f"applying {s.name} and verifying")
            run = apply(frame, s, secret)
        except (TableError, StrategyError) as exc:
            _fail(str(exc))
        progress.update(task, description="writing")
        data = run.report(s)
        report.write_text(reports.to_json(data), encoding="utf-8")
        html.write_text(reports.to_html(data), encoding="utf-8")
        if run.passed:
            write_table(run.output, output)
    if project:
        _record(project, s, data)
    status = "[green]passed[/]" if run.passed else "[red]FAILED[/]"
    console.print(f"{status}: {data['rows_in']:,} rows in, {data['rows_out']:,} out; report: {report}, {html}")
    for c in data["checks"]:
        if not c["passed"]:
            console.print(f"  [red]✗[/] {c['name']}: {c['detail']}")
            for group in c["groups"][:10]:
                console.print("      " + ", ".join(f"{k}={v}" for k, v in group.items()))
    if not run.passed:
        raise typer.Exit(1)
    console.print(f"wrote {output}")


def _record(slug: str, s: Strategy, data: dict) -> None:
    from sqlalchemy import select

    from ..audit.service import Actor, record
    from ..config import get_settings
    from ..db import transaction
    from ..hub import Hub
    from ..projects.models import Project

    hub = Hub.from_settings(get_settings())
    with transaction(hub.sessions) as session:
        project_id = session.scalar(select(Project.id).where(Project.slug == slug))
        record(session, Actor(id=None, label=f"cli:{getpass.getuser()}@{os.uname().nodename}"), "strategy.applied",
               outcome="ok" if data["passed"] else "failed", project_id=project_id,
               details={"strategy": s.name, "version": s.version, "rows_in": data["rows_in"],
                        "rows_out": data["rows_out"]})


@app.command("example")
def example() -> None:
    """Print the source documents' Project X strategy (TOML), a starting point for your own."""
    typer.echo(EXAMPLE.read_text(encoding="utf-8"), nl=False)


@app.command("new-key")
def new_key(path: Annotated[Path, typer.Argument(help="Where to write the key (mode 0600).")]) -> None:
    """Write a new random pseudonymization key. Keep it: the same key gives the same pseudonyms."""
    if path.exists():
        _fail(f"{path} exists; a key is never overwritten")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    console.print(f"wrote {path}")


@app.command("demo-extract")
def demo_extract(
    path: Annotated[Path, typer.Argument(help="Where to write it: .csv or .parquet.")],
    rows: Annotated[int, typer.Option(min=1, max=50_000_000, help="Examinations (rows).")] = 100_000,
    rare_groups: Annotated[bool, typer.Option(help="Include (diagnosis, site, year) groups under 11 rows.")] = True,
) -> None:
    """Write a generated LIS + PACS extract with Swedish-shaped identifiers (no real person)."""
    write_table(synthetic.extract(rows, rare_groups=rare_groups), path)
    console.print(f"wrote {rows:,} rows to {path}")
